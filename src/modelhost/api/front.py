"""InferenceFront: one process's inference side, an engine behind the inference app.

    open ──► accept() ──► ready() ──► stop()
             the port answers:   readiness 200,     no new connections; every
             liveness 200,       inference runs     accepted request is answered,
             readiness and                          then the engine drains
             inference 503

The single-process server and every worker of ``modelhost serve --workers N`` are one front
each; they differ only in who tells it what to load (the CLI's archives, or the supervisor).
"""

from __future__ import annotations

import functools
import gc
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from modelhost import __version__
from modelhost.api.app import build_app
from modelhost.api.httpserver import HttpServer, uvicorn_config
from modelhost.api.state import ServerState
from modelhost.config import Settings
from modelhost.monitor.metrics import Metrics
from modelhost.serving import Engine, LocalModels, engine_config
from modelhost.serving.remote import EngineLink, RemotePlacement


class InferenceFront:
    """An engine, its :class:`LocalModels`, and the inference app on a listening socket."""

    def __init__(
        self,
        state: ServerState,
        engine: Engine,
        sock: socket.socket,
        link: EngineLink | None = None,
    ) -> None:
        self.state = state
        self.engine = engine
        self.models = LocalModels(engine.data, engine.control)
        self.link = link
        self._sock = sock
        self._server = HttpServer(uvicorn_config(build_app(state), state.settings))

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        sock: socket.socket,
        workers: int = 1,
        engine_socket: Path | None = None,
    ) -> AsyncIterator[InferenceFront]:
        """A front over an empty engine (thread counts shared among ``workers``); on exit
        it stops accepting, answers what it accepted, and drains the engine.

        ``engine_socket``: shared placement; versions are served by the engine process
        listening there (this process holds no model, only their manifests).
        """
        state = ServerState(settings=settings, metrics=Metrics(__version__))
        config = engine_config(settings, workers)
        if engine_socket is None:
            async with Engine.open(config, state.metrics) as engine:
                front = cls(state, engine, sock)
                try:
                    yield front
                finally:
                    await front.stop()
            return
        link = EngineLink(
            engine_socket, slots=settings.engine_slots, slot_bytes=settings.engine_slot_bytes
        )
        try:
            placement = functools.partial(RemotePlacement, link)
            async with Engine.open(config, state.metrics, placement) as engine:
                front = cls(state, engine, sock, link)
                try:
                    yield front
                finally:
                    await front.stop()
        finally:
            await link.close()

    async def reconnect_engine(self) -> None:
        """Connect to the engine process anew (it restarted and loaded the same versions)
        and take note of each version's instances there."""
        if self.link is None:
            return
        await self.link.reconnect()
        for state in self.models.snapshot():
            await self.link.version(state.name, state.version)

    @property
    def is_ready(self) -> bool:
        """True once :meth:`ready` was called and until :meth:`stop`."""
        return self.state.ready

    async def accept(self) -> None:
        """Start answering on the socket (readiness and inference 503 until :meth:`ready`);
        returns once connections are accepted. Calling it again does nothing more."""
        await self._server.open(self._sock)

    def ready(self) -> None:
        """Take requests: every model is loaded and warm."""
        # Everything loaded so far lives as long as the server: move it out of the
        # collector's sight. Without this, full collections over the model objects paused
        # the event loop for 50-120 ms several times a second at c=32 (benchmarks/).
        gc.collect()
        gc.freeze()
        self.state.engine_ = self.engine

    async def stop(self, force: bool = False) -> None:
        """Turn unready, stop accepting, answer every accepted request (``force``: stop
        waiting for them). Calling it again waits for the same stop."""
        self.state.draining = True
        await self._server.close(force)
