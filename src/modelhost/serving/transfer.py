"""Moving one tensor set in and out of shared memory, off the event loop when it is large.

Both ends of shared placement do the same two things: put a tensor set where the peer
can read it (its slot, or a one-off segment when the slot is too small), and get one back.
A copy larger than ``OFFLOAD_BYTES`` runs in a thread; it cannot be stopped halfway, so a
cancelled caller waits for it to end (a slot is never given back while a copy still writes
into it) and a one-off segment made for nobody is unlinked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from modelhost.errors import InvalidInput
from modelhost.serving.shm import take_segment, unlink_segment, write_segment
from modelhost.serving.tensor_table import (
    Layout,
    parse_table,
    plan_layout,
    read_tensors,
    write_tensors,
)

# Copies up to this size run on the event loop: np.copyto moved 4 MiB in ~0.3 ms and
# 8 MiB in ~1 ms on the 2-core development machine, against ~0.1 ms for a thread hop.
OFFLOAD_BYTES = 4 * 1024**2

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a tensor set was put: its table, and the one-off segment (None: the slot)."""

    table: bytes
    segment: str | None


def place_now(
    tensors: Mapping[str, np.ndarray], layout: Layout, slot: memoryview, prefix: str
) -> Placed:
    """Write ``tensors`` (laid out as ``layout``) into ``slot``, or into a new one-off
    segment when they do not fit, on this thread.

    Raises:
        InsufficientStorage: no room in shared memory for the one-off segment.
    """
    if layout.nbytes <= len(slot):
        write_tensors(slot, tensors, layout)
        return Placed(layout.table, None)
    return Placed(layout.table, write_segment(tensors, layout, prefix))


async def place_tensors(
    tensors: Mapping[str, np.ndarray], slot: memoryview, prefix: str, offload_bytes: int
) -> Placed:
    """:func:`place_now`, in a thread when the tensors are over ``offload_bytes``.

    Raises:
        InvalidInput: a dtype or a name that cannot cross (see ``shm.plan_layout``).
        InsufficientStorage: no room in shared memory for a one-off segment.
    """
    layout = plan_layout(tensors)
    if layout.nbytes <= offload_bytes:
        return place_now(tensors, layout, slot, prefix)
    placed = await _finish_off_loop(
        lambda: place_now(tensors, layout, slot, prefix), _unlink_placed
    )
    return placed


def _unlink_placed(placed: Placed) -> None:
    if placed.segment is not None:
        unlink_segment(placed.segment)


def take_now(
    slot: memoryview, placed: Placed, prefix: str, offload_bytes: int, *, copy: bool
) -> dict[str, np.ndarray] | None:
    """The tensors of ``placed``, read on this thread: from its one-off segment (copied,
    the segment unlinked), else from ``slot`` (views, or copies when ``copy``). None when
    copying them would take more than ``offload_bytes``: use :func:`take_tensors`.

    Raises:
        InvalidInput: a malformed table, or a segment that is not one of ours or is gone.
    """
    if placed.segment is not None:
        if _data_bytes(placed.table) > offload_bytes:
            return None
        return take_segment(placed.segment, placed.table, prefix)
    views = read_tensors(slot, placed.table)
    if not copy:
        return views
    if sum(view.nbytes for view in views.values()) > offload_bytes:
        return None
    return {name: view.copy() for name, view in views.items()}


async def take_tensors(
    slot: memoryview, placed: Placed, prefix: str, offload_bytes: int, *, copy: bool
) -> dict[str, np.ndarray]:
    """:func:`take_now`, in a thread when the copy is over ``offload_bytes``."""
    tensors = take_now(slot, placed, prefix, offload_bytes, copy=copy)
    if tensors is not None:
        return tensors
    return await _finish_off_loop(lambda: _take(slot, placed, prefix, copy=copy))


def _take(slot: memoryview, placed: Placed, prefix: str, *, copy: bool) -> dict[str, np.ndarray]:
    if placed.segment is not None:
        return take_segment(placed.segment, placed.table, prefix)
    views = read_tensors(slot, placed.table)
    return {name: view.copy() for name, view in views.items()} if copy else views


def _data_bytes(table: bytes) -> int:
    # A segment's size is not known before it is mapped; its table bounds the copy. An
    # unparsable table counts as small: take_segment reports it and unlinks the segment.
    try:
        return sum(s.nbytes for s in parse_table(table, 2**62))
    except InvalidInput:
        return 0


async def _finish_off_loop(work: Callable[[], T], undo: Callable[[T], object] | None = None) -> T:
    """Run ``work`` in a thread and return its result. A cancelled caller still waits for
    the thread to end (then ``undo`` gets what it made) before the cancellation goes on."""
    future = asyncio.get_running_loop().run_in_executor(None, work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.wait([future])
            except asyncio.CancelledError:
                continue
        if undo is not None and not future.cancelled() and future.exception() is None:
            undo(future.result())
        raise
