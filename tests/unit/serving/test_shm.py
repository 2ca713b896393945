"""Shared-memory segments: who creates, maps and unlinks each; what a peer may name."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from modelhost.errors import InvalidInput
from modelhost.serving.shm import (
    Arena,
    MappedArena,
    take_segment,
    unlink_segment,
    write_segment,
)
from modelhost.serving.tensor_table import plan_layout, read_tensors, write_tensors

SHM = Path("/dev/shm")


@pytest.fixture
def prefix():
    """A name prefix of this test's own; no segment with it may outlive the test."""
    p = f"mh-t{uuid.uuid4().hex[:8]}-"
    yield p
    assert sorted(SHM.glob(p + "*")) == []


def test_an_arena_closed_under_a_live_view_unlinks_now_and_unmaps_with_the_view(prefix):
    import gc
    import warnings

    import numpy as np

    arena = Arena.create(slot_count=2, slot_bytes=64, prefix=prefix)
    view = np.frombuffer(arena.slot(0), dtype=np.uint8)  # as an offloaded copy holds one
    view[:] = 7
    arena.close()  # once raised BufferError: "cannot close exported pointers exist"
    assert not (SHM / arena.name).exists()
    assert int(view.sum()) == 7 * 64  # the mapping lives as long as the view
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing reported when the arena is collected
        del arena, view
        gc.collect()


def test_an_arena_hands_out_each_slot_once_and_unlinks_itself(prefix):
    arena = Arena.create(slot_count=3, slot_bytes=100, prefix=prefix)
    assert arena.slot_bytes == 128  # rounded up to the alignment
    assert (SHM / arena.name).exists()
    taken = [arena.acquire() for _ in range(3)]
    assert sorted(taken) == [0, 1, 2]
    assert arena.acquire() is None
    arena.release(taken[1])
    assert arena.acquire() == taken[1]
    arena.close()
    assert not (SHM / arena.name).exists()


@pytest.mark.parametrize(("slots", "slot_bytes"), [(0, 64), (5000, 64), (2, 2**40)])
def test_arena_shapes_out_of_range_are_refused(prefix, slots, slot_bytes):
    with pytest.raises(InvalidInput, match="arena of"):
        Arena.create(slots, slot_bytes, prefix)


def test_the_engine_sees_the_owners_bytes_and_the_owner_sees_the_engines(prefix):
    arena = Arena.create(2, 4096, prefix)
    try:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        layout = plan_layout({"x": x})
        write_tensors(arena.slot(1), {"x": x}, layout)
        mapped = MappedArena.attach(arena.name, 2, 4096, prefix)
        views = read_tensors(mapped.slot(1), layout.table)
        np.testing.assert_array_equal(views["x"], x)
        y = {"y": views["x"] * 2}
        answer = plan_layout(y)
        write_tensors(mapped.slot(1), y, answer)
        mapped.close()
        # the view outlives close(): still mapped, it sees the answer written over the inputs
        np.testing.assert_array_equal(views["x"], x * 2)
        with pytest.raises(ValueError, match="closed"):
            mapped.slot(0)
        np.testing.assert_array_equal(read_tensors(arena.slot(1), answer.table)["y"], x * 2)
    finally:
        arena.close()


@pytest.mark.parametrize(
    ("name", "slots", "slot_bytes", "match"),
    [
        ("psm_12345", 2, 4096, "not one of this server's"),
        ("../etc/passwd", 2, 4096, "not one of this server's"),
        (None, 2, 4096, "not one of this server's"),
        ("{prefix}0-missing", 2, 4096, "no shared memory arena"),
        ("{arena}", 4, 4096, "has 8192 bytes"),
        ("{arena}", 2, 100, "arena of 2 slots of 100 bytes"),
        ("{arena}", True, 4096, "arena of True slots"),
    ],
)
def test_attaching_checks_the_peers_claims(prefix, name, slots, slot_bytes, match):
    arena = Arena.create(2, 4096, prefix)
    try:
        if isinstance(name, str):
            name = name.format(prefix=prefix, arena=arena.name)
        with pytest.raises(InvalidInput, match=match):
            MappedArena.attach(name, slots, slot_bytes, prefix)
    finally:
        arena.close()


def test_slots_outside_the_arena_are_refused(prefix):
    arena = Arena.create(2, 64, prefix)
    try:
        mapped = MappedArena.attach(arena.name, 2, 64, prefix)
        for bad in (-1, 2, "0", 1.0, True):
            with pytest.raises(InvalidInput, match=r"is not one of 0\.\.1"):
                mapped.slot(bad)
        mapped.close()
    finally:
        arena.close()


ATTACH_AND_EXIT = """
import sys
from modelhost.serving.shm import MappedArena
mapped = MappedArena.attach(sys.argv[1], 1, 64, sys.argv[2])
mapped.slot(0)[0] = 42
mapped.close()
"""


def test_a_process_that_attached_and_exited_leaves_the_arena_to_its_owner(prefix):
    arena = Arena.create(1, 64, prefix)
    try:
        done = subprocess.run(
            [sys.executable, "-c", ATTACH_AND_EXIT, arena.name, prefix],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "leaked" not in done.stderr  # its resource tracker did not take the arena
        assert (SHM / arena.name).exists()
        assert arena.slot(0)[0] == 42
    finally:
        arena.close()


def test_a_one_off_segment_is_unlinked_by_its_reader(prefix):
    x = {"x": np.arange(10_000, dtype=np.int64)}
    layout = plan_layout(x)
    name = write_segment(x, layout, prefix)
    assert (SHM / name).exists()
    got = take_segment(name, layout.table, prefix)
    np.testing.assert_array_equal(got["x"], x["x"])
    assert not (SHM / name).exists()
    with pytest.raises(InvalidInput, match="no shared memory segment"):
        take_segment(name, layout.table, prefix)


def test_a_one_off_segment_with_a_corrupt_table_is_unlinked_all_the_same(prefix):
    x = {"x": np.ones(100, np.float32)}
    layout = plan_layout(x)
    name = write_segment(x, layout, prefix)
    with pytest.raises(InvalidInput):
        take_segment(name, layout.table[:-1], prefix)
    assert not (SHM / name).exists()


def test_only_our_segments_are_taken(prefix):
    with pytest.raises(InvalidInput, match="not one of this server's"):
        take_segment("psm_foreign", b"", prefix)


def test_unlinking_a_segment_twice_is_harmless(prefix):
    x = {"x": np.ones(3, np.float32)}
    name = write_segment(x, plan_layout(x), prefix)
    assert unlink_segment(name)
    assert not unlink_segment(name)
