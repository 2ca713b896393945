"""The serving engine: batching, instances, versions. No HTTP in here."""

from modelhost.serving.engine import ArchiveSource, Engine, ModelInfo, VersionState

__all__ = ["ArchiveSource", "Engine", "ModelInfo", "VersionState"]
