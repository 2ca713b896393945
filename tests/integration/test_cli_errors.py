"""The CLI's error path: one ``error:`` line and exit status 1, never a traceback.

Faults of the registry database (a bad MODELHOST_DB_URL, a locked database), of the disk
(full) and of the file system (missing, unreadable, unwritable paths), through every command
that meets them, as a user runs them (a real process; ``mh`` also fails any test whose
output holds a traceback). ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from modelhost.archive.manifest import ModelSpec, TensorSignature
from modelhost.cli.base import friendly, main_options
from support.archives import repack
from support.cli import TRACEBACK, mh
from support.disks import small_disk
from support.registry_archives import make_archive

PASSWORD = "tiger"
BAD_DB_URLS = {
    "not a url": "not a url",
    "unsupported database": f"oracle://scott:{PASSWORD}@db/orcl",
    "nothing listening": f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x",
    "driver missing": f"mysql://root:{PASSWORD}@127.0.0.1/x",
    "postgresql driver missing": f"postgresql+psycopg2://u:{PASSWORD}@127.0.0.1/x",
}
SPEC = ModelSpec(
    runtime="onnx",
    inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 4)),),
    outputs=(TensorSignature(name="y", dtype="float32", shape=(-1, 2)),),
)
REGISTRY_COMMANDS = {
    "push": ("push", "{archive}"),
    "ls": ("ls",),
    "show": ("show", "tiny"),
    "promote": ("promote", "tiny:1", "production"),
    "rm": ("rm", "tiny:1"),
    "audit": ("audit",),
    "serve NAME": ("serve", "tiny", "--port", "0", "--management-port", "-1"),
}


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line of a failed command (exit 1, no traceback)."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert TRACEBACK not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("url", BAD_DB_URLS.values(), ids=BAD_DB_URLS.keys())
@pytest.mark.parametrize("command", REGISTRY_COMMANDS.values(), ids=REGISTRY_COMMANDS.keys())
def test_a_bad_db_url_is_one_error_line_naming_the_setting(
    command: tuple[str, ...], url: str, tmp_path: Path
) -> None:
    archive = make_archive(tmp_path / "a")
    args = [arg.format(archive=archive) for arg in command]
    result = mh(*args, "--home", str(tmp_path / "home"), env={"MODELHOST_DB_URL": url})
    line = one_error_line(result)
    assert "MODELHOST_DB_URL" in line
    assert PASSWORD not in result.stdout + result.stderr


def test_a_locked_registry_refuses_a_push_and_keeps_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"MODELHOST_DB_LOCK_TIMEOUT_S": "0.2"}
    assert mh("push", str(make_archive(tmp_path / "a")), "--home", str(home)).returncode == 0
    second = make_archive(tmp_path / "b", payload=b"other")
    other = sqlite3.connect(home / "registry.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process writes, and takes its time
        line = one_error_line(mh("push", str(second), "--home", str(home), env=env))
        assert "locked" in line
        assert "nothing was changed" in line
        for command in (("promote", "tiny:1", "production"), ("rm", "tiny:1")):
            assert "locked" in one_error_line(mh(*command, "--home", str(home), env=env))
        other.execute("ROLLBACK")
    finally:
        other.close()
    listed = mh("ls", "--home", str(home)).stdout
    assert "│ 1        │ 1      │ -" in listed  # one version, not promoted, not removed
    assert list((home / "artifacts" / "tmp").iterdir()) == []
    # The refused push may leave its blob (harmless: a blob without a version is reused).
    assert "pushed tiny:2" in mh("push", str(second), "--home", str(home), env=env).stdout


def test_a_full_disk_is_one_error_line_and_keeps_nothing(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        home = disk / "home"
        big = make_archive(tmp_path / "big", payload=os.urandom(4 * 1024 * 1024))
        line = one_error_line(mh("push", str(big), "--home", str(home)))
        assert "disk full" in line
        assert str(home / "artifacts") in line
        assert list((home / "artifacts" / "tmp").iterdir()) == []
        assert not list((home / "artifacts").rglob("objects/*/*"))
        assert "tiny" not in mh("ls", "--home", str(home)).stdout
        model_dir = tmp_path / "model"
        model_dir.mkdir()
        (model_dir / "model.onnx").write_bytes(os.urandom(4 * 1024 * 1024))
        (model_dir / "modelspec.json").write_text(SPEC.model_dump_json())
        out = disk / "x.mh"
        packed = mh("pack", str(model_dir), "--name", "x", "--version", "1", "--out", str(out))
        assert "disk full" in one_error_line(packed)
        assert str(out) in one_error_line(packed)
        assert sorted(p.name for p in disk.iterdir()) == ["home"]  # no partial archive


def test_file_system_errors_are_one_line_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mh"
    assert str(missing) in one_error_line(mh("push", str(missing), "--home", str(tmp_path)))
    assert str(missing) in one_error_line(mh("inspect", str(missing)))
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    line = one_error_line(mh("ls", "--home", str(a_file / "home")))
    assert str(a_file) in line


def test_debug_shows_the_traceback_and_a_normal_run_does_not(tmp_path: Path) -> None:
    env = {"MODELHOST_DB_URL": f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x"}
    home = ("--home", str(tmp_path / "home"))
    normal = mh("ls", *home, env=env)
    assert TRACEBACK not in normal.stderr
    debug = mh("--debug", "ls", *home, env=env)
    assert debug.returncode == 1
    assert TRACEBACK in debug.stderr
    assert "RegistryUnavailable" in debug.stderr
    assert "psycopg.OperationalError" in debug.stderr  # the cause, where it entered


def test_an_unexpected_error_is_one_line_that_says_it_is_a_bug(tmp_path: Path) -> None:
    app = typer.Typer()
    app.callback()(main_options)

    @app.command()
    @friendly
    def divide(by: int) -> None:
        print(1 / by)

    @app.command()
    @friendly
    def write(path: Path) -> None:
        path.write_text("x")

    runner = CliRunner()
    result = runner.invoke(app, ["divide", "0"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: unexpected ZeroDivisionError: division by zero (this is a bug; run with "
        "--debug for the traceback)"
    ]
    assert isinstance(runner.invoke(app, ["--debug", "divide", "0"]).exception, ZeroDivisionError)
    target = tmp_path / "no-such-dir" / "out"
    missing = runner.invoke(app, ["write", str(target)])
    assert missing.exit_code == 1
    assert missing.output.strip() == f"error: cannot find {target}: No such file or directory"


def test_a_runtime_this_modelhost_lacks_is_one_error_line_at_pack_and_at_serve(
    tmp_path: Path, onnx_archive: Path
) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.bin").write_bytes(b"weights")
    spec = SPEC.model_copy(update={"runtime": "tensorflow"})
    (model_dir / "modelspec.json").write_text(spec.model_dump_json())
    out = tmp_path / "x.mh"
    line = one_error_line(mh("pack", str(model_dir), "--name", "x", "--version", "1",
                             "--out", str(out)))  # fmt: skip
    known = "keras, onnx, python, torch, torchscript, transformers"
    assert f"runtime 'tensorflow' is not one of this modelhost's: {known}" in line
    assert not out.exists()  # refused before anything was written
    foreign = repack(onnx_archive, tmp_path / "foreign.mh", runtime="tensorflow")
    line = one_error_line(mh("serve", str(foreign), "--port", "0", "--management-port", "-1",
                             "--workers", "1", "--home", str(tmp_path / "home")))  # fmt: skip
    assert "runtime 'tensorflow' is not one of this modelhost's" in line
