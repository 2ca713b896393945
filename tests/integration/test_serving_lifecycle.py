"""Engine behaviour seen over real HTTP with a deliberately slow model: dropping requests of
clients that left, deadlines, overload, graceful shutdown, refusing broken archives."""

from __future__ import annotations

import asyncio
import subprocess
import time
import zipfile
from pathlib import Path

import httpx
import orjson
import pytest

from modelhost.archive.manifest import Batching
from support.archives import slow_archive
from support.cli import mh
from support.server import running_server

pytestmark = pytest.mark.slow

ROW = {"instances": [[1.0, 2.0, 3.0, 4.0]]}


def body(value: float) -> bytes:
    return orjson.dumps({"instances": [[value] * 4]})


IN_FLIGHT = "modelhost_in_flight_requests"
PENDING = "modelhost_pending_requests"
COMPUTED = "modelhost_inference_count_total"


async def post(client: httpx.AsyncClient, url: str, value: float) -> httpx.Response:
    return await client.post(
        f"{url}/v1/models/slow:predict",
        content=body(value),
        headers={"Content-Type": "application/json"},
    )


def test_slow_model_answers_correctly(tmp_path: Path) -> None:
    with running_server(slow_archive(tmp_path, delay_s=0.05), args=("--trust-code",)) as srv:
        r = httpx.post(f"{srv.url}/v1/models/slow:predict", json=ROW)
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": [[2.0, 4.0, 6.0, 8.0]]}


async def test_requests_of_clients_that_left_are_never_computed(tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # the busy request computes until the test creates this file
    archive = slow_archive(tmp_path, delay_s=0.0, gate=gate, batching=Batching(max_batch_size=1))
    with running_server(archive, args=("--trust-code",)) as srv:
        async with httpx.AsyncClient(timeout=60) as client:
            busy = asyncio.create_task(post(client, srv.url, 1.0))
            # accepted and taken by the batcher (queue empty): the instance is computing it
            await asyncio.to_thread(srv.wait_for_metric, IN_FLIGHT, 1.0, model="slow")
            await asyncio.to_thread(srv.wait_for_metric, PENDING, 0.0, model="slow")
            async with httpx.AsyncClient(timeout=60) as impatient:
                leaving = [asyncio.create_task(post(impatient, srv.url, 9.0)) for _ in range(5)]
                await asyncio.to_thread(srv.wait_for_metric, PENDING, 5.0, model="slow")
                for task in leaving:  # the clients leave while their requests are queued
                    task.cancel()
                gone = await asyncio.gather(*leaving, return_exceptions=True)
            assert all(isinstance(g, asyncio.CancelledError) for g in gone)
            # the server saw them leave: only the busy request is still accepted
            await asyncio.to_thread(srv.wait_for_metric, IN_FLIGHT, 1.0, model="slow")
            gate.touch()
            assert (await busy).status_code == 200
            # One batch at a time, first come first served: a wrongly kept request of the
            # clients that left would be computed before this one.
            assert (await post(client, srv.url, 3.0)).status_code == 200
        assert srv.metric("modelhost_inference_count_total", model="slow") == 2.0
        assert srv.metric("modelhost_pending_requests", model="slow") == 0.0
        assert srv.metric("modelhost_in_flight_requests", model="slow") == 0.0


async def test_request_past_its_deadline_gets_504(tmp_path: Path) -> None:
    archive = slow_archive(tmp_path, delay_s=0.5, batching=Batching(max_batch_size=1))
    with running_server(
        archive, env={"MODELHOST_REQUEST_TIMEOUT_S": "0.3"}, args=("--trust-code",)
    ) as srv:
        async with httpx.AsyncClient(timeout=10) as client:
            first, second = await asyncio.gather(
                post(client, srv.url, 1.0), post(client, srv.url, 2.0)
            )
        # The first is computing when its deadline passes; the second expires in the queue.
        assert [first.status_code, second.status_code] == [504, 504], (first.text, second.text)
        assert first.json()["code"] == "deadline_exceeded"
        assert "deadline" in second.json()["error"]
        # the first finishes computing (nobody waits for it); the second never computes
        await asyncio.to_thread(srv.wait_for_metric, COMPUTED, 1.0, model="slow")
        await asyncio.to_thread(srv.wait_for_metric, PENDING, 0.0, model="slow")
        assert srv.metric(COMPUTED, model="slow") == 1.0
        assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200


async def test_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    archive = slow_archive(tmp_path, delay_s=0.3, batching=Batching(max_batch_size=1, max_queue=2))
    with running_server(archive, args=("--trust-code",)) as srv:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(*(post(client, srv.url, float(i)) for i in range(8)))
        codes = [a.status_code for a in answers]
        # 2 queued (max_queue) + at most 1 already taken by the batcher are answered.
        assert 2 <= codes.count(200) <= 3, codes
        assert codes.count(200) + codes.count(503) == 8, codes
        refused = [a for a in answers if a.status_code == 503]
        assert refused, codes
        assert all(a.json()["code"] == "overloaded" for a in refused)
        assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
        assert "max_queue=2" in refused[0].json()["error"]
        assert srv.metric(
            "modelhost_inference_requests_total", model="slow", code="503", protocol="native"
        ) == len(refused)


async def test_sigterm_finishes_accepted_requests_then_exits_0(tmp_path: Path) -> None:
    archive = slow_archive(tmp_path, delay_s=0.4, batching=Batching(max_batch_size=2))
    with running_server(archive, args=("--trust-code",)) as srv:
        async with httpx.AsyncClient(timeout=30) as client:
            pending = [asyncio.create_task(post(client, srv.url, float(i))) for i in range(6)]
            await asyncio.to_thread(srv.wait_for_metric, IN_FLIGHT, 6.0, model="slow")
            start = time.monotonic()
            stopping = asyncio.create_task(asyncio.to_thread(srv.stop))
            answers = await asyncio.gather(*pending)
            code = await stopping
        assert [a.status_code for a in answers] == [200] * 6
        assert [a.json()["predictions"][0][0] for a in answers] == [2.0 * i for i in range(6)]
        assert code == 0
        assert time.monotonic() - start < 10
        assert "stopped" in "".join(srv.output)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.url}/v2/health/live")


def serve_once(archive: Path) -> subprocess.CompletedProcess[str]:
    """Run ``modelhost serve`` expecting it to refuse the archive and exit."""
    home = archive.parent / "home"
    return mh(
        "serve", str(archive), "--port", "0", "--management-port", "-1", "--trust-code",
        "--home", str(home), timeout_s=60,
    )  # fmt: skip


def test_serve_refuses_a_tampered_archive(tmp_path: Path, digits_archive: Path) -> None:
    tampered = tmp_path / "tampered.mh"
    with zipfile.ZipFile(digits_archive) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "weights.safetensors":
                data = data[:-4] + b"\x00\x00\x80\x3f"
            dst.writestr(info, data)
    result = serve_once(tampered)
    assert result.returncode == 1
    assert "weights.safetensors" in result.stderr
    assert "does not match" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_path_traversal(tmp_path: Path, digits_archive: Path) -> None:
    evil = tmp_path / "evil.mh"
    with zipfile.ZipFile(digits_archive) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("../../escaped.py", b"print('owned')")
    result = serve_once(evil)
    assert result.returncode == 1
    assert "../../escaped.py" in result.stderr
    assert "path traversal" in result.stderr
    assert not (tmp_path.parent / "escaped.py").exists()
