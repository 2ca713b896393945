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

Where the tensors lie in a slot or segment is said by a tensor table (``tensor_table.py``),
data only, checked by the reader as coming from an untrusted peer.

Who unlinks what: the creator of a segment, with one exception each way. An arena whose
owner died is unlinked by the engine process when the owner's connection drops without a
goodbye (``engine_host.py``); Python's resource tracker of the owner would unlink it too,
which covers an engine that is gone as well. A one-off segment belongs to its reader from
the moment it is named in a message; a writer unlinks the ones whose reader never answered.
Every name carries a prefix (default ``mh-``) and the creator's pid; a peer may only name
segments with the server's prefix.

Trust: the table and every name a peer sends are checked. What a mapping cannot check is a
peer that shrinks its own segment after the engine mapped it: touching the lost pages
raises SIGBUS in the engine. Workers are the server's own processes (same user, socket
mode 0600); sealing the segments (memfd + F_SEAL_SHRINK, fds passed over the socket) would
close that gap.
"""

from __future__ import annotations

import _posixshmem  # type: ignore[import-not-found]  # CPython's shm_open, shm_unlink
import mmap
import os
import re
import secrets
from collections.abc import Mapping
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import TypeGuard

import numpy as np

from modelhost.errors import InsufficientStorage, InvalidInput
from modelhost.serving.tensor_table import ALIGN, Layout, read_tensors, write_tensors

PREFIX = "mh-"
MAX_SLOTS = 4096
MAX_ARENA_BYTES = 64 * 1024**3

_SEGMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,100}")


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
        """Unlink the arena and unmap it, now or, while a view of a slot still lives (an
        offloaded copy that has not returned yet), when the last view dies (an engine that
        saw its owner go may have unlinked it already: that is fine)."""
        try:
            self._shm.close()
        except BufferError:
            # SharedMemory cannot unmap under a live view, and would try again (and report
            # it) when collected: let the mmap go with its last view instead.
            self._shm._mmap = None  # type: ignore[attr-defined]
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
