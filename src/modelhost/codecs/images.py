"""PNG/JPEG bytes -> the model's image tensor, as the manifest's preprocessing says.

Two phases, so that the size limit is checked before any pixel is decoded and the caller can
run the expensive phase elsewhere:

    image_size(data)             header only: PNG IHDR at a fixed offset, JPEG's frame header
                                 after at most _MAX_JPEG_SEGMENTS segments (microseconds)
    budget.take(width, height)   max_image_pixels, max_request_pixels
    decode_pixels(data, ...)     Pillow: inflate, convert, resize (milliseconds to seconds)
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageFile
from PIL.JpegImagePlugin import JpegImageFile
from PIL.PngImagePlugin import PngImageFile

from modelhost.archive.manifest import ImagePreprocessing
from modelhost.codecs.limits import DecodeLimits, PixelBudget
from modelhost.errors import InvalidInput

IMAGE_CONTENT_TYPES = frozenset({"image/png", "image/jpeg"})
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
# Only these decoders, chosen by magic bytes: no probing of every format, a smaller surface,
# and no process-wide Image.MAX_IMAGE_PIXELS check: our own limits apply, from the header.
_DECODERS: tuple[tuple[bytes, type[ImageFile.ImageFile]], ...] = (
    (_PNG, PngImageFile),
    (_JPEG, JpegImageFile),
)
# Start-of-frame markers (the ones carrying the size): C0-CF but DHT (C4), JPG (C8), DAC (CC).
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field
# Real JPEGs carry tens of segments before the frame header (ICC profiles split into 64 KiB
# APP2 segments: a few hundred at most in a 16 MiB body); more is a body built to stall us.
_MAX_JPEG_SEGMENTS = 4096
_MARKER = re.compile(rb"\xff+([^\xff])")  # fill bytes, then the marker code
_DEFAULT_LIMITS = DecodeLimits()


def image_size(data: bytes, field: str = "body") -> tuple[int, int]:
    """``(width, height)`` as the header of a PNG or JPEG declares it; no pixel is read.

    Raises:
        InvalidInput: empty, not PNG or JPEG, no readable header, or a zero dimension.
    """
    if not data:
        raise InvalidInput(f"{field}: empty; send PNG or JPEG bytes")
    if data.startswith(_PNG):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise _undecodable(field, "no PNG IHDR header")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    elif data.startswith(_JPEG):
        width, height = _jpeg_size(data, field)
    else:
        raise _undecodable(field, "unknown signature")
    if width == 0 or height == 0:
        raise _undecodable(field, f"the header declares {width}x{height} pixels")
    return width, height


def _jpeg_size(data: bytes, field: str) -> tuple[int, int]:
    pos = 2  # after SOI
    for _ in range(_MAX_JPEG_SEGMENTS):
        found = _MARKER.match(data, pos)
        if found is None:
            raise _undecodable(field, "no JPEG marker where one must be")
        marker, pos = found.group(1)[0], found.end()
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker in (0xD9, 0xDA):  # EOI, SOS: image data before any frame header
            raise _undecodable(field, "no JPEG frame header before the image data")
        if len(data) < pos + 7:
            raise _undecodable(field, "truncated JPEG header")
        if marker in _JPEG_FRAMES:  # length (2), precision (1), height (2), width (2)
            height = int.from_bytes(data[pos + 3 : pos + 5], "big")
            return int.from_bytes(data[pos + 5 : pos + 7], "big"), height
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            raise _undecodable(field, "a JPEG segment of impossible length")
        pos += length
    raise _undecodable(field, f"no JPEG frame header in its first {_MAX_JPEG_SEGMENTS} segments")


def _undecodable(field: str, why: str) -> InvalidInput:
    return InvalidInput(f"{field}: not a decodable PNG or JPEG image ({why})")


def decode_pixels(
    data: bytes, prep: ImagePreprocessing, size: tuple[int, int], field: str = "body"
) -> np.ndarray:
    """Decode an image whose header declared ``size`` (see :func:`image_size`) into a float32
    array (C, H, W), or (H, W, C) for ``layout`` ``hwc``: grayscale (or RGB), bilinear resize
    to ``width`` x ``height``, ``* scale``, ``(x - mean) / std``.

    Raises:
        InvalidInput: undecodable (truncated, corrupt), or Pillow reads another size than
            ``size`` (a header declaring two sizes): no more pixels than were charged.
    """
    decoder = next((cls for magic, cls in _DECODERS if data.startswith(magic)), None)
    if decoder is None:
        raise _undecodable(field, "unknown signature")
    try:
        with decoder(io.BytesIO(data)) as img:
            if img.size != size:
                raise _undecodable(field, f"it declares both {size} and {img.size} pixels")
            img.load()
            converted = _to_mode(img, "L" if prep.grayscale else "RGB")
            if converted.size != (prep.width, prep.height):
                converted = converted.resize((prep.width, prep.height), Image.Resampling.BILINEAR)
            arr = np.asarray(converted, dtype=np.float32)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # What Pillow raises for truncated, corrupt or unsupported image data.
        raise _undecodable(field, str(exc)) from exc
    if prep.layout == "hwc":
        arr = arr[..., np.newaxis] if arr.ndim == 2 else arr
    else:
        arr = arr[np.newaxis] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    arr = arr * np.float32(prep.scale)
    if prep.mean != 0.0 or prep.std != 1.0:
        arr = (arr - np.float32(prep.mean)) / np.float32(prep.std)
    return np.ascontiguousarray(arr, dtype=np.float32)


def decode_image(
    data: bytes,
    prep: ImagePreprocessing,
    field: str = "body",
    budget: PixelBudget | None = None,
) -> np.ndarray:
    """Decode one image into a float32 array (C, H, W), in one go.

    The image's size is read from its header and charged to ``budget`` (default: a fresh
    one with the default limits) before any pixel is decoded; see :func:`decode_pixels`.

    Raises:
        InvalidInput: empty bytes, not PNG or JPEG, or undecodable (truncated, corrupt).
        PayloadTooLarge: the header declares more pixels than the budget allows.
    """
    size = image_size(data, field)
    budget = budget if budget is not None else _DEFAULT_LIMITS.pixel_budget()
    budget.take(*size, field)
    return decode_pixels(data, prep, size, field)


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode == mode:
        return img
    if img.mode == "P" and "transparency" in img.info:
        # Pillow warns when a palette with transparency is converted straight to L/RGB.
        img = img.convert("RGBA")
    return img.convert(mode)
