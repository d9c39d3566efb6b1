"""inspect_image: the gateway's cheap check of upload bytes, before anything is queued."""

from __future__ import annotations

import zlib
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from digitflow.errors import (
    DigitflowError,
    EmptyImageError,
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedFormatError,
)
from digitflow.images import ALLOWED_FORMATS, ImageInfo, inspect_image
from tests.imagegen import png_bomb, png_from_parts

MAX_PIXELS = 40_000_000


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Incompressible pixels, so that a cut falls inside the image data."""
    channels = {"RGB": 3, "L": 1}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr)


def expect(exc_type: type[DigitflowError], data: bytes, max_pixels: int = MAX_PIXELS) -> DigitflowError:
    """Assert that exactly this error type (not a subclass) is raised, with a sentence for a message."""
    with pytest.raises(exc_type) as info:
        inspect_image(data, max_pixels)
    assert type(info.value) is exc_type
    assert info.value.message[0].isupper() and info.value.message.endswith(".")
    return info.value


@pytest.mark.parametrize(
    ("fmt", "mode", "params"),
    [
        ("PNG", "RGB", {}),
        ("PNG", "I;16", {}),
        ("JPEG", "RGB", {"quality": 80}),
        ("JPEG", "L", {"progressive": True}),
        ("JPEG", "CMYK", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("WEBP", "RGBA", {"quality": 70}),
        ("BMP", "RGB", {}),
        ("BMP", "1", {}),
        ("GIF", "P", {}),
    ],
)
def test_allowed_formats_are_described(fmt: str, mode: str, params: dict[str, object]) -> None:
    img = Image.new(mode, (37, 23))
    info = inspect_image(encode(img, fmt, **params), MAX_PIXELS)
    assert info.format == fmt and info.format in ALLOWED_FORMATS
    assert (info.width, info.height) == (37, 23)
    assert info.mode == img.mode or (fmt, info.mode) in {("GIF", "L"), ("WEBP", "RGB")}


def test_mpo_from_phone_cameras_reads_as_jpeg() -> None:
    first, second = Image.new("RGB", (40, 30), "white"), Image.new("RGB", (40, 30), "black")
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(BytesIO(data)).format == "MPO"
    assert inspect_image(data, MAX_PIXELS) == ImageInfo(format="JPEG", width=40, height=30, mode="RGB")


def test_jpeg_with_bytes_after_the_end_marker_is_fine() -> None:
    data = encode(noise(64, 64), "JPEG") + b"\x00" * 40 + b"SEFT trailer data from a phone" * 100
    assert inspect_image(data, MAX_PIXELS).format == "JPEG"


def test_empty_bytes() -> None:
    err = expect(EmptyImageError, b"")
    assert err.code == "empty_image" and err.status == 400


def _truncated_jpeg_with_thumbnail() -> bytes:
    # An EXIF block holding a whole small JPEG (its own FF D9) before the main scan: the EOI
    # inside the thumbnail must not make a truncated main image look complete.
    thumb = encode(Image.new("RGB", (8, 8)), "JPEG")
    data = encode(noise(96, 96), "JPEG", exif=b"Exif\x00\x00" + thumb)
    return data[: len(data) * 2 // 3]


def _gif_missing_image_data() -> bytes:
    data = encode(noise(64, 64, "L"), "GIF")
    return data[: len(data) // 2]


INVALID = [
    ("random bytes", np.random.default_rng(1).bytes(2000)),
    ("text", b"hello, I am not a picture\n" * 20),
    ("html", b"<!doctype html><html><body><img src=x></body></html>"),
    ("json", b'{"image": "data:image/png;base64,iVBORw0KGgo="}'),
    ("png signature only", b"\x89PNG\r\n\x1a\n"),
    ("jpeg start only", b"\xff\xd8\xff"),
    ("gif header only", b"GIF89a"),
    ("riff that is not webp", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32)),
    ("truncated jpeg", encode(noise(96, 96), "JPEG")[:2500]),
    ("truncated progressive jpeg", encode(noise(96, 96), "JPEG", progressive=True)[:3000]),
    ("truncated jpeg with exif thumbnail", _truncated_jpeg_with_thumbnail()),
    ("truncated png", encode(noise(64, 64), "PNG")[:-30]),
    ("png cut inside its data", encode(noise(64, 64), "PNG")[:5000]),
    ("truncated gif", _gif_missing_image_data()),
    ("truncated webp", encode(noise(64, 64), "WEBP", lossless=True)[:-100]),
    ("truncated bmp", encode(noise(64, 64), "BMP")[:-500]),
    ("png with a corrupt header", b"\x89PNG\r\n\x1a\n" + bytes(30)),
]


@pytest.mark.parametrize("data", [case[1] for case in INVALID], ids=[case[0] for case in INVALID])
def test_not_an_image_or_truncated(data: bytes) -> None:
    err = expect(InvalidImageError, data)
    assert err.code == "invalid_image" and err.status == 400


UNSUPPORTED = [
    ("TIFF", encode(Image.new("RGB", (16, 16)), "TIFF")),
    ("ICO", encode(Image.new("RGB", (16, 16)), "ICO")),
    ("PDF", encode(Image.new("RGB", (16, 16)), "PDF")),
    ("PNM", encode(Image.new("RGB", (16, 16)), "PPM")),
    ("PSD", b"8BPS\x00\x01" + bytes(40)),
    ("HEIC", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(40)),
    ("AVIF", b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1" + bytes(40)),
    ("SVG", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
]


@pytest.mark.parametrize(("name", "data"), UNSUPPORTED, ids=[case[0] for case in UNSUPPORTED])
def test_real_images_in_other_formats_are_unsupported(name: str, data: bytes) -> None:
    err = expect(UnsupportedFormatError, data)
    assert err.code == "unsupported_format" and err.status == 415
    assert err.details["format"] == name


def test_too_many_pixels_for_the_limit() -> None:
    err = expect(ImageTooLargeError, encode(Image.new("L", (200, 100)), "PNG"), max_pixels=19_999)
    assert err.code == "image_too_large" and err.status == 413
    assert err.details == {"format": "PNG", "width": 200, "height": 100}
    assert inspect_image(encode(Image.new("L", (200, 100)), "PNG"), max_pixels=20_000).width == 200


def test_decompression_bomb_is_refused_even_under_a_generous_limit() -> None:
    bomb = png_bomb(5000)  # a real, decodable 25-megapixel PNG of about 3 KB
    assert len(bomb) < 10_000
    err = expect(ImageTooLargeError, bomb, max_pixels=10**9)
    assert (err.details["width"], err.details["height"]) == (5000, 5000)


@pytest.mark.parametrize(
    "data",
    [
        png_from_parts(30_000, 30_000, bit_depth=1, colour_type=0, idat=zlib.compress(b"")),
        png_from_parts(20_000, 19_000, bit_depth=8, colour_type=0, idat=zlib.compress(b"")),
        png_from_parts(25_000, 10, bit_depth=8, colour_type=0, idat=zlib.compress(bytes(10 * 25_001))),
        b"GIF89a"
        + (65_535).to_bytes(2, "little") * 2
        + bytes([0, 0, 0])
        + b"\x2c"
        + bytes(4)
        + (65_535).to_bytes(2, "little") * 2
        + b"\x00\x02\x02\x44\x01\x00\x3b",
    ],
    ids=["30000^2 png header", "pillow's own bomb limit", "one side too long", "65535^2 gif header"],
)
def test_huge_dimensions_in_a_tiny_header(data: bytes) -> None:
    expect(ImageTooLargeError, data, max_pixels=10**10)


def test_errors_serialize_for_the_gateway() -> None:
    with pytest.raises(UnsupportedFormatError) as info:
        inspect_image(encode(Image.new("RGB", (8, 8)), "TIFF"), MAX_PIXELS)
    body = info.value.to_dict(stage="gateway")
    assert body["code"] == "unsupported_format" and body["details"] == {"format": "TIFF"}
