"""``credit-risk``: will a loan applicant default? A scikit-learn classifier on tabular data.

The data is synthetic: no PyPI package at hand ships a real credit data set offline, so the
applicants are drawn from a seeded generator, documented here so anyone can reproduce or
replace it. Per applicant (``numpy.random.default_rng(seed)``):

    income               annual, lognormal(mean=ln 48,000, sigma=0.45)
    debt_to_income       beta(2, 5)                             (0..1)
    credit_history_years gamma(shape=4, scale=2.5)              (~10 on average)
    late_payments        poisson(0.2 + 1.6 * debt_to_income)    (last 24 months)
    loan_amount          income * uniform(0.05, 0.6)
    employment_years     exponential(6), capped at 40

    risk = -3.4 + 6.0 * debt_to_income + 1.1 * late_payments
           - 0.18 * credit_history_years - 1.5 * log(income / 48,000)
           + 2.5 * loan_amount / income - 0.08 * employment_years + normal(0, 0.3)
    default = 1 when uniform(0, 1) < sigmoid(risk)            (~18 % default)

A Pipeline (StandardScaler + GradientBoostingClassifier) is fit on 80 % (stratified) and
scored on the rest; it is converted to ONNX (``sklearn_export.save_sklearn``), never
pickled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelhost.errors import ConfigError
from modelhost.train.sklearn_export import save_sklearn

FEATURES = (
    "income", "debt_to_income", "credit_history_years", "late_payments", "loan_amount",
    "employment_years",
)  # fmt: skip
LABELS = ("repaid", "default")


@dataclass(frozen=True, slots=True)
class CreditReport:
    """A credit-risk training run: held-out accuracy and ROC AUC, the default rate."""

    out_dir: Path
    rows: int
    default_rate: float
    test_accuracy: float
    test_roc_auc: float
    duration_s: float


def applicants(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` synthetic applicants (see the module docstring): features (rows, 6) float64
    in :data:`FEATURES` order, and 0/1 default labels."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(np.log(48_000), 0.45, rows)
    dti = rng.beta(2, 5, rows)
    history = rng.gamma(4, 2.5, rows)
    late = rng.poisson(0.2 + 1.6 * dti)
    loan = income * rng.uniform(0.05, 0.6, rows)
    employment = np.minimum(rng.exponential(6, rows), 40)
    risk = (
        -3.4 + 6.0 * dti + 1.1 * late - 0.18 * history - 1.5 * np.log(income / 48_000)
        + 2.5 * loan / income - 0.08 * employment + rng.normal(0, 0.3, rows)
    )  # fmt: skip
    default = (rng.uniform(0, 1, rows) < 1 / (1 + np.exp(-risk))).astype(np.int64)
    x = np.column_stack([income, dti, history, late, loan, employment])
    return x, default


def train_credit(out_dir: Path, *, rows: int = 6000, seed: int = 0) -> CreditReport:
    """Train the credit-risk classifier and write ``model.onnx`` + ``modelspec.json``.

    Raises:
        ConfigError: ``rows`` below 200 (too few to split and score).
    """
    if rows < 200:
        raise ConfigError(f"--rows {rows}: at least 200 applicants are needed")
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    x, y = applicants(rows, seed)
    named = np.asarray(LABELS)[y]  # the classes are the answer's labels
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), named, test_size=0.2, random_state=seed, stratify=y
    )
    model = make_pipeline(
        StandardScaler(),
        GradientBoostingClassifier(n_estimators=150, max_depth=3, random_state=seed),
    ).fit(x_train, y_train)
    column = list(model.classes_).index("default")
    proba = model.predict_proba(x_test)[:, column]
    accuracy = float(accuracy_score(y_test, model.predict(x_test)))
    auc = float(roc_auc_score(y_test == "default", proba))
    metrics = {"test_accuracy": accuracy, "test_roc_auc": auc, "default_rate": float(y.mean())}
    save_sklearn(model, out_dir, features=FEATURES, sample=x_test, metrics=metrics)
    return CreditReport(out_dir, rows, float(y.mean()), accuracy, auc,
                        time.perf_counter() - started)  # fmt: skip
