"""A worker process stand-in for shared-placement tests: submits through a RemoteScheduler.

    python tests/support/shared_client.py SOCKET PREFIX MODEL VERSION MODE ...

Modes (each prints ``connected`` once its client is up, then):
    answer IN.npy OUT.npz  one request per row of IN, all at once; writes the outputs
                           (stacked) and each request's batch size to OUT, prints ``done``
    hold VALUE COUNT       COUNT requests of one (1, 4) row of VALUE; prints ``submitted``,
                           then the batch sizes of the answers as JSON, and exits
    flood IN.npy           keeps 8 requests of IN's first row in flight forever; prints
                           ``answering`` after the first answer (run it to be killed)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from modelhost.serving.engine_client import EngineClient
from modelhost.serving.remote import EngineLink, RemoteScheduler
from modelhost.types import InferRequest


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def request(x: np.ndarray) -> InferRequest:
    return InferRequest({"image": x} if x.ndim == 4 else {"x": x}, time.monotonic() + 60)


async def main(socket: str, prefix: str, model: str, version: str, mode: str, *rest: str) -> None:
    async with EngineClient.connect(Path(socket), prefix=prefix, slots=16) as client:
        scheduler = RemoteScheduler(EngineLink.of(client), model, version)
        say("connected")
        if mode == "answer":
            rows = np.load(rest[0])
            futures = [scheduler.submit(request(rows[i : i + 1]), 1) for i in range(len(rows))]
            results = await asyncio.gather(*futures)
            outputs = {
                k: np.concatenate([r.outputs[k] for r in results]) for k in results[0].outputs
            }
            np.savez(rest[1], batch_sizes=[r.batch_size for r in results], **outputs)
            say("done")
        elif mode == "hold":
            x = np.full((1, 4), float(rest[0]), np.float32)
            futures = [scheduler.submit(request(x), 1) for _ in range(int(rest[1]))]
            say("submitted")
            results = await asyncio.gather(*futures)
            say(json.dumps([r.batch_size for r in results]))
        elif mode == "flood":
            row = np.load(rest[0])[:1]
            await scheduler.submit(request(row), 1)
            say("answering")
            while True:
                await asyncio.gather(*(scheduler.submit(request(row), 1) for _ in range(8)))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
