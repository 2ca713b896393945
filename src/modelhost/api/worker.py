"""A worker process of ``modelhost serve --workers N``: ``python -m modelhost.api.worker``.

    supervisor ──socketpair (JSON lines: start document, then calls)──► this worker
    shared listening socket (inherited) ──► this worker's inference app (codecs, /metrics)

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

import uvloop

from modelhost.api.channel import ChannelServer
from modelhost.api.front import InferenceFront
from modelhost.api.startup import stop_signals
from modelhost.api.workerapi import WorkerStart, worker_ops
from modelhost.config import Settings


async def run(listen_fd: int, channel_fd: int) -> None:
    """Serve as the supervisor says until stopped."""
    channel = await ChannelServer.open(socket.socket(fileno=channel_fd))
    try:
        start = WorkerStart.from_doc(await channel.start_document())
    except EOFError:  # the supervisor is gone already: nothing to serve
        return
    settings = Settings(**start.settings)
    sock = socket.socket(fileno=listen_fd)
    async with stop_signals() as stop:
        async with InferenceFront.open(settings, sock, start.workers) as front:
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


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelhost.api.worker")
    parser.add_argument("--listen-fd", type=int, required=True, help="shared listening socket")
    parser.add_argument("--channel-fd", type=int, required=True, help="control socketpair end")
    args = parser.parse_args(argv)
    uvloop.run(run(args.listen_fd, args.channel_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
