"""The codec pool: which work runs inline and which in a codec thread (a table), the bound
on waiting work, and a waiting caller that leaves. Threads are held by events, never by
sleeps."""

from __future__ import annotations

import asyncio
import threading

import pytest

from modelhost.api.offload import CodecPool, codec_threads, should_offload
from modelhost.codecs.steps import Step
from modelhost.errors import Overloaded
from modelhost.monitor.metrics import Metrics

OFFLOAD_BYTES, OFFLOAD_PIXELS = 1000, 5000


@pytest.fixture
def metrics() -> Metrics:
    return Metrics("test")


@pytest.fixture
def pool(metrics):
    pool = CodecPool(1, 1, OFFLOAD_BYTES, OFFLOAD_PIXELS, metrics.codec)
    yield pool
    pool.close()


def _value(metric) -> float:
    return metric._value.get()


@pytest.mark.parametrize(
    ("body_bytes", "pixels", "offloaded"),
    [(0, 0, False), (1000, 5000, False), (1001, 0, True), (0, 5001, True), (600, 784, False)],
)
def test_should_offload(body_bytes, pixels, offloaded):
    assert should_offload(body_bytes, pixels, OFFLOAD_BYTES, OFFLOAD_PIXELS) is offloaded


@pytest.mark.parametrize(
    ("requested", "cores", "threads"), [(0, 1, 1), (0, 2, 2), (0, 64, 4), (8, 2, 8), (0, None, 1)]
)
def test_codec_threads(requested, cores, threads):
    assert codec_threads(requested, cores) == threads


def _where(tag: str, seen: list[tuple[str, int]], then=None):
    def run():
        seen.append((tag, threading.get_ident()))
        return then if then is not None else tag

    return run


async def test_small_steps_run_inline_and_a_large_one_takes_the_rest_to_a_thread(pool, metrics):
    loop_thread = threading.get_ident()
    seen: list[tuple[str, int]] = []
    last = Step(_where("last", seen), body_bytes=1)
    large = Step(_where("large", seen, then=last), pixels=OFFLOAD_PIXELS + 1)
    first = Step(_where("first", seen, then=large), body_bytes=OFFLOAD_BYTES)
    assert await pool.finish(first) == "last"
    threads = dict(seen)
    assert threads["first"] == loop_thread
    assert threads["large"] != loop_thread
    assert threads["last"] == threads["large"]  # the rest in the same hop
    assert _value(metrics.codec.decoded) == 1
    assert await pool.finish(Step(_where("small", seen))) == "small"
    assert _value(metrics.codec.decoded) == 1


async def test_answers_encode_inline_up_to_the_threshold(pool, metrics):
    seen: list[tuple[str, int]] = []
    assert await pool.encode(OFFLOAD_BYTES, _where("inline", seen)) == "inline"
    assert await pool.encode(OFFLOAD_BYTES + 1, _where("pool", seen)) == "pool"
    threads = dict(seen)
    assert threads["inline"] == threading.get_ident() != threads["pool"]
    assert (_value(metrics.codec.encoded), _value(metrics.codec.decoded)) == (1, 0)


async def _started(event: threading.Event) -> None:
    await asyncio.to_thread(event.wait)


async def _until(condition) -> None:
    """Let the loop run other tasks until ``condition()`` holds (a poll of state, no timer)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail("the condition never held")


async def test_more_waiting_work_than_the_bound_is_overloaded(pool, metrics):
    running, release = threading.Event(), threading.Event()

    def hold() -> str:
        running.set()
        release.wait()
        return "held"

    first = asyncio.ensure_future(pool.run(hold))
    await _started(running)
    assert _value(metrics.codec.busy) == 1
    second = asyncio.ensure_future(pool.run(lambda: "second"))
    await _until(lambda: _value(metrics.codec.waiting) == 1)
    with pytest.raises(Overloaded, match=r"\(max_codec_queue\)") as refused:
        await pool.run(lambda: "third")
    assert refused.value.retry_after_s >= 1
    release.set()
    assert await first == "held"
    assert await second == "second"
    assert (_value(metrics.codec.busy), _value(metrics.codec.waiting)) == (0, 0)


async def test_a_caller_that_leaves_while_waiting_frees_its_place(pool, metrics):
    running, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold() -> None:
        running.set()
        release.wait()

    first = asyncio.ensure_future(pool.run(hold))
    await _started(running)
    leaving = asyncio.ensure_future(pool.run(lambda: ran.append("left")))
    await _until(lambda: _value(metrics.codec.waiting) == 1)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert _value(metrics.codec.waiting) == 0
    after = asyncio.ensure_future(pool.run(lambda: "after"))  # the place is free again
    release.set()
    await first
    assert await after == "after"
    assert ran == []  # the work of the caller that left never ran


async def test_errors_raised_in_a_codec_thread_reach_the_caller(pool):
    from modelhost.errors import InvalidInput

    def bad() -> None:
        raise InvalidInput("instances: holds strings or nulls")

    with pytest.raises(InvalidInput, match="holds strings"):
        await pool.finish(Step(bad, body_bytes=OFFLOAD_BYTES + 1))
