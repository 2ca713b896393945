"""The manifest: the contract between an archive, the engine and every frontend."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    ``layout`` ``chw`` is channels-first (C, H, W, torch's), ``hwc`` channels-last (H, W, C,
    a Keras tutorial model's ``Input((28, 28, 1))``).
    """

    kind: Literal["image"] = "image"
    grayscale: bool = True
    width: int = Field(ge=1, le=8192)
    height: int = Field(ge=1, le=8192)
    scale: float = 1.0 / 255.0
    mean: float = 0.0
    std: float = Field(1.0, gt=0)
    layout: Literal["chw", "hwc"] = "chw"


class TextPreprocessing(_Strict):
    """How strings become the model's token inputs: the archive's tokenizer file (the
    Hugging Face ``tokenizers`` JSON format, normalization and special tokens included).

    The codec fills each of the model's inputs named ``input_ids``, ``attention_mask`` and
    ``token_type_ids`` (int64, one row per string, padded with ``pad_id`` / 0 to the longest
    string of the request). A string longer than ``max_tokens`` tokens (special tokens
    included) is cut there when ``truncate`` is on, else refused with a 400 naming it.
    """

    kind: Literal["text"] = "text"
    tokenizer: str = Field("tokenizer.json", min_length=1, max_length=255)
    max_tokens: int = Field(512, ge=2, le=1_048_576)
    truncate: bool = True
    pad_id: int = Field(0, ge=0)


class TabularPreprocessing(_Strict):
    """Named features in a fixed order: a record ``{"feature": value, ...}`` (or a CSV row,
    or a v2 tensor per feature) becomes one row of the model's first input, a matrix
    (batch, len(features)). A missing or unknown feature name is a 400 naming it."""

    kind: Literal["tabular"] = "tabular"
    features: tuple[str, ...] = Field(min_length=1, max_length=100_000)

    @field_validator("features")
    @classmethod
    def _distinct(cls, features: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for name in features:
            if not name or len(name) > 256:
                raise ValueError("feature names must be 1-256 characters")
            if name in seen:
                raise ValueError(f"feature {name!r} appears twice")
            seen.add(name)
        return features


Preprocessing = ImagePreprocessing | TextPreprocessing | TabularPreprocessing


class ClassificationPostprocessing(_Strict):
    """Turn the first output (logits or probabilities) into labels with scores."""

    kind: Literal["classification"] = "classification"
    softmax: bool = True
    top_k: int = Field(3, ge=1)


class EmbeddingPostprocessing(_Strict):
    """What an embedding model's vectors allow: ``shorten_to`` lists the sizes it was trained
    to be cut to (Matryoshka representation learning); a request may ask for one of them
    (OpenAI's ``dimensions``), and the cut vector is rescaled to unit length."""

    kind: Literal["embedding"] = "embedding"
    shorten_to: tuple[int, ...] = Field((), max_length=64)

    @field_validator("shorten_to")
    @classmethod
    def _sizes(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(n < 1 for n in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError("shorten_to holds distinct sizes of at least 1")
        return tuple(sorted(sizes, reverse=True))


Postprocessing = ClassificationPostprocessing | EmbeddingPostprocessing


class Batching(_Strict):
    """Dynamic batching defaults; the server's settings may override them."""

    max_batch_size: int = Field(32, ge=1, le=65536)
    max_batch_delay_ms: float = Field(2.0, ge=0, le=10_000)
    max_queue: int = Field(1024, ge=1)
    # Inputs whose axis 1 (tokens) may differ between requests: the batcher pads them to the
    # batch's longest with this value and batches requests of similar lengths together
    # (serving/batcher.py). Outputs must then have no length-dependent axis.
    pad: dict[str, float] = Field(default_factory=dict, max_length=64)


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
    preprocessing: Preprocessing | None = None
    postprocessing: Postprocessing | None = None
    batching: Batching = Batching()
    # How requests become model calls (serving/scheduler.py): "dynamic" batches requests.
    scheduler: str = Field("dynamic", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:(0|[1-9][0-9]{0,2}))?)$")
    runtime_config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _padding_fits(self) -> ModelSpec:
        inputs = {s.name: s for s in self.inputs}
        for name in self.batching.pad:
            spec = inputs.get(name)
            if spec is None:
                raise ValueError(f"batching.pad names {name!r}, which is not an input")
            if len(spec.shape) < 2 or spec.shape[1] != -1:
                raise ValueError(f"batching.pad: input {name!r} has no dynamic axis 1 to pad")
        post = self.postprocessing
        if isinstance(post, EmbeddingPostprocessing) and post.shorten_to:
            width = self.outputs[0].shape[-1]
            if self.task != "embedding" or any(n >= width > 0 for n in post.shorten_to):
                raise ValueError(
                    f"postprocessing.shorten_to {list(post.shorten_to)}: an embedding model's "
                    f"sizes below its width ({width})"
                )
        if self.batching.pad:
            for out in self.outputs:
                if any(d == -1 for d in out.shape[1:]):
                    raise ValueError(
                        f"batching.pad: output {out.name!r} has a dynamic axis "
                        f"{list(out.shape)}; padded batches need fixed output shapes"
                    )
        return self

    def codec_files(self) -> tuple[str, ...]:
        """The archive's files the task codec reads (a worker that extracts nothing else
        still needs them): the text tokenizer."""
        if isinstance(self.preprocessing, TextPreprocessing):
            return (self.preprocessing.tokenizer,)
        return ()


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

    @model_validator(mode="after")
    def _codec_files_listed(self) -> Manifest:
        for name in self.codec_files():
            if name not in self.files:
                raise ValueError(f"the preprocessing reads {name!r}, which the archive lacks")
        return self
