"""The supervisor of ``modelhost serve --workers N``: N workers on one port, one management
plane.

    modelhost serve (supervisor: binds :8080 and :8081, holds the token and the registry)
      ├── management API :8081 ──► ClusterModels ──► every worker, all or nothing
      ├── worker 0   python -m modelhost.api.worker  ┐ uvicorn on the shared :8080 socket,
      ├── worker 1   ...                              │ its own engine (a copy of every
      └── ...                                         ┘ model), codecs, /metrics of all

Start: spawn N workers (each answers on the port at once: liveness 200, readiness 503),
have each load the archives, restore the routing, then open them all: ready.
``--placement shared``: first one engine process (``role="engine"``, no HTTP) that loads
the models and batches for every worker; workers hold manifests only and send tensors
to it through shared memory. It restarts like a worker; the workers then reconnect.
A worker that exits is restarted; the new one loads and routes like the others (holding
the cluster's lock, so no change slips by) before it accepts a connection.
SIGTERM/SIGINT: every worker stops accepting and answers what it accepted; exit 0.
Metrics: every worker writes its samples to one private directory, so any worker's
``/metrics`` answers for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from modelhost.api.auth import TOKEN_FILE
from modelhost.api.channel import Channel
from modelhost.api.cluster import ClusterModels
from modelhost.api.httpserver import HttpServer, url_of, uvicorn_config
from modelhost.api.management import RegistryPort, build_management_app
from modelhost.api.startup import (
    Listeners,
    ServeHooks,
    StopSignals,
    stop_signals,
    until_done_or_stopped,
)
from modelhost.api.workerapi import RemoteWorker, WorkerStart
from modelhost.config import Settings
from modelhost.errors import ModelhostError
from modelhost.monitor.metrics import MULTIPROC_ENV, mark_process_dead, prepare_multiprocess_dir
from modelhost.serving import ArchiveSource, ManagedModels
from modelhost.serving.policy import restart_delay_s

# How long a worker gets to answer what it accepted and drain, past drain_timeout_s, before
# it is killed.
_STOP_MARGIN_S = 30.0


@dataclasses.dataclass(slots=True)
class WorkerProcess:
    """One worker process: its slot, its process, its channel, its scratch directory."""

    index: int
    process: asyncio.subprocess.Process
    remote: RemoteWorker
    scratch: Path
    forgotten: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """Starts, watches and stops the workers (see the module docstring)."""

    def __init__(
        self, settings: Settings, listeners: Listeners, count: int, hooks: ServeHooks, run: Path
    ) -> None:
        self._settings = settings
        self._listeners = listeners
        self._count = count
        self._hooks = hooks
        self._run = run
        self._metrics = run / "metrics"
        self.cluster = ClusterModels(run / "uploads", on_diverged=self._restart)
        self._current: dict[int, WorkerProcess] = {}
        self._engine: WorkerProcess | None = None
        self._engine_socket = run / "engine.sock" if settings.placement == "shared" else None
        self._keepers: list[asyncio.Task[None]] = []
        self._management: HttpServer | None = None
        self._stopping = asyncio.Event()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, listeners: Listeners, count: int, hooks: ServeHooks
    ) -> AsyncIterator[Supervisor]:
        """A supervisor with a private run directory (metrics, scratch, kept uploads);
        on exit every worker is stopped and the directory removed."""
        run = Path(tempfile.mkdtemp(prefix="modelhost-run-"))
        try:
            prepare_multiprocess_dir(run / "metrics")
            supervisor = cls(settings, listeners, count, hooks, run)
            try:
                yield supervisor
            finally:
                await supervisor.stop()
        finally:
            shutil.rmtree(run, ignore_errors=True)

    async def start(
        self,
        archives: list[ArchiveSource],
        registry: RegistryPort | None,
        after_load: Callable[[ManagedModels], Awaitable[None]] | None,
    ) -> None:
        """Spawn the workers, load ``archives`` in each, restore, open: ready."""
        if self._engine_socket is not None:
            engine = await self._spawn_engine()
            self.cluster.engine = engine.remote
            self._keepers.append(asyncio.create_task(self._keep_engine(engine)))
            self._hooks.event(f"shared placement: the engine process (pid {engine.pid}) holds "
                              f"one copy of each model for {self._count} workers")  # fmt: skip
        workers = [await self._spawn(i, accept_at_once=True) for i in range(self._count)]
        self._hooks.listening(url_of(self._listeners.inference))
        for report in await self.cluster.start([w.remote for w in workers], archives):
            self._hooks.loaded(report)
        if after_load is not None:
            await after_load(self.cluster)
        if registry is not None:
            await asyncio.to_thread(registry.started, self.cluster.snapshot())
        await self.cluster.open()
        self._keepers += [asyncio.create_task(self._keep(w)) for w in workers]
        if self._listeners.management is not None and self._listeners.token is not None:
            app = build_management_app(self.cluster, self._settings, self._listeners.token,
                                       registry)  # fmt: skip
            self._management = HttpServer(uvicorn_config(app, self._settings))
            await self._management.open(self._listeners.management)
            self._hooks.management(
                url_of(self._listeners.management), self._settings.home / TOKEN_FILE
            )
        self._hooks.serving(url_of(self._listeners.inference))

    async def _spawn(self, index: int, accept_at_once: bool) -> WorkerProcess:
        engine = None if self._engine_socket is None else str(self._engine_socket)
        start = WorkerStart(self._worker_settings(), index, self._count, accept_at_once,
                            engine_socket=engine)  # fmt: skip
        worker = await self._start_process(start, f"worker {index}", self._listeners.inference)
        self._current[index] = worker  # before any await: stop() must find every process
        return worker

    async def _spawn_engine(self) -> WorkerProcess:
        assert self._engine_socket is not None
        settings = self._settings.model_dump(mode="json")
        start = WorkerStart(settings, -1, self._count, False, "engine", str(self._engine_socket))
        self._engine = await self._start_process(start, "the engine process", None)
        return self._engine

    async def _start_process(
        self, start: WorkerStart, label: str, listen: socket.socket | None
    ) -> WorkerProcess:
        ours, theirs = socket.socketpair()
        # The start document waits in the socket until the process reads it.
        channel = await Channel.open(ours, label, start.doc())
        scratch = Path(tempfile.mkdtemp(prefix=f"{start.role}-{start.index}-", dir=self._run))
        fds = (theirs.fileno(),) if listen is None else (listen.fileno(), theirs.fileno())
        listen_args = [] if listen is None else ["--listen-fd", str(listen.fileno())]
        # A worker inherits this environment, as any child does, plus: where metrics are
        # shared (prometheus_client reads it at import), and its own scratch directory for
        # extracted archives, removed when it exits (even by SIGKILL).
        env = {**os.environ, MULTIPROC_ENV: str(self._metrics), "TMPDIR": str(scratch)}
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "modelhost.api.worker", *listen_args,
                "--channel-fd", str(theirs.fileno()),
                pass_fds=fds, env=env, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C reaches the supervisor, which drains them
            )  # fmt: skip
        except BaseException:
            await channel.close()
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        finally:
            theirs.close()
        channel.label = f"{label} (pid {process.pid})"
        remote = RemoteWorker(start.index, process.pid, channel, start.role)
        return WorkerProcess(start.index, process, remote, scratch)

    def _worker_settings(self) -> dict[str, object]:
        # The in-flight body budget bounds the memory of the whole server: each worker
        # gets its share.
        share = max(1024, self._settings.max_inflight_body_bytes // self._count)
        return self._settings.model_copy(update={"max_inflight_body_bytes": share}).model_dump(
            mode="json"
        )

    async def _keep(self, worker: WorkerProcess | None) -> None:
        """Restart the worker of this slot whenever it exits, until the server stops."""
        if worker is not None:
            index = worker.index
            await self._keep_process(worker, lambda: self._spawn(index, False), self.cluster.join)

    async def _keep_engine(self, engine: WorkerProcess) -> None:
        """Restart the engine process whenever it exits, until the server stops (requests
        fail with 503 meanwhile); a new one converges, then the workers reconnect."""
        await self._keep_process(engine, self._spawn_engine, self.cluster.replace_engine)

    async def _keep_process(
        self,
        process: WorkerProcess | None,
        spawn: Callable[[], Awaitable[WorkerProcess]],
        take_over: Callable[[RemoteWorker], Awaitable[int]],
    ) -> None:
        while process is not None:
            code = await process.process.wait()
            await self._forget(process)
            if self._stopping.is_set():
                return
            self._hooks.warning(f"{process.remote} {_how(code)}; starting another")
            process = await self._replace(spawn, take_over)

    async def _replace(
        self,
        spawn: Callable[[], Awaitable[WorkerProcess]],
        take_over: Callable[[RemoteWorker], Awaitable[int]],
    ) -> WorkerProcess | None:
        """A new process for a slot, converged and serving (None: stopping)."""
        failures = 0
        while not self._stopping.is_set():
            delay_s = restart_delay_s(failures)
            if delay_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay_s)
                if self._stopping.is_set():
                    return None
            new = await spawn()
            try:
                versions = await take_over(new.remote)
            except ModelhostError as exc:
                failures += 1
                self._hooks.warning(f"{new.remote} could not take over: {exc.message}")
                with contextlib.suppress(ProcessLookupError):
                    new.process.kill()
                await new.process.wait()
                await self._forget(new)
                continue
            self._hooks.event(f"{new.remote.name} is back (pid {new.pid}), serving the same "
                              f"{versions} model version(s) as before")  # fmt: skip
            return new
        return None

    def _restart(self, remote: RemoteWorker) -> None:
        """Stop a worker whose state left the others'; its keeper starts a converged one."""
        if remote.role == "engine":
            engine = self._engine
            if engine is not None and engine.pid == remote.pid:
                with contextlib.suppress(ProcessLookupError):
                    engine.process.send_signal(signal.SIGTERM)
            return
        worker = self._current.get(remote.index)
        if worker is not None and worker.pid == remote.pid:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)

    async def _forget(self, worker: WorkerProcess) -> None:
        """Everything of an exited worker: membership, live metrics, channel, scratch."""
        if worker.forgotten:
            return
        worker.forgotten = True
        self.cluster.leave(worker.remote)
        mark_process_dead(self._metrics, worker.pid)
        await worker.remote.channel.close()
        shutil.rmtree(worker.scratch, ignore_errors=True)

    async def stop(self) -> None:
        """Stop restarting, stop the management API, then every worker (each answers what
        it accepted; one that is still loading exits at once)."""
        self._stopping.set()
        for keeper in self._keepers:
            keeper.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)
        if self._management is not None:
            await self._management.close()
        # Workers first: they answer what they accepted, through the engine process.
        await self._stop_all(list(self._current.values()))
        if self._engine is not None:
            await self._stop_all([self._engine])

    async def _stop_all(self, workers: list[WorkerProcess]) -> None:
        for worker in workers:
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        limit_s = 2 * self._settings.drain_timeout_s + _STOP_MARGIN_S
        waits = [asyncio.ensure_future(w.process.wait()) for w in workers]
        late = (await asyncio.wait(waits, timeout=limit_s))[1] if waits else set()
        for worker in workers:
            if worker.process.returncode is None:
                self._hooks.warning(f"{worker.remote} did not stop; killing it")
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        if late:
            await asyncio.wait(late)
        for worker in workers:
            await self._forget(worker)

    def kill(self) -> None:
        """Kill every worker now (a second Ctrl-C): nothing more is answered."""
        engine = [] if self._engine is None else [self._engine]
        for worker in [*self._current.values(), *engine]:
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


async def supervise(
    settings: Settings,
    archives: list[ArchiveSource],
    listeners: Listeners,
    count: int,
    hooks: ServeHooks,
    registry: RegistryPort | None,
    after_load: Callable[[ManagedModels], Awaitable[None]] | None,
) -> None:
    """Serve with ``count`` worker processes until SIGTERM/SIGINT, then stop them all.

    Raises:
        ModelhostError: a load at start failed (in any worker); nothing is served then.
    """
    async with stop_signals() as stop:
        forcing: asyncio.Task[None] | None = None
        try:
            async with Supervisor.open(settings, listeners, count, hooks) as supervisor:
                forcing = asyncio.create_task(_kill_when_forced(stop, supervisor))
                starting = asyncio.create_task(supervisor.start(archives, registry, after_load))
                if await until_done_or_stopped(starting, stop):
                    await stop.requested.wait()
        finally:
            if forcing is not None:
                forcing.cancel()


async def _kill_when_forced(stop: StopSignals, supervisor: Supervisor) -> None:
    await stop.forced.wait()  # a second Ctrl-C: stop waiting for the workers
    supervisor.kill()
