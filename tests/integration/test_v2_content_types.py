"""KServe v2 inference decides JSON or binary as Triton does, from
``Inference-Header-Content-Length``, never from the Content-Type: Triton's own asyncio client
(aiohttp labels every bytes body application/octet-stream) and Triton's documented
``curl -X POST -d @input.json`` (application/x-www-form-urlencoded) both work."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest

pytestmark = pytest.mark.slow

INFER = "/v2/models/digits/infer"


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((2, 1, 28, 28), dtype=np.float32)


def _logits(answer: httpx.Response) -> np.ndarray:
    out = answer.json()["outputs"][0]
    return np.array(out["data"], np.float32).reshape(out["shape"])


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/x-www-form-urlencoded", "application/octet-stream",
     "text/plain", "application/json; charset=utf-8", None],
)  # fmt: skip
def test_a_json_body_is_json_whatever_its_content_type(server, content_type):
    pixels = _pixels(0)
    body = orjson.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 1, 28, 28],
                                     "data": pixels.ravel().tolist()}]})  # fmt: skip
    reference = httpx.post(f"{server.url}{INFER}", content=body,
                           headers={"Content-Type": "application/json"})  # fmt: skip
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = httpx.post(f"{server.url}{INFER}", content=body, headers=headers)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(_logits(r), _logits(reference))


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/json", None])
def test_a_binary_body_is_split_by_its_header_whatever_its_content_type(server, content_type):
    pixels = _pixels(1)
    size = {"binary_data_size": pixels.nbytes}
    head = orjson.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 1, 28, 28],
                                     "parameters": size}]})  # fmt: skip
    headers = {"Inference-Header-Content-Length": str(len(head))}
    if content_type is not None:
        headers["Content-Type"] = content_type
    r = httpx.post(f"{server.url}{INFER}", content=head + pixels.tobytes(), headers=headers)
    assert r.status_code == 200, r.text
    assert _logits(r).shape == (2, 10)


def test_tritons_asyncio_client_infers_json_and_binary(server):
    aio = pytest.importorskip("tritonclient.http.aio")
    pixels = _pixels(2)

    async def run() -> tuple[np.ndarray, np.ndarray]:
        client = aio.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            answers = []
            for binary in (False, True):
                tensor = aio.InferInput("image", list(pixels.shape), "FP32")
                tensor.set_data_from_numpy(pixels, binary_data=binary)
                wanted = aio.InferRequestedOutput("logits", binary_data=binary)
                answer = await client.infer("digits", [tensor], outputs=[wanted])
                answers.append(answer.as_numpy("logits"))
            return answers[0], answers[1]
        finally:
            await client.close()

    as_json, as_binary = asyncio.run(run())
    assert as_json.shape == (2, 10)
    np.testing.assert_array_equal(as_json, as_binary)
