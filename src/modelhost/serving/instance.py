"""A model instance: one Predictor and the one worker thread that calls it.

Batch assembly (concatenating the requests' inputs) and the row check of the answer run in
that thread too: the event loop only hands the parts over and waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from modelhost.runtimes.base import Predictor

Inputs = Mapping[str, np.ndarray]


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

    async def predict(self, parts: Sequence[Inputs], rows: int) -> Computed:
        """Concatenate ``parts`` (the requests of one batch, ``rows`` rows in all) and
        compute them in this instance's worker thread.

        Raises:
            ValueError: an output does not have ``rows`` rows (answers are split back by
                position, so the requests would get each other's answers). Whatever the
                model raises.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, parts, rows)

    def _run(self, parts: Sequence[Inputs], rows: int) -> Computed:
        batch = concatenate(parts)
        # Timed in the worker, so the metric is the model's time, not the thread hand-off.
        start = time.perf_counter()
        outputs = self.predictor.predict(batch)
        compute_s = time.perf_counter() - start
        check_rows(outputs, rows)
        return Computed(outputs, compute_s)

    def close(self) -> None:
        """Wait for the running batch, then stop the worker thread."""
        self._executor.shutdown(wait=True)


def concatenate(parts: Sequence[Inputs]) -> dict[str, np.ndarray]:
    """One batch of the parts' inputs, stacked along axis 0 (one part: as it is)."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def check_rows(outputs: Mapping[str, np.ndarray], rows: int) -> None:
    """Raises ValueError unless every output has ``rows`` rows."""
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != rows:
            raise ValueError(
                f"output {name!r} has shape {list(value.shape)} for a batch of {rows} rows"
            )
