"""The codec pool: large payloads decode and encode in worker threads; the event loop waits.

    frontend ── codec.decode(body) ──► Step(body_bytes, pixels)   limits checked, on the loop
                     │
       pool.finish(step):  small ──► step.run() inline (a thread hop costs more than the work)
                           large ──► waiting (≤ max_codec_queue, else 503 Overloaded)
                                       └─► codec thread (codec_threads): every step left

"Large" is a body over ``codec_offload_bytes`` or images declaring over
``codec_offload_pixels`` pixels (:func:`should_offload`); answers over
``codec_offload_bytes`` encode in the pool too. Pillow and zlib release the GIL while they
decode, so the loop keeps answering then; orjson and numpy's list conversion hold it, so a
large JSON body still takes the loop's turn while it parses, in slices between the steps.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from modelhost.codecs.steps import Step, finish
from modelhost.config import Settings
from modelhost.errors import ModelNotReady, Overloaded
from modelhost.monitor.metrics import CodecMetrics

T = TypeVar("T")
_RETRY_AFTER_S = 1.0  # codec work is sub-second: the queue turns over within a second


def codec_threads(requested: int, cores: int | None) -> int:
    """Threads of the codec pool: ``requested``, or when 0, min(4, cores).

    >>> codec_threads(0, 16), codec_threads(0, 2), codec_threads(3, 16), codec_threads(0, None)
    (4, 2, 3, 1)
    """
    return requested or min(4, cores or 1)


def should_offload(body_bytes: int, pixels: int, max_inline_bytes: int, max_inline_px: int) -> bool:
    """Whether work of this size goes to a codec thread rather than running inline.

    >>> should_offload(600, 784, 65536, 262144), should_offload(70000, 0, 65536, 262144)
    (False, True)
    >>> should_offload(200, 4096 * 4096, 65536, 262144)
    True
    """
    return body_bytes > max_inline_bytes or pixels > max_inline_px


def outputs_bytes(outputs: Mapping[str, np.ndarray]) -> int:
    """Bytes of an answer's arrays: what its encoding costs grows with it."""
    return sum(arr.nbytes for arr in outputs.values())


class CodecPool:
    """A bounded pool of codec threads; see the module docstring.

    Args:
        threads: worker threads (>= 1).
        max_waiting: payloads that may wait for a thread; more get :class:`Overloaded`.
        offload_bytes: payloads (bodies, answers) above this many bytes go to the pool.
        offload_pixels: images declaring above this many pixels go to the pool.
        metrics: ``codec_offloaded_total``, ``codec_busy``, ``codec_waiting``.
    """

    def __init__(
        self,
        threads: int,
        max_waiting: int,
        offload_bytes: int,
        offload_pixels: int,
        metrics: CodecMetrics,
    ) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="modelhost-codec")
        self._max_waiting = max_waiting
        self._offload_bytes = offload_bytes
        self._offload_pixels = offload_pixels
        self._metrics = metrics
        self._lock = threading.Lock()  # _waiting is changed on the loop and in the threads
        self._waiting = 0
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, metrics: CodecMetrics) -> CodecPool:
        """The pool ``settings`` describe (``codec_threads``, ``max_codec_queue``,
        ``codec_offload_bytes``, ``codec_offload_pixels``)."""
        return cls(
            codec_threads(settings.codec_threads, os.cpu_count()),
            settings.max_codec_queue,
            settings.codec_offload_bytes,
            settings.codec_offload_pixels,
            metrics,
        )

    async def finish(self, step: Step[T]) -> T:
        """Run ``step`` and the steps it leads to: small ones inline, and from the first
        large one on, all that are left in one codec thread.

        Raises:
            Overloaded: the pool has ``max_waiting`` payloads waiting already.
            ModelNotReady: the pool is closed (the server is stopping).
            Whatever the steps raise.
        """
        value: T | Step[T] = step
        while isinstance(value, Step):
            if should_offload(
                value.body_bytes, value.pixels, self._offload_bytes, self._offload_pixels
            ):
                job = self._submit(finish, (value,))
                self._metrics.decoded.inc()
                return await self._wait(job)
            value = value.run()
        return value

    async def encode(self, nbytes: int, encoder: Callable[[], T]) -> T:
        """``encoder()``: inline for an answer of up to ``offload_bytes``, else in the pool.

        Raises:
            Overloaded: the pool has ``max_waiting`` payloads waiting already.
            ModelNotReady: the pool is closed (the server is stopping).
        """
        if nbytes <= self._offload_bytes:
            return encoder()
        job = self._submit(encoder, ())
        self._metrics.encoded.inc()
        return await self._wait(job)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a codec thread; the caller waits without blocking the loop.

        A caller cancelled while its work still waits takes it out of the queue.

        Raises:
            Overloaded: ``max_waiting`` payloads are waiting for a thread already.
            ModelNotReady: the pool is closed (the server is stopping).
        """
        return await self._wait(self._submit(fn, args))

    def _submit(self, fn: Callable[..., T], args: tuple[object, ...]) -> Future[T]:
        with self._lock:  # held across submit: close() cannot slip in between
            if self._closed:
                raise ModelNotReady(
                    "the server is stopping: its codec pool takes no more payloads; "
                    "retry on another replica"
                )
            if self._waiting >= self._max_waiting:
                raise Overloaded(
                    f"{self._waiting} payloads are waiting to be decoded or encoded "
                    "(max_codec_queue); retry later",
                    retry_after_s=_RETRY_AFTER_S,
                )
            self._waiting += 1
            self._metrics.waiting.inc()
            return self._executor.submit(self._call, fn, args)

    async def _wait(self, job: Future[T]) -> T:
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if job.cancel():  # it never started: it waits no more
                self._started()
            raise

    def _started(self) -> None:
        with self._lock:
            self._waiting -= 1
            self._metrics.waiting.dec()

    def _call(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        self._started()
        busy = self._metrics.busy
        busy.inc()
        try:
            return fn(*args)
        finally:
            busy.dec()

    def close(self) -> None:
        """Refuse new payloads (:class:`ModelNotReady`), finish every one already taken
        (running or waiting: their callers still await them), and join the threads.

        Blocks until the threads are gone; on the event loop use :meth:`aclose`. Calling it
        again does nothing more.
        """
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=False)

    async def aclose(self) -> None:
        """:meth:`close` from a helper thread: the loop waits without blocking."""
        await asyncio.to_thread(self.close)
