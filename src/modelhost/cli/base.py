"""Shared pieces of the ``modelhost`` command: the typer app, consoles, error printing.

Errors reach a user as one line and exit status 1, never as a traceback:

    ModelhostError        error: <its message>
    OSError               error: <what> <path>: <strerror>
    anything else         error: unexpected <Type>: <message> (this is a bug; run with --debug ...)

``modelhost --debug COMMAND`` re-raises every error with its traceback.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from modelhost.errors import ConfigError, ModelhostError

app = typer.Typer(
    name="modelhost",
    help="Train, pack, serve and call AI models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

HomeOption = Annotated[Path | None, typer.Option("--home", help="modelhost home [~/.modelhost]")]
# Set by the app's callback for this invocation (a ContextVar, not a global flag: tests
# invoke the app many times in one process).
_DEBUG: ContextVar[bool] = ContextVar("modelhost_debug", default=False)
P = ParamSpec("P")
R = TypeVar("R")
_OS_WHAT = {
    errno.ENOSPC: "disk full writing",
    errno.EDQUOT: "disk quota exceeded writing",
    errno.ENOENT: "cannot find",
    errno.EACCES: "cannot access",
    errno.EPERM: "cannot access",
    errno.EROFS: "cannot write",
}


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of an error")] = False,
) -> None:
    """Train, pack, serve and call AI models."""
    _DEBUG.set(debug)


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Print errors as one red ``error:`` line and exit 1 instead of a traceback.

    Under ``modelhost --debug`` every error re-raises with its traceback (and its cause:
    where a database or disk fault entered).
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own exits and usage errors print themselves
        except Exception as exc:
            if _debug():
                raise
            if isinstance(exc, ModelhostError):
                fail(exc.message, exc)
            if isinstance(exc, OSError):
                fail(describe_os_error(exc), exc)
            fail(
                f"unexpected {type(exc).__name__}: {exc} (this is a bug; run with --debug "
                "for the traceback)",
                exc,
            )

    return wrapper


def fail(message: str, exc: BaseException) -> NoReturn:
    """Print ``error: message`` on stderr and exit 1."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1) from exc


def describe_os_error(exc: OSError) -> str:
    """``<what> <path>: <strerror>`` for an OSError, e.g. ``disk full writing out.mh: ...``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return f"disk full: {reason}" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else reason
    path = os.fsdecode(exc.filename)
    if exc.filename2 is not None:
        path = f"{path} -> {os.fsdecode(exc.filename2)}"
    return f"{_OS_WHAT.get(exc.errno or 0, 'cannot use')} {path}: {reason}"


def _debug() -> bool:
    return _DEBUG.get()


def settings_from(**overrides: Any) -> Any:
    from modelhost.config import Settings, unknown_env_settings

    for name in unknown_env_settings():
        err.print(
            f"[yellow]warning:[/] {escape(name)} is not a modelhost setting; ignored",
            highlight=False,
        )
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"setting {first['loc'][0]}: {first['msg']}") from exc


def registry_for(settings: Any) -> Any:
    """The registry of ``settings`` (its home prepared, its database opened and migrated).

    Raises:
        ConfigError: the home cannot be used, or MODELHOST_DB_URL is not a usable URL.
        RegistryUnavailable, InsufficientStorage: the database cannot be opened.
    """
    from modelhost.home import prepare_home
    from modelhost.registry import LocalArtifactStore, Registry
    from modelhost.registry.db import open_database, sqlite_url

    for warning in prepare_home(settings.home):
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    url = settings.db_url or sqlite_url(settings.home)
    engine = open_database(url, settings.db_lock_timeout_s)
    return Registry(engine, LocalArtifactStore(settings.home / "artifacts"))


def actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"
