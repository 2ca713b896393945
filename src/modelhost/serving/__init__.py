"""The serving core: data plane, control plane, schedulers, instances. No HTTP in here."""

from modelhost.serving.config import EngineConfig, engine_config
from modelhost.serving.controlplane import ControlPlane
from modelhost.serving.dataplane import DataPlane, Route
from modelhost.serving.engine import Engine
from modelhost.serving.managed import (
    LoadReport,
    LoadResult,
    LocalModels,
    ManagedModels,
    ModelView,
    VersionView,
    WorkerView,
    apply_routing,
)
from modelhost.serving.manager import Detached
from modelhost.serving.served import ArchiveSource, ModelInfo, VersionLoad, VersionState

__all__ = [
    "ArchiveSource",
    "ControlPlane",
    "DataPlane",
    "Detached",
    "Engine",
    "EngineConfig",
    "LoadReport",
    "LoadResult",
    "LocalModels",
    "ManagedModels",
    "ModelInfo",
    "ModelView",
    "Route",
    "VersionLoad",
    "VersionState",
    "VersionView",
    "WorkerView",
    "apply_routing",
    "engine_config",
]
