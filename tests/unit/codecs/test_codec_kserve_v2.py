"""Open Inference Protocol v2 bodies: decode_request and encode_response, as tables."""

import numpy as np
import orjson
import pytest

from modelhost.codecs.kserve_v2 import NUMPY_TO_V2, V2_TO_NUMPY, decode_request, encode_response
from modelhost.codecs.limits import DecodeLimits
from modelhost.errors import InvalidInput, PayloadTooLarge
from modelhost.types import TensorSpec

INPUTS = (TensorSpec("x", "float32", (-1, 2)), TensorSpec("ids", "int64", (-1,)))
OUTPUTS = (TensorSpec("y", "float32", (-1, 2)), TensorSpec("label", "int64", (-1,)))
X = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}
IDS = {"name": "ids", "shape": [2], "datatype": "INT64", "data": [7, -8]}


def _decode(doc, header_length=None, tail=b""):
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    if header_length == "json":
        header_length = len(body)
    return decode_request(body + tail, header_length, INPUTS, OUTPUTS)


def _binary(doc, tail):
    """A binary-extension body: the JSON head, then ``tail``; with its header length."""
    head = orjson.dumps(doc)
    return head + tail, len(head)


# -- decode_request: JSON tensors ------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [[1.0, 2.0, 3.0, 4.0], [[1.0, 2.0], [3.0, 4.0]], [1, 2, 3, 4], [[1, 2], [3, 4]]],
    ids=["flat", "nested", "flat-ints", "nested-ints"],
)
def test_flat_and_nested_data_decode_to_the_same_array(data):
    req = _decode({"inputs": [{**X, "data": data}]})
    assert req.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(req.inputs["x"], np.array([[1, 2], [3, 4]], np.float32))


def test_every_input_is_decoded_with_its_dtype():
    req = _decode({"inputs": [X, IDS]})
    assert list(req.inputs) == ["x", "ids"]
    assert req.inputs["ids"].dtype == np.int64
    np.testing.assert_array_equal(req.inputs["ids"], [7, -8])


@pytest.mark.parametrize(("doc_id", "expected"), [("abc-1", "abc-1"), ("", ""), (None, None)])
def test_request_id_is_echoed(doc_id, expected):
    doc = {"inputs": [X]} if doc_id is None else {"id": doc_id, "inputs": [X]}
    assert _decode(doc).id == expected


@pytest.mark.parametrize(
    ("extra", "outputs", "binary"),
    [
        ({}, ("y", "label"), frozenset()),
        ({"outputs": [{"name": "label"}]}, ("label",), frozenset()),
        ({"outputs": [{"name": "label"}, {"name": "y"}]}, ("label", "y"), frozenset()),
        ({"parameters": {"binary_data_output": True}}, ("y", "label"), {"y", "label"}),
        ({"parameters": {"binary_data_output": False}}, ("y", "label"), frozenset()),
        (
            {"parameters": {"binary_data_output": True}, "outputs": [{"name": "y"}]},
            ("y",),
            {"y"},
        ),
        (
            {
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "y", "parameters": {"binary_data": False}}, {"name": "label"}],
            },
            ("y", "label"),
            {"label"},
        ),
        (
            {"outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "label"}]},
            ("y", "label"),
            {"y"},
        ),
        ({"parameters": {"binary_data_output": "yes"}}, ("y", "label"), frozenset()),
    ],
    ids=[
        "default-all-json",
        "subset",
        "subset-order-kept",
        "all-binary",
        "all-binary-false",
        "all-binary-subset",
        "per-output-overrides-all",
        "per-output-binary",
        "non-bool-flag-ignored",
    ],
)
def test_wanted_outputs_and_binary_outputs(extra, outputs, binary):
    req = _decode({"inputs": [X], **extra})
    assert req.outputs == outputs
    assert req.binary_outputs == frozenset(binary)


# -- decode_request: binary tensors ----------------------------------------------------


def test_binary_input_is_read_little_endian_after_the_json():
    x = np.array([[1.5, -2.0], [3.25, 1e-3]], np.float32)
    doc = {"inputs": [{**_no_data(X), "parameters": {"binary_data_size": 16}}]}
    body, length = _binary(doc, x.astype("<f4").tobytes())
    req = decode_request(body, length, INPUTS, OUTPUTS)
    assert req.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(req.inputs["x"], x)


def test_binary_inputs_take_their_bytes_in_input_order():
    x = np.array([[1, 2], [3, 4]], np.float32)
    ids = np.array([2**40, -5], np.int64)
    doc = {
        "inputs": [
            {**_no_data(IDS), "parameters": {"binary_data_size": 16}},
            {**_no_data(X), "parameters": {"binary_data_size": 16}},
        ]
    }
    body, length = _binary(doc, ids.astype("<i8").tobytes() + x.astype("<f4").tobytes())
    req = decode_request(body, length, INPUTS, OUTPUTS)
    np.testing.assert_array_equal(req.inputs["ids"], ids)
    np.testing.assert_array_equal(req.inputs["x"], x)


def test_binary_and_json_inputs_mix():
    ids = np.array([1, 2], np.int64)
    doc = {"inputs": [X, {**_no_data(IDS), "parameters": {"binary_data_size": 16}}]}
    body, length = _binary(doc, ids.astype("<i8").tobytes())
    req = decode_request(body, length, INPUTS, OUTPUTS)
    np.testing.assert_array_equal(req.inputs["ids"], ids)
    np.testing.assert_array_equal(req.inputs["x"], [[1, 2], [3, 4]])


def test_header_length_equal_to_the_body_means_json_only():
    req = _decode({"inputs": [X]}, header_length="json")
    np.testing.assert_array_equal(req.inputs["x"], [[1, 2], [3, 4]])


def _no_data(tensor):
    return {k: v for k, v in tensor.items() if k != "data"}


# -- decode_request: errors name the field ---------------------------------------------

BIN_X = {**_no_data(X), "parameters": {"binary_data_size": 16}}


@pytest.mark.parametrize(
    ("doc", "header_length", "tail", "message"),
    [
        (b"not json", None, b"", "body is not valid JSON"),
        (b"[1, 2]", None, b"", "body must be a JSON object"),
        ({}, None, b"", "inputs must be a non-empty list"),
        ({"inputs": []}, None, b"", "inputs must be a non-empty list"),
        ({"inputs": {"x": X}}, None, b"", "inputs must be a non-empty list"),
        ({"id": 5, "inputs": [X]}, None, b"", "id must be a string"),
        ({"inputs": [5]}, None, b"", "inputs[0] must be an object"),
        ({"inputs": [{**X, "name": None}]}, None, b"", "inputs[0].name must be a string"),
        ({"inputs": [{**X, "name": "z"}]}, None, b"", "inputs[0].name 'z' is not an input"),
        ({"inputs": [{**X, "shape": "2,2"}]}, None, b"", "inputs[0].shape must be a list"),
        ({"inputs": [{**X, "shape": [-1, 2]}]}, None, b"", "inputs[0].shape"),
        ({"inputs": [{**X, "shape": [2.0, 2]}]}, None, b"", "inputs[0].shape"),
        ({"inputs": [{**X, "shape": [True, 4]}]}, None, b"", "inputs[0].shape"),
        ({"inputs": [{**X, "shape": [1] * 33}]}, None, b"", "inputs[0].shape"),
        ({"inputs": [_no_data(X) | {"data": [1]}, IDS]}, None, b"", "inputs[0].data"),
        ({"inputs": [{**X, "datatype": "FP8"}]}, None, b"", "inputs[0].datatype 'FP8'"),
        ({"inputs": [{**X, "datatype": None}]}, None, b"", "inputs[0].datatype None"),
        ({"inputs": [{**X, "datatype": "fp32"}]}, None, b"", "inputs[0].datatype 'fp32'"),
        ({"inputs": [{**X, "datatype": "FP64"}]}, None, b"", "inputs[0].datatype FP64 does not"),
        ({"inputs": [X, {**IDS, "datatype": "INT32"}]}, None, b"", "inputs[1].datatype INT32"),
        ({"inputs": [{**X, "parameters": [1]}]}, None, b"", "inputs[0].parameters must be"),
        ({"inputs": [_no_data(X)]}, None, b"", "inputs[0].data is missing"),
        ({"inputs": [{**X, "data": [1, 2, 3]}]}, None, b"", "inputs[0].data: data has 3"),
        ({"inputs": [{**X, "data": ["a"] * 4}]}, None, b"", "inputs[0].data: holds strings"),
        ({"inputs": [{**X, "data": [None] * 4}]}, None, b"", "inputs[0].data: holds strings"),
        ({"inputs": [{**X, "data": [[1, 2], [3]]}]}, None, b"", "inputs[0].data: lists are"),
        ({"inputs": [{**X, "data": [True] * 4}]}, None, b"", "inputs[0].data: holds bool"),
        ({"inputs": [X, {**IDS, "data": [1.5, 2]}]}, None, b"", "inputs[1].data: holds float"),
        ({"inputs": [X, {**IDS, "data": [2**63, 2**63]}]}, None, b"", "inputs[1].data: values out"),
        ({"inputs": [X, X]}, None, b"", "inputs[1].name 'x' appears twice"),
        ({"inputs": [X], "parameters": 3}, None, b"", "parameters must be an object"),
        ({"inputs": [X], "outputs": {"y": {}}}, None, b"", "outputs must be a list"),
        ({"inputs": [X], "outputs": [{"name": "z"}]}, None, b"", "outputs[0].name 'z'"),
        ({"inputs": [X], "outputs": ["y"]}, None, b"", "outputs[0].name None"),
        ({"inputs": [X], "outputs": [{"name": []}]}, None, b"", "outputs[0].name (a JSON array)"),
        (
            {"inputs": [X], "outputs": [{"name": {"a": 1}}]},
            None,
            b"",
            "outputs[0].name (a JSON object)",
        ),
        ({"inputs": [X], "outputs": [{"name": "y"}, {}]}, None, b"", "outputs[1].name None"),
        # binary extension
        ({"inputs": [X]}, 0, b"", "Inference-Header-Content-Length 0"),
        ({"inputs": [X]}, -1, b"", "Inference-Header-Content-Length -1"),
        ({"inputs": [X]}, 10_000, b"", "Inference-Header-Content-Length 10000"),
        ({"inputs": [X]}, 5, b"", "body is not valid JSON"),
        ({"inputs": [BIN_X]}, None, b"", "inputs[0].parameters.binary_data_size 16 is more"),
        ({"inputs": [BIN_X]}, "json", bytes(15), "binary_data_size 16 is more than the 15"),
        ({"inputs": [BIN_X]}, "json", bytes(17), "1 bytes of binary data after the JSON"),
        ({"inputs": [X]}, "json", bytes(4), "4 bytes of binary data after the JSON"),
        (
            {"inputs": [{**BIN_X, "parameters": {"binary_data_size": 8}}]},
            "json",
            bytes(8),
            "inputs[0]: binary_data_size 8 does not match shape [2, 2] of float32 (16 bytes)",
        ),
        (
            {"inputs": [{**BIN_X, "parameters": {"binary_data_size": -1}}]},
            "json",
            b"",
            "inputs[0].parameters.binary_data_size must be a non-negative integer",
        ),
        (
            {"inputs": [{**BIN_X, "parameters": {"binary_data_size": True}}]},
            "json",
            bytes(16),
            "inputs[0].parameters.binary_data_size must be",
        ),
        (
            {"inputs": [{**BIN_X, "parameters": {"binary_data_size": "16"}}]},
            "json",
            bytes(16),
            "inputs[0].parameters.binary_data_size must be",
        ),
    ],
)
def test_decode_request_errors_name_the_field(doc, header_length, tail, message):
    with pytest.raises(InvalidInput) as info:
        _decode(doc, header_length, tail)
    assert message in str(info.value)


def test_json_shape_whose_element_count_overflows_is_invalid_input():
    with pytest.raises(InvalidInput, match=r"inputs\[0\]"):
        _decode({"inputs": [{**X, "shape": [2**62, 4], "data": []}]})


def test_binary_shape_whose_byte_count_overflows_is_invalid_input():
    tensor = {**BIN_X, "shape": [2**62, 4], "parameters": {"binary_data_size": 0}}
    with pytest.raises(InvalidInput, match=r"inputs\[0\]"):
        _decode({"inputs": [tensor]}, "json")


# -- encode_response -------------------------------------------------------------------

Y = np.array([[0.5, -1.0], [2.0, 3.5]], np.float32)
LABEL = np.array([1, 0], np.int64)


def test_json_response_has_flat_data_and_echoes_the_id():
    body, length = encode_response(
        "m", "2", "req-1", {"y": Y, "label": LABEL}, ("y", "label"), frozenset()
    )
    assert length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "2",
        "id": "req-1",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [0.5, -1.0, 2.0, 3.5]},
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]},
        ],
    }


def test_json_response_lists_only_wanted_outputs_in_order_and_no_id_when_none():
    body, _ = encode_response("m", "1", None, {"y": Y, "label": LABEL}, ("label",), frozenset())
    doc = orjson.loads(body)
    assert "id" not in doc
    assert [t["name"] for t in doc["outputs"]] == ["label"]


def test_json_response_flattens_non_contiguous_arrays_in_row_order():
    body, _ = encode_response("m", "1", None, {"y": Y.T}, ("y",), frozenset())
    assert orjson.loads(body)["outputs"][0]["data"] == [0.5, 2.0, -1.0, 3.5]


def test_binary_outputs_follow_the_json_head_little_endian():
    body, length = encode_response(
        "m", "1", None, {"y": Y, "label": LABEL}, ("y", "label"), frozenset({"y", "label"})
    )
    head = orjson.loads(body[:length])
    assert head["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}},
        {
            "name": "label",
            "datatype": "INT64",
            "shape": [2],
            "parameters": {"binary_data_size": 16},
        },
    ]
    assert body[length:] == Y.astype("<f4").tobytes() + LABEL.astype("<i8").tobytes()
    assert body[length : length + 4] == np.array(0.5, "<f4").tobytes()


def test_binary_and_json_outputs_mix():
    body, length = encode_response(
        "m", "1", None, {"y": Y, "label": LABEL}, ("y", "label"), frozenset({"label"})
    )
    head = orjson.loads(body[:length])
    assert head["outputs"][0]["data"] == [0.5, -1.0, 2.0, 3.5]
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 16}
    assert body[length:] == b"\x01" + bytes(7) + bytes(8)


def test_big_endian_output_is_sent_little_endian():
    big = Y.astype(">f4")
    body, length = encode_response("m", "1", None, {"y": big}, ("y",), frozenset({"y"}))
    assert body[length:] == Y.astype("<f4").tobytes()


def _six_values(dtype: np.dtype) -> np.ndarray:
    """3 x 2 values of ``dtype``; BYTES (object) elements are UTF-8 strings, one empty."""
    if dtype.kind == "O":
        arr = np.empty(6, dtype=object)
        arr[:] = [b"", b"a", "é".encode(), b"two words", b"\x00nul", "日本".encode()]
        return arr.reshape(3, 2)
    return np.arange(6).reshape(3, 2).astype(dtype)


@pytest.mark.parametrize("v2_name", sorted(V2_TO_NUMPY))
def test_every_datatype_round_trips_through_binary_response_and_request(v2_name):
    dtype = np.dtype(V2_TO_NUMPY[v2_name])
    arr = _six_values(dtype)
    body, length = encode_response("m", "1", None, {"t": arr}, ("t",), frozenset({"t"}))
    head = orjson.loads(body[:length])
    tensor = head["outputs"][0]
    assert tensor["datatype"] == v2_name == NUMPY_TO_V2[dtype.name]
    request_head = orjson.dumps({"inputs": [tensor]})
    spec = (TensorSpec("t", dtype.name, (-1, 2)),)
    req = decode_request(request_head + body[length:], len(request_head), spec, spec)
    assert req.inputs["t"].dtype == dtype
    np.testing.assert_array_equal(req.inputs["t"], arr)


@pytest.mark.parametrize("v2_name", sorted(V2_TO_NUMPY))
def test_every_datatype_round_trips_through_json_response_and_request(v2_name):
    dtype = np.dtype(V2_TO_NUMPY[v2_name])
    arr = _six_values(dtype)
    body, _ = encode_response("m", "1", None, {"t": arr}, ("t",), frozenset())
    tensor = orjson.loads(body)["outputs"][0]
    spec = (TensorSpec("t", dtype.name, (-1, 2)),)
    req = decode_request(orjson.dumps({"inputs": [tensor]}), None, spec, spec)
    assert req.inputs["t"].dtype == dtype
    np.testing.assert_array_equal(req.inputs["t"], arr)


# -- decode_request: shapes are checked against the signature and the limits first ----

LIMITS = DecodeLimits(max_items=3, max_elements=8)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({**X, "shape": [0, 2**62], "data": []}, "inputs[0].shape must be a list of integers"),
        ({**X, "shape": [2**62, 0], "data": []}, "inputs[0].shape must be a list of integers"),
        ({**X, "shape": [2**31, 2], "data": []}, "from 0 to 2147483647"),
        ({**X, "shape": [0, 2**64 - 1], "data": []}, "inputs[0].shape must be"),
        ({**X, "shape": [2, 2, 1]}, "inputs[0].shape [2, 2, 1] does not match the signature"),
        ({**X, "shape": [4]}, "inputs[0].shape [4] does not match the signature [-1, 2]"),
        ({**X, "shape": [1, 4]}, "inputs[0].shape [1, 4] does not match"),
        ({**X, "shape": []}, "inputs[0].shape [] does not match"),
        ({**X, "shape": [1] * 40}, "inputs[0].shape [1, 1, 1, 1, 1, 1, 1, 1, '...'] does not"),
        ({**BIN_X, "data": [1, 2, 3, 4]}, "inputs[0] has both data and"),
    ],
)
def test_shapes_that_cannot_fit_the_signature_are_refused_before_any_data(tensor, message):
    with pytest.raises(InvalidInput) as info:
        _decode({"inputs": [tensor]}, "json" if "parameters" in tensor else None)
    assert message in str(info.value)


def test_more_tensors_than_inputs_are_refused():
    with pytest.raises(InvalidInput, match="inputs has 3 tensors; the model takes 2"):
        _decode({"inputs": [X, IDS, X]})


def test_a_long_id_is_refused():
    with pytest.raises(InvalidInput, match="id is 1025 characters long; at most 1024"):
        _decode({"id": "x" * 1025, "inputs": [X]})


@pytest.mark.parametrize(
    ("inputs", "tail", "setting"),
    [
        ([{**X, "shape": [4, 2], "data": [0] * 8}], b"", "max_request_items"),
        ([{**IDS, "shape": [4], "data": [0] * 4}], b"", "max_request_items"),
        ([{**X, "shape": [3, 2], "data": [0] * 6}, {**IDS, "shape": [3], "data": [0] * 3}], b"",
         "max_request_elements"),
        ([{**_no_data(X), "shape": [3, 2], "parameters": {"binary_data_size": 24}},
          {**_no_data(IDS), "shape": [3], "parameters": {"binary_data_size": 24}}],
         bytes(48), "max_request_elements"),
        ([{**_no_data(X), "shape": [3, 2], "parameters": {"binary_data_size": 0}},
          {**_no_data(IDS), "shape": [3], "parameters": {"binary_data_size": 0}}],
         b"", "max_request_elements"),
    ],
)  # fmt: skip
def test_items_and_elements_are_limited_from_the_declared_shapes(inputs, tail, setting):
    body, length = _binary({"inputs": inputs}, tail)
    with pytest.raises(PayloadTooLarge, match=rf"\({setting}\)"):
        decode_request(body, length, INPUTS, OUTPUTS, LIMITS)
