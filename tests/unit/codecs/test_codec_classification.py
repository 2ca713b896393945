"""softmax and classify: probabilities, stability, top-k order and labels."""

import numpy as np
import pytest

from modelhost.archive.manifest import ClassificationPostprocessing
from modelhost.codecs.classification import classify, softmax


@pytest.mark.parametrize(
    "logits",
    [
        [[0.0, 0.0]],
        [[1.0, 2.0, 3.0], [-1.0, 0.0, 5.0]],
        [[0.1] * 10],
        [[-3.0]],
        [[2.5, -7.0, 0.0, 1.0]] * 4,
    ],
)
def test_softmax_rows_are_probabilities(logits):
    probs = softmax(np.array(logits, np.float64))
    assert probs.shape == np.shape(logits)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        ([[0.0, 0.0]], [[0.5, 0.5]]),
        ([[0.0, np.log(3.0)]], [[0.25, 0.75]]),
        ([[1000.0, 1000.0]], [[0.5, 0.5]]),
        ([[1e308, 1e308, 1e308, 1e308]], [[0.25] * 4]),
        ([[-1000.0, 0.0]], [[0.0, 1.0]]),
        ([[10_000.0, 0.0, -10_000.0]], [[1.0, 0.0, 0.0]]),
        ([[800.0, 800.0 + np.log(3.0)]], [[0.25, 0.75]]),
    ],
)
def test_softmax_values_are_stable_for_large_logits(logits, expected):
    probs = softmax(np.array(logits, np.float64))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, expected, atol=1e-12)


def test_softmax_is_row_wise_and_shift_invariant():
    logits = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, -4.0]])
    shifted = logits + np.array([[100.0], [-50.0]])
    np.testing.assert_allclose(softmax(shifted), softmax(logits))
    np.testing.assert_allclose(softmax(logits)[0], softmax(logits[:1])[0])


def test_softmax_of_float32_logits_stays_float32_and_finite():
    probs = softmax(np.array([[3e38, 3e38]], np.float32))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, [[0.5, 0.5]])


def test_classify_ranks_by_score_with_labels():
    scores = np.array([[0.1, 3.0, 1.0, -2.0]])
    post = ClassificationPostprocessing(top_k=3)
    [pred] = classify(scores, ("cat", "dog", "owl", "eel"), post)
    assert [entry["label"] for entry in pred["top_k"]] == ["dog", "owl", "cat"]
    top_scores = [entry["score"] for entry in pred["top_k"]]
    assert top_scores == sorted(top_scores, reverse=True)
    np.testing.assert_allclose(top_scores, softmax(scores)[0, [1, 2, 0]])
    assert pred["label"] == "dog"
    assert pred["score"] == top_scores[0]
    assert all(isinstance(entry["score"], float) for entry in pred["top_k"])


def test_classify_falls_back_to_class_indices_without_labels():
    scores = np.array([[0.0, 0.0, 5.0], [9.0, 1.0, 0.0]])
    preds = classify(scores, (), ClassificationPostprocessing(top_k=2))
    assert [p["label"] for p in preds] == ["2", "0"]
    assert [[e["label"] for e in p["top_k"]] for p in preds] == [["2", "0"], ["0", "1"]]


@pytest.mark.parametrize(("top_k", "expected_len"), [(1, 1), (3, 3), (4, 4), (100, 4)])
def test_top_k_is_capped_by_the_class_count(top_k, expected_len):
    scores = np.array([[1.0, 2.0, 3.0, 4.0]])
    [pred] = classify(scores, (), ClassificationPostprocessing(top_k=top_k))
    assert len(pred["top_k"]) == expected_len
    assert [e["label"] for e in pred["top_k"]] == ["3", "2", "1", "0"][:expected_len]


def test_ties_keep_class_order():
    [pred] = classify(np.array([[1.0, 1.0, 1.0]]), ("a", "b", "c"), ClassificationPostprocessing())
    assert [e["label"] for e in pred["top_k"]] == ["a", "b", "c"]
    np.testing.assert_allclose([e["score"] for e in pred["top_k"]], [1 / 3] * 3)


def test_without_softmax_scores_are_passed_through():
    scores = np.array([[0.2, 0.7, 0.1]], np.float32)
    post = ClassificationPostprocessing(softmax=False, top_k=2)
    [pred] = classify(scores, ("a", "b", "c"), post)
    assert [e["label"] for e in pred["top_k"]] == ["b", "a"]
    np.testing.assert_allclose([e["score"] for e in pred["top_k"]], [0.7, 0.2], rtol=1e-6)


def test_every_row_is_classified_on_its_own():
    scores = np.eye(5) * 10
    preds = classify(scores, tuple("abcde"), ClassificationPostprocessing(top_k=1))
    assert [p["label"] for p in preds] == list("abcde")
    assert all(p["score"] > 0.99 for p in preds)


def test_integer_scores_are_accepted():
    [pred] = classify(np.array([[1, 5, 3]], np.int64), (), ClassificationPostprocessing())
    assert pred["label"] == "1"
    np.testing.assert_allclose(sum(e["score"] for e in pred["top_k"]), 1.0)
