"""How far an optimized model's answers are from the original's, on the same inputs.

    compare(original, optimized, kind)  ─► Quality: max abs error per output, and
        classification: top-1 agreement (the original's argmax is the reference)
        embedding: cosine similarity per row (mean and worst)

Pure numpy; the runs that produce the outputs are the caller's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Quality:
    """The difference of two runs over the same rows.

    Attributes:
        rows: rows compared.
        max_abs_error: the largest absolute difference over every output.
        top1_agreement: share of rows whose argmax (first output) agrees; classifiers only.
        cosine_mean, cosine_min: cosine similarity of the first output's rows; embedding
            models only.
    """

    rows: int
    max_abs_error: float
    top1_agreement: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None

    def metrics(self) -> dict[str, float]:
        """The figures as manifest metrics (``optimize_`` prefix), the absent ones left out."""
        figures = {
            "optimize_max_abs_error": self.max_abs_error,
            "optimize_top1_agreement": self.top1_agreement,
            "optimize_cosine_mean": self.cosine_mean,
            "optimize_cosine_min": self.cosine_min,
        }
        return {k: float(v) for k, v in figures.items() if v is not None}


def compare(original: Outputs, optimized: Outputs, first: str, kind: str) -> Quality:
    """Compare the outputs of two runs on the same rows.

    Args:
        first: the output a classifier ranks or an embedding model answers.
        kind: ``classification``, ``embedding`` or anything else (max abs error only).

    Raises:
        ValueError: the runs answer different outputs or shapes.
    """
    if set(original) != set(optimized):
        raise ValueError(f"outputs differ: {sorted(original)} vs {sorted(optimized)}")
    worst = 0.0
    for name, ref in original.items():
        got = optimized[name]
        if got.shape != ref.shape:
            raise ValueError(f"output {name!r}: shape {list(got.shape)} vs {list(ref.shape)}")
        if ref.size and ref.dtype.kind in "fiu":
            diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
            worst = max(worst, float(np.max(diff)))
    ref = original[first].reshape(len(original[first]), -1).astype(np.float64)
    got = optimized[first].reshape(len(ref), -1).astype(np.float64)
    if kind == "classification":
        agree = float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))
        return Quality(len(ref), worst, top1_agreement=agree)
    if kind == "embedding":
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
        cosine = np.sum(ref * got, axis=1) / np.maximum(norms, 1e-12)
        return Quality(len(ref), worst, cosine_mean=float(cosine.mean()),
                       cosine_min=float(cosine.min()))  # fmt: skip
    return Quality(len(ref), worst)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The least quality an optimized archive may keep (``modelhost optimize`` refuses to
    write one below, unless forced)."""

    min_top1_agreement: float = 0.99
    min_cosine: float = 0.99
    max_abs_error: float = 1e-2

    def failures(self, quality: Quality) -> list[str]:
        """What ``quality`` misses, one sentence each (empty when it passes). Classifiers
        are held to top-1 agreement, embedding models to the mean cosine similarity (the
        worst row is reported beside it), other models to the max absolute error."""
        missed = []
        if quality.top1_agreement is not None:
            if quality.top1_agreement < self.min_top1_agreement:
                missed.append(
                    f"top-1 agreement {quality.top1_agreement:.4f} < {self.min_top1_agreement}"
                )
        elif quality.cosine_mean is not None:
            if quality.cosine_mean < self.min_cosine:
                missed.append(
                    f"mean cosine similarity {quality.cosine_mean:.4f} < {self.min_cosine}"
                )
        elif quality.max_abs_error > self.max_abs_error:
            missed.append(f"max abs error {quality.max_abs_error:.3g} > {self.max_abs_error:g}")
        return missed
