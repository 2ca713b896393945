"""Shared placement's transport: a digits request through the engine process, against the
in-process data plane.

    in-process     this process: DataPlane.infer over the ONNX digits model
    echo host      an engine process whose data plane answers zeros at once: the transport
                   alone (frames, slots, copies, the socket), no model, no batching
    engine host    `python -m modelhost.serving.engine_process` with the digits model
    x 1 and 2 worker processes, each a closed loop at concurrency 1 and 16 through its
    own EngineClient and RemoteScheduler; 1x1x28x28 float32 in, 1x10 float32 out

Every event loop is uvloop's, as in the server. Figures: requests/s (all processes
together) and round-trip p50/p99 in ms (the mean of the processes' p50, the largest p99). Run
``.venv/bin/python benchmarks/shared_transport.py --help``. It prints figures and asserts
nothing about speed; without ``--archive`` it trains and exports the digits model first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_digits import machine, prepare_archives, wait_until_quiet

PREFIX = "mh-bench-"
ROUNDTRIP = Callable[[], Awaitable[object]]


def image() -> np.ndarray:
    return np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)


async def closed_loop(call: ROUNDTRIP, concurrency: int, seconds: float) -> dict[str, float]:
    """``concurrency`` callers, each calling ``call`` again as soon as it returns."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        while (start := time.perf_counter()) < stop_at:
            await call()
            latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


async def warm_then_measure(call: ROUNDTRIP, concurrency: int, seconds: float) -> dict[str, float]:
    await closed_loop(call, concurrency, min(1.0, seconds / 4))
    return await closed_loop(call, concurrency, seconds)


# ----------------------------------------------------------------------- in this process


async def in_process(archive: Path, concurrency: int, seconds: float) -> dict[str, float]:
    from modelhost.monitor.metrics import Metrics
    from modelhost.serving import ArchiveSource, Engine, EngineConfig
    from modelhost.types import InferRequest

    x = image()
    async with Engine.open(EngineConfig(), Metrics("bench")) as engine:
        info = await engine.control.load(ArchiveSource(archive))
        route = engine.data.resolve(info.name, info.version)

        def call() -> Awaitable[object]:
            return engine.data.infer(route, InferRequest({"image": x}, time.monotonic() + 60))

        return await warm_then_measure(call, concurrency, seconds)


# ----------------------------------------------------------------- a worker process (child)


async def worker(socket: str, concurrency: int, seconds: float) -> None:
    """Connect, say ``ready``, wait for a line on stdin, measure, print the figures."""
    from modelhost.serving.engine_client import EngineClient
    from modelhost.serving.remote import RemoteScheduler
    from modelhost.types import InferRequest

    x = image()
    async with EngineClient.connect(Path(socket), prefix=PREFIX) as client:
        scheduler = RemoteScheduler(client, "digits", "2")

        def call() -> Awaitable[object]:
            return scheduler.submit(InferRequest({"image": x}, time.monotonic() + 60), 1)

        await closed_loop(call, concurrency, 0.5)  # connected and warm
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        print(json.dumps(await closed_loop(call, concurrency, seconds)), flush=True)


# --------------------------------------------------------------- an echo host (child)


async def echo_host(socket: str) -> None:
    """An EngineHost whose data plane answers 1x10 zeros at once (no model, no batcher)."""
    from types import SimpleNamespace

    from modelhost.serving.engine_host import EngineHost
    from modelhost.types import InferResult

    scheduler = SimpleNamespace(instance_count=1, queue_depth=0, in_flight=0)
    zeros = np.zeros((1, 10), np.float32)

    class Echo:
        def resolve(self, name: str, version: str | None = None) -> object:
            return SimpleNamespace(scheduler=scheduler)

        async def infer(self, route: object, request: object) -> InferResult:
            return InferResult("digits", "2", {"logits": zeros})

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with EngineHost(Echo(), prefix=PREFIX).listening(Path(socket)):  # type: ignore[arg-type]
        print("ready", flush=True)
        await stop.wait()


# ---------------------------------------------------------------------------- the parent


def start(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        sys.exit(f"{args[:4]} did not start: {line!r}")
    return proc


def through_host(socket: Path, workers: int, concurrency: int, seconds: float) -> dict[str, float]:
    me = [sys.executable, __file__]
    children = [
        start([*me, "--worker", str(socket), str(concurrency), str(seconds)])
        for _ in range(workers)
    ]
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    figures = []
    for child in children:
        out, _ = child.communicate(timeout=seconds + 60)
        figures.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "requests": sum(f["requests"] for f in figures),
        "rps": sum(f["rps"] for f in figures),
        "p50_ms": float(np.mean([f["p50_ms"] for f in figures])),
        "p99_ms": float(max(f["p99_ms"] for f in figures)),
    }


def row(label: str, f: dict[str, float]) -> str:
    rps, p50, p99 = f["rps"], f["p50_ms"], f["p99_ms"]
    return f"  {label:<34} {rps:>7.0f} req/s   p50 {p50:6.3f} ms   p99 {p99:6.3f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archive", type=Path, help="an ONNX (or torch, exported) digits archive")
    p.add_argument("--seconds", type=float, default=5.0, help="per figure (default 5)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--quiet-wait-s", type=float, default=30.0,
                   help="before each figure, wait up to this long for an idle machine")  # fmt: skip
    p.add_argument("--worker", nargs=3, metavar=("SOCKET", "C", "SECONDS"), help=argparse.SUPPRESS)
    p.add_argument("--echo-host", metavar="SOCKET", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        socket, c, s = args.worker
        uvloop.run(worker(socket, int(c), float(s)))
        return
    if args.echo_host:
        uvloop.run(echo_host(args.echo_host))
        return

    with tempfile.TemporaryDirectory(prefix="mh", dir="/tmp") as tmp:
        archive = prepare_archives(["onnx"], args.archive, Path(tmp))["onnx"]
        socket = Path(tmp) / "e.sock"
        print(json.dumps(machine()))
        print(f"digits 1x1x28x28 float32 -> 1x10; {args.seconds:g} s per figure; {archive}")
        engine = [sys.executable, "-m", "modelhost.serving.engine_process"]
        hosts = {
            "echo host": [sys.executable, __file__, "--echo-host", str(socket)],
            "engine host": [*engine, "--socket", str(socket), "--archive", str(archive),
                            "--prefix", PREFIX],
        }  # fmt: skip
        for c in args.concurrency:
            print(f"concurrency {c} per process")
            wait_until_quiet(args.quiet_wait_s)
            print(row("in-process data plane", uvloop.run(in_process(archive, c, args.seconds))))
            for name, cmd in hosts.items():
                host = start(cmd)
                try:
                    for n in (1, 2):
                        label = f"{name}, {n} worker process{'es' if n > 1 else ''}"
                        wait_until_quiet(args.quiet_wait_s)
                        print(row(label, through_host(socket, n, c, args.seconds)))
                finally:
                    host.send_signal(signal.SIGTERM)
                    host.communicate(timeout=60)


if __name__ == "__main__":
    main()
