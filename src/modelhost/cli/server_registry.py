"""The registry as a running server uses it (the management API's RegistryPort).

One registry (one connection pool, one migration check) for the server's lifetime, opened on
first use: a server of archive files only never opens a database until a management call
needs one. The calls run in worker threads, which SQLAlchemy allows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelhost.cli.base import registry_for
from modelhost.config import Settings
from modelhost.serving import ArchiveSource, VersionState
from modelhost.types import ModelRef


class ServerRegistry:
    """Resolve, register, persist and audit for one server (``settings.server_name``).

    ``uses_registry``: the server serves registry versions, so what it serves is recorded
    (a server of archive files only records nothing, so it does not erase the record of
    what a registry server of the same name served).
    """

    def __init__(self, settings: Settings, *, uses_registry: bool) -> None:
        self._settings = settings
        self._uses_registry = uses_registry
        self._opened: Any = None

    def _registry(self) -> Any:
        if self._opened is None:
            self._opened = registry_for(self._settings)
        return self._opened

    def close(self) -> None:
        """Close the database connections, if any were opened."""
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def resolve(self, ref: str) -> ArchiveSource:
        """``NAME`` (production, else latest; it becomes the default) or ``NAME:VERSION``."""
        return registry_source(self._registry(), ref)

    def register(self, archive: Path, actor: str) -> ArchiveSource:
        """Push an uploaded archive: it becomes the next version of its name, so a
        registered ``name:version`` is never shadowed by other bytes."""
        registry = self._registry()
        info = registry.push(archive, actor)
        return ArchiveSource(
            registry.archive_path(info.name, info.version),
            ModelRef(info.name, info.version),
            origin="registry",
            sha256=info.archive_sha256,
        )

    def forget(self, source: ArchiveSource, actor: str) -> None:
        """Remove a version :meth:`register` added (its upload could not be served)."""
        if source.ref is not None and source.ref.version is not None:
            self._registry().remove(source.ref.name, source.ref.version, actor)

    def commit(
        self, served: list[VersionState], actor: str, action: str, target: str, detail: str = ""
    ) -> None:
        """Record what is served and the audit entry of the change, in one transaction."""
        kept = _registry_versions(served)
        if kept or self._uses_registry:
            self._uses_registry = True
            self._registry().commit_change(
                self._settings.server_name, kept, actor, action, target, detail
            )
        else:
            self._registry().record(actor, action, target, "ok", detail)

    def record(self, actor: str, action: str, target: str, outcome: str, detail: str) -> None:
        """One audit entry (a refused change)."""
        self._registry().record(actor, action, target, outcome, detail)

    def started(self, served: list[VersionState]) -> None:
        """Record what a starting server serves (registry servers only)."""
        if self._uses_registry:
            self._registry().save_served(self._settings.server_name, _registry_versions(served))


def registry_source(registry: Any, ref: str) -> ArchiveSource:
    """A registry ``NAME[:VERSION]`` as an ArchiveSource carrying the recorded digest;
    ``NAME`` becomes the default version of its name."""
    from modelhost.registry.service import parse_ref

    name, version = parse_ref(ref)
    info = registry.show(name, version)
    return ArchiveSource(
        registry.archive_path(name, info.version),
        ModelRef(name, info.version),
        default=version is None,
        origin="registry",
        sha256=info.archive_sha256,
    )


def _registry_versions(served: list[VersionState]) -> list[Any]:
    from modelhost.registry.service import ServedVersion

    return [
        ServedVersion(s.name, s.version, s.is_default, s.weight, s.instances)
        for s in served
        if s.origin == "registry"
    ]
