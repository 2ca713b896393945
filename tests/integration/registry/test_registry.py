"""Registry behaviour, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import inspect

from modelhost.errors import ArchiveError, ConfigError, ModelNotFound
from modelhost.registry import LocalArtifactStore, Registry
from modelhost.registry.db import migrate, open_database
from support.registry_archives import make_archive


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Callable[[str, Path], Registry]]:
    """Open registries on a URL; every one is closed after the test."""
    opened: list[Registry] = []

    def open_registry(url: str, home: Path) -> Registry:
        reg = Registry(open_database(url), LocalArtifactStore(home / "artifacts"))
        opened.append(reg)
        return reg

    yield open_registry
    for reg in opened:
        reg.close()


def test_push_assigns_versions_and_show_lists_them(db_url: str, tmp_path: Path, registry) -> None:
    reg = registry(db_url, tmp_path)
    first = reg.push(make_archive(tmp_path / "a"), "alice")
    second = reg.push(make_archive(tmp_path / "b", payload=b"other"), "alice")
    assert (first.name, first.version, second.version) == ("tiny", "1", "2")
    assert first.stage == "none"
    assert first.runtime == "onnx"
    assert first.metrics == {"accuracy": 0.5}
    stored = reg.archive_path("tiny", "1")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == first.archive_sha256
    [summary] = reg.models()
    assert (summary.name, summary.versions, summary.latest, summary.production) == (
        "tiny",
        2,
        "2",
        None,
    )
    assert reg.show("tiny").version == "2"  # no production version: the latest
    assert reg.show("tiny", "1").manifest["inputs"][0]["name"] == "x"


def test_promote_keeps_one_production_version_with_history(
    db_url: str, tmp_path: Path, registry
) -> None:
    reg = registry(db_url, tmp_path)
    for i in range(3):
        reg.push(make_archive(tmp_path / str(i), payload=bytes([i])), "alice")
    reg.promote("tiny", "1", "production", "alice")
    reg.promote("tiny", "2", "staging", "bob")
    reg.promote("tiny", "2", "production", "bob")
    assert reg.show("tiny").version == "2"
    assert reg.show("tiny", "1").stage == "archived"
    history = [(h.from_stage, h.to_stage, h.actor) for h in reg.show("tiny", "2").history]
    assert history == [("none", "staging", "bob"), ("staging", "production", "bob")]
    assert [(h.from_stage, h.to_stage) for h in reg.show("tiny", "1").history] == [
        ("none", "production"), ("production", "archived"),
    ]  # fmt: skip
    assert reg.models()[0].production == "2"
    with pytest.raises(ConfigError, match="unknown stage 'live'"):
        reg.promote("tiny", "3", "live", "bob")
    with pytest.raises(ModelNotFound, match="no version '9'"):
        reg.promote("tiny", "9", "production", "bob")


def test_remove_deletes_the_version_and_unshared_blobs(
    db_url: str, tmp_path: Path, registry
) -> None:
    reg = registry(db_url, tmp_path)
    archive = make_archive(tmp_path / "a")
    one, two = reg.push(archive, "a"), reg.push(archive, "a")  # same bytes: one blob
    third = reg.push(make_archive(tmp_path / "b", payload=b"x"), "a")
    reg.remove("tiny", "1", "a")
    assert reg.archive_path("tiny", "2").is_file()  # still used by version 2
    reg.remove("tiny", "2", "a")
    assert (
        not (tmp_path / "artifacts")
        .joinpath("objects", two.archive_sha256[:2], two.archive_sha256)
        .exists()
    )
    assert one.archive_sha256 == two.archive_sha256
    assert [m.versions for m in reg.models()] == [1]
    assert reg.show("tiny").version == third.version
    with pytest.raises(ModelNotFound):
        reg.remove("tiny", "1", "a")
    with pytest.raises(ModelNotFound, match="not in the registry"):
        reg.show("nope")


def test_audit_records_every_action_and_its_outcome(db_url: str, tmp_path: Path, registry) -> None:
    reg = registry(db_url, tmp_path)
    reg.push(make_archive(tmp_path / "a"), "alice")
    reg.promote("tiny", "1", "production", "bob")
    with pytest.raises(ModelNotFound):
        reg.remove("tiny", "5", "mallory")
    entries = [(e.actor, e.action, e.outcome) for e in reg.audit()]
    assert entries == [
        ("mallory", "remove", "failed"),
        ("bob", "promote", "ok"),
        ("alice", "push", "ok"),
    ]
    assert "no version '5'" in reg.audit()[0].detail


def test_a_tampered_archive_is_refused_and_nothing_is_stored(
    db_url: str, tmp_path: Path, registry
) -> None:
    reg = registry(db_url, tmp_path)
    good = make_archive(tmp_path / "a")
    bad = tmp_path / "bad.mh"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, b"evil!!!" if info.filename == "model.onnx" else data)
    with pytest.raises(ArchiveError, match=r"model\.onnx"):
        reg.push(bad, "mallory")
    assert reg.models() == []
    assert not (tmp_path / "artifacts" / "objects").exists()
    assert reg.audit()[0].outcome == "failed"


def test_concurrent_pushes_get_distinct_versions(db_url: str, tmp_path: Path, registry) -> None:
    archives = [make_archive(tmp_path / str(i), payload=bytes([i])) for i in range(8)]
    registry(db_url, tmp_path)  # migrate once before the race

    def push(archive: Path) -> str:
        return registry(db_url, tmp_path).push(archive, "racer").version

    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(push, archives))
    assert sorted(versions, key=int) == [str(i) for i in range(1, 9)]


def test_opening_an_older_database_migrates_it_forward(
    db_url: str, tmp_path: Path, registry
) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    try:
        migrate(engine, "base")  # an empty database: nothing created yet
        assert "versions" not in inspect(engine).get_table_names()
        reg = registry(db_url, tmp_path)
        assert reg.push(make_archive(tmp_path / "a"), "a").version == "1"
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"models", "versions", "stage_changes", "audit_log", "alembic_version"} <= tables


def test_kill_9_during_push_leaves_a_consistent_registry(
    db_url: str, tmp_path: Path, registry
) -> None:
    big = make_archive(tmp_path / "big", payload=bytes(range(256)) * 40_000)  # ~10 MB
    code = (
        "import sys; from pathlib import Path;"
        "from modelhost.registry import LocalArtifactStore, Registry;"
        "from modelhost.registry.db import open_database;"
        "r = Registry(open_database(sys.argv[1]), LocalArtifactStore(Path(sys.argv[2])));"
        "[r.push(Path(sys.argv[3]), 'crash') for _ in range(1000)]"
    )
    registry(db_url, tmp_path)
    for delay in (0.5, 0.9, 1.3):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, db_url, str(tmp_path / "artifacts"), str(big)]
        )
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reg = registry(db_url, tmp_path)
    summaries = reg.models()
    count = summaries[0].versions if summaries else 0
    for version in range(1, count + 1):
        info = reg.show("tiny", str(version))
        blob = reg.archive_path("tiny", str(version))
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == info.archive_sha256
    assert reg.push(big, "after").version == str(count + 1)


def test_a_registry_at_revision_0001_keeps_its_rows_when_migrated(
    db_url: str, tmp_path: Path, registry
) -> None:
    from sqlalchemy import create_engine

    from modelhost.registry.service import ServedVersion

    engine = create_engine(db_url)
    try:
        migrate(engine, "0001")  # what the first modelhost release created
        assert "served" not in inspect(engine).get_table_names()
        old = Registry(engine, LocalArtifactStore(tmp_path / "artifacts"))
        old_version = old.push(make_archive(tmp_path / "a"), "old-release")
        reg = registry(db_url, tmp_path)  # opening migrates to head
        assert "served" in inspect(engine).get_table_names()
        assert reg.show("tiny", old_version.version).archive_sha256 == old_version.archive_sha256
        reg.save_served("edge-1", [ServedVersion("tiny", "1", True, 0.0, 2)])
        assert reg.served("edge-1") == [ServedVersion("tiny", "1", True, 0.0, 2)]
        assert reg.served("other") == []
    finally:
        engine.dispose()
