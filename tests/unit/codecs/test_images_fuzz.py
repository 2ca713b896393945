"""decode_image under hostile bytes: a modelhost error or a valid image tensor, never else.

Inputs: random bytes, the example PNGs (and JPEGs made from them) truncated or with bytes
changed, and headers declaring any size with little or no data behind them.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from modelhost.archive.manifest import ImagePreprocessing
from modelhost.codecs.images import decode_image
from modelhost.codecs.limits import DecodeLimits
from modelhost.errors import ModelhostError, PayloadTooLarge
from support.paths import EXAMPLE_IMAGES

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PREPS = [
    ImagePreprocessing(width=28, height=28),
    ImagePreprocessing(width=5, height=3, grayscale=False, mean=0.5, std=0.25),
]
LIMITS = [DecodeLimits(), DecodeLimits(max_image_pixels=400, max_request_pixels=1000)]


def _jpeg(png: bytes, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert(mode).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int, bit_depth: int, color: int, data: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    )


def _jpeg_declaring(real: bytes, width: int, height: int) -> bytes:
    """``real`` with its frame header (SOF0) rewritten to claim ``width`` x ``height``."""
    at = real.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then height, width
    return real[:at] + struct.pack(">HH", height, width) + real[at + 4 :]


EXAMPLES = [p.read_bytes() for p in sorted(EXAMPLE_IMAGES.glob("digit_*.png"))]
REAL = [*EXAMPLES, _jpeg(EXAMPLES[0], "L"), _jpeg(EXAMPLES[1], "RGB"), _jpeg(EXAMPLES[2], "CMYK")]
sizes = st.integers(0, 2**32 - 1) | st.integers(0, 5000) | st.sampled_from([1, 4096, 4097, 65535])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "truncate", "insert"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif action == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


declared = st.one_of(
    st.builds(
        _png_declaring,
        sizes,
        sizes,
        st.sampled_from([1, 2, 4, 8, 16, 3]),
        st.sampled_from([0, 2, 3, 4, 6, 5]),
        st.binary(max_size=64) | st.builds(zlib.compress, st.binary(max_size=256)),
    ),
    st.builds(
        _jpeg_declaring, st.sampled_from(REAL[-3:]), st.integers(0, 65535), st.integers(0, 65535)
    ),
)
hostile = st.binary(max_size=300) | mutated() | declared | st.sampled_from(REAL)


@FUZZ
@given(hostile, st.sampled_from(PREPS), st.sampled_from(LIMITS))
def test_hostile_bytes_decode_or_raise_a_modelhost_error(data, prep, limits):
    budget = limits.pixel_budget()
    try:
        arr = decode_image(data, prep, "img", budget)
    except ModelhostError as exc:
        event(f"refused: {type(exc).__name__}")
        message = str(exc)
    else:
        event("decoded")
        message = ""
    if message:
        assert message.startswith("img: ")
        return
    assert arr.dtype == np.float32
    assert arr.shape == (1 if prep.grayscale else 3, prep.height, prep.width)
    assert np.isfinite(arr).all()
    assert 0 < budget.used <= limits.max_image_pixels


@FUZZ
@given(sizes, sizes)
def test_a_declared_size_over_the_limit_is_refused_before_decoding(width, height):
    limits = LIMITS[1]
    data = _png_declaring(width, height, 8, 0, b"")  # no pixel data at all
    try:
        decode_image(data, PREPS[0], "img", limits.pixel_budget())
    except PayloadTooLarge:
        assert width * height > limits.max_image_pixels
    except ModelhostError:
        assert width * height <= limits.max_image_pixels or width == 0 or height == 0
