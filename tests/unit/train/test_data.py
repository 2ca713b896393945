import io
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelhost.errors import ConfigError
from modelhost.train.data import load_digits_split, save_png, shift_images, to_png_bytes


@pytest.fixture(scope="module")
def split():
    return load_digits_split(seed=0)


def test_split_shapes_dtypes_and_ranges(split):
    assert split.x_train.shape == (1437, 1, 28, 28)
    assert split.x_test.shape == (360, 1, 28, 28)
    assert split.y_train.shape == (1437,)
    assert split.y_test.shape == (360,)
    assert split.x_train.dtype == np.float32
    assert split.x_test.dtype == np.float32
    assert split.y_train.dtype == np.int64
    assert split.y_test.dtype == np.int64
    for x in (split.x_train, split.x_test):
        assert x.min() >= 0.0
        assert x.max() <= 1.0
        assert x.max() > 0.9
    assert set(split.y_train.tolist()) == set(range(10))
    assert set(split.y_test.tolist()) == set(range(10))


def test_split_is_stratified(split):
    counts = np.bincount(split.y_test, minlength=10)
    assert counts.min() >= 35
    assert counts.max() <= 37


def test_same_seed_same_split(split):
    again = load_digits_split(seed=0)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(split, name), getattr(again, name))


def test_other_seed_other_split(split):
    other = load_digits_split(seed=1)
    assert not np.array_equal(split.y_test, other.y_test)


@pytest.mark.parametrize("test_fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_test_fraction_is_a_config_error(test_fraction):
    with pytest.raises(ConfigError, match="test_fraction"):
        load_digits_split(test_fraction=test_fraction)


def test_png_round_trip(split):
    image = split.x_test[0]
    decoded = Image.open(io.BytesIO(to_png_bytes(image)))
    assert decoded.mode == "L"
    assert decoded.size == (28, 28)
    pixels = np.asarray(decoded)
    np.testing.assert_array_equal(pixels, np.rint(image[0].astype(np.float64) * 255))
    np.testing.assert_allclose(pixels / 255.0, image[0], atol=1 / 510 + 1e-7)


def test_save_png_writes_the_same_bytes(split, tmp_path):
    path = tmp_path / "digit.png"
    save_png(split.x_test[1], path)
    assert path.read_bytes() == to_png_bytes(split.x_test[1])


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((3, 28, 28), np.float32), "shape"),
        (np.zeros((28,), np.float32), "shape"),
        (np.full((28, 28), 1.5, np.float32), r"\[0, 1\]"),
        (np.full((28, 28), -0.5, np.float32), r"\[0, 1\]"),
    ],
)
def test_png_rejects_bad_images(image, message):
    with pytest.raises(ConfigError, match=message):
        to_png_bytes(image)


def test_shift_images_moves_each_image_within_bounds():
    images = np.zeros((50, 1, 28, 28), np.float32)
    images[:, 0, 14, 14] = 1.0
    shifted = shift_images(images, np.random.default_rng(0), max_shift_px=2)
    assert shifted.shape == images.shape
    assert shifted.dtype == np.float32
    rows, cols = np.nonzero(shifted[:, 0].sum(axis=0))
    assert rows.min() >= 12
    assert rows.max() <= 16
    assert cols.min() >= 12
    assert cols.max() <= 16
    np.testing.assert_array_equal(shifted.sum(axis=(1, 2, 3)), np.ones(50))
    assert len({tuple(np.argwhere(s[0])[0]) for s in shifted}) > 1


def test_shift_images_is_seeded():
    images = np.random.default_rng(1).random((8, 1, 28, 28), dtype=np.float32)
    first = shift_images(images, np.random.default_rng(3), max_shift_px=2)
    second = shift_images(images, np.random.default_rng(3), max_shift_px=2)
    np.testing.assert_array_equal(first, second)


def test_example_images_match_the_script(tmp_path):
    examples = Path(__file__).resolve().parents[3] / "examples" / "digits"
    make_images = runpy.run_path(str(examples / "make_images.py"))["make_images"]
    written = make_images(tmp_path)
    assert [p.name for p in written] == [f"digit_{label}.png" for label in range(10)]
    for path in written:
        assert path.read_bytes() == (examples / "images" / path.name).read_bytes(), path.name
        with Image.open(path) as image:
            assert (image.mode, image.size) == ("L", (28, 28))
