"""Listening sockets and the uvicorn servers on them (uvloop + httptools, modelhost's limits).

Sockets are bound by modelhost, not by uvicorn, so that the port is open (connections wait
in its backlog) before any model loads, and so that one socket can be shared by several
worker processes. Servers never install signal handlers: whoever runs them (the single
process, a worker, the supervisor) decides what a signal means.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from modelhost.api.protocol import EdgeLimits, limited_protocol
from modelhost.config import Settings
from modelhost.errors import ConfigError

# Connections the kernel queues for a listening socket before any process accepts them.
BACKLOG = 2048


def bind(host: str, port: int) -> socket.socket:
    """Bind a TCP socket and listen on it (``port`` 0 picks a free one).

    Raises:
        ConfigError: the address is in use or not available on this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL a bound socket answers on."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn settings for ``app``: httptools with modelhost's edge limits; the app's
    lifespan runs (its shutdown after every accepted request was answered)."""
    return uvicorn.Config(
        app,
        # httptools, with limits on header size and count and on slow heads and bodies.
        http=limited_protocol(EdgeLimits.from_settings(settings)),
        ws="none",
        limit_concurrency=settings.max_connections,
        backlog=BACKLOG,
        lifespan="on",
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
    )


class HttpServer(uvicorn.Server):
    """A uvicorn server run in the background, leaving signals alone.

    :meth:`open` returns once it accepts connections; :meth:`close` stops it gracefully (no
    new connections; accepted requests are answered, up to ``drain_timeout_s``).
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._accepting = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._accepting.set()

    async def open(self, sock: socket.socket) -> None:
        """Serve on ``sock`` in the background; return once connections are accepted.
        Calling it again only waits for that. Raises what stopped uvicorn at start-up."""
        if self._serving is None:
            self._serving = asyncio.create_task(self.serve(sockets=[sock]))
        accepting = asyncio.ensure_future(self._accepting.wait())
        await asyncio.wait({accepting, self._serving}, return_when=asyncio.FIRST_COMPLETED)
        if self._serving.done():
            accepting.cancel()
            self._serving.result()

    async def close(self, force: bool = False) -> None:
        """Stop accepting and answer what was accepted (``force``: stop waiting for it).
        Calling it again waits for the same stop."""
        self.should_exit = True
        if force:
            self.force_exit = True
        if self._serving is not None:
            await asyncio.shield(self._serving)
