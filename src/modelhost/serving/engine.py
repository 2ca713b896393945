"""Engine: the one interface every frontend calls.

``async with Engine.open(settings, metrics, archives) as engine`` loads and warms the
models; ``await engine.infer(request)`` validates, queues, batches and answers; leaving the
block drains queued requests and stops the workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from modelhost.config import Settings
from modelhost.errors import DeadlineExceeded
from modelhost.monitor.metrics import Metrics
from modelhost.serving.manager import (
    ArchiveSource,
    Detached,
    ModelInfo,
    ModelManager,
    VersionState,
)
from modelhost.serving.signature import check_inputs
from modelhost.types import InferRequest, InferResult

__all__ = ["ArchiveSource", "Detached", "Engine", "ModelInfo", "VersionState"]


class Engine:
    """Inference over every loaded model; see the module docstring for the lifecycle."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager
        self.ready = False

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, metrics: Metrics) -> AsyncIterator[Engine]:
        """Yield an engine (load models with :meth:`load`); drain and stop on exit."""
        manager = ModelManager(settings, metrics)
        engine = cls(manager)
        try:
            engine.ready = True
            yield engine
        finally:
            engine.ready = False
            await manager.close()

    async def load(self, source: ArchiveSource | Path) -> ModelInfo:
        """Load one more archive (a new model, or a new version of a loaded one)."""
        return await self._manager.load(
            source if isinstance(source, ArchiveSource) else ArchiveSource(source)
        )

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        """Describe a loaded model version. Raises ModelNotFound."""
        return self._manager.get(name, version).info

    def models(self) -> list[ModelInfo]:
        """Every loaded model version."""
        return [m.info for m in self._manager.all()]

    def versions(self, name: str) -> list[str]:
        """Loaded versions of ``name``."""
        return self._manager.versions(name)

    def default_version(self, name: str) -> str:
        """The version unversioned requests go to. Raises ModelNotFound."""
        return self._manager.default_version(name)

    def set_default(self, name: str, version: str) -> None:
        """Route unversioned requests for ``name`` to ``version``. Raises ModelNotFound."""
        self._manager.set_default(name, version)

    def snapshot(self) -> list[VersionState]:
        """How every loaded version is served now."""
        return self._manager.snapshot()

    def set_split(self, name: str, weights: dict[str, float]) -> None:
        """Weighted traffic split over loaded versions of ``name`` ({} = off)."""
        self._manager.set_split(name, weights)

    def split(self, name: str) -> dict[str, float]:
        """The traffic split of ``name`` ({} when none)."""
        return self._manager.split(name)

    async def scale(self, name: str, version: str, instances: int) -> int:
        """Set the instance count of a model version; returns it."""
        return await self._manager.scale(name, version, instances)

    def instance_count(self, name: str, version: str) -> int:
        """Instances computing for that model version now."""
        return self._manager.get(name, version).batcher.instance_count

    async def unload(self, name: str, version: str) -> None:
        """Unload a version after finishing what it accepted. Raises ModelNotFound."""
        await self._manager.unload(name, version)

    def detach(self, name: str, version: str) -> Detached:
        """Stop routing to a version, reversibly (unload = detach + drain)."""
        return self._manager.detach(name, version)

    def reattach(self, detached: Detached) -> None:
        """Route to a detached version again, as before."""
        self._manager.reattach(detached)

    async def drain(self, detached: Detached) -> None:
        """Finish a detached version's accepted requests and stop it."""
        await self._manager.drain(detached)

    def in_flight(self, name: str, version: str) -> int:
        """Requests accepted and not yet answered by that model version."""
        return self._manager.get(name, version).batcher.in_flight

    def queue_depth(self, name: str, version: str | None = None) -> int:
        """Requests waiting for a batch of that model version."""
        return self._manager.get(name, version).batcher.queue_depth

    async def infer(self, request: InferRequest) -> InferResult:
        """Validate ``request`` against the signature, batch it, return its rows.

        Cancelling the awaiting task (the client went away) drops the request before it
        reaches a batch.

        Raises:
            ModelNotFound, InvalidInput, Overloaded, ModelNotReady, DeadlineExceeded,
            InferenceFailed.
        """
        model = self._manager.get(request.model.name, request.model.version)
        items = check_inputs(request.inputs, model.info.inputs)
        future = model.batcher.submit(request, items)
        try:
            async with asyncio.timeout(request.deadline_s - time.monotonic()):
                return await future
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"no answer from {model.info.name}:{model.info.version} before the request's "
                "deadline; raise the timeout or lower the load"
            ) from exc
