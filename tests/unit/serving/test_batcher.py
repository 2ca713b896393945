"""Batcher over a real (tiny) predictor in a real worker thread."""

import asyncio
import threading
import time

import numpy as np
import pytest

from modelhost.errors import DeadlineExceeded, InferenceFailed, ModelNotReady, Overloaded
from modelhost.monitor.metrics import Metrics
from modelhost.serving.batcher import Batcher
from modelhost.serving.instance import ModelInstance
from modelhost.serving.policy import BatchPolicy
from modelhost.types import InferRequest

WAIT_S = 5.0


class Doubler:
    """Returns ``y = 2 * x``; records every batch it sees; refuses negative input;
    answers one row short while ``drop_a_row`` is set.

    ``gate`` (set by default) holds ``predict`` while cleared, so requests pile up;
    ``entered`` is set when a batch reaches ``predict``.
    """

    device = "cpu"

    def __init__(self):
        self.batches = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.drop_a_row = False

    def predict(self, batch):
        x = batch["x"]
        self.batches.append(x.copy())
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("test gate never opened")
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x[1:] * 2 if self.drop_a_row else x * 2}

    @property
    def sizes(self):
        return [len(b) for b in self.batches]

    def seen(self, value):
        return any((b == value).any() for b in self.batches)


class Rig:
    """A started batcher, its predictors and its metrics registry."""

    def __init__(self, *, max_batch_size, delay_s, max_queue, instances):
        self.metrics = Metrics("test")
        self.predictors = [Doubler() for _ in range(instances)]
        self.batcher = Batcher(
            "m",
            "1",
            [ModelInstance(p, f"test-{i}") for i, p in enumerate(self.predictors)],
            BatchPolicy(max_batch_size, delay_s, max_queue),
            self.metrics.for_model("m", "1"),
        )
        self.batcher.start()

    @property
    def predictor(self):
        return self.predictors[0]

    def submit(self, request):
        return self.batcher.submit(request, request.batch_size)

    async def block(self, request, predictor=None):
        """Submit ``request`` and wait until it is inside ``predict``, held by the gate."""
        predictor = predictor or self.predictor
        predictor.gate.clear()
        predictor.entered.clear()
        future = self.submit(request)
        assert await asyncio.to_thread(predictor.entered.wait, WAIT_S)
        return future

    def release(self):
        for predictor in self.predictors:
            predictor.gate.set()

    def sample(self, name):
        return self.metrics.registry.get_sample_value(name, {"model": "m", "version": "1"})


@pytest.fixture
async def rig():
    made = []

    def make(*, max_batch_size=8, delay_s=0.005, max_queue=64, instances=1):
        made.append(
            Rig(
                max_batch_size=max_batch_size,
                delay_s=delay_s,
                max_queue=max_queue,
                instances=instances,
            )
        )
        return made[-1]

    yield make
    for r in made:
        r.release()
        await r.batcher.close(1.0)


def _req(rows, start, width=2, deadline_s=None, rid=None):
    """``rows`` x ``width`` float32 values start, start+1, ... (so each request is findable)."""
    x = np.arange(start, start + rows * width, dtype=np.float32).reshape(rows, width)
    deadline = time.monotonic() + 30 if deadline_s is None else deadline_s
    return InferRequest({"x": x}, deadline, id=rid)


def _check(result, request):
    np.testing.assert_array_equal(result.outputs["y"], request.inputs["x"] * 2)


async def test_one_request_gets_its_result(rig):
    r = rig()
    request = _req(3, 0, rid="abc")
    result = await asyncio.wait_for(r.submit(request), WAIT_S)
    _check(result, request)
    assert (result.model_name, result.model_version, result.id) == ("m", "1", "abc")
    assert result.batch_size == 3
    assert result.compute_s >= 0
    assert result.queue_s >= 0
    assert r.predictor.sizes == [3]
    assert r.batcher.in_flight == 0


async def test_piled_up_requests_share_one_batch_and_get_their_own_rows(rig):
    r = rig()
    first = await r.block(_req(1, 0))
    requests = [_req(2, 100), _req(3, 200), _req(1, 300)]
    futures = [r.submit(q) for q in requests]
    assert r.batcher.queue_depth == 3
    assert r.batcher.in_flight == 4
    r.release()
    results = await asyncio.wait_for(asyncio.gather(first, *futures), WAIT_S)
    assert r.predictor.sizes == [1, 6]
    np.testing.assert_array_equal(
        r.predictor.batches[1], np.concatenate([q.inputs["x"] for q in requests])
    )
    for result, request in zip(results[1:], requests, strict=True):
        _check(result, request)
        assert result.batch_size == 6
    assert r.batcher.in_flight == 0
    assert r.batcher.queue_depth == 0
    assert r.sample("modelhost_inference_exec_count_total") == 2
    assert r.sample("modelhost_inference_count_total") == 7
    assert r.sample("modelhost_in_flight_requests") == 0
    assert r.sample("modelhost_pending_requests") == 0


async def test_max_batch_size_is_respected(rig):
    r = rig(max_batch_size=3)
    first = await r.block(_req(1, 0))
    requests = [_req(1, 100 * (i + 1)) for i in range(7)]
    futures = [r.submit(q) for q in requests]
    r.release()
    results = await asyncio.wait_for(asyncio.gather(first, *futures), WAIT_S)
    assert r.predictor.sizes == [1, 3, 3, 1]
    for result, request in zip(results[1:], requests, strict=True):
        _check(result, request)


async def test_a_request_bigger_than_max_batch_size_runs_alone(rig):
    r = rig(max_batch_size=4)
    first = await r.block(_req(1, 0))
    small, big, small_too = _req(1, 100), _req(6, 200), _req(1, 300)
    futures = [r.submit(q) for q in (small, big, small_too)]
    r.release()
    results = await asyncio.wait_for(asyncio.gather(first, *futures), WAIT_S)
    assert r.predictor.sizes == [1, 2, 6]
    np.testing.assert_array_equal(r.predictor.batches[2], big.inputs["x"])
    for result, request in zip(results[1:], (small, big, small_too), strict=True):
        _check(result, request)
    assert results[2].batch_size == 6


async def test_a_big_request_alone_on_an_idle_model_runs_at_once(rig):
    r = rig(max_batch_size=2)
    request = _req(5, 0)
    _check(await asyncio.wait_for(r.submit(request), WAIT_S), request)
    assert r.predictor.sizes == [5]


async def test_different_item_shapes_never_share_a_batch(rig):
    r = rig()
    first = await r.block(_req(1, 0))
    requests = [_req(1, 100), _req(1, 200, width=3), _req(2, 300), _req(1, 400, width=3)]
    futures = [r.submit(q) for q in requests]
    r.release()
    results = await asyncio.wait_for(asyncio.gather(first, *futures), WAIT_S)
    assert [b.shape for b in r.predictor.batches] == [(1, 2), (3, 2), (2, 3)]
    for result, request in zip(results[1:], requests, strict=True):
        _check(result, request)


async def test_full_queue_is_overloaded_with_a_retry_after(rig):
    r = rig(max_queue=3)
    first = await r.block(_req(1, 0))
    queued = [_req(1, 100 * (i + 1)) for i in range(3)]
    futures = [r.submit(q) for q in queued]
    with pytest.raises(Overloaded, match=r"max_queue=3") as info:
        r.submit(_req(1, 999))
    assert info.value.retry_after_s >= 1
    assert r.batcher.queue_depth == 3
    r.release()
    results = await asyncio.wait_for(asyncio.gather(first, *futures), WAIT_S)
    for result, request in zip(results[1:], queued, strict=True):
        _check(result, request)
    assert not r.predictor.seen(999)
    assert r.batcher.in_flight == 0


async def test_a_cancelled_request_is_never_computed(rig):
    r = rig()
    first = await r.block(_req(1, 0))
    gone, kept = _req(2, 100), _req(2, 200)
    gone_future, kept_future = r.submit(gone), r.submit(kept)
    gone_future.cancel()
    r.release()
    await asyncio.wait_for(first, WAIT_S)
    _check(await asyncio.wait_for(kept_future, WAIT_S), kept)
    assert gone_future.cancelled()
    assert r.predictor.sizes == [1, 2]
    assert not r.predictor.seen(100)
    assert r.batcher.in_flight == 0


async def test_a_request_past_its_deadline_is_not_computed(rig):
    r = rig()
    first = await r.block(_req(1, 0))
    # its deadline passes while it waits in the queue behind the blocked batch
    late = _req(1, 100, deadline_s=time.monotonic() - 0.001)
    on_time = _req(1, 200)
    late_future, on_time_future = r.submit(late), r.submit(on_time)
    r.release()
    with pytest.raises(DeadlineExceeded, match="deadline"):
        await asyncio.wait_for(late_future, WAIT_S)
    _check(await asyncio.wait_for(on_time_future, WAIT_S), on_time)
    await first
    assert not r.predictor.seen(100)
    assert r.predictor.sizes == [1, 1]


async def test_a_request_already_past_its_deadline_fails_on_an_idle_model(rig):
    r = rig()
    future = r.submit(_req(1, 100, deadline_s=time.monotonic() - 1))
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(future, WAIT_S)
    assert r.predictor.batches == []


async def test_a_failing_batch_is_rerun_per_request_so_only_the_bad_one_fails(rig):
    r = rig()
    first = await r.block(_req(1, 0))
    bad, innocent = _req(1, -100), _req(1, 100)
    futures = [r.submit(bad), r.submit(innocent)]
    r.release()
    _check(await asyncio.wait_for(first, WAIT_S), _req(1, 0))
    error, result = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), WAIT_S)
    # the batch of two failed, then each request ran alone
    assert r.predictor.sizes == [1, 2, 1, 1]
    assert isinstance(error, InferenceFailed)
    assert "m:1" in str(error)
    assert "negative input" in str(error)
    _check(result, innocent)
    after = _req(2, 500)
    _check(await asyncio.wait_for(r.submit(after), WAIT_S), after)
    assert r.batcher.in_flight == 0


async def test_a_model_answering_the_wrong_row_count_fails_the_request(rig):
    r = rig()
    r.predictor.drop_a_row = True
    with pytest.raises(InferenceFailed, match="shape"):
        await asyncio.wait_for(r.submit(_req(2, 0)), WAIT_S)
    r.predictor.drop_a_row = False
    ok = _req(2, 10)
    _check(await asyncio.wait_for(r.submit(ok), WAIT_S), ok)


async def test_close_drains_queued_requests_then_refuses_new_ones(rig):
    r = rig()
    first = await r.block(_req(1, 0))
    queued = [_req(1, 100), _req(2, 200)]
    futures = [r.submit(q) for q in queued]
    closing = asyncio.create_task(r.batcher.close(WAIT_S))
    await asyncio.sleep(0)
    with pytest.raises(ModelNotReady, match="shutting down"):
        r.submit(_req(1, 999))
    r.release()
    await asyncio.wait_for(closing, WAIT_S)
    results = await asyncio.gather(first, *futures)
    for result, request in zip(results[1:], queued, strict=True):
        _check(result, request)
    with pytest.raises(ModelNotReady):
        r.submit(_req(1, 999))
    assert not r.predictor.seen(999)


async def test_close_past_its_timeout_refuses_what_is_still_queued(rig):
    r = rig()
    first = await r.block(_req(1, 0))
    stuck = r.submit(_req(1, 100))
    closing = asyncio.create_task(r.batcher.close(0.05))
    with pytest.raises(ModelNotReady, match="unloaded"):
        await asyncio.wait_for(stuck, WAIT_S)
    r.release()
    await asyncio.wait_for(closing, WAIT_S)
    _check(await first, _req(1, 0))
    assert not r.predictor.seen(100)


async def test_close_answers_a_request_held_in_a_forming_batch(rig):
    r = rig(instances=2, delay_s=0.5)
    busy, idle = r.predictors
    first = await r.block(_req(1, 0), predictor=busy)
    forming = r.submit(_req(1, 100))  # taken by the idle instance; waits up to 0.5 s for company
    while r.batcher.queue_depth:  # until the idle instance's batch holds it
        await asyncio.sleep(0)
    closing = asyncio.create_task(r.batcher.close(WAIT_S))
    busy.gate.set()
    await asyncio.wait_for(first, WAIT_S)
    await asyncio.wait_for(closing, WAIT_S)
    try:
        result = await asyncio.wait_for(forming, 1.0)
    except ModelNotReady:
        return
    _check(result, _req(1, 100))
    assert idle.seen(100)


async def test_a_request_arriving_while_a_batch_forms_joins_it(rig):
    r = rig(delay_s=0.3)
    first = await r.block(_req(1, 0))
    forming, other_shape = _req(1, 100), _req(1, 200, width=3)
    joiner = _req(1, 300)
    futures = [r.submit(forming), r.submit(other_shape)]
    joined: asyncio.Future = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, lambda: joined.set_result(r.submit(joiner)))
    r.release()
    await asyncio.wait_for(asyncio.gather(first, *futures), WAIT_S)
    await asyncio.wait_for(await asyncio.wait_for(joined, WAIT_S), WAIT_S)
    together = [b for b in r.predictor.batches if (b == 100).any()]
    assert (together[0] == 300).any(), f"batches seen: {r.predictor.sizes}"
