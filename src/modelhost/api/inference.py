"""What every inference route shares: the data plane's infer, raced against the client
leaving; the task codec of the version that answers; the per-request metrics (count by
status code, duration), recorded in one place.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from starlette.requests import Request
from starlette.types import Receive

from modelhost.api.state import ServerState
from modelhost.codecs.limits import DecodeLimits
from modelhost.codecs.task import TaskCodec
from modelhost.errors import ArchiveError, InferenceFailed, ModelhostError
from modelhost.serving import ModelInfo, Route
from modelhost.types import InferRequest, InferResult

# Status nginx and others log for "client closed the request"; never sent on the wire.
CLIENT_CLOSED = 499


class TaskCodecs:
    """The :class:`TaskCodec` of each loaded model version, built on its first request.

    Kept here, not in ``serving/`` (which knows no codec), by ``(name, version, sha256)``;
    the least recently used is dropped past ``max_versions``. Used on the event loop only.
    A codec that reads files (a text model's tokenizer: 13 ms for MiniLM's, far more for a
    large vocabulary) is built in a thread, once, however many requests wait for it.
    """

    def __init__(self, limits: DecodeLimits, max_versions: int = 256) -> None:
        self._limits = limits
        self._max_versions = max_versions
        self._codecs: OrderedDict[tuple[str, str, str], TaskCodec] = OrderedDict()
        self._building: dict[tuple[str, str, str], asyncio.Future[TaskCodec]] = {}

    async def of(self, info: ModelInfo) -> TaskCodec:
        """The codec of the version ``info`` describes.

        Raises:
            InferenceFailed: the archive's codec files do not load (pack and load check
                them: only a hand-made archive gets here).
        """
        key = (info.name, info.version, info.sha256)
        codec = self._codecs.get(key)
        # Same key, other signature object: the version was loaded again since; rebuild.
        if codec is not None and codec.inputs is info.inputs:
            self._codecs.move_to_end(key)
            return codec
        if not info.codec_files:
            return self._keep(key, self._build(info))
        building = self._building.get(key)
        if building is None:
            building = asyncio.ensure_future(asyncio.to_thread(self._build, info))
            self._building[key] = building
            building.add_done_callback(lambda _: self._building.pop(key, None))
        # Shielded: a request that goes away does not cancel the build the others await.
        built = await asyncio.shield(building)
        if built.inputs is not info.inputs:  # loaded again while it was built
            return await self.of(info)
        return self._keep(key, built)

    def _build(self, info: ModelInfo) -> TaskCodec:
        try:
            return TaskCodec.for_manifest(
                info.manifest, info.inputs, info.outputs, self._limits, info.codec_files
            )
        except ArchiveError as exc:
            raise InferenceFailed(f"{info.name}:{info.version} cannot decode: {exc}") from exc

    def _keep(self, key: tuple[str, str, str], codec: TaskCodec) -> TaskCodec:
        self._codecs[key] = codec
        self._codecs.move_to_end(key)
        if len(self._codecs) > self._max_versions:
            self._codecs.popitem(last=False)
        return codec


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[object]) -> None:
    # One watcher per request (measured: two tasks + asyncio.wait cost 4-5% of loop time).
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


async def infer(
    state: ServerState,
    request: Request,
    route: Route,
    inputs: Mapping[str, np.ndarray],
    request_id: str | None = None,
) -> InferResult:
    """Run one inference for an HTTP request; drop it if the client disconnects first.

    Raises:
        ModelhostError subclasses from the data plane; ClientDisconnected.
    """
    data = state.data
    deadline_s = time.monotonic() + state.settings.request_timeout_s
    call = InferRequest(inputs=inputs, deadline_s=deadline_s, id=request_id)
    this = asyncio.current_task()
    if this is None:  # not inside a task: nothing to cancel, no watch
        return await data.infer(route, call)
    watch = asyncio.get_running_loop().create_task(_cancel_on_disconnect(request.receive, this))
    try:
        return await data.infer(route, call)
    except asyncio.CancelledError:
        if watch.done() and not watch.cancelled() and this.uncancel() == 0:
            raise ClientDisconnected from None
        raise
    finally:
        watch.cancel()


@dataclass(slots=True)
class Observation:
    """Filled in by a route once it knows which model version answers."""

    model: str = ""
    version: str = ""


@contextmanager
def observed(state: ServerState, protocol: str) -> Iterator[Observation]:
    """Count the request and its duration by status code, once the model is known.

    Requests for unknown models are not counted per model, so label values stay bounded.
    """
    obs = Observation()
    start_s = time.perf_counter()
    status = 200
    try:
        yield obs
    except BaseException as exc:
        status = status_of(exc)
        raise
    finally:
        if obs.model:
            state.metrics.observe_request(
                obs.model, obs.version, protocol, status, time.perf_counter() - start_s
            )


def status_of(exc: BaseException) -> int:
    """HTTP status a failed call ends with, for metrics."""
    if isinstance(exc, ModelhostError):
        return exc.status
    if isinstance(exc, ClientDisconnected):
        return CLIENT_CLOSED
    return 500
