"""Strings -> a text model's token inputs, with the archive's own tokenizer.

    TextCodec.build(prep, tokenizer_json, inputs)   once per model version
    codec.check(texts, field)                         cheap: types, emptiness, count
    codec.encode(texts, field)                        tokenize (Rust, GIL released), pad
        └─► {"input_ids": (n, L), "attention_mask": (n, L), ["token_type_ids"]} int64

The tokenizer is the Hugging Face ``tokenizers`` JSON the archive carries (normalization,
pre-tokenization and special tokens as the model was trained with). Whatever padding or
truncation that file sets is replaced: rows are padded to the request's longest string
(the batcher pads across requests), and a string longer than ``max_tokens`` is cut there or
refused, as the archive says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from modelhost.archive.manifest import TextPreprocessing
from modelhost.errors import ArchiveError, InvalidInput
from modelhost.types import TensorSpec

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True, slots=True)
class TextCodec:
    """Tokenizes strings for one model version; shared by every request (the tokenizer is
    configured once and only read afterwards, from any thread).

    Attributes:
        prep: the archive's text preprocessing.
        inputs: the model's token inputs, in its signature's order (names of TOKEN_INPUTS).
    """

    prep: TextPreprocessing
    inputs: tuple[TensorSpec, ...]
    _tokenizer: Tokenizer

    @classmethod
    def build(
        cls, prep: TextPreprocessing, tokenizer_json: bytes, inputs: tuple[TensorSpec, ...]
    ) -> TextCodec:
        """The codec of a text model from its tokenizer file and token inputs.

        Raises:
            ArchiveError: the tokenizer file does not load, or an input is not a token input.
        """
        unknown = [s.name for s in inputs if s.name not in TOKEN_INPUTS]
        if unknown or "input_ids" not in {s.name for s in inputs}:
            raise ArchiveError(
                f"a text model takes input_ids (and optionally attention_mask, token_type_ids); "
                f"this one declares {[s.name for s in inputs]}"
            )
        try:
            tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as exc:
            raise ArchiveError(
                f"the archive's tokenizer {prep.tokenizer!r} does not load: {exc}"
            ) from exc
        tokenizer.no_padding()
        if prep.truncate:
            tokenizer.enable_truncation(prep.max_tokens)
        else:
            tokenizer.no_truncation()
        return cls(prep, inputs, tokenizer)

    def check(self, texts: Sequence[object], field: str) -> list[str]:
        """The strings of a request, checked before any is tokenized.

        ``bytes`` (from BYTES tensors) must be UTF-8.

        Raises:
            InvalidInput: an item that is not a string, not UTF-8, or empty (or only
                whitespace); the message names it as ``field[i]``.
        """
        checked: list[str] = []
        for i, text in enumerate(texts):
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise InvalidInput(
                        f"{field}[{i}] is not valid UTF-8 (byte {exc.start}); send text as UTF-8"
                    ) from None
            if not isinstance(text, str):
                raise InvalidInput(f"{field}[{i}] must be a string; this model takes text")
            if not text.strip():
                raise InvalidInput(f"{field}[{i}] is empty; send some text to encode")
            checked.append(text)
        return checked

    def encode(self, texts: list[str], field: str) -> dict[str, np.ndarray]:
        """Token arrays for checked strings, one row each, padded to the longest.

        Raises:
            InvalidInput: a string over ``max_tokens`` tokens when truncation is off.
        """
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        if not self.prep.truncate:
            for i, enc in enumerate(encodings):
                if len(enc.ids) > self.prep.max_tokens:
                    raise InvalidInput(
                        f"{field}[{i}] is {len(enc.ids)} tokens long; this model takes at most "
                        f"{self.prep.max_tokens} (its archive refuses longer text rather than "
                        "cutting it): shorten it or split it"
                    )
        return self._arrays(encodings)

    def _arrays(self, encodings: list[Encoding]) -> dict[str, np.ndarray]:
        rows, width = len(encodings), max(len(e.ids) for e in encodings)
        ids = np.full((rows, width), self.prep.pad_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        types = np.zeros((rows, width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        made = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {spec.name: made[spec.name] for spec in self.inputs}


def token_count(inputs: dict[str, np.ndarray]) -> int:
    """Tokens a request's rows hold, padding excluded (what OpenAI's ``usage`` counts)."""
    mask = inputs.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    return int(inputs["input_ids"].size)
