"""Updates through the management API while load flows: no request lost, none failed."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import httpx
import pytest

from support.cli import mh
from support.server import running_server

pytestmark = pytest.mark.slow

PNG = {"Content-Type": "image/png"}


def push(archive: Path, home: Path) -> None:
    assert mh("push", str(archive), "--home", str(home)).returncode == 0


async def test_swaps_and_splits_mid_load_fail_no_request(
    tmp_path, digits_archive, onnx_archive, example_images
):
    home = tmp_path / "home"
    push(digits_archive, home)  # registry digits:1 (torch)
    push(onnx_archive, home)  # registry digits:2 (onnx)
    args = ("--home", str(home), "--management-port", "0", "--trust-code")
    with running_server(Path("digits:1"), args=args) as srv:
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        api = srv.management_url
        stop = asyncio.Event()
        outcomes: collections.Counter[tuple[int, str]] = collections.Counter()
        wrong: list[str] = []
        answered = asyncio.Condition()

        async def traffic(answers: int) -> None:
            """Wait until ``answers`` more requests have been answered (traffic flows)."""
            async with answered:
                target = sum(outcomes.values()) + answers
                await answered.wait_for(lambda: sum(outcomes.values()) >= target)

        async def client_loop(client: httpx.AsyncClient, label: str) -> None:
            while not stop.is_set():
                r = await client.post(
                    f"{srv.url}/v1/models/digits:predict",
                    content=example_images[label],
                    headers=PNG,
                )
                outcomes[(r.status_code, r.headers.get("x-model-version", "-"))] += 1
                async with answered:
                    answered.notify_all()
                if r.status_code == 200 and r.json()["predictions"][0]["label"] != label:
                    wrong.append(label)

        async with (
            httpx.AsyncClient(timeout=30) as client,
            httpx.AsyncClient(timeout=60, headers=auth) as admin,
        ):
            load = [asyncio.create_task(client_loop(client, str(i % 10))) for i in range(16)]
            await traffic(32)
            steps = [
                admin.post(f"{api}/models", json={"ref": "digits:2"}),
                admin.put(f"{api}/models/digits/split", json={"weights": {"1": 50, "2": 50}}),
                admin.put(f"{api}/models/digits/versions/2/instances", json={"instances": 2}),
                admin.put(f"{api}/models/digits/default", json={"version": "2"}),
                admin.put(f"{api}/models/digits/split", json={"weights": {}}),
                admin.delete(f"{api}/models/digits/versions/1"),
                admin.put(f"{api}/models/digits/versions/2/instances", json={"instances": 1}),
            ]
            for step in steps:
                r = await step
                assert r.status_code == 200, r.text
                await traffic(32)  # every step serves traffic before the next one
            stop.set()
            await asyncio.gather(*load)
        failed = {k: n for k, n in outcomes.items() if k[0] != 200}
        assert failed == {}, outcomes
        assert wrong == []
        served_by = {version for _, version in outcomes}
        assert served_by == {"1", "2"}
        assert sum(outcomes.values()) > 100
        log = mh("audit", "--home", str(home)).stdout
        for action in ("load", "set_split", "scale", "set_default", "unload"):
            assert action in log
        assert "tok:" in log


def test_split_sends_traffic_by_weight_and_bad_updates_are_refused(
    tmp_path, digits_archive, torchscript_archive, example_images
):
    args = ("--home", str(tmp_path / "home"), "--management-port", "0", "--trust-code")
    with running_server(digits_archive, torchscript_archive, args=args) as srv:
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        api = srv.management_url
        r = httpx.put(
            f"{api}/models/digits/split", json={"weights": {"1": 1, "3": 1}}, headers=auth
        )
        assert r.json()["split"] == {"1": 1.0, "3": 1.0}
        seen = collections.Counter(
            httpx.post(
                f"{srv.url}/v1/models/digits:predict", content=example_images["5"], headers=PNG
            ).headers["x-model-version"]
            for _ in range(200)
        )
        assert set(seen) == {"1", "3"}
        assert min(seen.values()) > 50, seen
        for body, status, fragment in [
            ({"weights": {"1": 1, "9": 1}}, 404, "no version '9'"),
            ({"weights": {"1": -1}}, 400, "weights.1 must be a number >= 0"),
            ({"weights": {"1": 0}}, 400, "more than 0"),
            ({"weights": {"1": "x"}}, 400, "weights must map versions to numbers"),
        ]:
            r = httpx.put(f"{api}/models/digits/split", json=body, headers=auth)
            assert r.status_code == status, r.text
            assert fragment in r.json()["error"]
        for count, status in [(0, 400), (65, 400), ("2", 400)]:
            r = httpx.put(f"{api}/models/digits/versions/1/instances", json={"instances": count},
                          headers=auth)  # fmt: skip
            assert r.status_code == status, r.text
        r = httpx.put(
            f"{api}/models/digits/versions/1/instances", json={"instances": 2}, headers=auth
        )
        assert {v["version"]: v["instances"] for v in r.json()["versions"]} == {"1": 2, "3": 1}
