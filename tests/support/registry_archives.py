"""A small valid archive for registry tests (the registry never loads the model)."""

from __future__ import annotations

import uuid
from pathlib import Path

from modelhost.archive.manifest import ModelSpec, TensorSignature
from modelhost.archive.pack import write_archive


def make_archive(directory: Path, name: str = "tiny", payload: bytes = b"weights") -> Path:
    """A small, valid archive (the registry never loads the model)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(payload)
    spec = ModelSpec(
        runtime="onnx",
        inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 4)),),
        outputs=(TensorSignature(name="y", dtype="float32", shape=(-1, 2)),),
        metrics={"accuracy": 0.5},
    )
    out = directory / f"{name}-{uuid.uuid4().hex[:6]}.mh"
    write_archive(spec, {"model.onnx": directory / "model.onnx"}, name=name, version="1", out=out)
    return out
