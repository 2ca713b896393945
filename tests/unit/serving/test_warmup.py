"""Warm-up at load: bounded batches, and a model held to its manifest's output signature."""

from __future__ import annotations

import numpy as np
import pytest

from modelhost.archive.manifest import Batching, Manifest, TensorSignature
from modelhost.errors import ArchiveError
from modelhost.serving.policy import BatchPolicy
from modelhost.serving.warmup import warm_up


class Recorder:
    """A predictor answering ``answer(batch)`` and recording each batch's rows."""

    device = "cpu"

    def __init__(self, answer):
        self.rows: list[int] = []
        self._answer = answer

    def predict(self, batch):
        x = batch["x"]
        self.rows.append(x.shape[0])
        return self._answer(x)


def _manifest(out_dtype="float32", out_shape=(-1, 10), in_shape=(-1, 1, 28, 28), max_batch=32):
    return Manifest(
        name="m",
        version="1",
        runtime="onnx",
        inputs=(TensorSignature(name="x", dtype="float32", shape=in_shape),),
        outputs=(TensorSignature(name="y", dtype=out_dtype, shape=out_shape),),
        batching=Batching(max_batch_size=max_batch),
        files={},
    )


def _policy(manifest: Manifest) -> BatchPolicy:
    return BatchPolicy(manifest.batching.max_batch_size, 0.001, 64)


def _logits(x):
    return {"y": np.zeros((x.shape[0], 10), dtype=np.float32)}


def test_a_huge_declared_batch_is_warmed_up_within_the_element_budget():
    manifest = _manifest(max_batch=65536)
    predictor = Recorder(_logits)
    warm_up(predictor, manifest, _policy(manifest), max_elements=1024**2)
    # 1024**2 // 784 elements per image = 1337 rows, not 65,536 (3 GiB at load)
    assert predictor.rows == [1, 1337]


def test_a_small_max_batch_is_warmed_up_whole():
    manifest = _manifest(max_batch=32)
    predictor = Recorder(_logits)
    warm_up(predictor, manifest, _policy(manifest), max_elements=1024**2)
    assert predictor.rows == [1, 32]


@pytest.mark.parametrize(
    ("answer", "manifest", "fragment"),
    [
        (lambda x: {}, _manifest(), "no array for output 'y'"),
        (lambda x: {"z": np.zeros((x.shape[0], 10), np.float32)}, _manifest(), "output 'y'"),
        (_logits, _manifest(out_dtype="float64"), "is float32; the manifest says float64"),
        (_logits, _manifest(out_shape=(-1, 3)), "has shape [1, 10]"),
        (_logits, _manifest(out_shape=(-1, 10, 1)), "the manifest says [-1, 10, 1]"),
        (lambda x: {"y": np.zeros((1, 10), np.float32)}, _manifest(), "for 32 rows"),
        (lambda x: {"y": np.array(0, np.float32)}, _manifest(), "has shape []"),
        (lambda x: {"y": [[0.0] * 10]}, _manifest(), "no array for output"),
    ],
)
def test_a_model_that_breaks_its_output_signature_is_refused(answer, manifest, fragment):
    with pytest.raises(ArchiveError, match="m:1") as caught:
        warm_up(Recorder(answer), manifest, _policy(manifest), max_elements=1024**2)
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    "error", [RuntimeError("mat1 and mat2 shapes"), TypeError("bad"), IndexError("index 9")]
)
def test_a_model_that_fails_on_its_own_signature_is_refused(error):
    def answer(x):
        raise error

    manifest = _manifest()
    with pytest.raises(ArchiveError, match="fails on a batch of 1") as caught:
        warm_up(Recorder(answer), manifest, _policy(manifest), max_elements=1024**2)
    assert type(error).__name__ in caught.value.message
