"""scikit-learn models to ONNX without pickle: the converted model answers as scikit-learn
does on held-out rows, and what cannot be converted or checked is refused."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("skl2onnx")
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from modelhost.archive.manifest import ModelSpec
from modelhost.errors import ConfigError
from modelhost.train.credit import FEATURES, applicants, train_credit
from modelhost.train.sklearn_export import save_sklearn


def _spec(out) -> ModelSpec:
    return ModelSpec.model_validate(json.loads((out / "modelspec.json").read_text()))


@pytest.mark.parametrize(
    "final", [LogisticRegression(max_iter=2000), RandomForestClassifier(20, random_state=0)]
)
def test_a_classifier_pipeline_converts_with_its_classes_as_labels(tmp_path, final):  # fmt: skip
    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), np.asarray(data.target_names)[data.target]
    model = make_pipeline(StandardScaler(), final).fit(x[:400], y[:400])
    names = [n.replace(" ", "_") for n in data.feature_names]
    done = save_sklearn(model, tmp_path, features=names, sample=x[400:])
    assert done.rows == len(x) - 400
    assert done.label_agreement == 1.0
    spec = _spec(tmp_path)
    assert (spec.runtime, spec.task, spec.labels) == (
        "onnx",
        "classification",
        ("benign", "malignant"),
    )
    assert spec.preprocessing is not None
    assert spec.preprocessing.features == tuple(names)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    got = session.run(["probabilities"], {"features": x[400:]})[0]
    np.testing.assert_allclose(got, model.predict_proba(x[400:]), atol=1e-4)


def test_a_regressor_converts_to_one_value_per_row(tmp_path):
    data = load_diabetes()
    x, y = data.data.astype(np.float32), data.target
    model = make_pipeline(StandardScaler(), GradientBoostingRegressor(random_state=0)).fit(x, y)
    save_sklearn(model, tmp_path, features=data.feature_names, sample=x[:50], atol=1e-3)
    spec = _spec(tmp_path)
    assert (spec.task, [o.name for o in spec.outputs]) == ("regression", ["variable"])
    got = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"features": x[:50]})[0]
    np.testing.assert_allclose(got[:, 0], model.predict(x[:50]), rtol=1e-4, atol=1e-2)


def test_what_cannot_be_converted_or_checked_is_refused(tmp_path):
    x, y = applicants(300)
    fitted = LogisticRegression(max_iter=1000).fit(x, y)
    with pytest.raises(ConfigError, match="not a fitted estimator"):
        save_sklearn(LogisticRegression(), tmp_path, features=FEATURES, sample=x)
    with pytest.raises(ConfigError, match="sample has shape"):
        save_sklearn(fitted, tmp_path, features=FEATURES[:3], sample=x)
    custom = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=1000))
    custom.fit(x, y)
    with pytest.raises(ConfigError, match="cannot convert"):
        save_sklearn(custom, tmp_path, features=FEATURES, sample=x)


def test_the_credit_recipe_is_seeded_and_learns_something(tmp_path):
    a, b = applicants(500, seed=3), applicants(500, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert 0.1 < a[1].mean() < 0.3
    report = train_credit(tmp_path, rows=2000)
    assert report.test_roc_auc > 0.75
    spec = _spec(tmp_path)
    assert spec.preprocessing is not None
    assert spec.preprocessing.features == FEATURES
    assert set(spec.labels) == {"default", "repaid"}
    with pytest.raises(ConfigError, match="at least 200"):
        train_credit(tmp_path / "small", rows=10)
