"""ClusterModels: the served models of every worker, changed as one (``ManagedModels``).

    management API ──► ClusterModels ──┬─► worker 1 (RemoteWorker ─ channel ─ LocalModels)
                                       └─► worker 2 ...

A change runs in every live worker at once and is acknowledged only when all applied it;
when one refuses or is gone, it is undone in the others (a worker where the undo fails
too is stopped, so that it restarts converged): nothing stays half-applied. Changes are
serialized by one lock, which a restarting worker also holds while it converges, so it
cannot miss a change. Ordering keeps traffic from failing:

- a load is applied everywhere before it becomes the default (a split can only name
  versions every worker has, the management API acknowledges the load before);
- an unload detaches everywhere (``detach``) before any worker drains (``drain``).

The cluster remembers what each version was loaded from (uploads are copied, since the
management API removes its upload file) and the served state the workers last agreed
on: a restarted worker loads the one and routes as the other says.

Shared placement adds the engine process, which holds every version's instances: a load
or a scale is applied there first (workers check the engine serves the same bytes, and
take note of its count); an unload reaches it last, once every worker has drained; the
routing (default, split) is the workers' alone. A restarted engine process converges to
the served state, then every worker reconnects to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from modelhost.api.workerapi import RemoteWorker
from modelhost.errors import ModelhostError, ModelNotReady
from modelhost.serving import (
    ArchiveSource,
    LoadReport,
    LoadResult,
    ModelView,
    VersionState,
    VersionView,
    WorkerView,
)

T = TypeVar("T")
log = logging.getLogger("modelhost.api")


class ClusterModels:
    """:class:`~modelhost.serving.ManagedModels` over every live worker (module docstring).

    ``on_diverged``: called with a worker whose state could not be kept equal to the others'
    (an undo failed, or its snapshot differs); the supervisor stops it, and it restarts.
    """

    def __init__(self, keep_dir: Path, on_diverged: Callable[[RemoteWorker], None]) -> None:
        self._keep_dir = keep_dir
        self._on_diverged = on_diverged
        self._members: dict[int, RemoteWorker] = {}
        self._sources: dict[tuple[str, str], ArchiveSource] = {}
        self._served: list[VersionState] = []
        self._detached: dict[tuple[str, str], set[int]] = {}  # version -> pids holding it
        self.engine: RemoteWorker | None = None  # shared placement: the engine process
        self.lock = asyncio.Lock()

    # --- membership ----------------------------------------------------------------------

    async def start(
        self, workers: list[RemoteWorker], sources: list[ArchiveSource]
    ) -> list[LoadReport]:
        """First start: every worker loads ``sources`` (in order, default flags as given)
        and becomes a member (changes reach it), not yet taking requests (:meth:`open`).

        Returns the load reports of the first worker. Raises the first worker's error.
        """
        async with self.lock:
            engine = None if self.engine is None else await self.engine.converge(sources, None)
            done = await asyncio.gather(*(w.converge(sources, None) for w in workers))
            first = done[0]
            for source, result in zip(sources, first.results, strict=True):
                self._sources[(result.name, result.version)] = source
            self._served = list(first.served)
            for worker, converged in zip(workers, done, strict=True):
                if list(converged.served) != self._served:
                    raise ModelNotReady(f"{worker} loaded another state than {workers[0]}")
            self._members.update({w.pid: w for w in workers})
            return list((engine or first).reports)

    async def open(self) -> None:
        """Have every member take requests (after :meth:`start` and a restore)."""
        await asyncio.gather(*(w.open() for w in self._live()))

    async def join(self, worker: RemoteWorker) -> int:
        """Converge a restarted worker to the served state, then have it take requests.

        Returns the number of versions it serves. Raises ModelNotReady when it cannot.
        """
        async with self.lock:
            sources = [self._sources[(s.name, s.version)] for s in self._served]
            converged = await worker.converge(sources, list(self._served))
            if list(converged.served) != self._served:
                raise ModelNotReady(
                    f"{worker} converged to {converged.served}, not to {self._served}"
                )
            await worker.open()
            self._members[worker.pid] = worker
            return len(self._served)

    def leave(self, worker: RemoteWorker) -> None:
        """Forget a worker that exited (changes no longer wait for it)."""
        self._members.pop(worker.pid, None)
        if self.engine is worker:
            self.engine = None

    async def replace_engine(self, engine: RemoteWorker) -> int:
        """Converge a restarted engine process to the served state (every version loaded,
        scaled as before), then have every worker reconnect to it.

        Returns the number of versions. Raises ModelNotReady when the engine cannot
        converge; a worker that cannot reconnect is restarted (it converges anew).
        """
        async with self.lock:
            sources = [self._sources[(s.name, s.version)] for s in self._served]
            await engine.converge(sources, list(self._served))
            self.engine = engine
            await self._on_each(list(self._members.values()), lambda w: w.reconnect())
            return len(self._served)

    # --- reads ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted({s.name for s in self._served})

    def snapshot(self) -> list[VersionState]:
        return list(self._served)

    async def describe(self, name: str) -> ModelView:
        members = self._live()
        views = await asyncio.gather(*(w.describe(name) for w in members))
        first = views[0]
        engine = self.engine
        # Shared placement: the engine process holds the instances and the one queue.
        held = {} if engine is None else {
            v.version: v for v in (await engine.describe(name)).versions
        }  # fmt: skip

        def summed(version: VersionView) -> VersionView:  # the load of every worker
            same = [v for view in views for v in view.versions if v.version == version.version]
            queued, running = sum(v.queue_depth for v in same), sum(v.in_flight for v in same)
            return dataclasses.replace(version, queue_depth=queued, in_flight=running)

        def engines(version: VersionView) -> VersionView:
            there = held.get(version.version, version)
            return dataclasses.replace(
                version, instances=there.instances, queue_depth=there.queue_depth,
                in_flight=there.in_flight,
            )  # fmt: skip

        versions = tuple(summed(v) if engine is None else engines(v) for v in first.versions)
        reports = tuple(WorkerView(w.pid, view) for w, view in zip(members, views, strict=True))
        return ModelView(first.name, first.default_version, first.split, versions, reports)

    # --- changes -------------------------------------------------------------------------

    async def load(self, source: ArchiveSource) -> LoadResult:
        async with self.lock:
            kept = await self._keep(source)
            try:
                first = await self._load_everywhere(kept)
            except BaseException:
                self._release(kept)
                raise
            key = (first.name, first.version)
            if first.fresh:
                self._sources[key] = kept
            else:
                self._release(kept)
            await self._agree()
            return first

    async def _load_everywhere(self, kept: ArchiveSource) -> LoadResult:
        """Load in the engine process (shared placement: first, since workers check that it
        serves these bytes), then in every worker, then make it the default if asked."""
        pinned = dataclasses.replace(kept, default=False)
        members, engine = self._live(), self.engine
        held = None if engine is None else await engine.load(pinned)
        try:
            results = await self._everywhere(lambda w: w.load(pinned), _unload_fresh, members)
            first = results[0]
            if kept.default and first.fresh:
                name, version = first.name, first.version
                try:
                    await self._everywhere(
                        lambda w: w.set_default(name, version),
                        lambda w, previous: w.set_default(name, previous),
                        members,
                    )
                except ModelhostError:
                    await self._undo_each(members, results, _unload_fresh)
                    raise
        except BaseException:
            if engine is not None and held is not None:
                await self._undo_each([engine], [held], _unload_fresh)
            raise
        return first

    async def unload(self, name: str, version: str) -> None:
        await self.detach(name, version)
        await self.drain(name, version)

    async def detach(self, name: str, version: str) -> None:
        async with self.lock:
            await self._everywhere(
                lambda w: w.detach(name, version), lambda w, _: w.reattach(name, version)
            )
            self._detached[(name, version)] = set(self._members)
            await self._agree()

    async def reattach(self, name: str, version: str) -> None:
        async with self.lock:
            holders = self._detached.pop((name, version), set())
            members = [w for pid, w in self._members.items() if pid in holders]
            await self._on_each(members, lambda w: w.reattach(name, version))
            await self._agree()

    async def drain(self, name: str, version: str) -> None:
        # Not under the lock: draining waits for accepted requests, and changes of other
        # versions need not wait for that.
        holders = self._detached.pop((name, version), set())
        members = [w for pid, w in self._members.items() if pid in holders]
        await self._on_each(members, lambda w: w.drain(name, version))
        if self.engine is not None:  # no worker sends it anything now
            await self._on_each([self.engine], lambda e: e.unload(name, version))
        self._release(self._sources.pop((name, version), None))

    async def set_default(self, name: str, version: str) -> str:
        async with self.lock:
            previous = await self._everywhere(
                lambda w: w.set_default(name, version),
                lambda w, old: w.set_default(name, old),
            )
            await self._agree()
            return previous[0]

    async def set_split(self, name: str, weights: dict[str, float]) -> dict[str, float]:
        async with self.lock:
            previous = await self._everywhere(
                lambda w: w.set_split(name, weights), lambda w, old: w.set_split(name, old)
            )
            await self._agree()
            return previous[0]

    async def scale(self, name: str, version: str, instances: int) -> int:
        async with self.lock:
            if self.engine is not None:
                return await self._scale_engine(self.engine, name, version, instances)
            previous = await self._everywhere(
                lambda w: w.scale(name, version, instances),
                lambda w, old: w.scale(name, version, old),
            )
            await self._agree()
            return previous[0]

    async def _scale_engine(
        self, engine: RemoteWorker, name: str, version: str, instances: int
    ) -> int:
        """Shared placement: the engine process scales; the workers take note of it."""
        previous = await engine.scale(name, version, instances)
        try:
            await self._everywhere(lambda w: w.scale(name, version, instances), _nothing)
        except BaseException:
            # Workers read the count again with their next answer from the engine.
            await self._undo_each([engine], [previous],
                                  lambda e, old: e.scale(name, version, old))  # fmt: skip
            raise
        await self._agree()
        return previous

    # --- mechanism -----------------------------------------------------------------------

    def _live(self) -> list[RemoteWorker]:
        members = list(self._members.values())
        if not members:
            raise ModelNotReady("no worker is serving right now (restarting); try again")
        return members

    async def _everywhere(
        self,
        apply: Callable[[RemoteWorker], Awaitable[T]],
        undo: Callable[[RemoteWorker, T], Awaitable[object]],
        members: list[RemoteWorker] | None = None,
    ) -> list[T]:
        """``apply`` in every member; all succeed, or those that did are undone."""
        members = self._live() if members is None else members
        outcomes = await asyncio.gather(*(apply(w) for w in members), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if not failures:
            return outcomes  # type: ignore[return-value]
        await self._undo_each(members, outcomes, undo)
        raise _most_telling(failures)

    async def _undo_each(
        self,
        members: list[RemoteWorker],
        outcomes: list[T] | list[T | BaseException],
        undo: Callable[[RemoteWorker, T], Awaitable[object]],
    ) -> None:
        for worker, outcome in zip(members, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                continue
            try:
                await undo(worker, outcome)
            except ModelhostError as exc:
                log.error("could not undo a change in %s (%s); restarting it", worker, exc)
                self._diverged(worker)

    async def _on_each(
        self, members: list[RemoteWorker], call: Callable[[RemoteWorker], Awaitable[object]]
    ) -> None:
        """``call`` in each of ``members``; one that fails is restarted (it converges)."""
        outcomes = await asyncio.gather(*(call(w) for w in members), return_exceptions=True)
        for worker, outcome in zip(members, outcomes, strict=True):
            if isinstance(outcome, ModelhostError):
                log.error("%s failed a step it cannot refuse (%s); restarting it", worker, outcome)
                self._diverged(worker)
            elif isinstance(outcome, BaseException):
                raise outcome

    async def _agree(self) -> None:
        """Record the served state the members now agree on; a member that disagrees is
        restarted (it converges to the others')."""
        members = self._live()
        states = await asyncio.gather(*(w.snapshot() for w in members), return_exceptions=True)
        agreed = next((s for s in states if not isinstance(s, BaseException)), None)
        if agreed is None:
            raise ModelNotReady("no worker answered after the change")
        self._served = agreed
        for worker, state in zip(members, states, strict=True):
            if state != agreed:
                log.error("%s serves %s, the others %s; restarting it", worker, state, agreed)
                self._diverged(worker)

    def _diverged(self, worker: RemoteWorker) -> None:
        self._members.pop(worker.pid, None)
        self._on_diverged(worker)

    async def _keep(self, source: ArchiveSource) -> ArchiveSource:
        """An upload's file is removed by the management API after the load: keep a copy
        for workers that restart later. Other sources stay where they are."""
        if source.origin != "upload":
            return source
        self._keep_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        copy = self._keep_dir / f"{uuid.uuid4().hex}.mh"
        await asyncio.to_thread(shutil.copyfile, source.path, copy)
        return dataclasses.replace(source, path=copy)

    def _release(self, source: ArchiveSource | None) -> None:
        if source is not None and source.origin == "upload":
            source.path.unlink(missing_ok=True)


async def _nothing(worker: RemoteWorker, result: object) -> None:
    """Nothing to undo."""


async def _unload_fresh(worker: RemoteWorker, result: LoadResult) -> None:
    """Undo a load: unload the version where that load added it."""
    if result.fresh:
        await worker.unload(result.name, result.version)


def _most_telling(failures: list[BaseException]) -> BaseException:
    """The error to answer with: a refusal (the request's fault) before a worker that was
    gone, before anything else."""
    for failure in failures:
        if isinstance(failure, ModelhostError) and not isinstance(failure, ModelNotReady):
            return failure
    for failure in failures:
        if isinstance(failure, ModelhostError):
            return ModelNotReady(f"{failure.message}; the change was not applied")
    return failures[0]
