"""Tensors between processes through shared memory, framed as data only (never pickle).

    worker (owner of the arena)                      engine process
    Arena.create(slots, slot_bytes) ──── name ────►  MappedArena.attach(name, slots, slot_bytes)
    i = arena.acquire()
    table = write_tensors(arena.slot(i), inputs) ─►  read_tensors(mapped.slot(i), table)
                                                      (numpy views, no copy) → compute
    read_tensors(arena.slot(i), table2), copied ◄──  table2 = write_tensors(mapped.slot(i), outputs)
    arena.release(i)

A tensor set larger than a slot travels in a one-off segment instead: the writer creates it
(:func:`write_segment`), the reader copies it out and unlinks it (:func:`take_segment`).

The tensor table is a fixed header and one entry per tensor (name, dtype code, dims, byte
offset, byte length; little-endian). :func:`parse_table` treats it as coming from an
untrusted peer: every field is checked against the region it describes before a view is
made, and its size is bounded before it is read, so a corrupt table raises InvalidInput and
never reads outside the region or allocates more than the table's own size.

Who unlinks what: the creator of a segment, with one exception each way. An arena whose
owner died is unlinked by the engine process when the owner's connection drops without a
goodbye (``engine_host.py``); Python's resource tracker of the owner would unlink it too,
which covers an engine that is gone as well. A one-off segment belongs to its reader from
the moment it is named in a message; a writer unlinks the ones whose reader never answered.
"""

from __future__ import annotations

import _posixshmem  # type: ignore[import-not-found]  # CPython's shm_open, shm_unlink
import math
import mmap
import os
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any, TypeGuard

import numpy as np

from modelhost.errors import InsufficientStorage, InvalidInput

PREFIX = "mh-"
ALIGN = 64  # bytes: each tensor starts on a cache line
MAX_TENSORS = 1024
MAX_NAME_BYTES = 1024
MAX_NDIM = 8
MAX_TABLE_BYTES = 64 * 1024
MAX_SLOTS = 4096
MAX_ARENA_BYTES = 64 * 1024**3

# The closed dtype table: a dtype's code is its index. Every dtype a manifest may declare.
DTYPES: tuple[np.dtype[Any], ...] = tuple(
    np.dtype(name)
    for name in (
        "bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64",
        "uint16", "uint32", "uint64",
    )
)  # fmt: skip
_CODES = {dtype.name: code for code, dtype in enumerate(DTYPES)}

_HEADER = struct.Struct("<4sBBH")  # magic, format version, flags (0), tensor count
_MAGIC = b"MHT\x01"
_VERSION = 1
_NAME_LEN = struct.Struct("<H")
_CODE_NDIM = struct.Struct("<BB")
_SPAN = struct.Struct("<QQ")  # byte offset, byte length
_SEGMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,100}")


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
    slices = []
    offset = 0
    for name, array in tensors.items():
        code = _CODES.get(array.dtype.name)
        if code is None:
            raise InvalidInput(
                f"tensor {name!r} has dtype {array.dtype}, which cannot cross to the engine "
                f"process; it carries {', '.join(_CODES)}"
            )
        if array.ndim > MAX_NDIM:
            raise InvalidInput(f"tensor {name!r} has {array.ndim} dims; at most {MAX_NDIM}")
        offset = -(-offset // ALIGN) * ALIGN
        slices.append(TensorSlice(name, DTYPES[code], array.shape, offset, array.nbytes))
        offset += array.nbytes
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
            _CODE_NDIM.pack(_CODES[s.dtype.name], len(s.shape)),
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


def segment_name(prefix: str = PREFIX) -> str:
    """A fresh segment name: ``prefix``, the creating process's id, 16 random hex digits."""
    return f"{prefix}{os.getpid()}-{secrets.token_hex(8)}"


def check_segment_name(name: object, prefix: str) -> str:
    """``name`` when it is a segment name this server makes (its ``prefix``, plain chars).

    A peer names segments in its messages; only ours may be mapped or unlinked, so that a
    peer cannot make the engine touch another program's shared memory.

    Raises:
        InvalidInput: anything else.
    """
    if is_segment_name(name, prefix):
        return name
    raise InvalidInput(f"shared memory name {str(name)[:80]!r} is not one of this server's")


def is_segment_name(name: object, prefix: str) -> TypeGuard[str]:
    """Whether ``name`` is a segment name this server makes (see check_segment_name)."""
    return isinstance(name, str) and name.startswith(prefix) and bool(_SEGMENT_NAME.fullmatch(name))


# Only the owner of an arena uses SharedMemory (it wants Python's resource tracker to unlink
# the arena should the owner be killed). Everything else maps and unlinks segments with the
# same calls SharedMemory makes, without it, for two reasons. On Python < 3.13 SharedMemory
# registers every segment it opens with the process's resource tracker, whose record is a
# set: a process that attaches and unregisters (as one must, or the tracker unlinks the
# worker's arena when the engine exits) also drops the registration of an owner in the same
# process. And SharedMemory.close() raises BufferError while a numpy view of it lives, which
# __del__ then reports; a plain mmap is simply unmapped when its last view is gone.


def _map(name: str, create_bytes: int | None = None) -> mmap.mmap:
    """Map segment ``name`` whole (creating it with ``create_bytes`` bytes when given).

    Raises:
        FileNotFoundError: no such segment. FileExistsError: it exists (create). OSError,
        ValueError (an empty segment): it cannot be mapped.
    """
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create_bytes is not None else 0)
    fd: int = _posixshmem.shm_open(f"/{name}", flags, mode=0o600)
    try:
        if create_bytes is not None:
            os.ftruncate(fd, create_bytes)
        return mmap.mmap(fd, os.fstat(fd).st_size)
    except BaseException:
        if create_bytes is not None:
            unlink_segment(name)
        raise
    finally:
        os.close(fd)


def unlink_segment(name: str) -> bool:
    """Unlink the segment ``name`` if it still exists; True when this call removed it.

    Its memory is freed once every process that maps it has unmapped it.
    """
    try:
        _posixshmem.shm_unlink(f"/{name}")
    except FileNotFoundError:
        return False
    return True


def write_segment(tensors: Mapping[str, np.ndarray], layout: Layout, prefix: str) -> str:
    """Create a one-off segment holding ``tensors``; returns its name.

    The segment is the reader's from now on: it copies and unlinks it with
    :func:`take_segment`, or the writer unlinks it when no reader will (``unlink_segment``).

    Raises:
        InsufficientStorage: shared memory (/dev/shm) has no room for it.
    """
    name = segment_name(prefix)
    try:
        mapped = _map(name, create_bytes=max(layout.nbytes, 1))
    except OSError as exc:
        raise InsufficientStorage(
            f"no room in shared memory for {layout.nbytes} bytes of tensors: {exc}"
        ) from exc
    try:
        write_tensors(memoryview(mapped), tensors, layout)
    except BaseException:
        unlink_segment(name)
        raise
    return name


def take_segment(name: str, table: bytes, prefix: str) -> dict[str, np.ndarray]:
    """Copy the tensors out of the one-off segment ``name`` and unlink it.

    Raises:
        InvalidInput: the name is not one of ours, no such segment, or a malformed table
            (the segment is unlinked all the same).
    """
    check_segment_name(name, prefix)
    try:
        mapped = _map(name)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"no shared memory segment {name!r} to read") from exc
    try:
        views = read_tensors(memoryview(mapped), table)
        return {key: view.copy() for key, view in views.items()}
    finally:
        unlink_segment(name)


class Arena:
    """A worker's fixed slots in one segment it creates, hands out and unlinks.

    One slot per request in flight; each slot holds the request's inputs, then its outputs.
    Not thread-safe: used from one event loop.
    """

    def __init__(self, shm: SharedMemory, slot_count: int, slot_bytes: int) -> None:
        self._shm = shm
        self.name = shm.name
        self.slot_count = slot_count
        self.slot_bytes = slot_bytes
        self._free = list(range(slot_count - 1, -1, -1))

    @classmethod
    def create(cls, slot_count: int, slot_bytes: int, prefix: str = PREFIX) -> Arena:
        """A new arena of ``slot_count`` slots of ``slot_bytes`` bytes (rounded up to 64).

        Tracked by this process's resource tracker, so that it is unlinked even when this
        process is killed before :meth:`close`.

        Raises:
            InvalidInput: counts out of range (1..MAX_SLOTS slots, MAX_ARENA_BYTES in all).
            InsufficientStorage: shared memory (/dev/shm) has no room for it.
        """
        slot_bytes = -(-max(slot_bytes, ALIGN) // ALIGN) * ALIGN
        check_arena_shape(slot_count, slot_bytes)
        size = slot_count * slot_bytes
        try:
            shm = SharedMemory(segment_name(prefix), create=True, size=size)
        except OSError as exc:
            raise InsufficientStorage(f"no room in shared memory for {size} bytes: {exc}") from exc
        return cls(shm, slot_count, slot_bytes)

    @property
    def free(self) -> int:
        """Slots not in use."""
        return len(self._free)

    def acquire(self) -> int | None:
        """A free slot's index, or None when every slot is in use."""
        return self._free.pop() if self._free else None

    def release(self, index: int) -> None:
        """Give slot ``index`` back (its request has its answer)."""
        self._free.append(index)

    def slot(self, index: int) -> memoryview:
        """The bytes of slot ``index``."""
        start = index * self.slot_bytes
        buffer = self._shm.buf
        if buffer is None:
            raise ValueError(f"arena {self.name!r} is closed")
        return buffer[start : start + self.slot_bytes]

    def close(self) -> None:
        """Unmap and unlink the arena (an engine that saw its owner go may have unlinked
        it already: that is fine)."""
        self._shm.close()
        try:
            self._shm.unlink()
        except FileNotFoundError:
            # unlink() stops before unregistering; the tracker would try again at exit
            resource_tracker.unregister(f"/{self._shm.name}", "shared_memory")


def check_arena_shape(slot_count: object, slot_bytes: object) -> tuple[int, int]:
    """``(slot_count, slot_bytes)`` when they are in range. Raises InvalidInput."""
    if not (
        type(slot_count) is int
        and type(slot_bytes) is int
        and 1 <= slot_count <= MAX_SLOTS
        and slot_bytes >= ALIGN
        and slot_bytes % ALIGN == 0
        and slot_count * slot_bytes <= MAX_ARENA_BYTES
    ):
        raise InvalidInput(
            f"arena of {slot_count!r} slots of {slot_bytes!r} bytes: want 1..{MAX_SLOTS} "
            f"slots of a multiple of {ALIGN} bytes, {MAX_ARENA_BYTES} bytes in all at most"
        )
    return slot_count, slot_bytes


class MappedArena:
    """The engine's mapping of a worker's arena: attaches, never unlinks unless told.

    Views of its slots may outlive the connection (a request dropped by its worker can sit
    in a batcher's queue until the next batch): the mapping ends when the last one does.
    """

    def __init__(self, name: str, buffer: memoryview, slot_count: int, slot_bytes: int) -> None:
        self.name = name
        self._buffer: memoryview | None = buffer
        self.slot_count = slot_count
        self.slot_bytes = slot_bytes

    @classmethod
    def attach(
        cls, name: object, slot_count: object, slot_bytes: object, prefix: str
    ) -> MappedArena:
        """Map the arena ``name`` a peer announced; the peer is not trusted.

        Raises:
            InvalidInput: not one of our names, no such segment, counts out of range, or a
                segment smaller than ``slot_count * slot_bytes``.
        """
        name = check_segment_name(name, prefix)
        slot_count, slot_bytes = check_arena_shape(slot_count, slot_bytes)
        try:
            mapped = _map(name)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"no shared memory arena {name!r}") from exc
        if len(mapped) < slot_count * slot_bytes:
            raise InvalidInput(
                f"arena {name!r} has {len(mapped)} bytes, not {slot_count} x {slot_bytes}"
            )
        return cls(name, memoryview(mapped), slot_count, slot_bytes)

    def slot(self, index: object) -> memoryview:
        """The bytes of slot ``index``.

        Raises:
            InvalidInput: ``index`` is not a slot. ValueError: the mapping was closed.
        """
        if type(index) is not int or not 0 <= index < self.slot_count:
            raise InvalidInput(f"slot {index!r} is not one of 0..{self.slot_count - 1}")
        if self._buffer is None:
            raise ValueError(f"arena {self.name!r} is closed")
        start = index * self.slot_bytes
        return self._buffer[start : start + self.slot_bytes]

    def close(self) -> None:
        """Let go of the mapping: it is unmapped now, or when the last view of it dies."""
        self._buffer = None

    def unlink(self) -> bool:
        """Unlink the arena for an owner that is gone; True when this call removed it."""
        return unlink_segment(self.name)
