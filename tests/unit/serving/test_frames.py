"""Control frames: data only, sizes checked first, typed fields, errors as the same class."""

from __future__ import annotations

import asyncio
import math
import struct

import pytest

from modelhost import errors
from modelhost.errors import InvalidInput, ModelhostError, Overloaded
from modelhost.serving.frames import (
    Frame,
    FrameWriter,
    decode_frame,
    encode_frame,
    error_fields,
    error_from,
    read_frame,
)


def reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_a_frame_round_trips_its_header_and_table():
    data = encode_frame({"kind": "infer", "id": 7, "model": "m"}, b"\x01\x02")
    frame = await read_frame(reader_of(data))
    assert frame == Frame({"kind": "infer", "id": 7, "model": "m"}, b"\x01\x02")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (struct.pack("<I", 2**31), "frame of 2147483648 bytes"),
        (struct.pack("<I", 2), "frame of 2 bytes"),
        (struct.pack("<II", 8, 9) + b"{}{}", "header of 9 bytes"),
        (struct.pack("<II", 6, 2) + b"{]", "not JSON"),
        (struct.pack("<II", 6, 2) + b"[]", "JSON object"),
        (struct.pack("<II", 15, 11) + b'{"kind": 1}', "no string 'kind'"),
    ],
)
async def test_a_malformed_frame_is_refused_before_it_is_used(data, match):
    with pytest.raises(InvalidInput, match=match):
        await read_frame(reader_of(data))


async def test_a_frame_cut_short_is_the_peer_leaving():
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(reader_of(encode_frame({"kind": "bye"})[:-1]))


@pytest.mark.parametrize(
    ("header", "getter", "match"),
    [
        ({"id": True}, Frame.integer, "integer"),
        ({"id": -1}, Frame.integer, "integer"),
        ({"id": 2**63}, Frame.integer, "integer"),
        ({"id": "1"}, Frame.integer, "integer"),
        ({"t": math.nan}, Frame.number, "finite number"),
        ({"t": False}, Frame.number, "finite number"),
        ({"t": "1.0"}, Frame.number, "finite number"),
        ({"s": 3}, Frame.text, "string"),
        ({}, Frame.text, "string"),
    ],
)
def test_fields_of_the_wrong_type_are_refused_by_name(header, getter, match):
    key = next(iter(header), "s")
    with pytest.raises(InvalidInput, match=rf"{key!r} must be a.*{match}|{match}"):
        getter(Frame(header | {"kind": "x"}, b""), key)


def test_optional_fields_are_none_or_their_type():
    frame = decode_frame(encode_frame({"kind": "x", "a": None, "b": "s"})[4:])
    assert (frame.optional_text("a"), frame.optional_text("b"), frame.optional_text("c")) == (
        None,
        "s",
        None,
    )
    assert frame.number("missing", 1.5) == 1.5


@pytest.mark.parametrize(
    "cls",
    [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, ModelhostError)],
)
def test_every_error_class_comes_back_as_itself(cls):
    exc = cls("it went wrong", retry_after_s=7.0) if cls is Overloaded else cls("it went wrong")
    frame = decode_frame(encode_frame({"kind": "error", "id": 1, **error_fields(exc)})[4:])
    back = error_from(frame)
    assert type(back) is cls
    assert back.message == "it went wrong"
    if cls is Overloaded:
        assert back.retry_after_s == 7.0


async def test_frames_of_one_turn_leave_in_one_write():
    writes = []

    class Transport:
        def is_closing(self):
            return False

        def write(self, data):
            writes.append(data)

    frames = FrameWriter(Transport())
    frames.send({"kind": "a", "id": 1})
    frames.send({"kind": "b", "id": 2}, b"table")
    assert writes == []
    await asyncio.sleep(0)
    assert len(writes) == 1
    reader = reader_of(writes[0])
    assert [(await read_frame(reader)).kind for _ in range(2)] == ["a", "b"]
