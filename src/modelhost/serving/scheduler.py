"""The scheduler seam: how the requests of one model version become model calls.

A scheduler is chosen by name from the manifest (``scheduler``) and built once per loaded
version over its instances. ``dynamic`` batches whole requests (``serving/batcher.py``). A
new scheduler (``continuous``: iteration-level batching for generative models) is one
module implementing :class:`Scheduler` and one line in ``_SCHEDULERS``.

``submit`` is for one answer; ``stream`` yields the answer in chunks (a one-answer
scheduler yields exactly one). Both refuse with ``Overloaded`` when the queue is full and
``ModelNotReady`` while draining; a request whose awaiting task is cancelled is dropped
before it costs compute.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Protocol

from modelhost.errors import ArchiveError
from modelhost.monitor.metrics import ModelMetrics
from modelhost.serving.instance import ModelInstance
from modelhost.serving.served import ModelInfo
from modelhost.types import InferRequest, InferResult


class Scheduler(Protocol):
    """Queue + dispatch for one model version over its instances."""

    @property
    def instance_count(self) -> int: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    def start(self) -> None: ...

    def submit(self, request: InferRequest, items: int) -> asyncio.Future[InferResult]: ...

    def stream(self, request: InferRequest, items: int) -> AsyncIterator[InferResult]: ...

    def add_instance(self, instance: ModelInstance) -> None: ...

    async def remove_instance(self) -> None: ...

    async def close(self, timeout_s: float) -> None: ...


class SchedulerFactory(Protocol):
    """What a scheduler module exports: build one for a loaded version."""

    def __call__(
        self, info: ModelInfo, instances: list[ModelInstance], metrics: ModelMetrics
    ) -> Scheduler: ...


# name -> "module:attribute" of its factory; imported when first used.
_SCHEDULERS: Mapping[str, str] = MappingProxyType(
    {"dynamic": "modelhost.serving.batcher:build"},
)


def scheduler_names() -> list[str]:
    """Names a manifest may give as ``scheduler``."""
    return sorted(_SCHEDULERS)


def scheduler_factory(name: str) -> SchedulerFactory:
    """The factory of scheduler ``name``.

    Raises:
        ArchiveError: no scheduler has that name (the archive asks for one this server
            does not have).
    """
    target = _SCHEDULERS.get(name)
    if target is None:
        raise ArchiveError(
            f"scheduler {name!r} is not one of this server's: {', '.join(scheduler_names())}"
        )
    module, attribute = target.split(":")
    factory: SchedulerFactory = getattr(importlib.import_module(module), attribute)
    return factory
