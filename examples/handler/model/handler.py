"""An anomaly scorer no stock runtime covers: how far each row of four sensor readings lies
from the normal readings described in ``stats.json`` (a robust z-score: median and MAD).

Served by modelhost's ``python`` runtime, which imports this file: the server must be started
with ``--trust-code``. numpy only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class Handler:
    """``x`` float32 (batch, 4) -> ``score`` float32 (batch, 1): the root mean square of the
    readings' robust z-scores; ``anomalous`` bool (batch, 1): score over the threshold."""

    def __init__(self, model_dir: Path) -> None:
        stats = json.loads((model_dir / "stats.json").read_text())
        self.median = np.asarray(stats["median"], dtype=np.float64)
        self.scale = 1.4826 * np.asarray(stats["mad"], dtype=np.float64)
        self.threshold = float(stats["threshold"])

    def preprocess(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return (inputs["x"].astype(np.float64) - self.median) / self.scale

    def predict(self, z: np.ndarray) -> np.ndarray:
        return np.sqrt(np.mean(z * z, axis=1, keepdims=True))

    def postprocess(self, score: np.ndarray) -> dict[str, np.ndarray]:
        return {"score": score.astype(np.float32), "anomalous": score > self.threshold}
