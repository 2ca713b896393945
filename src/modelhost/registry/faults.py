"""Database and disk faults, translated into modelhost errors where they enter the registry.

```
SQLAlchemy / sqlite3 / psycopg error ──► database_error() ──► RegistryUnavailable (503)
                                                              InsufficientStorage (507)
                                                              ConfigError (400)
OSError from the artifact store ───────► storage_error()  ──► InsufficientStorage (507)
```

Every message names what failed (the database, with its password masked, or the path) and
says that nothing was changed: each registry change is one transaction, so a fault rolls it
back whole.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from modelhost.errors import InsufficientStorage, ModelhostError, RegistryUnavailable

SETTING = "MODELHOST_DB_URL"
NOTHING_CHANGED = "nothing was changed"

# sqlite3 primary result codes (https://sqlite.org/rescode.html); the low byte of an
# extended code is its primary code.
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_NOTADB = 26
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_BARE_PASSWORD = re.compile(r"([^\s:/@]+:)[^@\s/]+@")  # user:password@host, no scheme
_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@|(password=)[^&\s]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (also in a URL that does not parse)."""
    masked = _PASSWORD.sub(lambda m: f"{m.group(1)}***@" if m.group(1) else f"{m.group(2)}***", url)
    return masked if "://" in url else _BARE_PASSWORD.sub(r"\1***@", masked)


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line only (SQLAlchemy appends statements and links)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def database_error(exc: SQLAlchemyError, label: str, path: Path | None) -> ModelhostError:
    """The modelhost error for a fault of the registry database at ``label`` (a masked URL).

    ``path`` is the SQLite file (``None`` for a server database).
    """
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    reason = mask_url(first_line(exc))
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        primary = code & 0xFF
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return _locked(label)
        if primary == _SQLITE_FULL or (primary == _SQLITE_IOERR and path and _disk_full(path)):
            return InsufficientStorage(
                f"disk full: the registry database {path} cannot grow ({reason}); "
                f"{NOTHING_CHANGED}; free space on that disk"
            )
        if primary in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_CANTOPEN):
            return RegistryUnavailable(
                f"cannot open or write the registry database {path or label} ({reason}; "
                f"check {SETTING} and the permissions of its directory); {NOTHING_CHANGED}"
            )
        if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return RegistryUnavailable(
                f"the registry database {path or label} is damaged or not a SQLite database "
                f"({reason}); {NOTHING_CHANGED}"
            )
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate == "55P03":  # lock_not_available: lock_timeout expired
        return _locked(label)
    if sqlstate == "53100":  # disk_full
        return InsufficientStorage(
            f"disk full: the registry database {label} cannot grow ({reason}); {NOTHING_CHANGED}"
        )
    if sqlstate in ("40001", "40P01"):  # serialization failure, deadlock
        return RegistryUnavailable(
            f"the registry database {label} refused the change because of a concurrent one "
            f"({reason}); {NOTHING_CHANGED}; retry"
        )
    if isinstance(exc, DBAPIError) and (
        exc.connection_invalidated
        or type(exc).__name__ in ("OperationalError", "InterfaceError")
        or (isinstance(sqlstate, str) and sqlstate.startswith(("08", "57P")))
    ):
        return RegistryUnavailable(
            f"the registry database {label} is unreachable or the connection was lost "
            f"({reason}; check {SETTING}); {NOTHING_CHANGED}"
        )
    return RegistryUnavailable(
        f"the registry database {label} refused the operation ({reason}); {NOTHING_CHANGED}"
    )


def storage_error(exc: OSError, what: str, path: Path) -> InsufficientStorage:
    """The modelhost error for an OSError while writing ``path`` (``what``: the action)."""
    reason = exc.strerror or str(exc)
    if exc.errno in _DISK_FULL_ERRNOS:
        return InsufficientStorage(
            f"disk full: cannot {what} {path} ({reason}); nothing was kept; free space there"
        )
    return InsufficientStorage(f"cannot {what} {path} ({reason}); nothing was kept")


@contextmanager
def translated(label: str, path: Path | None) -> Iterator[None]:
    """Raise database faults inside the block as modelhost errors (see ``database_error``)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise database_error(exc, label, path) from exc


def _locked(label: str) -> RegistryUnavailable:
    return RegistryUnavailable(
        f"the registry database {label} is locked by another process (held longer than "
        f"MODELHOST_DB_LOCK_TIMEOUT_S); {NOTHING_CHANGED}; retry when it is released"
    )


def _disk_full(path: Path) -> bool:
    """True when the file system holding ``path`` has no free block left."""
    import shutil

    try:
        return shutil.disk_usage(path.parent).free == 0
    except OSError:
        return False
