"""ClusterModels over fake workers: all or nothing, the order of steps, restarts converge."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from modelhost.api.cluster import ClusterModels
from modelhost.api.workerapi import Converged
from modelhost.errors import InvalidInput, ModelhostError, ModelNotFound, ModelNotReady
from modelhost.serving import (
    ArchiveSource,
    LoadReport,
    LoadResult,
    ModelView,
    VersionState,
    VersionView,
)

SOURCES = {"a.mh": ("m", "1"), "b.mh": ("m", "2")}


class FakeWorker:
    """The served state of one worker (versions, default, split, instances); ``refuse``
    makes an operation raise; every operation is written to the shared ``log``."""

    def __init__(self, pid: int, log: list[tuple[int, str]]) -> None:
        self.index = pid
        self.pid = pid
        self.log = log
        self.versions: dict[str, int] = {}  # version -> instances
        self.default = ""
        self.split: dict[str, float] = {}
        self.detached: set[str] = set()
        self.refuse: dict[str, ModelhostError] = {}

    def _op(self, name: str) -> None:
        self.log.append((self.pid, name))
        if name in self.refuse:
            raise self.refuse[name]

    async def converge(self, sources, routing) -> Converged:
        self._op("converge")
        results = [await self.load(s) for s in sources]
        if routing is not None:
            for s in routing:
                self.versions[s.version] = s.instances
                if s.is_default:
                    self.default = s.version
            self.split = {s.version: s.weight for s in routing if s.weight > 0}
        reports = [LoadReport("m", r.version, "onnx", "cpu", 1, 0.0, 0.0) for r in results]
        return Converged(tuple(results), tuple(reports), tuple(await self.snapshot()))

    async def open(self) -> None:
        self._op("open")

    async def snapshot(self) -> list[VersionState]:
        return [
            VersionState("m", v, "file", v == self.default, self.split.get(v, 0.0), n)
            for v, n in sorted(self.versions.items())
        ]

    async def describe(self, name: str) -> ModelView:
        versions = tuple(
            VersionView(v, "onnx", "cpu", n, 1, 2, "dynamic", 8, "sha")
            for v, n in self.versions.items()
        )
        return ModelView(name, self.default, dict(self.split), versions)

    async def load(self, source: ArchiveSource) -> LoadResult:
        self._op("load")
        _, version = SOURCES[source.path.name]
        fresh = version not in self.versions
        previous = self.default or None
        self.versions.setdefault(version, 1)
        if source.default or not self.default:
            self.default = version
        return LoadResult("m", version, fresh, previous)

    async def unload(self, name: str, version: str) -> None:
        self._op("unload")
        del self.versions[version]

    async def detach(self, name: str, version: str) -> None:
        self._op("detach")
        self.versions.pop(version)
        self.detached.add(version)

    async def reattach(self, name: str, version: str) -> None:
        self._op("reattach")
        self.detached.remove(version)
        self.versions[version] = 1

    async def drain(self, name: str, version: str) -> None:
        self._op("drain")
        self.detached.remove(version)

    async def set_default(self, name: str, version: str) -> str:
        self._op("set_default")
        if version not in self.versions:
            raise ModelNotFound(f"model 'm' has no version {version!r}")
        previous, self.default = self.default, version
        return previous

    async def set_split(self, name: str, weights: dict[str, float]) -> dict[str, float]:
        self._op("set_split")
        previous, self.split = self.split, dict(weights)
        return previous

    async def scale(self, name: str, version: str, instances: int) -> int:
        self._op("scale")
        previous, self.versions[version] = self.versions[version], instances
        return previous


async def cluster_of(tmp_path: Path, count: int = 3) -> tuple[ClusterModels, list[Any], list]:
    log: list[tuple[int, str]] = []
    diverged: list[Any] = []
    cluster = ClusterModels(tmp_path / "kept", on_diverged=diverged.append)
    workers = [FakeWorker(pid, log) for pid in range(1, count + 1)]
    await cluster.start(workers, [ArchiveSource(Path("a.mh"))])  # type: ignore[arg-type]
    await cluster.open()
    log.clear()
    return cluster, workers, diverged


def states(workers: list[FakeWorker]) -> set[tuple[Any, ...]]:
    return {(w.default, tuple(sorted(w.split.items())), tuple(sorted(w.versions.items())))
            for w in workers}  # fmt: skip


async def test_a_change_is_applied_everywhere_and_recorded(tmp_path):
    cluster, workers, _ = await cluster_of(tmp_path)
    assert await cluster.scale("m", "1", 3) == 1
    assert states(workers) == {("1", (), (("1", 3),))}
    assert cluster.snapshot() == [VersionState("m", "1", "file", True, 0.0, 3)]
    assert cluster.names() == ["m"]


async def test_a_refusal_in_one_worker_is_undone_in_the_others(tmp_path):
    cluster, workers, diverged = await cluster_of(tmp_path)
    before = states(workers)
    workers[1].refuse["set_split"] = InvalidInput("weights.1 must be a number >= 0")
    with pytest.raises(InvalidInput, match=r"weights\.1"):
        await cluster.set_split("m", {"1": 1.0})
    assert states(workers) == before
    assert diverged == []


async def test_a_worker_gone_mid_change_fails_it_and_the_others_undo(tmp_path):
    cluster, workers, _ = await cluster_of(tmp_path)
    workers[2].refuse["scale"] = ModelNotReady("worker 3 (pid 3) exited before it answered")
    with pytest.raises(ModelNotReady, match="exited before it answered; the change was not"):
        await cluster.scale("m", "1", 2)
    assert {w.versions["1"] for w in workers} == {1}


async def test_a_worker_whose_undo_fails_is_restarted(tmp_path):
    cluster, workers, diverged = await cluster_of(tmp_path)
    workers[0].refuse["set_split"] = InvalidInput("no")
    # worker 2 applies the split, then cannot take it back: it must not stay different
    calls = {"n": 0}
    original = workers[1].set_split

    async def once_then_fail(name: str, weights: dict[str, float]) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ModelNotReady("gone")
        return await original(name, weights)

    workers[1].set_split = once_then_fail  # type: ignore[method-assign]
    with pytest.raises(InvalidInput):
        await cluster.set_split("m", {"1": 1.0})
    assert diverged == [workers[1]]  # the supervisor restarts it; it is no member now
    assert await cluster.scale("m", "1", 2) == 1
    assert [w.versions["1"] for w in workers] == [2, 1, 2]


async def test_a_load_is_everywhere_before_it_becomes_the_default(tmp_path):
    cluster, workers, _ = await cluster_of(tmp_path)
    done = await cluster.load(ArchiveSource(Path("b.mh"), default=True))
    assert done == LoadResult("m", "2", True, "1")
    steps = [op for _, op in workers[0].log]
    loads = [i for i, (_, op) in enumerate(workers[0].log) if op == "load"]
    defaults = [i for i, (_, op) in enumerate(workers[0].log) if op == "set_default"]
    assert steps.count("load") == 3
    assert max(loads) < min(defaults)
    assert states(workers) == {("2", (), (("1", 1), ("2", 1)))}


async def test_a_load_refused_somewhere_is_unloaded_everywhere(tmp_path):
    cluster, workers, _ = await cluster_of(tmp_path)
    workers[2].refuse["load"] = ModelhostError("disk full")
    with pytest.raises(ModelhostError, match="disk full"):
        await cluster.load(ArchiveSource(Path("b.mh")))
    assert states(workers) == {("1", (), (("1", 1),))}


async def test_an_unload_detaches_everywhere_before_any_worker_drains(tmp_path):
    cluster, workers, _ = await cluster_of(tmp_path)
    await cluster.load(ArchiveSource(Path("b.mh")))
    workers[0].log.clear()
    await cluster.unload("m", "2")
    ops = [op for _, op in workers[0].log]
    assert ops == ["detach"] * 3 + ["drain"] * 3
    assert states(workers) == {("1", (), (("1", 1),))}


async def test_a_restarted_worker_converges_to_the_served_state_before_it_opens(tmp_path):
    cluster, workers, _ = await cluster_of(tmp_path)
    await cluster.load(ArchiveSource(Path("b.mh")))
    await cluster.set_split("m", {"1": 30.0, "2": 70.0})
    await cluster.scale("m", "2", 2)
    cluster.leave(workers[0])  # type: ignore[arg-type]
    fresh = FakeWorker(9, workers[0].log)
    assert await cluster.join(fresh) == 2  # type: ignore[arg-type]
    assert [op for pid, op in fresh.log if pid == 9][-1] == "open"
    assert states([fresh, *workers[1:]]) == {
        ("1", (("1", 30.0), ("2", 70.0)), (("1", 1), ("2", 2)))
    }
    described = await cluster.describe("m")
    assert [w.pid for w in described.workers] == [2, 3, 9]
    assert {v.version: (v.queue_depth, v.in_flight) for v in described.versions} == {
        "1": (3, 6), "2": (3, 6),
    }  # fmt: skip


async def test_a_restarted_worker_that_converges_elsewhere_is_refused(tmp_path):
    cluster, workers, _ = await cluster_of(tmp_path)
    cluster.leave(workers[0])  # type: ignore[arg-type]
    odd = FakeWorker(9, [])
    original = odd.converge

    async def wrong(sources, routing) -> Converged:
        done = await original(sources, routing)
        return dataclasses.replace(done, served=())

    odd.converge = wrong  # type: ignore[method-assign]
    with pytest.raises(ModelNotReady, match="converged to"):
        await cluster.join(odd)  # type: ignore[arg-type]
    assert "open" not in [op for _, op in odd.log]
    assert [w.pid for w in (await cluster.describe("m")).workers] == [2, 3]


async def test_no_worker_left_answers_not_ready(tmp_path):
    cluster, workers, _ = await cluster_of(tmp_path, count=1)
    cluster.leave(workers[0])  # type: ignore[arg-type]
    with pytest.raises(ModelNotReady, match="no worker is serving"):
        await cluster.set_default("m", "1")
