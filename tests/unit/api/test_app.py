"""build_app's lifespan: when the app stops, its codec pool joins its threads and refuses new
payloads with ModelNotReady. The app gets real ASGI lifespan messages, as an ASGI server
with lifespans on sends them (Starlette's TestClient warns on import with this httpx, and
warnings are errors here); threads are held by a barrier, never by sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.types import ASGIApp

from modelhost.api.app import build_app
from modelhost.api.offload import CodecPool
from modelhost.api.state import ServerState
from modelhost.config import Settings
from modelhost.errors import ModelNotReady
from modelhost.monitor.metrics import Metrics

THREADS = 2


@pytest.fixture
def built_pools(monkeypatch) -> list[CodecPool]:
    """Every CodecPool that build_app makes, kept for the test to look at."""
    pools: list[CodecPool] = []
    make = CodecPool.from_settings

    def from_settings(cls, settings, metrics):
        pools.append(make(settings, metrics))
        return pools[-1]

    monkeypatch.setattr(CodecPool, "from_settings", classmethod(from_settings))
    return pools


@asynccontextmanager
async def lifespan_of(app: ASGIApp) -> AsyncIterator[None]:
    """``app`` between ASGI lifespan startup and shutdown."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    assert await from_app.get() == {"type": "lifespan.startup.complete"}
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert await from_app.get() == {"type": "lifespan.shutdown.complete"}
        await task


async def _on_every_thread(pool: CodecPool) -> list[threading.Thread]:
    """Run one job per codec thread at once (they meet at a barrier); their threads."""
    barrier = threading.Barrier(THREADS, timeout=10)

    def meet() -> threading.Thread:
        barrier.wait()
        return threading.current_thread()

    return list(await asyncio.gather(*(pool.run(meet) for _ in range(THREADS))))


async def test_the_app_lifespan_joins_the_codec_threads_and_the_closed_pool_refuses_work(
    built_pools,
):
    state = ServerState(settings=Settings(codec_threads=THREADS), metrics=Metrics("test"))
    app = build_app(state)
    (pool,) = built_pools
    async with lifespan_of(app):
        threads = await _on_every_thread(pool)
        assert len({t.ident for t in threads}) == THREADS
        assert all(t.name.startswith("modelhost-codec") and t.is_alive() for t in threads)
    assert not any(t.is_alive() for t in threads)

    with pytest.raises(ModelNotReady, match="the server is stopping"):
        await pool.run(threading.current_thread)
    with pytest.raises(ModelNotReady, match="codec pool takes no more payloads"):
        await pool.encode(10**9, bytes)
