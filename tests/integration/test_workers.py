"""``modelhost serve --workers N``: one port, one management plane, every worker the same.

Waits are on answers, log lines and metrics, never on timers; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from modelhost.archive.manifest import Batching
from support.archives import repack, slow_archive
from support.cli import mh, one_error_line
from support.server import ServerProcess, running_server

pytestmark = pytest.mark.slow

PNG = {"Content-Type": "image/png"}
CLIENTS = 16
TWO = ("--workers", "2")
# Every behaviour of several workers holds with a copy of the model in each, and with one
# copy in the engine process of shared placement.
PLACEMENTS = pytest.mark.parametrize("placement", ["per-worker", "shared"])


def push(archive: Path, home: Path) -> None:
    result = mh("push", str(archive), "--home", str(home))
    assert result.returncode == 0, result.stderr


def auth_of(srv: ServerProcess) -> dict[str, str]:
    assert srv.token_file is not None
    return {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}


def worker_states(described: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What each worker reports of a model, without its pid and load (comparable)."""
    return [
        (
            w["default_version"],
            tuple(sorted(w["split"].items())),
            tuple((v["version"], v["instances"], v["sha256"]) for v in w["versions"]),
        )
        for w in described["workers"]
    ]


def assert_workers_agree(described: dict[str, Any], workers: int = 2) -> None:
    states = worker_states(described)
    assert len(states) == workers, described
    assert len(set(states)) == 1, described
    default, split, versions = states[0]
    assert default == described["default_version"]
    assert dict(split) == described["split"]
    assert versions == tuple(
        (v["version"], v["instances"], v["sha256"]) for v in described["versions"]
    )


class Load:
    """Closed-loop clients posting digit images; every outcome counted."""

    def __init__(self, url: str, images: dict[str, bytes]) -> None:
        self.url = url
        self.images = images
        self.statuses: collections.Counter[int] = collections.Counter()
        self.transport_errors: list[str] = []
        self.wrong: list[str] = []
        self.answered = asyncio.Condition()
        self.stop = asyncio.Event()

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + len(self.transport_errors)

    async def traffic(self, answers: int) -> None:
        """Wait until ``answers`` more requests have been answered (traffic flows)."""
        async with self.answered:
            target = self.total + answers
            await self.answered.wait_for(lambda: self.total >= target)

    async def client(self, client: httpx.AsyncClient, label: str) -> None:
        while not self.stop.is_set():
            try:
                r = await client.post(
                    f"{self.url}/v1/models/digits:predict", content=self.images[label],
                    headers=PNG,
                )  # fmt: skip
            except httpx.TransportError as exc:
                self.transport_errors.append(repr(exc))
            else:
                self.statuses[r.status_code] += 1
                if r.status_code == 200 and r.json()["predictions"][0]["label"] != label:
                    self.wrong.append(label)
            async with self.answered:
                self.answered.notify_all()

    async def run(self, during: Callable[[], Awaitable[None]]) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [asyncio.create_task(self.client(client, str(i % 10))) for i in range(CLIENTS)]
            try:
                await self.traffic(2 * CLIENTS)
                await during()
                await self.traffic(2 * CLIENTS)
            finally:
                self.stop.set()
                await asyncio.gather(*tasks)


@PLACEMENTS
async def test_changes_reach_every_worker_and_no_request_fails(
    tmp_path, onnx_archive, example_images, placement
):
    home = tmp_path / "home"
    push(onnx_archive, home)  # registry digits:1
    push(repack(onnx_archive, tmp_path / "again.mh", version="9"), home)  # digits:2
    args = ("--home", str(home), "--management-port", "0", *TWO, "--placement", placement)
    with running_server(Path("digits:1"), args=args) as srv:
        api = srv.management_url
        load = Load(srv.url, example_images)

        async def changes() -> None:
            async with httpx.AsyncClient(timeout=120, headers=auth_of(srv)) as admin:
                assert_workers_agree((await admin.get(f"{api}/models/digits")).json())
                for step, expected in [
                    (admin.post(f"{api}/models", json={"ref": "digits:2"}), ("1", {}, 2)),
                    (admin.put(f"{api}/models/digits/split",
                               json={"weights": {"1": 50, "2": 50}}), ("1", {"1": 50.0}, 2)),
                    (admin.put(f"{api}/models/digits/versions/2/instances",
                               json={"instances": 2}), ("1", {"1": 50.0}, 2)),
                    (admin.put(f"{api}/models/digits/default", json={"version": "2"}),
                     ("2", {"1": 50.0}, 2)),
                    (admin.put(f"{api}/models/digits/split", json={"weights": {}}), ("2", {}, 2)),
                    (admin.delete(f"{api}/models/digits/versions/1"), ("2", {}, 1)),
                    (admin.put(f"{api}/models/digits/versions/2/instances",
                               json={"instances": 1}), ("2", {}, 1)),
                ]:  # fmt: skip
                    r = await step
                    assert r.status_code == 200, r.text
                    described = (await admin.get(f"{api}/models/digits")).json()
                    assert_workers_agree(described)
                    default, split, versions = expected
                    assert described["default_version"] == default
                    assert set(split) <= set(described["split"])
                    assert len(described["versions"]) == versions
                    await load.traffic(2 * CLIENTS)  # every step serves traffic
                refused = await admin.put(
                    f"{api}/models/digits/split", json={"weights": {"2": 1, "7": 1}}
                )
                assert refused.status_code == 404, refused.text
                assert_workers_agree((await admin.get(f"{api}/models/digits")).json())

        await load.run(changes)
    assert load.transport_errors == []
    assert dict(load.statuses) == {200: load.total}
    assert load.wrong == []
    assert load.total > 100
    audit = mh("audit", "--home", str(home)).stdout
    for action in ("load", "set_split", "scale", "set_default", "unload"):
        assert action in audit


@PLACEMENTS
async def test_a_killed_worker_comes_back_the_same_and_only_its_requests_fail(
    tmp_path, onnx_archive, example_images, placement
):
    home = tmp_path / "home"
    push(onnx_archive, home)
    push(repack(onnx_archive, tmp_path / "again.mh", version="9"), home)
    args = ("--home", str(home), "--management-port", "0", *TWO, "--placement", placement)
    with running_server(Path("digits:1"), Path("digits:2"), args=args) as srv:
        api = srv.management_url
        load = Load(srv.url, example_images)
        killed: list[int] = []
        after_restart: list[int] = []  # requests answered once the worker was back

        async def kill_one() -> None:
            async with httpx.AsyncClient(timeout=120, headers=auth_of(srv)) as admin:
                r = await admin.put(f"{api}/models/digits/split", json={"weights": {"2": 1}})
                assert r.status_code == 200, r.text
                before = (await admin.get(f"{api}/models/digits")).json()
                victim = before["workers"][0]["pid"]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                await asyncio.to_thread(srv.wait_for_line, f"(pid {victim}) was killed")
                back = await asyncio.to_thread(srv.wait_for_line, "is back (pid")
                after = (await admin.get(f"{api}/models/digits")).json()
                assert_workers_agree(after)
                pids = {w["pid"] for w in after["workers"]}
                assert victim not in pids
                assert f"(pid {victim})" not in back
                assert worker_states(after) == worker_states(before)
                answered_after_restart = load.total
            await load.traffic(4 * CLIENTS)
            after_restart.append(load.total - answered_after_restart)

        await load.run(kill_one)
    # Only requests on the killed worker's connections can fail: at most one per client.
    assert len(load.transport_errors) <= CLIENTS, load.transport_errors
    # A worker that is loading never accepts: every answer is a 200, before and after.
    assert dict(load.statuses) == {200: sum(load.statuses.values())}
    assert load.wrong == []
    assert killed
    assert after_restart[0] >= 4 * CLIENTS


@PLACEMENTS
def test_sigterm_answers_every_accepted_request_then_exits_0(tmp_path, placement):
    archive = slow_archive(tmp_path, delay_s=0.4, batching=Batching(max_batch_size=2))
    with running_server(archive, args=("--trust-code", *TWO, "--placement", placement)) as srv:

        async def scenario() -> tuple[list[httpx.Response], int]:
            async with httpx.AsyncClient(timeout=60) as client:
                pending = [
                    asyncio.create_task(
                        client.post(
                            f"{srv.url}/v1/models/slow:predict",
                            content=orjson.dumps({"instances": [[float(i)] * 4]}),
                            headers={"Content-Type": "application/json"},
                        )
                    )
                    for i in range(6)
                ]
                # in flight in the workers together (the metric sums every worker's)
                await asyncio.to_thread(
                    srv.wait_for_metric, "modelhost_in_flight_requests", 6.0, model="slow"
                )
                stopping = asyncio.create_task(asyncio.to_thread(srv.stop))
                answers = await asyncio.gather(*pending)
                return answers, await stopping

        answers, code = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200] * 6
    assert [a.json()["predictions"][0][0] for a in answers] == [2.0 * i for i in range(6)]
    assert code == 0
    assert "stopped" in "".join(srv.output)


def test_metrics_of_any_worker_count_every_workers_requests(onnx_archive, example_images):
    with running_server(onnx_archive, args=TWO) as srv:
        sent = 40
        for i in range(sent):  # a new connection each: the workers share them
            r = httpx.post(
                f"{srv.url}/v1/models/digits:predict", content=example_images[str(i % 10)],
                headers=PNG,
            )  # fmt: skip
            assert r.status_code == 200
        name = "modelhost_inference_requests_total"
        for _ in range(10):  # a new connection per scrape: either worker answers it
            assert srv.metric(name, model="digits", code="200") == sent
        assert srv.metric("modelhost_model_ready", model="digits") == 1.0


@pytest.mark.parametrize(
    ("workers", "placement"), [("1", "per-worker"), ("2", "per-worker"), ("2", "shared")]
)
def test_alive_while_loading_ready_only_once_loaded(tmp_path, workers, placement):
    gate = tmp_path / "gate"
    archive = slow_archive(tmp_path / "slow", delay_s=0.0, load_gate=gate)
    args = ("--trust-code", "--workers", workers, "--placement", placement)
    with running_server(archive, args=args, ready=False) as srv:
        assert "serving on" not in "".join(srv.output)
        assert httpx.get(f"{srv.url}/v2/health/live", timeout=60).status_code == 200
        assert httpx.get(f"{srv.url}/v2/health/ready", timeout=60).status_code == 503
        early = httpx.post(f"{srv.url}/v1/models/slow:predict", json={"instances": [[1.0] * 4]})
        assert early.status_code == 503, early.text
        assert early.json()["code"] == "model_not_ready"
        gate.touch()
        srv.wait_for_line("serving on ")
        assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200
        r = httpx.post(f"{srv.url}/v1/models/slow:predict", json={"instances": [[1.0] * 4]})
        assert r.json() == {"predictions": [[2.0] * 4]}
    output = "".join(srv.output)
    assert output.index("listening on") < output.index("loaded slow:1") < output.index("serving on")


def test_serve_with_workers_refuses_with_one_error_line(tmp_path, onnx_archive):
    home = ("--home", str(tmp_path / "home"), "--management-port", "-1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        line = one_error_line(mh("serve", str(onnx_archive), "--port", port, *TWO, *home))
        assert f"cannot listen on 127.0.0.1:{port}" in line
    broken = tmp_path / "broken.mh"
    broken.write_bytes(b"not a zip")
    line = one_error_line(mh("serve", str(broken), "--port", "0", *TWO, *home))
    assert "not a zip file" in line
    shared = ("--placement", "shared")  # the engine process refuses it: the same line
    line = one_error_line(mh("serve", str(broken), "--port", "0", *TWO, *shared, *home))
    assert "not a zip file" in line
