"""EngineHost: the engine process's end of shared placement.

    worker 1 ─┐  unix socket: frames.py messages; tensors in each worker's arena (shm.py)
    worker 2 ─┼─► EngineHost ─► DataPlane.infer ─► the version's dynamic batcher ─► instances
    worker N ─┘   one task per request, so the requests of every worker batch together

A connection starts with ``hello``: the host maps the worker's arena. Each ``infer``
becomes a task that reads its inputs as views of the request's slot (or copies them out of
a one-off segment), awaits the data plane, writes the outputs into the same slot (or a new
one-off segment) and answers. A ``cancel``, or the worker leaving, cancels the task: the
data plane drops the request before it reaches a batch, as for an HTTP client that left.

A worker whose connection ends without ``bye`` is gone (killed, crashed): the host unlinks
its arena and the one-off segments still waiting, so /dev/shm does not fill up with a dead
worker's memory. After ``bye`` the worker unlinks its own arena.

``python -m modelhost.serving.engine_process`` runs an engine process with a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from modelhost.errors import InferenceFailed, InvalidInput, ModelhostError, Overloaded
from modelhost.serving.dataplane import Route
from modelhost.serving.frames import (
    Frame,
    FrameWriter,
    encode_frame,
    error_fields,
    read_frame,
)
from modelhost.serving.shm import PREFIX, MappedArena, is_segment_name, unlink_segment
from modelhost.serving.transfer import OFFLOAD_BYTES, Placed, place_tensors, take_tensors
from modelhost.types import InferRequest, InferResult

log = logging.getLogger("modelhost.serving.engine_host")


class InferencePlane(Protocol):
    """What the host needs of the engine: ``DataPlane``'s resolve and infer."""

    def resolve(self, name: str, version: str | None = None) -> Route: ...

    async def infer(self, route: Route, request: InferRequest) -> InferResult: ...


@dataclass(frozen=True, slots=True)
class HostEvent:
    """A worker connected (``kind="connected"``) or left (``"disconnected"``).

    ``clean``: it said goodbye. ``unlinked``: the host unlinked its arena (it left without).
    """

    kind: str
    pid: int
    arena: str
    clean: bool = True
    unlinked: bool = False


@dataclass(frozen=True, slots=True)
class _InferCall:
    """An ``infer`` message, checked."""

    id: int
    model: str
    version: str
    timeout_s: float
    slot: int
    request_id: str | None
    inputs: Placed


class _Connection:
    """One worker's connection: its arena, its requests in flight, its one-off segments."""

    def __init__(self, writer: asyncio.StreamWriter, arena: MappedArena, pid: int) -> None:
        self.writer = writer
        self.frames = FrameWriter(writer)
        self.arena = arena
        self.pid = pid
        self.requests: dict[int, asyncio.Task[None]] = {}
        self.others: set[asyncio.Task[None]] = set()
        self.busy_slots: set[int] = set()
        self.inbound: dict[int, str] = {}  # request id -> input segment not yet taken
        self.outbound: dict[int, str] = {}  # slot -> output segment the worker may not have read
        self.said_bye = False

    def send(self, header: dict[str, Any], table: bytes = b"") -> None:
        # Frames are small (the tensors are in shared memory) and at most one answer per
        # slot is outstanding, so the write buffer is bounded without awaiting drain().
        self.frames.send(header, table)

    def send_error(self, request_id: int, exc: ModelhostError) -> None:
        self.send({"kind": "error", "id": request_id, **error_fields(exc)})


class EngineHost:
    """Serves an engine's data plane to worker processes over a unix socket."""

    def __init__(
        self,
        data: InferencePlane,
        metrics_text: Callable[[], bytes] = lambda: b"",
        *,
        prefix: str = PREFIX,
        max_connections: int = 256,
        hello_timeout_s: float = 10.0,
        offload_bytes: int = OFFLOAD_BYTES,
        on_event: Callable[[HostEvent], None] = lambda event: None,
    ) -> None:
        """Args:
        data: the engine's data plane (``engine.data``).
        metrics_text: the engine's Prometheus exposition, for ``metrics`` messages.
        prefix: shared-memory names a worker may use start with this (theirs and ours).
        max_connections: workers served at once; more are refused with Overloaded.
        hello_timeout_s: seconds a new connection has to say hello.
        offload_bytes: tensor copies larger than this run in a thread.
        on_event: told when a worker connects or leaves.
        """
        self._data = data
        self._metrics_text = metrics_text
        self._prefix = prefix
        self._max_connections = max_connections
        self._hello_timeout_s = hello_timeout_s
        self._offload_bytes = offload_bytes
        self._on_event = on_event
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = False

    @property
    def connections(self) -> int:
        """Workers connected now."""
        return len(self._connections)

    @asynccontextmanager
    async def listening(self, path: Path) -> AsyncIterator[EngineHost]:
        """Accept workers on the unix socket ``path`` (mode 0600) until the block ends;
        then cancel what they have in flight (they hear ``cancelled``), close their
        connections (their arenas are theirs to unlink) and remove ``path``."""
        self._stopping = False
        server = await asyncio.start_unix_server(self._serve, path=str(path))
        os.chmod(path, 0o600)
        try:
            yield self
        finally:
            server.close()
            self._stopping = True
            requests = [task for conn in self._connections for task in conn.requests.values()]
            for task in requests:
                task.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            # A closed connection ends its handler (which must not end cancelled: asyncio
            # would report that as an unhandled error of the connection).
            for writer in self._writers:
                writer.close()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # always: asyncio runs a connection's handler in a task
            self._handlers.add(task)
        self._writers.add(writer)
        try:
            await self._converse(reader, writer)
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = await self._greet(reader, writer)
        except ModelhostError as exc:
            writer.write(encode_frame({"kind": "error", "id": 0, **error_fields(exc)}))
            await _close(writer)
            return
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            await _close(writer)
            return
        owner_gone = False
        try:
            await self._read_messages(conn, reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            owner_gone = not self._stopping
        except ModelhostError as exc:
            log.warning("worker %d broke the protocol: %s; closing its connection", conn.pid, exc)
            conn.send_error(0, exc)
        finally:
            await self._end(conn, owner_gone=owner_gone and not conn.said_bye)

    async def _greet(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Connection:
        async with asyncio.timeout(self._hello_timeout_s):
            hello = await read_frame(reader)
        if hello.kind != "hello":
            raise InvalidInput(f"the first message must be hello, not {hello.kind!r:.40}")
        if len(self._connections) >= self._max_connections:
            raise Overloaded(f"the engine serves {self._max_connections} workers already")
        pid = hello.integer("pid")
        h = hello.header
        arena = MappedArena.attach(
            h.get("arena"), h.get("slots"), h.get("slot_bytes"), self._prefix
        )
        conn = _Connection(writer, arena, pid)
        self._connections.add(conn)
        conn.send({"kind": "welcome", "pid": os.getpid()})
        self._on_event(HostEvent("connected", pid, arena.name))
        return conn

    async def _read_messages(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        """Dispatch the worker's messages until ``bye``. Raises InvalidInput when the
        worker breaks the protocol, IncompleteReadError when it is gone."""
        while True:
            frame = await read_frame(reader)
            kind = frame.kind
            if kind == "infer":
                self._start_infer(conn, frame)
            elif kind == "cancel":
                task = conn.requests.get(frame.integer("id"))
                if task is not None:
                    task.cancel()
            elif kind == "load":
                self._answer_load(conn, frame)
            elif kind == "metrics":
                other = asyncio.get_running_loop().create_task(
                    self._answer_metrics(conn, frame.integer("id"))
                )
                conn.others.add(other)
                other.add_done_callback(conn.others.discard)
            elif kind == "bye":
                conn.said_bye = True
                return
            else:
                raise InvalidInput(f"unknown message kind {kind!r:.40}")

    def _start_infer(self, conn: _Connection, frame: Frame) -> None:
        request_id = frame.integer("id")
        if request_id in conn.requests:
            raise InvalidInput(f"request id {request_id} is in flight already")
        try:
            call = self._check_infer(conn, frame, request_id)
        except ModelhostError as exc:
            segment = frame.header.get("segment")
            if is_segment_name(segment, self._prefix):
                unlink_segment(segment)  # ours from the moment it was named
            conn.send_error(request_id, exc)
            return
        conn.busy_slots.add(call.slot)
        # The worker reuses a slot only after it read the slot's last answer (and took its
        # one-off segment, if any): that segment is no longer the host's to clean up.
        conn.outbound.pop(call.slot, None)
        if call.inputs.segment is not None:
            conn.inbound[request_id] = call.inputs.segment
        task = asyncio.get_running_loop().create_task(self._infer(conn, call))
        conn.requests[request_id] = task
        task.add_done_callback(lambda t: self._finished(conn, call, t))

    def _check_infer(self, conn: _Connection, frame: Frame, request_id: int) -> _InferCall:
        slot = frame.integer("slot")
        conn.arena.slot(slot)  # in range
        if slot in conn.busy_slots:
            raise InvalidInput(f"slot {slot} is in use by another request in flight")
        segment = frame.optional_text("segment")
        if segment is not None and not is_segment_name(segment, self._prefix):
            raise InvalidInput(f"shared memory name {segment[:80]!r} is not one of this server's")
        return _InferCall(
            id=request_id,
            model=frame.text("model"),
            version=frame.text("version"),
            timeout_s=frame.number("timeout_s"),
            slot=slot,
            request_id=frame.optional_text("request_id"),
            inputs=Placed(frame.table, segment),
        )

    async def _infer(self, conn: _Connection, call: _InferCall) -> None:
        slot = conn.arena.slot(call.slot)
        try:
            conn.inbound.pop(call.id, None)  # take_tensors unlinks it, whatever happens
            inputs = await take_tensors(
                slot, call.inputs, self._prefix, self._offload_bytes, copy=False
            )
            route = self._data.resolve(call.model, call.version)
            request = InferRequest(inputs, time.monotonic() + call.timeout_s, call.request_id)
            result = await self._data.infer(route, request)
            placed = await place_tensors(result.outputs, slot, self._prefix, self._offload_bytes)
        except ModelhostError as exc:
            conn.send_error(call.id, exc)
            return
        except Exception as exc:  # a fault here fails the request, not the host
            log.exception("request %d of worker %d failed in the host", call.id, conn.pid)
            conn.send_error(call.id, InferenceFailed(f"the engine process failed: {exc!r}"))
            return
        if placed.segment is not None:
            conn.outbound[call.slot] = placed.segment
        s = route.scheduler
        header = {
            "kind": "result",
            "id": call.id,
            "model": result.model_name,
            "version": result.model_version,
            "segment": placed.segment,
            "queue_s": result.queue_s,
            "compute_s": result.compute_s,
            "batch_size": result.batch_size,
            "request_id": result.id,
            "instances": s.instance_count,
            "queue_depth": s.queue_depth,
        }
        conn.send(header, placed.table)

    def _finished(self, conn: _Connection, call: _InferCall, task: asyncio.Task[None]) -> None:
        conn.requests.pop(call.id, None)
        conn.busy_slots.discard(call.slot)
        segment = conn.inbound.pop(call.id, None)  # cancelled before the task even started
        if segment is not None:
            unlink_segment(segment)
        if task.cancelled():
            conn.send({"kind": "cancelled", "id": call.id})

    def _answer_load(self, conn: _Connection, frame: Frame) -> None:
        request_id = frame.integer("id")
        try:
            route = self._data.resolve(frame.text("model"), frame.text("version"))
        except ModelhostError as exc:
            conn.send_error(request_id, exc)
            return
        scheduler = route.scheduler
        conn.send(
            {
                "kind": "load",
                "id": request_id,
                "sha256": route.info.sha256,
                "device": route.info.device,
                "instances": scheduler.instance_count,
                "queue_depth": scheduler.queue_depth,
                "in_flight": scheduler.in_flight,
            }
        )

    async def _answer_metrics(self, conn: _Connection, request_id: int) -> None:
        try:
            text = await asyncio.to_thread(self._metrics_text)
        except Exception as exc:  # the exposition failing fails this read, not the host
            log.exception("the metrics exposition failed")
            conn.send_error(request_id, ModelhostError(f"metrics failed: {exc!r}"))
            return
        conn.send({"kind": "metrics", "id": request_id, "text": text.decode()})

    async def _end(self, conn: _Connection, *, owner_gone: bool) -> None:
        """Cancel the connection's requests, dispose of its segments, close it."""
        self._connections.discard(conn)
        if owner_gone:
            conn.writer.close()  # nobody left to answer
        tasks = [*conn.requests.values(), *conn.others]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        leftovers = list(conn.inbound.values())
        if owner_gone:  # else the worker reads its answers and takes their segments itself
            leftovers += conn.outbound.values()
        for segment in leftovers:
            unlink_segment(segment)
        unlinked = owner_gone and conn.arena.unlink()
        await conn.frames.close()
        conn.arena.close()
        self._on_event(
            HostEvent("disconnected", conn.pid, conn.arena.name, not owner_gone, unlinked)
        )


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
