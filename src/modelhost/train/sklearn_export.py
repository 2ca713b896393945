"""A scikit-learn model as a packable directory, without pickle: converted to ONNX.

    save_sklearn(estimator, out_dir, features=[...], sample=X_holdout)
        └─► skl2onnx (probabilities as a plain tensor, no ZipMap)
        └─► the ONNX answers checked against the estimator's own on ``sample``
        └─► out_dir/model.onnx + modelspec.json (runtime onnx, named features) ─► modelhost pack

A classifier answers ``probabilities`` (batch, classes) with its classes as labels (the
task answer is ``{"label", "score", "top_k"}``); a regressor ``variable`` (batch, 1).
Pipelines (scalers, encoders of numeric data, a final estimator) convert as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelhost.archive.manifest import (
    ClassificationPostprocessing,
    ModelSpec,
    TabularPreprocessing,
    TensorSignature,
)
from modelhost.errors import ConfigError

INPUT = "features"
MODEL_FILE = "model.onnx"
OPSET = 17


@dataclass(frozen=True, slots=True)
class Conversion:
    """What the check of the converted model found on the sample."""

    rows: int
    max_abs_error: float
    label_agreement: float | None  # classifiers: share of rows whose top class agrees


def save_sklearn(
    estimator: Any,
    out_dir: Path,
    *,
    features: Sequence[str],
    sample: np.ndarray,
    metrics: dict[str, float] | None = None,
    atol: float = 1e-4,
) -> Conversion:
    """Convert a fitted estimator to ONNX, check it, and write a packable directory.

    Args:
        estimator: a fitted scikit-learn estimator or Pipeline (classifier or regressor).
        features: the names of the input columns, in order.
        sample: held-out rows (n, len(features)) the converted model is checked on.
        metrics: figures to record in the spec (held-out accuracy, ...).
        atol: the largest difference accepted between the two models' answers.

    Raises:
        ConfigError: not fitted, a feature count that does not match, an estimator skl2onnx
            cannot convert (named), or answers that differ past ``atol``.
    """
    from sklearn.base import is_classifier
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except (NotFittedError, TypeError) as exc:
        raise ConfigError(f"{type(estimator).__name__} is not a fitted estimator: {exc}") from exc
    names = tuple(features)
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != len(names) or not len(x):
        raise ConfigError(
            f"sample has shape {list(x.shape)}; it needs rows of the {len(names)} features"
        )
    classifier = is_classifier(estimator)
    onnx_model = _convert(estimator, len(names), classifier)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / MODEL_FILE
    target.write_bytes(onnx_model.SerializeToString())
    conversion = _check(estimator, target, x, classifier, atol)
    if classifier:
        labels = tuple(str(c) for c in estimator.classes_)
        outputs = (TensorSignature(name="probabilities", dtype="float32", shape=(-1, len(labels))),)
        post = ClassificationPostprocessing(softmax=False, top_k=min(3, len(labels)))
        task = "classification"
    else:
        labels, post, task = (), None, "regression"
        outputs = (TensorSignature(name="variable", dtype="float32", shape=(-1, 1)),)
    spec = ModelSpec(
        runtime="onnx",
        task=task,
        inputs=(TensorSignature(name=INPUT, dtype="float32", shape=(-1, len(names))),),
        outputs=outputs,
        labels=labels,
        preprocessing=TabularPreprocessing(features=names),
        postprocessing=post,
        runtime_config={"file": MODEL_FILE},
        metrics={**(metrics or {}), "onnx_max_abs_error": conversion.max_abs_error},
    )
    (out_dir / "modelspec.json").write_text(spec.model_dump_json(indent=2))
    return conversion


def _convert(estimator: Any, width: int, classifier: bool) -> Any:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    options = {id(final): {"zipmap": False}} if classifier else None
    try:
        return to_onnx(
            estimator, initial_types=[(INPUT, FloatTensorType([None, width]))],
            options=options, target_opset=OPSET,
        )  # fmt: skip
    except Exception as exc:  # skl2onnx raises its own and plain errors per estimator
        raise ConfigError(
            f"skl2onnx cannot convert {type(final).__name__} ({exc}); use an estimator it "
            "supports (https://onnx.ai/sklearn-onnx/supported.html)"
        ) from exc


def _check(estimator: Any, path: Path, x: np.ndarray, classifier: bool, atol: float) -> Conversion:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if classifier:
        got = session.run(["probabilities"], {INPUT: x})[0]
        expected = estimator.predict_proba(x)
        agreement = float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))
    else:
        got = session.run(["variable"], {INPUT: x})[0].reshape(len(x), -1)
        expected = np.asarray(estimator.predict(x), dtype=np.float64).reshape(len(x), -1)
        agreement = None
    error = float(np.max(np.abs(got.astype(np.float64) - expected)))
    if error > atol:
        raise ConfigError(
            f"the ONNX conversion answers differently from scikit-learn on the sample (max "
            f"abs error {error:.3g}, top-class agreement {agreement}); refusing to write it"
        )
    return Conversion(len(x), error, agreement)
