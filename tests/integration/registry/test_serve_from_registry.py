"""`modelhost serve NAME` serves what the registry holds (production by default)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from support.cli import mh
from support.server import running_server

pytestmark = pytest.mark.slow


def test_serve_production_and_pinned_versions(
    tmp_path: Path, digits_archive: Path, example_images: dict[str, bytes]
) -> None:
    home = str(tmp_path / "home")
    for _ in range(2):
        assert mh("push", str(digits_archive), "--home", home).returncode == 0
    assert mh("promote", "digits:2", "production", "--home", home).returncode == 0
    with running_server(
        Path("digits"), Path("digits:1"), args=("--home", home, "--trust-code")
    ) as srv:
        text = "".join(srv.output)
        assert "loaded digits:2" in text
        assert "loaded digits:1" in text
        assert httpx.get(f"{srv.url}/v2/models/digits").json()["versions"] == ["1", "2"]
        # The production version is the default, though the pinned one loaded after it.
        assert httpx.get(f"{srv.url}/v1/models/digits").json()["default_version"] == "2"
        unversioned = httpx.post(
            f"{srv.url}/v1/models/digits:predict",
            content=example_images["6"], headers={"Content-Type": "image/png"},
        )  # fmt: skip
        assert unversioned.headers["x-model-version"] == "2"
        for version in ("1", "2"):
            r = httpx.post(
                f"{srv.url}/v1/models/digits/versions/{version}:predict",
                content=example_images["4"], headers={"Content-Type": "image/png"},
            )  # fmt: skip
            assert r.json()["predictions"][0]["label"] == "4"
            assert r.headers["x-model-version"] == version
    missing = mh("serve", "nosuch", "--home", home, "--port", "0")
    assert missing.returncode == 1
    assert "not in the registry" in missing.stderr
