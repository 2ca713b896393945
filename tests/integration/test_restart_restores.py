"""A server restarted, even after kill -9, serves again what it served (from the registry)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from support.cli import mh
from support.server import running_server

pytestmark = pytest.mark.slow

PNG = {"Content-Type": "image/png"}


def test_kill_9_then_restart_serves_the_same(
    tmp_path, digits_archive, onnx_archive, example_images
):
    home = str(tmp_path / "home")
    for archive in (digits_archive, onnx_archive):
        assert mh("push", str(archive), "--home", home).returncode == 0
    nothing = mh("serve", "--home", home, "--port", "0", "--management-port", "-1")
    assert nothing.returncode == 1
    assert "nothing to serve" in nothing.stderr

    args = ("--home", home, "--management-port", "0", "--trust-code")
    with running_server(Path("digits:1"), args=args) as srv:
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        api = srv.management_url
        for call in (
            lambda: httpx.post(f"{api}/models", json={"ref": "digits:2"}, headers=auth, timeout=60),
            lambda: httpx.put(f"{api}/models/digits/split", json={"weights": {"1": 30, "2": 70}},
                              headers=auth),
            lambda: httpx.put(f"{api}/models/digits/versions/2/instances", json={"instances": 2},
                              headers=auth, timeout=60),
        ):  # fmt: skip
            assert call().status_code == 200
        before = httpx.get(f"{api}/models/digits", headers=auth).json()
        srv.process.kill()  # kill -9: no shutdown code runs
        srv.process.wait(timeout=10)

    with running_server(args=args) as again:
        auth = {"Authorization": f"Bearer {again.token_file.read_text().strip()}"}
        after = httpx.get(f"{again.management_url}/models/digits", headers=auth).json()
        assert after["default_version"] == before["default_version"] == "1"
        assert after["split"] == before["split"] == {"1": 30.0, "2": 70.0}
        assert {v["version"]: (v["runtime"], v["instances"]) for v in after["versions"]} == {
            "1": ("torch", 1), "2": ("onnx", 2),
        }  # fmt: skip
        r = httpx.post(
            f"{again.url}/v1/models/digits:predict", content=example_images["9"], headers=PNG
        )
        assert r.json()["predictions"][0]["label"] == "9"
