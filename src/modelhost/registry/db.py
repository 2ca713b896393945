"""Open the registry database and migrate it to the newest schema (Alembic)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = threading.Lock()
_PG_LOCK_KEY = 0x6D6F64656C  # 'model': one advisory lock for registry migrations


def sqlite_url(home: Path) -> str:
    """The embedded default: a SQLite file in the modelhost home."""
    return f"sqlite:///{home / 'registry.db'}"


def open_database(url: str) -> Engine:
    """Connect to ``url`` (SQLite file or ``postgresql+psycopg://``) and migrate to head.

    A database made by an older modelhost is migrated forward here, automatically.
    """
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        Path(engine.url.database or "").parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_pragmas)
    migrate(engine)
    return engine


def migrate(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision`` on ``engine`` (no-op when there).

    Alembic keeps its context in module globals, so migrations in one process run one at a
    time; across processes PostgreSQL's advisory lock (SQLite's write lock) keeps them apart.
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
        command.upgrade(cfg, revision)


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
