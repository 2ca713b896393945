"""Open the registry database and migrate it to the newest schema (Alembic).

Faults while opening become modelhost errors here, naming MODELHOST_DB_URL (password
masked): a URL that does not parse, a database other than SQLite or PostgreSQL, or a missing
driver is a ``ConfigError``; a server that does not answer is ``RegistryUnavailable``.
"""

from __future__ import annotations

import errno
import math
import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from modelhost.errors import ConfigError
from modelhost.registry.faults import SETTING, mask_url, storage_error, translated

MIGRATIONS = Path(__file__).parent / "migrations"
SUPPORTED = ("sqlite", "postgresql")
_MIGRATION_LOCK = threading.Lock()
_PG_LOCK_KEY = 0x6D6F64656C  # 'model': one advisory lock for registry migrations


def sqlite_url(home: Path) -> str:
    """The embedded default: a SQLite file in the modelhost home."""
    return f"sqlite:///{home / 'registry.db'}"


def open_database(url: str, lock_timeout_s: float = 10.0) -> Engine:
    """Connect to ``url`` (SQLite file or ``postgresql+psycopg://``) and migrate to head.

    A database made by an older modelhost is migrated forward here, automatically.

    Args:
        url: the database URL (MODELHOST_DB_URL).
        lock_timeout_s: how long a statement waits for a lock another process holds
            (SQLite ``busy_timeout``, PostgreSQL ``lock_timeout``); also PostgreSQL's
            ``connect_timeout`` (whole seconds, at least 1) unless the URL sets one.

    Raises:
        ConfigError: ``url`` does not parse, names another database, or its driver is not
            installed. RegistryUnavailable: the database cannot be reached, opened or
            migrated. InsufficientStorage: its disk is full.
    """
    parsed = _parse(url)
    label = mask_url(parsed.render_as_string(hide_password=True))
    engine = _create(parsed, url, lock_timeout_s)
    path = database_path(engine)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise storage_error(exc, "create", path.parent) from exc
            raise ConfigError(
                f"{SETTING} {label!r}: cannot create {path.parent} ({exc.strerror})"
            ) from exc
    try:
        with translated(label, path):
            migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def database_path(engine: Engine) -> Path | None:
    """The SQLite file behind ``engine`` (``None`` for a server database or in memory)."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    return Path(engine.url.database or "")


def database_label(engine: Engine) -> str:
    """The engine's URL with its password masked, for messages."""
    return mask_url(engine.url.render_as_string(hide_password=True))


def migrate(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision`` on ``engine`` (no-op when there).

    Alembic keeps its context in module globals, so migrations in one process run one at a
    time; across processes PostgreSQL's advisory lock (SQLite's write lock) keeps them apart.

    Raises:
        ConfigError: the database was made by a newer modelhost (unknown revision).
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    target = script.get_current_head() if revision == "head" else revision
    with _MIGRATION_LOCK, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas starting together: one migrates, the others wait, then see head.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        current = MigrationContext.configure(connection).get_current_revision()
        if current == target or (current is None and target == "base"):
            return
        cfg.attributes["connection"] = connection
        try:
            command.upgrade(cfg, revision)
        except CommandError as exc:
            raise ConfigError(
                f"the registry database {database_label(engine)} is at schema revision "
                f"{current!r}, which this modelhost does not know (made by a newer release?): "
                f"{exc}"
            ) from exc


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(
            f"{SETTING} {mask_url(url)!r} is not a database URL; use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from exc
    if parsed.get_backend_name() not in SUPPORTED:
        raise ConfigError(
            f"{SETTING} {mask_url(url)!r}: the registry runs on SQLite or PostgreSQL, not "
            f"{parsed.get_backend_name()!r}; use sqlite:///PATH or postgresql+psycopg://..."
        )
    return parsed


def _create(parsed: URL, url: str, lock_timeout_s: float) -> Engine:
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend == "postgresql":
        # A dropped connection (server restart, failover) is replaced before it is used.
        kwargs["pool_pre_ping"] = True
        if "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": max(1, math.ceil(lock_timeout_s))}
    try:
        engine = create_engine(parsed, **kwargs)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{SETTING} {mask_url(url)!r} needs the Python driver {exc.name!r}, which is not "
            "installed: install it, or use postgresql+psycopg:// (pip install "
            "'modelhost[postgres]')"
        ) from exc
    except (SQLAlchemyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{SETTING} {mask_url(url)!r} cannot be used: {exc}") from exc
    lock_ms = max(1, round(lock_timeout_s * 1000))  # 0 would mean "wait forever" on PostgreSQL
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(round(lock_timeout_s * 1000)))
    else:
        event.listen(engine, "connect", _postgresql_settings(lock_ms))
    return engine


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return on_connect


def _postgresql_settings(lock_timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
        dbapi_connection.autocommit = autocommit

    return on_connect
