"""The data plane: resolve a request to the version that answers it, once; then run it.

    route = data.resolve(name, version)       # pinned, else the split's draw, else default
    result = await data.infer(route, request) # one answer
    async for chunk in data.stream(route, request): ...   # many (infer = the one-chunk case)

Reads (``model``, ``versions``) never draw from a traffic split: the metadata of a model is
its default version's, the same on every call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from modelhost.errors import DeadlineExceeded
from modelhost.serving.manager import ModelManager
from modelhost.serving.scheduler import Scheduler
from modelhost.serving.served import ModelInfo
from modelhost.serving.signature import check_inputs
from modelhost.types import InferRequest, InferResult


@dataclass(frozen=True, slots=True)
class Route:
    """A request's chosen model version: what frontends encode with, where it queues."""

    info: ModelInfo
    scheduler: Scheduler


class DataPlane:
    """Inference over the loaded models; see the module docstring."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def resolve(self, name: str, version: str | None = None) -> Route:
        """The version that answers a request for ``name`` (``version`` pins one).

        Raises:
            ModelNotFound: no such model or version is loaded.
        """
        model = self._manager.route(name, version)
        return Route(model.info, model.scheduler)

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        """A loaded version (the default when ``version`` is None). Raises ModelNotFound."""
        return self._manager.get(name, version).info

    def models(self) -> list[ModelInfo]:
        """Every loaded model version, by name then version."""
        return [m.info for m in self._manager.all()]

    def versions(self, name: str) -> list[str]:
        """Loaded versions of ``name`` (empty when none)."""
        return self._manager.versions(name)

    async def infer(self, route: Route, request: InferRequest) -> InferResult:
        """Validate ``request`` against the route's signature, schedule it, await its answer.

        Cancelling the awaiting task (the client went away) drops the request before it
        reaches a batch.

        Raises:
            InvalidInput, Overloaded, ModelNotReady, DeadlineExceeded, InferenceFailed.
        """
        items = await checked(request, route.info)
        future = route.scheduler.submit(request, items)
        try:
            async with asyncio.timeout(request.deadline_s - time.monotonic()):
                return await future
        except TimeoutError as exc:
            raise _late(route) from exc

    async def stream(self, route: Route, request: InferRequest) -> AsyncIterator[InferResult]:
        """The answer in chunks, each within the request's deadline (see :meth:`infer`)."""
        items = await checked(request, route.info)
        chunks = route.scheduler.stream(request, items)
        while True:
            try:
                async with asyncio.timeout(request.deadline_s - time.monotonic()):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise _late(route) from exc
            yield chunk


# Inputs over this many bytes are checked in a thread: the NaN/inf scan reads every
# element (about 10 ms for 64 MiB of float32), and numpy releases the GIL while it does.
CHECK_INLINE_BYTES = 1024**2


async def checked(request: InferRequest, info: ModelInfo) -> int:
    """:func:`check_inputs` of ``request`` against ``info``; in a thread when large, so
    the event loop keeps answering meanwhile. Returns the batch size; raises InvalidInput."""
    if sum(a.nbytes for a in request.inputs.values()) <= CHECK_INLINE_BYTES:
        return check_inputs(request.inputs, info.inputs)
    return await asyncio.to_thread(check_inputs, request.inputs, info.inputs)


def _late(route: Route) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"no answer from {route.info.name}:{route.info.version} before the request's "
        "deadline; raise the timeout or lower the load"
    )
