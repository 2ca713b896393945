"""EngineConfig: what the serving core needs of the server settings, and nothing more.

The engine, its manager and its loader take this, not the whole ``Settings``: the serving
core cannot come to depend on an HTTP limit or a registry URL by accident, and a worker
process can be given exactly this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelhost.config import Settings
from modelhost.serving.policy import onnx_intra_op_threads, torch_threads


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How models are loaded, batched and stopped.

    Batching overrides: ``None`` keeps the archive's value. Thread counts: 0 = the
    runtime's own choice (torch: the cores left after the event loop's one).
    """

    instances: int = 1
    device: str = "auto"
    torch_threads: int = 1
    onnx_intra_op_threads: int = 0
    onnx_inter_op_threads: int = 1
    onnx_allow_spinning: bool = False
    max_batch_size: int | None = None
    max_batch_delay_ms: float | None = None
    max_queue: int | None = None
    max_batch_elements: int = 16 * 1024**2
    warmup_max_elements: int = 1024**2
    drain_timeout_s: float = 30.0
    trust_code: bool = False
    max_archive_member_bytes: int = 2 * 1024**3
    max_archive_total_bytes: int = 4 * 1024**3


def engine_config(settings: Settings, workers: int = 1) -> EngineConfig:
    """The serving core's part of ``settings`` for one of ``workers`` front processes,
    with the thread policy applied: automatic thread counts share the cores among the
    workers, so N workers do not run N x cores intra-op threads.
    """
    cores = len(os.sched_getaffinity(0))
    return EngineConfig(
        instances=settings.instances,
        device=settings.device,
        torch_threads=torch_threads(
            settings.torch_threads, max(1, cores // max(1, workers)), settings.instances
        ),
        onnx_intra_op_threads=onnx_intra_op_threads(
            settings.onnx_intra_op_threads, cores, workers, settings.instances
        ),
        onnx_inter_op_threads=settings.onnx_inter_op_threads,
        onnx_allow_spinning=settings.onnx_allow_spinning,
        max_batch_size=settings.max_batch_size or None,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_queue=settings.max_queue or None,
        max_batch_elements=settings.max_batch_elements,
        warmup_max_elements=settings.warmup_max_elements,
        drain_timeout_s=settings.drain_timeout_s,
        trust_code=settings.trust_code,
        max_archive_member_bytes=settings.max_archive_member_bytes,
        max_archive_total_bytes=settings.max_archive_total_bytes,
    )
