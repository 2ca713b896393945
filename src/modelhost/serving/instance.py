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
    """A batch's outputs, the seconds ``predict`` took inside the worker thread, and the
    share of padding in its padded inputs (0.0 when nothing was padded)."""

    outputs: dict[str, np.ndarray]
    compute_s: float
    padding: float = 0.0


class ModelInstance:
    """Runs ``predict`` off the event loop, one batch at a time."""

    def __init__(self, predictor: Predictor, label: str) -> None:
        self.predictor = predictor
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mh-{label}")

    async def predict(
        self, parts: Sequence[Inputs], rows: int, pad: Mapping[str, float] | None = None
    ) -> Computed:
        """Concatenate ``parts`` (the requests of one batch, ``rows`` rows in all; the
        inputs named in ``pad`` padded along axis 1 to the longest) and compute them in
        this instance's worker thread.

        Raises:
            ValueError: an output does not have ``rows`` rows (answers are split back by
                position, so the requests would get each other's answers). Whatever the
                model raises.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, parts, rows, pad or {})

    def _run(self, parts: Sequence[Inputs], rows: int, pad: Mapping[str, float]) -> Computed:
        batch, padding = concatenate_padded(parts, pad) if pad else (concatenate(parts), 0.0)
        # Timed in the worker, so the metric is the model's time, not the thread hand-off.
        start = time.perf_counter()
        outputs = self.predictor.predict(batch)
        compute_s = time.perf_counter() - start
        check_rows(outputs, rows)
        return Computed(outputs, compute_s, padding)

    def close(self) -> None:
        """Wait for the running batch, then stop the worker thread."""
        self._executor.shutdown(wait=True)


def concatenate(parts: Sequence[Inputs]) -> dict[str, np.ndarray]:
    """One batch of the parts' inputs, stacked along axis 0 (one part: as it is)."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def concatenate_padded(
    parts: Sequence[Inputs], pad: Mapping[str, float]
) -> tuple[dict[str, np.ndarray], float]:
    """One batch of the parts' inputs; each input named in ``pad`` is first padded along
    axis 1 to the longest part, with its value. Also returns the share of the padded
    inputs' elements that padding added (0.0 when all parts were as long).

    >>> a = {"ids": np.array([[5, 6, 7]]), "x": np.array([1.0])}
    >>> b = {"ids": np.array([[8]]), "x": np.array([2.0])}
    >>> batch, padding = concatenate_padded([a, b], {"ids": 0})
    >>> batch["ids"].tolist(), round(padding, 3)
    ([[5, 6, 7], [8, 0, 0]], 0.333)
    """
    batch: dict[str, np.ndarray] = {}
    added = total = 0
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if name in pad:
            width = max(a.shape[1] for a in arrays)
            padded = []
            for a in arrays:
                missing = width - a.shape[1]
                if missing:
                    filler = np.full((a.shape[0], missing, *a.shape[2:]), pad[name], a.dtype)
                    a = np.concatenate([a, filler], axis=1)
                    added += filler.size
                padded.append(a)
                total += a.size
            arrays = padded
        batch[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return batch, (added / total if total else 0.0)


def check_rows(outputs: Mapping[str, np.ndarray], rows: int) -> None:
    """Raises ValueError unless every output has ``rows`` rows."""
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != rows:
            raise ValueError(
                f"output {name!r} has shape {list(value.shape)} for a batch of {rows} rows"
            )
