"""Class scores -> labelled predictions with top-k: modelhost's own answer (:func:`classify`)
and Triton's classification extension (:func:`classification_strings`), ranked alike."""

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
    top = rank(probs, post.top_k)
    names = labels or tuple(str(i) for i in range(probs.shape[1]))
    predictions = []
    for row, idx in zip(probs, top, strict=True):
        ranked = [{"label": names[i], "score": float(row[i])} for i in idx.tolist()]
        predictions.append(
            {"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked}
        )
    return predictions


def rank(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest values of each row, highest first; ties: lower index first.

    ``scores`` is (rows, classes); ``k`` is clamped to the classes. Values are compared in
    their own dtype (no float conversion of large integers, no wrap-around of unsigned ones).
    """
    classes = scores.shape[1]
    if scores.dtype.kind == "f":  # negation is exact for floats, and the faster sort (2x)
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    # A stable ascending sort of the reversed row, read backwards: descending values, ties
    # in ascending index order.
    order = np.argsort(scores[:, ::-1], axis=1, kind="stable")[:, ::-1]
    top: np.ndarray = classes - 1 - order[:, : min(k, classes)]
    return top


def classification_strings(scores: np.ndarray, k: int, labels: tuple[str, ...]) -> np.ndarray:
    """Triton's classification extension: per row, the ``k`` highest values as strings
    ``b"<value>:<index>[:<label>]"``, highest first.

    ``scores`` has the batch on axis 0 (other axes are flattened per row); ``k`` is clamped
    to the values in a row; the value is written as Triton does (``%f`` for floats, decimal
    for integers) and the label only where ``labels`` names that index.

    Returns:
        An ``object`` array (rows, min(k, values per row)) of ``bytes`` (a BYTES tensor).

    >>> classification_strings(np.array([[1.0, 5.0, 10.0, 4.0]]), 2, ()).tolist()
    [[b'10.000000:2', b'5.000000:1']]
    """
    rows = scores.reshape(scores.shape[0], -1)
    top = rank(rows, k)
    values = np.take_along_axis(rows, top, axis=1)
    shown = "{:f}" if rows.dtype.kind == "f" else "{:d}"
    out = np.empty(top.shape, dtype=object)
    for (r, c), index in np.ndenumerate(top):
        text = f"{shown.format(values[r, c].item())}:{index}"
        if index < len(labels):
            text += f":{labels[index]}"
        out[r, c] = text.encode()
    return out
