"""A model instance: one Predictor and the one worker thread that calls it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from modelhost.runtimes.base import Predictor


@dataclass(frozen=True, slots=True)
class Computed:
    """A batch's outputs and the seconds ``predict`` took inside the worker thread."""

    outputs: dict[str, np.ndarray]
    compute_s: float


class ModelInstance:
    """Runs ``predict`` off the event loop, one batch at a time."""

    def __init__(self, predictor: Predictor, label: str) -> None:
        self.predictor = predictor
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mh-{label}")

    async def predict(self, batch: Mapping[str, np.ndarray]) -> Computed:
        """Compute one batch in this instance's worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed, batch)

    def _timed(self, batch: Mapping[str, np.ndarray]) -> Computed:
        # Timed in the worker, so the metric is the model's time, not the thread hand-off.
        start = time.perf_counter()
        outputs = self.predictor.predict(batch)
        return Computed(outputs, time.perf_counter() - start)

    def close(self) -> None:
        """Wait for the running batch, then stop the worker thread."""
        self._executor.shutdown(wait=True)
