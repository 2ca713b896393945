"""RemoteScheduler: the Scheduler of a version that lives in the shared engine process.

    async with EngineClient.connect(socket_path) as client:          # one per worker
        scheduler = RemoteScheduler(client, "digits", "2")            # one per version
        result = await scheduler.submit(request, items)

The version is fixed: the worker resolves it (default, pin or traffic split) before it
submits, as the data plane does. ``in_flight`` is this worker's own count;
``instance_count`` and ``queue_depth`` are the engine's (all workers'), as of its last
answer for the version or :meth:`RemoteScheduler.refresh`, 0 before either. Instances live
in the engine process: ``add_instance``/``remove_instance`` are refused here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from modelhost.errors import Conflict, ModelNotReady
from modelhost.serving.engine_client import EngineClient
from modelhost.serving.instance import ModelInstance
from modelhost.serving.scheduler import Scheduler
from modelhost.serving.served import VersionLoad
from modelhost.types import InferRequest, InferResult


class RemoteScheduler:
    """The :class:`~modelhost.serving.scheduler.Scheduler` of one version in the engine
    process, for one worker. The version is fixed: the worker resolves it (default, pin or
    traffic split) before it submits."""

    def __init__(self, client: EngineClient, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self._client = client
        self._pending: set[asyncio.Future[InferResult]] = set()
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def instance_count(self) -> int:
        """The engine's instances of this version, as of its last answer or refresh."""
        return self._client.last_load(self.name, self.version).instances

    @property
    def queue_depth(self) -> int:
        """The engine's queue of this version (all workers), as of its last answer."""
        return self._client.last_load(self.name, self.version).queue_depth

    @property
    def in_flight(self) -> int:
        """This worker's requests sent and not yet answered."""
        return len(self._pending)

    async def refresh(self) -> VersionLoad:
        """Ask the engine for this version's load now. Raises ModelNotFound, ModelNotReady."""
        return await self._client.load_of(self.name, self.version)

    def start(self) -> None:
        """Nothing to start: the engine process batches."""

    def submit(self, request: InferRequest, items: int) -> asyncio.Future[InferResult]:
        """Send ``request`` to the engine process; the future resolves with its answer.

        Raises:
            ModelNotReady: closing, or the engine process is gone. Overloaded: no free slot.
        """
        if not self._accepting:
            raise ModelNotReady(f"model {self.name}:{self.version} is shutting down")
        future = self._client.submit(self.name, self.version, request)
        self._pending.add(future)
        self._idle.clear()
        future.add_done_callback(self._on_done)
        return future

    def _on_done(self, future: asyncio.Future[InferResult]) -> None:
        self._pending.discard(future)
        if not self._pending:
            self._idle.set()

    async def stream(self, request: InferRequest, items: int) -> AsyncIterator[InferResult]:
        """The whole answer as one chunk (request batching has no partial answers)."""
        yield await self.submit(request, items)

    def add_instance(self, instance: ModelInstance) -> None:
        """Refused: instances of a shared version live in the engine process."""
        raise self._not_here()

    async def remove_instance(self) -> None:
        """Refused, as :meth:`add_instance`."""
        raise self._not_here()

    def _not_here(self) -> Conflict:
        return Conflict(
            f"model {self.name}:{self.version} is placed in the shared engine process; "
            "scale it through the engine process, not a worker"
        )

    async def close(self, timeout_s: float) -> None:
        """Stop accepting; wait up to ``timeout_s`` for this worker's requests in flight,
        then cancel the rest (the engine drops them)."""
        self._accepting = False
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            for future in list(self._pending):
                future.cancel()


def _is_a_scheduler(scheduler: RemoteScheduler) -> Scheduler:
    return scheduler  # mypy checks here that RemoteScheduler keeps the Scheduler protocol
