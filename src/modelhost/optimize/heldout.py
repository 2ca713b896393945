"""Held-out inputs an optimized model is checked and timed on.

    --data FILE.npz   arrays named like the model's inputs, rows along axis 0
    --data FILE.txt   a text model: one text per line
    (none)            a text model: sentences of the Python standard library's docstrings
                      (real English prose, varied lengths, always at hand offline);
                      any other model: seeded random inputs shaped like its signature,
                      reported as synthetic

Text is tokenized by the archive's own text codec, exactly as the server does.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelhost.archive.manifest import Manifest, TextPreprocessing
from modelhost.codecs.text import TextCodec
from modelhost.errors import ConfigError
from modelhost.serving.warmup import specs_of

_MODULES = (
    "argparse", "asyncio", "base64", "calendar", "collections", "csv", "datetime", "decimal",
    "difflib", "email", "fractions", "functools", "gzip", "heapq", "http.client",
    "ipaddress", "itertools", "json", "logging", "mailbox", "os", "pathlib", "pickle",
    "random", "re", "shutil", "smtplib", "socket", "sqlite3", "statistics", "string",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "unittest",
    "urllib.parse", "uuid", "zipfile",
)  # fmt: skip
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MAX_TEXT_LINES = 100_000


@dataclass(frozen=True, slots=True)
class HeldOut:
    """Batches of model inputs (each at most ``batch`` rows) and where they came from."""

    batches: tuple[dict[str, np.ndarray], ...]
    source: str
    synthetic: bool = False

    @property
    def rows(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches)

    def first_rows(self, n: int) -> dict[str, np.ndarray]:
        """The first ``n`` rows of the first batch (fewer if it is shorter), text inputs cut
        to their longest row."""
        head = {k: v[:n] for k, v in self.batches[0].items()}
        mask = head.get("attention_mask")
        if mask is not None and mask.ndim == 2:
            width = max(int(mask.sum(axis=1).max()), 1)
            head = {k: v[:, :width] if v.ndim == 2 else v for k, v in head.items()}
        return head


def held_out(
    manifest: Manifest,
    codec_files: Mapping[str, bytes],
    data: Path | None,
    rows: int = 256,
    batch: int = 32,
) -> HeldOut:
    """The held-out batches for ``manifest``'s model (see the module docstring).

    Raises:
        ConfigError: ``data`` is missing, unreadable, or does not fit the model.
    """
    prep = manifest.preprocessing
    inputs = specs_of(manifest.inputs)
    if isinstance(prep, TextPreprocessing):
        codec = TextCodec.build(prep, codec_files[prep.tokenizer], inputs)
        if data is None:
            texts, source = library_sentences(rows), f"{rows} standard-library docstring sentences"
        else:
            texts, source = _text_lines(data), str(data)
        batches = tuple(
            codec.encode(codec.check(chunk, "texts"), "texts") for chunk in _chunks(texts, batch)
        )
        return HeldOut(batches, source)
    if data is None:
        rng = np.random.default_rng(0)
        arrays = {}
        for spec in inputs:
            shape = (rows, *(8 if d == -1 else d for d in spec.shape[1:]))
            kind = np.dtype(spec.dtype).kind
            values = rng.random(shape) if kind == "f" else rng.integers(0, 2, shape)
            arrays[spec.name] = values.astype(spec.dtype)
        return HeldOut(_split(arrays, batch), f"{rows} seeded random rows", synthetic=True)
    return HeldOut(_split(_npz(data, manifest), batch), str(data))


def library_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct sentences (20 to 400 characters) from the docstrings of the
    standard library, in a seeded order."""
    found: dict[str, None] = {}
    for name in _MODULES:
        module = importlib.import_module(name)
        with warnings.catch_warnings():  # reading deprecated attributes warns
            warnings.simplefilter("ignore")
            # Only what the module defines: what it imports changes with what else ran.
            members = [module] + [
                member
                for _, member in inspect.getmembers(module, callable)
                if getattr(member, "__module__", None) == module.__name__
            ]
        for member in members:
            doc = inspect.getdoc(member)
            for paragraph in (doc or "").split("\n\n"):
                flat = " ".join(paragraph.split())
                for sentence in _SENTENCE.split(flat):
                    if 20 <= len(sentence) <= 400 and sentence[0].isupper():
                        found[sentence] = None
    sentences = sorted(found)
    random.Random(seed).shuffle(sentences)
    if len(sentences) < count:
        raise ConfigError(f"only {len(sentences)} library sentences for {count}; pass --data")
    return sentences[:count]


def _text_lines(path: Path) -> list[str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--data {path}: {exc.strerror or exc}") from exc
    try:
        lines = [line.strip() for line in raw.decode("utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--data {path} is not UTF-8 text (byte {exc.start})") from exc
    texts = [line for line in lines if line][:_MAX_TEXT_LINES]
    if not texts:
        raise ConfigError(f"--data {path} holds no text (one text per line)")
    return texts


def _npz(path: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"--data {path} is not a readable .npz of arrays: {exc}") from exc
    wanted = [s.name for s in manifest.inputs]
    if sorted(arrays) != sorted(wanted):
        raise ConfigError(f"--data {path} holds {sorted(arrays)}; the model takes {wanted}")
    rows = {len(a) if a.ndim else 0 for a in arrays.values()}
    if len(rows) != 1 or 0 in rows:
        raise ConfigError(f"--data {path}: the arrays need the same number of rows (axis 0)")
    for spec in manifest.inputs:
        arr = arrays[spec.name]
        fits = len(arr.shape) == len(spec.shape) and all(
            d in (-1, g) for g, d in zip(arr.shape[1:], spec.shape[1:], strict=True)
        )
        if not fits:
            raise ConfigError(
                f"--data {path}: {spec.name} has shape {list(arr.shape)}; the model takes "
                f"{list(spec.shape)}"
            )
        arrays[spec.name] = arr.astype(spec.dtype, copy=False)
    return arrays


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _split(arrays: dict[str, np.ndarray], size: int) -> tuple[dict[str, np.ndarray], ...]:
    rows = len(next(iter(arrays.values())))
    return tuple(
        {k: np.ascontiguousarray(v[start : start + size]) for k, v in arrays.items()}
        for start in range(0, rows, size)
    )
