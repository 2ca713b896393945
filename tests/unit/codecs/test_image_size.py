"""image_size reads what the header declares, as Pillow will read it, without decoding; and
decode_pixels refuses any image whose pixels are not the size that was charged."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from modelhost.archive.manifest import ImagePreprocessing
from modelhost.codecs.images import decode_pixels, image_size
from modelhost.errors import InvalidInput

PREP = ImagePreprocessing(width=4, height=4)


def _encode(size: tuple[int, int], fmt: str, mode: str = "L", **options) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, format=fmt, **options)
    return buf.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _sof(marker: int, width: int, height: int) -> bytes:
    return _segment(marker, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (_encode((28, 28), "PNG"), (28, 28)),
        (_encode((300, 7), "PNG", "RGB"), (300, 7)),
        (_encode((17, 33), "JPEG"), (17, 33)),
        (_encode((40, 9), "JPEG", "RGB", progressive=True), (40, 9)),
        (_encode((5, 6), "JPEG", "CMYK"), (5, 6)),
    ],
    ids=["png", "png-rgb", "jpeg", "jpeg-progressive", "jpeg-cmyk"],
)
def test_the_size_is_what_pillow_reads(data, size):
    assert image_size(data) == size
    assert Image.open(io.BytesIO(data)).size == size


@pytest.mark.parametrize(
    ("data", "size"),
    [
        # fill bytes before a marker, an APP segment, a TEM marker, then the frame header
        (b"\xff\xd8" + b"\xff\xff\xff" + _segment(0xE0, b"JFIF\0") + b"\xff\x01"
         + _sof(0xC2, 640, 480), (640, 480)),
        (b"\xff\xd8" + _segment(0xC4, b"\0" * 20) + _sof(0xC1, 3, 2), (3, 2)),  # DHT first
        (b"\xff\xd8" + _segment(0xE2, b"\0" * 65000) * 3 + _sof(0xC0, 9, 8), (9, 8)),
    ],
    ids=["fill-app-tem", "dht-then-sof1", "large-app2"],
)  # fmt: skip
def test_jpeg_segments_before_the_frame_are_skipped(data, size):
    assert image_size(data) == size


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"GIF89a....", "unknown signature"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "no PNG IHDR header"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDX" + b"\x00" * 13, "no PNG IHDR header"),
        (_encode((3, 3), "PNG")[:16] + b"\x00\x00\x00\x00\x00\x00\x00\x05", "declares 0x5"),
        (b"\xff\xd8\xff", "no JPEG marker"),
        (b"\xff\xd8" + _segment(0xE0, b"x") + b"garbage", "no JPEG marker"),
        (b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 8, "before the image data"),
        (b"\xff\xd8\xff\xd9" + b"\0" * 8, "before the image data"),
        (b"\xff\xd8\xff\xe0\x00\x01" + b"\0" * 8, "impossible length"),
        (b"\xff\xd8\xff\xc0\x00\x11\x08", "truncated JPEG header"),
        (b"\xff\xd8" + _sof(0xC0, 0, 10), "declares 0x10"),
        (b"\xff\xd8" + b"\xff\xe0\x00\x02" * 5000 + _sof(0xC0, 4, 4), "first 4096 segments"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unreadable_headers_are_invalid_input_naming_the_field(data, why):
    with pytest.raises(InvalidInput, match="img: ") as caught:
        image_size(data, "img")
    assert why in str(caught.value)


def test_a_jpeg_with_a_second_larger_frame_header_is_refused_before_decoding():
    real = _encode((8, 8), "JPEG")
    at = real.index(b"\xff\xc0")
    end = at + 2 + int.from_bytes(real[at + 2 : at + 4], "big")
    second = real[at:end]
    second = second[:5] + struct.pack(">HH", 9000, 9000) + second[9:]
    lying = real[:end] + second + real[end:]
    size = image_size(lying)
    assert size == (8, 8)  # the first frame: what was charged
    with pytest.raises(InvalidInput, match=r"declares both \(8, 8\) and \(9000, 9000\)"):
        decode_pixels(lying, PREP, size)


def test_decode_pixels_refuses_a_size_other_than_the_charged_one():
    png = _encode((6, 6), "PNG")
    with pytest.raises(InvalidInput, match="declares both"):
        decode_pixels(png, PREP, (3, 3))
    assert decode_pixels(png, PREP, (6, 6)).shape == (1, 4, 4)


def test_a_truncated_png_is_invalid_input_when_decoded():
    png = _encode((64, 64), "PNG", "RGB")
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    header_only = png[:8] + chunk
    size = image_size(header_only)
    with pytest.raises(InvalidInput, match="not a decodable PNG or JPEG"):
        decode_pixels(header_only, PREP, size)
