"""BodyLimit: Content-Length validation and the in-flight body budget (real ASGI calls).

The budget must come back to zero however a request ends: answered, failed, refused, or
left by its client.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from modelhost.api.middleware import BodyBudget, BodyLimit, declared_length
from modelhost.errors import InvalidInput, Overloaded, PayloadTooLarge

LENGTHS = [
    ([], None),
    ([(b"content-length", b"0")], 0),
    ([(b"content-length", b"1234")], 1234),
    ([(b"content-length", b"5"), (b"content-length", b"5")], 5),
    ([(b"content-length", b"9" * 18)], 10**18 - 1),
    ([(b"content-length", b"9" * 19)], -1),
    ([(b"content-length", b"9" * 5000)], -1),
    ([(b"content-type", b"12")], None),
]


@pytest.mark.parametrize(("headers", "expected"), LENGTHS)
def test_declared_length(headers, expected):
    assert declared_length(headers) == expected


@pytest.mark.parametrize(
    "value", ["٣".encode(), "１".encode(), b"-1", b"+1", b"1.0", b"0x1", b"", b" 1", b"1 1"]
)
def test_a_content_length_that_is_not_ascii_digits_is_invalid(value):
    with pytest.raises(InvalidInput, match="ASCII digits"):
        declared_length([(b"content-length", value)])


def test_different_content_lengths_are_invalid():
    with pytest.raises(InvalidInput, match="several different"):
        declared_length([(b"content-length", b"5"), (b"content-length", b"6")])


@pytest.mark.parametrize(
    ("held", "ask", "granted"),
    [(0, 100, True), (0, 101, False), (60, 40, True), (60, 41, False), (100, 0, True)],
)
def test_body_budget(held, ask, granted):
    budget = BodyBudget(100)
    assert budget.try_reserve(held)
    assert budget.try_reserve(ask) is granted
    assert budget.held_bytes == held + (ask if granted else 0)


# --- whole requests through the middleware -----------------------------------------------


async def read_body_app(scope, receive, send) -> None:
    """Reads the whole body like every route does, then answers its length."""
    body = await Request(scope, receive).body()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % len(body)})


async def failing_app(scope, receive, send) -> None:
    await Request(scope, receive).body()
    raise RuntimeError("the app failed")


class Client:
    """One request's receive/send pair: the body in ``pieces``; None = the client leaves."""

    def __init__(self, pieces: list[bytes | None]) -> None:
        self.pieces = list(pieces)
        self.sent: list[dict] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict:
        if not self.pieces:
            await self.gone.wait()
            return {"type": "http.disconnect"}
        piece = self.pieces.pop(0)
        if piece is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": piece, "more_body": bool(self.pieces)}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]


def scope(length: int | None) -> dict:
    headers = [] if length is None else [(b"content-length", b"%d" % length)]
    return {"type": "http", "method": "POST", "path": "/", "headers": headers}


def held_bytes(mw: BodyLimit) -> int:
    assert mw.budget is not None
    return mw.budget.held_bytes


def limit(app=read_body_app, budget: int = 1000, max_body: int = 10_000) -> BodyLimit:
    return BodyLimit(app, max_body_bytes=max_body, max_inflight_body_bytes=budget)


async def test_an_answered_request_releases_its_reservation():
    mw = limit()
    client = Client([b"x" * 600])
    await mw(scope(600), client.receive, client.send)
    assert client.status == 200
    assert held_bytes(mw) == 0


@pytest.mark.parametrize("length", [600, None], ids=["content-length", "chunked"])
async def test_a_failing_app_releases_its_reservation(length):
    mw = limit(failing_app)
    client = Client([b"x" * 300, b"x" * 300])
    with pytest.raises(RuntimeError):
        await mw(scope(length), client.receive, client.send)
    assert held_bytes(mw) == 0


@pytest.mark.parametrize("length", [600, None], ids=["content-length", "chunked"])
async def test_a_client_that_leaves_releases_its_reservation_quietly(length):
    mw = limit()
    client = Client([b"x" * 300, None])
    await mw(scope(length), client.receive, client.send)  # no ClientDisconnect escapes
    assert client.sent == []
    assert held_bytes(mw) == 0


async def test_requests_over_the_budget_are_refused_while_others_hold_it():
    mw = limit(budget=1000)
    holder = Client([b"x" * 300])  # declared 700, sends 300, then waits
    holder.pieces.append(b"x" * 400)
    holder_body = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:
        await receive()
        holder_body.set()
        await holder.gone.wait()
        await read_body_app(scope, receive, send)

    slow = BodyLimit(slow_app, max_body_bytes=10_000)
    slow.budget = mw.budget  # the same server-wide budget
    task = asyncio.create_task(slow(scope(700), holder.receive, holder.send))
    await holder_body.wait()

    over = Client([b"x" * 400])
    await mw(scope(400), over.receive, over.send)
    assert over.status == 503
    assert (b"retry-after", b"1") in over.sent[0]["headers"]

    streamed = Client([b"x" * 200, b"x" * 200])  # chunked: refused once over, mid-stream
    with pytest.raises(Overloaded, match="max_inflight_body_bytes"):
        await mw(scope(None), streamed.receive, streamed.send)

    fits = Client([b"x" * 300])
    await mw(scope(300), fits.receive, fits.send)
    assert fits.status == 200

    holder.gone.set()
    await task
    assert held_bytes(mw) == 0
    after = Client([b"x" * 1000])
    await mw(scope(1000), after.receive, after.send)
    assert after.status == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"content-length", b"9" * 5000)], 413),
        ([(b"content-length", b"20000")], 413),
        ([(b"content-length", "٣".encode())], 400),
        ([(b"content-length", b"-5")], 400),
        ([(b"content-length", b"5"), (b"content-length", b"7")], 400),
    ],
)
async def test_bad_content_length_is_refused_before_the_app(headers, status):
    mw = limit()
    client = Client([b"x"])
    await mw({"type": "http", "headers": headers}, client.receive, client.send)
    assert client.status == status
    assert (b"connection", b"close") in client.sent[0]["headers"]
    assert held_bytes(mw) == 0


async def test_a_body_over_max_body_bytes_is_refused_while_read():
    mw = limit(max_body=1000, budget=10_000)
    client = Client([b"x" * 600, b"x" * 600])
    with pytest.raises(PayloadTooLarge, match="max_body_bytes"):
        await mw(scope(None), client.receive, client.send)
    assert held_bytes(mw) == 0


async def test_without_a_budget_nothing_is_counted():
    mw = BodyLimit(read_body_app, max_body_bytes=10_000)
    client = Client([b"x" * 5000])
    await mw(scope(5000), client.receive, client.send)
    assert client.status == 200
    assert mw.budget is None
