"""Every per-request decode limit over HTTP: 413, its code, the setting named; still serving.

Limits bound what the bytes turn into (instances, tensor elements, image pixels), checked
before the work: a 16 MiB body of 160k tiny images is refused by its instance count without
decoding one image, and an 8000 x 8000 PNG of a few KB by its header.
"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import orjson
import psutil
import pytest
from PIL import Image

from support.server import ServerProcess, running_server

pytestmark = pytest.mark.slow

PREDICT = "/v1/models/digits:predict"
INFER = "/v2/models/digits/infer"
JSON = {"Content-Type": "application/json"}
PNG = {"Content-Type": "image/png"}
SMALL = {
    "MODELHOST_MAX_REQUEST_ITEMS": "8",
    "MODELHOST_MAX_REQUEST_ELEMENTS": str(784 * 6),
    "MODELHOST_MAX_IMAGE_PIXELS": str(64 * 64),
    "MODELHOST_MAX_REQUEST_PIXELS": str(64 * 64 * 3),
}


@pytest.fixture(scope="module")
def default_server(digits_archive) -> ServerProcess:
    with running_server(digits_archive, args=("--trust-code",)) as srv:
        yield srv


@pytest.fixture(scope="module")
def small_server(digits_archive) -> ServerProcess:
    with running_server(digits_archive, args=("--trust-code",), env=SMALL) as srv:
        yield srv


def _png(width: int, height: int, value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), value).save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def _v2_json(rows: int, data_rows: int | None = None) -> bytes:
    data = [0.0] * (784 * (rows if data_rows is None else data_rows))
    return orjson.dumps({"inputs": [{"name": "image", "shape": [rows, 1, 28, 28],
                                     "datatype": "FP32", "data": data}]})  # fmt: skip


def _v2_binary(rows: int, data_rows: int | None = None) -> tuple[bytes, dict[str, str]]:
    raw = np.zeros((rows if data_rows is None else data_rows) * 784, "<f4").tobytes()
    head = orjson.dumps({"inputs": [{"name": "image", "shape": [rows, 1, 28, 28],
                                     "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}]})  # fmt: skip
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(head))}  # fmt: skip
    return head + raw, headers


def _assert_refused(r: httpx.Response, setting: str) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == "payload_too_large"
    assert f"({setting})" in r.json()["error"]


def _assert_still_serving(server: ServerProcess, example_images: dict[str, bytes]) -> None:
    r = httpx.post(server.url + PREDICT, content=example_images["7"], headers=PNG)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] == "7"


def _cases():
    zero_item = np.zeros((1, 28, 28)).tolist()
    tiny = _png(28, 28)
    yield "native instances", PREDICT, JSON, orjson.dumps({"instances": [zero_item] * 9}), \
        "max_request_items"  # fmt: skip
    yield "native b64 images", PREDICT, JSON, orjson.dumps({"instances": [_b64(tiny)] * 9}), \
        "max_request_items"  # fmt: skip
    yield "v2 json rows", INFER, JSON, _v2_json(9, 0), "max_request_items"
    yield "v2 binary rows", INFER, *reversed(_v2_binary(9, 0)), "max_request_items"
    yield "v2 json elements", INFER, JSON, _v2_json(7, 0), "max_request_elements"
    yield "v2 binary elements", INFER, *reversed(_v2_binary(7)), "max_request_elements"
    yield "native elements", PREDICT, JSON, orjson.dumps({"instances": [zero_item] * 7}), \
        "max_request_elements"  # fmt: skip
    yield "json containers", PREDICT, JSON, b'{"instances": [' + b"[0]," * 5000 + b"[0]]}", \
        "max_request_items"  # fmt: skip
    yield "v2 json containers", INFER, JSON, b'{"inputs": [' + b"{}," * 5000 + b"{}]}", \
        "max_request_items"  # fmt: skip
    yield "raw png pixels", PREDICT, PNG, _png(65, 64), "max_image_pixels"
    yield "b64 png pixels", PREDICT, JSON, orjson.dumps({"instances": [_b64(_png(64, 65))]}), \
        "max_image_pixels"  # fmt: skip
    yield "request pixels", PREDICT, JSON, \
        orjson.dumps({"instances": [_b64(_png(64, 64))] * 3 + [_b64(_png(1, 1))]}), \
        "max_request_pixels"  # fmt: skip


CASES = list(_cases())


@pytest.mark.parametrize(
    ("path", "headers", "body", "setting"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_limit_is_a_413_naming_its_setting(
    small_server, example_images, path, headers, body, setting
):
    _assert_refused(httpx.post(small_server.url + path, content=body, headers=headers), setting)
    _assert_still_serving(small_server, example_images)


def test_requests_at_the_limits_are_answered(small_server):
    at_items = orjson.dumps({"instances": [_b64(_png(8, 8, v)) for v in range(6)]})
    r = httpx.post(small_server.url + PREDICT, content=at_items, headers=JSON)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 6
    body, headers = _v2_binary(6)
    r = httpx.post(small_server.url + INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    r = httpx.post(small_server.url + PREDICT, content=_png(64, 64), headers=PNG)
    assert r.status_code == 200, r.text


def test_160k_tiny_images_are_refused_by_count_without_decoding_them(
    default_server, example_images
):
    item = orjson.dumps(_b64(_png(1, 1)))
    body = b'{"instances": [' + b",".join([item] * 160_000) + b"]}"
    assert len(body) < 16 * 1024 * 1024  # under max_body_bytes: the item limit is what refuses
    process = psutil.Process(default_server.process.pid)
    before = process.memory_info().rss
    r = httpx.post(default_server.url + PREDICT, content=body, headers=JSON, timeout=60)
    _assert_refused(r, "max_request_items")  # counted before parsing: 160,002 objects
    # Decoding them took RSS past 4 GiB before; now not even the JSON is parsed.
    assert process.memory_info().rss - before < 256 * 1024**2
    _assert_still_serving(default_server, example_images)


def test_an_8000_by_8000_png_is_refused_from_its_header(default_server, example_images):
    png = _png(8000, 8000)
    assert len(png) < 512 * 1024  # a few hundred KB that would decode to 64 M pixels
    process = psutil.Process(default_server.process.pid)
    before = process.memory_info().rss
    for path, headers, body in [
        (PREDICT, PNG, png),
        (PREDICT, JSON, orjson.dumps({"instances": [_b64(png)]})),
    ]:
        r = httpx.post(default_server.url + path, content=body, headers=headers)
        _assert_refused(r, "max_image_pixels")
        assert "8000x8000" in r.json()["error"]
    assert process.memory_info().rss - before < 64 * 1024**2
    _assert_still_serving(default_server, example_images)


def test_the_request_pixel_sum_is_checked_before_the_image_that_passes_it(default_server):
    big = _b64(_png(4096, 4096))  # exactly max_image_pixels; 4 of them = max_request_pixels
    body = orjson.dumps({"instances": [big] * 5})
    r = httpx.post(default_server.url + PREDICT, content=body, headers=JSON, timeout=60)
    _assert_refused(r, "max_request_pixels")
    assert r.json()["error"].startswith("instances[4].b64")
