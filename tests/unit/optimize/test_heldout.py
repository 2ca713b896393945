"""Held-out data for optimize: library sentences, text files, npz arrays, synthetic rows."""

from __future__ import annotations

import numpy as np
import pytest

from modelhost.archive.manifest import FileEntry, Manifest, TensorSignature
from modelhost.errors import ConfigError
from modelhost.optimize.heldout import held_out, library_sentences

IMAGE = TensorSignature(name="image", dtype="float32", shape=(-1, 1, 4, 4))
OUT = TensorSignature(name="y", dtype="float32", shape=(-1, 3))


def _manifest(**extra) -> Manifest:
    return Manifest(
        name="m", version="1", runtime="onnx", inputs=(IMAGE,), outputs=(OUT,),
        files={"model.onnx": FileEntry(sha256="0" * 64, size=1)}, **extra,
    )  # fmt: skip


def test_library_sentences_are_distinct_prose_in_a_seeded_order():
    first, again = library_sentences(200), library_sentences(200)
    assert first == again
    assert len(set(first)) == 200
    assert all(20 <= len(s) <= 400 and s[0].isupper() for s in first)
    assert library_sentences(200, seed=1) != first


def test_without_data_a_tensor_model_gets_seeded_synthetic_rows_in_batches():
    got = held_out(_manifest(), {}, None, rows=70, batch=32)
    assert got.synthetic
    assert [len(b["image"]) for b in got.batches] == [32, 32, 6]
    assert got.rows == 70
    assert got.batches[0]["image"].dtype == np.float32
    again = held_out(_manifest(), {}, None, rows=70, batch=32)
    np.testing.assert_array_equal(got.batches[2]["image"], again.batches[2]["image"])


def test_an_npz_with_the_inputs_is_split_into_batches(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, image=np.arange(40 * 16, dtype=np.float64).reshape(40, 1, 4, 4))
    got = held_out(_manifest(), {}, path, batch=16)
    assert not got.synthetic
    assert [len(b["image"]) for b in got.batches] == [16, 16, 8]
    assert got.batches[0]["image"].dtype == np.float32  # as the signature says


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((2, 1, 4, 4))}, "holds \\['pixels'\\]"),
        ({"image": np.zeros((2, 1, 4, 5))}, "has shape \\[2, 1, 4, 5\\]"),
        ({"image": np.zeros((2, 16))}, "has shape \\[2, 16\\]"),
        ({"image": np.zeros((0, 1, 4, 4))}, "same number of rows"),
        ({"image": np.array(3.0)}, "same number of rows"),
    ],
)
def test_an_npz_that_does_not_fit_the_model_is_refused(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=message):
        held_out(_manifest(), {}, path)


def test_an_unreadable_or_pickled_npz_is_refused_without_unpickling(tmp_path):
    pickled = tmp_path / "p.npz"
    np.savez(pickled, image=np.array([object()] * 2, dtype=object))
    for path in (pickled, tmp_path / "missing.npz"):
        with pytest.raises(ConfigError, match=r"not a readable \.npz"):
            held_out(_manifest(), {}, path)
