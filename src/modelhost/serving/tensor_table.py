"""The tensor table: where each tensor of a set lies in a region of shared memory.

    header  <4s B B H>  magic "MHT\\x01", format version 1, flags 0, tensor count
    entry   <H> name length, name (UTF-8), <B B> dtype code, ndim, <ndim x Q> dims,
            <Q Q> byte offset, byte length                   (all little-endian)

Data only: a writer lays tensors out (:func:`plan_layout`, each aligned to ``ALIGN``
bytes) and copies them in (:func:`write_tensors`); a reader gets numpy views
(:func:`read_tensors`). :func:`parse_table` treats the table as coming from an untrusted
peer: its size is bounded before it is read, and every field is checked against the region
it describes before a view is made, so a corrupt table raises InvalidInput and never reads
outside the region or allocates more than the table's own size.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelhost.errors import InvalidInput

ALIGN = 64  # bytes: each tensor starts on a cache line
MAX_TENSORS = 1024
MAX_NAME_BYTES = 1024
MAX_NDIM = 8
MAX_TABLE_BYTES = 64 * 1024

# The closed dtype table: a dtype's code is its index. Every dtype a manifest may declare.
DTYPES: tuple[np.dtype[Any], ...] = tuple(
    np.dtype(name)
    for name in (
        "bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64",
        "uint16", "uint32", "uint64",
    )
)  # fmt: skip
_CODES = {dtype: code for code, dtype in enumerate(DTYPES)}  # by dtype: .name is slow

_HEADER = struct.Struct("<4sBBH")  # magic, format version, flags (0), tensor count
_MAGIC = b"MHT\x01"
_VERSION = 1
_NAME_LEN = struct.Struct("<H")
_CODE_NDIM = struct.Struct("<BB")
_SPAN = struct.Struct("<QQ")  # byte offset, byte length


@dataclass(frozen=True, slots=True)
class TensorSlice:
    """Where one tensor lies in a region: name, dtype, shape, byte offset and length."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class Layout:
    """A tensor set laid out for a region: its slices, the bytes it needs, its table."""

    slices: tuple[TensorSlice, ...]
    nbytes: int
    table: bytes


def plan_layout(tensors: Mapping[str, np.ndarray]) -> Layout:
    """Lay ``tensors`` out one after the other, each aligned to ``ALIGN`` bytes.

    Raises:
        InvalidInput: a dtype outside the table (strings, objects), a name longer than
            ``MAX_NAME_BYTES`` in UTF-8, more than ``MAX_TENSORS`` or ``MAX_NDIM`` dims.
    """
    if len(tensors) > MAX_TENSORS:
        raise InvalidInput(f"{len(tensors)} tensors; at most {MAX_TENSORS} cross processes")
    return _plan(tuple((name, array.dtype, array.shape) for name, array in tensors.items()))


# A server sees few distinct tensor sets (names, dtypes, shapes): their layouts and tables
# are made once. Measured: plan_layout 11 us, parse_table 12-18 us for one tensor, a cache
# hit well under 1 us (the bytes of a table hash fast).
_CACHED = 256
_CACHED_TABLE_BYTES = 1024


@functools.lru_cache(maxsize=_CACHED)
def _plan(key: tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]) -> Layout:
    slices = []
    offset = 0
    for name, dtype, shape in key:
        code = _CODES.get(dtype)
        if code is None and not dtype.isnative:  # written as native by write_tensors
            code = _CODES.get(dtype.newbyteorder("="))
        if code is None:
            raise InvalidInput(
                f"tensor {name!r} has dtype {dtype}, which cannot cross to the engine "
                f"process; it carries {', '.join(d.name for d in DTYPES)}"
            )
        if len(shape) > MAX_NDIM:
            raise InvalidInput(f"tensor {name!r} has {len(shape)} dims; at most {MAX_NDIM}")
        offset = -(-offset // ALIGN) * ALIGN
        nbytes = math.prod(shape) * dtype.itemsize
        slices.append(TensorSlice(name, DTYPES[code], shape, offset, nbytes))
        offset += nbytes
    return Layout(tuple(slices), offset, encode_table(slices))


def encode_table(slices: list[TensorSlice] | tuple[TensorSlice, ...]) -> bytes:
    """The table describing ``slices`` (see the module docstring)."""
    parts = [_HEADER.pack(_MAGIC, _VERSION, 0, len(slices))]
    for s in slices:
        try:
            name = s.name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"tensor name {s.name!r} is not valid UTF-8") from exc
        if len(name) > MAX_NAME_BYTES:
            raise InvalidInput(f"tensor name {s.name[:40]!r}… is over {MAX_NAME_BYTES} bytes")
        parts += [
            _NAME_LEN.pack(len(name)),
            name,
            _CODE_NDIM.pack(_CODES[s.dtype], len(s.shape)),
            struct.pack(f"<{len(s.shape)}Q", *s.shape),
            _SPAN.pack(s.offset, s.nbytes),
        ]
    return b"".join(parts)


def write_tensors(region: memoryview, tensors: Mapping[str, np.ndarray], layout: Layout) -> None:
    """Copy ``tensors`` into ``region`` where ``layout`` (from :func:`plan_layout`) says.

    Raises:
        ValueError: the region is smaller than ``layout.nbytes``.
    """
    if layout.nbytes > len(region):
        raise ValueError(f"{layout.nbytes} bytes of tensors do not fit {len(region)} bytes")
    for s in layout.slices:
        np.copyto(_view(region, s), tensors[s.name], casting="equiv")


def read_tensors(region: memoryview, table: bytes) -> dict[str, np.ndarray]:
    """Views (no copy) of the tensors ``table`` places in ``region``.

    Raises:
        InvalidInput: the table is malformed or points outside ``region`` (see
            :func:`parse_table`).
    """
    return {s.name: _view(region, s) for s in parse_table(table, len(region))}


def _view(region: memoryview, s: TensorSlice) -> np.ndarray:
    flat = np.frombuffer(region[s.offset : s.offset + s.nbytes], dtype=s.dtype)
    return flat.reshape(s.shape)


def parse_table(table: bytes, region_bytes: int) -> tuple[TensorSlice, ...]:
    """Decode and check a table against a region of ``region_bytes`` bytes.

    Checked: size (at most ``MAX_TABLE_BYTES``), magic, format version, flags, count (at
    most ``MAX_TENSORS``), each name (at most ``MAX_NAME_BYTES``, strict UTF-8, unique),
    dtype code (in ``DTYPES``), ndim (at most ``MAX_NDIM``), dims (their non-zero product
    times the item size at most ``region_bytes``), byte length (dims product times item
    size), offset (aligned to the item size, the tensor inside the region), no bytes left.

    Raises:
        InvalidInput: naming the entry and the field that is wrong.
    """
    if len(table) <= _CACHED_TABLE_BYTES:
        return _parse_cached(table, region_bytes)
    return _parse(table, region_bytes)


@functools.lru_cache(maxsize=_CACHED)
def _parse_cached(table: bytes, region_bytes: int) -> tuple[TensorSlice, ...]:
    return _parse(table, region_bytes)


def _parse(table: bytes, region_bytes: int) -> tuple[TensorSlice, ...]:
    if len(table) > MAX_TABLE_BYTES:
        raise InvalidInput(f"tensor table of {len(table)} bytes; at most {MAX_TABLE_BYTES}")
    reader = _TableReader(table)
    magic, version, flags, count = reader.unpack(_HEADER, "header")
    if magic != _MAGIC or version != _VERSION or flags != 0:
        raise InvalidInput("tensor table: not a version 1 modelhost tensor table")
    if count > MAX_TENSORS:
        raise InvalidInput(f"tensor table: {count} tensors; at most {MAX_TENSORS}")
    slices: dict[str, TensorSlice] = {}
    for index in range(count):
        where = f"tensor table entry {index}"
        (name_len,) = reader.unpack(_NAME_LEN, where)
        if name_len > MAX_NAME_BYTES:
            raise InvalidInput(f"{where}: name of {name_len} bytes; at most {MAX_NAME_BYTES}")
        try:
            name = reader.take(name_len, where).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{where}: the name is not valid UTF-8") from exc
        if name in slices:
            raise InvalidInput(f"{where}: tensor {name!r} appears twice")
        code, ndim = reader.unpack(_CODE_NDIM, where)
        if code >= len(DTYPES):
            raise InvalidInput(f"{where} ({name!r}): unknown dtype code {code}")
        if ndim > MAX_NDIM:
            raise InvalidInput(f"{where} ({name!r}): {ndim} dims; at most {MAX_NDIM}")
        shape = reader.unpack(struct.Struct(f"<{ndim}Q"), where)
        offset, nbytes = reader.unpack(_SPAN, where)
        slices[name] = _checked(where, name, DTYPES[code], shape, offset, nbytes, region_bytes)
    if reader.left:
        raise InvalidInput(f"tensor table: {reader.left} bytes after the last entry")
    return tuple(slices.values())


def _checked(
    where: str,
    name: str,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    offset: int,
    nbytes: int,
    region_bytes: int,
) -> TensorSlice:
    itemsize = dtype.itemsize
    if math.prod(d for d in shape if d) * itemsize > region_bytes:
        raise InvalidInput(f"{where} ({name!r}): shape {list(shape)} cannot fit the region")
    if math.prod(shape) * itemsize != nbytes:
        raise InvalidInput(
            f"{where} ({name!r}): {nbytes} bytes for shape {list(shape)} of {dtype}, which "
            f"takes {math.prod(shape) * itemsize}"
        )
    if offset % itemsize or offset > region_bytes or nbytes > region_bytes - offset:
        raise InvalidInput(
            f"{where} ({name!r}): bytes {offset}..{offset + nbytes} are not aligned inside "
            f"the region of {region_bytes} bytes"
        )
    return TensorSlice(name, dtype, shape, offset, nbytes)


class _TableReader:
    """Reads fields off a table, refusing to read past its end."""

    def __init__(self, table: bytes) -> None:
        self._table = table
        self._pos = 0

    @property
    def left(self) -> int:
        return len(self._table) - self._pos

    def take(self, size: int, where: str) -> bytes:
        if size > self.left:
            raise InvalidInput(f"{where}: the table ends {size - self.left} bytes early")
        start = self._pos
        self._pos += size
        return self._table[start : self._pos]

    def unpack(self, fmt: struct.Struct, where: str) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size, where))
