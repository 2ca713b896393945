"""EngineClient: a worker process's one connection to the engine process.

    async with EngineClient.connect(socket_path, slots=64, slot_bytes=1 << 20) as client:
        future = client.submit("digits", "2", request)      # or through a RemoteScheduler

Requests are multiplexed by id over one unix socket (``frames.py``); the worker's arena
(``shm.py``) gives every request in flight a slot for its inputs, then its outputs.

- All slots taken: ``submit`` raises Overloaded at once (retry_after_s 1), like a full
  batcher queue. Waiting would add an unbounded queue in front of the engine's bounded one;
  size ``slots`` to the requests a worker should have in flight.
- Cancelling a future sends ``cancel``; the slot is reused only once the engine's last word
  on the request (result, error or cancelled) is in.
- The engine process gone: every request in flight and every later ``submit`` fails with
  ModelNotReady; the supervisor restarts it and workers reconnect with a new client. The
  one-off segments the engine never took are unlinked; the arena is unlinked on close.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelhost.errors import (
    InferenceFailed,
    InvalidInput,
    ModelhostError,
    ModelNotReady,
    Overloaded,
)
from modelhost.serving.frames import Frame, FrameWriter, encode_frame, error_from, read_frame
from modelhost.serving.served import VersionLoad
from modelhost.serving.shm import PREFIX, Arena, unlink_segment
from modelhost.serving.tensor_table import plan_layout
from modelhost.serving.transfer import (
    OFFLOAD_BYTES,
    Placed,
    place_now,
    place_tensors,
    take_now,
    take_tensors,
)
from modelhost.types import InferRequest, InferResult

log = logging.getLogger("modelhost.serving.engine_client")

# Answers may be larger than requests: a metrics exposition of many models is text.
_MAX_ANSWER_BYTES = 64 * 1024**2


@dataclass(frozen=True, slots=True)
class EngineVersion:
    """A version as the engine process serves it."""

    sha256: str
    device: str
    load: VersionLoad


@dataclass(slots=True)
class _Call:
    """A request sent (or being sent) to the engine: until its answer is in, its slot and
    its input segment are its own."""

    id: int
    slot: int
    future: asyncio.Future[InferResult]
    request_id: str | None
    segment: str | None = None
    sent: bool = False


class EngineClient:
    """A worker's connection to the engine process; see the module docstring."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        arena: Arena,
        *,
        prefix: str,
        offload_bytes: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._frames = FrameWriter(writer)
        self._arena = arena
        self._prefix = prefix
        self._offload_bytes = offload_bytes
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._queries: dict[int, asyncio.Future[Frame]] = {}
        self._loads: dict[tuple[str, str], VersionLoad] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._broken: ModelNotReady | None = None
        self._reading = asyncio.get_running_loop().create_task(self._read_answers())

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        socket_path: Path,
        *,
        slots: int = 64,
        slot_bytes: int = 1024**2,
        prefix: str = PREFIX,
        offload_bytes: int = OFFLOAD_BYTES,
        hello_timeout_s: float = 10.0,
    ) -> AsyncIterator[EngineClient]:
        """Create this worker's arena, connect to the engine process, and yield a client;
        on exit say goodbye, fail what is still in flight, unlink the arena.

        Args:
            socket_path: the engine process's unix socket.
            slots: requests this worker may have in flight at once (1..4096).
            slot_bytes: room per request for its inputs, then its outputs (rounded up to
                64); larger tensor sets travel in one-off segments.
            prefix: shared-memory names start with it (the engine's ``--prefix``).
            offload_bytes: tensor copies larger than this run in a thread.

        Raises:
            ModelNotReady: no engine process answers on ``socket_path``.
            InvalidInput, Overloaded: the engine refused the arena or has too many workers.
        """
        arena = Arena.create(slots, slot_bytes, prefix)
        try:
            try:
                reader, writer = await asyncio.open_unix_connection(str(socket_path))
            except OSError as exc:
                raise ModelNotReady(f"no engine process on {socket_path}: {exc}") from exc
            hello = {
                "kind": "hello",
                "arena": arena.name,
                "slots": arena.slot_count,
                "slot_bytes": arena.slot_bytes,
                "pid": os.getpid(),
            }
            writer.write(encode_frame(hello))
            try:
                async with asyncio.timeout(hello_timeout_s):
                    welcome = await read_frame(reader)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
                writer.close()
                raise ModelNotReady(f"the engine process on {socket_path} did not answer") from exc
            if welcome.kind != "welcome":
                writer.close()
                raise error_from(welcome)
            client = cls(reader, writer, arena, prefix=prefix, offload_bytes=offload_bytes)
            try:
                yield client
            finally:
                await client.close()
        finally:
            arena.close()

    @property
    def connected(self) -> bool:
        """False once the connection is gone (the engine process exited, or closed)."""
        return self._broken is None

    @property
    def slots_in_use(self) -> int:
        """Slots held by requests the engine has not given its last word on (a cancelled
        request keeps its slot until the engine confirms)."""
        return self._arena.slot_count - self._arena.free

    def submit(self, name: str, version: str, request: InferRequest) -> asyncio.Future[InferResult]:
        """Send ``request`` to ``name:version`` in the engine; the future gets the answer.

        Raises:
            Overloaded: every slot of this worker is in use.
            ModelNotReady: the connection to the engine process is gone.
            InvalidInput: an input's dtype cannot cross processes.
            InsufficientStorage: no room in shared memory for a one-off segment.
        """
        if self._broken is not None:
            raise self._broken
        layout = plan_layout(request.inputs)
        slot = self._arena.acquire()
        if slot is None:
            raise Overloaded(
                f"all {self._arena.slot_count} shared-memory slots of this worker are in use; "
                "retry later",
                retry_after_s=1.0,
            )
        future: asyncio.Future[InferResult] = asyncio.get_running_loop().create_future()
        call = _Call(next(self._ids), slot, future, request.id)
        self._calls[call.id] = call
        header = {
            "kind": "infer",
            "id": call.id,
            "model": name,
            "version": version,
            "slot": slot,
            "request_id": request.id,
        }
        if layout.nbytes <= self._offload_bytes:
            try:
                placed = place_now(request.inputs, layout, self._arena.slot(slot), self._prefix)
            except BaseException:
                self._finish(call)
                raise
            self._post(call, header, placed, request.deadline_s)
        else:
            self._spawn(self._place_and_post(call, header, request))
        future.add_done_callback(lambda f: self._on_done(call))
        return future

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _place_and_post(
        self, call: _Call, header: dict[str, Any], request: InferRequest
    ) -> None:
        try:
            placed = await place_tensors(
                request.inputs, self._arena.slot(call.slot), self._prefix, self._offload_bytes
            )
        except ModelhostError as exc:
            self._finish(call)
            if not call.future.done():
                call.future.set_exception(exc)
            return
        if call.future.done() or self._broken is not None:  # cancelled before it was sent
            self._finish(call)
            if placed.segment is not None:
                unlink_segment(placed.segment)
            return
        self._post(call, header, placed, request.deadline_s)

    def _post(self, call: _Call, header: dict[str, Any], placed: Placed, deadline_s: float) -> None:
        call.segment = placed.segment
        call.sent = True
        timeout_s = deadline_s - time.monotonic()  # the engine's clock may differ
        self._write(header | {"timeout_s": timeout_s, "segment": placed.segment}, placed.table)

    def _on_done(self, call: _Call) -> None:
        if call.future.cancelled() and call.sent and call.id in self._calls:
            self._write({"kind": "cancel", "id": call.id})

    def _finish(self, call: _Call) -> None:
        """The engine's last word on ``call`` is in (or it was never sent): free its slot."""
        if self._calls.pop(call.id, None) is not None:
            self._arena.release(call.slot)

    def _write(self, header: dict[str, Any], table: bytes = b"") -> None:
        # Frames are small and a worker has at most ``slots`` requests in flight, so the
        # write buffer is bounded without awaiting drain() in the synchronous submit().
        self._frames.send(header, table)

    def last_load(self, name: str, version: str) -> VersionLoad:
        """The engine's instances and queue depth of ``name:version`` as of its last answer
        (zeros before the first); ``in_flight`` is the engine's, from the last refresh."""
        return self._loads.get((name, version), VersionLoad(0, 0, 0))

    async def load_of(self, name: str, version: str) -> VersionLoad:
        """Ask the engine for the instances, queue depth and requests in flight of a version.

        Raises:
            ModelNotFound: the engine does not serve it. ModelNotReady: connection gone.
        """
        return (await self.version(name, version)).load

    async def version(self, name: str, version: str) -> EngineVersion:
        """What the engine serves as ``name:version``: the archive's sha256, the device,
        and its load now (as :meth:`load_of`).

        Raises:
            ModelNotFound: the engine does not serve it. ModelNotReady: connection gone.
        """
        frame = await self._query({"kind": "load", "model": name, "version": version})
        load = VersionLoad(
            frame.integer("instances"), frame.integer("queue_depth"), frame.integer("in_flight")
        )
        self._loads[(name, version)] = load
        return EngineVersion(frame.text("sha256"), frame.text("device"), load)

    async def metrics_text(self) -> str:
        """The engine process's Prometheus exposition (text format)."""
        return (await self._query({"kind": "metrics"})).text("text")

    async def _query(self, header: dict[str, Any]) -> Frame:
        if self._broken is not None:
            raise self._broken
        query_id = next(self._ids)
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._queries[query_id] = future
        self._write(header | {"id": query_id})
        try:
            return await future
        finally:
            self._queries.pop(query_id, None)

    async def _read_answers(self) -> None:
        reason = "closed the connection"
        try:
            while True:
                self._dispatch(await read_frame(self._reader, _MAX_ANSWER_BYTES))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ModelhostError as exc:
            reason = f"ended the connection ({exc.message})"
        except Exception as exc:  # a fault reading answers must not leave futures hanging
            log.exception("reading the engine process's answers failed")
            reason = f"answered what this worker cannot read ({exc!r})"
        if self._broken is None:
            self._broken = ModelNotReady(f"the engine process {reason}; the model is unavailable")
        self._writer.close()
        for call in list(self._calls.values()):
            if call.segment is not None:
                unlink_segment(call.segment)  # the engine may not have taken it
            if call.sent:
                self._finish(call)
            if not call.future.done():
                call.future.set_exception(self._broken)
        for query in self._queries.values():
            if not query.done():
                query.set_exception(self._broken)

    def _dispatch(self, frame: Frame) -> None:
        kind, answer_id = frame.kind, frame.integer("id")
        if answer_id == 0 and kind == "error":  # about the connection: the host closes it
            raise error_from(frame)
        query = self._queries.get(answer_id)
        if query is not None:
            if query.done():
                pass
            elif kind == "error":
                query.set_exception(error_from(frame))
            else:
                query.set_result(frame)
            return
        call = self._calls.get(answer_id)
        if call is None or not call.sent:
            raise InvalidInput(f"an answer ({kind!r:.20}) to request {answer_id}, not in flight")
        if kind == "result":
            self._on_result(call, frame)
            return
        self._finish(call)
        if call.future.done():
            return
        if kind == "error":
            call.future.set_exception(error_from(frame))
        elif kind == "cancelled":
            call.future.set_exception(ModelNotReady("the engine process cancelled the request"))
        else:
            raise InvalidInput(f"unknown answer kind {kind!r:.40}")

    def _on_result(self, call: _Call, frame: Frame) -> None:
        answer = InferResult(
            model_name=frame.text("model"),
            model_version=frame.text("version"),
            outputs={},
            queue_s=frame.number("queue_s"),
            compute_s=frame.number("compute_s"),
            batch_size=frame.integer("batch_size"),
            id=call.request_id,
        )
        placed = Placed(frame.table, frame.optional_text("segment"))
        key = (answer.model_name, answer.model_version)
        self._loads[key] = VersionLoad(
            frame.integer("instances"), frame.integer("queue_depth"), self.last_load(*key).in_flight
        )
        if call.future.done():  # cancelled while the engine computed it
            self._finish(call)
            if placed.segment is not None:
                unlink_segment(placed.segment)
            return
        slot = self._arena.slot(call.slot)
        try:
            outputs = take_now(slot, placed, self._prefix, self._offload_bytes, copy=True)
        except ModelhostError as exc:
            self._deliver(call, answer, exc)
            return
        finally:
            del slot
        if outputs is None:
            self._spawn(self._take_and_deliver(call, answer, placed))
        else:
            self._deliver(call, answer, outputs)

    async def _take_and_deliver(self, call: _Call, answer: InferResult, placed: Placed) -> None:
        slot = self._arena.slot(call.slot)
        try:
            outputs: dict[str, np.ndarray] | ModelhostError = await take_tensors(
                slot, placed, self._prefix, self._offload_bytes, copy=True
            )
        except ModelhostError as exc:
            outputs = exc
        del slot
        self._deliver(call, answer, outputs)

    def _deliver(
        self, call: _Call, answer: InferResult, outputs: dict[str, np.ndarray] | ModelhostError
    ) -> None:
        """Free the call's slot; resolve its future with the answer and its outputs (or the
        reason why they could not be read)."""
        self._finish(call)
        if call.future.done():
            return
        if isinstance(outputs, ModelhostError):
            message = f"the engine process answered unreadably: {outputs.message}"
            call.future.set_exception(InferenceFailed(message))
            return
        call.future.set_result(dataclasses.replace(answer, outputs=outputs))

    async def close(self) -> None:
        """Say goodbye and close; requests still in flight fail with ModelNotReady."""
        if self._broken is None:
            self._write({"kind": "bye"})
            self._broken = ModelNotReady("this worker's connection to the engine is closed")
        await self._frames.close()
        await asyncio.gather(self._reading, *self._tasks, return_exceptions=True)
