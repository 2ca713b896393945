"""The ``dynamic`` scheduler: request-level batching for one model version.

    submit() ──► deque (bounded: Overloaded when full)
                   │
    loop: wait for an idle instance ─► take the oldest live request ─► gather requests of the
          same item shape until should_close_batch() ─► concatenate ─► instance.predict() in
          its worker thread ─► split rows back ─► resolve each future

Inputs the manifest lets pad (``batching.pad``: token ids and masks of text models) need
not be equally long: requests whose lengths fall in one :func:`length_bucket` batch
together, padded to the longest, and the share of padding is a metric.

A request whose future is already done (its client went away, or its deadline passed) is
dropped when the batch is gathered, before it costs compute.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from modelhost.errors import DeadlineExceeded, InferenceFailed, ModelNotReady, Overloaded
from modelhost.monitor.metrics import ModelMetrics
from modelhost.serving.instance import Computed, ModelInstance
from modelhost.serving.policy import (
    BatchPolicy,
    fits_in_batch,
    is_queue_full,
    length_bucket,
    retry_after_s,
    should_close_batch,
)
from modelhost.serving.served import ModelInfo
from modelhost.types import InferRequest, InferResult

ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class Pending:
    """A queued request: its future, its item and element counts, shape key, arrival."""

    request: InferRequest
    future: asyncio.Future[InferResult]
    items: int
    elements: int
    key: ShapeKey
    enqueued_s: float


def shape_key(request: InferRequest, pad: Mapping[str, float] | None = None) -> ShapeKey:
    """Requests batch together only when every input's per-item shape is equal; an input
    named in ``pad`` counts its axis 1 by :func:`length_bucket`."""
    if not pad:
        return tuple((name, arr.shape[1:]) for name, arr in request.inputs.items())
    return tuple(
        (name, (length_bucket(arr.shape[1]), *arr.shape[2:]) if name in pad else arr.shape[1:])
        for name, arr in request.inputs.items()
    )


def batch_elements(request: InferRequest, key: ShapeKey) -> int:
    """Elements the request takes in a batch: padded inputs at their bucket's length."""
    rows = request.batch_size
    return sum(rows * math.prod(shape) for _, shape in key)


class Batcher:
    """Queue + batching loop for one model version over its instances."""

    def __init__(
        self,
        name: str,
        version: str,
        instances: list[ModelInstance],
        policy: BatchPolicy,
        metrics: ModelMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.version = version
        self.policy = policy
        self._instances = instances
        self._metrics = metrics
        self._clock = clock
        self._queue: collections.deque[Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._idle: asyncio.Queue[ModelInstance] = asyncio.Queue()
        for instance in instances:
            self._idle.put_nowait(instance)
        self._running: set[asyncio.Task[None]] = set()
        self._forming: list[Pending] = []
        self._in_flight = 0
        self._items_per_s = 0.0
        self._accepting = True
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def instance_count(self) -> int:
        """Instances computing for this version."""
        return len(self._instances)

    def add_instance(self, instance: ModelInstance) -> None:
        """Start feeding one more (warmed-up) instance."""
        self._instances.append(instance)
        self._idle.put_nowait(instance)

    async def remove_instance(self) -> None:
        """Take one instance out once it is idle (its running batch finishes first), stop it."""
        instance = await self._idle.get()
        self._instances.remove(instance)
        await asyncio.to_thread(instance.close)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet resolved (queued or computing)."""
        return self._in_flight

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._loop_task = asyncio.get_running_loop().create_task(
            self._run(), name=f"batcher-{self.name}-{self.version}"
        )

    def submit(self, request: InferRequest, items: int) -> asyncio.Future[InferResult]:
        """Queue ``request`` (``items`` rows); the future resolves with its result.

        Raises:
            Overloaded: the queue holds ``max_queue`` requests already.
            ModelNotReady: the version is draining.
        """
        if not self._accepting:
            raise ModelNotReady(f"model {self.name}:{self.version} is shutting down")
        if is_queue_full(len(self._queue), self.policy):
            raise Overloaded(
                f"model {self.name}:{self.version} has {len(self._queue)} requests queued "
                f"(max_queue={self.policy.max_queue}); retry later",
                retry_after_s=retry_after_s(len(self._queue), self._items_per_s),
            )
        future: asyncio.Future[InferResult] = asyncio.get_running_loop().create_future()
        pad = self.policy.pad
        if pad:
            key = shape_key(request, pad)
            elements = batch_elements(request, key)
        else:
            key = shape_key(request)
            elements = sum(arr.size for arr in request.inputs.values())
        pending = Pending(request, future, items, elements, key, self._clock())
        self._queue.append(pending)
        self._in_flight += 1
        self._metrics.in_flight.inc()
        self._metrics.pending.set(len(self._queue))
        future.add_done_callback(self._on_done)
        self._arrived.set()
        return future

    async def stream(self, request: InferRequest, items: int) -> AsyncIterator[InferResult]:
        """The whole answer as one chunk (request batching has no partial answers)."""
        yield await self.submit(request, items)

    def _on_done(self, _: asyncio.Future[InferResult]) -> None:
        self._in_flight -= 1
        self._metrics.in_flight.dec()

    async def close(self, timeout_s: float) -> None:
        """Stop accepting, let queued and running batches finish (up to ``timeout_s``)."""
        self._accepting = False
        deadline = self._clock() + timeout_s
        while (self._queue or self._forming or self._running) and self._clock() < deadline:
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for pending in (*self._queue, *self._forming):
            if not pending.future.done():
                pending.future.set_exception(ModelNotReady(f"model {self.name} was unloaded"))
        self._queue.clear()
        self._forming = []
        for instance in self._instances:
            await asyncio.to_thread(instance.close)

    async def _run(self) -> None:
        while True:
            instance = await self._idle.get()
            batch = await self._gather()
            task = asyncio.get_running_loop().create_task(self._execute(instance, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _gather(self) -> list[Pending]:
        """Wait for the first live request, then gather more until the policy closes.

        The batch being formed is kept in ``self._forming`` so that ``close`` sees it.
        """
        batch = self._forming = []
        while not batch:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            self._take(batch)
        # One turn of the loop lets requests already read off sockets join this batch.
        await asyncio.sleep(0)
        items = self._take(batch)
        while not should_close_batch(
            self._clock(), batch[0].enqueued_s, items, self._in_flight - len(batch), self.policy
        ):
            remaining = self.policy.max_batch_delay_s - (self._clock() - batch[0].enqueued_s)
            await self._wait_new_arrival(remaining)
            items = self._take(batch)
        self._forming = []
        return batch

    async def _wait_new_arrival(self, timeout_s: float) -> None:
        # What is still queued cannot join this batch (other shape or too big): wait for
        # a request submitted after now.
        self._arrived.clear()
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await self._arrived.wait()
        except TimeoutError:
            return

    def _take(self, batch: list[Pending]) -> int:
        """Move live queued requests that fit (same shape key, rows, elements) into ``batch``.

        Returns the number of items ``batch`` holds afterwards.
        """
        now = self._clock()
        keep: collections.deque[Pending] = collections.deque()
        key = batch[0].key if batch else None
        items = sum(p.items for p in batch)
        elements = sum(p.elements for p in batch)
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():
                continue  # cancelled: the client went away or its deadline passed
            if pending.request.deadline_s <= now:
                pending.future.set_exception(
                    DeadlineExceeded(f"request waited past its deadline for {self.name}")
                )
                continue
            if key is None:
                key = pending.key
            if pending.key == key and fits_in_batch(
                items, elements, pending.items, pending.elements, self.policy
            ):
                batch.append(pending)
                items += pending.items
                elements += pending.elements
            else:
                keep.append(pending)
        self._queue = keep
        self._metrics.pending.set(len(keep))
        return items

    async def _execute(self, instance: ModelInstance, batch: list[Pending]) -> None:
        try:
            live = [p for p in batch if not p.future.done()]
            if not live:
                return
            await self._compute(instance, live)
        finally:
            self._idle.put_nowait(instance)

    async def _compute(self, instance: ModelInstance, live: list[Pending]) -> None:
        """Run ``live`` as one batch. When that batch fails and holds several requests,
        run each alone, so one request the model cannot take fails only itself."""
        start = self._clock()
        try:
            parts = [p.request.inputs for p in live]
            computed = await instance.predict(parts, sum(p.items for p in live), self.policy.pad)
        except Exception as exc:  # noqa: BLE001 -- the model's own failure, sent to its callers
            if len(live) > 1:
                for pending in live:
                    if not pending.future.done():
                        await self._compute(instance, [pending])
                return
            error = InferenceFailed(f"model {self.name}:{self.version} failed: {exc!r}")
            if not live[0].future.done():
                live[0].future.set_exception(error)
            return
        self._resolve(live, computed, start)

    def _resolve(self, live: list[Pending], computed: Computed, start: float) -> None:
        items = sum(p.items for p in live)
        outputs, compute_s = computed.outputs, computed.compute_s
        m = self._metrics
        m.batch_size.observe(items)
        m.compute_duration.observe(compute_s)
        m.exec_count.inc()
        m.inference_count.inc(items)
        if m.padding_ratio is not None:
            m.padding_ratio.observe(computed.padding)
        rate = items / compute_s if compute_s > 0 else 0.0
        self._items_per_s = rate if self._items_per_s == 0 else 0.9 * self._items_per_s + 0.1 * rate
        offset = 0
        for pending in live:
            end_row = offset + pending.items
            queue_s = start - pending.enqueued_s
            m.queue_duration.observe(queue_s)
            if not pending.future.done():
                pending.future.set_result(
                    InferResult(
                        model_name=self.name,
                        model_version=self.version,
                        outputs={k: v[offset:end_row] for k, v in outputs.items()},
                        queue_s=queue_s,
                        compute_s=compute_s,
                        batch_size=items,
                        id=pending.request.id,
                    )
                )
            offset = end_row


def build(info: ModelInfo, instances: list[ModelInstance], metrics: ModelMetrics) -> Batcher:
    """The scheduler factory of ``dynamic`` (see ``serving/scheduler.py``)."""
    return Batcher(info.name, info.version, instances, info.policy, metrics)
