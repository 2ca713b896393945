"""A management change is applied, persisted and audited together, or not at all.

The registry is a real SQLite file held locked by a second connection (BEGIN EXCLUSIVE) for
longer than the server's db_lock_timeout_s: every change must then answer 503 saying it was
not applied, and leave the served state exactly as before.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import httpx
import pytest

from modelhost.archive.manifest import ModelSpec
from modelhost.archive.open import open_archive
from modelhost.archive.pack import write_archive
from support.cli import mh
from support.server import running_server

pytestmark = pytest.mark.slow


def relabelled(archive: Path, out: Path, labels: str) -> Path:
    """The same ONNX model with other labels: other bytes, another registry version."""
    with tempfile.TemporaryDirectory() as tmp:
        m = open_archive(archive, Path(tmp)).manifest
        fields = {k: getattr(m, k) for k in ModelSpec.model_fields} | {"labels": tuple(labels)}
        files = {name: Path(tmp) / name for name in m.files}
        write_archive(ModelSpec(**fields), files, name=m.name, version=m.version, out=out)
    return out


def served_state(api: str, auth: dict[str, str]) -> dict:
    d = httpx.get(f"{api}/models/digits", headers=auth).json()
    return {
        "default": d["default_version"],
        "split": d["split"],
        "versions": {v["version"]: v["instances"] for v in d["versions"]},
    }


CHANGES = [
    ("PUT", "/models/digits/default", {"version": "2"}),
    ("PUT", "/models/digits/split", {"weights": {"1": 50, "2": 50}}),
    ("PUT", "/models/digits/versions/1/instances", {"instances": 2}),
    ("DELETE", "/models/digits/versions/2", None),
    ("POST", "/models", {"ref": "digits:3"}),
]


def test_with_the_registry_locked_no_change_is_half_applied(tmp_path, onnx_archive):
    home = tmp_path / "home"
    for i, labels in enumerate(("0123456789", "ABCDEFGHIJ", "abcdefghij")):
        archive = relabelled(onnx_archive, tmp_path / f"v{i}.mh", labels)
        assert mh("push", str(archive), "--home", str(home)).returncode == 0
    args = ("--home", str(home), "--management-port", "0")
    env = {"MODELHOST_DB_LOCK_TIMEOUT_S": "0.3"}
    with running_server(Path("digits:1"), Path("digits:2"), args=args, env=env) as srv:
        api = srv.management_url
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        before = served_state(api, auth)
        assert before == {"default": "1", "split": {}, "versions": {"1": 1, "2": 1}}
        lock = sqlite3.connect(home / "registry.db", isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            for method, path, body in CHANGES:
                r = httpx.request(method, api + path, json=body, headers=auth, timeout=60)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["code"] == "registry_unavailable"
                assert "not applied" in r.json()["error"]
                assert served_state(api, auth) == before, path
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        # The lock gone, the same change goes through, and it is what a restart restores.
        r = httpx.put(f"{api}/models/digits/default", json={"version": "2"}, headers=auth)
        assert r.status_code == 200, r.text
        assert served_state(api, auth)["default"] == "2"
    audit = mh("audit", "--home", str(home)).stdout
    assert "set_default" in audit
    with running_server(args=("--home", str(home), "--management-port", "-1")) as again:
        assert httpx.get(f"{again.url}/v1/models/digits").json()["default_version"] == "2"
