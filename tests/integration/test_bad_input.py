"""Every kind of bad input gets a clear JSON error with the right 4xx; the server keeps serving."""

from __future__ import annotations

import base64
import socket

import httpx
import numpy as np
import orjson
import pytest

pytestmark = pytest.mark.slow

PREDICT = "/v1/models/digits:predict"
INFER = "/v2/models/digits/infer"
JSON = {"Content-Type": "application/json"}
PNG = {"Content-Type": "image/png"}


def v2(data=None, *, shape=(1, 1, 28, 28), datatype="FP32", name="image", **extra) -> bytes:
    tensor = {"name": name, "shape": list(shape), "datatype": datatype,
              "data": [0.5] * 784 if data is None else data}  # fmt: skip
    return orjson.dumps({"inputs": [tensor], **extra})


def instances(value) -> bytes:
    return orjson.dumps({"instances": value})


ZERO_ITEM = [[[0.0] * 28 for _ in range(28)]]


def binary(values: np.ndarray, size: int) -> tuple[dict[str, str], bytes]:
    head = orjson.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]})  # fmt: skip
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(head))}  # fmt: skip
    return headers, head + values.tobytes()


BINARY_NAN = binary(np.full(784, np.nan, dtype="<f4"), 784 * 4)
BINARY_SHORT = binary(np.zeros(25, dtype="<f4"), 100)

CASES = [
    # (id, path, headers, body, status, code, fragment of the message)
    ("v2 wrong shape", INFER, JSON, v2([0.5] * 784, shape=(1, 784)), 400, "invalid_input",
     "shape [1, 784]"),
    ("v2 element count", INFER, JSON, v2([0.5] * 10), 400, "invalid_input",
     "inputs[0].data: data has 10 elements"),
    ("v2 wrong dtype", INFER, JSON, v2(datatype="INT32"), 400, "invalid_input",
     "inputs[0].datatype INT32 does not match the model's FP32"),
    ("v2 unknown dtype", INFER, JSON, v2(datatype="FLOAT"), 400, "invalid_input",
     "inputs[0].datatype 'FLOAT' is not supported"),
    ("v2 non-numeric", INFER, JSON, v2(["a"] * 784), 400, "invalid_input",
     "inputs[0].data: holds strings or nulls"),
    ("v2 null data", INFER, JSON, v2([None] * 784), 400, "invalid_input", "inputs[0].data"),
    ("v2 ragged", INFER, JSON, v2([[0.1, 0.2], [0.3]]), 400, "invalid_input", "ragged"),
    ("v2 NaN", INFER, JSON,
     orjson.dumps({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                               "data": [0.5] * 783}]})[:-4] + b",NaN]}]}", 400, "invalid_input",
     "not valid JSON"),
    ("v2 inf literal", INFER, JSON, v2([0.5] * 784).replace(b"0.5", b"1e999", 1), 400,
     "invalid_input", "number is infinity"),
    ("v2 binary NaN", INFER, BINARY_NAN[0], BINARY_NAN[1], 400, "invalid_input",
     "input 'image' contains NaN or infinity"),
    ("v2 binary size mismatch", INFER, BINARY_SHORT[0], BINARY_SHORT[1], 400, "invalid_input",
     "binary_data_size 100 does not match shape"),
    ("v2 empty batch", INFER, JSON, v2([], shape=(0, 1, 28, 28)), 400, "invalid_input",
     "empty batch"),
    ("v2 no inputs", INFER, JSON, b'{"inputs": []}', 400, "invalid_input",
     "inputs must be a non-empty list"),
    ("v2 unknown input", INFER, JSON, v2(name="pixels"), 400, "invalid_input",
     "inputs[0].name 'pixels' is not an input"),
    ("v2 unknown output", INFER, JSON, v2(outputs=[{"name": "probs"}]), 400, "invalid_input",
     "outputs[0].name 'probs'"),
    ("v2 malformed json", INFER, JSON, b'{"inputs": [', 400, "invalid_input", "not valid JSON"),
    ("v2 not an object", INFER, JSON, b"[1, 2]", 400, "invalid_input", "JSON object"),
    ("v2 bad id", INFER, JSON, v2(id=5), 400, "invalid_input", "id must be a string"),
    ("v2 wrong content type", INFER, {"Content-Type": "text/plain"}, v2(), 415,
     "unsupported_media_type", "'text/plain'"),
    ("v2 bad binary header", INFER, {"Inference-Header-Content-Length": "x"}, v2(), 400,
     "invalid_input", "Inference-Header-Content-Length"),
    ("v2 binary header past body", INFER, {"Inference-Header-Content-Length": "99999"}, v2(),
     400, "invalid_input", "outside the body"),
    ("v2 unknown model", "/v2/models/nope/infer", JSON, v2(), 404, "model_not_found", "'nope'"),
    ("v2 unknown version", "/v2/models/digits/versions/7/infer", JSON, v2(), 404,
     "model_not_found", "no version '7'"),
    ("native unknown model", "/v1/models/nope:predict", PNG, b"x", 404, "model_not_found",
     "'nope'"),
    ("native unknown version", "/v1/models/digits/versions/0:predict", PNG, b"x", 404,
     "model_not_found", "no version '0'"),
    ("undecodable image", PREDICT, PNG, b"\x89PNG\r\n\x1a\n garbage", 400, "invalid_input",
     "not a decodable PNG or JPEG"),
    ("empty image", PREDICT, PNG, b"", 400, "invalid_input", "body: empty"),
    ("gif is refused", PREDICT, PNG, base64.b64decode(
        "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"), 400, "invalid_input",
     "not a decodable PNG or JPEG image"),
    ("native wrong content type", PREDICT, {"Content-Type": "text/csv"}, b"1,2", 415,
     "unsupported_media_type", "'text/csv'"),
    ("native form content type", PREDICT, {"Content-Type": "application/x-www-form-urlencoded"},
     b"a=1", 415, "unsupported_media_type", "application/x-www-form-urlencoded"),
    ("native malformed json", PREDICT, JSON, b"{", 400, "invalid_input", "not valid JSON"),
    ("native no instances key", PREDICT, JSON, b'{"inputs": []}', 400, "invalid_input",
     '{"instances": [...]}'),
    ("native empty instances", PREDICT, JSON, instances([]), 400, "invalid_input",
     "instances must be a non-empty list"),
    ("native wrong item shape", PREDICT, JSON, instances([[0.0] * 784]), 400, "invalid_input",
     "each item has shape [784]"),
    ("native non-numeric", PREDICT, JSON, instances([[[["x"] * 28] * 28]]), 400,
     "invalid_input", "strings or nulls"),
    ("native infinity", PREDICT, JSON, instances([ZERO_ITEM]).replace(b"0.0", b"-1e999", 1), 400,
     "invalid_input", "number is infinity"),
    ("native bad b64", PREDICT, JSON, instances([{"b64": "***"}]), 400, "invalid_input",
     "instances[0].b64 is not valid base64"),
    ("native b64 not an image", PREDICT, JSON,
     instances([{"b64": base64.b64encode(b"hello").decode()}]), 400, "invalid_input",
     "instances[0].b64: not a decodable"),
    ("native mixed instances", PREDICT, JSON,
     instances([{"b64": base64.b64encode(b"x").decode()}, ZERO_ITEM]), 400, "invalid_input",
     "instances[1] must be"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "code", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_a_clear_json_error(server, path, headers, body, status, code, fragment):
    r = httpx.post(server.url + path, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["code"] == code
    assert fragment in doc["error"]


def test_body_over_the_limit_is_413_and_server_keeps_serving(server, example_images):
    big = b"0" * (16 * 1024 * 1024 + 1)
    r = httpx.post(server.url + PREDICT, content=big, headers=PNG)
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"
    assert "max_body_bytes" in r.json()["error"]
    ok = httpx.post(server.url + PREDICT, content=example_images["0"], headers=PNG)
    assert ok.json()["predictions"][0]["label"] == "0"


def test_chunked_body_over_the_limit_is_413(server):
    def chunks():
        for _ in range(17):
            yield b"0" * (1024 * 1024)

    r = httpx.post(server.url + PREDICT, content=chunks(), headers=PNG)
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"


def test_unknown_route_and_method_are_json(server):
    r = httpx.get(server.url + "/v3/nothing")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    r = httpx.get(server.url + INFER)
    assert r.status_code == 405
    assert r.json()["code"] == "method_not_allowed"


def test_garbage_on_the_socket_does_not_hurt_the_server(server, example_images):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"\x00\x01 NOT HTTP\r\n\r\n")
        sock.recv(1024)
    ok = httpx.post(server.url + PREDICT, content=example_images["9"], headers=PNG)
    assert ok.json()["predictions"][0]["label"] == "9"


def test_server_still_answers_after_every_bad_input(server, example_images):
    for _, path, headers, body, *_ in CASES:
        httpx.post(server.url + path, content=body, headers=headers)
    for label, png in example_images.items():
        r = httpx.post(server.url + PREDICT, content=png, headers=PNG)
        assert r.json()["predictions"][0]["label"] == label
