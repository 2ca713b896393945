"""Pure batching and back-pressure decisions; the asyncio code around them only waits."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """Limits of one model version's batcher.

    ``max_batch_elements`` bounds the tensor elements of a batch (all inputs), so that
    ``max_batch_size`` large requests cannot add up to a batch no memory holds.
    ``pad``: inputs whose axis 1 may differ between requests, and the value to pad them
    with (the manifest's ``batching.pad``); requests of one :func:`length_bucket` batch
    together.
    """

    max_batch_size: int
    max_batch_delay_s: float
    max_queue: int
    max_batch_elements: int = 16 * 1024**2
    pad: Mapping[str, float] = field(default_factory=dict)


def length_bucket(length: int) -> int:
    """The longest length a request of ``length`` (on a padded axis) is batched with.

    Steps of 1.5x and 2x (8, 12, 16, 24, 32, 48, 64, ...): padding takes at most a third
    of a batch, and requests of similar lengths still meet often.

    >>> [length_bucket(n) for n in (1, 8, 9, 13, 17, 25, 33, 100, 129)]
    [8, 8, 12, 16, 24, 32, 48, 128, 192]
    """
    if length <= 8:
        return 8
    power = 1 << (length - 1).bit_length()  # the next power of two >= length
    return power * 3 // 4 if length <= power * 3 // 4 else power


def should_close_batch(
    now_s: float, oldest_enqueued_s: float, items: int, others_in_flight: int, policy: BatchPolicy
) -> bool:
    """Whether a forming batch should be dispatched now.

    Close when the batch is full, when its oldest request has waited ``max_batch_delay_s``,
    or when no other request is in flight: then nobody can join soon, and waiting would
    only add latency (this is what keeps added latency near zero at concurrency 1).

    >>> p = BatchPolicy(max_batch_size=8, max_batch_delay_s=0.002, max_queue=64)
    >>> should_close_batch(1.0, 1.0, items=1, others_in_flight=0, policy=p)
    True
    >>> should_close_batch(1.0, 1.0, items=1, others_in_flight=3, policy=p)
    False
    """
    if items >= policy.max_batch_size or others_in_flight <= 0:
        return True
    return now_s - oldest_enqueued_s >= policy.max_batch_delay_s


def fits_in_batch(
    items: int, elements: int, request_items: int, request_elements: int, policy: BatchPolicy
) -> bool:
    """Whether a request (``request_items`` rows, ``request_elements`` tensor elements)
    joins a batch holding ``items`` rows and ``elements`` elements.

    A request larger than ``max_batch_size`` or ``max_batch_elements`` still runs, alone,
    as its own batch (the request limits bound it).

    >>> p = BatchPolicy(max_batch_size=8, max_batch_delay_s=0.0, max_queue=64,
    ...                 max_batch_elements=100)
    >>> fits_in_batch(0, 0, 20, 1000, p), fits_in_batch(4, 40, 4, 40, p)
    (True, True)
    >>> fits_in_batch(4, 80, 1, 40, p)
    False
    """
    if items == 0:
        return True
    return (
        items + request_items <= policy.max_batch_size
        and elements + request_elements <= policy.max_batch_elements
    )


def warmup_rows(item_elements: int, max_batch_size: int, max_elements: int) -> tuple[int, ...]:
    """Batch sizes to warm a model up with at load: 1 and the largest batch that fits
    ``max_elements`` tensor elements (at most ``max_batch_size``).

    Warming up at ``max_batch_size`` blindly is a memory bomb: an archive declaring
    65,536 rows of images took 3 GiB at load. Larger batches are met lazily, in service.

    >>> warmup_rows(784, max_batch_size=32, max_elements=1024**2)
    (1, 32)
    >>> warmup_rows(784, max_batch_size=65536, max_elements=1024**2)
    (1, 1337)
    >>> warmup_rows(10**7, max_batch_size=64, max_elements=1024**2)
    (1,)
    """
    largest = max(1, min(max_batch_size, max_elements // max(1, item_elements)))
    return tuple(sorted({1, largest}))


def is_queue_full(depth: int, policy: BatchPolicy) -> bool:
    """Whether a new request must be refused with Overloaded."""
    return depth >= policy.max_queue


def torch_threads(requested: int, cores: int, instances: int) -> int:
    """Intra-op threads per torch instance: ``requested``, or when 0 the cores left after
    the event loop's one, shared among the instances (at least 1).

    Measured on 2 cores: 2 threads called from a worker thread ran a batch-1 digits CNN in
    0.5-0.6 ms, 1 thread in 0.18 ms (benchmarks/README.md).

    >>> torch_threads(0, cores=2, instances=1)
    1
    >>> torch_threads(0, cores=16, instances=3)
    5
    >>> torch_threads(4, cores=2, instances=1)
    4
    """
    if requested > 0:
        return requested
    return max(1, (cores - 1) // max(1, instances))


def pick_version(weights: tuple[tuple[str, float], ...], u: float) -> str:
    """The version a weighted traffic split sends a request to, for ``u`` uniform in [0, 1).

    >>> pick_version((("1", 90.0), ("2", 10.0)), 0.5)
    '1'
    >>> pick_version((("1", 90.0), ("2", 10.0)), 0.95)
    '2'
    """
    total = sum(w for _, w in weights)
    point = u * total
    for version, weight in weights:
        if point < weight:
            return version
        point -= weight
    return weights[-1][0]


def retry_after_s(depth: int, items_per_s: float) -> int:
    """Seconds a refused client should wait: the time to drain the queue, 1..60.

    >>> retry_after_s(100, 50.0)
    2
    >>> retry_after_s(10, 0.0)
    1
    """
    if items_per_s <= 0:
        return 1
    return max(1, min(60, math.ceil(depth / items_per_s)))


def choose_placement(requested: str, accelerator: bool) -> str:
    """The placement ``modelhost serve`` uses: ``requested``, or when "auto" "shared" with
    models that may run on an accelerator (one copy in its memory, batches across workers)
    and "per-worker" otherwise (measured faster on CPU: no hop; README figures).

    >>> choose_placement("auto", accelerator=False), choose_placement("auto", accelerator=True)
    ('per-worker', 'shared')
    >>> choose_placement("shared", accelerator=False)
    'shared'
    """
    if requested != "auto":
        return requested
    return "shared" if accelerator else "per-worker"


def worker_count(
    requested: int, cores: int, accelerator: bool, shared: bool = False, cap: int = 8
) -> int:
    """Front processes ``modelhost serve`` runs: ``requested``, or when 0 (auto) one per
    core, at most ``cap``, at least 1; with models on an accelerator (GPU) and a copy in
    each worker (per-worker placement), 1.

    Per-worker, each worker holds its own copy of every model, so on a GPU more workers
    would multiply its memory and contend for it. Shared placement holds one copy in the
    engine process whatever the number of fronts. The cap bounds the processes (and with
    per-worker their copies) on large machines.

    >>> worker_count(0, cores=2, accelerator=False)
    2
    >>> worker_count(0, cores=64, accelerator=False)
    8
    >>> worker_count(0, cores=16, accelerator=True)
    1
    >>> worker_count(0, cores=16, accelerator=True, shared=True)
    8
    >>> worker_count(3, cores=2, accelerator=True)
    3
    """
    if requested > 0:
        return requested
    if accelerator and not shared:
        return 1
    return max(1, min(cores, cap))


def onnx_intra_op_threads(requested: int, cores: int, workers: int, instances: int) -> int:
    """Intra-op threads per ONNX Runtime session: ``requested``; when 0 and one worker,
    0 (onnxruntime's own choice: all cores); with several workers the cores are shared
    among every worker's instances (at least 1), so N workers do not run N x cores threads.

    >>> onnx_intra_op_threads(0, cores=16, workers=1, instances=1)
    0
    >>> onnx_intra_op_threads(0, cores=16, workers=4, instances=2)
    2
    >>> onnx_intra_op_threads(0, cores=2, workers=4, instances=1)
    1
    >>> onnx_intra_op_threads(3, cores=2, workers=4, instances=1)
    3
    """
    if requested > 0 or workers <= 1:
        return requested
    return max(1, cores // (workers * max(1, instances)))


def restart_delay_s(failures: int, cap_s: float = 30.0) -> float:
    """Seconds to wait before starting a worker again after ``failures`` failed starts in
    a row: none the first time (a crash), then 1 s doubling up to ``cap_s`` (a model that
    no longer loads must not make the supervisor spin).

    >>> [restart_delay_s(n) for n in (0, 1, 2, 3, 10)]
    [0.0, 1.0, 2.0, 4.0, 30.0]
    """
    if failures <= 0:
        return 0.0
    return float(min(cap_s, 2.0 ** (failures - 1)))
