"""Run the server: one process, or a supervisor of worker processes (``--workers N``).

    bind ──► the port answers (liveness 200; readiness and inference 503)
         ──► load + warm up every archive ──► ready (readiness 200) ──► SIGTERM/SIGINT
         ──► unready, no new connections, every accepted request answered, drained, exit 0

A load error at start ends the server with that error (nothing was ready). A second Ctrl-C
forces the exit. With several workers the supervisor does the same for all of them
(``supervisor.py``); with one, this process serves directly, without any extra hop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import uvloop

from modelhost.api.auth import TOKEN_FILE
from modelhost.api.front import InferenceFront
from modelhost.api.httpserver import HttpServer, url_of, uvicorn_config
from modelhost.api.management import RegistryPort, build_management_app
from modelhost.api.startup import (
    Listeners,
    ServeHooks,
    open_listeners,
    stop_signals,
    until_done_or_stopped,
)
from modelhost.api.supervisor import supervise
from modelhost.config import Settings
from modelhost.runtimes.devices import may_use_accelerator
from modelhost.serving import ArchiveSource, LoadReport, ManagedModels
from modelhost.serving.policy import choose_placement, worker_count

AfterLoad = Callable[[ManagedModels], Awaitable[None]]


def resolve_layout(settings: Settings) -> tuple[Settings, int]:
    """``settings`` with the placement chosen ("auto": README's rule), and the number of
    front processes (``workers`` 0: README's rule)."""
    accelerator = may_use_accelerator(settings.device)
    placement = choose_placement(settings.placement, accelerator)
    settings = settings.model_copy(update={"placement": placement})
    if settings.workers > 0:
        return settings, settings.workers
    cores = len(os.sched_getaffinity(0))
    return settings, worker_count(0, cores, accelerator, placement == "shared")


async def serve_async(
    settings: Settings,
    archives: Sequence[Path | ArchiveSource],
    hooks: ServeHooks | None = None,
    *,
    registry: RegistryPort | None = None,
    after_load: AfterLoad | None = None,
) -> None:
    """Serve ``archives`` until SIGTERM/SIGINT, then drain (see the module docstring).

    ``after_load`` runs once everything is loaded, before the server is ready (a restore
    of scale and split). The management API (token required) listens on its own port
    unless ``management_port`` is -1.

    Raises:
        ConfigError: an unsafe home or token file, an address in use, a public management
            address without ``public_management``.
        ModelhostError: a load at start failed.
    """
    hooks = hooks or ServeHooks()
    settings, count = resolve_layout(settings)
    sources = [ArchiveSource(s) if isinstance(s, Path) else s for s in archives]
    listeners = open_listeners(settings, hooks)
    try:
        if count > 1 or settings.placement == "shared":
            await supervise(settings, sources, listeners, count, hooks, registry, after_load)
        else:
            await _serve_one(settings, sources, listeners, hooks, registry, after_load)
    finally:
        listeners.close()


async def _serve_one(
    settings: Settings,
    sources: list[ArchiveSource],
    listeners: Listeners,
    hooks: ServeHooks,
    registry: RegistryPort | None,
    after_load: AfterLoad | None,
) -> None:
    async with (
        stop_signals() as stop,
        InferenceFront.open(settings, listeners.inference) as front,
    ):
        await front.accept()
        hooks.listening(url_of(listeners.inference))
        management: list[HttpServer] = []
        starting = asyncio.create_task(
            _start(front, sources, listeners, hooks, registry, after_load, management)
        )
        try:
            if await until_done_or_stopped(starting, stop):
                await stop.requested.wait()
            stopping = asyncio.create_task(front.stop())
            forced = asyncio.create_task(stop.forced.wait())
            await asyncio.wait({stopping, forced}, return_when=asyncio.FIRST_COMPLETED)
            if forced.done():
                await front.stop(force=True)
            forced.cancel()
        finally:
            await asyncio.gather(*(m.close() for m in management))


async def _start(
    front: InferenceFront,
    sources: list[ArchiveSource],
    listeners: Listeners,
    hooks: ServeHooks,
    registry: RegistryPort | None,
    after_load: AfterLoad | None,
    management: list[HttpServer],
) -> None:
    """Load, restore, record, turn ready, open the management API, announce."""
    for source in sources:
        _, info = await front.models.load_info(source)
        hooks.loaded(LoadReport.of(info))
    if after_load is not None:
        await after_load(front.models)
    if registry is not None:
        await asyncio.to_thread(registry.started, front.models.snapshot())
    front.ready()
    if listeners.management is not None and listeners.token is not None:
        app = build_management_app(front.models, front.state.settings, listeners.token, registry)
        server = HttpServer(uvicorn_config(app, front.state.settings))
        management.append(server)
        await server.open(listeners.management)
        hooks.management(url_of(listeners.management), front.state.settings.home / TOKEN_FILE)
    hooks.serving(url_of(listeners.inference))


def serve(
    settings: Settings,
    archives: Sequence[Path | ArchiveSource],
    hooks: ServeHooks | None = None,
    *,
    registry: RegistryPort | None = None,
    after_load: AfterLoad | None = None,
) -> None:
    """Blocking :func:`serve_async` on a uvloop event loop."""
    uvloop.run(serve_async(settings, archives, hooks, registry=registry, after_load=after_load))
