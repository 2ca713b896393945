"""Run the server: open the engine (load + warm up), then uvicorn (uvloop + httptools).

On the first SIGTERM or SIGINT the server turns unready, stops accepting connections,
finishes every request it accepted, drains the engine and returns (exit status 0). A
second Ctrl-C forces the exit.
"""

from __future__ import annotations

import gc
import math
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import uvicorn
import uvloop

from modelhost import __version__
from modelhost.api.app import build_app
from modelhost.api.state import ServerState
from modelhost.config import Settings
from modelhost.errors import ConfigError
from modelhost.monitor.metrics import Metrics
from modelhost.serving import ArchiveSource, Engine, ModelInfo

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn.Server that marks the state draining and does not re-raise the signal."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state

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
        super().handle_exit(sig, frame)


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


async def serve_async(
    settings: Settings,
    archives: Sequence[Path | ArchiveSource],
    *,
    on_loaded: Callable[[ModelInfo], None] | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Load ``archives``, serve until a signal, then drain. Load errors raise before binding
    anything but the socket.
    """
    sock = bind(settings.host, settings.port)
    state = ServerState(settings=settings, metrics=Metrics(__version__))
    async with Engine.open(settings, state.metrics) as engine:
        for source in archives:
            info = await engine.load(source)
            if on_loaded is not None:
                on_loaded(info)
        state.engine_ = engine
        # Everything loaded so far lives as long as the server: move it out of the
        # collector's sight. Without this, full collections over the model objects paused
        # the event loop for 50-120 ms several times a second at c=32 (benchmarks/).
        gc.collect()
        gc.freeze()
        config = uvicorn.Config(
            build_app(state),
            http="httptools",
            lifespan="off",
            log_level=settings.log_level,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        )
        server = _Server(config, state)
        if on_listening is not None:
            _notify_when_started(server, lambda: on_listening(url_of(sock)))
        try:
            await server.serve(sockets=[sock])
        finally:
            state.draining = True


def serve(
    settings: Settings,
    archives: Sequence[Path | ArchiveSource],
    *,
    on_loaded: Callable[[ModelInfo], None] | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Blocking :func:`serve_async` on a uvloop event loop."""
    uvloop.run(serve_async(settings, archives, on_loaded=on_loaded, on_listening=on_listening))


def _notify_when_started(server: uvicorn.Server, callback: Callable[[], None]) -> None:
    original = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original(sockets=sockets)
        if server.started:
            callback()

    server.startup = startup  # type: ignore[method-assign]
