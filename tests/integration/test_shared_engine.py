"""Shared placement with real processes: one engine process serves the ONNX digits model and
a gated slow model; the test process and worker processes (tests/support/shared_client.py)
submit through RemoteSchedulers, their tensors crossing in shared memory."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelhost.archive.manifest import Batching
from modelhost.errors import DeadlineExceeded, InvalidInput, ModelNotFound, Overloaded
from modelhost.monitor.metrics import Metrics
from modelhost.serving import ArchiveSource, Engine, EngineConfig
from modelhost.serving.engine_client import EngineClient
from modelhost.serving.remote import EngineLink, RemoteScheduler
from modelhost.types import InferRequest
from support.archives import repack, slow_archive

pytestmark = pytest.mark.slow

SHM = Path("/dev/shm")
WAIT_S = 120.0  # a generous bound for a loaded machine, not a timing assertion
CLIENT = Path(__file__).parents[1] / "support" / "shared_client.py"


class Lines:
    """A process's output, line by line, read by a thread; wait for a line matching."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + WAIT_S
        while True:
            for line in self.seen:
                if found := re.search(pattern, line):
                    return found
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} in {WAIT_S} s: {self.seen[-20:]}")
            if line is None:
                pytest.fail(f"process ended before a line matching {pattern!r}: {self.seen}")
            self.seen.append(line)


def start(args: list[str]) -> Lines:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return Lines(proc)


@dataclass
class EngineProcess:
    lines: Lines
    socket: Path
    prefix: str
    gates: dict[str, Path]

    def client(self):
        return EngineClient.connect(self.socket, prefix=self.prefix)

    def worker(self, model: str, version: str, *args: object) -> Lines:
        """A worker process submitting through its own EngineClient (see shared_client)."""
        cmd = [sys.executable, str(CLIENT), str(self.socket), self.prefix, model, version]
        worker = start([*cmd, *map(str, args)])
        worker.wait_for("^connected$")
        return worker


@pytest.fixture(scope="module")
def engine(onnx_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    tmp = tmp_path_factory.mktemp("shared")
    gates = {"1": tmp / "gate1", "2": tmp / "gate2"}
    slow = slow_archive(tmp / "slow1", delay_s=0.0, gate=gates["1"],
                        batching=Batching(max_batch_size=16, max_batch_delay_ms=1.0))  # fmt: skip
    tight = slow_archive(tmp / "slow2", delay_s=0.0, gate=gates["2"],
                         batching=Batching(max_batch_size=16, max_queue=2))  # fmt: skip
    tight = repack(tight, tmp / "slow-v2.mh", version="2")
    socket_dir = Path(tempfile.mkdtemp(prefix="mh", dir="/tmp"))  # unix socket paths are short
    prefix = f"mh-t{uuid.uuid4().hex[:8]}-"
    archives = [a for path in (onnx_archive, slow, tight) for a in ("--archive", str(path))]
    socket = socket_dir / "engine.sock"
    engine = [sys.executable, "-m", "modelhost.serving.engine_process"]
    lines = start([*engine, "--socket", str(socket), "--prefix", prefix, "--trust-code", *archives])
    try:
        lines.wait_for(r"^ready socket=\S+ pid=\d+ models=digits:2,slow:1,slow:2$")
        yield EngineProcess(lines, socket, prefix, gates)
        for gate in gates.values():
            gate.touch()
        lines.proc.send_signal(signal.SIGTERM)
        lines.wait_for("^stopped$")
        assert lines.proc.wait(WAIT_S) == 0
        assert not any("Traceback" in line for line in lines.seen), lines.seen
        assert not socket.exists()
        assert sorted(SHM.glob(prefix + "*")) == [], "shared memory outlived the run"
    finally:
        lines.proc.kill()
        shutil.rmtree(socket_dir)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).random((24, 1, 28, 28), dtype=np.float32)


@pytest.fixture(scope="module")
def expected(onnx_archive: Path, images: np.ndarray) -> np.ndarray:
    """The logits of each image alone, from the in-process data plane."""

    async def infer_each() -> np.ndarray:
        async with Engine.open(EngineConfig(), Metrics("reference")) as local:
            info = await local.control.load(ArchiveSource(onnx_archive))
            route = local.data.resolve(info.name, info.version)
            answers = [
                await local.data.infer(route, digits(images[i : i + 1])) for i in range(len(images))
            ]
        return np.concatenate([a.outputs["logits"] for a in answers])

    return asyncio.run(infer_each())


def digits(x: np.ndarray, deadline_s: float | None = None) -> InferRequest:
    return InferRequest({"image": x}, deadline_s or time.monotonic() + 60)


def row(value: float) -> InferRequest:
    return InferRequest({"x": np.full((1, 4), value, np.float32)}, time.monotonic() + 60)


async def metric(client: EngineClient, name: str, model: str, version: str) -> float:
    labels = {"model": model, "version": version}
    for family in text_string_to_metric_families(await client.metrics_text()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def wait_for_metric(client, name, model, version, value) -> None:
    deadline = time.monotonic() + WAIT_S
    while (seen := await metric(client, name, model, version)) != value:
        assert time.monotonic() < deadline, f"{name} of {model}:{version} stayed {seen}"
        await asyncio.sleep(0.01)  # poll interval of the wait on the metric


async def test_two_worker_processes_get_the_in_process_answers(engine, images, expected, tmp_path):
    np.save(tmp_path / "theirs.npy", images[12:])
    other = engine.worker("digits", "2", "answer", tmp_path / "theirs.npy", tmp_path / "out.npz")
    async with engine.client() as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "digits", "2")
        mine = await asyncio.gather(
            *(scheduler.submit(digits(images[i : i + 1]), 1) for i in range(12))
        )
    await asyncio.to_thread(other.wait_for, "^done$")
    assert other.proc.wait(WAIT_S) == 0
    theirs = np.load(tmp_path / "out.npz")["logits"]
    got = np.concatenate([*(r.outputs["logits"] for r in mine), theirs])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert {(r.model_name, r.model_version) for r in mine} == {("digits", "2")}


async def test_requests_of_two_worker_processes_share_one_batch(engine):
    async with engine.client() as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "slow", "1")
        busy = scheduler.submit(row(1.0), 1)  # computes until the gate file exists
        await wait_for_metric(client, "modelhost_in_flight_requests", "slow", "1", 1)
        await wait_for_metric(client, "modelhost_pending_requests", "slow", "1", 0)
        other = await asyncio.to_thread(engine.worker, "slow", "1", "hold", 2.0, 3)
        await asyncio.to_thread(other.wait_for, "^submitted$")
        mine = [scheduler.submit(row(3.0), 1) for _ in range(3)]
        await wait_for_metric(client, "modelhost_pending_requests", "slow", "1", 6)
        engine.gates["1"].touch()
        results = await asyncio.gather(busy, *mine)
        assert [r.batch_size for r in results] == [1, 6, 6, 6]
        np.testing.assert_array_equal(results[1].outputs["y"], np.full((1, 4), 6.0))
        theirs = await asyncio.to_thread(other.wait_for, r"^\[.*\]$")
        assert json.loads(theirs.group(0)) == [6, 6, 6]
        assert await metric(client, "modelhost_inference_exec_count_total", "slow", "1") == 2
    assert other.proc.wait(WAIT_S) == 0


async def test_errors_of_the_engine_are_raised_as_the_same_classes(engine, images):
    async with engine.client() as client:
        one = images[:1]
        with pytest.raises(ModelNotFound, match="'nope'"):
            await RemoteScheduler(EngineLink.of(client), "nope", "1").submit(digits(one), 1)
        with pytest.raises(ModelNotFound, match="no version '9'"):
            await RemoteScheduler(EngineLink.of(client), "digits", "9").submit(digits(one), 1)
        with pytest.raises(InvalidInput, match=r"shape \[1, 28, 28\]"):
            await RemoteScheduler(EngineLink.of(client), "digits", "2").submit(digits(images[0]), 1)
        with pytest.raises(DeadlineExceeded):
            await RemoteScheduler(EngineLink.of(client), "digits", "2").submit(
                digits(one, time.monotonic() - 1), 1
            )
        tight = RemoteScheduler(EngineLink.of(client), "slow", "2")  # max_queue 2
        busy = tight.submit(row(1.0), 1)
        await wait_for_metric(client, "modelhost_in_flight_requests", "slow", "2", 1)
        await wait_for_metric(client, "modelhost_pending_requests", "slow", "2", 0)
        queued = [tight.submit(row(2.0), 1) for _ in range(2)]
        await wait_for_metric(client, "modelhost_pending_requests", "slow", "2", 2)
        with pytest.raises(Overloaded, match="max_queue=2") as refused:
            await tight.submit(row(2.0), 1)
        assert refused.value.retry_after_s >= 1
        engine.gates["2"].touch()
        await asyncio.gather(busy, *queued)
        assert client.slots_in_use == 0


async def test_a_killed_worker_leaves_the_engine_serving_and_no_shared_memory(
    engine, images, expected, tmp_path
):
    np.save(tmp_path / "x.npy", images)
    doomed = engine.worker("digits", "2", "flood", tmp_path / "x.npy")
    await asyncio.to_thread(doomed.wait_for, "^answering$")
    pid = doomed.proc.pid
    found = await asyncio.to_thread(engine.lines.wait_for, rf"^connected pid={pid} arena=(\S+)$")
    arena = found.group(1)
    assert (SHM / arena).exists()
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(WAIT_S)
    await asyncio.to_thread(
        engine.lines.wait_for, rf"^disconnected pid={pid} arena={arena} clean=0 unlinked=[01]$"
    )
    assert not (SHM / arena).exists()  # the engine (or the dead worker's tracker) unlinked it
    async with engine.client() as client:
        scheduler = RemoteScheduler(EngineLink.of(client), "digits", "2")
        answers = await asyncio.gather(
            *(scheduler.submit(digits(images[i : i + 1]), 1) for i in range(len(images)))
        )
    got = np.concatenate([a.outputs["logits"] for a in answers])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
