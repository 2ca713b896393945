"""Named features -> a tabular model's input matrix (batch, features), in the manifest's order.

    JSON records   {"instances": [{"income": 52000, "late_payments": 1, ...}, ...]}
    CSV            a header row naming the features (any order), then one row per instance
    KServe v2      one tensor per feature, named by it, shape [n]

Every record, row and tensor must name exactly the model's features: a missing or unknown
name is a 400 naming it and the row (a look-alike such as a Cyrillic 'а' for a Latin 'a' is
unknown, and its code points are shown). Values are numbers (booleans, strings, nulls and
lists refused, naming the cell). NaN and infinities are refused by the data plane.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelhost.codecs.limits import DecodeLimits
from modelhost.errors import InvalidInput
from modelhost.types import TensorSpec

_MAX_SHOWN = 5


@dataclass(frozen=True, slots=True)
class TabularCodec:
    """Builds the model's one input from named features.

    Attributes:
        features: the feature names, in the order of the input's columns.
        input: the model's input, (batch, len(features)).
    """

    features: tuple[str, ...]
    input: TensorSpec

    @classmethod
    def build(cls, features: tuple[str, ...], inputs: tuple[TensorSpec, ...]) -> TabularCodec:
        """Raises InvalidInput when the model does not take one (batch, features) matrix."""
        if len(inputs) != 1 or inputs[0].shape[1:] not in ((len(features),), (-1,)):
            raise InvalidInput(
                f"a tabular model takes one input of shape [-1, {len(features)}]; this one "
                f"declares {[(s.name, list(s.shape)) for s in inputs]}"
            )
        return cls(features, inputs[0])

    @property
    def wire_inputs(self) -> tuple[TensorSpec, ...]:
        """What a v2 request sends: one tensor per feature, shape [n]."""
        return tuple(TensorSpec(name, self.input.dtype, (-1,)) for name in self.features)

    def records(self, items: Sequence[Any], field: str, limits: DecodeLimits) -> np.ndarray:
        """The matrix of JSON records, one row each.

        Raises:
            InvalidInput: a record that is not an object, lacks a feature, names an unknown
                one, or holds a value that is not a number. PayloadTooLarge: too many rows.
        """
        if not items:
            raise InvalidInput(f"{field} must be a non-empty list of records")
        limits.check_items(len(items), field)
        limits.check_elements(len(items) * len(self.features), field)
        matrix = np.empty((len(items), len(self.features)), dtype=np.float64)
        for row, record in enumerate(items):
            where = f"{field}[{row}]"
            if not isinstance(record, dict):
                raise InvalidInput(f"{where} must be an object of the features {self._listed()}")
            self._check_names(record.keys(), where)
            for col, name in enumerate(self.features):
                matrix[row, col] = _number(record[name], f"{where}.{name}")
        return self._typed(matrix)

    def csv(self, body: bytes, limits: DecodeLimits) -> np.ndarray:
        """The matrix of a CSV body: a header row naming the features, then the rows.

        Raises:
            InvalidInput: not UTF-8, no header or no rows, a header that is not exactly the
                features (or names one twice), a row of another length, a cell that is not a
                number (row and column named). PayloadTooLarge: too many rows or cells.
        """
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"the CSV body is not UTF-8 (byte {exc.start})") from None
        limits.check_elements(text.count("\n") * len(self.features), "csv")
        try:
            rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
        except csv.Error as exc:
            raise InvalidInput(f"the CSV body is malformed: {exc}") from None
        rows = [r for r in rows if any(cell.strip() for cell in r)]
        if len(rows) < 2:
            raise InvalidInput("the CSV body needs a header row naming the features and a row")
        header = [name.strip() for name in rows[0]]
        seen: set[str] = set()
        for name in header:
            if name in seen:
                raise InvalidInput(f"csv header names {name!r} twice")
            seen.add(name)
        self._check_names(header, "csv header")
        limits.check_items(len(rows) - 1, "csv rows")
        columns = [header.index(name) for name in self.features]
        matrix = np.empty((len(rows) - 1, len(self.features)), dtype=np.float64)
        for row, cells in enumerate(rows[1:], start=1):
            if len(cells) != len(header):
                raise InvalidInput(
                    f"csv row {row} has {len(cells)} cells; the header has {len(header)}"
                )
            for col, at in enumerate(columns):
                matrix[row - 1, col] = _cell(cells[at], f"csv row {row}, column {header[at]!r}")
        return self._typed(matrix)

    def tensors(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """The matrix of v2 per-feature tensors (each [n]).

        Raises:
            InvalidInput: a feature missing, or the tensors of different lengths.
        """
        self._check_names(arrays.keys(), "inputs")
        lengths = {len(arrays[name]) for name in self.features}
        if len(lengths) != 1:
            raise InvalidInput(f"inputs: the feature tensors differ in length {sorted(lengths)}")
        return np.stack([arrays[name] for name in self.features], axis=1).astype(
            self.input.dtype, copy=False
        )

    def _check_names(self, names: Any, where: str) -> None:
        given = list(names)
        missing = [n for n in self.features if n not in given]
        unknown = [n for n in given if n not in self.features]
        if unknown:
            shown = ", ".join(_shown(n) for n in unknown[:_MAX_SHOWN])
            raise InvalidInput(
                f"{where} names unknown features {shown}; the model's are {self._listed()}"
            )
        if missing:
            shown = ", ".join(repr(n) for n in missing[:_MAX_SHOWN])
            raise InvalidInput(f"{where} lacks the features {shown}")

    def _listed(self) -> str:
        names = ", ".join(self.features[:20])
        return f"[{names}{', ...' if len(self.features) > 20 else ''}]"

    def _typed(self, matrix: np.ndarray) -> np.ndarray:
        return matrix.astype(self.input.dtype, copy=False)


def _shown(name: Any) -> str:
    """A client's name, with the code points of any non-ASCII character (look-alikes)."""
    if not isinstance(name, str):
        return repr(name)[:60]
    text = repr(name[:60])
    if name.isascii():
        return text
    points = " ".join(f"U+{ord(c):04X}" for c in name[:20] if not c.isascii())
    return f"{text} (non-ASCII: {points})"


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{where} must be a number, not {_kind(value)}")
    try:
        return float(value)
    except OverflowError:
        raise InvalidInput(f"{where} is out of range") from None


def _cell(text: str, where: str) -> float:
    # ASCII only: float() also reads '١٢' (Arabic-Indic digits) and '1_000'.
    cleaned = text.strip()
    if cleaned.isascii() and "_" not in cleaned:
        try:
            return float(cleaned)
        except ValueError:
            pass
    raise InvalidInput(f"{where}: {cleaned[:40]!r} is not a number")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string {value[:40]!r}"
    return "a list" if isinstance(value, list) else "an object"
