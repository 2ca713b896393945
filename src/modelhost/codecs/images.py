"""PNG/JPEG bytes -> the model's image tensor, as the manifest's preprocessing says."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile
from PIL.JpegImagePlugin import JpegImageFile
from PIL.PngImagePlugin import PngImageFile

from modelhost.archive.manifest import ImagePreprocessing
from modelhost.codecs.limits import DecodeLimits, PixelBudget
from modelhost.errors import InvalidInput

IMAGE_CONTENT_TYPES = frozenset({"image/png", "image/jpeg"})
# Only these decoders, chosen by magic bytes: no probing of every format, a smaller surface,
# and no process-wide Image.MAX_IMAGE_PIXELS check: our own limits apply, from the header.
_DECODERS: tuple[tuple[bytes, type[ImageFile.ImageFile]], ...] = (
    (b"\x89PNG\r\n\x1a\n", PngImageFile),
    (b"\xff\xd8\xff", JpegImageFile),
)
_DEFAULT_LIMITS = DecodeLimits()


def decode_image(
    data: bytes,
    prep: ImagePreprocessing,
    field: str = "body",
    budget: PixelBudget | None = None,
) -> np.ndarray:
    """Decode one image into a float32 array (C, H, W).

    Steps: grayscale (or RGB), bilinear resize to ``width`` x ``height``, ``* scale``,
    ``(x - mean) / std``. The image's size is read from its header and charged to
    ``budget`` (default: a fresh one with the default limits) before any pixel is decoded.

    Raises:
        InvalidInput: empty bytes, not PNG or JPEG, or undecodable (truncated, corrupt).
        PayloadTooLarge: the header declares more pixels than the budget allows.
    """
    if not data:
        raise InvalidInput(f"{field}: empty; send PNG or JPEG bytes")
    decoder = next((cls for magic, cls in _DECODERS if data.startswith(magic)), None)
    if decoder is None:
        raise InvalidInput(f"{field}: not a decodable PNG or JPEG image (unknown signature)")
    budget = budget if budget is not None else _DEFAULT_LIMITS.pixel_budget()
    try:
        with decoder(io.BytesIO(data)) as img:
            budget.take(img.width, img.height, field)
            img.load()
            converted = _to_mode(img, "L" if prep.grayscale else "RGB")
            if converted.size != (prep.width, prep.height):
                converted = converted.resize((prep.width, prep.height), Image.Resampling.BILINEAR)
            arr = np.asarray(converted, dtype=np.float32)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # What Pillow raises for truncated, corrupt or unsupported image data.
        raise InvalidInput(f"{field}: not a decodable PNG or JPEG image ({exc})") from exc
    arr = arr[np.newaxis] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    arr = arr * np.float32(prep.scale)
    if prep.mean != 0.0 or prep.std != 1.0:
        arr = (arr - np.float32(prep.mean)) / np.float32(prep.std)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode == mode:
        return img
    if img.mode == "P" and "transparency" in img.info:
        # Pillow warns when a palette with transparency is converted straight to L/RGB.
        img = img.convert("RGBA")
    return img.convert(mode)
