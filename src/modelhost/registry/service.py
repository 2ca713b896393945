"""Registry: push archives, list, show, promote, remove; every action audited.

A push verifies the archive, stores its blob (content-addressed, idempotent), then inserts
the version in one transaction; a crash before the commit leaves no version, and a blob
without a version is harmless (the same bytes pushed again reuse it). Two concurrent pushes
of one name get distinct version numbers (a unique constraint, retried).

Every change and its "ok" audit entry are one transaction: both are written or neither. A
change that fails is audited as "failed" in a transaction of its own (when the database can
still be written). Database and disk faults leave every method as modelhost errors
(``RegistryUnavailable``, ``InsufficientStorage``; see ``faults.py``), never as SQLAlchemy or
OS errors.
"""

from __future__ import annotations

import errno
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelhost.archive.manifest import Manifest
from modelhost.archive.open import ArchiveLimits, open_archive
from modelhost.errors import (
    ConfigError,
    InsufficientStorage,
    ModelhostError,
    ModelNotFound,
    RegistryUnavailable,
)  # fmt: skip
from modelhost.registry.db import database_label, database_path
from modelhost.registry.faults import storage_error, translated
from modelhost.registry.records import (
    AuditEntry,
    ModelSummary,
    ServedVersion,
    StageChange,
    VersionInfo,
    parse_ref,
)  # fmt: skip
from modelhost.registry.store import ArtifactStore
from modelhost.registry.tables import (
    STAGES,
    AuditRow,
    ModelRow,
    ServedRow,
    StageChangeRow,
    VersionRow,
)  # fmt: skip

__all__ = [
    "AuditEntry",
    "ModelSummary",
    "Registry",
    "ServedVersion",
    "StageChange",
    "VersionInfo",
    "parse_ref",
]
_PUSH_RETRIES = 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
T = TypeVar("T")
logger = logging.getLogger(__name__)


class Registry:
    """The registry over a database engine and an artifact store."""

    def __init__(self, engine: Engine, store: ArtifactStore) -> None:
        self._engine = engine
        self._store = store
        self._label = database_label(engine)
        self._db_path = database_path(engine)

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
            InsufficientStorage: the disk is full (nothing is kept).
            RegistryUnavailable: the database is locked or unreachable (no version).
        """
        try:
            return self._push(archive, actor)
        except ModelhostError as exc:
            self._record_failure(actor, "push", str(archive), exc)
            raise

    def _push(self, archive: Path, actor: str) -> VersionInfo:
        try:
            with tempfile.TemporaryDirectory(prefix="modelhost-push-") as tmp:
                opened = open_archive(archive, Path(tmp), ArchiveLimits())
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            where = Path(exc.filename or tempfile.gettempdir())
            raise storage_error(exc, "unpack the archive to verify it in", where) from exc
        manifest = opened.manifest
        digest = self._store.put(archive)
        if digest != opened.sha256:
            raise ConfigError(f"{archive} changed while it was being pushed; push it again")
        size_bytes = archive.stat().st_size
        with self._faults():
            for _ in range(_PUSH_RETRIES):
                try:
                    with Session(self._engine) as session, session.begin():
                        info = self._insert_version(session, manifest, digest, size_bytes)
                        session.add(_audit_row(actor, "push", str(archive), "ok", _ref(info)))
                    return info
                except IntegrityError:
                    continue  # another push took this number (or created the model): retry
        raise RegistryUnavailable(
            f"could not assign a version to {manifest.name} (too many concurrent pushes); "
            "nothing was changed; retry the push"
        )

    def _insert_version(
        self, session: Session, manifest: Manifest, digest: str, size_bytes: int
    ) -> VersionInfo:
        model = self._model_row(session, manifest.name, create=True)
        latest = session.scalar(
            select(func.max(VersionRow.number)).where(VersionRow.model_id == model.id)
        )
        row = VersionRow(
            model=model,
            number=(latest or 0) + 1,
            archive_sha256=digest,
            size_bytes=size_bytes,
            runtime=manifest.runtime,
            stage="none",
            metrics=dict(manifest.metrics),
            manifest=manifest.model_dump(mode="json"),
        )
        session.add(row)
        session.flush()
        return _info(row)

    def models(self) -> list[ModelSummary]:
        """Every model with its version count, latest and production version."""
        with self._faults(), Session(self._engine) as session:
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
        with self._faults(), Session(self._engine) as session:
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

        def run(session: Session) -> tuple[VersionInfo, str]:
            row = self._version_row(session, name, version)
            if stage == "production":
                for other in row.model.versions:
                    if other.stage == "production" and other.id != row.id:
                        _set_stage(session, other, "archived", actor)
            _set_stage(session, row, stage, actor)
            info = _info(row)
            return info, _ref(info)

        return self._change(actor, "promote", f"{name}:{version} -> {stage}", run)

    def remove(self, name: str, version: str, actor: str) -> None:
        """Delete a version; its blob goes too when no other version uses it.

        Raises:
            ModelNotFound: no such version.
        """

        def run(session: Session) -> tuple[str | None, str]:
            row = self._version_row(session, name, version)
            digest = row.archive_sha256
            session.delete(row)
            session.flush()
            shared = session.scalar(select(func.count()).where(VersionRow.archive_sha256 == digest))
            return (None if shared else digest), ""

        unused = self._change(actor, "remove", f"{name}:{version}", run)
        if unused is not None:
            blob = self._store.path(unused)
            try:
                blob.unlink(missing_ok=True)
            except OSError as exc:
                # The version is gone (committed); its blob is harmless: a push of the same
                # bytes reuses it. Say so rather than fail a change that was made.
                logger.warning("removed %s:%s but could not delete %s: %s", name, version,
                               blob, exc.strerror)  # fmt: skip

    def save_served(self, server: str, versions: list[ServedVersion]) -> None:
        """Replace what ``server`` serves, in one transaction (at start-up; not audited).

        Raises:
            RegistryUnavailable, InsufficientStorage: nothing was changed.
        """
        with self._faults(), Session(self._engine) as session, session.begin():
            _replace_served(session, server, versions)

    def commit_change(
        self,
        server: str,
        served: list[ServedVersion],
        actor: str,
        action: str,
        target: str,
        detail: str = "",
    ) -> None:
        """Replace what ``server`` serves and audit the change as "ok", in one transaction.

        The management API's all-or-nothing step: either both the served rows and the audit
        entry are written, or neither is (the caller then undoes the change in memory).

        Raises:
            RegistryUnavailable: the database is locked, unreachable or refused the change.
            InsufficientStorage: its disk is full. In both cases nothing was written.
        """
        with self._faults(), Session(self._engine) as session, session.begin():
            _replace_served(session, server, served)
            session.flush()
            session.add(_audit_row(actor, action, target, "ok", detail))

    def served(self, server: str) -> list[ServedVersion]:
        """What ``server`` served last, in model then version order."""
        with self._faults(), Session(self._engine) as session:
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
        with self._faults(), Session(self._engine) as session:
            rows = session.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(limit))
            return [
                AuditEntry(r.at, r.actor, r.action, r.target, r.outcome, r.detail) for r in rows
            ]

    def record(self, actor: str, action: str, target: str, outcome: str, detail: str) -> None:
        """Append one entry to the audit log.

        Raises:
            RegistryUnavailable, InsufficientStorage: the entry was not written.
        """
        with self._faults(), Session(self._engine) as session, session.begin():
            session.add(_audit_row(actor, action, target, outcome, detail))

    def _change(
        self, actor: str, action: str, target: str, run: Callable[[Session], tuple[T, str]]
    ) -> T:
        """Run ``run(session)`` and its "ok" audit entry (detail from ``run``) as one
        transaction; audit a failure on its own."""
        try:
            with self._faults(), Session(self._engine) as session, session.begin():
                result, detail = run(session)
                session.add(_audit_row(actor, action, target, "ok", detail))
            return result
        except ModelhostError as exc:
            self._record_failure(actor, action, target, exc)
            raise

    def _record_failure(self, actor: str, action: str, target: str, exc: ModelhostError) -> None:
        try:
            self.record(actor, action, target, "failed", exc.message)
        except (RegistryUnavailable, InsufficientStorage) as audit_exc:
            # The database fault that failed the change usually fails its audit entry too;
            # the change's own error is the one to report.
            exc.add_note(f"the audit entry could not be written either: {audit_exc.message}")

    @contextmanager
    def _faults(self) -> Iterator[None]:
        with translated(self._label, self._db_path):
            yield

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


def _replace_served(session: Session, server: str, versions: list[ServedVersion]) -> None:
    session.query(ServedRow).filter(ServedRow.server == server).delete()
    for v in versions:
        session.add(
            ServedRow(
                server=server, model=v.model, version=v.version,
                is_default=v.is_default, weight=v.weight, instances=v.instances,
            )
        )  # fmt: skip


def _audit_row(actor: str, action: str, target: str, outcome: str, detail: str) -> AuditRow:
    return AuditRow(
        actor=actor[:128], action=action[:32], target=target[:300],
        outcome=outcome[:16], detail=detail[:2000],
    )  # fmt: skip


def _ref(info: VersionInfo) -> str:
    return f"{info.name}:{info.version}"


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
