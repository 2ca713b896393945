"""Padded batching (``batching.pad``): requests of different token lengths share a batch
when their lengths fall in one bucket, padded to the longest; each gets its own rows back;
the share of padding is a metric."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from modelhost.monitor.metrics import Metrics
from modelhost.serving.batcher import Batcher
from modelhost.serving.instance import ModelInstance
from modelhost.serving.policy import BatchPolicy, length_bucket
from modelhost.types import InferRequest

WAIT_S = 5.0


class TokenSum:
    """Answers each row's sum of ``ids`` over its ``mask``; records every batch it sees.

    ``gate`` (set by default) holds ``predict`` while cleared; ``entered`` is set when a
    batch reaches it."""

    device = "cpu"

    def __init__(self):
        self.batches = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def predict(self, batch):
        self.batches.append({k: v.copy() for k, v in batch.items()})
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("test gate never opened")
        total = (batch["ids"] * batch["mask"]).sum(axis=1, keepdims=True)
        return {"sum": total.astype(np.float32)}


def _req(lengths: list[int], start: int) -> InferRequest:
    """One request of ``len(lengths)`` rows, padded (by the codec) to its longest."""
    width = max(lengths)
    ids = np.full((len(lengths), width), 7, np.int64)  # 7: never the pad value
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = np.arange(start, start + n) + row
        mask[row, :n] = 1
    return InferRequest({"ids": ids, "mask": mask}, time.monotonic() + 30)


def _expected(request: InferRequest) -> np.ndarray:
    ids, mask = request.inputs["ids"], request.inputs["mask"]
    return (ids * mask).sum(axis=1, keepdims=True).astype(np.float32)


@pytest.fixture
async def padded():
    metrics = Metrics("test")
    model = TokenSum()
    policy = BatchPolicy(16, 0.005, 64, pad={"ids": 0.0, "mask": 0.0})
    batcher = Batcher(
        "m", "1", [ModelInstance(model, "pad")], policy, metrics.for_model("m", "1", padded=True)
    )
    batcher.start()
    yield batcher, model, metrics
    model.gate.set()
    await batcher.close(1.0)


async def test_requests_in_one_length_bucket_share_a_padded_batch_and_get_their_own_rows(
    padded,
):
    batcher, model, metrics = padded
    model.gate.clear()
    first = _req([5], 0)
    held = batcher.submit(first, 1)
    assert await asyncio.to_thread(model.entered.wait, WAIT_S)
    # 9..12 tokens share bucket 12; 30 tokens is bucket 32; the 2-row request is bucket 12.
    requests = [_req([9], 100), _req([12], 200), _req([30], 300), _req([10, 11], 400)]
    futures = [batcher.submit(r, r.batch_size) for r in requests]
    model.gate.set()
    results = await asyncio.wait_for(asyncio.gather(held, *futures), WAIT_S)
    shapes = [b["ids"].shape for b in model.batches]
    assert shapes == [(1, 5), (4, 12), (1, 30)]
    padded_batch = model.batches[1]
    assert (padded_batch["ids"][0, 9:] == 0).all()
    assert (padded_batch["mask"][0, 9:] == 0).all()
    for result, request in zip(results, [first, *requests], strict=True):
        np.testing.assert_array_equal(result.outputs["sum"], _expected(request))
    labels = {"model": "m", "version": "1"}
    count = metrics.registry.get_sample_value("modelhost_batch_padding_ratio_count", labels)
    total = metrics.registry.get_sample_value("modelhost_batch_padding_ratio_sum", labels)
    assert count == 3
    # Batch two: 3 + 0 + 1 + 1 padded positions of 4 x 12, for ids and mask alike.
    assert total == pytest.approx((3 + 0 + 1 + 1) / 48)


async def test_inputs_not_named_in_pad_still_batch_only_at_equal_shapes(padded):
    batcher, model, _ = padded
    model.gate.clear()
    held = batcher.submit(_req([4], 0), 1)
    assert await asyncio.to_thread(model.entered.wait, WAIT_S)
    extra_a = InferRequest(
        {"ids": np.ones((1, 9), np.int64), "mask": np.ones((1, 9), np.int64),
         "x": np.zeros((1, 2), np.float32)}, time.monotonic() + 30,
    )  # fmt: skip
    extra_b = InferRequest(
        {"ids": np.ones((1, 10), np.int64), "mask": np.ones((1, 10), np.int64),
         "x": np.zeros((1, 3), np.float32)}, time.monotonic() + 30,
    )  # fmt: skip
    futures = [batcher.submit(r, 1) for r in (extra_a, extra_b)]
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(held, *futures), WAIT_S)
    assert [b["x"].shape for b in model.batches[1:]] == [(1, 2), (1, 3)]


def test_no_metric_series_for_models_that_do_not_pad():
    metrics = Metrics("test")
    assert metrics.for_model("plain", "1").padding_ratio is None
    assert b"modelhost_batch_padding_ratio_count{" not in _exposition(metrics)


def _exposition(metrics: Metrics) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry)


@pytest.mark.parametrize("length", [*range(1, 300), 511, 512, 513, 4095, 100_000])
def test_a_bucket_holds_its_length_and_wastes_at_most_a_third(length):
    bucket = length_bucket(length)
    assert bucket >= length
    assert length <= 8 or (bucket - length) / bucket < 1 / 3 + 1e-9
    assert length_bucket(bucket) == bucket  # every bucket is its own bucket
