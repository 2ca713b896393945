"""``modelhost optimize``: export a torch, transformers, keras or onnx archive to ONNX
(optionally quantized), prove what it keeps and what it gains, and write the new archive
only when the quality holds.

    source.mh ──open──► original predictor ─┐
        │                                   ├─► same held-out batches ─► Quality (gate)
        └──► export (+ quantize) ─► ONNX ───┘        └─► batch-1 latency, batch-32 throughput
                                        └─► new.mh: same task, signature, pre/post-processing,
                                            codec files (tokenizer); report in its metrics

Both models run in this process on the CPU, one after the other, with the thread settings
the caller gives (the CLI: those a one-worker server uses); the timings are medians of
repeated runs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelhost.archive.manifest import (
    ClassificationPostprocessing,
    FileEntry,
    Manifest,
    ModelSpec,
)
from modelhost.archive.open import open_archive
from modelhost.archive.pack import write_archive
from modelhost.errors import ConfigError, UntrustedCode
from modelhost.optimize.heldout import HeldOut, held_out
from modelhost.optimize.onnx_build import (
    Quantize,
    copy_onnx,
    export_keras,
    export_torch_module,
    export_transformers,
    quantize,
)
from modelhost.optimize.quality import Quality, Thresholds, compare
from modelhost.runtimes.base import LoadOptions, Predictor
from modelhost.runtimes.registry import RUNTIMES, get_runtime

SOURCES = ("torch", "transformers", "keras", "onnx")
MODEL_FILE = "model.onnx"
_MIN_TIMING_S = 0.5
_DEFAULT_THRESHOLDS = Thresholds()
_CPU = LoadOptions("cpu")


@dataclass(frozen=True, slots=True)
class Timing:
    """Batch-1 latency (median, ms) and batch-32 throughput (rows/s) of one model."""

    latency_ms: float
    throughput: float


@dataclass(frozen=True, slots=True)
class OptimizeReport:
    """What ``optimize_archive`` measured, and the archive it wrote (None when refused)."""

    source: Manifest
    manifest: Manifest | None
    quality: Quality
    failures: list[str]
    data: str
    synthetic_data: bool
    sizes: tuple[int, int]
    timings: tuple[Timing, Timing]
    quantize: str | None
    notes: list[str] = field(default_factory=list)

    def title(self) -> str:
        """One line naming the model, the conversion and the data."""
        m = self.source
        how = f"onnx {self.quantize}" if self.quantize else "onnx"
        return f"{m.name}:{m.version} {m.runtime} -> {how}, on {self.data}"

    def rows(self) -> list[tuple[str, str, str, str]]:
        """The report as table rows: (what, original, optimized, change)."""
        (size_a, size_b), (a, b) = self.sizes, self.timings
        q = self.quality
        table = [
            ("model bytes", f"{size_a:,}", f"{size_b:,}", f"{size_b / size_a:.2f}x"),
            ("batch-1 latency (ms)", f"{a.latency_ms:.2f}", f"{b.latency_ms:.2f}",
             _speed(a.latency_ms, b.latency_ms)),
            ("batch-32 throughput (rows/s)", f"{a.throughput:,.0f}", f"{b.throughput:,.0f}",
             f"{b.throughput / a.throughput:.2f}x"),
            ("max abs error", "", f"{q.max_abs_error:.3g}", ""),
        ]  # fmt: skip
        if q.top1_agreement is not None:
            table.append(("top-1 agreement", "", f"{q.top1_agreement:.4f}", ""))
        if q.cosine_mean is not None and q.cosine_min is not None:
            table.append(
                ("cosine mean / worst", "", f"{q.cosine_mean:.5f} / {q.cosine_min:.5f}", "")
            )
        return table


def _speed(before_ms: float, after_ms: float) -> str:
    if after_ms <= before_ms:
        return f"{before_ms / after_ms:.2f}x faster"
    return f"{after_ms / before_ms:.2f}x slower"


def optimize_archive(
    source: Path,
    out: Path,
    *,
    quantize_to: Quantize | None = None,
    data: Path | None = None,
    thresholds: Thresholds = _DEFAULT_THRESHOLDS,
    force: bool = False,
    trust_code: bool = False,
    graph_optimization: str = "all",
    options: LoadOptions = _CPU,
    version: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> OptimizeReport:
    """Optimize ``source`` into ``out`` (see the module docstring).

    Args:
        quantize_to: ``int8``, ``fp16`` or None (export only).
        data: held-out inputs (see :mod:`modelhost.optimize.heldout`); default: library
            sentences for text models, seeded random rows otherwise.
        thresholds: the least quality kept; below it nothing is written unless ``force``.
        trust_code: allow importing a torch archive's model.py.
        graph_optimization: the onnxruntime level the new archive names.
        options: how both models load (device, thread counts) for the checks and timings.
        progress: called with a short line as each step starts.

    Raises:
        ConfigError: a source runtime this cannot export, bad data or options.
        UntrustedCode: a torch archive without ``trust_code``.
        ArchiveError: the source archive is unsafe or broken.
    """
    with tempfile.TemporaryDirectory(prefix="modelhost-optimize-") as tmp:
        opened = open_archive(source, Path(tmp) / "src")
        manifest, root = opened.manifest, opened.root
        if manifest.runtime not in SOURCES:
            raise ConfigError(
                f"{source} is a {manifest.runtime} archive; optimize takes "
                f"{', '.join(SOURCES)} archives"
            )
        if RUNTIMES[manifest.runtime].runs_code and not trust_code:
            raise UntrustedCode(
                f"optimizing {source} imports its model.py, code of the archive's author; "
                "pass --trust-code if you trust its author"
            )
        progress(f"loading {manifest.name}:{manifest.version} ({manifest.runtime})")
        original = get_runtime(manifest.runtime).load(root, manifest, options)
        heldout = held_out(manifest, opened.codec_files, data)
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        exported = Path(tmp) / "exported.onnx"
        progress("exporting to ONNX")
        _export(manifest, root, heldout, exported, original)
        target = out_dir / MODEL_FILE
        if quantize_to is None:
            exported.replace(target)
        else:
            progress(f"quantizing ({quantize_to})")
            quantize(exported, target, quantize_to)
        for name, raw in opened.codec_files.items():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (out_dir / name).write_bytes(raw)
        spec = _spec(manifest, graph_optimization)
        candidate = get_runtime("onnx").load(out_dir, _throwaway(spec, manifest, out_dir), options)
        progress(f"comparing on {heldout.rows} held-out rows ({heldout.source})")
        quality = _quality(manifest, original, candidate, heldout)
        progress("timing batch 1 and batch 32, the original then the optimized model")
        timings = _timings(original, candidate, heldout)
        sizes = (_model_bytes(manifest), _model_bytes(spec, out_dir))
        failures = thresholds.failures(quality)
        report = OptimizeReport(
            source=manifest, manifest=None, quality=quality, failures=failures,
            data=heldout.source, synthetic_data=heldout.synthetic, sizes=sizes,
            timings=timings, quantize=quantize_to,
        )  # fmt: skip
        if failures and not force:
            return report
        metrics = {
            **manifest.metrics,
            **quality.metrics(),
            "optimize_model_bytes": float(sizes[1]),
            "optimize_source_model_bytes": float(sizes[0]),
            "optimize_latency_b1_ms": timings[1].latency_ms,
            "optimize_source_latency_b1_ms": timings[0].latency_ms,
            "optimize_throughput_b32": timings[1].throughput,
            "optimize_source_throughput_b32": timings[0].throughput,
            "optimize_heldout_rows": float(heldout.rows),
        }
        files = {MODEL_FILE: target, **{n: out_dir / n for n in opened.codec_files}}
        written = write_archive(
            spec.model_copy(update={"metrics": metrics}), files,
            name=manifest.name, version=version or manifest.version, out=out,
        )  # fmt: skip
    return OptimizeReport(
        source=manifest, manifest=written, quality=quality, failures=failures,
        data=heldout.source, synthetic_data=heldout.synthetic, sizes=sizes,
        timings=timings, quantize=quantize_to,
    )  # fmt: skip


def _export(
    manifest: Manifest, root: Path, heldout: HeldOut, target: Path, original: Predictor
) -> None:
    probe = heldout.first_rows(2)
    if manifest.runtime == "onnx":
        copy_onnx(root, manifest, target)
    elif manifest.runtime == "transformers":
        export_transformers(root, manifest, probe, target)
    elif manifest.runtime == "keras":
        from modelhost.runtimes.keras import KerasPredictor

        assert isinstance(original, KerasPredictor)  # what the keras runtime loads
        export_keras(original.model, manifest, probe, target)
    else:
        from modelhost.runtimes.torch import load_module

        export_torch_module(load_module(root, manifest), manifest, probe, target)


def _spec(manifest: Manifest, graph_optimization: str) -> ModelSpec:
    fields = manifest.model_dump(include=set(ModelSpec.model_fields))
    config = {"file": MODEL_FILE, "graph_optimization": graph_optimization}
    try:
        return ModelSpec(**{**fields, "runtime": "onnx", "runtime_config": config})
    except ValueError as exc:
        raise ConfigError(f"--graph-optimization {graph_optimization!r}: {exc}") from exc


def _throwaway(spec: ModelSpec, source: Manifest, out_dir: Path) -> Manifest:
    # A manifest naming the files on disk, so the onnx runtime loads them before packing.
    files = {
        p.relative_to(out_dir).as_posix(): FileEntry(sha256="0" * 64, size=p.stat().st_size)
        for p in out_dir.rglob("*")
        if p.is_file()
    }
    return Manifest(**spec.model_dump(), name=source.name, version=source.version, files=files)


def _quality(
    manifest: Manifest, original: Predictor, candidate: Predictor, heldout: HeldOut
) -> Quality:
    outputs = [s.name for s in manifest.outputs]
    ref: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    got: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for batch in heldout.batches:
        a, b = original.predict(batch), candidate.predict(batch)
        for name in outputs:
            ref[name].append(np.asarray(a[name]))
            got[name].append(np.asarray(b[name]))
    joined = {k: np.concatenate(v) for k, v in ref.items()}
    optimized = {k: np.concatenate(v) for k, v in got.items()}
    return compare(joined, optimized, outputs[0], _kind(manifest))


def _kind(manifest: Manifest) -> str:
    """How answers are compared: as a classifier's ranking, as embeddings, or as values."""
    if manifest.task == "classification" or isinstance(
        manifest.postprocessing, ClassificationPostprocessing
    ):
        return "classification"
    return manifest.task


def _timings(original: Predictor, candidate: Predictor, heldout: HeldOut) -> tuple[Timing, Timing]:
    """Batch-1 latency and batch-32 throughput of each model, one model after the other
    (interleaved runs measured each framework's idle threads, not the models: torch at
    batch 1 took 48 ms right after onnxruntime runs, 0.12 ms alone)."""
    one = heldout.first_rows(1)
    full = heldout.batches[0]
    rows = len(next(iter(full.values())))
    timings = []
    for predictor in (original, candidate):
        latency = _median_s(predictor, one, repeats=200)
        per_batch = _median_s(predictor, full, repeats=30)
        timings.append(Timing(latency * 1e3, rows / per_batch))
    return timings[0], timings[1]


def _median_s(predictor: Predictor, batch: Mapping[str, np.ndarray], repeats: int) -> float:
    """Median seconds of ``predictor`` on ``batch`` after two warm-up calls, over up to
    ``repeats`` runs (at least 5; stops after ``_MIN_TIMING_S`` of measuring)."""
    predictor.predict(batch)
    predictor.predict(batch)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (
        len(times) < 5 or time.perf_counter() - started < _MIN_TIMING_S
    ):
        begin = time.perf_counter()
        predictor.predict(batch)
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def _model_bytes(spec: ModelSpec, root: Path | None = None) -> int:
    """Bytes of a model's files: the manifest's sizes, or the files under ``root``."""
    if isinstance(spec, Manifest):
        return sum(entry.size for entry in spec.files.values())
    assert root is not None
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
