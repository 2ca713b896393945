"""``modelhost optimize``: torch and transformers archives exported to ONNX (and int8),
checked against the original on held-out data, timed, gated, and served.

The real models: the digits CNN trained in the test session (held-out data: its own test
split) and all-MiniLM-L6-v2 from its wheel (held-out data: library sentences)."""

from __future__ import annotations

import numpy as np
import pytest

from modelhost.archive import open_archive
from support.cli import mh, one_error_line
from support.minilm import in_process_embedder, model_dir
from support.server import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def heldout_digits(tmp_path_factory):
    """The digits test split as the model's input, in an .npz (what --data takes)."""
    from modelhost.train.data import load_digits_split

    split = load_digits_split(seed=0)
    path = tmp_path_factory.mktemp("heldout") / "digits.npz"
    np.savez(path, image=split.x_test[:96])
    return path


@pytest.fixture(scope="module")
def minilm_archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "minilm.mh"
    done = mh("pack-hf", str(model_dir()), "--name", "minilm", "--version", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_a_torch_archive_exports_to_onnx_with_every_answer_kept(
    digits_archive, heldout_digits, tmp_path
):
    out = tmp_path / "digits-onnx.mh"
    done = mh("optimize", str(digits_archive), "--data", str(heldout_digits),
              "--out", str(out), "--trust-code")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "top-1 agreement" in done.stdout
    assert f"wrote {out}" in done.stdout
    manifest = open_archive(out, tmp_path / "opened").manifest
    assert manifest.runtime == "onnx"
    assert manifest.runtime_config == {"file": "model.onnx", "graph_optimization": "all"}
    assert (manifest.preprocessing, manifest.labels) == (
        open_archive(digits_archive, tmp_path / "source").manifest.preprocessing,
        tuple(str(i) for i in range(10)),
    )
    assert manifest.metrics["optimize_top1_agreement"] == 1.0
    assert manifest.metrics["optimize_max_abs_error"] < 1e-3
    assert manifest.metrics["optimize_heldout_rows"] == 96
    for key in ("optimize_latency_b1_ms", "optimize_throughput_b32", "optimize_model_bytes"):
        assert manifest.metrics[key] > 0


def test_int8_minilm_keeps_its_embeddings_close_and_serves_them_over_openai(
    minilm_archive, tmp_path
):
    out = tmp_path / "minilm-int8.mh"
    done = mh("optimize", str(minilm_archive), "--quantize", "int8", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "onnx int8, on 256 standard-library docstring sentences" in done.stdout
    manifest = open_archive(out, tmp_path / "opened").manifest
    assert manifest.runtime == "onnx"
    assert "tokenizer.json" in manifest.files  # the text codec still tokenizes
    assert manifest.metrics["optimize_cosine_mean"] >= 0.99
    assert (
        manifest.metrics["optimize_model_bytes"]
        < manifest.metrics["optimize_source_model_bytes"] / 3
    )  # int8 weights
    texts = ["A man is eating food.", "A man eats a meal.", "The stock market fell sharply."]
    reference = in_process_embedder(minilm_archive, tmp_path / "reference")(texts)
    import openai

    with running_server(out) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        answer = client.embeddings.create(model="minilm", input=texts)
        client.close()
    got = np.array([d.embedding for d in answer.data])
    cosine = (
        (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() > 0.97
    assert got[0] @ got[1] > got[0] @ got[2]  # still ranks the paraphrase first


def test_below_the_threshold_nothing_is_written_unless_forced(minilm_archive, tmp_path):
    out = tmp_path / "strict.mh"
    refused = mh("optimize", str(minilm_archive), "--quantize", "int8", "--out", str(out),
                 "--min-cosine", "0.99999")  # fmt: skip
    line = one_error_line(refused)
    assert "misses the quality threshold (mean cosine similarity 0.99" in line
    assert "--force" in line
    assert "cosine mean / worst" in refused.stdout  # the report is still shown
    assert not out.exists()
    forced = mh("optimize", str(minilm_archive), "--quantize", "int8", "--out", str(out),
                "--min-cosine", "0.99999", "--force")  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert "forced past: mean cosine similarity" in forced.stdout
    assert out.exists()


def test_what_optimize_refuses_is_one_error_line(
    digits_archive, torchscript_archive, heldout_digits, tmp_path
):
    wrong_names = tmp_path / "wrong.npz"
    np.savez(wrong_names, pixels=np.zeros((4, 1, 28, 28), np.float32))
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, image=np.zeros((4, 1, 8, 8), np.float32))
    not_npz = tmp_path / "data.npz"
    not_npz.write_bytes(b"not a zip")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, image=np.array([{"a": 1}] * 4, dtype=object))
    out = tmp_path / "x.mh"
    cases = {
        "--trust-code": mh("optimize", str(digits_archive), "--out", str(out)),
        "torchscript archive": mh("optimize", str(torchscript_archive), "--out", str(out)),
        "holds ['pixels']": mh("optimize", str(digits_archive), "--data", str(wrong_names),
                               "--out", str(out), "--trust-code"),
        "has shape [4, 1, 8, 8]": mh("optimize", str(digits_archive), "--data",
                                     str(wrong_shape), "--out", str(out), "--trust-code"),
        "not a readable .npz": mh("optimize", str(digits_archive), "--data", str(not_npz),
                                  "--out", str(out), "--trust-code"),
        "not a readable .npz ": mh("optimize", str(digits_archive), "--data", str(pickled),
                                   "--out", str(out), "--trust-code"),
        "--quantize 'int4' is not supported": mh("optimize", str(digits_archive),
                                                 "--quantize", "int4", "--out", str(out)),
        "--to 'tflite' is not supported": mh("optimize", str(digits_archive), "--to",
                                             "tflite", "--out", str(out)),
    }  # fmt: skip
    for fragment, result in cases.items():
        assert fragment.strip() in one_error_line(result), fragment
    assert not out.exists()


def test_a_keras_archive_exports_to_onnx_without_trusting_code(
    keras_digits_archive, heldout_digits, tmp_path
):
    out = tmp_path / "kdigits-onnx.mh"
    done = mh("optimize", str(keras_digits_archive), "--data", str(heldout_digits),
              "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "kdigits:1 keras -> onnx" in done.stdout
    manifest = open_archive(out, tmp_path / "opened").manifest
    assert (manifest.runtime, manifest.task) == ("onnx", "classification")
    assert manifest.metrics["optimize_top1_agreement"] == 1.0
    assert manifest.metrics["optimize_max_abs_error"] < 1e-4
