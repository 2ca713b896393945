"""How optimize compares two runs and when it refuses: agreement, cosine, error."""

from __future__ import annotations

import numpy as np
import pytest

from modelhost.optimize.quality import Quality, Thresholds, compare

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(50, 10)).astype(np.float32)


def test_identical_runs_agree_fully():
    q = compare({"y": LOGITS}, {"y": LOGITS.copy()}, "y", "classification")
    assert q == Quality(rows=50, max_abs_error=0.0, top1_agreement=1.0)
    assert Thresholds().failures(q) == []


def test_top1_agreement_counts_the_rows_whose_argmax_moved():
    moved = LOGITS.copy()
    for row in range(5):  # make another class win in 5 of 50 rows
        moved[row, (LOGITS[row].argmax() + 1) % 10] = LOGITS[row].max() + 1
    q = compare({"y": LOGITS}, {"y": moved}, "y", "classification")
    assert q.top1_agreement == pytest.approx(0.9)
    assert q.max_abs_error > 0
    assert Thresholds().failures(q) == ["top-1 agreement 0.9000 < 0.99"]
    assert Thresholds(min_top1_agreement=0.9).failures(q) == []


def test_embeddings_are_held_to_their_mean_cosine_and_report_the_worst_row():
    ref = RNG.normal(size=(20, 8))
    got = ref.copy()
    got[3] = -ref[3]  # one row points the other way: cosine -1
    q = compare({"e": ref}, {"e": got}, "e", "embedding")
    assert q.cosine_min == pytest.approx(-1.0)
    assert q.cosine_mean == pytest.approx((19 - 1) / 20)
    assert Thresholds().failures(q) == ["mean cosine similarity 0.9000 < 0.99"]
    scaled = compare({"e": ref}, {"e": ref * 3}, "e", "embedding")  # direction kept
    assert scaled.cosine_min == pytest.approx(1.0)


def test_other_models_are_held_to_the_max_abs_error_over_every_output():
    a = {"y": np.zeros((4, 2)), "z": np.zeros((4, 3))}
    b = {"y": np.zeros((4, 2)), "z": np.full((4, 3), 0.02)}
    q = compare(a, b, "y", "regression")
    assert q.max_abs_error == pytest.approx(0.02)
    assert q.top1_agreement is None
    assert q.cosine_mean is None
    assert Thresholds().failures(q) == ["max abs error 0.02 > 0.01"]
    assert q.metrics() == {"optimize_max_abs_error": pytest.approx(0.02)}


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ({"y": LOGITS}, {"z": LOGITS}, "outputs differ"),
        ({"y": LOGITS}, {"y": LOGITS[:, :5]}, "shape"),
    ],
)
def test_runs_that_do_not_line_up_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        compare(a, b, "y", "classification")
