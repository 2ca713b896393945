"""What the management API reads and changes of the served models, wherever they run.

    ManagementAPI ──► ManagedModels ──┬─► LocalModels(engine)        one process
                                      └─► ClusterModels (api/)       N workers, each one
                                                                     LocalModels behind a channel

Every change returns what undoing it needs (the previous default, split or instance count),
so a caller can make a change and take it back without reading the state first. A version
is unloaded in two steps, ``detach`` (out of routing, reversible with ``reattach``) and
``drain`` (finish what it accepted, stop it), so that the detach can be undone until the
change is persisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from modelhost.errors import ModelNotFound
from modelhost.runtimes.registry import runtime_entry
from modelhost.serving.controlplane import ControlPlane
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.manager import Detached
from modelhost.serving.served import ArchiveSource, ModelInfo, VersionState


@dataclass(frozen=True, slots=True)
class VersionView:
    """One loaded version as the management API describes it."""

    version: str
    runtime: str
    device: str
    instances: int
    queue_depth: int
    in_flight: int
    scheduler: str
    max_batch_size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What one worker process reports of a model (its own state, its own load)."""

    pid: int
    model: ModelView


@dataclass(frozen=True, slots=True)
class ModelView:
    """A model's versions, default and split; ``workers``: each worker's own report
    (empty in a single process)."""

    name: str
    default_version: str
    split: dict[str, float]
    versions: tuple[VersionView, ...]
    workers: tuple[WorkerView, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a load did: ``fresh`` False when the version was served already (same bytes);
    ``previous_default`` the name's default before (None: a new name); ``runs_code`` True
    when serving it runs its author's code (``--trust-code`` let it), ``sha256`` its bytes."""

    name: str
    version: str
    fresh: bool
    previous_default: str | None
    runs_code: bool = False
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One loaded version, for the start-up lines: where, how many, how long."""

    name: str
    version: str
    runtime: str
    device: str
    instances: int
    load_s: float
    warmup_s: float
    # What its requests carry (the start-up hint's example): its preprocessing's kind,
    # "image", "text" or "tabular", or "tensors" when it has none.
    takes: str = "tensors"
    # Serving it runs its author's code (--trust-code let it); the archive's sha256.
    runs_code: bool = False
    sha256: str = ""

    @classmethod
    def of(cls, info: ModelInfo) -> LoadReport:
        """The report of a freshly loaded version."""
        return cls(info.name, info.version, info.manifest.runtime, info.device,
                   info.instances, info.load_s, info.warmup_s, _takes(info),
                   runtime_entry(info.manifest.runtime).runs_code, info.sha256)  # fmt: skip


def _takes(info: ModelInfo) -> str:
    prep = info.manifest.preprocessing
    return "tensors" if prep is None else prep.kind


class ManagedModels(Protocol):
    """The reads and changes of the management API (see the module docstring).

    Raises (every method): ModelNotFound for an unknown name or version; the changes
    also InvalidInput, Conflict, ArchiveError, UntrustedCode as the engine does, and
    ModelNotReady when the change could not reach every process (then nothing changed).
    """

    def names(self) -> list[str]:
        """Names of the loaded models, sorted."""
        ...

    def snapshot(self) -> list[VersionState]:
        """How every loaded version is served now (what the registry persists)."""
        ...

    async def describe(self, name: str) -> ModelView:
        """Versions, default, split, instances and load of ``name``."""
        ...

    async def load(self, source: ArchiveSource) -> LoadResult:
        """Load an archive (a new model or version); the same bytes again change nothing."""
        ...

    async def unload(self, name: str, version: str) -> None:
        """Detach and drain ``name:version``."""
        ...

    async def detach(self, name: str, version: str) -> None:
        """Stop routing to ``name:version``; reversible until :meth:`drain`."""
        ...

    async def reattach(self, name: str, version: str) -> None:
        """Route to a detached version again, as before."""
        ...

    async def drain(self, name: str, version: str) -> None:
        """Finish what a detached version accepted and stop it."""
        ...

    async def set_default(self, name: str, version: str) -> str:
        """Make ``version`` the default of ``name``; returns the previous default."""
        ...

    async def set_split(self, name: str, weights: dict[str, float]) -> dict[str, float]:
        """Set the traffic split of ``name`` ({} = off); returns the previous one."""
        ...

    async def scale(self, name: str, version: str, instances: int) -> int:
        """Set the instance count of ``name:version``; returns the previous count."""
        ...


class LocalModels:
    """:class:`ManagedModels` over one engine's data and control planes."""

    def __init__(self, data: DataPlane, control: ControlPlane) -> None:
        self._data = data
        self._control = control
        self._detached: dict[tuple[str, str], Detached] = {}

    def names(self) -> list[str]:
        return sorted({m.name for m in self._data.models()})

    def snapshot(self) -> list[VersionState]:
        return self._control.snapshot()

    async def describe(self, name: str) -> ModelView:
        default = self._control.default_version(name)
        versions = []
        for version in self._data.versions(name):
            info = self._data.model(name, version)
            busy = self._control.load_of(name, version)
            versions.append(
                VersionView(
                    version=version,
                    runtime=info.manifest.runtime,
                    device=info.device,
                    instances=busy.instances,
                    queue_depth=busy.queue_depth,
                    in_flight=busy.in_flight,
                    scheduler=info.scheduler,
                    max_batch_size=info.policy.max_batch_size,
                    sha256=info.sha256,
                )
            )
        return ModelView(name, default, self._control.split(name), tuple(versions))

    async def load(self, source: ArchiveSource) -> LoadResult:
        return (await self.load_info(source))[0]

    async def load_info(self, source: ArchiveSource) -> tuple[LoadResult, ModelInfo]:
        """:meth:`load`, with the loaded version's :class:`ModelInfo` (start-up lines)."""
        before = self._control.snapshot()
        served = {(s.name, s.version) for s in before}
        defaults = {s.name: s.version for s in before if s.is_default}
        info = await self._control.load(source)
        fresh = (info.name, info.version) not in served
        runs_code = runtime_entry(info.manifest.runtime).runs_code
        result = LoadResult(
            info.name, info.version, fresh, defaults.get(info.name), runs_code, info.sha256
        )
        return result, info

    async def unload(self, name: str, version: str) -> None:
        await self._control.unload(name, version)

    async def detach(self, name: str, version: str) -> None:
        self._detached[(name, version)] = self._control.detach(name, version)

    async def reattach(self, name: str, version: str) -> None:
        self._control.reattach(self._take(name, version))

    async def drain(self, name: str, version: str) -> None:
        await self._control.drain(self._take(name, version))

    def _take(self, name: str, version: str) -> Detached:
        detached = self._detached.pop((name, version), None)
        if detached is None:
            raise ModelNotFound(f"{name}:{version} is not detached")
        return detached

    async def set_default(self, name: str, version: str) -> str:
        previous = self._control.default_version(name)
        self._control.set_default(name, version)
        return previous

    async def set_split(self, name: str, weights: dict[str, float]) -> dict[str, float]:
        self._control.default_version(name)  # ModelNotFound for an unknown name
        previous = self._control.split(name)
        self._control.set_split(name, weights)
        return previous

    async def scale(self, name: str, version: str, instances: int) -> int:
        previous = self._control.load_of(name, version).instances
        await self._control.scale(name, version, instances)
        return previous


async def apply_routing(models: ManagedModels, wanted: list[VersionState]) -> None:
    """Scale, default and split the loaded versions as ``wanted`` says (what a restart
    restores, what a restarted worker converges to). Versions must be loaded already.

    Raises:
        ModelNotFound: a version of ``wanted`` is not loaded.
    """
    now = {(s.name, s.version): s for s in models.snapshot()}
    for s in wanted:
        current = now.get((s.name, s.version))
        if current is None:
            raise ModelNotFound(f"{s.name}:{s.version} is not loaded; load it before routing")
        if current.instances != s.instances:
            await models.scale(s.name, s.version, s.instances)
        if s.is_default and not current.is_default:
            await models.set_default(s.name, s.version)
    for name in sorted({s.name for s in wanted}):
        weights = {s.version: s.weight for s in wanted if s.name == name and s.weight > 0}
        split = {v: s.weight for (n, v), s in now.items() if n == name and s.weight > 0}
        if weights != split:
            await models.set_split(name, weights)
