"""Registry: push archives, list, show, promote, remove; every action audited.

A push verifies the archive, stores its blob (content-addressed, idempotent), then inserts
the version in one transaction; a crash before the commit leaves no version, and a blob
without a version is harmless (the same bytes pushed again reuse it). Two concurrent pushes
of one name get distinct version numbers (a unique constraint, retried).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelhost.archive.open import ArchiveLimits, open_archive
from modelhost.errors import ConfigError, ModelhostError, ModelNotFound
from modelhost.registry.store import ArtifactStore
from modelhost.registry.tables import (
    STAGES,
    AuditRow,
    ModelRow,
    ServedRow,
    StageChangeRow,
    VersionRow,
)  # fmt: skip

_PUSH_RETRIES = 20
T = TypeVar("T")


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


class Registry:
    """The registry over a database engine and an artifact store."""

    def __init__(self, engine: Engine, store: ArtifactStore) -> None:
        self._engine = engine
        self._store = store

    def close(self) -> None:
        """Close the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def push(self, archive: Path, actor: str) -> VersionInfo:
        """Verify ``archive`` and register it as the next version of its model.

        Raises:
            ArchiveError: the archive is unsafe or tampered with (nothing is stored).
        """
        return self._audited(actor, "push", str(archive), lambda: self._push(archive))

    def _push(self, archive: Path) -> VersionInfo:
        with tempfile.TemporaryDirectory(prefix="modelhost-push-") as tmp:
            opened = open_archive(archive, Path(tmp), ArchiveLimits())
        manifest = opened.manifest
        digest = self._store.put(archive)
        if digest != opened.sha256:
            raise ConfigError(f"{archive} changed while it was being pushed; push it again")
        for _ in range(_PUSH_RETRIES):
            try:
                with Session(self._engine) as session, session.begin():
                    model = self._model_row(session, manifest.name, create=True)
                    number = (
                        session.scalar(
                            select(func.max(VersionRow.number)).where(
                                VersionRow.model_id == model.id
                            )
                        )
                        or 0
                    ) + 1
                    row = VersionRow(
                        model=model,
                        number=number,
                        archive_sha256=digest,
                        size_bytes=archive.stat().st_size,
                        runtime=manifest.runtime,
                        stage="none",
                        metrics=dict(manifest.metrics),
                        manifest=manifest.model_dump(mode="json"),
                    )
                    session.add(row)
                    session.flush()
                    return _info(row)
            except IntegrityError:
                continue  # another push took this number (or created the model): retry
        raise ModelhostError(f"could not assign a version to {manifest.name}; retry the push")

    def models(self) -> list[ModelSummary]:
        """Every model with its version count, latest and production version."""
        with Session(self._engine) as session:
            summaries = []
            for model in session.scalars(select(ModelRow).order_by(ModelRow.name)):
                numbers = sorted(v.number for v in model.versions)
                if not numbers:
                    continue
                production = [v.number for v in model.versions if v.stage == "production"]
                summaries.append(
                    ModelSummary(
                        name=model.name,
                        versions=len(numbers),
                        latest=str(numbers[-1]),
                        production=str(production[0]) if production else None,
                    )
                )
            return summaries

    def show(self, name: str, version: str | None = None) -> VersionInfo:
        """One version with its stage history (``None``: production, else the latest).

        Raises:
            ModelNotFound: no such model or version.
        """
        with Session(self._engine) as session:
            row = self._version_row(session, name, version)
            history = session.scalars(
                select(StageChangeRow)
                .where(StageChangeRow.version_id == row.id)
                .order_by(StageChangeRow.id)
            )
            changes = tuple(StageChange(h.from_stage, h.to_stage, h.actor, h.at) for h in history)
            info = _info(row)
            return VersionInfo(**{**_fields(info), "history": changes})

    def archive_path(self, name: str, version: str | None = None) -> Path:
        """Where the archive of that version is stored (for ``serve NAME``)."""
        return self._store.path(self.show(name, version).archive_sha256)

    def promote(self, name: str, version: str, stage: str, actor: str) -> VersionInfo:
        """Move a version to ``stage``; a new production version archives the previous one.

        Raises:
            ConfigError: unknown stage. ModelNotFound: no such version.
        """
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")

        def run() -> VersionInfo:
            with Session(self._engine) as session, session.begin():
                row = self._version_row(session, name, version)
                if stage == "production":
                    for other in row.model.versions:
                        if other.stage == "production" and other.id != row.id:
                            _set_stage(session, other, "archived", actor)
                _set_stage(session, row, stage, actor)
                return _info(row)

        return self._audited(actor, "promote", f"{name}:{version} -> {stage}", run)

    def remove(self, name: str, version: str, actor: str) -> None:
        """Delete a version; its blob goes too when no other version uses it.

        Raises:
            ModelNotFound: no such version.
        """

        def run() -> None:
            with Session(self._engine) as session, session.begin():
                row = self._version_row(session, name, version)
                digest = row.archive_sha256
                session.delete(row)
                session.flush()
                shared = session.scalar(
                    select(func.count()).where(VersionRow.archive_sha256 == digest)
                )
            if not shared:
                self._store.path(digest).unlink(missing_ok=True)

        self._audited(actor, "remove", f"{name}:{version}", run)

    def save_served(self, server: str, versions: list[ServedVersion]) -> None:
        """Replace what ``server`` serves, in one transaction."""
        with Session(self._engine) as session, session.begin():
            session.query(ServedRow).filter(ServedRow.server == server).delete()
            for v in versions:
                session.add(
                    ServedRow(
                        server=server, model=v.model, version=v.version,
                        is_default=v.is_default, weight=v.weight, instances=v.instances,
                    )
                )  # fmt: skip

    def served(self, server: str) -> list[ServedVersion]:
        """What ``server`` served last, in model then version order."""
        with Session(self._engine) as session:
            rows = session.scalars(
                select(ServedRow)
                .where(ServedRow.server == server)
                .order_by(ServedRow.model, ServedRow.version)
            )
            return [
                ServedVersion(r.model, r.version, r.is_default, r.weight, r.instances) for r in rows
            ]

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        with Session(self._engine) as session:
            rows = session.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(limit))
            return [
                AuditEntry(r.at, r.actor, r.action, r.target, r.outcome, r.detail) for r in rows
            ]

    def _audited(self, actor: str, action: str, target: str, run: Callable[[], T]) -> T:
        try:
            result = run()
        except ModelhostError as exc:
            self.record(actor, action, target, "failed", exc.message)
            raise
        detail = f"{result.name}:{result.version}" if isinstance(result, VersionInfo) else ""
        self.record(actor, action, target, "ok", detail)
        return result

    def record(self, actor: str, action: str, target: str, outcome: str, detail: str) -> None:
        """Append one entry to the audit log."""
        with Session(self._engine) as session, session.begin():
            session.add(
                AuditRow(
                    actor=actor[:128], action=action, target=target[:300],
                    outcome=outcome, detail=detail[:2000],
                )
            )  # fmt: skip

    @staticmethod
    def _model_row(session: Session, name: str, *, create: bool = False) -> ModelRow:
        model = session.scalar(select(ModelRow).where(ModelRow.name == name))
        if model is None:
            if not create:
                raise ModelNotFound(f"model {name!r} is not in the registry")
            model = ModelRow(name=name)
            session.add(model)
            session.flush()
        return model

    def _version_row(self, session: Session, name: str, version: str | None) -> VersionRow:
        model = self._model_row(session, name)
        versions = sorted(model.versions, key=lambda v: v.number)
        if not versions:
            raise ModelNotFound(f"model {name!r} has no versions")
        if version is None:
            production = [v for v in versions if v.stage == "production"]
            return production[0] if production else versions[-1]
        for row in versions:
            if str(row.number) == version:
                return row
        known = ", ".join(str(v.number) for v in versions)
        raise ModelNotFound(f"model {name!r} has no version {version!r} (registered: {known})")


def _set_stage(session: Session, row: VersionRow, stage: str, actor: str) -> None:
    if row.stage != stage:
        session.add(
            StageChangeRow(version_id=row.id, from_stage=row.stage, to_stage=stage, actor=actor)
        )
        row.stage = stage


def _info(row: VersionRow) -> VersionInfo:
    return VersionInfo(
        name=row.model.name,
        version=str(row.number),
        archive_sha256=row.archive_sha256,
        size_bytes=row.size_bytes,
        runtime=row.runtime,
        stage=row.stage,
        metrics=dict(row.metrics),
        created_at=row.created_at,
        manifest=dict(row.manifest),
    )


def _fields(info: VersionInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in VersionInfo.__slots__}
