"""Warm-up at load: run a model on zeros shaped like its signature, check what it answers.

The batches stay within ``warmup_max_elements`` (an archive declaring 65,536 rows per batch
took 3 GiB when warmed up at its max batch); larger batches are met in service.
"""

from __future__ import annotations

import math

import numpy as np

from modelhost.archive.manifest import Manifest, TensorSignature
from modelhost.errors import ArchiveError
from modelhost.runtimes.base import Predictor
from modelhost.serving.policy import BatchPolicy, warmup_rows
from modelhost.serving.signature import shape_matches
from modelhost.types import TensorSpec

# A dynamic non-batch dim gets this size in the warm-up batch.
_WARMUP_DYNAMIC_DIM = 8


def specs_of(signatures: tuple[TensorSignature, ...]) -> tuple[TensorSpec, ...]:
    """The engine's TensorSpecs of manifest signatures."""
    return tuple(TensorSpec(name=s.name, dtype=s.dtype, shape=tuple(s.shape)) for s in signatures)


def _item_shape(spec: TensorSpec) -> tuple[int, ...]:
    return tuple(_WARMUP_DYNAMIC_DIM if d == -1 else d for d in spec.shape[1:])


def warmup_batch(specs: tuple[TensorSpec, ...], rows: int) -> dict[str, np.ndarray]:
    """Zeros shaped like the signature with ``rows`` items."""
    return {s.name: np.zeros((rows, *_item_shape(s)), dtype=s.dtype) for s in specs}


def warm_up(
    predictor: Predictor, manifest: Manifest, policy: BatchPolicy, max_elements: int
) -> None:
    """Run the warm-up batches and hold the answers to the manifest's output signature.

    Raises:
        ArchiveError: the model fails on inputs shaped like its signature, or answers
            other names, dtypes, shapes or row counts than the manifest declares.
    """
    inputs, outputs = specs_of(manifest.inputs), specs_of(manifest.outputs)
    item_elements = sum(math.prod(_item_shape(s)) for s in inputs)
    where = f"{manifest.name}:{manifest.version}"
    for rows in warmup_rows(item_elements, policy.max_batch_size, max_elements):
        batch = warmup_batch(inputs, rows)
        try:
            answer = predictor.predict(batch)
        except Exception as exc:  # the archive's model: whatever it raises becomes one error
            shapes = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in batch.items())
            raise ArchiveError(
                f"{where}: the model fails on a batch of {rows} shaped like the manifest's "
                f"inputs ({shapes}): {exc!r}; does the signature match the model?"
            ) from exc
        _check_outputs(answer, outputs, rows, where)


def _check_outputs(
    answer: dict[str, np.ndarray], specs: tuple[TensorSpec, ...], rows: int, where: str
) -> None:
    for spec in specs:
        value = answer.get(spec.name)
        if not isinstance(value, np.ndarray):
            raise ArchiveError(
                f"{where}: the model gives no array for output {spec.name!r} of the manifest"
            )
        if value.dtype != np.dtype(spec.dtype):
            raise ArchiveError(
                f"{where}: output {spec.name!r} is {value.dtype}; the manifest says {spec.dtype}"
            )
        if not shape_matches(value.shape, spec.shape) or value.shape[0] != rows:
            raise ArchiveError(
                f"{where}: output {spec.name!r} has shape {list(value.shape)} for {rows} rows; "
                f"the manifest says {list(spec.shape)}"
            )
