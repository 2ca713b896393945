"""The serving core across process layouts and request bodies, against its in-process limits.

    per runtime (torch, onnx), in one run:
      model-only limit     N = cores processes, each one predictor (1 thread) at its best
                           batch size, started together; items/s summed
      pipeline limit       N = cores processes, each: decode B bodies -> one batch -> predict
                           -> post-process -> encode B answers (no HTTP), per body; summed
      served               `modelhost serve` per layout (1 worker, per-worker x2, shared x2)
                           x body (PNG, JSON instances, v2 JSON, v2 binary) x c = 1, 8, 32, 64
                           (wrk on this machine, closed loop, keep-alive)
      idle RSS             the whole server: supervisor and every worker
      ratios               served c=32 / pipeline limit of that body (target >= 0.6),
                           added p50 at c=1 (served p50 - model p50 at batch 1; target <= 1 ms),
                           p99 at c=32 (target <= 25 ms)

Run ``.venv/bin/python benchmarks/serving_matrix.py --help``. It prints figures and ratios
and asserts nothing about speed. Helpers shared with ``serve_digits.py`` (archives, the server
subprocess, wrk) are imported from it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_digits import (
    MODEL,
    ServerProcess,
    load_png,
    machine,
    prepare_archives,
    tree_status_kib,
    wait_until_quiet,
    wrk,
    wrk_script,
)

BATCH_SIZES = (1, 4, 16, 32, 64)
PIPELINE_BATCH = 32
BODIES = ("png", "json", "v2json", "v2bin")
LAYOUTS: dict[str, tuple[str, ...]] = {
    "1 worker": ("--workers", "1"),
    "per-worker x2": ("--workers", "2", "--placement", "per-worker"),
    "shared x2": ("--workers", "2", "--placement", "shared"),
}
TARGET_RATIO, TARGET_ADDED_P50_MS, TARGET_P99_MS, TARGET_RSS_MIB = 0.6, 1.0, 25.0, 400


# ---------------------------------------------------------------------------------- bodies


@dataclass(frozen=True, slots=True)
class Body:
    """One kind of request users send: where it goes, its headers, its bytes."""

    kind: str
    path: str
    headers: dict[str, str]
    data: bytes


def make_bodies(png: bytes, archive: Path) -> dict[str, Body]:
    """The four bodies for the digits model: PNG, a nested 1x28x28 JSON instance, and the
    same tensor as v2 JSON and as v2 binary."""
    import orjson

    manifest, _ = _open(archive)
    from modelhost.codecs.images import decode_image

    assert manifest.preprocessing is not None
    image = decode_image(png, manifest.preprocessing)  # (1, 28, 28) float32
    name, shape = manifest.inputs[0].name, [1, *image.shape]
    out = manifest.outputs[0].name
    v1, v2 = f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"
    head = orjson.dumps({
        "inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                    "parameters": {"binary_data_size": image.nbytes}}],
        "outputs": [{"name": out, "parameters": {"binary_data": True}}],
    })  # fmt: skip
    return {
        "png": Body("png", v1, {"Content-Type": "image/png"}, png),
        "json": Body(
            "json", v1, {"Content-Type": "application/json"},
            orjson.dumps({"instances": [image.tolist()]}),
        ),
        "v2json": Body(
            "v2json", v2, {"Content-Type": "application/json"},
            orjson.dumps({"inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                                      "data": image.ravel().tolist()}]}),
        ),
        "v2bin": Body(
            "v2bin", v2,
            {"Content-Type": "application/octet-stream",
             "Inference-Header-Content-Length": str(len(head))},
            head + image.tobytes(),
        ),
    }  # fmt: skip


def _open(archive: Path) -> tuple[Any, Path]:
    from modelhost.archive import open_archive

    tmp = Path(tempfile.mkdtemp(prefix="mh-matrix-"))
    opened = open_archive(archive, tmp)
    return opened.manifest, opened.root


# ---------------------------------------------------------------------------------- in-process


def _predictor(archive: Path) -> tuple[Any, Any]:
    """The archive's predictor, loaded as one single-threaded worker of the server would."""
    from modelhost.runtimes.base import LoadOptions
    from modelhost.runtimes.registry import get_runtime

    manifest, root = _open(archive)
    options = LoadOptions(device="cpu", torch_threads=1, onnx_intra_op_threads=1)
    return manifest, get_runtime(manifest.runtime).load(root, manifest, options)


def _count_for(call: Callable[[], int], start: Any, duration_s: float) -> float:
    """Items/s of ``call`` (returns items per call) over ``duration_s`` after ``start``."""
    call()  # warm
    start.wait()
    begin = time.perf_counter()
    items = 0
    while time.perf_counter() - begin < duration_s:
        items += call()
    return items / (time.perf_counter() - begin)


def _model_child(archive: str, start: Any, duration_s: float, results: Any) -> None:
    manifest, predictor = _predictor(Path(archive))
    spec = manifest.inputs[0]
    item = np.zeros([1 if d == -1 else d for d in spec.shape[1:]], dtype=spec.dtype)
    best_size, best_rate = 1, 0.0
    for size in BATCH_SIZES:  # pick the best batch size, alone, before the common start
        batch = {spec.name: np.ascontiguousarray(np.broadcast_to(item, (size, *item.shape)))}
        predictor.predict(batch)
        begin, n = time.perf_counter(), 0
        while time.perf_counter() - begin < 0.2:
            predictor.predict(batch)
            n += size
        if n / (time.perf_counter() - begin) > best_rate:
            best_size, best_rate = size, n / (time.perf_counter() - begin)
    one = {spec.name: item[None]}
    lat = []
    for _ in range(300):
        t = time.perf_counter()
        predictor.predict(one)
        lat.append(time.perf_counter() - t)
    batch = {spec.name: np.ascontiguousarray(np.broadcast_to(item, (best_size, *item.shape)))}

    def call() -> int:
        predictor.predict(batch)
        return best_size

    rate = _count_for(call, start, duration_s)
    results.put({"rate": rate, "batch": best_size, "p50_ms": float(np.median(lat)) * 1e3})


def _pipeline_child(
    archive: str, body: dict[str, Any], start: Any, duration_s: float, results: Any
) -> None:
    """decode -> batch -> predict -> post-process -> encode, as the server's codecs do."""
    manifest, predictor = _predictor(Path(archive))
    decode, encode = _pipeline_steps(manifest, Body(**body))
    from modelhost.serving.instance import concatenate

    def call() -> int:
        parts = [decode() for _ in range(PIPELINE_BATCH)]
        outputs = predictor.predict(concatenate(parts))
        for i in range(PIPELINE_BATCH):
            encode({k: v[i : i + 1] for k, v in outputs.items()})
        return PIPELINE_BATCH

    results.put({"rate": _count_for(call, start, duration_s)})


def _pipeline_steps(
    manifest: Any, body: Body
) -> tuple[Callable[[], dict[str, np.ndarray]], Callable[[dict[str, np.ndarray]], bytes]]:
    """What the server does around the model for ``body``: the route's own decode and
    encode calls over the model's task codec (run inline here: no HTTP, no threads)."""
    from modelhost.api.kserve_v2 import encode_result
    from modelhost.api.native import encode_predictions
    from modelhost.codecs.steps import finish
    from modelhost.codecs.task import TaskCodec
    from modelhost.serving.warmup import specs_of
    from modelhost.types import InferResult

    codec = TaskCodec.for_manifest(manifest, specs_of(manifest.inputs), specs_of(manifest.outputs))
    if body.kind in ("png", "json"):
        kind = body.headers["Content-Type"]
        return (
            lambda: finish(codec.decode(body.data, kind)),
            lambda out: encode_predictions(codec, out),
        )
    length = int(body.headers.get("Inference-Header-Content-Length", "0")) or None
    request = finish(codec.decode_tensors(body.data, length))

    def decode_v2() -> dict[str, np.ndarray]:
        return dict(finish(codec.decode_tensors(body.data, length)).inputs)

    def encode_v2(out: dict[str, np.ndarray]) -> bytes:
        return bytes(encode_result(codec, InferResult(MODEL, "1", out), request)[0])

    return decode_v2, encode_v2


def _on_all_cores(target: Callable[..., None], args: tuple[Any, ...], cores: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(cores), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args[:-1], start, args[-1], results))
             for _ in range(cores)]  # fmt: skip
    for p in procs:
        p.start()
    got = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return got


# ---------------------------------------------------------------------------------- served


@dataclass(slots=True)
class Cell:
    """One served measurement."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def run_wrk(url: str, body: Body, workdir: Path, concurrency: int, duration_s: float) -> Cell:
    body_file = workdir / f"{body.kind}.body"
    body_file.write_bytes(body.data)
    script = workdir / f"{body.kind}.lua"
    script.write_text(wrk_script(body.headers, body_file))
    load = wrk(script, url + body.path, concurrency, duration_s, threads=1)
    return Cell(load.requests / load.duration_s, load.p50_ms, load.p99_ms, load.errors)


@dataclass(slots=True)
class LayoutRun:
    """One layout of one runtime: idle RSS and a cell per body and concurrency."""

    layout: str
    refused: str = ""
    idle_rss_mib: float = 0.0
    cells: dict[str, dict[int, Cell]] = field(default_factory=dict)


def serve_layout(
    archive: Path, layout: str, bodies: dict[str, Body], args: argparse.Namespace, work: Path
) -> LayoutRun:
    cmd = [sys.executable, "-m", "modelhost", "serve", str(archive), "--port", "0",
           "--management-port", "-1", "--trust-code", "--home", str(work / "home"),
           *LAYOUTS[layout]]  # fmt: skip
    run = LayoutRun(layout)
    server = ServerProcess(cmd)
    try:
        try:
            server.start()
        except SystemExit as exc:  # the server refused this layout (not available yet)
            lines = [line for line in str(exc).splitlines() if line.startswith("error:")]
            run.refused = lines[0] if lines else str(exc).splitlines()[-1]
            return run
        wait_until_quiet(5.0)
        run.idle_rss_mib = tree_status_kib(server.pid, "VmRSS") / 1024
        for kind in args.bodies:
            body = bodies[kind]
            run_wrk(server.url, body, work, 8, 1.0)  # warm the path
            run.cells[kind] = {}
            for c in args.concurrency:
                run.cells[kind][c] = run_wrk(server.url, body, work, c, args.duration_s)
                cell = run.cells[kind][c]
                print(f"    {layout:14} {kind:7} c={c:<3} {cell.rps:8,.0f} req/s  "
                      f"p50 {cell.p50_ms:6.2f} ms  p99 {cell.p99_ms:6.2f} ms"
                      + (f"  errors {cell.errors}" if cell.errors else ""))  # fmt: skip
    finally:
        server.stop()
        server.kill_if_running()
    return run


# ---------------------------------------------------------------------------------- report


@dataclass(slots=True)
class RuntimeMatrix:
    runtime: str
    cores: int
    model_items_per_s: float = 0.0
    model_p50_ms: float = 0.0
    pipeline_items_per_s: dict[str, float] = field(default_factory=dict)
    layouts: list[LayoutRun] = field(default_factory=list)


def print_matrix(m: RuntimeMatrix, concurrency: list[int]) -> None:
    print(f"\n== {m.runtime}: model-only limit {m.model_items_per_s:,.0f} items/s on "
          f"{m.cores} cores (batch-1 p50 {m.model_p50_ms:.3f} ms)")  # fmt: skip
    for kind, rate in m.pipeline_items_per_s.items():
        print(f"   pipeline limit {kind:7} {rate:10,.0f} items/s")
    head = "".join(f"  c={c:<6}" for c in concurrency)
    print(f"   {'layout':14} {'body':7}{head}  c=32/pipe  +p50@1  p99@32  idle RSS")
    for run in m.layouts:
        if run.refused:
            print(f"   {run.layout:14} refused: {run.refused}")
            continue
        for kind, cells in run.cells.items():
            rates = "".join(f"  {cells[c].rps:8,.0f}" for c in concurrency)
            c32 = cells.get(32)
            ratio = c32.rps / m.pipeline_items_per_s[kind] if c32 else float("nan")
            added = cells[1].p50_ms - m.model_p50_ms if 1 in cells else float("nan")
            p99 = c32.p99_ms if c32 else float("nan")
            print(f"   {run.layout:14} {kind:7}{rates}  {ratio:9.2f}  {added:6.2f}  "
                  f"{p99:6.1f}  {run.idle_rss_mib:5.0f} MiB")  # fmt: skip
    print(f"   targets: c=32/pipeline >= {TARGET_RATIO}, added p50 at c=1 <= "
          f"{TARGET_ADDED_P50_MS} ms, p99 at c=32 <= {TARGET_P99_MS} ms, idle RSS <= "
          f"{TARGET_RSS_MIB} MiB")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archive", type=Path, help="a digits archive (default: train one)")
    p.add_argument("--runtime", default="torch,onnx", help="comma-separated runtimes")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated layouts")
    p.add_argument("--bodies", default=",".join(BODIES), help="comma-separated bodies")
    p.add_argument("--concurrency", default="1,8,32,64", help="comma-separated")
    p.add_argument("--duration-s", type=float, default=5.0, help="per served cell")
    p.add_argument("--limit-s", type=float, default=3.0, help="per in-process limit")
    p.add_argument("--json-out", type=Path, help="write every figure as JSON")
    args = p.parse_args(argv)
    args.runtime = args.runtime.split(",")
    args.layouts = args.layouts.split(",")
    args.bodies = args.bodies.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    unknown = (set(args.layouts) - set(LAYOUTS)) | (set(args.bodies) - set(BODIES))
    if unknown:
        p.error(f"unknown layouts or bodies: {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    print("machine:", ", ".join(f"{k} {v}" for k, v in machine().items()))
    with tempfile.TemporaryDirectory(prefix="mh-matrix-") as tmp:
        work = Path(tmp)
        archives = prepare_archives(args.runtime, args.archive, work)
        png, _ = load_png()
        matrices = []
        for runtime, archive in archives.items():
            bodies = make_bodies(png, archive)
            m = RuntimeMatrix(runtime, cores)
            print(f"\n{runtime}: in-process limits ({cores} processes)")
            wait_until_quiet(10.0)
            got = _on_all_cores(_model_child, (str(archive), args.limit_s), cores)
            m.model_items_per_s = sum(g["rate"] for g in got)
            m.model_p50_ms = min(g["p50_ms"] for g in got)
            for kind in args.bodies:
                body = asdict(bodies[kind])
                got = _on_all_cores(_pipeline_child, (str(archive), body, args.limit_s), cores)
                m.pipeline_items_per_s[kind] = sum(g["rate"] for g in got)
            print(f"{runtime}: served")
            for layout in args.layouts:
                m.layouts.append(serve_layout(archive, layout, bodies, args, work))
            print_matrix(m, args.concurrency)
            matrices.append(m)
    if args.json_out:
        args.json_out.write_text(json.dumps([asdict(m) for m in matrices], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
