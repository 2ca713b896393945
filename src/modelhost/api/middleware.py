"""Pure ASGI middleware (no BaseHTTPMiddleware on the hot path): request body limits."""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelhost.api.problems import error_body
from modelhost.errors import InvalidInput, ModelhostError, Overloaded, PayloadTooLarge

# 18 digits hold any body size a machine can have and always fit int64; more is refused
# before int() spends time on a 5000-digit value.
_MAX_LENGTH_DIGITS = 18


class BodyBudget:
    """Request body bytes held at once by one server, under ``max_bytes``.

    ``try_reserve`` and ``release`` run on the event loop only (no lock needed).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held_bytes = 0

    def try_reserve(self, n_bytes: int) -> bool:
        """Hold ``n_bytes`` more if that stays within the budget; False (nothing held) if not."""
        if self.held_bytes + n_bytes > self.max_bytes:
            return False
        self.held_bytes += n_bytes
        return True

    def release(self, n_bytes: int) -> None:
        self.held_bytes -= n_bytes


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's Content-Length (None when absent); -1 when over 18 digits.

    Raises:
        InvalidInput: a value that is not ASCII digits, or several different values.

    >>> declared_length([(b"content-length", b"12")])
    12
    """
    values = {v for k, v in headers if k == b"content-length"}
    if not values:
        return None
    if len(values) > 1:
        raise InvalidInput("several different Content-Length headers; send one")
    (value,) = values
    # bytes.isdigit is ASCII-only: Unicode digits, signs and spaces are refused.
    if not value.isdigit():
        raise InvalidInput("Content-Length must be ASCII digits")
    if len(value) > _MAX_LENGTH_DIGITS:
        return -1
    return int(value)


class BodyLimit:
    """Refuse bodies over ``max_body_bytes`` with 413, before or while they are read.

    With ``max_inflight_body_bytes``, the bodies of all requests through this middleware
    together may hold at most that many bytes: a declared Content-Length is reserved before
    the app runs, a chunked body is counted as it arrives; over the budget the answer is 503
    with Retry-After. The reservation is released when the app has answered or failed, or
    the client left. A body that never arrives because the client left ends the request
    quietly (nobody is there to read an answer).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_inflight_body_bytes: int | None = None,
        retry_after_s: float = 1.0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.budget = (
            None if max_inflight_body_bytes is None else BodyBudget(max_inflight_body_bytes)
        )
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        try:
            length = declared_length(scope["headers"])
        except InvalidInput as exc:
            await _refuse(send, exc)
            return
        if length is not None and not 0 <= length <= limit:
            await _refuse(send, PayloadTooLarge(_too_large(limit)))
            return
        budget = self.budget
        held = 0
        if budget is not None and length:
            if not budget.try_reserve(length):
                await _refuse(send, _over_budget(budget, self.retry_after_s))
                return
            held = length
        seen = 0
        gone = False

        async def limited_receive() -> Message:
            nonlocal seen, held, gone
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                seen += size
                if seen > limit:
                    raise PayloadTooLarge(_too_large(limit))
                if budget is not None and seen > held:
                    if not budget.try_reserve(seen - held):
                        raise _over_budget(budget, self.retry_after_s)
                    held = seen
            elif message["type"] == "http.disconnect":
                gone = True
            return message

        def release() -> None:
            nonlocal held
            if budget is not None:
                budget.release(held)
                held = 0

        async def releasing_send(message: Message) -> None:
            # Give the bytes back before the last piece of the answer leaves: a client that
            # has its answer finds them free for its next request.
            if message["type"] == "http.response.body" and not message.get("more_body"):
                release()
            await send(message)

        try:
            await self.app(scope, limited_receive, send if budget is None else releasing_send)
        except ClientDisconnect:
            if not gone:
                raise
        finally:
            release()


def _over_budget(budget: BodyBudget, retry_after_s: float) -> Overloaded:
    return Overloaded(
        f"the server holds up to {budget.max_bytes} bytes of request bodies at once "
        "(max_inflight_body_bytes) and has no room for this one; retry later",
        retry_after_s=retry_after_s,
    )


def _too_large(limit: int) -> str:
    return f"request body is over the limit of {limit} bytes (max_body_bytes)"


async def _refuse(send: Send, error: ModelhostError) -> None:
    body = error_body(error.message, error.code)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if isinstance(error, Overloaded):
        # A body within max_body_bytes: the server reads past it (without keeping it), so
        # the client, still sending, gets this answer instead of a reset connection.
        headers.append((b"retry-after", str(max(1, round(error.retry_after_s))).encode()))
    else:
        # Too large or malformed: not worth reading; the connection ends after the answer.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
