"""The control channel over a real socketpair: calls, errors by class, order, end of file."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from modelhost.api.channel import Channel, ChannelServer
from modelhost.errors import InvalidInput, ModelhostError, ModelNotFound, ModelNotReady


async def pair(ops: dict[str, Any]) -> tuple[Channel, ChannelServer, asyncio.Event]:
    ours, theirs = socket.socketpair()
    channel = await Channel.open(ours, "worker 0 (pid 1)", {"index": 0})
    server = await ChannelServer.open(theirs)
    assert await server.start_document() == {"index": 0}
    closed = asyncio.Event()
    server.serve(ops, on_close=closed.set)
    return channel, server, closed


async def test_calls_answer_with_data_and_errors_keep_their_class():
    async def echo(args: dict[str, Any]) -> Any:
        return {"got": args, "list": [1, 2.5, None]}

    async def missing(args: dict[str, Any]) -> Any:
        raise ModelNotFound(f"model {args['name']!r} is not loaded")

    async def bug(_: dict[str, Any]) -> Any:
        raise KeyError("oops")

    channel, server, _ = await pair({"echo": echo, "missing": missing, "bug": bug})
    assert await channel.call("echo", {"a": "b"}) == {"got": {"a": "b"}, "list": [1, 2.5, None]}
    with pytest.raises(ModelNotFound, match="model 'x' is not loaded"):
        await channel.call("missing", {"name": "x"})
    with pytest.raises(ModelhostError, match="unknown control operation 'nope'"):
        await channel.call("nope")
    with pytest.raises(ModelhostError, match="unexpected KeyError"):
        await channel.call("bug")
    await channel.close()
    await server.close()


async def test_calls_run_concurrently_and_are_matched_by_id():
    release = asyncio.Event()

    async def slow(_: dict[str, Any]) -> str:
        await release.wait()
        return "slow"

    async def fast(_: dict[str, Any]) -> str:
        release.set()
        return "fast"

    channel, server, _ = await pair({"slow": slow, "fast": fast})
    first = asyncio.create_task(channel.call("slow"))
    assert await channel.call("fast") == "fast"  # answered while "slow" still runs
    assert await first == "slow"
    await channel.close()
    await server.close()


async def test_a_worker_gone_fails_pending_and_later_calls():
    never, running = asyncio.Event(), asyncio.Event()

    async def hang(_: dict[str, Any]) -> None:
        running.set()
        await never.wait()

    channel, server, _ = await pair({"hang": hang})
    pending = asyncio.create_task(channel.call("hang"))
    await running.wait()  # the worker is running the call
    await server.close()  # the worker's end goes away
    with pytest.raises(ModelNotReady, match=r"worker 0 \(pid 1\) exited before it answered"):
        await pending
    with pytest.raises(ModelNotReady):
        await channel.call("hang")
    await channel.close()


async def test_the_worker_stops_when_the_supervisor_is_gone():
    async def ok(_: dict[str, Any]) -> int:
        return 1

    channel, server, closed = await pair({"ok": ok})
    assert await channel.call("ok") == 1
    await channel.close()
    await asyncio.wait_for(closed.wait(), 10)
    await server.close()


async def test_a_refusal_is_not_an_error_of_the_channel():
    async def refuse(_: dict[str, Any]) -> None:
        raise InvalidInput("weights.1 must be a number >= 0, got -1.0")

    channel, server, _ = await pair({"refuse": refuse})
    for _ in range(3):
        with pytest.raises(InvalidInput, match=r"weights\.1"):
            await channel.call("refuse")
    await channel.close()
    await server.close()
