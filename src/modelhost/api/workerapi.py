"""What a worker answers over its control channel: both ends of the contract.

    RemoteWorker (supervisor)                       worker_ops(front) (worker)
    converge(sources, routing) ── "converge" ──►  load each source, then apply the routing
    open()                     ── "open"     ──►  accept on the shared socket, turn ready
    reconnect()                ── "reconnect" ─►  connect to the (restarted) engine process
    describe / snapshot / load / detach / reattach / drain / set_default / set_split / scale
                               ── same names ──►  the worker's LocalModels

The engine process of shared placement answers the same model operations over its own
models (``engine_ops``); its "open" and "reconnect" do nothing.

Arguments and answers are JSON documents of the serving core's records (ArchiveSource,
VersionState, ModelView, LoadResult, LoadReport); nothing else crosses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from modelhost.api.channel import Channel, Handler
from modelhost.api.front import InferenceFront
from modelhost.serving import (
    ArchiveSource,
    LoadReport,
    LoadResult,
    LocalModels,
    ModelView,
    VersionState,
    VersionView,
    apply_routing,
)
from modelhost.types import ModelRef


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerStart:
    """The start document: the settings a worker serves with and its place among workers.

    ``accept_at_once``: answer on the port while loading (503 until ready): the first start
    of a server. A restarted worker accepts only once it has converged.
    """

    settings: dict[str, Any]
    index: int
    workers: int
    accept_at_once: bool
    role: str = "front"  # "front": HTTP on the shared socket; "engine": the shared engine
    engine_socket: str | None = None  # shared placement: the engine process's unix socket

    def doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> WorkerStart:
        return cls(doc["settings"], int(doc["index"]), int(doc["workers"]),
                   bool(doc["accept_at_once"]), str(doc.get("role", "front")),
                   doc.get("engine_socket"))  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Converged:
    """What a converge did: per source, its load and its report; then the served state."""

    results: tuple[LoadResult, ...]
    reports: tuple[LoadReport, ...]
    served: tuple[VersionState, ...]


# --- documents ---------------------------------------------------------------------------


def _doc(record: Any) -> Any:
    return dataclasses.asdict(record)


def _source(doc: dict[str, Any]) -> ArchiveSource:
    ref = doc.get("ref")
    return ArchiveSource(
        path=Path(doc["path"]),
        ref=ModelRef(ref["name"], ref.get("version")) if ref else None,
        default=bool(doc["default"]),
        origin=doc["origin"],
        sha256=doc.get("sha256"),
    )


def _state(doc: dict[str, Any]) -> VersionState:
    return VersionState(**doc)


def _view(doc: dict[str, Any]) -> ModelView:
    versions = tuple(VersionView(**v) for v in doc["versions"])
    return ModelView(doc["name"], doc["default_version"], doc["split"], versions)


# --- the worker's end --------------------------------------------------------------------


def worker_ops(front: InferenceFront) -> dict[str, Handler]:
    """The operations a worker answers, over its front's models."""

    async def open_(_: dict[str, Any]) -> None:
        await front.accept()
        front.ready()

    async def reconnect(_: dict[str, Any]) -> None:
        await front.reconnect_engine()

    ops = model_ops(front.models)
    load_all = ops["converge"]

    async def converge(args: dict[str, Any]) -> Any:
        if front.link is not None:  # shared placement: ready needs the engine, models or not
            await front.link.connect()
        return await load_all(args)

    return ops | {"converge": converge, "open": open_, "reconnect": reconnect}


def engine_ops(models: LocalModels) -> dict[str, Handler]:
    """The operations the engine process answers, over its models."""

    async def nothing(_: dict[str, Any]) -> None:
        return None

    return model_ops(models) | {"open": nothing, "reconnect": nothing}


def model_ops(models: LocalModels) -> dict[str, Handler]:
    """The model operations of any member: load, route, scale, read."""

    async def converge(args: dict[str, Any]) -> Any:
        routing = args.get("routing")
        results, reports = [], []
        for doc in args["sources"]:
            source = _source(doc)
            if routing is not None:  # the routing below sets the defaults
                source = dataclasses.replace(source, default=False)
            result, info = await models.load_info(source)
            results.append(result)
            reports.append(LoadReport.of(info))
        if routing is not None:
            await apply_routing(models, [_state(s) for s in routing])
        return _doc(Converged(tuple(results), tuple(reports), tuple(models.snapshot())))

    async def describe(args: dict[str, Any]) -> Any:
        return _doc(await models.describe(args["name"]))

    async def snapshot(_: dict[str, Any]) -> Any:
        return [_doc(s) for s in models.snapshot()]

    async def load(args: dict[str, Any]) -> Any:
        return _doc(await models.load(_source(args["source"])))

    async def unload(args: dict[str, Any]) -> None:
        await models.unload(args["name"], args["version"])

    async def detach(args: dict[str, Any]) -> None:
        await models.detach(args["name"], args["version"])

    async def reattach(args: dict[str, Any]) -> None:
        await models.reattach(args["name"], args["version"])

    async def drain(args: dict[str, Any]) -> None:
        await models.drain(args["name"], args["version"])

    async def set_default(args: dict[str, Any]) -> str:
        return await models.set_default(args["name"], args["version"])

    async def set_split(args: dict[str, Any]) -> dict[str, float]:
        return await models.set_split(args["name"], args["weights"])

    async def scale(args: dict[str, Any]) -> int:
        return await models.scale(args["name"], args["version"], args["instances"])

    return {
        "converge": converge, "describe": describe, "snapshot": snapshot,
        "load": load, "unload": unload, "detach": detach, "reattach": reattach,
        "drain": drain, "set_default": set_default, "set_split": set_split, "scale": scale,
    }  # fmt: skip


# --- the supervisor's end ----------------------------------------------------------------


class RemoteWorker:
    """One worker process as the supervisor calls it (every method: the worker's errors,
    or ModelNotReady when it is gone)."""

    def __init__(self, index: int, pid: int, channel: Channel, role: str = "front") -> None:
        self.index = index
        self.pid = pid
        self.channel = channel
        self.role = role

    @property
    def name(self) -> str:
        return "the engine process" if self.role == "engine" else f"worker {self.index}"

    def __repr__(self) -> str:
        return f"{self.name} (pid {self.pid})"

    async def converge(
        self, sources: list[ArchiveSource], routing: list[VersionState] | None
    ) -> Converged:
        """Load ``sources`` in order; with ``routing``, then scale, default and split as it
        says (the sources' own default flags are ignored)."""
        doc = await self.channel.call("converge", {
            "sources": [_doc(s) for s in sources],
            "routing": None if routing is None else [_doc(s) for s in routing],
        })  # fmt: skip
        return Converged(
            tuple(LoadResult(**r) for r in doc["results"]),
            tuple(LoadReport(**r) for r in doc["reports"]),
            tuple(_state(s) for s in doc["served"]),
        )

    async def open(self) -> None:
        """Accept connections on the shared socket and take requests."""
        await self.channel.call("open")

    async def reconnect(self) -> None:
        """Connect to the engine process again (it was restarted and has converged)."""
        await self.channel.call("reconnect")

    async def describe(self, name: str) -> ModelView:
        return _view(await self.channel.call("describe", {"name": name}))

    async def snapshot(self) -> list[VersionState]:
        return [_state(s) for s in await self.channel.call("snapshot")]

    async def load(self, source: ArchiveSource) -> LoadResult:
        return LoadResult(**await self.channel.call("load", {"source": _doc(source)}))

    async def unload(self, name: str, version: str) -> None:
        await self.channel.call("unload", {"name": name, "version": version})

    async def detach(self, name: str, version: str) -> None:
        await self.channel.call("detach", {"name": name, "version": version})

    async def reattach(self, name: str, version: str) -> None:
        await self.channel.call("reattach", {"name": name, "version": version})

    async def drain(self, name: str, version: str) -> None:
        await self.channel.call("drain", {"name": name, "version": version})

    async def set_default(self, name: str, version: str) -> str:
        return str(await self.channel.call("set_default", {"name": name, "version": version}))

    async def set_split(self, name: str, weights: dict[str, float]) -> dict[str, float]:
        previous = await self.channel.call("set_split", {"name": name, "weights": weights})
        return {str(v): float(w) for v, w in previous.items()}

    async def scale(self, name: str, version: str, instances: int) -> int:
        args = {"name": name, "version": version, "instances": instances}
        return int(await self.channel.call("scale", args))
