"""Control messages between worker processes and the engine process, as data only.

    frame = u32 length | u32 header length | header: a JSON object (orjson) | tensor table

The header says what the message is (``kind``, request ``id``, model, version, slot, error
code and text, ...); the tensor table (``tensor_table.py``) says where the tensors lie in shared
memory. Nothing is ever unpickled, and a frame's size is checked before it is read.

Messages (worker → engine, then engine → worker)::

    hello   arena slots slot_bytes pid   ─► welcome pid          (or error, then close)
    infer   id model version timeout_s   ─► result id model version segment queue_s
            slot segment request_id            compute_s batch_size request_id
            + table (inputs)                   instances queue_depth + table (outputs)
                                          ─► error id code message retry_after_s
    cancel  id                            ─► cancelled id         (or the result, if first)
    load    id model version              ─► load id instances queue_depth in_flight
    metrics id                            ─► metrics id text
    bye                                        (the worker closes; it unlinks its arena)

Every ``infer`` gets exactly one of result, error or cancelled: only then may the worker
use its slot again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from modelhost.errors import InvalidInput, ModelhostError, Overloaded, error_class_for_code

MAX_FRAME_BYTES = 1024 * 1024
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded message: its JSON header and its tensor table (may be empty)."""

    header: dict[str, Any]
    table: bytes

    @property
    def kind(self) -> str:
        """What the message is (``hello``, ``infer``, ``result``, ...)."""
        return self.text("kind")

    def text(self, key: str) -> str:
        """The string field ``key``. Raises InvalidInput when missing or not a string."""
        value = self.header.get(key)
        if not isinstance(value, str):
            raise InvalidInput(f"message field {key!r} must be a string, got {value!r:.80}")
        return value

    def optional_text(self, key: str) -> str | None:
        """The string field ``key`` or None. Raises InvalidInput for other types."""
        return None if self.header.get(key) is None else self.text(key)

    def integer(self, key: str) -> int:
        """The integer field ``key`` (0..2**63-1; no bools). Raises InvalidInput."""
        value = self.header.get(key)
        if type(value) is not int or not 0 <= value < 2**63:
            raise InvalidInput(f"message field {key!r} must be an integer >= 0, got {value!r:.80}")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        """The finite number field ``key`` (``default`` when missing). Raises InvalidInput."""
        value = self.header.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidInput(f"message field {key!r} must be a finite number, got {value!r:.80}")
        return float(value)


def encode_frame(header: Mapping[str, Any], table: bytes = b"") -> bytes:
    """One frame of ``header`` (JSON-able plain data) and ``table``."""
    body = orjson.dumps(header)
    return b"".join(
        (_LENGTH.pack(_LENGTH.size + len(body) + len(table)), _LENGTH.pack(len(body)), body, table)
    )


class FrameWriter:
    """Frames to one peer, sent together once per turn of the event loop.

    Each ``send`` on a unix socket cost ~0.14 ms on the 2-core development VM (profiled at
    16 requests in flight): a worker submitting 16 requests, or a host answering a batch of
    16, makes one send instead of 16.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._frames: list[bytes] = []

    def send(self, header: Mapping[str, Any], table: bytes = b"") -> None:
        """Queue a frame; it leaves at the end of this turn of the loop (or on ``flush``).
        Frames for a closing connection are dropped."""
        if self._writer.is_closing():
            return
        if not self._frames:
            asyncio.get_running_loop().call_soon(self.flush)
        self._frames.append(encode_frame(header, table))

    def flush(self) -> None:
        """Hand the queued frames to the transport now."""
        frames, self._frames = self._frames, []
        if frames and not self._writer.is_closing():
            self._writer.write(b"".join(frames))

    async def close(self) -> None:
        """Flush, close, and wait for the connection to close."""
        self.flush()
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """The next frame off ``reader``.

    Raises:
        asyncio.IncompleteReadError: the peer closed the connection (between or inside a
            frame).
        InvalidInput: a frame over ``max_bytes``, or a header that is not a JSON object with
            a string ``kind``: the peer does not speak this protocol; close the connection.
    """
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if not _LENGTH.size <= length <= max_bytes:
        raise InvalidInput(f"frame of {length} bytes; frames have 4..{max_bytes}")
    data = await reader.readexactly(length)
    return decode_frame(data)


def decode_frame(data: bytes) -> Frame:
    """A frame's body (after its length) as a :class:`Frame`. Raises InvalidInput."""
    (header_len,) = _LENGTH.unpack_from(data)
    if header_len > len(data) - _LENGTH.size:
        raise InvalidInput(f"frame header of {header_len} bytes in a {len(data)}-byte frame")
    end = _LENGTH.size + header_len
    try:
        header = orjson.loads(data[_LENGTH.size : end])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"frame header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidInput("frame header must be a JSON object")
    if not isinstance(header.get("kind"), str):
        raise InvalidInput("frame header has no string 'kind'")
    return Frame(header, data[end:])


def error_fields(exc: ModelhostError) -> dict[str, Any]:
    """What an ``error`` message carries of ``exc``: code, message, retry_after_s."""
    fields: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if isinstance(exc, Overloaded):
        fields["retry_after_s"] = exc.retry_after_s
    return fields


def error_from(frame: Frame) -> ModelhostError:
    """The error an ``error`` message describes, as the same class as on the other side."""
    cls = error_class_for_code(frame.text("code"))
    message = frame.text("message")
    if issubclass(cls, Overloaded):
        return cls(message, retry_after_s=frame.number("retry_after_s", 1.0))
    return cls(message)
