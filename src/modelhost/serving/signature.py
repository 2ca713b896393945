"""Check decoded inputs against a model's signature before they reach a batch."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modelhost.errors import InvalidInput
from modelhost.types import TensorSpec


def check_inputs(inputs: Mapping[str, np.ndarray], specs: tuple[TensorSpec, ...]) -> int:
    """Validate ``inputs`` against ``specs``; return the batch size (rows along axis 0).

    Raises:
        InvalidInput: missing or unknown input names, wrong dtype or shape, an empty batch,
            inputs disagreeing on the batch size, or NaN/inf in a floating-point input.
    """
    expected = {spec.name for spec in specs}
    unknown = sorted(set(inputs) - expected)
    if unknown:
        raise InvalidInput(f"unknown input {unknown[0]!r}; the model takes {sorted(expected)}")
    batch: int | None = None
    for spec in specs:
        arr = inputs.get(spec.name)
        if arr is None:
            raise InvalidInput(
                f"input {spec.name!r} is missing; the model takes {sorted(expected)}"
            )
        if arr.dtype != np.dtype(spec.dtype):
            raise InvalidInput(
                f"input {spec.name!r} has dtype {arr.dtype}; the signature wants {spec.dtype}"
            )
        if not shape_matches(arr.shape, spec.shape):
            raise InvalidInput(
                f"input {spec.name!r} has shape {list(arr.shape)}; it does not match the "
                f"signature {list(spec.shape)} (-1 = any size)"
            )
        if arr.shape[0] == 0:
            raise InvalidInput(f"input {spec.name!r} is an empty batch; send at least one item")
        if batch is not None and arr.shape[0] != batch:
            raise InvalidInput(
                f"input {spec.name!r} has {arr.shape[0]} rows but other inputs have {batch}"
            )
        batch = arr.shape[0]
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidInput(f"input {spec.name!r} contains NaN or infinity")
    if batch is None:
        raise InvalidInput("the model declares no inputs")
    return batch


def shape_matches(shape: tuple[int, ...], spec: tuple[int, ...]) -> bool:
    """Whether ``shape`` fits ``spec``, where -1 matches any size."""
    return len(shape) == len(spec) and all(
        s == d or d == -1 for s, d in zip(shape, spec, strict=True)
    )
