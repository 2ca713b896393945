"""Export a torch archive to ONNX or TorchScript, checking the outputs still match.

torch archive ──open+verify──► nn.Module ──export──► model.onnx / model.pt
                                    │                     │
                                    └── same probe batch ─┴─► max |Δ| <= atol ──► new archive
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from modelhost.archive.manifest import Manifest, ModelSpec
from modelhost.archive.open import open_archive
from modelhost.archive.pack import write_archive
from modelhost.errors import ConfigError
from modelhost.optimize.onnx_build import export_torch_module
from modelhost.runtimes.base import LoadOptions
from modelhost.runtimes.registry import get_runtime
from modelhost.runtimes.torch import load_module

Target = Literal["onnx", "torchscript"]
_FILES: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.pt"}
_PROBE_ROWS = 16


@dataclass(frozen=True, slots=True)
class ExportReport:
    """The written archive's manifest and the largest output difference on the probe."""

    manifest: Manifest
    max_abs_diff: float


def probe_batch(
    manifest: Manifest, rows: int = _PROBE_ROWS, seed: int = 0
) -> dict[str, np.ndarray]:
    """A seeded random batch shaped like the inputs (values in [0, 1) for floats)."""
    rng = np.random.default_rng(seed)
    batch = {}
    for spec in manifest.inputs:
        shape = (rows, *(8 if d == -1 else d for d in spec.shape[1:]))
        if np.dtype(spec.dtype).kind == "f":
            batch[spec.name] = rng.random(shape).astype(spec.dtype)
        else:
            batch[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
    return batch


def export_archive(
    source: Path, out: Path, to: Target, *, atol: float = 1e-4, version: str | None = None
) -> ExportReport:
    """Export the torch archive ``source`` to ``to`` and write the new archive ``out``.

    The exported model is loaded back through its runtime and compared with the torch
    model on a seeded probe batch; a difference over ``atol`` refuses the export.

    Raises:
        ConfigError: the source is not a torch archive, or the outputs differ over ``atol``.
        ArchiveError: the source archive is unsafe or broken.
    """
    if to not in _FILES:
        raise ConfigError(f"--to {to!r} is not supported; use onnx or torchscript")
    with tempfile.TemporaryDirectory(prefix="modelhost-export-") as tmp:
        opened = open_archive(source, Path(tmp) / "src")
        manifest = opened.manifest
        if manifest.runtime != "torch":
            raise ConfigError(f"{source} is a {manifest.runtime} archive; export needs a torch one")
        module = load_module(opened.root, manifest)
        probe = probe_batch(manifest)
        with torch.inference_mode():
            expected = (
                get_runtime("torch").load(opened.root, manifest, LoadOptions("cpu")).predict(probe)
            )
        target = Path(tmp) / _FILES[to]
        args = tuple(torch.from_numpy(probe[s.name]) for s in manifest.inputs)
        _EXPORTERS[to](module, args, manifest, target)
        spec = ModelSpec(
            **{
                **manifest.model_dump(include=set(ModelSpec.model_fields)),
                "runtime": to,
                "runtime_config": {"file": _FILES[to]},
            }
        )
        exported = get_runtime(to).load(
            Path(tmp), _with_file(spec, manifest, to), LoadOptions("cpu")
        )
        diff = max_abs_diff(expected, exported.predict(probe))
        if diff > atol:
            raise ConfigError(
                f"exported {to} outputs differ from torch by {diff:.3g} (> atol {atol:g}); "
                "refusing to write the archive"
            )
        spec = spec.model_copy(update={"metrics": {**spec.metrics, "export_max_abs_diff": diff}})
        written = write_archive(
            spec,
            {_FILES[to]: target},
            name=manifest.name,
            version=version or manifest.version,
            out=out,
        )
    return ExportReport(manifest=written, max_abs_diff=diff)


def max_abs_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Largest absolute element difference over the outputs both mappings hold."""
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


def _with_file(spec: ModelSpec, source: Manifest, to: Target) -> Manifest:
    # A throwaway manifest so the runtime can load the exported file before packing.
    digest = "0" * 64
    return Manifest(
        **spec.model_dump(), name=source.name, version=source.version,
        files={_FILES[to]: {"sha256": digest, "size": 0}},
    )  # fmt: skip


def _export_onnx(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], manifest: Manifest, target: Path
) -> None:
    probe = {s.name: a.numpy() for s, a in zip(manifest.inputs, args, strict=True)}
    export_torch_module(module, manifest, probe, target)


def _export_torchscript(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], _: Manifest, target: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, args)  # type: ignore[no-untyped-call]
    traced.save(str(target))


_EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript}
