"""Run the server: open the engine (load + warm up), then uvicorn (uvloop + httptools).

On the first SIGTERM or SIGINT the server turns unready, stops accepting connections,
finishes every request it accepted, drains the engine and returns (exit status 0). A
second Ctrl-C forces the exit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
import uvloop
from starlette.types import ASGIApp

from modelhost import __version__
from modelhost.api.app import build_app
from modelhost.api.auth import TOKEN_FILE, load_or_create_token
from modelhost.api.management import RegistryPort, build_management_app
from modelhost.api.protocol import EdgeLimits, limited_protocol
from modelhost.api.state import ServerState
from modelhost.config import Settings
from modelhost.errors import ConfigError
from modelhost.home import prepare_home
from modelhost.monitor.metrics import Metrics
from modelhost.serving import ArchiveSource, ControlPlane, Engine, ModelInfo, engine_config

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
log = logging.getLogger("modelhost.api")


class _Server(uvicorn.Server):
    """uvicorn.Server that marks the state draining and does not re-raise the signal."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state
        self.followers: list[uvicorn.Server] = []

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.draining = True
        for other in self.followers:
            other.should_exit = True
        super().handle_exit(sig, frame)


class _FollowerServer(uvicorn.Server):
    """A second server (management) that stops when the inference server does."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """Bind a TCP socket for listening (``port`` 0 picks a free one).

    Raises:
        ConfigError: the address is in use or not available on this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL a bound socket answers on."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


async def serve_async(
    settings: Settings,
    archives: Sequence[Path | ArchiveSource],
    *,
    on_loaded: Callable[[ModelInfo], None] | None = None,
    on_listening: Callable[[str], None] | None = None,
    on_management: Callable[[str, Path], None] | None = None,
    registry: RegistryPort | None = None,
    after_load: Callable[[ControlPlane], Awaitable[None]] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> None:
    """Load ``archives``, serve until a signal, then drain. Load errors raise before any
    request is served. The management API (token required) listens on its own port
    unless ``management_port`` is -1; a non-loopback address needs ``public_management``.

    The home is checked (and created) first; what was repaired in it is reported through
    ``on_warning`` (default: logged).

    Raises:
        ConfigError: an unsafe home or token file, an address in use, a public management
            address without ``public_management``.
    """
    for warning in prepare_home(settings.home):
        if on_warning is not None:
            on_warning(warning)
        else:
            log.warning("%s", warning)
    manage = settings.management_port >= 0
    if manage and not _is_loopback(settings.management_host) and not settings.public_management:
        raise ConfigError(
            f"refusing to expose the management API on {settings.management_host}: it can load "
            "code; pass --public-management if you really mean it"
        )
    # Before any model loads: an unsafe token file fails the start at once.
    token = load_or_create_token(settings.home) if manage else None
    sock = bind(settings.host, settings.port)
    msock = bind(settings.management_host, settings.management_port) if manage else None
    state = ServerState(settings=settings, metrics=Metrics(__version__))
    async with Engine.open(engine_config(settings), state.metrics) as engine:
        for source in archives:
            info = await engine.control.load(
                ArchiveSource(source) if isinstance(source, Path) else source
            )
            if on_loaded is not None:
                on_loaded(info)
        if after_load is not None:
            await after_load(engine.control)
        if registry is not None:
            await asyncio.to_thread(registry.started, engine.control.snapshot())
        state.engine_ = engine
        # Everything loaded so far lives as long as the server: move it out of the
        # collector's sight. Without this, full collections over the model objects paused
        # the event loop for 50-120 ms several times a second at c=32 (benchmarks/).
        gc.collect()
        gc.freeze()
        server = _Server(_config(build_app(state), settings), state)
        servers = [server.serve(sockets=[sock])]
        if msock is not None and token is not None:
            mgmt = _FollowerServer(_config(build_management_app(state, token, registry), settings))
            server.followers = [mgmt]
            servers.append(mgmt.serve(sockets=[msock]))
            if on_management is not None:
                on_management(url_of(msock), settings.home / TOKEN_FILE)
        if on_listening is not None:
            _notify_when_started(server, lambda: on_listening(url_of(sock)))
        try:
            await asyncio.gather(*servers)
        finally:
            state.draining = True


def _config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        # httptools, with limits on header size and count and on slow heads and bodies.
        http=limited_protocol(EdgeLimits.from_settings(settings)),
        ws="none",
        limit_concurrency=settings.max_connections,
        lifespan="off",
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )


def serve(
    settings: Settings,
    archives: Sequence[Path | ArchiveSource],
    **callbacks: Any,
) -> None:
    """Blocking :func:`serve_async` on a uvloop event loop (same keyword arguments)."""
    uvloop.run(serve_async(settings, archives, **callbacks))


def _notify_when_started(server: uvicorn.Server, callback: Callable[[], None]) -> None:
    original = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original(sockets=sockets)
        if server.started:
            callback()

    server.startup = startup  # type: ignore[method-assign]
