"""The registry commands as a user types them (SQLite in a temporary home)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.cli import mh as run_cli
from support.registry_archives import make_archive


def mh(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--home", str(home), timeout_s=120)


def test_push_ls_show_promote_rm_audit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    archive = make_archive(tmp_path / "a")
    assert "pushed tiny:1" in mh("push", str(archive), home=home).stdout
    assert "pushed tiny:2" in mh("push", str(archive), home=home).stdout
    assert "tiny:2 is now production" in mh("promote", "tiny:2", "production", home=home).stdout
    listed = mh("ls", home=home).stdout
    assert "tiny" in listed
    assert "│ 2        │ 2      │ 2" in listed
    shown = mh("show", "tiny", home=home).stdout
    assert "tiny:2  stage=production  runtime=onnx" in shown
    assert "none -> production  by cli:" in shown
    assert "removed tiny:1" in mh("rm", "tiny:1", home=home).stdout
    failed = mh("rm", "tiny:1", home=home)
    assert failed.returncode == 1
    assert "no version '1'" in failed.stderr
    bad_stage = mh("promote", "tiny:2", "live", home=home)
    assert bad_stage.returncode == 1
    assert "unknown stage 'live'" in bad_stage.stderr
    log = mh("audit", home=home).stdout
    for action in ("push", "promote", "remove"):
        assert action in log
    assert "failed" in log
    assert (home / "registry.db").is_file()
