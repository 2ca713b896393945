"""Shared pieces of the ``modelhost`` command: the typer app, consoles, error printing."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

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
P = ParamSpec("P")
R = TypeVar("R")


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Print modelhost errors as one red line and exit 1 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ModelhostError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
            raise typer.Exit(1) from exc

    return wrapper


def settings_from(**overrides: Any) -> Any:
    from modelhost.config import Settings, unknown_env_settings

    for name in unknown_env_settings():
        err.print(
            f"[yellow]warning:[/] {name} is not a modelhost setting; ignored", highlight=False
        )
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"setting {first['loc'][0]}: {first['msg']}") from exc


def registry_for(settings: Any) -> Any:
    from modelhost.registry import LocalArtifactStore, Registry
    from modelhost.registry.db import open_database, sqlite_url

    url = settings.db_url or sqlite_url(settings.home)
    return Registry(open_database(url), LocalArtifactStore(settings.home / "artifacts"))


def actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"
