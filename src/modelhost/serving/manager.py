"""ModelManager: load archives into instances + a batcher, look models up, unload."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelhost.archive.manifest import Manifest
from modelhost.archive.open import ArchiveLimits, OpenedArchive, open_archive
from modelhost.config import Settings
from modelhost.errors import ArchiveError, Conflict, InvalidInput, ModelNotFound, UntrustedCode
from modelhost.monitor.metrics import Metrics
from modelhost.runtimes.base import LoadOptions, Predictor, Runtime
from modelhost.runtimes.registry import PLATFORMS, get_runtime, runs_code
from modelhost.serving.batcher import Batcher
from modelhost.serving.instance import ModelInstance
from modelhost.serving.policy import BatchPolicy, pick_version, torch_threads
from modelhost.serving.warmup import specs_of, warm_up
from modelhost.types import ModelRef, TensorSpec


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What frontends may know of a loaded model version (all computed at load)."""

    name: str
    version: str
    manifest: Manifest
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str
    device: str
    instances: int
    policy: BatchPolicy
    load_s: float
    warmup_s: float
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class ArchiveSource:
    """What to load: an archive, optionally under another identity (the registry's number).

    ``default``: True makes it the name's default version; False only when the name has no
    default yet (the first version loaded of a name is its default). ``sha256``: the
    archive's digest as the registry recorded it; loading refuses any other bytes.
    """

    path: Path
    ref: ModelRef | None = None
    default: bool = False
    origin: str = "file"  # "file", "registry" or "upload": only registry ones are restorable
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class VersionState:
    """How one loaded version is served now (what a restart must restore)."""

    name: str
    version: str
    origin: str
    is_default: bool
    weight: float
    instances: int


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model version being served: its description, its batcher, its extracted files."""

    info: ModelInfo
    batcher: Batcher
    new_instance: Callable[[], ModelInstance]
    source: ArchiveSource
    root: Path


@dataclass(frozen=True, slots=True)
class Detached:
    """A version taken out of routing but not yet drained: what ``reattach`` restores."""

    model: LoadedModel
    default: str | None
    split: tuple[tuple[str, float], ...] | None


def batch_policy(manifest: Manifest, settings: Settings) -> BatchPolicy:
    """The archive's batching defaults with the server settings' overrides applied."""
    b = manifest.batching
    return BatchPolicy(
        max_batch_size=settings.max_batch_size or b.max_batch_size,
        max_batch_delay_s=(
            settings.max_batch_delay_ms
            if settings.max_batch_delay_ms is not None
            else b.max_batch_delay_ms
        )
        / 1000.0,
        max_queue=settings.max_queue or b.max_queue,
        max_batch_elements=settings.max_batch_elements,
    )


def load_options(settings: Settings, manifest: Manifest) -> LoadOptions:
    """How the server loads ``manifest``: device and thread counts after its policies."""
    return LoadOptions(
        device=settings.device if settings.device != "auto" else manifest.device,
        torch_threads=torch_threads(
            settings.torch_threads, len(os.sched_getaffinity(0)), settings.instances
        ),
        onnx_intra_op_threads=settings.onnx_intra_op_threads,
    )


def _version_order(version: str) -> tuple[int, int | str]:
    # Numeric versions sort as numbers and after non-numeric ones ("10" > "9" > "beta").
    return (1, int(version)) if version.isdigit() else (0, version)


def _identity(opened: OpenedArchive, source: ArchiveSource) -> Manifest:
    """The manifest under the identity it is served as; checks the registry's digest."""
    manifest = opened.manifest
    if source.ref is not None:
        manifest = manifest.model_copy(
            update={"name": source.ref.name, "version": source.ref.version or manifest.version}
        )
    if source.sha256 is not None and opened.sha256 != source.sha256:
        raise ArchiveError(
            f"{manifest.name}:{manifest.version}: the stored archive {opened.path} has sha256 "
            f"{opened.sha256[:12]}…, not the {source.sha256[:12]}… the registry recorded; it "
            "was changed on disk: refusing to serve it (push the archive again)"
        )
    return manifest


class ModelManager:
    """Holds every loaded model version; the default version of each name."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._default: dict[str, str] = {}
        self._split: dict[str, tuple[tuple[str, float], ...]] = {}
        self._workdir = Path(tempfile.mkdtemp(prefix="modelhost-"))
        self._limits = ArchiveLimits(
            max_member_bytes=settings.max_archive_member_bytes,
            max_total_bytes=settings.max_archive_total_bytes,
        )

    async def load(self, source: ArchiveSource) -> ModelInfo:
        """Open, verify, load ``settings.instances`` instances, warm up, start batching.

        The one gate every archive passes (file, registry, upload): digests, the
        registry's digest when it recorded one, the trust model, the signature.
        Loading a ``name:version`` already served with the same bytes changes nothing;
        with other bytes it is refused. On failure nothing stays behind.

        Raises:
            ArchiveError: unsafe, broken or tampered archive, or a model that does not
                keep its manifest's signature. UntrustedCode: the format runs code and
                ``trust_code`` is off. Conflict: the name:version is served with other
                bytes. ConfigError: runtime missing.
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
        opened = await asyncio.to_thread(open_archive, source.path, into, self._limits)
        manifest = _identity(opened, source)
        same = self._check_identity(manifest, opened.sha256)
        if same is not None:
            return same
        if runs_code(manifest.runtime) and not self._settings.trust_code:
            raise UntrustedCode(
                f"{manifest.name}:{manifest.version} is a {manifest.runtime} archive, which "
                "runs code of its author when loaded; serve it with --trust-code "
                "(MODELHOST_TRUST_CODE=1) if you trust its author, or export it to ONNX"
            )
        runtime = get_runtime(manifest.runtime)
        options = load_options(self._settings, manifest)
        policy = batch_policy(manifest, self._settings)
        predictors: list[Predictor] = []
        warmup_s = 0.0
        for _ in range(self._settings.instances):
            predictor = await asyncio.to_thread(runtime.load, opened.root, manifest, options)
            predictors.append(predictor)
            warm_start = time.perf_counter()
            await asyncio.to_thread(self._warm_up, predictor, manifest, policy)
            warmup_s += time.perf_counter() - warm_start
        info = ModelInfo(
            name=manifest.name,
            version=manifest.version,
            manifest=manifest,
            inputs=specs_of(manifest.inputs),
            outputs=specs_of(manifest.outputs),
            platform=PLATFORMS.get(manifest.runtime, manifest.runtime),
            device=predictors[0].device,
            instances=len(predictors),
            policy=policy,
            load_s=time.perf_counter() - start - warmup_s,
            warmup_s=warmup_s,
            sha256=opened.sha256,
        )
        same = self._check_identity(manifest, opened.sha256)  # another load may have won
        if same is not None:
            return same
        return self._install(info, predictors, runtime, options, source, opened.root)

    def _warm_up(self, predictor: Predictor, manifest: Manifest, policy: BatchPolicy) -> None:
        warm_up(predictor, manifest, policy, self._settings.warmup_max_elements)

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

    def _install(
        self,
        info: ModelInfo,
        predictors: list[Predictor],
        runtime: Runtime,
        options: LoadOptions,
        source: ArchiveSource,
        root: Path,
    ) -> LoadedModel:
        label = f"{info.name}-{info.version}"
        manifest, policy = info.manifest, info.policy

        def new_instance() -> ModelInstance:  # blocking: load + warm up, for scaling out
            predictor = runtime.load(root, manifest, options)
            self._warm_up(predictor, manifest, policy)
            return ModelInstance(predictor, label)

        model_metrics = self._metrics.for_model(info.name, info.version)
        instances = [ModelInstance(p, label) for p in predictors]
        batcher = Batcher(info.name, info.version, instances, policy, model_metrics)
        batcher.start()
        loaded = LoadedModel(info, batcher, new_instance, source, root)
        self._models.setdefault(info.name, {})[info.version] = loaded
        if source.default or info.name not in self._default:
            self._default[info.name] = info.version
        model_metrics.ready.set(1)
        return loaded

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The loaded model ``name`` at ``version`` (default version when ``None``).

        Raises:
            ModelNotFound: no such model or version is loaded.
        """
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model {name!r} is not loaded (loaded: {known})")
        if version is not None:
            chosen = version
        elif name in self._split:
            chosen = pick_version(self._split[name], random.random())
        else:
            chosen = self._default[name]
        model = versions.get(chosen)
        if model is None:
            raise ModelNotFound(
                f"model {name!r} has no version {chosen!r} (loaded: {', '.join(sorted(versions))})"
            )
        return model

    def snapshot(self) -> list[VersionState]:
        """Every loaded version with its routing (default, split weight) and scale."""
        return [
            VersionState(
                name=m.info.name,
                version=m.info.version,
                origin=m.source.origin,
                is_default=self._default.get(m.info.name) == m.info.version,
                weight=dict(self._split.get(m.info.name, ())).get(m.info.version, 0.0),
                instances=m.batcher.instance_count,
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
        their running batch first.
        """
        if not 1 <= instances <= 64:
            raise InvalidInput(f"instances must be between 1 and 64, got {instances}")
        model = self.get(name, version)
        while model.batcher.instance_count < instances:
            model.batcher.add_instance(await asyncio.to_thread(model.new_instance))
        while model.batcher.instance_count > instances:
            await model.batcher.remove_instance()
        return model.batcher.instance_count

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
        await detached.model.batcher.close(self._settings.drain_timeout_s)
        shutil.rmtree(detached.model.root, ignore_errors=True)

    def all(self) -> list[LoadedModel]:
        """Every loaded model version, sorted by name then version."""
        return [self._models[n][v] for n in sorted(self._models) for v in sorted(self._models[n])]

    def versions(self, name: str) -> list[str]:
        """Loaded versions of ``name`` (empty when none)."""
        return sorted(self._models.get(name, {}))

    async def close(self) -> None:
        """Drain every batcher, stop every worker, remove extracted files."""
        for model in self.all():
            self._metrics.for_model(model.info.name, model.info.version).ready.set(0)
            await model.batcher.close(self._settings.drain_timeout_s)
        self._models.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)
