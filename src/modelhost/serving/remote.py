"""Shared placement, the worker's side: its link to the engine process, the placement
that serves versions from there, and their RemoteScheduler.

    link = EngineLink(socket_path)                                     # one per worker
    engine = Engine.open(config, metrics, placement=RemotePlacement(link, loader))
    # a load reads the manifest only and checks the engine serves the same bytes;
    # requests go through RemoteScheduler(link, "digits", "2") to the engine's batcher

The link connects on first use; after the engine process restarted, ``reconnect()``.
While it is down, requests fail with ModelNotReady (503, the model is unavailable).

The version is fixed: the worker resolves it (default, pin or traffic split) before it
submits, as the data plane does. ``in_flight`` is this worker's own count;
``instance_count`` and ``queue_depth`` are the engine's (all workers'), as of its last
answer for the version or :meth:`RemoteScheduler.refresh`, 0 before either. Instances live
in the engine process: ``add_instance``/``remove_instance`` are refused here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from modelhost.errors import ArchiveError, Conflict, ModelNotReady
from modelhost.monitor.metrics import ModelMetrics
from modelhost.serving.engine_client import EngineClient, EngineVersion
from modelhost.serving.instance import ModelInstance
from modelhost.serving.loader import Loader
from modelhost.serving.placement import Opened, Placed
from modelhost.serving.policy import BatchPolicy
from modelhost.serving.scheduler import Scheduler
from modelhost.serving.served import ModelInfo, VersionLoad
from modelhost.serving.shm import PREFIX
from modelhost.types import InferRequest, InferResult


class EngineLink:
    """A worker's connection to the engine process, replaced when the engine restarts.

    Args:
        socket_path: the engine process's unix socket (None: never connect; see :meth:`of`).
        slots: requests this worker may have in flight in the engine at once; more are
            refused at once with Overloaded (503 + Retry-After).
        slot_bytes: shared memory per slot; larger tensor sets use one-off segments.
        prefix: shared-memory names start with it.
    """

    def __init__(
        self, socket_path: Path | None, *, slots: int = 128, slot_bytes: int = 1024**2,
        prefix: str = PREFIX,
    ) -> None:  # fmt: skip
        self.socket_path = socket_path
        self._slots = slots
        self._slot_bytes = slot_bytes
        self._prefix = prefix
        self._client: EngineClient | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def of(cls, client: EngineClient) -> EngineLink:
        """A link over a client connected already, which it never replaces (tools, tests):
        once that client is gone, requests fail with ModelNotReady."""
        link = cls(None)
        link._client = client
        return link

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> EngineClient:
        """The live client, connecting first when there is none or it broke.

        Raises:
            ModelNotReady: no engine process answers. InvalidInput, Overloaded: it refused.
        """
        async with self._lock:
            if self._client is not None and self._client.connected:
                return self._client
            if self.socket_path is None:
                raise ModelNotReady("the connection to the engine process is gone")
            await self._close()
            stack = contextlib.AsyncExitStack()
            connecting = EngineClient.connect(
                self.socket_path, slots=self._slots, slot_bytes=self._slot_bytes,
                prefix=self._prefix,
            )  # fmt: skip
            self._client = await stack.enter_async_context(connecting)
            self._stack = stack
            return self._client

    async def reconnect(self) -> None:
        """Drop the connection (its requests fail with ModelNotReady) and connect anew."""
        async with self._lock:
            await self._close()
        await self.connect()

    async def close(self) -> None:
        """Say goodbye and unlink this worker's shared memory."""
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def client(self) -> EngineClient:
        """The client to send through now.

        Raises:
            ModelNotReady: not connected (the engine process is restarting). A client
                whose connection broke is returned: it refuses with the reason.
        """
        client = self._client
        if client is None:
            raise ModelNotReady(
                "the engine process is not reachable (it is restarting); try again shortly"
            )
        return client

    def last_load(self, name: str, version: str) -> VersionLoad:
        client = self._client
        return VersionLoad(0, 0, 0) if client is None else client.last_load(name, version)

    async def version(self, name: str, version: str) -> EngineVersion:
        """What the engine serves as ``name:version`` (connecting first when needed).

        Raises:
            ModelNotFound: the engine does not serve it. ModelNotReady: no engine process.
        """
        return await (await self.connect()).version(name, version)


class RemotePlacement:
    """Versions served by the engine process (``--placement shared``): this process reads
    the manifest (no files extracted, no model loaded) and sends requests to the engine's
    scheduler. The engine must have loaded the version first, from the same bytes."""

    def __init__(self, link: EngineLink, loader: Loader) -> None:
        self._link = link
        self._loader = loader

    @property
    def available(self) -> bool:
        """False while the engine process is unreachable: readiness turns 503."""
        return self._link.connected

    def open(self, path: Path, into: Path) -> Opened:
        head = self._loader.read_manifest(path)
        return Opened(head.manifest, head.sha256, into, head.codec_files)

    async def place(
        self, info: ModelInfo, opened: Opened, policy: BatchPolicy, metrics: ModelMetrics
    ) -> Placed:
        served = await self._link.version(info.name, info.version)
        if served.sha256 != opened.sha256:
            raise ArchiveError(
                f"{info.name}:{info.version}: the engine process serves it from other bytes "
                f"(sha256 {served.sha256[:12]}…, this archive {opened.sha256[:12]}…)"
            )
        scheduler = RemoteScheduler(self._link, info.name, info.version)
        link = self._link

        async def scale(instances: int) -> int:
            # The engine process scales; a worker only takes note of its count.
            count = (await link.version(info.name, info.version)).load.instances
            if count != instances:
                raise ModelNotReady(
                    f"{info.name}:{info.version} has {count} instances in the engine process, "
                    f"not {instances}; scale it there first"
                )
            return count

        return Placed(scheduler, served.device, 0.0, 0.0, scale)


class RemoteScheduler:
    """The :class:`~modelhost.serving.scheduler.Scheduler` of one version in the engine
    process, for one worker. The version is fixed: the worker resolves it (default, pin or
    traffic split) before it submits."""

    def __init__(self, link: EngineLink, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self._link = link
        self._pending: set[asyncio.Future[InferResult]] = set()
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def instance_count(self) -> int:
        """The engine's instances of this version, as of its last answer or refresh."""
        return self._link.last_load(self.name, self.version).instances

    @property
    def queue_depth(self) -> int:
        """The engine's queue of this version (all workers), as of its last answer."""
        return self._link.last_load(self.name, self.version).queue_depth

    @property
    def in_flight(self) -> int:
        """This worker's requests sent and not yet answered."""
        return len(self._pending)

    async def refresh(self) -> VersionLoad:
        """Ask the engine for this version's load now. Raises ModelNotFound, ModelNotReady."""
        return (await self._link.version(self.name, self.version)).load

    def start(self) -> None:
        """Nothing to start: the engine process batches."""

    def submit(self, request: InferRequest, items: int) -> asyncio.Future[InferResult]:
        """Send ``request`` to the engine process; the future resolves with its answer.

        Raises:
            ModelNotReady: closing, or the engine process is gone. Overloaded: no free slot.
        """
        if not self._accepting:
            raise ModelNotReady(f"model {self.name}:{self.version} is shutting down")
        future = self._link.client().submit(self.name, self.version, request)
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
