"""EngineHost and EngineClient/RemoteScheduler over a real unix socket and real shared
memory, in one event loop, in front of a real DataPlane and Batcher with a gated model."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from modelhost.errors import (
    Conflict,
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
)
from modelhost.monitor.metrics import Metrics
from modelhost.serving.batcher import Batcher
from modelhost.serving.dataplane import DataPlane
from modelhost.serving.engine_client import EngineClient
from modelhost.serving.engine_host import EngineHost
from modelhost.serving.frames import decode_frame, encode_frame, read_frame
from modelhost.serving.instance import ModelInstance
from modelhost.serving.policy import BatchPolicy
from modelhost.serving.remote import EngineLink, RemoteScheduler
from modelhost.serving.shm import Arena
from modelhost.serving.tensor_table import plan_layout, write_tensors
from modelhost.types import InferRequest, TensorSpec

WAIT_S = 10.0
SHM = Path("/dev/shm")


class Gated:
    """y = 2x and x tiled 4 times along axis 1; refuses negative input. While ``gate`` is
    cleared, every batch waits in ``predict`` (``entered`` tells that one reached it).
    ``sizes`` and ``values`` record the rows and the input values of every batch."""

    device = "cpu"

    def __init__(self):
        self.sizes, self.values = [], set()
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def predict(self, batch):
        x = batch["x"]
        self.sizes.append(len(x))
        self.values.update(x.flat)
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("test gate never opened")
        if (x < 0).any():
            raise ValueError("negative input")
        return {"y": x * 2, "tiled": np.tile(x, (1, 4))}


class OneModel:
    """The part of ModelManager the data plane uses: model m:1 and nothing else."""

    def __init__(self, batcher):
        inputs = (TensorSpec("x", "float32", (-1, -1)),)
        info = SimpleNamespace(name="m", version="1", inputs=inputs, sha256="ab" * 32, device="cpu")
        self.model = SimpleNamespace(info=info, scheduler=batcher)

    def route(self, name, version):
        if (name, version) != ("m", "1"):
            raise ModelNotFound(f"model {name!r} version {version!r} is not loaded")
        return self.model


class Bench:
    """A host on a unix socket over a gated model; clients made with :meth:`client`."""

    def __init__(self, *, max_queue=64, host_offload_bytes=4 << 20):
        self.prefix = f"mh-t{uuid.uuid4().hex[:8]}-"
        self.dir = Path(tempfile.mkdtemp(prefix="mh", dir="/tmp"))
        self.socket = self.dir / "engine.sock"
        self.predictor = Gated()
        self.batcher = Batcher(
            "m",
            "1",
            [ModelInstance(self.predictor, "remote-test")],
            BatchPolicy(max_batch_size=16, max_batch_delay_s=0.002, max_queue=max_queue),
            Metrics("test").for_model("m", "1"),
        )
        self.batcher.start()
        self.events = []
        self.event_arrived = asyncio.Event()
        self.host = EngineHost(
            DataPlane(OneModel(self.batcher)),
            lambda: b"# metrics of the engine\n",
            prefix=self.prefix,
            offload_bytes=host_offload_bytes,
            on_event=self._on_event,
        )

    def _on_event(self, event):
        self.events.append(event)
        self.event_arrived.set()

    async def next_event(self, kind):
        while not any(e.kind == kind for e in self.events):
            self.event_arrived.clear()
            await asyncio.wait_for(self.event_arrived.wait(), WAIT_S)
        event = next(e for e in self.events if e.kind == kind)
        self.events.remove(event)
        return event

    def client(self, **kwargs):
        return EngineClient.connect(self.socket, prefix=self.prefix, **kwargs)

    async def block(self, scheduler, value=0.5):
        """Submit a request and wait until it is inside ``predict``, held by the gate."""
        self.predictor.gate.clear()
        self.predictor.entered.clear()
        future = scheduler.submit(req(1, value), 1)
        assert await asyncio.to_thread(self.predictor.entered.wait, WAIT_S)
        return future

    def release(self):
        self.predictor.gate.set()

    def segments(self):
        return sorted(p.name for p in SHM.glob(self.prefix + "*"))


@pytest.fixture
async def make_bench():
    async with contextlib.AsyncExitStack() as stack:
        made = []

        async def make(**kwargs):
            bench = Bench(**kwargs)
            made.append(bench)
            await stack.enter_async_context(bench.host.listening(bench.socket))
            return bench

        yield make
        for bench in made:
            bench.release()
    for bench in made:
        await bench.batcher.close(1.0)
        assert bench.segments() == [], "a segment outlived the test"
        shutil.rmtree(bench.dir)


@pytest.fixture
async def bench(make_bench):
    return await make_bench()


def req(rows, start, width=4, rid=None, deadline_s=None):
    x = np.arange(start, start + rows * width, dtype=np.float32).reshape(rows, width)
    return InferRequest({"x": x}, deadline_s or time.monotonic() + 30, id=rid)


def check(result, request):
    x = request.inputs["x"]
    np.testing.assert_array_equal(result.outputs["y"], x * 2)
    np.testing.assert_array_equal(result.outputs["tiled"], np.tile(x, (1, 4)))


async def until(condition):
    """Wait for ``condition()`` (polled; a generous bound, not a timing assertion)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.001)


async def test_a_request_gets_its_own_answer_with_its_metadata(bench):
    async with bench.client() as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "m", "1")
        request = req(3, 0, rid="abc")
        result = await asyncio.wait_for(scheduler.submit(request, 3), WAIT_S)
        check(result, request)
        assert (result.model_name, result.model_version, result.id) == ("m", "1", "abc")
        assert result.batch_size == 3
        assert result.outputs["y"].flags.owndata  # copied out of the slot
        assert scheduler.in_flight == 0
        assert scheduler.instance_count == 1
        assert client.slots_in_use == 0


async def test_requests_of_two_workers_share_one_batch(bench):
    async with bench.client() as a, bench.client() as b:
        sa, sb = (
            RemoteScheduler(EngineLink.of(a), "m", "1"),
            RemoteScheduler(EngineLink.of(b), "m", "1"),
        )
        busy = await bench.block(sa)
        requests = [req(1, 100), req(2, 200), req(1, 300), req(2, 400)]
        futures = [s.submit(q, 1) for s, q in zip((sa, sb, sa, sb), requests, strict=True)]
        await until(lambda: bench.batcher.queue_depth == 4)
        bench.release()
        results = await asyncio.wait_for(asyncio.gather(busy, *futures), WAIT_S)
        assert bench.predictor.sizes == [1, 6]
        for result, request in zip(results[1:], requests, strict=True):
            check(result, request)
            assert result.batch_size == 6


# Requests are made when the test runs: a deadline taken at collection would have passed
# by then in a long suite.
@pytest.mark.parametrize(
    ("model", "make", "error", "match"),
    [
        ("nope", lambda: req(1, 0), ModelNotFound, "'nope'"),
        ("m", lambda: InferRequest({"x": np.ones((1, 4), np.int32)}, 1e12), InvalidInput, "int32"),
        ("m", lambda: InferRequest({"z": np.ones((1, 4), np.float32)}, 1e12), InvalidInput, "'z'"),
        ("m", lambda: req(1, -5), InferenceFailed, "negative input"),
        ("m", lambda: req(1, 0, deadline_s=time.monotonic() - 1), DeadlineExceeded, "deadline"),
    ],
    ids=["unknown-model", "wrong-dtype", "wrong-name", "model-fails", "past-deadline"],
)
async def test_engine_errors_come_back_as_the_same_class(bench, model, make, error, match):
    async with bench.client() as client:
        with pytest.raises(error, match=match):
            await asyncio.wait_for(
                RemoteScheduler(EngineLink.of(client), model, "1").submit(make(), 1), WAIT_S
            )
        assert client.slots_in_use == 0


async def test_a_full_engine_queue_is_overloaded_with_its_retry_after(make_bench):
    bench = await make_bench(max_queue=1)
    async with bench.client() as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "m", "1")
        busy = await bench.block(scheduler)
        queued = scheduler.submit(req(1, 1), 1)
        await until(lambda: bench.batcher.queue_depth == 1)
        with pytest.raises(Overloaded, match="max_queue=1") as refused:
            await asyncio.wait_for(scheduler.submit(req(1, 2), 1), WAIT_S)
        assert refused.value.retry_after_s >= 1
        bench.release()
        await asyncio.wait_for(asyncio.gather(busy, queued), WAIT_S)


async def test_a_worker_out_of_slots_is_overloaded_until_one_comes_back(bench):
    async with bench.client(slots=2) as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "m", "1")
        busy = await bench.block(scheduler)
        second = scheduler.submit(req(1, 1), 1)
        with pytest.raises(Overloaded, match="all 2 shared-memory slots"):
            scheduler.submit(req(1, 2), 1)
        bench.release()
        await asyncio.wait_for(asyncio.gather(busy, second), WAIT_S)
        check(await asyncio.wait_for(scheduler.submit(req(1, 3), 1), WAIT_S), req(1, 3))


async def test_a_cancelled_request_is_dropped_by_the_engine_and_its_slot_comes_back(bench):
    async with bench.client(slots=2) as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "m", "1")
        busy = await bench.block(scheduler)
        queued = scheduler.submit(req(1, 500), 1)
        await until(lambda: bench.batcher.queue_depth == 1)
        queued.cancel()
        await until(lambda: scheduler.in_flight == 1)
        await until(lambda: bench.batcher.in_flight == 1)  # the engine let it go
        await until(lambda: client.slots_in_use == 1)  # and said so
        bench.release()
        await asyncio.wait_for(busy, WAIT_S)
        probe = req(1, 900)
        check(await asyncio.wait_for(scheduler.submit(probe, 1), WAIT_S), probe)
        assert 500 not in bench.predictor.values


@pytest.mark.parametrize("offload_bytes", [4 << 20, 0], ids=["inline", "threads"])
@pytest.mark.parametrize(
    ("rows", "width"), [(64, 32), (4, 32)], ids=["both-ways-one-off", "answer-one-off"]
)
async def test_tensor_sets_larger_than_a_slot_travel_in_one_off_segments(
    make_bench, offload_bytes, rows, width
):
    bench = await make_bench(host_offload_bytes=offload_bytes)
    async with bench.client(slots=4, slot_bytes=1024, offload_bytes=offload_bytes) as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "m", "1")
        requests = [req(rows, i * 10_000, width=width) for i in range(3)]
        results = await asyncio.wait_for(
            asyncio.gather(*(scheduler.submit(q, rows) for q in requests)), WAIT_S
        )
        for result, request in zip(results, requests, strict=True):
            check(result, request)
        assert len(bench.segments()) == 1  # the arena only: every one-off was unlinked


async def test_a_worker_that_dies_has_its_requests_dropped_and_its_arena_unlinked(bench):
    async with bench.client() as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "m", "1")
        await bench.next_event("connected")
        busy = await bench.block(scheduler)
        # a worker speaking the protocol by hand, then gone without goodbye
        arena = Arena.create(2, 4096, bench.prefix)
        reader, writer = await asyncio.open_unix_connection(str(bench.socket))
        hello = {"kind": "hello", "arena": arena.name, "slots": 2, "slot_bytes": 4096, "pid": 1}
        writer.write(encode_frame(hello))
        assert (await read_frame(reader)).kind == "welcome"
        await bench.next_event("connected")
        doomed = req(1, 700)
        layout = plan_layout(doomed.inputs)
        write_tensors(arena.slot(0), doomed.inputs, layout)
        infer = {"kind": "infer", "id": 1, "model": "m", "version": "1", "timeout_s": 30.0,
                 "slot": 0, "segment": None, "request_id": None}  # fmt: skip
        writer.write(encode_frame(infer, layout.table))
        await until(lambda: bench.batcher.queue_depth == 1)
        writer.transport.abort()
        left = await bench.next_event("disconnected")
        assert (left.pid, left.clean, left.unlinked) == (1, False, True)
        assert not (SHM / arena.name).exists()
        arena.close()  # the owner, were it alive, closes without complaint
        bench.release()
        await asyncio.wait_for(busy, WAIT_S)
        probe = req(1, 900)
        check(await asyncio.wait_for(scheduler.submit(probe, 1), WAIT_S), probe)
        assert 700 not in bench.predictor.values
    left = await bench.next_event("disconnected")
    assert (left.clean, left.unlinked) == (True, False)


@pytest.mark.parametrize(
    "first",
    [
        encode_frame({"kind": "infer", "id": 1}),
        encode_frame(
            {"kind": "hello", "arena": "psm_other", "slots": 1, "slot_bytes": 64, "pid": 1}
        ),
        struct.pack("<I", 2**31),
        struct.pack("<II", 8, 4) + b"nope",
    ],
    ids=["no-hello", "foreign-arena", "huge-frame", "not-json"],
)
async def test_a_peer_that_does_not_speak_the_protocol_is_refused(bench, first):
    async with bench.client() as client:
        reader, writer = await asyncio.open_unix_connection(str(bench.socket))
        writer.write(first)
        data = await asyncio.wait_for(reader.read(), WAIT_S)  # until the host closes it
        if data:
            assert decode_frame(data[4:]).kind == "error"
        writer.close()
        request = req(1, 5)
        check(
            await asyncio.wait_for(
                RemoteScheduler(EngineLink.of(client), "m", "1").submit(request, 1), WAIT_S
            ),
            request,
        )


async def test_garbage_after_hello_closes_that_connection_only(bench):
    async with bench.client() as client, bench.client() as other:
        await bench.next_event("connected")
        await bench.next_event("connected")
        other._writer.write(encode_frame({"kind": "launch", "id": 3}))
        left = await bench.next_event("disconnected")
        assert not left.unlinked  # its owner is alive: it unlinks the arena itself
        with pytest.raises(ModelNotReady, match=r"connection \(unknown message kind 'launch'\)"):
            await asyncio.wait_for(other.load_of("m", "1"), WAIT_S)
        request = req(1, 5)
        check(
            await asyncio.wait_for(
                RemoteScheduler(EngineLink.of(client), "m", "1").submit(request, 1), WAIT_S
            ),
            request,
        )


async def test_an_engine_going_away_fails_requests_in_flight_and_later_ones():
    bench = Bench()
    try:
        listening = bench.host.listening(bench.socket)
        await listening.__aenter__()
        async with bench.client() as client:
            scheduler = RemoteScheduler(EngineLink.of(client), "m", "1")
            await bench.next_event("connected")
            busy = await bench.block(scheduler)
            await listening.__aexit__(None, None, None)  # the host stops while it computes
            with pytest.raises(ModelNotReady, match="cancelled the request"):
                await asyncio.wait_for(busy, WAIT_S)
            left = await bench.next_event("disconnected")
            assert not left.unlinked  # the worker is alive: its arena is its own
            await until(lambda: client.slots_in_use == 0)
            with pytest.raises(ModelNotReady, match="closed the connection"):
                scheduler.submit(req(1, 1), 1)
            assert len(bench.segments()) == 1
    finally:
        bench.release()
        await bench.batcher.close(1.0)
        shutil.rmtree(bench.dir)
    assert bench.segments() == []


async def test_load_and_metrics_are_asked_of_the_engine(bench):
    async with bench.client() as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "m", "1")
        assert scheduler.instance_count == 0  # nothing heard yet
        load = await scheduler.refresh()
        assert (load.instances, load.queue_depth, load.in_flight) == (1, 0, 0)
        assert scheduler.instance_count == 1
        with pytest.raises(ModelNotFound):
            await client.load_of("m", "7")
        assert await client.metrics_text() == "# metrics of the engine\n"


async def test_closing_a_remote_scheduler_cancels_what_outlasts_the_timeout(bench):
    async with bench.client() as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "m", "1")
        busy = await bench.block(scheduler)
        await scheduler.close(timeout_s=0.01)
        assert busy.cancelled()
        with pytest.raises(ModelNotReady, match="shutting down"):
            scheduler.submit(req(1, 1), 1)
        with pytest.raises(Conflict, match="shared engine process"):
            scheduler.add_instance(None)
        with pytest.raises(Conflict):
            await scheduler.remove_instance()
        bench.release()
        await until(lambda: client.slots_in_use == 0)


async def test_a_dtype_that_cannot_cross_is_refused_before_a_slot_is_taken(bench):
    async with bench.client(slots=1) as client:
        with pytest.raises(InvalidInput, match="cannot cross"):
            client.submit("m", "1", InferRequest({"x": np.array([["a"]])}, 1e12))
        assert client.slots_in_use == 0


async def test_no_engine_on_the_socket_is_model_not_ready(tmp_path):
    with pytest.raises(ModelNotReady, match="no engine process"):
        async with EngineClient.connect(tmp_path / "none.sock", prefix="mh-tnone-"):
            pass
    assert list(SHM.glob("mh-tnone-*")) == []
