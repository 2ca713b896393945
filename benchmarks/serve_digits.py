"""Served digits throughput and latency against the in-process limit of the same runtime.

    per runtime (torch, onnx):
      in-process: Runtime.load, Predictor.predict at batch 1..64 ─► best items/s, batch-1 p50/p99
      server:     `modelhost serve --port 0` subprocess          ─► time to ready, idle RSS
      load:       wrk (or a Python asyncio child process)         ─► req/s, p50/p99 at c = 1, 8, 32
                  /metrics before/after each run                  ─► mean batch, queue, compute
      ratios:     served c=32 / in-process best (target >= 0.5)
                  served p50 c=1 - in-process p50 batch 1 (target <= 2 ms)

Run ``.venv/bin/python benchmarks/serve_digits.py --help``. Server thread settings come from
the environment (``MODELHOST_TORCH_THREADS``, ``MODELHOST_ONNX_INTRA_OP_THREADS``): set them
when running this script and the in-process figures use them too. This is a benchmark that
prints figures and ratios; it asserts nothing about speed. It is one file on purpose (over the
usual module size): it runs as a plain script, with no package of its own to split into.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import multiprocessing as mp
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO / "examples" / "digits" / "images"
MODEL = "digits"
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
THROUGHPUT_TARGET_RATIO = 0.5
ADDED_P50_TARGET_MS = 2.0
_URL_LINE = re.compile(r"serving on (http://\S+)")


# ---------------------------------------------------------------------------------- figures


@dataclass(slots=True)
class InProcessFigures:
    """The runtime alone, called from one worker thread: items/s per batch size, batch-1
    latency, warm."""

    threads: str
    items_per_s: dict[int, float]
    best_batch_size: int
    best_items_per_s: float
    p50_batch1_ms: float
    p99_batch1_ms: float
    batch1_reps: int
    p50_batch1_main_thread_ms: float  # for reference: the server never predicts on it
    codec_p50_us: float  # PNG decode + classify + JSON encode of one answer


@dataclass(slots=True)
class ServedRun:
    """One load run at one concurrency, with the server's own metrics over that run."""

    concurrency: int
    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    mean_batch_size: float
    server_mean_ms: float  # modelhost_request_duration_seconds: decoded .. encoded
    queue_mean_ms: float
    compute_mean_ms: float  # per batch
    server_cpu_cores: float
    loadgen_cpu_cores: float
    other_cpu_cores: float  # the rest of the machine: other processes disturbing the run


@dataclass(slots=True)
class RuntimeReport:
    """Everything measured for one runtime."""

    runtime: str
    archive: str
    server_command: list[str]
    in_process: InProcessFigures
    loaded: str = ""  # the server's own "loaded ..." line (load and warm-up times)
    ready_s: float = 0.0
    idle_rss_mib: float = 0.0
    peak_rss_mib: float = 0.0
    served: list[ServedRun] = field(default_factory=list)
    throughput_ratio: float = math.nan  # nan: no run at c=32
    added_p50_ms: float = math.nan  # nan: no run at c=1
    exit_code: int | None = None
    stop_s: float = 0.0


# ---------------------------------------------------------------------------------- archives


def prepare_archives(runtimes: list[str], archive: Path | None, workdir: Path) -> dict[str, Path]:
    """Archive per runtime: the given one, an ONNX export of it, or a freshly trained one."""
    modelhost = [sys.executable, "-m", "modelhost"]
    if archive is None:
        model_dir, archive = workdir / "model", workdir / "digits.mh"
        print(f"no --archive given: training digits-cnn and packing it into {workdir} (~15 s)")
        _run_quiet([*modelhost, "train", "digits-cnn", "--out", str(model_dir)])
        _run_quiet([*modelhost, "pack", str(model_dir), "--name", MODEL, "--version", "1",
                    "--out", str(archive)])  # fmt: skip
    given = _archive_runtime(archive)
    result: dict[str, Path] = {}
    for runtime in runtimes:
        if runtime == given:
            result[runtime] = archive
        elif runtime == "onnx" and given == "torch":
            onnx = workdir / "digits-onnx.mh"
            print(f"exporting {archive} to ONNX: {onnx}")
            # --trust-code: the model.py is our own, just trained
            export = ["export", str(archive), "--to", "onnx", "--out", str(onnx), "--trust-code"]
            _run_quiet([*modelhost, *export])
            result[runtime] = onnx
        else:
            sys.exit(f"--runtime {runtime} needs a {runtime} or torch archive, not {given}")
    return result


def _run_quiet(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} failed:\n{done.stdout}{done.stderr}")


def _archive_runtime(archive: Path) -> str:
    from modelhost.archive import open_archive

    with tempfile.TemporaryDirectory(prefix="mh-bench-") as tmp:
        return str(open_archive(archive, Path(tmp)).manifest.runtime)


def load_png() -> tuple[bytes, str]:
    """A 28x28 grayscale digit PNG: the first example image, else one made from the data."""
    found = sorted(IMAGES_DIR.glob("digit_*.png"))
    if found:
        return found[0].read_bytes(), str(found[0].relative_to(REPO))
    from modelhost.train.data import load_digits_split, to_png_bytes

    return to_png_bytes(load_digits_split().x_test[0]), "generated from the digits test split"


# ---------------------------------------------------------------------------------- in-process


def measure_in_process(
    archive: Path, png: bytes, per_batch_s: float, latency_s: float, instances: int = 1
) -> InProcessFigures:
    """Load ``archive`` as the server does (same runtime, same thread settings) and time it."""
    import orjson

    from modelhost.archive import open_archive
    from modelhost.codecs.classification import classify
    from modelhost.codecs.images import decode_image
    from modelhost.config import Settings
    from modelhost.runtimes.registry import get_runtime
    from modelhost.serving import engine_config
    from modelhost.serving.loader import load_options

    settings = engine_config(Settings(instances=instances))
    with tempfile.TemporaryDirectory(prefix="mh-bench-") as tmp:
        opened = open_archive(archive, Path(tmp))
        manifest = opened.manifest
        options = load_options(settings, manifest)  # the server's own thread policy
        predictor = get_runtime(manifest.runtime).load(opened.root, manifest, options)
        if manifest.preprocessing is None or manifest.postprocessing is None:
            sys.exit(f"{archive} is not an image classifier")
        image = decode_image(png, manifest.preprocessing)
        name = manifest.inputs[0].name
        one = {name: image[None]}
        main_s = _timings(lambda: predictor.predict(one), latency_s / 2, min_reps=500)

        def limit() -> tuple[dict[int, float], np.ndarray]:
            rates: dict[int, float] = {}
            for size in BATCH_SIZES:
                batch = {name: np.ascontiguousarray(np.broadcast_to(image, (size, *image.shape)))}
                rates[size] = size * _best_rate(lambda b=batch: predictor.predict(b), per_batch_s)
            return rates, _timings(lambda: predictor.predict(one), latency_s, min_reps=1000)

        # The server calls predict from one worker thread per instance, never from the main
        # thread; torch with 2 intra-op threads is 2-4x slower at batch 1 there on a 2-core
        # box (0.5 vs 0.15 ms, measured), so the limit is measured the way the server runs.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-instance") as worker:
            items_per_s, latencies_s = worker.submit(limit).result()
        logits = next(iter(predictor.predict(one).values()))
        post, labels = manifest.postprocessing, manifest.labels
        prep = manifest.preprocessing

        def codec() -> bytes:  # what the native route does around the engine call
            decode_image(png, prep)
            answer = {"predictions": classify(logits, labels, post)}
            return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)

        codec_s = _timings(codec, 0.3, min_reps=200)
        threads = (
            f"torch threads {_torch_threads()}"
            if manifest.runtime == "torch"
            else f"onnx intra-op threads {settings.onnx_intra_op_threads or 'default (0)'}"
        )
    best = max(items_per_s, key=lambda b: items_per_s[b])
    return InProcessFigures(
        threads=threads,
        items_per_s=items_per_s,
        best_batch_size=best,
        best_items_per_s=items_per_s[best],
        p50_batch1_ms=float(np.percentile(latencies_s, 50)) * 1e3,
        p99_batch1_ms=float(np.percentile(latencies_s, 99)) * 1e3,
        batch1_reps=len(latencies_s),
        p50_batch1_main_thread_ms=float(np.percentile(main_s, 50)) * 1e3,
        codec_p50_us=float(np.percentile(codec_s, 50)) * 1e6,
    )


def _instances(server_args: str) -> int:
    """The ``--instances N`` among the server flags (1 when absent): it sets torch's threads."""
    words = shlex.split(server_args)
    for i, word in enumerate(words):
        if word == "--instances" and i + 1 < len(words):
            return int(words[i + 1])
        if word.startswith("--instances="):
            return int(word.split("=", 1)[1])
    return 1


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _best_rate(call: Any, budget_s: float, slices: int = 5) -> float:
    """Calls per second of ``call`` (warm): the best of ``slices`` equal parts of ``budget_s``.

    The best slice, not the mean, because other processes on a small box only ever slow a
    slice down (the same reason ``timeit`` reports the minimum).
    """
    for _ in range(5):
        call()
    best = 0.0
    for _ in range(slices):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < budget_s / slices or calls < 3:
            call()
            calls += 1
        best = max(best, calls / elapsed)
    return best


def _timings(call: Any, budget_s: float, min_reps: int) -> np.ndarray:
    """Per-call seconds of ``call`` (warm) over ``budget_s`` and at least ``min_reps`` calls."""
    for _ in range(20):
        call()
    out: list[float] = []
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end or len(out) < min_reps:
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return np.asarray(out)


# ---------------------------------------------------------------------------------- server


class ServerProcess:
    """``modelhost serve`` as a subprocess: start, wait until ready, SIGTERM, exit status."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = cmd
        self.lines: list[str] = []
        self.url = ""
        self._url_seen = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._started_s = 0.0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout_s: float = 120.0) -> float:
        """Start the server; return seconds from process start to /v2/health/ready 200."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self._started_s = time.perf_counter()
        self._proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = self._started_s + timeout_s
        while not self._url_seen.wait(0.005):
            if self._proc.poll() is not None or time.perf_counter() > deadline:
                sys.exit(f"server did not start:\n{''.join(self.lines)}")
        while time.perf_counter() < deadline:
            with contextlib.suppress(OSError):
                if http_get(f"{self.url}/v2/health/ready", timeout_s=1.0)[0] == 200:
                    return time.perf_counter() - self._started_s
            time.sleep(0.005)
        sys.exit(f"server never answered ready:\n{''.join(self.lines)}")

    def _drain(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)
            if not self.url and (match := _URL_LINE.search(line)):
                self.url = match.group(1)
                self._url_seen.set()

    def stop(self, timeout_s: float = 60.0) -> tuple[int | None, float]:
        """SIGTERM; return (exit status or None if it had to be killed, seconds to exit)."""
        assert self._proc is not None
        start = time.perf_counter()
        self._proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            code = None
        return code, time.perf_counter() - start

    def kill_if_running(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` first, then every descendant alive now, read afresh from /proc each call.

    With ``--workers N`` the server is a tree (supervisor, workers, an engine process), and
    workers may restart between two samples, so the tree is never cached.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # exited while /proc was walked
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree: list[int] = []
    todo = [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def tree_status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM) summed over ``pid``'s process tree.

    Summed VmHWM is each process's own peak added up: an upper bound of the tree's peak.
    """
    total = proc_status_kib(pid, key)  # the root must be there: no silent 0
    for child in process_tree(pid)[1:]:
        with contextlib.suppress(OSError):  # exited since the walk
            total += proc_status_kib(child, key)
    return total


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of ``pid``'s process tree (all threads).

    Each process adds its own time and that of its reaped children (cutime, cstime), so a
    worker that exits between two samples stays counted through its parent.
    """
    total_ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            if p == pid:
                raise
            continue  # exited since the walk: its parent's cutime holds it once reaped
        total_ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total_ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(max_wait_s: float, busy_cores: float = 0.15) -> None:
    """Wait (up to ``max_wait_s``) for one second in which the machine is nearly idle.

    Other processes on a 2-core box (a test run, a build) distort every figure here.
    """
    deadline = time.perf_counter() + max_wait_s
    while True:
        before = machine_busy_s()
        time.sleep(1.0)
        busy = machine_busy_s() - before
        if busy < busy_cores:
            return
        if time.perf_counter() > deadline:
            print(f"  (machine still busy: {busy:.2f} cores used by others; measuring anyway)")
            return


def metric_sums(text: str, model: str) -> dict[str, float]:
    """Sum each Prometheus sample over the label sets that carry ``model="<model>"``.

    >>> metric_sums('a_sum{model="d",version="1"} 3.0\\na_sum{model="x"} 9', "d")
    {'a_sum': 3.0}
    """
    sums: dict[str, float] = {}
    needle = f'model="{model}"'
    for line in text.splitlines():
        if line.startswith("#") or needle not in line:
            continue
        name, value = line.split("{", 1)[0], line.rsplit(" ", 1)[1]
        sums[name] = sums.get(name, 0.0) + float(value)
    return sums


def scrape(url: str) -> dict[str, float]:
    return metric_sums(http_get(f"{url}/metrics")[1].decode(), MODEL)


# ---------------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class LoadTarget:
    """What every load request sends."""

    url: str
    path: str
    body_file: Path
    content_type: str


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: int


# The end of every wrk script: one WRK_JSON line with the run's figures (a format string:
# braces doubled).
WRK_DONE_LUA = """\
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, "
    .. "\\"errors\\": %d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""

_WRK_LUA = (
    """\
wrk.method = "POST"
{headers}
local f = assert(io.open("{body_file}", "rb"))
wrk.body = f:read("*a")
f:close()

"""
    + WRK_DONE_LUA
)


def wrk_script(headers: dict[str, str], body_file: Path) -> str:
    """The wrk Lua script POSTing ``body_file`` with ``headers``, printing one WRK_JSON line."""
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    return _WRK_LUA.format(headers=lines, body_file=body_file)


def run_wrk(target: LoadTarget, concurrency: int, duration_s: float, threads: int) -> LoadResult:
    """Closed-loop load with wrk: ``concurrency`` keep-alive connections."""
    script = target.body_file.with_suffix(".lua")
    script.write_text(wrk_script({"Content-Type": target.content_type}, target.body_file))
    return wrk(script, target.url + target.path, concurrency, duration_s, threads)


def wrk(script: Path, url: str, concurrency: int, duration_s: float, threads: int) -> LoadResult:
    """Run wrk with a :func:`wrk_script` against ``url``; its figures."""
    cmd = [
        "wrk", "-t", str(min(threads, concurrency)), "-c", str(concurrency),
        "-d", f"{max(1, round(duration_s))}s", "--timeout", "10s", "--latency",
        "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    match = re.search(r"WRK_JSON (\{.*\})", done.stdout)
    if done.returncode != 0 or match is None:
        sys.exit(f"{shlex.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    doc = json.loads(match.group(1))
    return LoadResult(
        requests=doc["requests"],
        duration_s=doc["duration_us"] / 1e6,
        p50_ms=doc["p50_us"] / 1e3,
        p99_ms=doc["p99_us"] / 1e3,
        errors=doc["errors"],
    )


def run_python_load(target: LoadTarget, concurrency: int, duration_s: float) -> LoadResult:
    """The same closed loop from a spawned child process (asyncio streams, keep-alive)."""
    host_port = target.url.removeprefix("http://")
    host, port = host_port.rsplit(":", 1)
    body = target.body_file.read_bytes()
    request = (
        f"POST {target.path} HTTP/1.1\r\nHost: {host_port}\r\n"
        f"Content-Type: {target.content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_python_load_child, args=(child, host, int(port), request, concurrency, duration_s)
    )
    proc.start()
    result: LoadResult = parent.recv()
    proc.join()
    return result


def _python_load_child(
    conn: Any, host: str, port: int, request: bytes, concurrency: int, duration_s: float
) -> None:
    import asyncio

    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    conn.send(runner(_python_load(host, port, request, concurrency, duration_s)))
    conn.close()


async def _python_load(
    host: str, port: int, request: bytes, concurrency: int, duration_s: float
) -> LoadResult:
    import asyncio

    latencies_s: list[float] = []
    errors = 0
    start_s = time.perf_counter()
    stop_s = start_s + duration_s

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        while (sent_s := time.perf_counter()) < stop_s:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            latencies_s.append(time.perf_counter() - sent_s)
            errors += head[9:12] != b"200"
        writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed_s = time.perf_counter() - start_s
    lat = np.asarray(latencies_s)
    return LoadResult(
        requests=len(lat),
        duration_s=elapsed_s,
        p50_ms=float(np.percentile(lat, 50)) * 1e3,
        p99_ms=float(np.percentile(lat, 99)) * 1e3,
        errors=errors,
    )


def served_run(
    server: ServerProcess, target: LoadTarget, concurrency: int, duration_s: float, wrk: bool,
    wrk_threads: int,
) -> ServedRun:  # fmt: skip
    """One load run with /metrics and CPU time read before and after."""
    before, cpu_before = scrape(server.url), tree_cpu_s(server.pid)
    children_before, busy_before = _children_cpu_s(), machine_busy_s()
    wall_start = time.perf_counter()
    if wrk:
        load = run_wrk(target, concurrency, duration_s, wrk_threads)
    else:
        load = run_python_load(target, concurrency, duration_s)
    wall_s = time.perf_counter() - wall_start
    server_cpu = tree_cpu_s(server.pid) - cpu_before
    loadgen_cpu = _children_cpu_s() - children_before
    busy = machine_busy_s() - busy_before
    after = scrape(server.url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def mean(name: str, scale: float = 1.0) -> float:
        count = delta(f"{name}_count")
        return delta(f"{name}_sum") / count * scale if count else float("nan")

    return ServedRun(
        concurrency=concurrency,
        requests=load.requests,
        duration_s=load.duration_s,
        requests_per_s=load.requests / load.duration_s,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        errors=load.errors,
        mean_batch_size=mean("modelhost_batch_size"),
        server_mean_ms=mean("modelhost_request_duration_seconds", 1e3),
        queue_mean_ms=mean("modelhost_queue_duration_seconds", 1e3),
        compute_mean_ms=mean("modelhost_compute_duration_seconds", 1e3),
        server_cpu_cores=server_cpu / wall_s,
        loadgen_cpu_cores=loadgen_cpu / wall_s,
        other_cpu_cores=max(0.0, busy - server_cpu - loadgen_cpu) / wall_s,
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------- one runtime


def bench_runtime(
    runtime: str, archive: Path, png_file: Path, args: argparse.Namespace, wrk: bool
) -> RuntimeReport:
    print(f"\n[{runtime}] in-process limit ...", flush=True)
    wait_until_quiet(args.quiet_wait_s)
    figures = measure_in_process(
        archive, png_file.read_bytes(), args.inproc_s, args.latency_s, _instances(args.server_args)
    )
    # The torch archive is the one this script trained: its model.py is our own code.
    trust = ["--trust-code"] if runtime == "torch" else []
    cmd = [sys.executable, "-m", "modelhost", "serve", str(archive), "--port", "0",
           "--management-port", "-1", *trust, *shlex.split(args.server_args)]  # fmt: skip
    report = RuntimeReport(runtime, str(archive), cmd, figures)
    server = ServerProcess(cmd)
    try:
        print(f"[{runtime}] starting: {shlex.join(cmd)}", flush=True)
        report.ready_s = server.start()
        report.loaded = " ".join(next((x for x in server.lines if "loaded" in x), "").split())
        target = LoadTarget(server.url, f"/v1/models/{MODEL}:predict", png_file, "image/png")
        # Warm-up (first connections, allocator growth), then the idle footprint.
        served_run(server, target, 8, 1.0, wrk, args.wrk_threads)
        time.sleep(0.5)
        report.idle_rss_mib = tree_status_kib(server.pid, "VmRSS") / 1024
        for concurrency in args.concurrency:
            print(f"[{runtime}] load c={concurrency} for {args.duration_s:g} s ...", flush=True)
            wait_until_quiet(args.quiet_wait_s)
            report.served.append(
                served_run(server, target, concurrency, args.duration_s, wrk, args.wrk_threads)
            )
        report.peak_rss_mib = tree_status_kib(server.pid, "VmHWM") / 1024
        report.exit_code, report.stop_s = server.stop()
    finally:
        server.kill_if_running()
    by_c = {run.concurrency: run for run in report.served}
    if 32 in by_c:
        report.throughput_ratio = by_c[32].requests_per_s / figures.best_items_per_s
    if 1 in by_c:
        report.added_p50_ms = by_c[1].p50_ms - figures.p50_batch1_ms
    return report


# ---------------------------------------------------------------------------------- printing


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cores": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable",
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "onnxruntime": version("onnxruntime"),
        "numpy": version("numpy"),
        "modelhost": version("modelhost"),
    }


def verdict(value: float, target: float, at_least: bool) -> str:
    """MET / MISSED against a target (n/a when the figure was not measured)."""
    if math.isnan(value):
        return "n/a"
    return "MET" if (value >= target if at_least else value <= target) else "MISSED"


def print_report(report: RuntimeReport, loadgen: str) -> None:
    f = report.in_process
    print(f"\n=== {report.runtime}  ({report.archive})")
    print(f"server: {shlex.join(report.server_command)}")
    print(f"in-process, {f.threads}, Predictor.predict from one worker thread (as the server):")
    print("  batch " + "".join(f"{b:>9}" for b in f.items_per_s))
    print("  items/s" + "".join(f"{v:>9.0f}" for v in f.items_per_s.values())[1:])
    print(
        f"  best: batch {f.best_batch_size} at {f.best_items_per_s:.0f} items/s; batch 1 "
        f"latency p50 {f.p50_batch1_ms:.3f} ms, p99 {f.p99_batch1_ms:.3f} ms "
        f"({f.batch1_reps} calls; main thread p50 {f.p50_batch1_main_thread_ms:.3f} ms)"
    )
    print(f"  codec per request (PNG decode + classify + JSON encode, on the event loop): "
          f"p50 {f.codec_p50_us:.0f} us")  # fmt: skip
    print(f"server: {report.loaded}")
    print(f"server: ready {report.ready_s:.2f} s after process start; idle RSS after warm-up "
          f"(whole process tree) {report.idle_rss_mib:.0f} MiB "
          f"(peak {report.peak_rss_mib:.0f} MiB)")  # fmt: skip
    print(f"served, POST /v1/models/{MODEL}:predict image/png, 1 item per request, {loadgen}:")
    head = ("conc", "req/s", "p50 ms", "p99 ms", "errors", "batch", "srv ms", "queue ms",
            "compute ms", "srv CPU", "load CPU", "other CPU")  # fmt: skip
    print("  " + "".join(f"{h:>11}" for h in head))
    for r in report.served:
        cells = (f"{r.concurrency}", f"{r.requests_per_s:.0f}", f"{r.p50_ms:.2f}",
                 f"{r.p99_ms:.2f}", f"{r.errors}", f"{r.mean_batch_size:.2f}",
                 f"{r.server_mean_ms:.2f}", f"{r.queue_mean_ms:.2f}", f"{r.compute_mean_ms:.2f}",
                 f"{r.server_cpu_cores:.2f}", f"{r.loadgen_cpu_cores:.2f}",
                 f"{r.other_cpu_cores:.2f}")  # fmt: skip
        print("  " + "".join(f"{c:>11}" for c in cells))
    ratio, added = report.throughput_ratio, report.added_p50_ms
    ratio_ok = verdict(ratio, THROUGHPUT_TARGET_RATIO, at_least=True)
    added_ok = verdict(added, ADDED_P50_TARGET_MS, at_least=False)
    print(f"  served c=32 / in-process best = {ratio:.2f}   "
          f"(target >= {THROUGHPUT_TARGET_RATIO}: {ratio_ok})")  # fmt: skip
    print(f"  added p50 at c=1 = {added:.2f} ms   (target <= {ADDED_P50_TARGET_MS} ms: {added_ok})")
    status = "killed (no exit in 60 s)" if report.exit_code is None else report.exit_code
    ok = "ok" if report.exit_code == 0 else "NOT 0"
    print(f"shutdown: SIGTERM -> exit status {status} in {report.stop_s:.2f} s ({ok})")


def print_summary(reports: list[RuntimeReport]) -> None:
    print("\nsummary:")
    print(f"  {'runtime':8} {'in-proc best/s':>15} {'c=32 req/s':>11} {'ratio':>6} {'':7} "
          f"{'c=1 p50 ms':>11} {'added ms':>9} {'':7} {'ready s':>8} {'idle MiB':>9}")  # fmt: skip
    for r in reports:
        c32 = next((x.requests_per_s for x in r.served if x.concurrency == 32), float("nan"))
        c1 = next((x.p50_ms for x in r.served if x.concurrency == 1), float("nan"))
        ratio_ok = verdict(r.throughput_ratio, THROUGHPUT_TARGET_RATIO, at_least=True)
        added_ok = verdict(r.added_p50_ms, ADDED_P50_TARGET_MS, at_least=False)
        print(f"  {r.runtime:8} {r.in_process.best_items_per_s:>15.0f} {c32:>11.0f} "
              f"{r.throughput_ratio:>6.2f} {ratio_ok:7} {c1:>11.2f} {r.added_p50_ms:>9.2f} "
              f"{added_ok:7} {r.ready_s:>8.2f} {r.idle_rss_mib:>9.0f}")  # fmt: skip


NOTES = """\
notes:
- in-process = the runtime alone (Predictor.predict on a ready array, from one worker thread
  as the server calls it), same thread settings as the server (MODELHOST_TORCH_THREADS /
  MODELHOST_ONNX_INTRA_OP_THREADS); served requests carry 1 item each, so the server reaches
  batch B only by batching concurrent requests.
- the load generator runs on the same {cores} cores as the server and competes with it for
  CPU ("load CPU" column, in cores); served figures are a lower bound for a separate client.
- batch = mean items per executed batch, srv ms = mean server time from request decoded to
  answer encoded, queue ms = mean wait for a batch, compute ms = mean time of one batch,
  all from /metrics deltas over each run; srv / load / other CPU = cores used by the server
  (whole process tree), the load generator and everything else on the machine (other CPU >
  0.1: a disturbed run); idle MiB = RSS of the whole server process tree, peak = the sum of
  each process's own peak RSS.
- added p50 at c=1 = served p50 at c=1 - in-process p50 at batch 1: HTTP, asyncio, PNG
  decode, JSON encode and the hop to the worker thread."""


# ---------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, help="torch or onnx archive (default: train one)")
    parser.add_argument("--runtime", choices=("torch", "onnx", "both"), default="both")
    parser.add_argument("--duration-s", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--concurrency", type=_ints, default=[1, 8, 32], help="e.g. 1,8,32")
    parser.add_argument("--server-args", default="", help="extra `modelhost serve` flags")
    parser.add_argument("--load-generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (1 or 2)")
    parser.add_argument("--inproc-s", type=float, default=1.0, help="seconds per batch size")
    parser.add_argument("--latency-s", type=float, default=2.0, help="seconds of batch-1 calls")
    parser.add_argument(
        "--quiet-wait-s", type=float, default=20.0, help="wait this long for an idle machine"
    )
    parser.add_argument("--out", type=Path, help="write every figure to this JSON file")
    return parser.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mh-bench-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtimes = ["torch", "onnx"] if args.runtime == "both" else [args.runtime]
    wrk_path = shutil.which("wrk")
    if args.load_generator == "wrk" and wrk_path is None:
        sys.exit("--load-generator wrk: wrk is not installed (apt-get install wrk)")
    use_wrk = wrk_path is not None and args.load_generator != "python"
    loadgen = (
        f"wrk -t {args.wrk_threads} --latency (closed loop, keep-alive, c = connections)"
        if use_wrk
        else "Python asyncio child process (closed loop, keep-alive; wrk not used)"
    )
    info = machine()
    command = shlex.join([sys.executable, *sys.argv] if argv is None else ["serve_digits", *argv])
    with _workdir() as workdir:
        archives = prepare_archives(runtimes, args.archive, workdir)
        png, png_source = load_png()
        png_file = workdir / "digit.png"
        png_file.write_bytes(png)
        reports = [bench_runtime(r, archives[r], png_file, args, use_wrk) for r in runtimes]
    print("\n" + "=" * 100)
    print(f"command: {command}")
    print(f"machine: {info['cores']} cores, {info['cpu']}; {info['os']}")
    print(", ".join(f"{k} {info[k]}" for k in ("python", "torch", "onnxruntime", "numpy")))
    threads_env = {k: v for k, v in os.environ.items() if k.startswith("MODELHOST_")}
    print(f"server settings: {args.server_args or '(archive defaults)'}; env {threads_env or '{}'}")
    print(f"request body: {len(png)} bytes PNG ({png_source}); load generator: {loadgen}; "
          f"{args.duration_s:g} s per run")  # fmt: skip
    for report in reports:
        print_report(report, "wrk" if use_wrk else "python load generator")
    print_summary(reports)
    print(NOTES.format(cores=len(os.sched_getaffinity(0))))
    if args.out is not None:
        doc = {"command": command, "machine": info, "load_generator": loadgen,
               "server_args": args.server_args, "env": threads_env,
               "reports": [asdict(r) for r in reports]}  # fmt: skip
        args.out.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.out}")
    return 0 if all(r.exit_code == 0 for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
