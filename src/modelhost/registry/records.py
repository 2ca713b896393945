"""What the registry returns: versions, summaries, audit entries, served versions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelhost.errors import ConfigError


@dataclass(frozen=True, slots=True)
class StageChange:
    """One entry of a version's stage history."""

    from_stage: str
    to_stage: str
    actor: str
    at: datetime


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A registered version as the registry knows it."""

    name: str
    version: str
    archive_sha256: str
    size_bytes: int
    runtime: str
    stage: str
    metrics: dict[str, float]
    created_at: datetime
    manifest: dict[str, Any]
    history: tuple[StageChange, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """A line of ``modelhost ls``."""

    name: str
    versions: int
    latest: str
    production: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit log row."""

    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    detail: str


@dataclass(frozen=True, slots=True)
class ServedVersion:
    """One registry version a server serves, with its routing and scale."""

    model: str
    version: str
    is_default: bool
    weight: float
    instances: int


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:VERSION`` -> (name, version or None)."""
    name, _, version = ref.partition(":")
    if not name:
        raise ConfigError(f"{ref!r} is not NAME or NAME:VERSION")
    return name, version or None
