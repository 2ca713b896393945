"""What every way of serving does first and last: checks, sockets, hooks, signals.

One process or a supervisor of workers, ``modelhost serve`` starts the same way: the home is
checked, the management token read (an unsafe token file fails the start before any model
loads), the inference and management sockets bound, and it tells its caller what happens
through :class:`ServeHooks`:

    listening(url)            the port is open; models still loading (readiness 503)
    loaded(report)            one per model version
    management(url, token)    the management API answers
    serving(url)              ready: every model loaded and warm
    event(line) / warning(line)   later news (a worker restarted) / something to look at
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from modelhost.api.auth import load_or_create_token
from modelhost.api.httpserver import bind, is_loopback
from modelhost.config import Settings
from modelhost.errors import ConfigError
from modelhost.home import prepare_home
from modelhost.serving import LoadReport

log = logging.getLogger("modelhost.api")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _log_info(line: str) -> None:
    log.info("%s", line)


def _log_warning(line: str) -> None:
    log.warning("%s", line)


def _nothing(*_: object) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ServeHooks:
    """Callbacks a server calls as it starts and runs (see the module docstring)."""

    listening: Callable[[str], None] = _nothing
    loaded: Callable[[LoadReport], None] = _nothing
    management: Callable[[str, Path], None] = _nothing
    serving: Callable[[str], None] = _nothing
    event: Callable[[str], None] = _log_info
    warning: Callable[[str], None] = _log_warning


@dataclass(frozen=True, slots=True)
class Listeners:
    """The bound sockets of a server and the management token (None: no management API)."""

    inference: socket.socket
    management: socket.socket | None
    token: str | None

    def close(self) -> None:
        """Close both sockets (closing a closed socket does nothing)."""
        self.inference.close()
        if self.management is not None:
            self.management.close()


def open_listeners(settings: Settings, hooks: ServeHooks) -> Listeners:
    """Check the home, read (or create) the token, bind the sockets.

    The management API listens on its own port unless ``management_port`` is -1; a
    non-loopback address needs ``public_management``.

    Raises:
        ConfigError: an unsafe home or token file, an address in use, a public management
            address without ``public_management``.
    """
    for warning in prepare_home(settings.home):
        hooks.warning(warning)
    manage = settings.management_port >= 0
    if manage and not is_loopback(settings.management_host) and not settings.public_management:
        raise ConfigError(
            f"refusing to expose the management API on {settings.management_host}: it can load "
            "code; pass --public-management if you really mean it"
        )
    # Before any model loads: an unsafe token file fails the start at once.
    token = load_or_create_token(settings.home) if manage else None
    sock = bind(settings.host, settings.port)
    try:
        msock = bind(settings.management_host, settings.management_port) if manage else None
    except ConfigError:
        sock.close()
        raise
    return Listeners(sock, msock, token)


@dataclass(slots=True)
class StopSignals:
    """Set by the first SIGTERM or SIGINT (stop gracefully); ``forced`` by a second one."""

    requested: asyncio.Event = field(default_factory=asyncio.Event)
    forced: asyncio.Event = field(default_factory=asyncio.Event)

    def _on_signal(self) -> None:
        if self.requested.is_set():
            self.forced.set()
        self.requested.set()


@asynccontextmanager
async def stop_signals() -> AsyncIterator[StopSignals]:
    """Handle SIGTERM and SIGINT in the running loop for the block (restored after)."""
    loop = asyncio.get_running_loop()
    stop = StopSignals()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop._on_signal)
    try:
        yield stop
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)


async def until_done_or_stopped(task: asyncio.Task[None], stop: StopSignals) -> bool:
    """Wait for ``task`` or a stop signal; True when the task finished first (its error
    re-raised), False when a signal came first (the task is cancelled and awaited)."""
    waiter = asyncio.ensure_future(stop.requested.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False
