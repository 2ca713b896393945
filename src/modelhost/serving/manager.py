"""ModelManager: the served state (versions, defaults, splits) and the load gate.

The data plane (``dataplane.py``) reads it; the control plane (``controlplane.py``)
changes it. It receives a :class:`Loader` and an :class:`EngineConfig`, not the settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from modelhost.archive.manifest import Manifest
from modelhost.errors import ArchiveError, Conflict, InvalidInput, ModelNotFound
from modelhost.monitor.metrics import Metrics
from modelhost.runtimes.registry import PLATFORMS
from modelhost.serving.config import EngineConfig
from modelhost.serving.loader import Loader, batch_policy
from modelhost.serving.placement import LocalPlacement, Opened, Placement, check_instances
from modelhost.serving.policy import pick_version
from modelhost.serving.scheduler import Scheduler, scheduler_factory
from modelhost.serving.served import ArchiveSource, ModelInfo, VersionLoad, VersionState
from modelhost.serving.warmup import specs_of


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version being served: its description, its scheduler, its extracted files."""

    info: ModelInfo
    scheduler: Scheduler
    scale: Callable[[int], Awaitable[int]]
    source: ArchiveSource
    root: Path


@dataclass(frozen=True, slots=True)
class Detached:
    """A version taken out of routing but not yet drained: what ``reattach`` restores."""

    model: LoadedModel
    default: str | None
    split: tuple[tuple[str, float], ...] | None


def _version_order(version: str) -> tuple[int, int | str]:
    # Numeric versions sort as numbers and after non-numeric ones ("10" > "9" > "beta").
    return (1, int(version)) if version.isdigit() else (0, version)


def _identity(opened: Opened, source: ArchiveSource) -> Manifest:
    """The manifest under the identity it is served as; checks the registry's digest."""
    manifest = opened.manifest
    if source.ref is not None:
        manifest = manifest.model_copy(
            update={"name": source.ref.name, "version": source.ref.version or manifest.version}
        )
    if source.sha256 is not None and opened.sha256 != source.sha256:
        raise ArchiveError(
            f"{manifest.name}:{manifest.version}: the stored archive {source.path} has sha256 "
            f"{opened.sha256[:12]}…, not the {source.sha256[:12]}… the registry recorded; it "
            "was changed on disk: refusing to serve it (push the archive again)"
        )
    return manifest


class ModelManager:
    """Holds every loaded model version; the default version and split of each name."""

    def __init__(
        self,
        loader: Loader,
        config: EngineConfig,
        metrics: Metrics,
        placement: Placement | None = None,
    ) -> None:
        self._loader = loader
        self._config = config
        self.placement = placement or LocalPlacement(loader, config)
        self._metrics = metrics
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._default: dict[str, str] = {}
        self._split: dict[str, tuple[tuple[str, float], ...]] = {}
        self._workdir = Path(tempfile.mkdtemp(prefix="modelhost-"))

    async def load(self, source: ArchiveSource) -> ModelInfo:
        """Open, verify, load ``config.instances`` instances, warm up, start scheduling.

        The one gate every archive passes (file, registry, upload): digests, the
        registry's digest when it recorded one, the trust model, the scheduler name, the
        signature. Loading a ``name:version`` already served with the same bytes changes
        nothing; with other bytes it is refused. On failure nothing stays behind.

        Raises:
            ArchiveError: unsafe, broken or tampered archive, an unknown scheduler, or a
                model that does not keep its manifest's signature. UntrustedCode: the
                format runs code and ``trust_code`` is off. Conflict: the name:version is
                served with other bytes. ConfigError: runtime missing.
        """
        into = Path(tempfile.mkdtemp(dir=self._workdir))
        try:
            loaded = await self._load(source, into)
        except BaseException:
            shutil.rmtree(into, ignore_errors=True)
            raise
        if loaded.root != into:  # the same bytes were served already
            shutil.rmtree(into, ignore_errors=True)
        return loaded.info

    async def _load(self, source: ArchiveSource, into: Path) -> LoadedModel:
        start = time.perf_counter()
        opened = await asyncio.to_thread(self.placement.open, source.path, into)
        manifest = _identity(opened, source)
        same = self._check_identity(manifest, opened.sha256)
        if same is not None:
            return same
        self._loader.check(manifest)
        scheduler_factory(manifest.scheduler)  # ArchiveError for a scheduler we lack
        policy = batch_policy(manifest, self._config)
        planned = ModelInfo(
            name=manifest.name,
            version=manifest.version,
            manifest=manifest,
            inputs=specs_of(manifest.inputs),
            outputs=specs_of(manifest.outputs),
            platform=PLATFORMS.get(manifest.runtime, manifest.runtime),
            device="",
            instances=0,
            policy=policy,
            load_s=0.0,
            warmup_s=0.0,
            sha256=opened.sha256,
            scheduler=manifest.scheduler,
            codec_files=opened.codec_files,
        )
        padded = bool(manifest.batching.pad)
        model_metrics = self._metrics.for_model(planned.name, planned.version, padded)
        placed = await self.placement.place(planned, opened, policy, model_metrics)
        info = dataclasses.replace(
            planned,
            device=placed.device,
            instances=placed.scheduler.instance_count,
            load_s=time.perf_counter() - start - placed.warmup_s,
            warmup_s=placed.warmup_s,
        )
        same = self._check_identity(manifest, opened.sha256)  # another load may have won
        if same is not None:
            await placed.scheduler.close(0.0)
            return same
        model = LoadedModel(info, placed.scheduler, placed.scale, source, opened.root)
        self._models.setdefault(info.name, {})[info.version] = model
        if source.default or info.name not in self._default:
            self._default[info.name] = info.version
        model_metrics.ready.set(1)
        return model

    def _check_identity(self, manifest: Manifest, sha256: str) -> LoadedModel | None:
        """The loaded model when ``name:version`` is served with these bytes already.

        Raises:
            Conflict: it is served with other bytes (one name:version, one content).
        """
        current = self._models.get(manifest.name, {}).get(manifest.version)
        if current is None:
            return None
        if current.info.sha256 != sha256:
            raise Conflict(
                f"{manifest.name}:{manifest.version} is already served from other bytes "
                f"(sha256 {current.info.sha256[:12]}…, this archive {sha256[:12]}…); unload "
                "it first, or give the archive another version"
            )
        return current

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The loaded model ``name`` at ``version`` (the default version when ``None``).

        Never random: this is what reads (metadata, describe) see. Requests are routed
        by :meth:`route`, where a traffic split applies.

        Raises:
            ModelNotFound: no such model or version is loaded.
        """
        return self._pick(name, version, split=False)

    def route(self, name: str, version: str | None = None) -> LoadedModel:
        """The version that answers a request: pinned, else drawn by the split, else default.

        Raises:
            ModelNotFound: no such model or version is loaded.
        """
        return self._pick(name, version, split=True)

    def _pick(self, name: str, version: str | None, split: bool) -> LoadedModel:
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model {name!r} is not loaded (loaded: {known})")
        if version is not None:
            chosen = version
        elif split and name in self._split:
            chosen = pick_version(self._split[name], random.random())
        else:
            chosen = self._default[name]
        model = versions.get(chosen)
        if model is None:
            raise ModelNotFound(
                f"model {name!r} has no version {chosen!r} (loaded: {', '.join(sorted(versions))})"
            )
        return model

    def load_of(self, name: str, version: str) -> VersionLoad:
        """Instances, queue depth and requests in flight of a loaded version."""
        s = self.get(name, version).scheduler
        return VersionLoad(s.instance_count, s.queue_depth, s.in_flight)

    def snapshot(self) -> list[VersionState]:
        """Every loaded version with its routing (default, split weight) and scale."""
        return [
            VersionState(
                name=m.info.name,
                version=m.info.version,
                origin=m.source.origin,
                is_default=self._default.get(m.info.name) == m.info.version,
                weight=dict(self._split.get(m.info.name, ())).get(m.info.version, 0.0),
                instances=m.scheduler.instance_count,
            )
            for m in self.all()
        ]

    def default_version(self, name: str) -> str:
        """The version unversioned requests for ``name`` go to when no split is set.

        Raises:
            ModelNotFound: ``name`` is not loaded.
        """
        self.get(name, self._default.get(name))
        return self._default[name]

    def set_default(self, name: str, version: str) -> None:
        """Route unversioned requests for ``name`` to ``version`` (must be loaded)."""
        self.get(name, version)
        self._default[name] = version

    def set_split(self, name: str, weights: dict[str, float]) -> None:
        """Send unversioned requests for ``name`` to loaded versions by weight ({} = off).

        Raises:
            InvalidInput: negative weights or none positive. ModelNotFound: a version is
                not loaded.
        """
        if not weights:
            self._split.pop(name, None)
            return
        for version, weight in weights.items():
            self.get(name, version)
            if not weight >= 0:
                raise InvalidInput(f"weights.{version} must be a number >= 0, got {weight}")
        if sum(weights.values()) <= 0:
            raise InvalidInput("weights must add up to more than 0")
        self._split[name] = tuple((v, float(w)) for v, w in sorted(weights.items()) if w > 0)

    def split(self, name: str) -> dict[str, float]:
        """The traffic split of ``name`` ({} when none)."""
        return dict(self._split.get(name, ()))

    async def scale(self, name: str, version: str, instances: int) -> int:
        """Grow or shrink ``name:version`` to ``instances`` instances (1..64); returns the count.

        New instances load and warm up before they take batches; removed ones finish
        their running batch first. A version placed in the shared engine process is
        scaled there: here it only reads the engine's count.
        """
        check_instances(instances)
        return await self.get(name, version).scale(instances)

    async def unload(self, name: str, version: str) -> None:
        """Stop routing to ``name:version``, finish what it accepted, stop its workers.

        When it was the default, the highest remaining version becomes the default.

        Raises:
            ModelNotFound: not loaded.
        """
        await self.drain(self.detach(name, version))

    def detach(self, name: str, version: str) -> Detached:
        """Take ``name:version`` out of routing (reversible with :meth:`reattach`).

        Raises:
            ModelNotFound: not loaded.
        """
        model = self.get(name, version)
        detached = Detached(model, self._default.get(name), self._split.get(name))
        versions = self._models[name]
        del versions[version]
        if name in self._split:
            rest = {v: w for v, w in self._split[name] if v != version}
            self._split.pop(name)
            if rest:
                self._split[name] = tuple(rest.items())
        if not versions:
            del self._models[name]
            del self._default[name]
        elif self._default[name] == version:
            self._default[name] = max(versions, key=_version_order)
        self._metrics.for_model(name, version).ready.set(0)
        return detached

    def reattach(self, detached: Detached) -> None:
        """Undo :meth:`detach`: route to the version again as before."""
        info = detached.model.info
        self._models.setdefault(info.name, {})[info.version] = detached.model
        if detached.default is not None:
            self._default[info.name] = detached.default
        if detached.split is not None:
            self._split[info.name] = detached.split
        self._metrics.for_model(info.name, info.version).ready.set(1)

    async def drain(self, detached: Detached) -> None:
        """Finish what a detached version accepted, stop its workers, remove its files."""
        await detached.model.scheduler.close(self._config.drain_timeout_s)
        shutil.rmtree(detached.model.root, ignore_errors=True)

    def all(self) -> list[LoadedModel]:
        """Every loaded model version, sorted by name then version."""
        return [self._models[n][v] for n in sorted(self._models) for v in sorted(self._models[n])]

    def versions(self, name: str) -> list[str]:
        """Loaded versions of ``name`` (empty when none)."""
        return sorted(self._models.get(name, {}))

    async def close(self) -> None:
        """Drain every scheduler, stop every worker, remove extracted files."""
        for model in self.all():
            self._metrics.for_model(model.info.name, model.info.version).ready.set(0)
            await model.scheduler.close(self._config.drain_timeout_s)
        self._models.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)
