"""uvicorn's httptools protocol with the edge limits: header size and count, and timeouts.

::

    connection open ──► request line + headers ──► body ──► (response) ──► next request ...
                        │ ≤ max_header_bytes        │ each piece within body_timeout_s
                        │ ≤ max_headers fields      │ (while the server is ready to read)
                        │ within header_timeout_s   │
                        ▼                           ▼
                  431 / 408 + close           408 + close (the app sees http.disconnect)

Bytes are counted as they are fed to the parser, so httptools (which buffers a header field
until it is complete) never holds more than ``max_header_bytes`` of one request's head. A
connection that sent nothing is closed without an answer. Refusals are the JSON error body of
every other route and always close the connection: the rest of what the client sent cannot be
trusted to be a request.

Build one class per server from its settings with :func:`limited_protocol` and pass it as
``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modelhost.api.problems import error_body
from modelhost.config import Settings
from modelhost.errors import (
    HeadersTooLarge,
    InvalidInput,
    ModelhostError,
    Overloaded,
    RequestTimeout,
)

log = logging.getLogger("modelhost.api")
# How long a refused connection is still read (and what comes discarded) before it closes.
_LINGER_S = 2.0


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What one connection may cost before it is refused (bytes, fields, seconds)."""

    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
        )


def limited_protocol(limits: EdgeLimits) -> type[LimitedHttpProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` that enforces ``limits``."""
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; carries the answer."""

    def __init__(self, error: ModelhostError) -> None:
        super().__init__(error.message)
        self.error = error


class _WatchedFlow(FlowControl):
    """uvicorn's flow control, telling the protocol when reading resumes."""

    def __init__(self, transport: asyncio.Transport, on_resume: Callable[[], None]) -> None:
        super().__init__(transport)
        self._on_resume = on_resume

    def resume_reading(self) -> None:
        was_paused = self.read_paused
        super().resume_reading()
        if was_paused:
            self._on_resume()


class LimitedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses oversized heads and closes stalled connections.

    - request line + headers over ``max_header_bytes``, or more than ``max_headers`` fields:
      431 and close;
    - headers not complete ``header_timeout_s`` after the connection opened (or after the
      first byte of a following request): 408 and close (nothing received: close);
    - no new piece of an unfinished body for ``body_timeout_s`` while reading is not paused
      by flow control (paused means the app is not reading yet, not that the client is
      slow): 408 and close. The app's ``receive()`` then returns ``http.disconnect``.

    - chunk framing and trailers (bytes that carry no body, buffered by httptools) over
      ``max_header_bytes`` since the last body byte: 431 and close;
    - a request while ``max_connections`` connections or requests are open: 503 JSON with
      Retry-After (uvicorn's own check answers in plain text).

    When a pipelined request is refused while the one before it is still being answered,
    that answer is finished first and the connection closed after it.
    """

    limits: ClassVar[EdgeLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # bytes fed while waiting for this request's headers
        self._header_fields = 0
        self._awaiting_head = True
        self._message_begun = False
        self._in_body = False
        self._body_seen = False
        self._framing_bytes = 0  # bytes of this body's framing since its last body byte
        self._refused = False
        self._last_body_s = 0.0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        # Replaces uvicorn's own check (see on_headers_complete).
        self._max_connections = self.limit_concurrency
        self.limit_concurrency = None

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _WatchedFlow(transport, self._reading_resumed)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self._awaiting_head and self._head_timer is None:
            self._arm_head_timer()  # the first byte of a following request
        rest: bytes | memoryview = data
        while rest:
            piece = rest
            in_head = self._awaiting_head
            if in_head:
                # Feed at most what the head may still take: a longer head is refused
                # before httptools buffers it.
                room = self.limits.max_header_bytes - self._head_bytes
                if room <= 0:
                    self._refuse(HeadersTooLarge(_too_many_bytes(self.limits)))
                    return
                if len(rest) > room:
                    piece, rest = memoryview(rest)[:room], memoryview(rest)[room:]
                else:
                    rest = b""
                self._head_bytes += len(piece)
            else:
                rest = b""
            self._body_seen = False
            if not self._feed(piece):
                return
            if not in_head and self._in_body and not self._body_seen:
                # Bytes that carried no body: chunk framing or trailers, which httptools
                # buffers like headers. Bounded like them (give or take one read).
                self._framing_bytes += len(piece)
                if self._framing_bytes > self.limits.max_header_bytes:
                    self._refuse(HeadersTooLarge(_too_much_framing(self.limits)))
                    return
        if self._in_body and self._body_timer is None and not self.flow.read_paused:
            self._arm_body_timer(self.limits.body_timeout_s)

    def _feed(self, data: bytes | memoryview) -> bool:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.error)
            else:
                self.logger.warning("Invalid HTTP request received: %s", exc)
                self._refuse(InvalidInput(f"invalid HTTP request: {exc}"))
            return False
        return True

    def send_400_response(self, msg: str) -> None:
        self._refuse(InvalidInput(msg))

    # --- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_fields = 0
        self._message_begun = True
        if self._head_timer is None:
            self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_fields += 1
        if self._header_fields > self.limits.max_headers:
            raise _Refused(
                HeadersTooLarge(f"more than {self.limits.max_headers} header fields (max_headers)")
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._in_body = True
        self._framing_bytes = 0
        self._last_body_s = self.loop.time()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        limit = self._max_connections
        if limit is None or (len(self.connections) < limit and len(self.tasks) < limit):
            super().on_headers_complete()
            return
        # uvicorn starts self.app for the request: for this one, an app that refuses it.
        app, self.app = self.app, _too_many_connections(limit)
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        self._last_body_s = self.loop.time()
        self._body_seen = True
        self._framing_bytes = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._awaiting_head = True
        self._message_begun = False
        self._head_bytes = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # --- timers -------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self._refused:
            return
        if not self._message_begun:
            self._refuse(None)  # nothing of a request arrived: there is nobody to answer
            return
        self._refuse(
            RequestTimeout(
                f"request headers not complete within {self.limits.header_timeout_s:g} s "
                "(header_timeout_s)"
            )
        )

    def _arm_body_timer(self, delay_s: float) -> None:
        self._body_timer = self.loop.call_later(delay_s, self._body_timed_out)

    def _reading_resumed(self) -> None:
        # Time spent paused was the app's, not the client's: start counting again.
        self._last_body_s = self.loop.time()
        if self._in_body and self._body_timer is None and not self._refused:
            self._arm_body_timer(self.limits.body_timeout_s)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self._refused or self.flow.read_paused:
            return  # resuming re-arms the timer
        if self.cycle.waiting_for_100_continue:
            # The client waits for our "100 Continue", sent when the app first reads.
            self._last_body_s = self.loop.time()
        idle_s = self.loop.time() - self._last_body_s
        if idle_s < self.limits.body_timeout_s:
            self._arm_body_timer(self.limits.body_timeout_s - idle_s)
            return
        self._refuse(
            RequestTimeout(
                f"no new piece of the request body within {self.limits.body_timeout_s:g} s "
                "(body_timeout_s)"
            )
        )

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    # --- refusing -----------------------------------------------------------------------

    def _refuse(self, error: ModelhostError | None) -> None:
        """Answer ``error`` (None: nothing) and close, unless an earlier response is still
        being written: then close right after it (see :meth:`on_response_complete`)."""
        self._refused = True
        self._cancel_timers()
        if error is not None:
            log.info("%s: %s", _peer(self.client), error.message)
        cycle = self.cycle
        earlier_running = bool(self.pipeline) or (
            not self._in_body and cycle is not None and not cycle.response_complete
        )
        if earlier_running:
            self.pipeline.clear()
            self.flow.pause_reading()
            return
        if self._in_body and (cycle.response_started or cycle.disconnected):
            self.transport.close()  # the app answered already, or the client left
            return
        if self._in_body:
            # The app's receive() returns http.disconnect from now on; its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        if error is not None:
            self._write_error(error)
        self._close_lingering()

    def _close_lingering(self) -> None:
        # Closing at once with unread bytes from the client makes the kernel send a reset,
        # and the client's kernel then drops our answer unread: send it, stop writing, read
        # and discard what still comes for a moment, then close (as nginx does).
        if self.transport.is_closing():
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def on_response_complete(self) -> None:
        if self._refused:
            self.server_state.total_requests += 1
            self.transport.close()
            return
        super().on_response_complete()

    def _write_error(self, error: ModelhostError) -> None:
        body = error_body(error.message, error.code)
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)


def _too_many_connections(limit: int) -> ASGI3Application:
    error = Overloaded(
        f"the server has {limit} connections or requests open (max_connections); retry later"
    )
    body = error_body(error.message, error.code)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"retry-after", b"%d" % max(1, round(error.retry_after_s))),
        (b"connection", b"close"),
    ]

    async def refuse(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return refuse


def _too_much_framing(limits: EdgeLimits) -> str:
    return (
        f"chunk framing and trailers of the body are over {limits.max_header_bytes} bytes "
        "(max_header_bytes)"
    )


def _too_many_bytes(limits: EdgeLimits) -> str:
    return f"request line and headers are over {limits.max_header_bytes} bytes (max_header_bytes)"


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"
