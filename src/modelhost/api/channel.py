"""The private control channel between the supervisor and one worker: JSON lines over a
socketpair, data only (never pickle).

    supervisor: Channel.call("scale", {...})                    worker: ChannelServer
        ── {"id": 7, "op": "scale", "args": {...}} ──────────────►  ops["scale"](args)
        ◄── {"id": 7, "ok": 1}  or  {"id": 7, "error": "...", "code": "model_not_found"}

The socketpair is made by the supervisor and inherited by the worker: no path, no port,
nothing another user can connect to. The first line the supervisor sends is the worker's
start document. End of file on either side means the other side is gone: pending calls
fail with ModelNotReady, and a worker whose supervisor is gone stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from modelhost.errors import ModelhostError, ModelNotReady, error_class_for_code

# A line holds one message: a describe or a snapshot of many versions stays far below.
MAX_LINE_BYTES = 16 * 1024**2
log = logging.getLogger("modelhost.api")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def _line(doc: Any) -> bytes:
    return orjson.dumps(doc, default=str) + b"\n"


class Channel:
    """The supervisor's end: calls to one worker, answered in any order."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str
    ) -> None:
        self.label = label  # names the worker in errors: "worker 1 (pid 4242)"
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._closed: str | None = None
        self._receiving = asyncio.create_task(self._receive())

    @classmethod
    async def open(cls, sock: socket.socket, label: str, start: Mapping[str, Any]) -> Channel:
        """Talk over ``sock`` to the worker called ``label``; send it ``start`` first."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE_BYTES)
        writer.write(_line(start))
        return cls(reader, writer, label)

    async def call(self, op: str, args: Mapping[str, Any] | None = None) -> Any:
        """Run ``op`` in the worker and return its answer.

        Raises:
            The worker's ModelhostError (same class, same message); ModelNotReady when the
            worker is gone before it answered.
        """
        if self._closed is not None:
            raise ModelNotReady(self._closed)
        call_id = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = answer
        try:
            self._writer.write(_line({"id": call_id, "op": op, "args": args or {}}))
            return await answer
        finally:
            self._pending.pop(call_id, None)

    async def _receive(self) -> None:
        try:
            while line := await self._reader.readline():
                doc = orjson.loads(line)
                answer = self._pending.get(doc["id"])
                if answer is None or answer.done():
                    continue
                if "error" in doc:
                    answer.set_exception(error_class_for_code(doc["code"])(doc["error"]))
                else:
                    answer.set_result(doc["ok"])
        except OSError:  # reset by a worker that exited with calls unread: it is gone
            pass
        except ValueError as exc:  # a line that is no message: the worker is unusable
            log.warning("control channel of %s broke: %r", self.label, exc)
        self._fail_pending(f"{self.label} exited before it answered")

    def _fail_pending(self, reason: str) -> None:
        self._closed = reason
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(ModelNotReady(reason))

    async def close(self) -> None:
        """Close the channel; pending calls fail."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        self._receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._receiving
        self._fail_pending(f"{self.label} is gone")


class ChannelServer:
    """The worker's end: reads the start document, then answers calls concurrently."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._running: set[asyncio.Task[None]] = set()
        self._serving: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, sock: socket.socket) -> ChannelServer:
        """The worker's end of the socketpair."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE_BYTES)
        return cls(reader, writer)

    async def start_document(self) -> dict[str, Any]:
        """The first line: what this worker is. Raises EOFError when the supervisor is gone."""
        line = await self._reader.readline()
        if not line:
            raise EOFError("the supervisor closed the control channel before starting")
        doc = orjson.loads(line)
        if not isinstance(doc, dict):
            raise ValueError("the start document is not a JSON object")
        return doc

    def serve(self, ops: Mapping[str, Handler], on_close: Callable[[], None]) -> None:
        """Answer calls with ``ops`` until end of file, then call ``on_close``."""
        self._serving = asyncio.create_task(self._serve(ops, on_close))

    async def _serve(self, ops: Mapping[str, Handler], on_close: Callable[[], None]) -> None:
        try:
            while line := await self._reader.readline():
                doc = orjson.loads(line)
                task = asyncio.create_task(self._answer(ops, doc))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        except OSError:  # the supervisor is gone
            pass
        except ValueError as exc:
            log.warning("the control channel from the supervisor broke: %r", exc)
        on_close()

    async def _answer(self, ops: Mapping[str, Handler], doc: dict[str, Any]) -> None:
        call_id = doc.get("id")
        try:
            handler = ops.get(doc.get("op", ""))
            if handler is None:
                raise ModelhostError(f"unknown control operation {doc.get('op')!r}")
            reply: dict[str, Any] = {"id": call_id, "ok": await handler(doc.get("args", {}))}
        except ModelhostError as exc:
            reply = {"id": call_id, "error": exc.message, "code": exc.code}
        except Exception as exc:  # a bug: answer it (the supervisor must not hang), log it
            log.exception("control operation %r failed", doc.get("op"))
            reply = {"id": call_id, "error": f"unexpected {type(exc).__name__}: {exc}",
                     "code": "internal"}  # fmt: skip
        with contextlib.suppress(OSError):
            self._writer.write(_line(reply))

    async def close(self) -> None:
        """Stop answering; cancel calls still running."""
        for task in (*self._running, *([self._serving] if self._serving else [])):
            task.cancel()
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
