"""A management change is applied, persisted and audited together, or not at all.

The registry (a real SQLite file, or a schema of the real PostgreSQL) is held locked by a
second connection for longer than the server's db_lock_timeout_s: SQLite with BEGIN
EXCLUSIVE, PostgreSQL with the registry's tables locked against writes (reads go on). Every
change must then answer 503 saying it was not applied, and leave the served state exactly as
before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from support.archives import repack
from support.cli import mh
from support.server import running_server

pytestmark = pytest.mark.slow


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


@contextmanager
def writes_locked(db_url: str) -> Iterator[None]:
    """Hold the registry's write lock from a second connection until the block ends."""
    if db_url.startswith("sqlite"):
        lock = sqlite3.connect(make_url(db_url).database or "", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        return
    url = make_url(db_url)
    schema = url.query["options"].split("search_path=")[1]
    conninfo = url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute(
            f'LOCK TABLE "{schema}".served, "{schema}".audit_log, "{schema}".versions '
            "IN EXCLUSIVE MODE"
        )
        yield


def test_with_the_registry_locked_no_change_is_half_applied(db_url, tmp_path, onnx_archive):
    home = tmp_path / "home"
    env = {"MODELHOST_DB_URL": db_url, "MODELHOST_DB_LOCK_TIMEOUT_S": "0.3"}
    for i, labels in enumerate(("0123456789", "ABCDEFGHIJ", "abcdefghij")):
        archive = repack(onnx_archive, tmp_path / f"v{i}.mh", labels=tuple(labels))
        assert mh("push", str(archive), "--home", str(home), env=env).returncode == 0
    args = ("--home", str(home), "--management-port", "0")
    with running_server(Path("digits:1"), Path("digits:2"), args=args, env=env) as srv:
        api = srv.management_url
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        before = served_state(api, auth)
        assert before == {"default": "1", "split": {}, "versions": {"1": 1, "2": 1}}
        with writes_locked(db_url):
            for method, path, body in CHANGES:
                r = httpx.request(method, api + path, json=body, headers=auth, timeout=60)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["code"] == "registry_unavailable"
                assert "not applied" in r.json()["error"]
                assert served_state(api, auth) == before, path
        # The lock gone, the same change goes through, and it is what a restart restores.
        r = httpx.put(f"{api}/models/digits/default", json={"version": "2"}, headers=auth)
        assert r.status_code == 200, r.text
        assert served_state(api, auth)["default"] == "2"
    audit = mh("audit", "--home", str(home), env=env).stdout
    assert "set_default" in audit
    args = ("--home", str(home), "--management-port", "-1")
    with running_server(args=args, env=env) as again:
        assert httpx.get(f"{again.url}/v1/models/digits").json()["default_version"] == "2"
