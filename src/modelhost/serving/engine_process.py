"""The engine process of shared placement: one per device, started by the supervisor.

    python -m modelhost.serving.engine_process --socket /run/mh/engine.sock \\
        --archive digits.mh [--archive ...] [--instances 1] [--max-batch-delay-ms 2] ...

It opens an :class:`Engine`, loads the archives, serves them to worker processes with an
:class:`EngineHost` on the unix socket, and tells its supervisor on stdout, one line each::

    ready socket=PATH pid=PID models=digits:2,slow:1
    connected pid=WORKER arena=NAME
    disconnected pid=WORKER arena=NAME clean=0|1 unlinked=0|1
    stopped

Engine settings (instances, device, threads, batching overrides, trust) are the server's
``MODELHOST_*`` settings, so that a supervisor passing its environment on gets the same
engine as in a single process; the flags above override them.

SIGTERM or SIGINT stops it: workers' requests in flight are cancelled (they get
``cancelled``), the engine drains, the socket file is removed. Exit status 0; 1 when an
archive cannot be loaded, 2 for invalid settings (the reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import uvloop
from prometheus_client import generate_latest
from pydantic import ValidationError

from modelhost import __version__
from modelhost.config import Settings
from modelhost.errors import ModelhostError
from modelhost.monitor.metrics import Metrics
from modelhost.serving.config import EngineConfig, engine_config
from modelhost.serving.engine import Engine
from modelhost.serving.engine_host import EngineHost, HostEvent
from modelhost.serving.served import ArchiveSource
from modelhost.serving.shm import PREFIX


async def serve_engine(
    socket_path: Path,
    archives: Sequence[Path],
    config: EngineConfig,
    stop: asyncio.Event,
    *,
    prefix: str = PREFIX,
    on_line: Callable[[str], None] = lambda line: None,
) -> None:
    """Load ``archives`` into a new engine and serve it on ``socket_path`` until ``stop``.

    Args:
        socket_path: the unix socket workers connect to (created 0600, removed at the end).
        archives: ``.mh`` files, loaded in order (the first of a name is its default).
        config: the engine's batching, instance, device and thread settings.
        stop: set it to stop serving; the engine then drains.
        prefix: shared-memory names of this server's workers start with it.
        on_line: gets the status lines of the module docstring (without newline).

    Raises:
        ModelhostError: an archive cannot be loaded (ArchiveError, UntrustedCode, ...).
    """
    metrics = Metrics(__version__)
    async with Engine.open(config, metrics) as engine:
        loaded = [await engine.control.load(ArchiveSource(path)) for path in archives]
        host = EngineHost(
            engine.data,
            lambda: generate_latest(metrics.registry),
            prefix=prefix,
            on_event=lambda event: on_line(_event_line(event)),
        )
        async with host.listening(socket_path):
            models = ",".join(f"{m.name}:{m.version}" for m in loaded)
            on_line(f"ready socket={socket_path} pid={os.getpid()} models={models}")
            await stop.wait()
    on_line("stopped")


def _event_line(event: HostEvent) -> str:
    if event.kind == "connected":
        return f"connected pid={event.pid} arena={event.arena}"
    return (
        f"disconnected pid={event.pid} arena={event.arena} clean={int(event.clean)} "
        f"unlinked={int(event.unlinked)}"
    )


# Settings a flag may override (the rest, and these when not given, come from MODELHOST_*).
_SETTING_FLAGS = (
    "instances", "device", "torch_threads", "onnx_intra_op_threads", "max_batch_size",
    "max_batch_delay_ms", "max_queue", "trust_code",
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m modelhost.serving.engine_process",
        description="Serve archives to modelhost worker processes over a unix socket. "
        "Engine settings come from MODELHOST_* variables; these flags override them.",
    )
    p.add_argument("--socket", type=Path, required=True, help="unix socket path to listen on")
    p.add_argument("--archive", type=Path, action="append", default=[], help=".mh to load")
    p.add_argument("--prefix", default=PREFIX, help="shared-memory name prefix of workers")
    p.add_argument("--instances", type=int, help="instances per model version")
    p.add_argument("--device", help="cpu, cuda, cuda:N, or auto")
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads (0: auto)")
    p.add_argument("--onnx-intra-op-threads", type=int, help="0: onnxruntime's choice")
    p.add_argument("--max-batch-size", type=int, help="overrides the archive's")
    p.add_argument("--max-batch-delay-ms", type=float, help="overrides the archive's")
    p.add_argument("--max-queue", type=int, help="overrides the archive's")
    p.add_argument("--trust-code", action="store_true", default=None, help="load code archives")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run an engine process (see the module docstring); returns the exit status."""
    args = _parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in _SETTING_FLAGS if getattr(args, k) is not None}
    try:
        config = engine_config(Settings(**overrides))
    except ValidationError as exc:
        sys.stderr.write(f"engine process: invalid settings: {exc}\n")
        return 2

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_engine(args.socket, args.archive, config, stop, prefix=args.prefix, on_line=say)

    try:
        uvloop.run(run())
    except ModelhostError as exc:
        sys.stderr.write(f"engine process: {exc.message}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
