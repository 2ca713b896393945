"""decode_instances under random JSON documents: a modelhost error or a valid batch."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from modelhost.archive.manifest import ImagePreprocessing
from modelhost.codecs.instances import decode_instances
from modelhost.codecs.limits import DecodeLimits
from modelhost.errors import ModelhostError
from modelhost.types import TensorSpec

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PREP = ImagePreprocessing(width=4, height=4)
SIGNATURES = [
    (TensorSpec("x", "float32", (-1, 2)),),
    (TensorSpec("ids", "int64", (-1,)),),
    (TensorSpec("u", "uint8", (-1, -1)),),
    (TensorSpec("h", "float16", (-1, 2, 1)),),
    (TensorSpec("flag", "bool", (-1,)),),
    (TensorSpec("image", "float32", (-1, 1, 4, 4)),),
    (TensorSpec("a", "int32", (-1, 2)), TensorSpec("b", "float64", (-1,))),
]
LIMITS = DecodeLimits(max_items=4, max_elements=16, max_image_pixels=64, max_request_pixels=96)


def _png(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("L", size, 7).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


numbers = (
    st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, -1, 255, 256, 2**31, 2**53 + 1, 2**63, 1e38, 1e39, 65504.0, 65520.0])
)
json_scalars = st.none() | st.booleans() | numbers | st.text(max_size=6)
images = st.builds(lambda w, h: {"b64": _png((w, h))}, st.integers(1, 12), st.integers(1, 12))
json_values = st.recursive(
    json_scalars | images,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["b64", "a", "b", "x"]) | st.text(max_size=4), inner, max_size=3
        )
    ),
    max_leaves=24,
)
pairs = st.lists(numbers, min_size=2, max_size=2)
# For each signature, items that fit it (values may still be out of range).
FITTING = [
    st.lists(pairs, min_size=1, max_size=6),
    st.lists(numbers, min_size=1, max_size=6),
    st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=3), min_size=1, max_size=6),
    st.lists(
        st.lists(st.lists(numbers, min_size=1, max_size=1), min_size=2, max_size=2),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.booleans(), min_size=1, max_size=6),
    st.lists(images, min_size=1, max_size=8),
    st.lists(st.fixed_dictionaries({"a": pairs, "b": numbers}), min_size=1, max_size=6),
]


@st.composite
def cases(draw):
    """A signature and a body: fitting items, maybe with an odd one, or any document."""
    i = draw(st.integers(0, len(SIGNATURES) - 1))
    items = draw(FITTING[i])
    kind = draw(st.integers(0, 3))
    if kind == 1:
        items.insert(draw(st.integers(0, len(items))), draw(json_values))
    doc = {"instances": items} if kind < 3 else draw(json_values)
    if kind == 2:
        doc = {"instances": [draw(json_values)] * draw(st.integers(1, 6))}
    return SIGNATURES[i], doc


def _check_valid(batch, inputs, limits):
    specs = {s.name: s for s in inputs}
    assert set(batch) == set(specs)
    assert sum(a.size for a in batch.values()) <= limits.max_elements
    for name, arr in batch.items():
        spec = specs[name]
        assert arr.dtype == np.dtype(spec.dtype)
        assert arr.ndim == len(spec.shape)
        assert all(d in (-1, s) for s, d in zip(arr.shape, spec.shape, strict=True))
        assert 1 <= arr.shape[0] <= limits.max_items


@FUZZ
@given(cases(), st.sampled_from([DecodeLimits(), LIMITS]))
def test_random_documents_decode_or_raise_a_modelhost_error(case, limits):
    inputs, doc = case
    prep = PREP if inputs[0].name == "image" else None
    try:
        batch = decode_instances(orjson.dumps(doc), inputs, prep, limits)
    except ModelhostError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("decoded")
    _check_valid(batch, inputs, limits)


@FUZZ
@given(st.binary(max_size=120))
def test_random_bytes_decode_or_raise_a_modelhost_error(body):
    with pytest.raises(ModelhostError):
        decode_instances(body, SIGNATURES[0], None)
