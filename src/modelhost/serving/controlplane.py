"""The control plane: load, unload, default, split, scale, snapshot.

Every change of what is served goes through here (the management API, start-up, a restore
from the registry); the data plane only reads the state it leaves.
"""

from __future__ import annotations

from modelhost.serving.manager import Detached, ModelManager
from modelhost.serving.served import ArchiveSource, ModelInfo, VersionLoad, VersionState


class ControlPlane:
    """Changes to the served state of one engine."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    async def load(self, source: ArchiveSource) -> ModelInfo:
        """Load one more archive (a new model, or a new version of a loaded one)."""
        return await self._manager.load(source)

    async def unload(self, name: str, version: str) -> None:
        """Unload a version after finishing what it accepted. Raises ModelNotFound."""
        await self._manager.unload(name, version)

    def detach(self, name: str, version: str) -> Detached:
        """Stop routing to a version, reversibly (unload = detach + drain)."""
        return self._manager.detach(name, version)

    def reattach(self, detached: Detached) -> None:
        """Route to a detached version again, as before."""
        self._manager.reattach(detached)

    async def drain(self, detached: Detached) -> None:
        """Finish a detached version's accepted requests and stop it."""
        await self._manager.drain(detached)

    def default_version(self, name: str) -> str:
        """The version unversioned requests go to without a split. Raises ModelNotFound."""
        return self._manager.default_version(name)

    def set_default(self, name: str, version: str) -> None:
        """Route unversioned requests for ``name`` to ``version``. Raises ModelNotFound."""
        self._manager.set_default(name, version)

    def split(self, name: str) -> dict[str, float]:
        """The traffic split of ``name`` ({} when none)."""
        return self._manager.split(name)

    def set_split(self, name: str, weights: dict[str, float]) -> None:
        """Weighted traffic split over loaded versions of ``name`` ({} = off)."""
        self._manager.set_split(name, weights)

    async def scale(self, name: str, version: str, instances: int) -> int:
        """Set the instance count of a model version; returns it."""
        return await self._manager.scale(name, version, instances)

    def load_of(self, name: str, version: str) -> VersionLoad:
        """Instances, queue depth and requests in flight of a version. Raises ModelNotFound."""
        return self._manager.load_of(name, version)

    def snapshot(self) -> list[VersionState]:
        """How every loaded version is served now (what a restart restores)."""
        return self._manager.snapshot()
