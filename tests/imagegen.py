"""Synthesize realistic uploads from a 28x28 digit (uint8, ink bright, as MNIST stores them).

Tests start from a clean digit, render it the way users send it (a phone photo of paper, a
browser canvas export, a 16-bit scan, ...) and check that preprocessing recovers the digit.
Until real MNIST samples are available, :func:`stroke_digit` draws digits with ImageDraw.
"""

from __future__ import annotations

import zlib
from io import BytesIO

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

# Polylines on a 0..1 square (x, y), drawn like a pen would.
_STROKES: dict[str, list[list[tuple[float, float]]]] = {
    "1": [[(0.35, 0.2), (0.55, 0.0), (0.55, 1.0)]],
    "4": [[(0.65, 1.0), (0.65, 0.0), (0.0, 0.7), (0.95, 0.7)]],
    "5": [[(0.9, 0.0), (0.3, 0.0)], [(0.2, 0.22), (0.15, 0.48), (0.6, 0.42), (0.85, 0.66), (0.7, 0.95), (0.1, 0.9)]],
    "7": [[(0.05, 0.05), (0.95, 0.05), (0.4, 1.0)]],
}


def stroke_digit(char: str) -> np.ndarray:
    """Return a 28x28 uint8 MNIST-like digit ("0", "1", "4", "5" or "7"; the 5's bar is detached)."""
    scale, box, pad = 8, 20, 4
    img = Image.new("L", (28 * scale, 28 * scale), 0)
    draw = ImageDraw.Draw(img)
    width = int(2.6 * scale)
    if char == "0":
        x0, x1 = (pad + 4) * scale, (pad + box - 4) * scale
        draw.ellipse([x0, pad * scale, x1, (pad + box) * scale], outline=255, width=width)
    else:
        for line in _STROKES[char]:
            points = [((pad + 2 + x * (box - 4)) * scale, (pad + y * box) * scale) for x, y in line]
            draw.line(points, fill=255, width=width, joint="curve")
    return np.asarray(img.resize((28, 28), Image.Resampling.BOX))


def _ink(digit28: np.ndarray, size: int) -> np.ndarray:
    """Upscale smoothly to size x size: ink coverage in 0..1."""
    img = Image.fromarray(np.asarray(digit28, dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32) / 255.0, 0.0, 1.0)


def _on_paper(ink: np.ndarray, paper: tuple[int, int, int], pen: tuple[int, int, int]) -> np.ndarray:
    cover = ink[..., None]
    return np.array(paper, np.float32) * (1.0 - cover) + np.array(pen, np.float32) * cover


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _photo(digit28: np.ndarray, width: int, height: int, seed: int, shadow: float) -> Image.Image:
    rng = np.random.default_rng(seed)
    ink = np.zeros((height, width), np.float32)
    side = int(min(width, height) * 0.75)
    y0, x0 = (height - side) // 2, (width - side) // 2
    ink[y0 : y0 + side, x0 : x0 + side] = _ink(digit28, side)
    rgb = _on_paper(ink, (236, 232, 220), (40, 42, 75))
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    light = 1.0 - 0.25 * xx  # light falls off across the page
    # A soft-edged shadow (a hand, a phone) over one corner, computed small: it is smooth anyway.
    corner = Image.fromarray((((yy > 0.6 * height / max(width, height)) & (xx < 0.45)) * 255).astype(np.uint8))
    soft = corner.resize((64, 64), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(64 / 12))
    soft_full = np.asarray(soft.resize((width, height), Image.Resampling.BILINEAR), np.float32) / 255.0
    light = light * (1.0 - shadow * soft_full)
    rgb = rgb * light[..., None] + rng.normal(0.0, 4.0, rgb.shape)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(max(width, height) / 320)
    )
    angle = float(rng.uniform(-6, 6))
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(200, 197, 187))


def phone_photo(digit28: np.ndarray, size: int = 320, seed: int = 0, shadow: float = 0.3) -> bytes:
    """A JPEG (quality 80) of dark ink on off-white paper: lighting gradient, shadow, blur,
    sensor noise and a slight rotation."""
    return _encode(_photo(digit28, size, size, seed, shadow), "JPEG", quality=80)


def big_photo(digit28: np.ndarray, width: int = 1200, height: int = 1600, seed: int = 0) -> bytes:
    """The same kind of photo at a phone camera's size (portrait, JPEG quality 85); rendered at a
    quarter of the size and upscaled, as a camera's optics are smooth anyway."""
    small = _photo(digit28, width // 4, height // 4, seed, 0.3)
    return _encode(small.resize((width, height), Image.Resampling.BICUBIC), "JPEG", quality=85)


def canvas_export(digit28: np.ndarray, colour: tuple[int, int, int] = (0, 0, 0), size: int = 280) -> bytes:
    """An RGBA PNG as a browser canvas exports it: transparent (0, 0, 0, 0) background, strokes
    of one colour whose alpha carries the anti-aliasing."""
    alpha = _ink(digit28, size) * 255.0
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = np.where(alpha[..., None] > 0, np.array(colour, np.uint8), 0)
    rgba[..., 3] = np.rint(alpha).astype(np.uint8)
    return _encode(Image.fromarray(rgba), "PNG")


def scan_16bit(digit28: np.ndarray, size: int = 200, white: float = 62000.0) -> bytes:
    """A 16-bit grayscale PNG scan: dark ink on white paper (``white`` of 65535: lower is a dim,
    underexposed scan)."""
    level = white * (1.0 - 0.87 * _ink(digit28, size))
    return _encode(Image.fromarray(level.astype(np.uint16)), "PNG")


def cmyk_jpeg(digit28: np.ndarray, size: int = 240) -> bytes:
    """A CMYK JPEG (as print workflows produce): black ink (K) on slightly tinted paper."""
    ink = _ink(digit28, size)
    cmyk = np.stack([np.full_like(ink, 10), np.full_like(ink, 8), np.full_like(ink, 20), ink * 230], axis=-1)
    return _encode(Image.frombytes("CMYK", (size, size), np.rint(cmyk).astype(np.uint8).tobytes()), "JPEG", quality=90)


def with_exif_rotation(digit28: np.ndarray, size: int = 240, seed: int = 0) -> bytes:
    """A photo JPEG stored rotated a quarter turn, with EXIF Orientation 6 to make it upright."""
    stored = _photo(digit28, size, size, seed, 0.0).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # display after rotating 90 degrees clockwise
    return _encode(stored, "JPEG", quality=85, exif=exif.tobytes())


def thin_pen(digit28: np.ndarray, size: int = 400) -> bytes:
    """A PNG of a fine pen: strokes about 3 px wide on white at ``size`` px."""
    shape = ndimage.gaussian_filter(_ink(digit28, size), size / 80) > 0.5
    dist = ndimage.distance_transform_edt(shape)
    # The ridge of the distance map is the stroke's centre line (the tolerance keeps it unbroken).
    ridge = shape & (dist >= ndimage.maximum_filter(dist, size=3) - 0.9) & (dist > 2)
    line = ndimage.binary_dilation(ridge, iterations=1)
    return _encode(Image.fromarray(np.where(line, 25, 250).astype(np.uint8)), "PNG")


def white_on_black(digit28: np.ndarray) -> bytes:
    """The digit itself as an 8-bit PNG: what an MNIST-savvy client sends."""
    return _encode(Image.fromarray(np.asarray(digit28, dtype=np.uint8)), "PNG")


def paletted_gif(digit28: np.ndarray, size: int = 140) -> bytes:
    """A two-colour GIF whose background colour is transparent."""
    ink = _ink(digit28, size) > 0.5
    img = Image.frombytes("P", (size, size), ink.astype(np.uint8).tobytes())
    img.putpalette([255, 255, 255, 0, 0, 128] + [0] * 762)
    return _encode(img, "GIF", transparency=0)


def png_bomb(side: int) -> bytes:
    """A valid 1-bit PNG of side x side zeros, built by streaming rows through zlib."""
    row = bytes(1 + (side + 7) // 8)  # filter byte 0 + packed pixels
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return png_from_parts(side, side, bit_depth=1, colour_type=0, idat=body)


def png_from_parts(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG with the given header fields and IDAT payload (valid CRCs, IEND included)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload).to_bytes(4, "big")
        return len(payload).to_bytes(4, "big") + kind + payload + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([bit_depth, colour_type, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def cluttered_page(digit28: np.ndarray, size: int = 320, seed: int = 0) -> bytes:
    """A JPEG of a digit on ruled paper (faint lines above and below it), with pen specks and
    the dark table showing along the left edge."""
    rng = np.random.default_rng(seed)
    ink = np.zeros((size, size), np.float32)
    side = int(size * 0.6)
    at = (size - side) // 2
    ink[at : at + side, at : at + side] = _ink(digit28, side)
    for y in (int(size * 0.1), int(size * 0.9)):
        ink[y : y + 2, :] = np.maximum(ink[y : y + 2, :], 0.35)  # ruled lines, fainter than ink
    for y, x in rng.integers(0, size - 2, (12, 2)):
        ink[y : y + 2, x : x + 2] = 1.0  # specks
    rgb = _on_paper(ink, (238, 236, 228), (30, 30, 60)) + rng.normal(0.0, 3.0, (size, size, 3))
    rgb[:, : size // 25] = (60, 50, 45)  # the table past the page's edge
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    return _encode(img, "JPEG", quality=85)


def photo_of_blank_page(size: int = 320, seed: int = 0) -> bytes:
    """A phone photo of an empty page: gradient, shadow and noise, no ink."""
    return phone_photo(np.zeros((28, 28), np.uint8), size=size, seed=seed)


def uniform(gray: int = 128, size: int = 64) -> bytes:
    """A PNG of one flat grey."""
    return _encode(Image.new("L", (size, size), gray), "PNG")


def light_noise(size: int = 128, sigma: float = 8.0, seed: int = 0) -> bytes:
    """A PNG of light paper-like noise around grey 200."""
    rng = np.random.default_rng(seed)
    noise = np.clip(rng.normal(200.0, sigma, (size, size)), 0, 255).astype(np.uint8)
    return _encode(Image.fromarray(noise), "PNG")


def specks(size: int = 200, count: int = 30, seed: int = 0) -> bytes:
    """A PNG of a white page with a few single-pixel dark specks (dust, sensor defects)."""
    rng = np.random.default_rng(seed)
    page = np.full((size, size), 240, np.uint8)
    page[rng.integers(0, size, count), rng.integers(0, size, count)] = 20
    return _encode(Image.fromarray(page), "PNG")
