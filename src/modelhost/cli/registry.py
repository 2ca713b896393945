"""Registry commands: push, ls, show, promote, rm, audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelhost.cli.base import HomeOption, actor, app, friendly, out, registry_for, settings_from
from modelhost.errors import ConfigError


@app.command()
@friendly
def push(
    archive: Annotated[Path, typer.Argument(help="archive (.mh)")], home: HomeOption = None
) -> None:
    """Verify an archive and register it as the next version of its model."""
    info = registry_for(settings_from(home=home)).push(archive, actor())
    out.print(
        f"pushed {info.name}:{info.version} (sha256 {info.archive_sha256[:16]}…)", highlight=False
    )


@app.command(name="ls")
@friendly
def list_models(home: HomeOption = None) -> None:
    """List the registered models."""
    table = Table("model", "versions", "latest", "production")
    for m in registry_for(settings_from(home=home)).models():
        table.add_row(m.name, str(m.versions), m.latest, m.production or "-")
    out.print(table)


@app.command()
@friendly
def show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION")], home: HomeOption = None
) -> None:
    """Show a registered version: manifest summary, metrics, stage history."""
    from modelhost.registry.service import parse_ref

    name, version = parse_ref(ref)
    info = registry_for(settings_from(home=home)).show(name, version)
    out.print(f"[bold]{info.name}:{info.version}[/]  stage={info.stage}  runtime={info.runtime}  "
              f"{info.size_bytes} bytes  pushed {info.created_at:%Y-%m-%d %H:%M:%S}")  # fmt: skip
    out.print(f"archive sha256 {info.archive_sha256}", highlight=False)
    if info.metrics:
        out.print("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(info.metrics.items())))
    for change in info.history:
        out.print(
            f"  {change.at:%Y-%m-%d %H:%M:%S}  {change.from_stage} -> {change.to_stage}"
            f"  by {change.actor}"
        )


@app.command()
@friendly
def promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    stage: Annotated[str, typer.Argument(help="production, staging, archived or none")],
    home: HomeOption = None,
) -> None:
    """Move a version to a stage (a new production version archives the old one)."""
    from modelhost.registry.service import parse_ref

    name, version = parse_ref(ref)
    if version is None:
        raise ConfigError(f"{ref!r}: say which version, NAME:VERSION")
    info = registry_for(settings_from(home=home)).promote(name, version, stage, actor())
    out.print(f"{info.name}:{info.version} is now {info.stage}", highlight=False)


@app.command()
@friendly
def rm(ref: Annotated[str, typer.Argument(help="NAME:VERSION")], home: HomeOption = None) -> None:
    """Remove a registered version (and its archive when no other version shares it)."""
    from modelhost.registry.service import parse_ref

    name, version = parse_ref(ref)
    if version is None:
        raise ConfigError(f"{ref!r}: say which version, NAME:VERSION")
    registry_for(settings_from(home=home)).remove(name, version, actor())
    out.print(f"removed {name}:{version}", highlight=False)


@app.command()
@friendly
def audit(
    limit: Annotated[int, typer.Option(help="newest entries to show")] = 50,
    home: HomeOption = None,
) -> None:
    """Show the audit log, newest first."""
    table = Table("when", "who", "action", "target", "outcome", "detail")
    for e in registry_for(settings_from(home=home)).audit(limit):
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.target, e.outcome, e.detail)
    out.print(table)
