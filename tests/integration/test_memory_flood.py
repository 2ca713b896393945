"""Bounded memory by construction: 64 clients flooding one server with the largest legal
requests (and some a little over the limits) leave its RSS under a documented bound, and it
keeps answering.

The bound (README, "Limits"): with the default limits, one server process stays under its
idle RSS + FLOOD_BOUND_BYTES. Bodies held at once are capped by max_inflight_body_bytes
(256 MiB), each request's decoded tensors by max_request_items x the item size, images by
max_request_pixels, and batches by max_batch_elements.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import httpx
import numpy as np
import orjson
import psutil
import pytest
from PIL import Image

from support.server import running_server

pytestmark = pytest.mark.slow

FLOOD_BOUND_BYTES = 1536 * 1024**2  # documented in README.md, "Limits"
CLIENTS = 64
ROUNDS = 3
ITEMS = 1024  # max_request_items


def _png(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if width * height > 1_000_000:  # a big flat image compresses to a few KB
        pixels = np.full((height, width), seed % 256, dtype=np.uint8)
    else:
        pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, "PNG")
    return out.getvalue()


def _bodies() -> list[tuple[str, bytes, dict[str, str]]]:
    """(path, body, headers) of the largest legal requests for digits, and a few over."""
    json_h = {"Content-Type": "application/json"}
    tiny = base64.b64encode(_png(28, 28)).decode()
    big = base64.b64encode(_png(4096, 4096)).decode()
    x = np.random.default_rng(1).random((ITEMS, 1, 28, 28), dtype=np.float32)
    head = orjson.dumps(
        {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                     "parameters": {"binary_data_size": x.nbytes}}]}
    )  # fmt: skip
    v2_json = orjson.dumps(
        {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                     "data": x.reshape(-1).tolist()}]}
    )  # fmt: skip
    return [
        ("/v1/models/digits:predict", orjson.dumps({"instances": [{"b64": tiny}] * ITEMS}), json_h),
        ("/v1/models/digits:predict", orjson.dumps({"instances": [{"b64": big}] * 4}), json_h),
        ("/v2/models/digits/infer", head + x.tobytes(),
         {"Content-Type": "application/octet-stream",
          "Inference-Header-Content-Length": str(len(head))}),
        ("/v2/models/digits/infer", v2_json, json_h),
        # over the limits: one item too many, and 16 MiB of tiny nested lists
        ("/v1/models/digits:predict",
         orjson.dumps({"instances": [{"b64": tiny}] * (ITEMS + 1)}), json_h),
        ("/v1/models/digits:predict", b'{"instances": [' + b"[0]," * (4 * 1024**2 - 8)
         + b"[0]]}", json_h),
    ]  # fmt: skip


class PeakRss:
    """Samples a process's RSS in a thread until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def _flood(url: str, bodies: list[tuple[str, bytes, dict[str, str]]]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one_client(i: int) -> None:
            for r in range(ROUNDS):
                path, body, headers = bodies[(i + r) % len(bodies)]
                response = await client.post(path, content=body, headers=headers)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if (i + r) % len(bodies) < 4 and response.status_code == 200:
                    rows = response.json()
                    assert rows, rows

        async def probe() -> None:
            # Health keeps answering during the flood.
            for _ in range(5):
                r = await client.get("/v2/health/live")
                assert r.status_code == 200

        await asyncio.gather(*(one_client(i) for i in range(CLIENTS)), probe())
    return statuses


def test_a_flood_of_the_largest_legal_requests_stays_under_the_bound(onnx_archive, tmp_path):
    bodies = _bodies()
    args = ("--home", str(tmp_path / "home"))
    with running_server(onnx_archive, args=args) as srv:
        idle = psutil.Process(srv.process.pid).memory_info().rss
        with PeakRss(srv.process.pid) as rss:
            statuses = asyncio.run(_flood(srv.url, bodies))
        grown = rss.peak - idle
        print(f"idle RSS {idle / 2**20:.0f} MiB, peak {rss.peak / 2**20:.0f} MiB "
              f"(+{grown / 2**20:.0f} MiB); answers {statuses}")  # fmt: skip
        assert grown < FLOOD_BOUND_BYTES, statuses
        assert set(statuses) <= {200, 413, 503}, statuses
        assert statuses.get(200, 0) > 0
        assert statuses.get(413, 0) > 0  # the over-limit bodies were refused
        # and it still answers a plain request afterwards
        path, body, headers = bodies[0]
        assert httpx.post(srv.url + path, content=body, headers=headers).status_code == 200


def test_a_large_upload_is_streamed_to_disk_not_held_in_memory(onnx_archive, tmp_path):
    chunk = np.random.default_rng(2).bytes(1024**2)
    upload_mib = 300

    def body():
        for _ in range(upload_mib):
            yield chunk

    home = tmp_path / "home"
    args = ("--home", str(home), "--management-port", "0")
    with running_server(onnx_archive, args=args) as srv:
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        idle = psutil.Process(srv.process.pid).memory_info().rss
        with PeakRss(srv.process.pid) as rss:
            r = httpx.post(
                f"{srv.management_url}/models",
                content=body(),
                headers=auth | {"Content-Type": "application/octet-stream"},
                timeout=300,
            )
        assert r.status_code == 400, r.text  # random bytes: not a zip, refused after streaming
        assert "not a zip" in r.json()["error"]
        grown = rss.peak - idle
        print(f"{upload_mib} MiB upload: RSS +{grown / 2**20:.0f} MiB")
        assert grown < 64 * 1024**2  # the upload is never in memory whole
        assert list((home / "uploads").iterdir()) == []
