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
    ("v2 ragged", INFER, JSON, v2([[[[0.1] * 28] * 27 + [[0.1] * 27]]]), 400, "invalid_input",
     "ragged"),
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


# -- hostile values: each class gives a 4xx naming the field, never a 500 -------------

HEAD = v2()


def _binary_head(shape, size, **extra):
    tensor = {"name": "image", "shape": shape, "datatype": "FP32",
              "parameters": {"binary_data_size": size}}  # fmt: skip
    head = orjson.dumps({"inputs": [tensor], **extra})
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(head))}  # fmt: skip
    return head, headers


def _hostile_cases():
    # Inference-Header-Content-Length: only 1-19 ASCII digits are a byte count.
    for value in ["²", "٣", "1²", "9" * 5000, "-1", "+5", "1 2", "0x10", "1_0", "", "1.0"]:
        raw = value.encode("utf-8")  # non-latin-1 digits arrive as their UTF-8 bytes
        yield f"header length {value[:8]!r}", INFER, \
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": raw}, \
            HEAD, 400, "Inference-Header-Content-Length"  # fmt: skip
    # Shapes: dims past 2**31 - 1, zero-sized tricks, more dims than the signature.
    for shape in ([0, 2**62], [2**62, 0], [1, 1, 28, 2**31], [0, 1, 28, 2**40],
                  [1, 1, 28, 28, 1], [1] * 40, [784], []):  # fmt: skip
        yield f"v2 json shape {shape[:5]}", INFER, JSON, v2([], shape=shape), 400, \
            "inputs[0].shape"  # fmt: skip
        body, headers = _binary_head(shape, 0)
        yield f"v2 binary shape {shape[:5]}", INFER, headers, body, 400, "inputs[0].shape"
    # binary_data_size lying, and data disagreeing with datatype / shape.
    for size in (2**63, 2**64 - 1, 784 * 4 + 1, 1, -5, "3136", 3136.0, True):
        body, headers = _binary_head([1, 1, 28, 28], size)
        yield f"binary_data_size {size!r}", INFER, headers, body + bytes(3136), 400, \
            "binary_data_size"  # fmt: skip
    yield "data and binary both", INFER, JSON, orjson.dumps({"inputs": [{
        "name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784,
        "parameters": {"binary_data_size": 0}}]}), 400, "both data and"  # fmt: skip
    yield "bools for FP32", INFER, JSON, v2([True] * 784), 400, "inputs[0].data: holds bool"
    yield "FP16 value past its range", INFER, JSON, v2([1e39] * 784), 400, "out of range"
    # JSON itself: nesting depth, NaN/Infinity literals, non-UTF-8 bytes, lone surrogates.
    yield "v2 deep nesting", INFER, JSON, b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", \
        400, "not valid JSON"  # fmt: skip
    yield "native deep nesting", PREDICT, JSON, b'{"instances": ' + b"[" * 3000, 400, \
        "not valid JSON"  # fmt: skip
    yield "data nested past numpy's dims", INFER, JSON, v2([[[[[[[[0.5]]]]]]]] * 3), 400, \
        "inputs[0].data"  # fmt: skip
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"nan"):
        yield f"literal {literal.decode()}", INFER, JSON, \
            v2([0.5] * 784).replace(b"0.5", literal, 1), 400, "not valid JSON"  # fmt: skip
    yield "v2 non-UTF-8", INFER, JSON, v2(id="\u00e9").replace(b"\xc3\xa9", b"\xe9"), 400, \
        "not valid JSON"  # fmt: skip
    yield "native non-UTF-8", PREDICT, JSON, b'{"instances": ["\xff\xfe"]}', 400, \
        "not valid JSON"  # fmt: skip
    yield "lone surrogate", INFER, JSON, v2().replace(b'"image"', b'"\\ud800"', 1), 400, \
        "not valid JSON"  # fmt: skip
    yield "huge id", INFER, JSON, v2(id="x" * 100_000), 400, "id is 100000 characters"
    yield "more tensors than inputs", INFER, JSON, orjson.dumps(
        {"inputs": [orjson.loads(HEAD)["inputs"][0]] * 2}), 400, "inputs has 2 tensors"  # fmt: skip
    # Content types the routes do not take, however they are spelled.
    # (v2 reads no Content-Type, as Triton: tests/integration/test_v2_content_types.py.)
    for ctype in ("application/jsonx", "text/json", "application/x-ndjson", "multipart/form-data"):
        yield f"native content type {ctype}", PREDICT, {"Content-Type": ctype}, HEAD, 415, ctype
    yield "native no content type", PREDICT, {"Content-Type": ""}, HEAD, 415, "(none)"
    yield "image/png with JSON", PREDICT, PNG, HEAD, 400, "not a decodable PNG or JPEG"


HOSTILE = list(_hostile_cases())


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "fragment"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_values_are_a_4xx_naming_the_field(server, path, headers, body, status, fragment):
    r = httpx.post(server.url + path, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert fragment in r.json()["error"]


@pytest.mark.parametrize(
    "ctype",
    [
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json;",
    ],
)
def test_content_type_spellings_of_json_are_accepted(server, ctype):
    r = httpx.post(server.url + INFER, content=v2(), headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text


def test_duplicate_keys_take_the_last_value(server):
    """RFC 8259 leaves duplicate names to the parser; orjson keeps the last one."""
    body = v2().replace(b'"datatype":"FP32"', b'"datatype":"INT8","datatype":"FP32"')
    assert httpx.post(server.url + INFER, content=body, headers=JSON).status_code == 200


def test_a_repeated_binary_header_is_refused(server):
    body, headers = _binary_head([1, 1, 28, 28], 3136)
    pairs = [*headers.items(), ("Inference-Header-Content-Length", "7")]
    r = httpx.post(server.url + INFER, content=body + bytes(3136), headers=pairs)
    assert r.status_code == 400
    assert "appears 2 times" in r.json()["error"]


@pytest.mark.parametrize(
    "path",
    ["/v2/models/%00/infer", "/v2/models/%F0%9F%98%80/infer", "/v2/models/%C0%AF/infer",
     "/v2/models/..%2F..%2Fetc/infer", "/v2/models/digits/versions/%FF/infer",
     "/v2/models/" + "x" * 4000 + "/infer", "/v1/models/%E2%80%AE:predict",
     "/v2/models/digits%20/infer"],
)  # fmt: skip
def test_odd_model_names_in_the_path_are_404(server, path):
    r = httpx.post(server.url + path, content=v2(), headers=JSON)
    assert r.status_code == 404, r.text
    assert r.json()["code"] in ("model_not_found", "not_found")


@pytest.mark.parametrize("query", ["?a=%ZZ", "?a=%00&a=%FF", "?" + "x=1&" * 2000, "?=&&=="])
def test_query_strings_are_ignored(server, query):
    r = httpx.post(server.url + INFER + query, content=v2(), headers=JSON)
    assert r.status_code == 200, r.text


def test_server_still_answers_after_every_hostile_value(server, example_images):
    for _, path, headers, body, *_ in HOSTILE:
        httpx.post(server.url + path, content=body, headers=headers)
    ok = httpx.post(server.url + PREDICT, content=example_images["3"], headers=PNG)
    assert ok.json()["predictions"][0]["label"] == "3"
    assert "Traceback" not in "".join(server.output)
