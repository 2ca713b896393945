"""A traffic split routes requests, and only requests: reads never draw from it."""

from __future__ import annotations

import collections
from pathlib import Path

import httpx

from support.cli import mh
from support.server import running_server

PNG = {"Content-Type": "image/png"}
READS = 25


def test_reads_stay_on_the_default_while_requests_follow_the_split(
    tmp_path, digits_archive, onnx_archive, example_images
):
    home = tmp_path / "home"
    for archive in (digits_archive, onnx_archive):  # registry digits:1 and digits:2
        assert mh("push", str(archive), "--home", str(home)).returncode == 0
    args = ("--home", str(home), "--management-port", "0", "--trust-code")
    with running_server(Path("digits:1"), Path("digits:2"), args=args) as srv:
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        with httpx.Client(timeout=30) as client:
            r = client.put(
                f"{srv.management_url}/models/digits/split",
                json={"weights": {"1": 50, "2": 50}},
                headers=auth,
            )
            assert r.status_code == 200, r.text
            default = r.json()["default_version"]
            v1 = {client.get(f"{srv.url}/v1/models/digits").text for _ in range(READS)}
            v2 = {client.get(f"{srv.url}/v2/models/digits").text for _ in range(READS)}
            answered: collections.Counter[str] = collections.Counter()
            for _ in range(4 * READS):  # both versions answer: P(miss one) = 2**-99
                p = client.post(
                    f"{srv.url}/v1/models/digits:predict", content=example_images["7"],
                    headers=PNG,
                )  # fmt: skip
                assert p.status_code == 200, p.text
                answered[p.headers["x-model-version"]] += 1
    assert len(v1) == 1
    assert f'"default_version":"{default}"' in v1.pop()
    assert len(v2) == 1
    assert set(answered) == {"1", "2"}
