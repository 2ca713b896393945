"""The model registry: models, versions, stages and an append-only audit log."""

from modelhost.registry.service import Registry, VersionInfo
from modelhost.registry.store import ArtifactStore, LocalArtifactStore

__all__ = ["ArtifactStore", "LocalArtifactStore", "Registry", "VersionInfo"]
