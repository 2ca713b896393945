"""PNG/JPEG bytes -> the model's image tensor, as the manifest's preprocessing says."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from modelhost.archive.manifest import ImagePreprocessing
from modelhost.errors import InvalidInput

IMAGE_CONTENT_TYPES = frozenset({"image/png", "image/jpeg"})
# Only these decoders are tried: faster (no probing of every format) and a smaller surface.
_FORMATS = ("PNG", "JPEG")
# Refuse decompression bombs before decoding: 8192 x 8192 pixels at most.
_MAX_PIXELS = 8192 * 8192


def decode_image(data: bytes, prep: ImagePreprocessing, field: str = "body") -> np.ndarray:
    """Decode one image into a float32 array (C, H, W).

    Steps: grayscale (or RGB), bilinear resize to ``width`` x ``height``, ``* scale``,
    ``(x - mean) / std``.

    Raises:
        InvalidInput: empty or undecodable bytes, or an image over 8192 x 8192 pixels.
    """
    if not data:
        raise InvalidInput(f"{field}: empty; send PNG or JPEG bytes")
    try:
        with Image.open(io.BytesIO(data), formats=_FORMATS) as img:
            if img.width * img.height > _MAX_PIXELS:
                raise InvalidInput(f"{field}: image of {img.width}x{img.height} is too large")
            img.load()
            mode = "L" if prep.grayscale else "RGB"
            converted = img if img.mode == mode else img.convert(mode)
    except Image.DecompressionBombError as exc:
        raise InvalidInput(f"{field}: image is too large ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"{field}: not a decodable PNG or JPEG image ({exc})") from exc
    if converted.size != (prep.width, prep.height):
        converted = converted.resize((prep.width, prep.height), Image.Resampling.BILINEAR)
    arr = np.asarray(converted, dtype=np.float32)
    arr = arr[np.newaxis] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    arr = arr * np.float32(prep.scale)
    if prep.mean != 0.0 or prep.std != 1.0:
        arr = (arr - np.float32(prep.mean)) / np.float32(prep.std)
    return np.ascontiguousarray(arr, dtype=np.float32)
