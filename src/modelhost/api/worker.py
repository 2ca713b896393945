"""A worker process of ``modelhost serve --workers N``: ``python -m modelhost.api.worker``.

    supervisor ──socketpair (JSON lines: start document, then calls)──► this worker
    shared listening socket (inherited) ──► this worker's inference app (codecs, /metrics)

With ``--placement shared`` the supervisor starts one more, in the role ``engine``: no
HTTP; it holds the models and serves every worker's requests on a unix socket (one batch
queue per version for all workers), and answers the same model operations.

It loads and routes only what the supervisor tells it (see ``workerapi.py``), serves the
inference app on the socket it inherited, and stops on SIGTERM/SIGINT or when the
supervisor is gone (end of file on the channel): it answers every request it accepted,
then drains. Stopped before it ever took requests (still loading), it exits at once: it
accepted nothing that needs an answer, and a load in progress cannot be interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path

import uvloop
from prometheus_client import generate_latest

from modelhost import __version__
from modelhost.api.channel import ChannelServer
from modelhost.api.front import InferenceFront
from modelhost.api.startup import stop_signals
from modelhost.api.workerapi import WorkerStart, engine_ops, worker_ops
from modelhost.config import Settings
from modelhost.monitor.metrics import Metrics
from modelhost.serving import Engine, LocalModels, engine_config
from modelhost.serving.engine_host import EngineHost


async def run(listen_fd: int | None, channel_fd: int) -> None:
    """Serve as the supervisor says until stopped."""
    channel = await ChannelServer.open(socket.socket(fileno=channel_fd))
    try:
        start = WorkerStart.from_doc(await channel.start_document())
    except EOFError:  # the supervisor is gone already: nothing to serve
        return
    settings = Settings(**start.settings)
    if start.role == "engine":
        assert start.engine_socket is not None
        await _run_engine(settings, Path(start.engine_socket), channel)
        return
    if listen_fd is None:
        raise SystemExit("a front worker needs --listen-fd")
    sock = socket.socket(fileno=listen_fd)
    engine_socket = None if start.engine_socket is None else Path(start.engine_socket)
    async with stop_signals() as stop:
        async with InferenceFront.open(settings, sock, start.workers, engine_socket) as front:
            channel.serve(worker_ops(front), on_close=stop.requested.set)
            if start.accept_at_once:
                await front.accept()
            await stop.requested.wait()
            if not front.is_ready:
                _exit_now()
            forced = asyncio.create_task(stop.forced.wait())
            stopping = asyncio.create_task(front.stop())
            await asyncio.wait({forced, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if forced.done():
                await front.stop(force=True)
            forced.cancel()
        await channel.close()


async def _run_engine(settings: Settings, socket_path: Path, channel: ChannelServer) -> None:
    """The engine process: load what the supervisor says, serve the workers on
    ``socket_path`` until stopped (the supervisor stops the workers first)."""
    metrics = Metrics(__version__)
    async with stop_signals() as stop, Engine.open(engine_config(settings), metrics) as engine:
        host = EngineHost(engine.data, lambda: generate_latest(metrics.registry))
        async with host.listening(socket_path):
            channel.serve(
                engine_ops(LocalModels(engine.data, engine.control)),
                on_close=stop.requested.set,
            )
            await stop.requested.wait()
    await channel.close()


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelhost.api.worker")
    parser.add_argument("--listen-fd", type=int, help="shared listening socket (fronts only)")
    parser.add_argument("--channel-fd", type=int, required=True, help="control socketpair end")
    args = parser.parse_args(argv)
    uvloop.run(run(args.listen_fd, args.channel_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
