"""Triton's classification extension: the ``classification`` parameter of a requested
output (decode_request), the ranked strings (classification_strings) and BYTES tensors in
both encodings (encode_response), as tables; and a property test over any JSON value."""

from __future__ import annotations

import os

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelhost.codecs.classification import classification_strings, classify, rank
from modelhost.codecs.kserve_v2 import decode_request, encode_response
from modelhost.errors import InvalidInput
from modelhost.types import TensorSpec

INPUTS = (TensorSpec("x", "float32", (-1, 2)),)
OUTPUTS = (
    TensorSpec("scores", "float32", (-1, 4)),
    TensorSpec("mask", "bool", (-1, 4)),
    TensorSpec("counts", "uint8", (-1, 3)),
)
X = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}


def _decode(outputs: list[dict]):
    return decode_request(orjson.dumps({"inputs": [X], "outputs": outputs}), None, INPUTS, OUTPUTS)


# -- the parameter -------------------------------------------------------------------------


def test_classification_counts_are_read_per_output():
    req = _decode([
        {"name": "scores", "parameters": {"classification": 3, "binary_data": True}},
        {"name": "counts", "parameters": {"classification": 2**64 - 1}},
        {"name": "mask"},
    ])  # fmt: skip
    assert req.outputs == ("scores", "counts", "mask")
    assert req.classification == {"scores": 3, "counts": 2**64 - 1}
    assert req.binary_outputs == {"scores"}
    assert _decode([{"name": "scores"}]).classification == {}


@pytest.mark.parametrize(
    "value", [0, -3, True, False, 1.0, 2.5, "2", [2], {"n": 2}, 1e308], ids=repr
)
def test_a_count_that_is_not_a_positive_integer_names_the_field(value):
    outputs = [{"name": "mask"}, {"name": "scores", "parameters": {"classification": value}}]
    with pytest.raises(InvalidInput, match=r"^outputs\[1\]\.parameters\.classification must be"):
        _decode(outputs)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([{"name": "mask", "parameters": {"classification": 2}}],
         "outputs[0].parameters.classification: output 'mask' is BOOL"),
        ([{"name": "scores", "parameters": 5}], "outputs[0].parameters must be an object"),
        ([{"name": "scores"}, {"name": "scores"}], "outputs[1].name 'scores' appears twice"),
    ],
)  # fmt: skip
def test_other_misuse_is_invalid_input(outputs, message):
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        _decode(outputs)


# -- ranking and strings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "k", "expected"),
    [
        ([[1, 5, 10, 4]], 2, [[2, 1]]),  # Triton's own example
        ([[3, 3, 1, 3]], 3, [[0, 1, 3]]),  # ties: lower index first
        ([[0, 255, 7]], 5, [[1, 2, 0]]),  # k clamped; uint8 not wrapped by negation
        ([[2**62 + 1, 2**62, 0]], 1, [[0]]),  # int64 compared exactly, not as float
        ([[-1.5, -0.5], [9.0, 9.5]], 1, [[1], [1]]),
    ],
)
def test_rank_orders_each_row_highest_first(scores, k, expected):
    dtype = np.uint8 if max(map(max, scores)) == 255 else None
    arr = np.array(scores, dtype=dtype)
    assert rank(arr, k).tolist() == expected


def test_strings_are_value_index_and_label_as_triton_writes_them():
    scores = np.array([[1.1, 3.3, 0.5, 2.4]], np.float32)
    assert classification_strings(scores, 2, ()).tolist() == [[b"3.300000:1", b"2.400000:3"]]
    labelled = classification_strings(scores, 2, ("a", "b", "c", "d"))
    assert labelled.tolist() == [[b"3.300000:1:b", b"2.400000:3:d"]]
    short_labels = classification_strings(scores, 2, ("a", "b"))  # index 3 has none
    assert short_labels.tolist() == [[b"3.300000:1:b", b"2.400000:3"]]
    ints = classification_strings(np.array([[7, -2, 40]], np.int32), 9, ())
    assert ints.tolist() == [[b"40:2", b"7:0", b"-2:1"]]
    assert classification_strings(np.zeros((2, 3, 2), np.float16), 4, ()).shape == (2, 4)


def test_classify_and_classification_strings_rank_alike():
    scores = np.array([[0.2, 0.9, 0.9, 0.1, 0.5]])
    from modelhost.archive.manifest import ClassificationPostprocessing

    labels = ("a", "b", "c", "d", "e")
    (answer,) = classify(scores, labels, ClassificationPostprocessing(top_k=4, softmax=False))
    strings = classification_strings(scores, 4, labels)[0]
    assert [t["label"] for t in answer["top_k"]] == [s.split(b":")[2].decode() for s in strings]


# -- BYTES tensors on the wire -----------------------------------------------------------------


def test_bytes_tensors_are_json_strings_or_length_prefixed_binary():
    tensor = np.array([[b"0.9:1:b", b"0.1:0"]], dtype=object)
    body, n = encode_response("m", "1", None, {"c": tensor}, ("c",), frozenset())
    assert n is None
    (out,) = orjson.loads(body)["outputs"]
    assert out == {"name": "c", "datatype": "BYTES", "shape": [1, 2], "data": ["0.9:1:b", "0.1:0"]}
    body, n = encode_response("m", "1", None, {"c": tensor}, ("c",), frozenset({"c"}))
    assert n is not None
    (out,) = orjson.loads(body[:n])["outputs"]
    tail = body[n:]
    assert out["parameters"]["binary_data_size"] == len(tail) == 4 + 7 + 4 + 5
    assert tail == b"\x07\x00\x00\x00" + b"0.9:1:b" + b"\x05\x00\x00\x00" + b"0.1:0"


# -- any JSON value as the count ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None)
@given(json_values)
def test_any_json_count_is_accepted_as_a_positive_integer_or_refused_by_name(value):
    try:
        body = orjson.dumps({
            "inputs": [X], "outputs": [{"name": "scores", "parameters": {"classification": value}}]
        })  # fmt: skip
    except orjson.JSONEncodeError:  # integers past 64 bits cannot be sent as JSON
        return
    if type(value) is int and value >= 1:
        assert decode_request(body, None, INPUTS, OUTPUTS).classification == {"scores": value}
    elif value is None:  # JSON null: no classification asked
        assert decode_request(body, None, INPUTS, OUTPUTS).classification == {}
    else:
        with pytest.raises(InvalidInput, match=r"^outputs\[0\]\.parameters\.classification must"):
            decode_request(body, None, INPUTS, OUTPUTS)
