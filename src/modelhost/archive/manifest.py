"""The manifest: the contract between an archive, the engine and every frontend."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1

Task = Literal["classification", "embedding", "regression", "generic"]
DType = Literal[
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSignature(_Strict):
    """One input or output: name, numpy dtype name, shape with -1 for dynamic dims."""

    name: str = Field(min_length=1, max_length=128)
    dtype: DType
    shape: tuple[int, ...]

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape:
            raise ValueError("shape needs at least the batch dimension")
        if any(d == 0 or d < -1 for d in shape):
            raise ValueError(f"dims must be positive or -1, got {list(shape)}")
        return shape


class ImagePreprocessing(_Strict):
    """How an image file becomes the model's first input.

    The image is converted to grayscale (or RGB), resized to ``width`` x ``height``
    (bilinear), turned into float32, multiplied by ``scale``, then ``(x - mean) / std``;
    layout is channels-first (C, H, W).
    """

    kind: Literal["image"] = "image"
    grayscale: bool = True
    width: int = Field(ge=1, le=8192)
    height: int = Field(ge=1, le=8192)
    scale: float = 1.0 / 255.0
    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class ClassificationPostprocessing(_Strict):
    """Turn the first output (logits or probabilities) into labels with scores."""

    kind: Literal["classification"] = "classification"
    softmax: bool = True
    top_k: int = Field(3, ge=1)


class Batching(_Strict):
    """Dynamic batching defaults; the server's settings may override them."""

    max_batch_size: int = Field(32, ge=1, le=65536)
    max_batch_delay_ms: float = Field(2.0, ge=0, le=10_000)
    max_queue: int = Field(1024, ge=1)


class FileEntry(_Strict):
    """Digest and size of one file inside the archive."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class ModelSpec(_Strict):
    """What a training run knows of its model: everything of a manifest but identity.

    Training writes it as ``modelspec.json`` beside the model files; ``pack`` adds name,
    version, file digests and the creation time.
    """

    # A name of runtimes/registry.py, which checks it at pack and at load (with the task):
    # the archive layer knows no runtime, so a new runtime changes nothing here.
    runtime: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    task: Task = "generic"
    inputs: tuple[TensorSignature, ...] = Field(min_length=1)
    outputs: tuple[TensorSignature, ...] = Field(min_length=1)
    labels: tuple[str, ...] = ()
    preprocessing: ImagePreprocessing | None = None
    postprocessing: ClassificationPostprocessing | None = None
    batching: Batching = Batching()
    # How requests become model calls (serving/scheduler.py): "dynamic" batches requests.
    scheduler: str = Field("dynamic", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    device: str = "auto"
    runtime_config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)


class Manifest(ModelSpec):
    """The ``manifest.json`` of an archive."""

    format_version: Literal[1] = 1
    name: str
    version: str
    files: dict[str, FileEntry]
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("name", "version")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} must be 1-128 characters of letters, digits, '.', '_' or '-'"
                " and start with a letter or digit"
            )
        return value
