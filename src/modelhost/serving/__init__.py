"""The serving engine: batching, instances, versions. No HTTP in here."""

from modelhost.serving.engine import Engine, ModelInfo

__all__ = ["Engine", "ModelInfo"]
