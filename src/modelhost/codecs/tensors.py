"""JSON tensor data -> numpy, with the checks that give clear errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelhost.errors import InvalidInput

# Which element kinds (numpy dtype.kind) may become a target dtype kind without losing meaning.
_ACCEPTS: dict[str, frozenset[str]] = {
    "f": frozenset("fiu"),
    "i": frozenset("iu"),
    "u": frozenset("iu"),
    "b": frozenset("b"),
}
_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "non-negative integers", "b": "booleans"}


def json_to_array(data: Any, dtype: np.dtype[Any], field: str) -> np.ndarray:
    """Turn JSON data (nested or flat lists of numbers) into an array of ``dtype``.

    Raises:
        InvalidInput: ragged lists, strings or nulls, floats for an integer tensor,
            integers out of range; the message names ``field``.
    """
    try:
        arr = np.asarray(data)
    except ValueError as exc:
        raise InvalidInput(
            f"{field}: lists are ragged (rows of different lengths) or nested too deeply"
        ) from exc
    if arr.size == 0:
        return np.empty(arr.shape, dtype=dtype)
    if arr.dtype.kind == "f" and dtype.kind in "iu" and _integral_beyond_float(data, arr):
        # Integers past 2**53 (uint64, int64) made numpy infer float64: convert them exactly.
        try:
            return np.asarray(data, dtype=dtype)
        except OverflowError as exc:
            raise InvalidInput(f"{field}: values out of range for {dtype}") from exc
    if arr.dtype.kind not in _ACCEPTS[dtype.kind]:
        what = "strings or nulls" if arr.dtype.kind in "OUS" else f"{arr.dtype} values"
        raise InvalidInput(f"{field}: holds {what}; expected {_KIND_WORDS[dtype.kind]}")
    if dtype.kind in "iuf":
        # Checked here, not left to astype: a cast out of range wraps (ints) or gives inf
        # with a RuntimeWarning (floats).
        info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidInput(f"{field}: values out of range for {dtype}")
    return arr.astype(dtype, copy=False)


def _integral_beyond_float(data: Any, arr: np.ndarray) -> bool:
    """Whether ``data`` holds only Python ints, some too large for exact float64."""
    if np.abs(arr).max() < 2.0**53:
        return False
    flat = np.asarray(data, dtype=object).reshape(-1)
    return all(isinstance(v, int) and not isinstance(v, bool) for v in flat)


def check_element_count(arr: np.ndarray, shape: list[int], field: str) -> np.ndarray:
    """Reshape flat or nested ``arr`` to ``shape`` when the element counts agree.

    Raises:
        InvalidInput: the element count differs from the product of ``shape``.
    """
    expected = math.prod(shape)  # Python ints: a hostile shape cannot wrap around
    if arr.size != expected:
        raise InvalidInput(
            f"{field}: data has {arr.size} elements but shape {shape} needs {expected}"
        )
    return arr.reshape(shape)
