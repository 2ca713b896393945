"""Hugging Face transformers runtime: text embeddings and text classification from a local
model directory.

The archive holds the model directory as ``modelhost pack-hf`` wrote it: ``config.json``,
``model.safetensors`` and the tokenizer (``tokenizer.json``, read by the text codec, which
turns strings into token ids before the model sees them). Loading is offline
(``local_files_only``), reads weights from safetensors only (never a pickle) and never
runs code of the model's author (``trust_remote_code`` off: a config naming its own
classes is refused at pack and at load).

- task ``embedding``: the encoder's hidden states pooled as the archive says (``mean``,
  ``cls`` or ``max`` over the attention mask), optionally normalized to unit length, as
  sentence-transformers does. Output ``embedding``, float32 (batch, hidden size).
- task ``classification`` (a ``...ForSequenceClassification`` model): output ``logits``,
  float32 (batch, labels); labels from the config's ``id2label``.

Inputs: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the model's
tokenizer makes them), int64 (batch, tokens).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging

from modelhost.archive.manifest import (
    Batching,
    ClassificationPostprocessing,
    EmbeddingPostprocessing,
    Manifest,
    ModelSpec,
    TensorSignature,
    TextPreprocessing,
)
from modelhost.errors import ArchiveError, ConfigError
from modelhost.runtimes.base import LoadOptions, parse_config
from modelhost.runtimes.devices import resolve_torch_device
from modelhost.runtimes.torch import set_torch_threads

INPUTS = ("input_ids", "attention_mask")
TOKEN_TYPES = "token_type_ids"
OUTPUTS = {"embedding": "embedding", "classification": "logits"}
TOKENIZER = "tokenizer.json"


class TransformersConfig(BaseModel):
    """``runtime_config`` of a transformers archive (pooling: embedding models only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pooling: Literal["mean", "cls", "max"] = "mean"
    normalize: bool = False


def check_model_dir(model_dir: Path) -> None:
    """Refuse what this runtime never loads: weights that are not safetensors, a config
    that asks for the author's own code, a missing or unreadable ``tokenizer.json``.

    Raises:
        ArchiveError: naming the file and what to do.
    """
    if not (model_dir / "model.safetensors").is_file():
        raise ArchiveError(
            f"{model_dir} has no model.safetensors; modelhost loads transformers weights "
            "from safetensors only (never pickle): save the model with "
            "save_pretrained(..., safe_serialization=True)"
        )
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    if getattr(config, "auto_map", None):
        raise ArchiveError(
            f"{model_dir / 'config.json'} names the model author's own code (auto_map); "
            "modelhost never runs it (trust_remote_code stays off)"
        )
    load_tokenizer(model_dir / TOKENIZER)


def load_tokenizer(path: Path) -> Tokenizer:
    """The fast tokenizer of a model directory (what the text codec runs).

    Raises:
        ArchiveError: missing or unreadable.
    """
    if not path.is_file():
        raise ArchiveError(
            f"{path.parent} has no {TOKENIZER}; save the model's fast tokenizer with "
            "tokenizer.save_pretrained(DIR) (modelhost tokenizes with the tokenizers library)"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception
        raise ArchiveError(f"{path} does not load as a tokenizer: {exc}") from exc


# What pack-hf takes of a model directory: the model, its tokenizer, its pooling.
_PACKED = (
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.txt", "modules.json", "sentence_bert_config.json",
    "1_Pooling/config.json",
)  # fmt: skip


def spec_of_model_dir(
    model_dir: Path, *, truncate: bool = True, shorten_to: tuple[int, ...] = ()
) -> tuple[ModelSpec, dict[str, Path]]:
    """The model spec and the files of a text model directory: a sequence classifier
    (``architectures`` names a ``...ForSequenceClassification``; labels from ``id2label``)
    or else a sentence-embedding model (as sentence-transformers saves it, or a plain
    ``save_pretrained`` directory: mean pooling).

    Pooling comes from ``1_Pooling/config.json``, normalization from a ``Normalize``
    module in ``modules.json``, the token limit from ``sentence_bert_config.json``
    (``max_seq_length``) or the model's ``max_position_embeddings``. ``truncate``: cut
    longer texts at the limit (else a request holding one is refused). ``shorten_to``: the
    sizes an embedding model was trained to be cut to (Matryoshka), which requests may ask for.

    Raises:
        ConfigError: not a directory, or unreadable JSON. ArchiveError: see
            :func:`check_model_dir`.
    """
    if not model_dir.is_dir():
        raise ConfigError(f"{model_dir} is not a directory")
    check_model_dir(model_dir)
    hf = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    tokenizer = load_tokenizer(model_dir / TOKENIZER)
    limit = _json(model_dir / "sentence_bert_config.json", {}).get("max_seq_length")
    max_tokens = int(limit or getattr(hf, "max_position_embeddings", 512))
    names = [*INPUTS, *([TOKEN_TYPES] if _uses_token_types(hf) else [])]
    inputs = tuple(TensorSignature(name=n, dtype="int64", shape=(-1, -1)) for n in names)
    prep = TextPreprocessing(
        tokenizer=TOKENIZER, max_tokens=max_tokens, truncate=truncate, pad_id=_pad_id(tokenizer)
    )
    batching = Batching(pad={"input_ids": float(prep.pad_id), "attention_mask": 0.0} | (
        {TOKEN_TYPES: 0.0} if TOKEN_TYPES in names else {}
    ))  # fmt: skip
    files = {name: model_dir / name for name in _PACKED if (model_dir / name).is_file()}
    if any(a.endswith("ForSequenceClassification") for a in hf.architectures or ()):
        if shorten_to:
            raise ConfigError("shorten_to applies to embedding models; this is a classifier")
        labels = tuple(str(hf.id2label[i]) for i in range(int(hf.num_labels)))
        logits = TensorSignature(name="logits", dtype="float32", shape=(-1, len(labels)))
        spec = ModelSpec(
            runtime="transformers", task="classification", inputs=inputs, outputs=(logits,),
            labels=labels, preprocessing=prep, batching=batching,
            postprocessing=ClassificationPostprocessing(softmax=True, top_k=min(3, len(labels))),
        )  # fmt: skip
        return spec, files
    pooling_doc = _json(model_dir / "1_Pooling" / "config.json", {})
    pooling = "mean"
    if pooling_doc.get("pooling_mode_cls_token"):
        pooling = "cls"
    elif pooling_doc.get("pooling_mode_max_tokens"):
        pooling = "max"
    modules = _json(model_dir / "modules.json", [])
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    width = int(hf.hidden_size)
    if any(not 0 < n < width for n in shorten_to):
        raise ConfigError(
            f"shorten_to {list(shorten_to)}: sizes must be between 1 and {width - 1} (this "
            f"model's vectors have {width})"
        )
    if len(set(shorten_to)) != len(shorten_to):
        raise ConfigError(f"shorten_to {list(shorten_to)} names a size twice")
    spec = ModelSpec(
        runtime="transformers",
        task="embedding",
        inputs=inputs,
        outputs=(TensorSignature(name="embedding", dtype="float32", shape=(-1, width)),),
        preprocessing=prep,
        postprocessing=EmbeddingPostprocessing(shorten_to=shorten_to) if shorten_to else None,
        batching=batching,
        runtime_config=TransformersConfig(pooling=pooling, normalize=normalize).model_dump(),
    )
    return spec, files


def _uses_token_types(hf: Any) -> bool:
    """Whether the model takes ``token_type_ids``: BERT-like configs have a vocabulary of
    token types; their tokenizers make them."""
    return int(getattr(hf, "type_vocab_size", 0) or 0) > 1


def _pad_id(tokenizer: Tokenizer) -> int:
    """The padding token's id: the tokenizer's own padding setting, else a ``[PAD]`` /
    ``<pad>`` token, else 0 (padded positions are masked out either way)."""
    padding = tokenizer.padding
    if padding is not None:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|pad|>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def _json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc


class TransformersPredictor:
    """Runs the model on token ids: pooled vectors (embedding) or logits (classification)."""

    def __init__(
        self, model: torch.nn.Module, task: str, config: TransformersConfig, device: str
    ) -> None:
        self._model = model
        self._task = task
        self._config = config
        self._device = device

    @property
    def device(self) -> str:
        return self._device

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {
            name: torch.from_numpy(np.ascontiguousarray(value)).to(self._device)
            for name, value in batch.items()
        }
        with torch.inference_mode():
            answer = self._model(**tensors)
            if self._task == "classification":
                return {"logits": answer.logits.float().cpu().numpy()}
            pooled = pool(answer.last_hidden_state, tensors["attention_mask"], self._config.pooling)
            if self._config.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return {"embedding": pooled.float().cpu().numpy()}


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, tokens, width) hidden states -> (batch, width), over the attended tokens.

    A row with no attended token pools to zeros (never NaN).
    """
    if how == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "max":
        masked = hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min)
        return torch.where(weights.sum(1) > 0, masked.max(1).values, torch.zeros_like(hidden[:, 0]))
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _check_signature(manifest: Manifest) -> None:
    names = [spec.name for spec in manifest.inputs]
    outputs = [o.name for o in manifest.outputs]
    wanted = OUTPUTS.get(manifest.task)
    if names not in (list(INPUTS), [*INPUTS, TOKEN_TYPES]) or outputs != [wanted]:
        raise ArchiveError(
            f"a transformers {manifest.task} archive takes inputs {list(INPUTS)} (and "
            f"{TOKEN_TYPES!r}) and answers [{wanted!r}]; this one declares {names} -> {outputs}"
        )


class TransformersRuntime:
    name = "transformers"

    def load(
        self, model_dir: Path, manifest: Manifest, options: LoadOptions
    ) -> TransformersPredictor:
        config = parse_config(manifest, TransformersConfig)
        _check_signature(manifest)
        check_model_dir(model_dir)
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # own load line
        set_torch_threads(options.torch_threads)
        device = resolve_torch_device(options.device)
        auto = (
            AutoModelForSequenceClassification if manifest.task == "classification" else AutoModel
        )
        try:
            model = auto.from_pretrained(
                model_dir, local_files_only=True, trust_remote_code=False, use_safetensors=True
            )
        except (OSError, ValueError) as exc:
            raise ArchiveError(
                f"the transformers model in the archive does not load: {exc}"
            ) from exc
        model.eval().to(device)
        return TransformersPredictor(model, manifest.task, config, device)


RUNTIME = TransformersRuntime()
