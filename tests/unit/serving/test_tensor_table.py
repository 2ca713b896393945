"""The tensor table: its round trip, and its checks against an untrusted peer (corrupt
tables never crash, never read outside the region, never allocate by a claimed size)."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelhost.errors import InvalidInput
from modelhost.serving.tensor_table import (
    ALIGN,
    DTYPES,
    MAX_NDIM,
    MAX_TABLE_BYTES,
    parse_table,
    plan_layout,
    read_tensors,
    write_tensors,
)


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


def test_a_remembered_table_is_still_checked_against_each_region():
    x = {"x": np.ones(100, np.float32)}
    layout = plan_layout(x)
    assert parse_table(layout.table, 4096) == layout.slices
    with pytest.raises(InvalidInput, match="cannot fit the region"):
        parse_table(layout.table, 100)
    assert plan_layout(x) is layout  # laid out once per names, dtypes and shapes
