"""Class scores -> labelled predictions with top-k."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelhost.archive.manifest import ClassificationPostprocessing


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


def classify(
    scores: np.ndarray, labels: tuple[str, ...], post: ClassificationPostprocessing
) -> list[dict[str, Any]]:
    """One prediction per row: ``{"label", "score", "top_k": [{"label", "score"}, ...]}``.

    Labels fall back to the class index when the manifest lists none.
    """
    probs = softmax(scores.astype(np.float64)) if post.softmax else scores.astype(np.float64)
    k = min(post.top_k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = labels or tuple(str(i) for i in range(probs.shape[1]))
    predictions = []
    for row, idx in zip(probs, top, strict=True):
        ranked = [{"label": names[i], "score": float(row[i])} for i in idx.tolist()]
        predictions.append(
            {"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked}
        )
    return predictions
