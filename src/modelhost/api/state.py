"""What every route shares: settings, metrics and (once started) the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from modelhost.config import Settings
from modelhost.errors import ModelNotReady
from modelhost.monitor.metrics import Metrics
from modelhost.serving import ControlPlane, DataPlane, Engine


@dataclass(slots=True)
class ServerState:
    """Mutable server state; the engine is set by the lifespan once models are loaded."""

    settings: Settings
    metrics: Metrics
    engine_: Engine | None = None
    draining: bool = False
    loaded: list[str] = field(default_factory=list)

    @property
    def engine(self) -> Engine:
        """The running engine. Raises ModelNotReady before start-up has finished."""
        if self.engine_ is None:
            raise ModelNotReady("the server is still loading its models")
        return self.engine_

    @property
    def data(self) -> DataPlane:
        """Resolve and infer. Raises ModelNotReady before start-up has finished."""
        return self.engine.data

    @property
    def control(self) -> ControlPlane:
        """Load, unload, route, scale. Raises ModelNotReady before start-up has finished."""
        return self.engine.control

    @property
    def ready(self) -> bool:
        """True once every model is loaded and until shutdown begins."""
        return self.engine_ is not None and self.engine_.ready and not self.draining
