"""decode_request under generated and mutated bodies: a modelhost error or a valid request.

Bodies are generated from a signature (JSON tensors, flat or nested, and binary tails),
then mutated at the JSON level (any node replaced by any JSON value, keys dropped) or at
the byte level (bytes flipped, cut, inserted), with header lengths that may lie.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from modelhost.codecs.kserve_v2 import NUMPY_TO_V2, V2Request, decode_request
from modelhost.codecs.limits import DecodeLimits
from modelhost.errors import ModelhostError
from modelhost.types import TensorSpec

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SIGNATURES = [
    (
        (TensorSpec("x", "float32", (-1, 2)), TensorSpec("ids", "int64", (-1,))),
        (TensorSpec("y", "float32", (-1, 2)),),
    ),
    ((TensorSpec("image", "float32", (-1, 1, 4, 4)),), (TensorSpec("logits", "float32", (-1, 3)),)),
    (
        (
            TensorSpec("a", "uint8", (-1, -1)),
            TensorSpec("b", "float16", (2, -1)),
            TensorSpec("c", "bool", (-1,)),
        ),
        (TensorSpec("out", "int32", (-1,)),),
    ),
]
LIMITS = DecodeLimits(max_items=8, max_elements=100, max_image_pixels=64, max_request_pixels=64)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
hostile_ints = st.sampled_from([0, 1, -1, 2**31, 2**31 - 1, 2**32, 2**62, 2**63 - 1, 2**64 - 1])


def _values(dtype: np.dtype[Any], count: int, draw: st.DrawFn) -> np.ndarray:
    if dtype.kind == "b":
        return np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)), dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        ints = st.integers(min_value=int(info.min), max_value=int(info.max))
        return np.array(draw(st.lists(ints, min_size=count, max_size=count)), dtype)
    finite = st.floats(-65504, 65504, width=16)
    return np.array(draw(st.lists(finite, min_size=count, max_size=count)), dtype)


@st.composite
def requests(
    draw: st.DrawFn,
) -> tuple[bytes, int | None, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    inputs, outputs = draw(st.sampled_from(SIGNATURES))
    batch = draw(st.integers(1, 3) | st.integers(4, 12))
    tensors, tail = [], b""
    for spec in draw(st.permutations(inputs)):
        shape = [
            batch if i == 0 and d == -1 else (draw(st.integers(0, 3)) if d == -1 else d)
            for i, d in enumerate(spec.shape)
        ]
        hostile = draw(st.integers(0, 9)) == 0  # a hostile shape, with its data or none
        if hostile and draw(st.booleans()):
            shape = [0]
        arr = _values(np.dtype(spec.dtype), int(np.prod(shape)), draw).reshape(shape)
        tensor: dict[str, Any] = {
            "name": spec.name,
            "shape": shape,
            "datatype": NUMPY_TO_V2[spec.dtype],
        }
        if draw(st.booleans()):
            raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            tail += raw
        else:
            tensor["data"] = arr.tolist() if draw(st.booleans()) else arr.reshape(-1).tolist()
        if hostile:
            tensor["shape"] = draw(st.lists(hostile_ints, max_size=len(spec.shape) + 2))
        tensors.append(tensor)
    doc: dict[str, Any] = {"inputs": tensors}
    if draw(st.booleans()):
        doc["outputs"] = [
            {"name": s.name, "parameters": {"binary_data": draw(st.booleans())}} for s in outputs
        ]
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=10))
    doc = draw(_mutated_doc(doc))
    head = orjson.dumps(doc)
    body = head + tail
    header_length: int | None = len(head) if tail or draw(st.booleans()) else None
    if draw(st.integers(0, 3)) == 0:
        body = draw(_mutated_bytes(body))
    if draw(st.integers(0, 5)) == 0:
        header_length = draw(st.none() | st.integers(-2, len(body) + 2) | hostile_ints)
    return body, header_length, inputs, outputs


@st.composite
def _mutated_doc(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with up to three nodes replaced by arbitrary JSON values or removed."""
    for _ in range(max(0, draw(st.integers(-3, 3)))):
        doc = _mutate_at(doc, draw)
    return doc


def _mutate_at(node: Any, draw: st.DrawFn) -> Any:
    children = (
        list(node)
        if isinstance(node, dict)
        else list(range(len(node)))
        if isinstance(node, list)
        else []
    )
    if not children or draw(st.integers(0, 3)) == 0:
        return draw(json_values | hostile_ints | st.lists(hostile_ints, max_size=5))
    key = draw(st.sampled_from(children))
    copy = dict(node) if isinstance(node, dict) else list(node)
    if isinstance(copy, dict) and draw(st.integers(0, 4)) == 0:
        del copy[key]
    else:
        copy[key] = _mutate_at(copy[key], draw)
    return copy


@st.composite
def _mutated_bytes(draw: st.DrawFn, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


def _check_valid(req: V2Request, inputs: tuple[TensorSpec, ...], limits: DecodeLimits) -> None:
    specs = {s.name: s for s in inputs}
    assert set(req.inputs) <= set(specs)
    assert sum(a.size for a in req.inputs.values()) <= limits.max_elements
    for name, arr in req.inputs.items():
        spec = specs[name]
        assert arr.dtype == np.dtype(spec.dtype)
        assert arr.ndim == len(spec.shape)
        assert all(d in (-1, s) for s, d in zip(arr.shape, spec.shape, strict=True))
        assert arr.shape[0] <= limits.max_items


@FUZZ
@given(requests(), st.sampled_from([DecodeLimits(), LIMITS]))
def test_generated_and_mutated_bodies_decode_or_raise_a_modelhost_error(request, limits):
    body, header_length, inputs, outputs = request
    try:
        req = decode_request(body, header_length, inputs, outputs, limits)
    except ModelhostError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("decoded")
    _check_valid(req, inputs, limits)


@FUZZ
@given(st.binary(max_size=200), st.none() | st.integers(-1, 220))
def test_random_bytes_decode_or_raise_a_modelhost_error(body, header_length):
    inputs, outputs = SIGNATURES[0]
    try:
        req = decode_request(body, header_length, inputs, outputs)
    except ModelhostError:
        return
    _check_valid(req, inputs, DecodeLimits())
