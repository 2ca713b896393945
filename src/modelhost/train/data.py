"""The digits data set: scikit-learn's 8x8 digits, upscaled to MNIST's 28x28 layout.

    load_digits()  (1797, 64) in 0..16
        → / 16 → (N, 1, 8, 8) float32 in [0, 1]
        → bilinear → (N, 1, 28, 28)
        → stratified split (train_test_split, random_state=seed)

The data ships inside scikit-learn, so training needs no network.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from modelhost.errors import ConfigError

IMAGE_SIZE = 28
NUM_CLASSES = 10
_DIGITS_MAX = 16.0


@dataclass(frozen=True, slots=True)
class DigitsSplit:
    """A train/test split: x float32 (N, 1, 28, 28) in [0, 1], y int64 (N,) in 0..9."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsSplit:
    """Load the digits, upscale them to 28x28 and split them, stratified by label.

    Args:
        seed: ``random_state`` of the split; the same seed always gives the same split.
        test_fraction: share of the samples in the test split, in (0, 1).

    Returns:
        The :class:`DigitsSplit` (1797 samples in all; 360 test samples at 0.2).

    Raises:
        ConfigError: ``test_fraction`` is not in (0, 1).

    Example:
        >>> split = load_digits_split(seed=0)
        >>> split.x_test.shape
        (360, 1, 28, 28)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / _DIGITS_MAX)
    large = torch.nn.functional.interpolate(
        small.unsqueeze(1), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
    )
    # Bilinear weights sum to one, so values stay in [0, 1] up to rounding; clip the rounding.
    x = np.ascontiguousarray(large.clamp(0.0, 1.0).numpy(), dtype=np.float32)
    y = np.asarray(digits.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return DigitsSplit(
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.ascontiguousarray(y_test),
    )


def shift_images(
    images: npt.NDArray[np.float32], rng: np.random.Generator, max_shift_px: int
) -> npt.NDArray[np.float32]:
    """Return a copy of ``images`` (N, C, H, W), each moved by its own random offset.

    Offsets are whole pixels in [-max_shift_px, max_shift_px] on both axes, drawn from
    ``rng``; pixels moved in from outside are 0 (the background).
    """
    n, _, height, width = images.shape
    m = max_shift_px
    padded = np.pad(images, ((0, 0), (0, 0), (m, m), (m, m)))
    dy, dx = rng.integers(-m, m + 1, size=(2, n)) + m
    shifted = np.empty_like(images)
    for i in range(n):
        shifted[i] = padded[i, :, dy[i] : dy[i] + height, dx[i] : dx[i] + width]
    return shifted


def to_png_bytes(image: npt.NDArray[np.floating]) -> bytes:
    """Encode a (1, H, W) or (H, W) image in [0, 1] as an 8-bit grayscale PNG.

    Pixels become ``round(x * 255)``, so ``png / 255`` is within 1/510 of the input;
    the digit stays white on black, as in the data.

    Raises:
        ConfigError: the image is not 2-D (or 3-D with one channel) or leaves [0, 1].

    Example:
        >>> png = to_png_bytes(load_digits_split().x_test[0])
        >>> png[:4]
        b'\\x89PNG'
    """
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise ConfigError(f"image shape {list(np.shape(image))} must be (1, H, W) or (H, W)")
    if pixels.size and (float(pixels.min()) < 0.0 or float(pixels.max()) > 1.0):
        raise ConfigError("image values must lie in [0, 1]")
    gray = np.rint(pixels.astype(np.float64) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: npt.NDArray[np.floating], path: Path) -> None:
    """Write ``image`` to ``path`` as :func:`to_png_bytes` encodes it."""
    path.write_bytes(to_png_bytes(image))
