"""``modelhost serve --workers 2 --placement shared``: one engine process holds the model
and batches the requests of every worker; compared with ``per-worker`` on the same input.

Waits are on answers, log lines and the management API's counts, never on timers.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelhost.archive.manifest import Batching
from support.archives import slow_archive
from support.server import ServerProcess, running_server

pytestmark = pytest.mark.slow

WAIT_S = 120.0  # a bound for a loaded machine, not a timing assertion
GATED = {"instances": [[1.0] * 4]}  # a batch starting with 1.0 waits for the gate file


def auth_of(srv: ServerProcess) -> dict[str, str]:
    assert srv.token_file is not None
    return {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}


def maps_torch(pid: int) -> bool:
    """Whether process ``pid`` has libtorch mapped (holds a torch model's runtime)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def batches(srv: ServerProcess, model: str) -> tuple[float, float]:
    """(batches executed, items in them) of ``model``, over every process."""
    text = httpx.get(f"{srv.url}/metrics").text
    found = {"count": 0.0, "sum": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            for part in found:
                if sample.name == f"modelhost_batch_size_{part}":
                    found[part] += sample.value
    return found["count"], found["sum"]


class Gated:
    """Requests to the gated slow model held in flight until the gate opens."""

    def __init__(self, srv: ServerProcess, gate: Path) -> None:
        self.srv = srv
        self.gate = gate
        self.sent: list[asyncio.Task[httpx.Response]] = []
        self.clients: list[httpx.AsyncClient] = []

    async def send(self, count: int) -> None:
        """``count`` requests on new connections (the kernel hands each to a worker)."""
        client = httpx.AsyncClient(timeout=WAIT_S, limits=httpx.Limits(max_connections=count))
        self.clients.append(client)
        url = f"{self.srv.url}/v1/models/slow:predict"
        self.sent += [asyncio.create_task(client.post(url, json=GATED)) for _ in range(count)]

    async def described(self, admin: httpx.AsyncClient) -> dict[str, Any]:
        r = await admin.get(f"{self.srv.management_url}/models/slow")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def until_in_flight(self, admin: httpx.AsyncClient, count: int) -> list[int]:
        """Wait until ``count`` requests are in flight in the model; return each worker's."""
        while True:
            view = await self.described(admin)
            version = view["versions"][0]
            shares = [w["versions"][0]["in_flight"] for w in view["workers"]]
            if version["in_flight"] == count and sum(shares) == count:
                return shares
            await asyncio.sleep(0.01)  # poll interval of the wait on the management API

    async def answers(self) -> list[httpx.Response]:
        self.gate.touch()
        try:
            return await asyncio.gather(*self.sent)
        finally:
            for client in self.clients:
                await client.aclose()


async def gated_run(srv: ServerProcess, gate: Path) -> tuple[list[int], int, float, float]:
    """One request alone (it holds the model's only instance), then more until each of the
    two workers holds at least 2: open the gate. Returns (each worker's requests, all
    requests, batches, items)."""
    gated = Gated(srv, gate)
    async with httpx.AsyncClient(timeout=WAIT_S, headers=auth_of(srv)) as admin:
        await gated.send(1)
        await gated.until_in_flight(admin, 1)
        sent = 1
        shares: list[int] = []
        while not shares or min(shares) < 2:
            assert sent < 128, f"the kernel gave every connection to one worker: {shares}"
            await gated.send(31 if sent == 1 else 8)
            sent = len(gated.sent)
            shares = await gated.until_in_flight(admin, sent)
    answers = await gated.answers()
    assert [a.status_code for a in answers] == [200] * sent
    assert all(a.json()["predictions"] == [[2.0] * 4] for a in answers)
    count, items = batches(srv, "slow")
    assert items == sent
    return shares, sent, count, items


def served(view: dict[str, Any]) -> list[tuple[str, int]]:
    """(version, instances) of each version of a describe answer (or one worker's)."""
    return [(v["version"], v["instances"]) for v in view["versions"]]


def engine_pid(srv: ServerProcess) -> int:
    line = srv.wait_for_line("shared placement: the engine process (pid ")
    match = re.search(r"\(pid (\d+)\)", line)
    assert match is not None, line
    return int(match.group(1))


@pytest.fixture
def gated_archive(tmp_path: Path) -> tuple[Path, Path]:
    gate = tmp_path / "gate"
    batching = Batching(max_batch_size=256, max_batch_delay_ms=1.0, max_queue=256)
    return slow_archive(tmp_path / "slow", delay_s=0.0, batching=batching, gate=gate), gate


def test_shared_holds_one_copy_and_batches_across_workers(tmp_path, gated_archive):
    archive, gate = gated_archive
    args = ("--trust-code", "--workers", "2", "--management-port", "0")
    with running_server(archive, args=(*args, "--placement", "shared")) as srv:
        engine = engine_pid(srv)
        described = httpx.get(f"{srv.management_url}/models/slow", headers=auth_of(srv)).json()
        workers = [w["pid"] for w in described["workers"]]
        assert len(workers) == 2
        assert engine not in workers
        # One copy: only the engine process has the model's runtime loaded.
        assert maps_torch(engine)
        assert not any(maps_torch(pid) for pid in workers)
        shares, sent, count, items = asyncio.run(gated_run(srv, gate))
    # The request alone, then every other one in one batch, whichever worker took it.
    assert min(shares) >= 2
    assert sum(shares) == sent
    assert count == 2, (shares, count, items)
    shared_mean = items / count

    gate.unlink()
    with running_server(archive, args=(*args, "--placement", "per-worker")) as srv:
        described = httpx.get(f"{srv.management_url}/models/slow", headers=auth_of(srv)).json()
        assert all(maps_torch(w["pid"]) for w in described["workers"])  # a copy in each
        shares, sent, count, items = asyncio.run(gated_run(srv, gate))
    # Each worker batches only what it holds: its blocked batch, then its others, apart.
    assert min(shares) >= 2
    assert sum(shares) == sent
    assert count >= 3, (shares, count, items)
    assert shared_mean > items / count


async def test_a_killed_engine_process_comes_back_and_only_requests_in_flight_fail(
    tmp_path, gated_archive, example_images, onnx_archive
):
    archive, gate = gated_archive
    args = ("--trust-code", "--workers", "2", "--management-port", "0", "--placement", "shared")
    with running_server(onnx_archive, archive, args=args) as srv:
        engine = engine_pid(srv)
        async with httpx.AsyncClient(timeout=WAIT_S, headers=auth_of(srv)) as admin:
            api = srv.management_url
            r = await admin.put(f"{api}/models/digits/versions/2/instances", json={"instances": 2})
            assert r.status_code == 200, r.text
            before = (await admin.get(f"{api}/models/digits")).json()
            gated = Gated(srv, gate)
            await gated.send(3)
            await gated.until_in_flight(admin, 3)
            os.kill(engine, signal.SIGKILL)
            lost = await asyncio.gather(*gated.sent)
            for client in gated.clients:
                await client.aclose()
            # In flight when the engine died: a clear 503, not a hang or a 500.
            assert [r.status_code for r in lost] == [503] * 3
            assert all("engine process" in r.json()["error"] for r in lost)
            back = await asyncio.to_thread(srv.wait_for_line, "the engine process is back")
            assert f"(pid {engine})" not in back
            after = (await admin.get(f"{api}/models/digits")).json()
            assert served(after) == served(before) == [("2", 2)]
            assert all(served(w) == served(before) for w in after["workers"])
            # Every worker serves again through the new engine process.
            url = f"{srv.url}/v1/models/digits:predict"
            headers = {"Content-Type": "image/png"}
            async with httpx.AsyncClient(timeout=WAIT_S) as client:
                answers = await asyncio.gather(
                    *(client.post(url, content=example_images["3"], headers=headers)
                      for _ in range(32))
                )  # fmt: skip
            assert [a.status_code for a in answers] == [200] * 32
            assert {a.json()["predictions"][0]["label"] for a in answers} == {"3"}
