"""Database and disk faults through the Registry API, on SQLite and PostgreSQL.

Every fault class ends as a modelhost error (ConfigError, RegistryUnavailable,
InsufficientStorage), never as a SQLAlchemy, driver or OS error, and leaves nothing
half-written: no version row, no audit "ok" entry, no blob under its final name, no
temporary file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from modelhost.errors import (
    ConfigError,
    InsufficientStorage,
    ModelhostError,
    RegistryUnavailable,
)  # fmt: skip
from modelhost.registry import LocalArtifactStore, Registry
from modelhost.registry.db import open_database
from modelhost.registry.service import ServedVersion
from support.disks import fill, small_disk
from support.registry_archives import make_archive

LOCK_TIMEOUT_S = 0.2
BAD_URLS = [
    ("not a url", ConfigError, "is not a database URL"),
    ("", ConfigError, "is not a database URL"),
    ("oracle://scott:tiger@db/orcl", ConfigError, "runs on SQLite or PostgreSQL"),
    ("mysql://root:tiger@127.0.0.1/x", ConfigError, "runs on SQLite or PostgreSQL"),
    ("nosuchdb+driver://x/y", ConfigError, "runs on SQLite or PostgreSQL"),
    ("postgresql+psycopg2://u:tiger@127.0.0.1/x", ConfigError, "driver 'psycopg2'"),
    ("postgresql+psycopg://u:tiger@127.0.0.1:1/x", RegistryUnavailable, "unreachable"),
    ("postgresql+psycopg://u:tiger@no-such-host.invalid/x", RegistryUnavailable, "unreachable"),
    ("sqlite:////proc/modelhost/registry.db", ConfigError, "cannot create /proc/modelhost"),
]


@pytest.fixture
def open_registry(tmp_path: Path) -> Iterator[Callable[..., Registry]]:
    """Open registries (lock timeout 0.2 s); every one is closed after the test."""
    opened: list[Registry] = []

    def open_one(url: str, store: Path | None = None) -> Registry:
        engine = open_database(url, LOCK_TIMEOUT_S)
        reg = Registry(engine, LocalArtifactStore(store or tmp_path / "artifacts"))
        opened.append(reg)
        return reg

    yield open_one
    for reg in opened:
        reg.close()


@contextmanager
def held_write_lock(db_url: str) -> Iterator[None]:
    """Another connection holds the registry's tables locked until the block ends."""
    if db_url.startswith("sqlite"):
        other = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    engine = create_engine(db_url)
    try:
        with engine.connect() as other, other.begin():
            other.execute(
                text("LOCK TABLE models, versions, audit_log, served IN ACCESS EXCLUSIVE MODE")
            )
            yield
    finally:
        engine.dispose()


def snapshot(reg: Registry) -> tuple[object, ...]:
    """Everything a change could write: versions, stages, served rows, audit entries."""
    versions = [(m.name, m.versions, m.latest, m.production) for m in reg.models()]
    audit = [(e.actor, e.action, e.target, e.outcome) for e in reg.audit(1000)]
    return versions, reg.served("edge"), audit


def writes(reg: Registry, archive: Path) -> dict[str, Callable[[], object]]:
    """Every Registry method that writes, as a call."""
    served = [ServedVersion("tiny", "1", True, 0.0, 1)]
    return {
        "push": lambda: reg.push(archive, "alice"),
        "promote": lambda: reg.promote("tiny", "1", "production", "alice"),
        "remove": lambda: reg.remove("tiny", "1", "alice"),
        "save_served": lambda: reg.save_served("edge", served),
        "commit_change": lambda: reg.commit_change("edge", served, "alice", "load", "tiny:1"),
        "record": lambda: reg.record("alice", "load", "tiny:1", "ok", ""),
    }


def reads(reg: Registry) -> dict[str, Callable[[], object]]:
    return {
        "models": reg.models,
        "show": lambda: reg.show("tiny", "1"),
        "archive_path": lambda: reg.archive_path("tiny"),
        "served": lambda: reg.served("edge"),
        "audit": reg.audit,
    }


def assert_no_temporary_files(store: Path) -> None:
    leftovers = list((store / "tmp").glob("*")) if (store / "tmp").exists() else []
    assert leftovers == []


@pytest.mark.parametrize(("url", "error", "says"), BAD_URLS)
def test_a_bad_db_url_is_a_modelhost_error_naming_the_setting(
    url: str, error: type[ModelhostError], says: str
) -> None:
    with pytest.raises(error, match=says) as raised:
        open_database(url, LOCK_TIMEOUT_S)
    message = raised.value.message
    assert "tiger" not in message  # the password is masked
    assert "MODELHOST_DB_URL" in message


def test_every_method_on_an_unreachable_server_raises_registry_unavailable(
    tmp_path: Path,
) -> None:
    # The database went away after the registry was opened: nothing listens on port 1.
    engine = create_engine(
        "postgresql+psycopg://modelhost:tiger@127.0.0.1:1/x", connect_args={"connect_timeout": 1}
    )
    reg = Registry(engine, LocalArtifactStore(tmp_path / "artifacts"))
    archive = make_archive(tmp_path / "a")
    try:
        for name, call in {**writes(reg, archive), **reads(reg)}.items():
            with pytest.raises(RegistryUnavailable, match="unreachable") as raised:
                call()
            assert "tiger" not in raised.value.message, name
    finally:
        reg.close()
    assert_no_temporary_files(tmp_path / "artifacts")


def test_a_locked_database_refuses_every_write_and_keeps_nothing(
    db_url: str, tmp_path: Path, open_registry
) -> None:
    reg = open_registry(db_url)
    reg.push(make_archive(tmp_path / "a"), "alice")
    before = snapshot(reg)
    other = make_archive(tmp_path / "b", payload=b"other")
    with held_write_lock(db_url):
        for name, call in writes(reg, other).items():
            with pytest.raises(RegistryUnavailable, match="locked") as raised:
                call()
            assert "nothing was changed" in raised.value.message, name
        for call in reads(reg).values():
            if db_url.startswith("sqlite"):
                call()  # WAL: readers are not blocked by a writer
            else:
                with pytest.raises(RegistryUnavailable, match="locked"):
                    call()
    assert snapshot(reg) == before  # no version, no served row, not even a "failed" entry
    assert_no_temporary_files(tmp_path / "artifacts")
    # Released: the same changes go through. (The refused push may have left its blob: a
    # blob without a version is harmless, and this push reuses it.)
    assert reg.push(other, "alice").version == "2"
    reg.commit_change("edge", [ServedVersion("tiny", "2", True, 0.0, 1)], "bob", "load", "t:2")
    assert reg.served("edge") == [ServedVersion("tiny", "2", True, 0.0, 1)]


def test_a_postgresql_connection_lost_mid_change_keeps_nothing(
    db_url: str, tmp_path: Path, open_registry
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("a lost server connection is a PostgreSQL fault")
    app = f"mh-{uuid.uuid4().hex[:10]}"
    url = f"{db_url}&application_name={app}"
    open_registry(url).push(make_archive(tmp_path / "a"), "alice")  # migrated, one version
    reg = Registry(
        open_database(url, lock_timeout_s=120), LocalArtifactStore(tmp_path / "artifacts")
    )
    before = snapshot(reg)
    errors: list[Exception] = []

    def push() -> None:
        try:
            reg.push(make_archive(tmp_path / "b", payload=b"b"), "alice")
        except Exception as exc:  # noqa: BLE001 (the test asserts on its class)
            errors.append(exc)

    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with held_write_lock(db_url), admin.connect() as conn:
            pusher = threading.Thread(target=push)
            pusher.start()
            # The push waits on the lock; end its connection as a failover or restart would.
            deadline = time.monotonic() + 60
            killed = 0
            while not killed and time.monotonic() < deadline and pusher.is_alive():
                killed = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :app AND wait_event_type = 'Lock'"
                    ),
                    {"app": app},
                ).scalar_one()
        pusher.join(timeout=60)  # after the lock is gone: its "failed" entry is written
        assert killed == 1
        [error] = errors
        assert isinstance(error, RegistryUnavailable)
        assert "connection was lost" in error.message
        assert snapshot(reg)[0] == before[0]  # the pool reconnects; no version 2
        assert reg.push(make_archive(tmp_path / "c", payload=b"c"), "alice").version == "2"
    finally:
        reg.close()
        admin.dispose()


def test_idle_postgresql_connections_that_were_dropped_are_replaced(
    db_url: str, tmp_path: Path, open_registry
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("dropped server connections are a PostgreSQL fault")
    app = f"mh-{uuid.uuid4().hex[:10]}"
    reg = open_registry(f"{db_url}&application_name={app}")
    reg.push(make_archive(tmp_path / "a"), "alice")
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :app"
                ),
                {"app": app},
            ).scalar_one()
    finally:
        admin.dispose()
    assert killed >= 1
    assert [m.versions for m in reg.models()] == [1]  # a server restart: served on
    assert reg.push(make_archive(tmp_path / "b", payload=b"b"), "alice").version == "2"


def test_a_full_artifact_disk_keeps_no_blob_no_version_no_temporary_file(
    db_url: str, tmp_path: Path, open_registry
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        store = disk / "artifacts"
        reg = open_registry(db_url, store)
        big = make_archive(tmp_path / "big", payload=os.urandom(4 * 1024 * 1024))
        with pytest.raises(InsufficientStorage, match="disk full") as raised:
            reg.push(big, "alice")
        assert str(store) in raised.value.message
        assert reg.models() == []
        assert not list(store.rglob("objects/*/*"))
        assert_no_temporary_files(store)
        assert reg.audit()[0].outcome == "failed"  # the database had room for the entry
        assert reg.push(make_archive(tmp_path / "small"), "alice").version == "1"


def test_a_full_sqlite_disk_refuses_every_write_and_keeps_nothing(
    tmp_path: Path, open_registry
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        db = disk / "registry.db"
        reg = open_registry(f"sqlite:///{db}", tmp_path / "artifacts")  # blobs elsewhere
        reg.push(make_archive(tmp_path / "a"), "alice")
        before = snapshot(reg)
        with sqlite3.connect(db) as conn:  # an empty WAL: any write must grow a file
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = fill(disk)
        archive = make_archive(tmp_path / "b", payload=b"b")
        for name, call in writes(reg, archive).items():
            with pytest.raises(InsufficientStorage, match="disk full") as raised:
                call()
            assert str(db) in raised.value.message, name
            assert "nothing was changed" in raised.value.message
        filler.unlink()
        assert snapshot(reg) == before
        assert reg.push(archive, "alice").version == "2"


REFUSE_AUDIT = {
    "sqlite": [
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'audit refused'; END $$",
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    ],
}


def test_commit_change_writes_the_served_rows_and_the_audit_entry_together(
    db_url: str, open_registry
) -> None:
    reg = open_registry(db_url)
    served = [ServedVersion("tiny", "1", True, 0.0, 2), ServedVersion("tiny", "2", False, 0.1, 1)]
    reg.commit_change("edge", served, "token:ops", "load", "tiny:2", "weights 1:0.9")
    assert reg.served("edge") == served
    [entry] = reg.audit()
    assert (entry.actor, entry.action, entry.target, entry.outcome, entry.detail) == (
        "token:ops", "load", "tiny:2", "ok", "weights 1:0.9",
    )  # fmt: skip
    reg.commit_change("edge", served[:1], "token:ops", "unload", "tiny:2")
    assert reg.served("edge") == served[:1]
    assert [e.action for e in reg.audit()] == ["unload", "load"]


def test_commit_change_keeps_nothing_when_the_audit_entry_is_refused(
    db_url: str, open_registry
) -> None:
    reg = open_registry(db_url)
    before = [ServedVersion("tiny", "1", True, 0.0, 1)]
    reg.commit_change("edge", before, "ops", "load", "tiny:1")
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:  # the database itself refuses every audit row
            for statement in REFUSE_AUDIT[engine.dialect.name]:
                conn.execute(text(statement))
    finally:
        engine.dispose()
    after = [ServedVersion("tiny", "2", True, 0.0, 3)]
    with pytest.raises(RegistryUnavailable, match="audit refused") as raised:
        reg.commit_change("edge", after, "ops", "load", "tiny:2")
    assert "nothing was changed" in raised.value.message
    assert reg.served("edge") == before  # the served rows were replaced, then rolled back
    assert [e.target for e in reg.audit()] == ["tiny:1"]


def test_commit_change_keeps_nothing_when_the_audit_log_stays_locked(
    db_url: str, open_registry
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite locks the whole database (test_a_locked_database_...)")
    reg = open_registry(db_url)
    before = [ServedVersion("tiny", "1", True, 0.0, 1)]
    reg.commit_change("edge", before, "ops", "load", "tiny:1")
    engine = create_engine(db_url)
    try:
        with engine.connect() as other, other.begin():
            other.execute(text("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE"))
            with pytest.raises(RegistryUnavailable, match="locked"):
                reg.commit_change("edge", [], "ops", "unload", "tiny:1")
    finally:
        engine.dispose()
    assert reg.served("edge") == before
    assert [e.action for e in reg.audit()] == ["load"]
