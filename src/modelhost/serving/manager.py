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

import numpy as np

from modelhost.archive.manifest import Manifest, TensorSignature
from modelhost.archive.open import ArchiveLimits, open_archive
from modelhost.config import Settings
from modelhost.errors import InvalidInput, ModelNotFound
from modelhost.monitor.metrics import Metrics
from modelhost.runtimes.base import LoadOptions, Predictor
from modelhost.runtimes.registry import PLATFORMS, get_runtime
from modelhost.serving.batcher import Batcher
from modelhost.serving.instance import ModelInstance
from modelhost.serving.policy import BatchPolicy, pick_version, torch_threads
from modelhost.types import ModelRef, TensorSpec

# A dynamic non-batch dim gets this size in the warm-up batch.
_WARMUP_DYNAMIC_DIM = 8


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


@dataclass(frozen=True, slots=True)
class ArchiveSource:
    """What to load: an archive, optionally under another identity (the registry's number).

    ``default``: True makes it the name's default version; False only when the name has no
    default yet (the first version loaded of a name is its default).
    """

    path: Path
    ref: ModelRef | None = None
    default: bool = False
    origin: str = "file"  # "file", "registry" or "upload": only registry ones are restorable


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
    """A model version being served: its description and its batcher."""

    info: ModelInfo
    batcher: Batcher
    new_instance: Callable[[], ModelInstance]
    source: ArchiveSource


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


def warmup_batch(specs: tuple[TensorSpec, ...], rows: int) -> dict[str, np.ndarray]:
    """Zeros shaped like the signature with ``rows`` items."""
    return {
        s.name: np.zeros(
            (rows, *(_WARMUP_DYNAMIC_DIM if d == -1 else d for d in s.shape[1:])), dtype=s.dtype
        )
        for s in specs
    }


def _version_order(version: str) -> tuple[int, int | str]:
    # Numeric versions sort as numbers and after non-numeric ones ("10" > "9" > "beta").
    return (1, int(version)) if version.isdigit() else (0, version)


def _specs(signatures: tuple[TensorSignature, ...]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name=s.name, dtype=s.dtype, shape=tuple(s.shape)) for s in signatures)


class ModelManager:
    """Holds every loaded model version; the default version of each name."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._default: dict[str, str] = {}
        self._split: dict[str, tuple[tuple[str, float], ...]] = {}
        self._workdir = Path(tempfile.mkdtemp(prefix="modelhost-"))

    async def load(self, source: ArchiveSource) -> ModelInfo:
        """Open, verify, load ``settings.instances`` instances, warm up, start batching.

        Raises:
            ArchiveError: the archive is unsafe or broken. ConfigError: runtime missing.
        """
        start = time.perf_counter()
        limits = ArchiveLimits(
            max_member_bytes=self._settings.max_archive_member_bytes,
            max_total_bytes=self._settings.max_archive_total_bytes,
        )
        into = Path(tempfile.mkdtemp(dir=self._workdir))
        opened = await asyncio.to_thread(open_archive, source.path, into, limits)
        manifest = opened.manifest
        if source.ref is not None:
            manifest = manifest.model_copy(
                update={"name": source.ref.name, "version": source.ref.version or manifest.version}
            )
        runtime = get_runtime(manifest.runtime)
        options = load_options(self._settings, manifest)
        predictors: list[Predictor] = [
            await asyncio.to_thread(runtime.load, opened.root, manifest, options)
            for _ in range(self._settings.instances)
        ]
        load_s = time.perf_counter() - start
        policy = batch_policy(manifest, self._settings)
        inputs = _specs(manifest.inputs)
        warm_start = time.perf_counter()
        for predictor in predictors:
            for rows in sorted({1, policy.max_batch_size}):
                await asyncio.to_thread(predictor.predict, warmup_batch(inputs, rows))
        warmup_s = time.perf_counter() - warm_start
        info = ModelInfo(
            name=manifest.name,
            version=manifest.version,
            manifest=manifest,
            inputs=inputs,
            outputs=_specs(manifest.outputs),
            platform=PLATFORMS.get(manifest.runtime, manifest.runtime),
            device=predictors[0].device,
            instances=len(predictors),
            policy=policy,
            load_s=load_s,
            warmup_s=warmup_s,
        )
        label = f"{manifest.name}-{manifest.version}"
        instances = [ModelInstance(p, label) for p in predictors]

        def new_instance() -> ModelInstance:  # blocking: load + warm up, for scaling out
            predictor = runtime.load(opened.root, manifest, options)
            for rows in sorted({1, policy.max_batch_size}):
                predictor.predict(warmup_batch(inputs, rows))
            return ModelInstance(predictor, label)

        model_metrics = self._metrics.for_model(manifest.name, manifest.version)
        batcher = Batcher(manifest.name, manifest.version, instances, policy, model_metrics)
        previous = self._models.get(manifest.name, {}).get(manifest.version)
        batcher.start()
        self._models.setdefault(manifest.name, {})[manifest.version] = LoadedModel(
            info, batcher, new_instance, source
        )
        if source.default or manifest.name not in self._default:
            self._default[manifest.name] = manifest.version
        model_metrics.ready.set(1)
        if previous is not None:
            await previous.batcher.close(self._settings.drain_timeout_s)
        return info

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
        model = self.get(name, version)
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
        await model.batcher.close(self._settings.drain_timeout_s)

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
