"""The event loop only waits: large payloads decode and encode in the codec pool, every limit
is checked from headers and declared shapes before that work starts, and a full pool answers
503 + Retry-After. Order is shown by metrics and by which answer comes back first, never by
timers: the server reports a decode running (``modelhost_codec_busy``) and the test acts then.
"""

from __future__ import annotations

import base64
import struct
import threading
import zlib

import httpx
import numpy as np
import orjson
import pytest

from support.server import ServerProcess, running_server

pytestmark = pytest.mark.slow

PREDICT = "/v1/models/digits:predict"
INFER = "/v2/models/digits/infer"
PNG = {"Content-Type": "image/png"}
JSON = {"Content-Type": "application/json"}
OFFLOAD_BYTES = 2048
ENV = {
    # One process, one codec thread and one waiting place: three requests reach the bound.
    "MODELHOST_WORKERS": "1",
    "MODELHOST_CODEC_THREADS": "1",
    "MODELHOST_MAX_CODEC_QUEUE": "1",
    "MODELHOST_CODEC_OFFLOAD_BYTES": str(OFFLOAD_BYTES),
    # Room for an 8000 x 8000 image, whose decode takes seconds (1.9 s measured): long enough
    # for everything the tests do while it runs to happen first.
    "MODELHOST_MAX_IMAGE_PIXELS": str(8000 * 8000),
}
OFFLOADED = "modelhost_codec_offloaded_total"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes, color: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def _slow_png(side: int) -> bytes:
    """An RGB PNG of ``side`` x ``side`` black pixels, every row Paeth-filtered: ~200 KB
    that cost seconds to decode (Paeth is the slowest filter to undo)."""
    z = zlib.compressobj(9)
    row = b"\x04" + bytes(side * 3)
    return _png(side, side, b"".join(z.compress(row) for _ in range(side)) + z.flush(), 2)


@pytest.fixture(scope="module")
def server(digits_archive) -> ServerProcess:
    with running_server(digits_archive, args=("--trust-code",), env=ENV) as srv:
        yield srv


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return _slow_png(8000)


def _offloaded(server: ServerProcess, phase: str) -> float:
    return server.metric(OFFLOADED, phase=phase)


def _post_in_thread(url: str, body: bytes, done: list[tuple[str, httpx.Response]], tag: str):
    def post() -> None:
        done.append((tag, httpx.post(url, content=body, headers=PNG, timeout=120)))

    thread = threading.Thread(target=post)
    thread.start()
    return thread


# -- limits first ------------------------------------------------------------------------


def _bomb() -> bytes:
    """A PNG declaring 20000 x 20000 pixels (400 M) in a few dozen bytes."""
    return _png(20000, 20000, zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    ("headers", "body", "field"),
    [
        (PNG, _bomb(), "body"),
        (JSON, orjson.dumps({"instances": [{"b64": base64.b64encode(_bomb()).decode()}]}),
         "instances[0].b64"),
    ],
    ids=["raw png", "b64 png"],
)  # fmt: skip
def test_a_decompression_bomb_is_refused_from_its_header_before_any_decoding(
    server, headers, body, field
):
    before = _offloaded(server, "decode")
    r = httpx.post(server.url + PREDICT, content=body, headers=headers)
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "payload_too_large"
    assert r.json()["error"].startswith(f"{field}: image of 20000x20000 pixels")
    assert "(max_image_pixels)" in r.json()["error"]
    # 400 M pixels would go to the codec pool; the header check refused it first.
    assert _offloaded(server, "decode") == before


def test_a_jpeg_lying_about_its_size_is_refused(server, example_images):
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.open(BytesIO(example_images["4"])).save(buf, format="JPEG")
    real = buf.getvalue()
    at = real.index(b"\xff\xc0")
    second = real[at : at + 5] + struct.pack(">HH", 20000, 20000) + real[at + 9 :]
    # A second frame header declaring 20000 x 20000 after the real one.
    lying = real[: at + 2 + int.from_bytes(real[at + 2 : at + 4], "big")] + second
    r = httpx.post(server.url + PREDICT, content=lying, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 400, r.text
    assert "not a decodable PNG or JPEG" in r.json()["error"]


# -- the event loop keeps answering ----------------------------------------------------------


def test_probe_and_small_request_are_answered_while_a_huge_image_decodes(
    server, example_images, huge_png
):
    done: list[tuple[str, httpx.Response]] = []
    big = _post_in_thread(server.url + PREDICT, huge_png, done, "huge")
    # The server says it is decoding; were the loop decoding, this scrape could not answer.
    server.wait_for_metric("modelhost_codec_busy", 1.0)
    done.append(("probe", httpx.get(f"{server.url}/v2/health/ready")))
    done.append(
        ("small", httpx.post(server.url + PREDICT, content=example_images["7"], headers=PNG))
    )
    big.join()
    assert [tag for tag, _ in done] == ["probe", "small", "huge"]
    assert all(r.status_code == 200 for _, r in done), [r.text for _, r in done]
    assert done[1][1].json()["predictions"][0]["label"] == "7"


def test_a_full_codec_queue_answers_503_with_retry_after(server, example_images, huge_png):
    done: list[tuple[str, httpx.Response]] = []
    first = _post_in_thread(server.url + PREDICT, huge_png, done, "running")
    server.wait_for_metric("modelhost_codec_busy", 1.0)
    second = _post_in_thread(server.url + PREDICT, huge_png, done, "waiting")
    server.wait_for_metric("modelhost_codec_waiting", 1.0)
    r = httpx.post(server.url + PREDICT, content=huge_png, headers=PNG)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "overloaded"
    assert "(max_codec_queue)" in r.json()["error"]
    assert int(r.headers["retry-after"]) >= 1
    # Small work never queues for the pool: answered while the pool is full.
    ok = httpx.post(server.url + PREDICT, content=example_images["2"], headers=PNG)
    assert ok.json()["predictions"][0]["label"] == "2"
    first.join()
    second.join()
    assert sorted(tag for tag, r in done if r.status_code == 200) == ["running", "waiting"]
    server.wait_for_metric("modelhost_codec_waiting", 0.0)


# -- what goes to the pool ---------------------------------------------------------------------


def _v2_binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = x.astype("<f4").tobytes()
    head = orjson.dumps({
        "inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    })  # fmt: skip
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(head))}  # fmt: skip
    return head + raw, headers


def test_large_json_bodies_decode_and_large_answers_encode_in_the_pool(server, example_images):
    from modelhost.train.data import load_digits_split

    x = load_digits_split(seed=0).x_test[:64]
    decoded, encoded = _offloaded(server, "decode"), _offloaded(server, "encode")

    body = orjson.dumps({"instances": x.tolist()})
    assert len(body) > OFFLOAD_BYTES
    r = httpx.post(server.url + PREDICT, content=body, headers=JSON)
    labels = [int(p["label"]) for p in r.json()["predictions"]]
    assert len(labels) == 64
    assert _offloaded(server, "decode") == decoded + 1
    assert _offloaded(server, "encode") == encoded + 1  # 64 x 10 float32 > 2048 bytes

    # v2 binary: its JSON part is small and the tensor bytes become an array without a copy,
    # so it decodes inline however large; its 2560-byte answer encodes in the pool.
    body, headers = _v2_binary(x)
    r = httpx.post(server.url + INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    logits = np.frombuffer(r.content[n:], dtype="<f4").reshape(64, 10)
    assert logits.argmax(1).tolist() == labels
    assert _offloaded(server, "decode") == decoded + 1
    assert _offloaded(server, "encode") == encoded + 2

    # Small ones stay on the loop: one PNG of 784 pixels, one row of logits.
    r = httpx.post(server.url + PREDICT, content=example_images["5"], headers=PNG)
    assert r.json()["predictions"][0]["label"] == "5"
    assert (_offloaded(server, "decode"), _offloaded(server, "encode")) == (
        decoded + 1,
        encoded + 2,
    )


def test_errors_raised_in_the_pool_are_clear_4xx(server):
    bad = orjson.dumps({"instances": [[[[0.5] * 28] * 28]] * 8 + [["x"]]})
    assert len(bad) > OFFLOAD_BYTES
    r = httpx.post(server.url + PREDICT, content=bad, headers=JSON)
    assert r.status_code == 400, r.text
    assert "instances" in r.json()["error"]
    tensor = {"name": "image", "shape": [4, 1, 28, 28], "datatype": "FP32"}
    broken = orjson.dumps({"inputs": [{**tensor, "data": [0.5] * (784 * 4 - 1)}]})
    assert len(broken) > OFFLOAD_BYTES
    r = httpx.post(server.url + INFER, content=broken, headers=JSON)
    assert r.status_code == 400, r.text
    assert "inputs[0].data" in r.json()["error"]
