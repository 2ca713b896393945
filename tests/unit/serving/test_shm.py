"""Shared-memory tensors: the table's round trip, its checks against an untrusted peer,
and who creates, maps and unlinks each segment."""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelhost.errors import InvalidInput
from modelhost.serving.shm import (
    ALIGN,
    DTYPES,
    MAX_NDIM,
    MAX_TABLE_BYTES,
    Arena,
    MappedArena,
    parse_table,
    plan_layout,
    read_tensors,
    take_segment,
    unlink_segment,
    write_segment,
    write_tensors,
)

SHM = Path("/dev/shm")


@pytest.fixture
def prefix():
    """A name prefix of this test's own; no segment with it may outlive the test."""
    p = f"mh-t{uuid.uuid4().hex[:8]}-"
    yield p
    assert sorted(SHM.glob(p + "*")) == []


def region(size: int) -> memoryview:
    return memoryview(bytearray(size))


def roundtrip(tensors, size=1 << 16):
    layout = plan_layout(tensors)
    buf = region(size)
    write_tensors(buf, tensors, layout)
    return read_tensors(buf, layout.table), buf


@pytest.mark.parametrize("dtype", [d.name for d in DTYPES])
def test_every_dtype_of_the_table_crosses_unchanged(dtype):
    rng = np.random.default_rng(0)
    x = (rng.random((3, 5)) * 100).astype(dtype)
    got, _ = roundtrip({"x": x, "scalar": np.asarray(7, dtype=dtype)})
    np.testing.assert_array_equal(got["x"], x)
    assert got["x"].dtype == x.dtype
    assert got["scalar"].shape == ()


def test_reads_are_views_of_the_region_and_tensors_are_aligned():
    tensors = {"a": np.ones(3, np.int8), "b": np.arange(6, dtype=np.float64).reshape(2, 3)}
    got, buf = roundtrip(tensors)
    base = np.frombuffer(buf, np.uint8).__array_interface__["data"][0]
    for view in got.values():
        start = view.__array_interface__["data"][0] - base
        assert start % ALIGN == 0
    buf[plan_layout(tensors).slices[1].offset] = 0xFF  # the region changes, the view sees it
    assert got["b"][0, 0] != 0.0


def test_non_contiguous_and_byte_swapped_inputs_are_written_as_native():
    x = np.arange(24, dtype=">f4").reshape(4, 6)[:, ::2]
    got, _ = roundtrip({"x": x})
    np.testing.assert_array_equal(got["x"], x)
    assert got["x"].dtype == np.dtype("float32")


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.array(["a"]), "cannot cross"),
        (np.array([object()]), "cannot cross"),
        (np.zeros((1,) * (MAX_NDIM + 1)), "dims"),
    ],
)
def test_what_cannot_cross_is_refused_by_name(array, match):
    with pytest.raises(InvalidInput, match=match):
        plan_layout({"x": array})


def test_a_region_too_small_is_refused_before_writing():
    x = np.ones(100, np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        write_tensors(region(64), {"x": x}, plan_layout({"x": x}))


def entry(name=b"x", code=7, dims=(2,), offset=0, nbytes=8):
    return (
        struct.pack("<H", len(name))
        + name
        + struct.pack("<BB", code, len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<QQ", offset, nbytes)
    )


def table(*entries, count=None, magic=b"MHT\x01", version=1, flags=0):
    n = len(entries) if count is None else count
    return struct.pack("<4sBBH", magic, version, flags, n) + b"".join(entries)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (table(entry(), magic=b"PK\x03\x04"), "not a version 1"),
        (table(entry(), version=2), "not a version 1"),
        (table(entry(), flags=1), "not a version 1"),
        (table(count=5000), "5000 tensors"),
        (table(entry(), count=2), "ends 2 bytes early"),
        (table(entry()) + b"\0", "1 bytes after"),
        (table(entry(code=99)), "unknown dtype code 99"),
        (table(entry(dims=(1,) * 9, nbytes=4)), "9 dims"),
        (table(entry(name=b"\xff\xfe")), "not valid UTF-8"),
        (table(entry(), entry(offset=64)), "appears twice"),
        (table(entry(nbytes=12)), "12 bytes for shape"),
        (table(entry(offset=2)), "not aligned"),
        (table(entry(offset=1020)), "not aligned inside"),
        (table(entry(offset=2**64 - 8)), "not aligned inside"),
        (table(entry(dims=(2**40,), nbytes=2**42)), "cannot fit"),
        (table(entry(dims=(0, 2**63, 2**63), nbytes=0)), "cannot fit"),
        (table(entry(name=b"n" * 2000)), "name of 2000 bytes"),
        (b"MHT", "ends 5 bytes early"),
        (b"\0" * (MAX_TABLE_BYTES + 1), "at most"),
    ],
)
def test_a_corrupt_table_is_refused_naming_the_field(bad, match):
    with pytest.raises(InvalidInput, match=match):
        read_tensors(region(1024), bad)


def test_a_zero_size_tensor_needs_no_bytes():
    got = read_tensors(region(64), table(entry(dims=(0, 4), nbytes=0, offset=64)))
    assert got["x"].shape == (0, 4)


def assert_inside(views, buf):
    lo = np.frombuffer(buf, np.uint8).__array_interface__["data"][0]
    for view in views.values():
        start = view.__array_interface__["data"][0]
        assert view.nbytes == 0 or lo <= start <= start + view.nbytes <= lo + len(buf)


VALID = plan_layout(
    {"image": np.zeros((2, 1, 28, 28), np.float32), "ids": np.zeros((2, 7), np.int64)}
).table


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_tables_never_crash_nor_read_outside(data):
    buf = region(8192)
    try:
        views = read_tensors(buf, data)
    except InvalidInput:
        return
    assert_inside(views, buf)


@settings(max_examples=400)
@given(st.data())
def test_corrupted_valid_tables_never_crash_nor_read_outside(data):
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    buf = region(data.draw(st.sampled_from([0, 64, 8192, 14080])))
    try:
        views = read_tensors(buf, bytes(raw[:cut]))
    except InvalidInput:
        return
    assert_inside(views, buf)


@settings(max_examples=300)
@given(
    name=st.binary(max_size=40),
    code=st.integers(0, 255),
    dims=st.lists(st.integers(0, 2**64 - 1), max_size=10),
    offset=st.integers(0, 2**64 - 1),
    nbytes=st.integers(0, 2**64 - 1),
    region_bytes=st.integers(0, 4096),
)
def test_any_field_values_never_crash_nor_read_outside(
    name, code, dims, offset, nbytes, region_bytes
):
    buf = region(region_bytes)
    try:
        views = read_tensors(buf, table(entry(name, code, tuple(dims), offset, nbytes)))
    except InvalidInput:
        return
    assert_inside(views, buf)


def test_decoding_allocates_no_more_than_the_table_is_large():
    # the largest table there may be, claiming the largest dims: nothing sized by a claim
    bad = table(*(entry(f"t{i}".encode(), 7, (2**40,) * 8, 0, 2**63) for i in range(1024)))
    bad = bad[:MAX_TABLE_BYTES]
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput):
            parse_table(bad, 2**62)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_TABLE_BYTES


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
