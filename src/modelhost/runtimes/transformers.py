"""Hugging Face transformers runtime: sentence embeddings from a local model directory.

The archive holds the model directory as ``modelhost pack-hf`` wrote it: ``config.json``,
``model.safetensors`` and the tokenizer files (for the text codec). Loading is offline
(``local_files_only``), reads weights from safetensors only (never a pickle) and never
runs code of the model's author (``trust_remote_code`` off: a config naming its own
classes is refused at pack and at load). The model maps token ids to hidden states; this
runtime pools them as the archive says (``mean``, ``cls`` or ``max`` over the attention
mask) and optionally normalizes to unit length, as sentence-transformers does.

Inputs: ``input_ids`` and ``attention_mask``, int64 (batch, tokens). Output: ``embedding``,
float32 (batch, hidden size).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from transformers import AutoConfig, AutoModel
from transformers.utils import logging as hf_logging

from modelhost.archive.manifest import Manifest, ModelSpec, TensorSignature
from modelhost.errors import ArchiveError, ConfigError
from modelhost.runtimes.base import LoadOptions, parse_config
from modelhost.runtimes.devices import resolve_torch_device
from modelhost.runtimes.torch import set_torch_threads

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"


class TransformersConfig(BaseModel):
    """``runtime_config`` of a transformers archive."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pooling: Literal["mean", "cls", "max"] = "mean"
    normalize: bool = False
    max_tokens: int = 512


def check_model_dir(model_dir: Path) -> None:
    """Refuse what this runtime never loads: weights that are not safetensors, and a
    config that asks for the author's own code.

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


# What pack-hf takes of a model directory: the model, its tokenizer, its pooling.
_PACKED = (
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.txt", "modules.json", "sentence_bert_config.json",
    "1_Pooling/config.json",
)  # fmt: skip


def spec_of_model_dir(model_dir: Path) -> tuple[ModelSpec, dict[str, Path]]:
    """The model spec and the files of a sentence-embedding model directory (as
    sentence-transformers saves it, or a plain ``save_pretrained`` directory: mean pooling).

    Pooling comes from ``1_Pooling/config.json``, normalization from a ``Normalize``
    module in ``modules.json``, the token limit from ``sentence_bert_config.json``
    (``max_seq_length``) or the model's ``max_position_embeddings``.

    Raises:
        ConfigError: not a directory, or unreadable JSON. ArchiveError: see
            :func:`check_model_dir`.
    """
    if not model_dir.is_dir():
        raise ConfigError(f"{model_dir} is not a directory")
    check_model_dir(model_dir)
    hf = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    pooling_doc = _json(model_dir / "1_Pooling" / "config.json", {})
    pooling = "mean"
    if pooling_doc.get("pooling_mode_cls_token"):
        pooling = "cls"
    elif pooling_doc.get("pooling_mode_max_tokens"):
        pooling = "max"
    modules = _json(model_dir / "modules.json", [])
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    limit = _json(model_dir / "sentence_bert_config.json", {}).get("max_seq_length")
    max_tokens = int(limit or getattr(hf, "max_position_embeddings", 512))
    tokens = TensorSignature(name="input_ids", dtype="int64", shape=(-1, -1))
    mask = TensorSignature(name="attention_mask", dtype="int64", shape=(-1, -1))
    width = int(hf.hidden_size)
    spec = ModelSpec(
        runtime="transformers",
        task="embedding",
        inputs=(tokens, mask),
        outputs=(TensorSignature(name=OUTPUT, dtype="float32", shape=(-1, width)),),
        runtime_config=TransformersConfig(
            pooling=pooling, normalize=normalize, max_tokens=max_tokens
        ).model_dump(),
    )
    files = {name: model_dir / name for name in _PACKED if (model_dir / name).is_file()}
    return spec, files


def _json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc


class TransformersPredictor:
    """Encodes token ids and pools them into one vector per row."""

    def __init__(self, model: torch.nn.Module, config: TransformersConfig, device: str) -> None:
        self._model = model
        self._config = config
        self._device = device

    @property
    def device(self) -> str:
        return self._device

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = torch.from_numpy(np.ascontiguousarray(batch["input_ids"])).to(self._device)
        mask = torch.from_numpy(np.ascontiguousarray(batch["attention_mask"])).to(self._device)
        with torch.inference_mode():
            hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = pool(hidden, mask, self._config.pooling)
            if self._config.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return {OUTPUT: pooled.float().cpu().numpy()}


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


class TransformersRuntime:
    name = "transformers"

    def load(
        self, model_dir: Path, manifest: Manifest, options: LoadOptions
    ) -> TransformersPredictor:
        config = parse_config(manifest, TransformersConfig)
        names = tuple(spec.name for spec in manifest.inputs)
        if names != INPUTS or [o.name for o in manifest.outputs] != [OUTPUT]:
            raise ArchiveError(
                f"a transformers archive takes inputs {list(INPUTS)} and answers [{OUTPUT!r}]; "
                f"this one declares {list(names)} -> {[o.name for o in manifest.outputs]}"
            )
        check_model_dir(model_dir)
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # own load line
        set_torch_threads(options.torch_threads)
        device = resolve_torch_device(options.device)
        try:
            model = AutoModel.from_pretrained(
                model_dir, local_files_only=True, trust_remote_code=False, use_safetensors=True
            )
        except (OSError, ValueError) as exc:
            raise ArchiveError(
                f"the transformers model in the archive does not load: {exc}"
            ) from exc
        model.eval().to(device)
        return TransformersPredictor(model, config, device)


RUNTIME = TransformersRuntime()
