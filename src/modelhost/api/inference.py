"""The call every inference route makes: the data plane's infer, raced against the client
leaving.

Also records the per-request metrics (count by status code, duration) in one place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from starlette.requests import Request
from starlette.types import Receive

from modelhost.api.state import ServerState
from modelhost.errors import ModelhostError
from modelhost.serving import Route
from modelhost.types import InferRequest, InferResult

# Status nginx and others log for "client closed the request"; never sent on the wire.
CLIENT_CLOSED = 499


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
