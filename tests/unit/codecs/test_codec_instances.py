"""decode_instances: the native {"instances": [...]} body, as tables."""

import base64
import io

import numpy as np
import orjson
import pytest
from PIL import Image

from modelhost.archive.manifest import ImagePreprocessing
from modelhost.codecs.instances import decode_instances
from modelhost.codecs.limits import DecodeLimits
from modelhost.errors import InvalidInput, PayloadTooLarge
from modelhost.types import TensorSpec

X = TensorSpec("x", "float32", (-1, 2))
IDS = TensorSpec("ids", "int64", (-1,))
IMAGE = TensorSpec("image", "float32", (-1, 1, 8, 8))
PREP = ImagePreprocessing(width=8, height=8, scale=1.0)


def _body(instances):
    return orjson.dumps({"instances": instances})


def _b64_png(value, size=(8, 8)):
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("instances", "spec", "expected"),
    [
        ([[1, 2], [3, 4]], X, np.array([[1, 2], [3, 4]], np.float32)),
        ([[1.5, -2]], X, np.array([[1.5, -2]], np.float32)),
        ([5, 6, 7], IDS, np.array([5, 6, 7], np.int64)),
        ([[1, 2, 3]], TensorSpec("v", "float64", (-1, -1)), np.array([[1, 2, 3]], np.float64)),
        ([[[1], [2]]], TensorSpec("v", "uint8", (-1, 2, 1)), np.array([[[1], [2]]], np.uint8)),
        ([True, False], TensorSpec("flag", "bool", (-1,)), np.array([True, False])),
    ],
)
def test_items_of_a_one_input_model(instances, spec, expected):
    arrays = decode_instances(_body(instances), (spec,), None)
    assert list(arrays) == [spec.name]
    assert arrays[spec.name].dtype == expected.dtype
    np.testing.assert_array_equal(arrays[spec.name], expected)


def test_b64_images_become_one_batch():
    body = _body([{"b64": _b64_png(10)}, {"b64": _b64_png(200, size=(16, 16))}])
    arrays = decode_instances(body, (IMAGE,), PREP)
    image = arrays["image"]
    assert image.shape == (2, 1, 8, 8)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image[0], 10)
    np.testing.assert_allclose(image[1], 200, atol=0.5)


def test_named_objects_for_a_many_input_model():
    body = _body([{"x": [1, 2], "ids": 3}, {"ids": 4, "x": [5, 6]}])
    arrays = decode_instances(body, (X, IDS), None)
    assert list(arrays) == ["x", "ids"]
    np.testing.assert_array_equal(arrays["x"], np.array([[1, 2], [5, 6]], np.float32))
    np.testing.assert_array_equal(arrays["ids"], np.array([3, 4], np.int64))
    assert arrays["ids"].dtype == np.int64


@pytest.mark.parametrize(
    ("body", "inputs", "prep", "message"),
    [
        (b"{not json", (X,), None, "body is not valid JSON"),
        (b"[[1, 2]]", (X,), None, 'body must be a JSON object {"instances": [...]}'),
        (b'{"inputs": [[1, 2]]}', (X,), None, "body must be a JSON object"),
        (_body([]), (X,), None, "instances must be a non-empty list"),
        (b'{"instances": {"x": [1, 2]}}', (X,), None, "instances must be a non-empty list"),
        (b'{"instances": null}', (X,), None, "instances must be a non-empty list"),
        (_body([[1, 2, 3]]), (X,), None, "instances: each item has shape [3]; input 'x' wants [2]"),
        (_body([1, 2]), (X,), None, "instances: each item has shape []; input 'x' wants [2]"),
        (_body([[[1, 2]]]), (X,), None, "instances: each item has shape [1, 2]"),
        (_body([[1, 2], [3]]), (X,), None, "instances: lists are ragged"),
        (_body([["a", "b"]]), (X,), None, "instances: holds strings or nulls"),
        (_body([[1, None]]), (X,), None, "instances: holds strings or nulls"),
        (_body([1.5]), (IDS,), None, "instances: holds float64 values; expected integers"),
        (_body([2**63]), (IDS,), None, "instances: values out of range for int64"),
        (_body([{"x": [1, 2]}]), (X,), None, "instances: holds strings or nulls"),
        # images
        (_body([{"b64": _b64_png(1)}]), (IMAGE,), None, "this model takes no images"),
        (
            _body([{"b64": _b64_png(1)}, [1, 2]]),
            (IMAGE,),
            PREP,
            'instances[1] must be {"b64": "<base64 PNG or JPEG>"}',
        ),
        (
            _body([{"b64": _b64_png(1)}, {"b64": 5}]),
            (IMAGE,),
            PREP,
            'instances[1] must be {"b64"',
        ),
        (
            _body([{"b64": _b64_png(1)}, {"b64": "!!not base64!!"}]),
            (IMAGE,),
            PREP,
            "instances[1].b64 is not valid base64",
        ),
        (_body([{"b64": "é"}]), (IMAGE,), PREP, "instances[0].b64 is not valid base64"),
        (_body([{"b64": "QUJD"}]), (IMAGE,), PREP, "instances[0].b64: not a decodable PNG or JPEG"),
        (_body([{"b64": ""}]), (IMAGE,), PREP, "instances[0].b64: empty"),
        # many inputs
        (
            _body([[1, 2]]),
            (X, IDS),
            None,
            "instances[0] must be an object with exactly the keys ['x', 'ids']",
        ),
        (
            _body([{"x": [1, 2], "ids": 1}, {"x": [1, 2]}]),
            (X, IDS),
            None,
            "instances[1] must be an object",
        ),
        (
            _body([{"x": [1, 2], "ids": 1, "z": 0}]),
            (X, IDS),
            None,
            "instances[0] must be an object",
        ),
        (
            _body([{"x": [1, 2, 3], "ids": 1}]),
            (X, IDS),
            None,
            "instances[*].x: each item has shape [3]",
        ),
        (_body([{"x": [1, 2], "ids": 1.5}]), (X, IDS), None, "instances[*].ids: holds float64"),
        (
            _body([{"x": [1, 2], "ids": [1]}]),
            (X, IDS),
            None,
            "instances[*].ids: each item has shape [1]",
        ),
    ],
)
def test_decode_instances_refuses(body, inputs, prep, message):
    with pytest.raises(InvalidInput) as info:
        decode_instances(body, inputs, prep)
    assert message in str(info.value)


# -- limits: checked before the work they bound ---------------------------------------

LIMITS = DecodeLimits(max_items=3, max_elements=6, max_image_pixels=64, max_request_pixels=128)


@pytest.mark.parametrize(
    ("instances", "inputs", "setting"),
    [
        ([[1, 2]] * 4, (X,), "max_request_items"),
        ([{"b64": _b64_png(0)}] * 4, (IMAGE,), "max_request_items"),
        ([[1, 2, 3, 4, 5, 6, 7]], (TensorSpec("v", "float32", (-1, -1)),), "max_request_elements"),
        ([{"x": [1, 2], "ids": 1}] * 3, (X, IDS), "max_request_elements"),
        ([{"b64": _b64_png(0, (9, 8))}], (IMAGE,), "max_image_pixels"),
        ([{"b64": _b64_png(0)}] * 3, (IMAGE,), "max_request_pixels"),
    ],
)
def test_limits_are_refused_with_the_setting_named(instances, inputs, setting):
    limits = LIMITS if "pixels" not in setting else DecodeLimits(64, 4096, 64, 191)
    with pytest.raises(PayloadTooLarge, match=rf"\({setting}\)"):
        decode_instances(_body(instances), inputs, PREP, limits)


def test_containers_are_counted_before_parsing():
    with pytest.raises(PayloadTooLarge, match="JSON arrays and objects"):
        decode_instances(b'{"instances": [' + b"[0]," * 3000, (X,), None, LIMITS)
