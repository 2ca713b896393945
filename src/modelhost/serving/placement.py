"""Placement: where the instances of a loaded version live, and who scales them.

    ModelManager.load ──► placement.open(path)   verified manifest (+ files when local)
                      ──► placement.place(...)   a Scheduler over the version's instances

- :class:`LocalPlacement` (``per-worker``, and the single process): this process loads the
  instances, warms them up and batches them (the manifest's scheduler).
- ``RemotePlacement`` (``shared``, ``remote.py``): the engine process holds the one copy and
  batches across every worker; this process reads the manifest only (its task codec needs
  no more) and checks that the engine serves the same bytes.

A placement is one module implementing :class:`Placement`; the manager does not know which
one it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from modelhost.archive.manifest import Manifest
from modelhost.errors import InvalidInput
from modelhost.monitor.metrics import ModelMetrics
from modelhost.serving.config import EngineConfig
from modelhost.serving.instance import ModelInstance
from modelhost.serving.loader import LoadedPredictor, Loader
from modelhost.serving.policy import BatchPolicy
from modelhost.serving.scheduler import Scheduler, scheduler_factory
from modelhost.serving.served import ModelInfo


@dataclass(frozen=True, slots=True)
class Opened:
    """An archive as a placement opened it: its manifest and sha256; ``root`` holds its
    extracted files (an empty directory when the placement needs none); ``codec_files``
    the verified bytes of the files the version's task codec reads."""

    manifest: Manifest
    sha256: str
    root: Path
    codec_files: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Placed:
    """A version placed: what the manager serves it with.

    ``scale(n)``: bring it to ``n`` instances (1..64 checked by the manager); returns the
    count it has then.
    """

    scheduler: Scheduler
    device: str
    load_s: float
    warmup_s: float
    scale: Callable[[int], Awaitable[int]]


class Placement(Protocol):
    """Where instances live (see the module docstring)."""

    @property
    def available(self) -> bool:
        """Whether its instances can be reached now (readiness)."""
        ...

    def open(self, path: Path, into: Path) -> Opened:
        """Verify an archive (blocking: run it in a thread). Raises ArchiveError."""
        ...

    async def place(
        self, info: ModelInfo, opened: Opened, policy: BatchPolicy, metrics: ModelMetrics
    ) -> Placed:
        """Start serving ``info``, whose manifest the manager has checked (runtime, task,
        trust); its ``device``, ``instances`` and timings are not known yet: take them from
        the result. Raises ModelhostError; nothing stays behind."""
        ...


class LocalPlacement:
    """Instances in this process: ``config.instances`` at load, loaded and warmed up in
    threads, batched by the manifest's scheduler."""

    def __init__(self, loader: Loader, config: EngineConfig) -> None:
        self._loader = loader
        self._config = config

    @property
    def available(self) -> bool:
        return True

    def open(self, path: Path, into: Path) -> Opened:
        opened = self._loader.open(path, into)
        return Opened(opened.manifest, opened.sha256, opened.root, opened.codec_files)

    async def place(
        self, info: ModelInfo, opened: Opened, policy: BatchPolicy, metrics: ModelMetrics
    ) -> Placed:
        manifest, root, loader = info.manifest, opened.root, self._loader
        factory = scheduler_factory(manifest.scheduler)
        loaded: list[LoadedPredictor] = []
        for _ in range(self._config.instances):
            loaded.append(await asyncio.to_thread(loader.predictor, root, manifest, policy))
        label = f"{info.name}-{info.version}"
        scheduler = factory(info, [ModelInstance(p.predictor, label) for p in loaded], metrics)
        scheduler.start()

        async def scale(instances: int) -> int:
            while scheduler.instance_count < instances:
                # New instances load and warm up before they take batches.
                new = await asyncio.to_thread(loader.predictor, root, manifest, policy)
                scheduler.add_instance(ModelInstance(new.predictor, label))
            while scheduler.instance_count > instances:
                await scheduler.remove_instance()  # it finishes its running batch first
            return scheduler.instance_count

        return Placed(
            scheduler=scheduler,
            device=loaded[0].predictor.device,
            load_s=sum(p.load_s for p in loaded),
            warmup_s=sum(p.warmup_s for p in loaded),
            scale=scale,
        )


def check_instances(instances: int) -> None:
    """Raises InvalidInput unless 1 <= ``instances`` <= 64."""
    if not 1 <= instances <= 64:
        raise InvalidInput(f"instances must be between 1 and 64, got {instances}")
