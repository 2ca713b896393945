"""Engine: the serving core's lifecycle, and its two faces.

``async with Engine.open(config, metrics) as engine`` starts an empty engine;
``engine.control`` loads and changes what is served, ``engine.data`` answers requests.
Leaving the block drains queued requests and stops the workers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from modelhost.monitor.metrics import Metrics
from modelhost.serving.config import EngineConfig
from modelhost.serving.controlplane import ControlPlane
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.loader import Loader
from modelhost.serving.manager import ModelManager
from modelhost.serving.placement import Placement


class Engine:
    """One process's models: ``data`` (resolve, infer, stream) and ``control`` (changes)."""

    def __init__(self, manager: ModelManager) -> None:
        self.data = DataPlane(manager)
        self.control = ControlPlane(manager)
        self._manager = manager
        self._open = False

    @property
    def ready(self) -> bool:
        """Open, and its placement can run models (shared: the engine process is reachable)."""
        return self._open and self._manager.placement.available

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        config: EngineConfig,
        metrics: Metrics,
        placement: Callable[[Loader], Placement] | None = None,
    ) -> AsyncIterator[Engine]:
        """Yield an engine (load models through ``control``); drain and stop on exit.

        ``placement``: where versions' instances live, built over the engine's loader
        (default: in this process, ``LocalPlacement``).
        """
        loader = Loader(config)
        chosen = placement(loader) if placement is not None else None
        manager = ModelManager(loader, config, metrics, chosen)
        engine = cls(manager)
        try:
            engine._open = True
            yield engine
        finally:
            engine._open = False
            await manager.close()
