"""A model instance: one Predictor and the one worker thread that calls it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelhost.runtimes.base import Predictor


class ModelInstance:
    """Runs ``predict`` off the event loop, one batch at a time."""

    def __init__(self, predictor: Predictor, label: str) -> None:
        self.predictor = predictor
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mh-{label}")

    async def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute one batch in this instance's worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.predictor.predict, batch)

    def close(self) -> None:
        """Wait for the running batch, then stop the worker thread."""
        self._executor.shutdown(wait=True)
