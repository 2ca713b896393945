"""Engine: the serving core's lifecycle, and its two faces.

``async with Engine.open(config, metrics) as engine`` starts an empty engine;
``engine.control`` loads and changes what is served, ``engine.data`` answers requests.
Leaving the block drains queued requests and stops the workers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from modelhost.monitor.metrics import Metrics
from modelhost.serving.config import EngineConfig
from modelhost.serving.controlplane import ControlPlane
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.loader import Loader
from modelhost.serving.manager import ModelManager


class Engine:
    """One process's models: ``data`` (resolve, infer, stream) and ``control`` (changes)."""

    def __init__(self, manager: ModelManager) -> None:
        self.data = DataPlane(manager)
        self.control = ControlPlane(manager)
        self.ready = False

    @classmethod
    @asynccontextmanager
    async def open(cls, config: EngineConfig, metrics: Metrics) -> AsyncIterator[Engine]:
        """Yield an engine (load models through ``control``); drain and stop on exit."""
        manager = ModelManager(Loader(config), config, metrics)
        engine = cls(manager)
        try:
            engine.ready = True
            yield engine
        finally:
            engine.ready = False
            await manager.close()
