"""The serving engine: batching, instances, versions. No HTTP in here."""

from modelhost.serving.engine import ArchiveSource, Engine, ModelInfo

__all__ = ["ArchiveSource", "Engine", "ModelInfo"]
