"""decode_image: real PNG/JPEG bytes made with Pillow, and hostile ones made by hand."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from modelhost.archive.manifest import ImagePreprocessing
from modelhost.codecs.images import decode_image
from modelhost.codecs.limits import DecodeLimits
from modelhost.errors import InvalidInput, PayloadTooLarge

GRAY_8 = ImagePreprocessing(width=8, height=8)
RGB_8 = ImagePreprocessing(width=8, height=8, grayscale=False)


def _encode(img, fmt, **options):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _gradient(width, height):
    """A grayscale image whose pixel (x, y) is (x + y * width) % 256."""
    values = (np.arange(width * height) % 256).astype(np.uint8).reshape(height, width)
    return Image.fromarray(values, mode="L"), values


def _png_header_only(width, height):
    """A PNG that claims ``width`` x ``height`` pixels but holds almost no data."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_png_pixels_are_scaled_into_a_channels_first_float32_array():
    img, values = _gradient(8, 8)
    arr = decode_image(_encode(img, "PNG"), GRAY_8)
    assert arr.dtype == np.float32
    assert arr.shape == (1, 8, 8)
    assert arr.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(arr[0], values / 255.0, rtol=1e-6)


def test_width_and_height_are_not_swapped():
    img, values = _gradient(6, 10)
    arr = decode_image(_encode(img, "PNG"), ImagePreprocessing(width=6, height=10, scale=1.0))
    assert arr.shape == (1, 10, 6)
    np.testing.assert_array_equal(arr[0], values)


def test_jpeg_is_decoded():
    img = Image.new("L", (8, 8), 200)
    arr = decode_image(_encode(img, "JPEG", quality=100), GRAY_8)
    assert arr.shape == (1, 8, 8)
    np.testing.assert_allclose(arr, 200 / 255, atol=2 / 255)


@pytest.mark.parametrize(
    ("rgb", "gray"),
    [((255, 0, 0), 76), ((0, 255, 0), 150), ((0, 0, 255), 29), ((255, 255, 255), 255)],
)
def test_rgb_is_converted_to_luma_grayscale(rgb, gray):
    img = Image.new("RGB", (8, 8), rgb)
    arr = decode_image(_encode(img, "PNG"), ImagePreprocessing(width=8, height=8, scale=1.0))
    assert arr.shape == (1, 8, 8)
    np.testing.assert_array_equal(arr, gray)


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "1"])
def test_other_png_modes_become_grayscale(mode):
    img = Image.new("RGB", (8, 8), (255, 255, 255)).convert(mode)
    arr = decode_image(_encode(img, "PNG"), ImagePreprocessing(width=8, height=8, scale=1.0))
    assert arr.shape == (1, 8, 8)
    np.testing.assert_array_equal(arr, 255)


def test_rgb_preprocessing_keeps_three_channels_in_rgb_order():
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    arr = decode_image(_encode(img, "PNG"), RGB_8.model_copy(update={"scale": 1.0}))
    assert arr.shape == (3, 8, 8)
    assert [arr[c, 0, 0] for c in range(3)] == [10, 20, 30]


def test_grayscale_image_with_rgb_preprocessing_repeats_the_channel():
    img, values = _gradient(8, 8)
    arr = decode_image(_encode(img, "PNG"), RGB_8.model_copy(update={"scale": 1.0}))
    assert arr.shape == (3, 8, 8)
    for channel in arr:
        np.testing.assert_array_equal(channel, values)


@pytest.mark.parametrize(
    ("size", "target"), [((16, 16), (8, 4)), ((3, 5), (28, 28)), ((1, 1), (2, 3))]
)
def test_images_are_resized_to_the_preprocessing_size(size, target):
    img = Image.new("L", size, 100)
    prep = ImagePreprocessing(width=target[0], height=target[1], scale=1.0)
    arr = decode_image(_encode(img, "PNG"), prep)
    assert arr.shape == (1, target[1], target[0])
    np.testing.assert_allclose(arr, 100, atol=0.5)


@pytest.mark.parametrize(
    ("scale", "mean", "std", "expected"),
    [
        (1.0, 0.0, 1.0, 128.0),
        (1 / 255, 0.0, 1.0, 128 / 255),
        (1.0, 100.0, 4.0, 7.0),
        (1 / 255, 0.5, 0.5, (128 / 255 - 0.5) / 0.5),
        (2.0, 0.0, 2.0, 128.0),
        (1 / 255, 0.1307, 0.3081, (128 / 255 - 0.1307) / 0.3081),
    ],
)
def test_scale_then_mean_and_std(scale, mean, std, expected):
    prep = ImagePreprocessing(width=4, height=4, scale=scale, mean=mean, std=std)
    arr = decode_image(_encode(Image.new("L", (4, 4), 128), "PNG"), prep)
    assert arr.dtype == np.float32
    np.testing.assert_allclose(arr, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "instances[2].b64: empty"),
        (b"garbage, not an image", "instances[2].b64: not a decodable PNG or JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "instances[2].b64: not a decodable PNG or JPEG"),
        (
            _encode(Image.new("L", (8, 8)), "GIF"),
            "instances[2].b64: not a decodable PNG or JPEG image",
        ),
        (
            _encode(Image.new("L", (8, 8)), "BMP"),
            "instances[2].b64: not a decodable PNG or JPEG image",
        ),
        (_encode(Image.new("L", (8, 8)), "TIFF"), "instances[2].b64: not a decodable PNG or JPEG"),
        (_encode(Image.new("L", (64, 64), 5), "PNG")[:-30], "instances[2].b64: not a decodable"),
    ],
    ids=[
        "empty",
        "garbage",
        "png-signature-only",
        "gif",
        "bmp",
        "tiff",
        "truncated-png",
    ],
)
def test_decode_image_refuses(data, message):
    with pytest.raises(InvalidInput) as info:
        decode_image(data, GRAY_8, "instances[2].b64")
    assert message in str(info.value)


def test_the_default_field_is_body():
    with pytest.raises(InvalidInput, match=r"^body: empty"):
        decode_image(b"", GRAY_8)


@pytest.mark.parametrize(
    ("width", "height"),
    [(4097, 4096), (4096, 4097), (20000, 20000), (2**31 - 1, 1), (1, 2**31 - 1), (65535, 65535)],
)
def test_an_image_over_max_image_pixels_is_refused_from_its_header(width, height):
    with pytest.raises(PayloadTooLarge, match=r"^body: image of .* \(max_image_pixels\)$"):
        decode_image(_png_header_only(width, height), GRAY_8)


def test_an_image_at_max_image_pixels_is_charged_to_the_budget():
    budget = DecodeLimits(max_image_pixels=64, max_request_pixels=100).pixel_budget()
    decode_image(_encode(Image.new("L", (8, 8)), "PNG"), GRAY_8, "a", budget)
    assert budget.used == 64
    with pytest.raises(PayloadTooLarge, match=r"^b: .*\(max_request_pixels\)"):
        decode_image(_encode(Image.new("L", (8, 8)), "PNG"), GRAY_8, "b", budget)
    assert budget.used == 64


def test_the_limits_are_checked_before_decoding():
    """A header claiming 4097 x 4097 pixels with no data is refused for its size, not its data."""
    limits = DecodeLimits(max_image_pixels=16, max_request_pixels=16)
    jpeg = _encode(Image.new("RGB", (5, 4)), "JPEG")
    with pytest.raises(PayloadTooLarge, match="5x4 pixels"):
        decode_image(jpeg, GRAY_8, budget=limits.pixel_budget())


@pytest.mark.parametrize("grayscale", [True, False])
def test_a_channels_last_layout_is_the_same_pixels_transposed(grayscale):
    img = Image.new("RGB", (6, 4), (10, 20, 30))
    img.putpixel((5, 3), (200, 100, 50))
    png = _encode(img, "PNG")
    first = ImagePreprocessing(width=6, height=4, grayscale=grayscale)
    last = first.model_copy(update={"layout": "hwc"})
    chw, hwc = decode_image(png, first), decode_image(png, last)
    assert hwc.shape == (4, 6, 1 if grayscale else 3)
    np.testing.assert_array_equal(hwc, chw.transpose(1, 2, 0))
    assert hwc.flags["C_CONTIGUOUS"]
