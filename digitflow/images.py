"""Cheap validation of uploaded image bytes, before anything is queued.

:func:`inspect_image` reads only headers and the container structure (never pixel data), so the
gateway can refuse bad uploads in microseconds: empty bodies, non-images, formats digitflow does
not open, truncated files and decompression bombs. The preprocess stage calls it again before it
decodes, so both ends apply the same rules.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO

from PIL import Image

from digitflow.errors import (
    EmptyImageError,
    ImageTooLargeError,
    InvalidImageError,
    PayloadTooLargeError,
    UnsupportedFormatError,
)
from digitflow.png_metadata import MAX_PNG_CHUNKS, MAX_PNG_METADATA_BYTES, png_metadata_bytes

# Pillow format names. Phone cameras write MPO (a JPEG with extra frames): it is read as JPEG.
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF", "MPO"})
MAX_SIDE = 20_000
# A real photo or scan stores far fewer pixels per byte; bombs store millions per kilobyte.
BOMB_PIXELS_PER_BYTE = 2_000
BOMB_MIN_PIXELS = 4_000_000
# Bounds on the structure walks below, so hostile files cannot make them slow.
_MAX_GIF_BLOCKS = 300_000

_ALLOWED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
# Real images in formats digitflow refuses: these get a 415 rather than "not an image".
_UNSUPPORTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
    (b"gimp xcf", "XCF"),
    (b"#?RADIANCE", "HDR"),
    (b"v/1\x01", "OpenEXR"),
    (b"SIMPLE  =", "FITS"),
    (b"BLP1", "BLP"),
    (b"BLP2", "BLP"),
    (b"\x01\xda", "SGI"),
    (b"\xd7\xcd\xc6\x9a", "WMF"),
)
_ISO_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}
_PNM = re.compile(rb"P[1-7]\s")
_SVG = re.compile(rb"^(\xef\xbb\xbf)?\s*(<\?xml|<!--|<!doctype svg|<svg)", re.IGNORECASE)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: the format (MPO reported as JPEG), size and Pillow mode."""

    format: str
    width: int
    height: int
    mode: str
    # PNG text and ICC bytes (inflated): what a decoder unpacks besides the pixels.
    metadata_bytes: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class UploadBudget:
    """What one request may make the service do, summed over its images: how many, their bytes,
    their pixels and their metadata. Each image's own limits (``inspect_image``) bound one
    image; this bounds a request of many (``max_parts`` images of ``max_image_pixels`` each
    would otherwise be hundreds of megapixels to decode from one request)."""

    max_images: int
    max_bytes: int
    max_pixels: int
    max_metadata_bytes: int = 2 * MAX_PNG_METADATA_BYTES
    images: int = 0
    bytes: int = 0
    pixels: int = 0
    metadata_bytes: int = 0

    def charge(self, size: int, info: ImageInfo) -> None:
        """Count one inspected image of ``size`` bytes. Raises PayloadTooLargeError (413), naming
        the limit, when the request goes over any of them."""
        self.images += 1
        self.bytes += size
        self.pixels += info.pixels
        self.metadata_bytes += info.metadata_bytes
        for limit, used, most in (
            ("images", self.images, self.max_images),
            ("bytes", self.bytes, self.max_bytes),
            ("pixels", self.pixels, self.max_pixels),
            ("metadata_bytes", self.metadata_bytes, self.max_metadata_bytes),
        ):
            if used > most:
                raise PayloadTooLargeError(
                    f"the request is too large: at most {most} {limit.replace('_', ' ')} per request",
                    limit=limit,
                    max=most,
                )


_GUARD_LOCK = threading.Lock()


@contextmanager
def pillow_guard() -> Iterator[None]:
    """Silence Pillow's warnings on malformed files and turn its bomb warning into an exception.

    Warnings about broken EXIF or odd palettes say nothing a caller can act on (and tests run
    with warnings as errors); a DecompressionBombWarning must stop the work instead.
    ``catch_warnings`` swaps process-global state, so concurrent entries from the gateway's
    threads could restore each other's filters: a lock serialises them (header parses take
    microseconds; worker processes run one decode at a time anyway).
    """
    with _GUARD_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def sniff_format(data: bytes) -> str:
    """Name the allowed format the magic bytes announce.

    Raises UnsupportedFormatError for recognised images digitflow does not open, and
    InvalidImageError for anything else.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _ALLOWED_MAGIC:
        if data.startswith(magic):
            return name
    unsupported = next((name for magic, name in _UNSUPPORTED_MAGIC if data.startswith(magic)), None)
    if unsupported is None and data[4:8] == b"ftyp":
        unsupported = _ISO_BRANDS.get(data[8:12], "ISO media")
    if unsupported is None and _PNM.match(data[:3]):
        unsupported = "PNM"
    if unsupported is None and _SVG.match(data[:256]) and b"<svg" in data[:4096].lower():
        unsupported = "SVG"
    if unsupported is not None:
        raise UnsupportedFormatError(
            f"{unsupported} images are not supported; send PNG, JPEG, WebP, BMP or GIF.", format=unsupported
        )
    raise InvalidImageError("The upload is not a recognised image.")


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Validate an upload from its header and container structure alone; no pixel is decoded.

    Raises EmptyImageError for no bytes, UnsupportedFormatError for real images in other formats,
    InvalidImageError for non-images, corrupt headers and truncated files, and
    ImageTooLargeError when the image has more than ``max_pixels`` pixels, a side over
    MAX_SIDE, or far more pixels than its file size can honestly hold (a decompression bomb).
    """
    if not data:
        raise EmptyImageError("The image is empty.")
    fmt = sniff_format(data)
    metadata = png_metadata_bytes(data) if fmt == "PNG" else 0  # before Pillow inflates anything
    try:
        with pillow_guard(), Image.open(BytesIO(data), formats=[fmt]) as img:
            width, height = img.size
            mode = img.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError("The image declares an absurd number of pixels.", format=fmt) from exc
    except Exception as exc:  # Pillow's parsers raise many types on hostile headers; all mean "corrupt".
        raise InvalidImageError(f"The {fmt} header is corrupt.", format=fmt) from exc
    details = {"format": fmt, "width": width, "height": height}
    pixels = width * height
    if width <= 0 or height <= 0:
        raise InvalidImageError("The image has no pixels.", **details)
    if max(width, height) > MAX_SIDE:
        raise ImageTooLargeError(f"The image is too large: sides are limited to {MAX_SIDE} pixels.", **details)
    if pixels > max_pixels:
        raise ImageTooLargeError(f"The image is too large: at most {max_pixels} pixels are accepted.", **details)
    if pixels > BOMB_MIN_PIXELS and pixels > BOMB_PIXELS_PER_BYTE * len(data):
        raise ImageTooLargeError("The image holds far more pixels than its file size allows.", **details)
    problem = _STRUCTURE_CHECKS[fmt](data)
    if problem is not None:
        raise InvalidImageError(f"The {fmt} file is {problem}.", **details)
    return ImageInfo(format=fmt, width=width, height=height, mode=mode, metadata_bytes=metadata)


def _jpeg_problem(data: bytes) -> str | None:
    # Walk the marker segments to the first scan (skipping an EXIF thumbnail, which has its own
    # EOI). Entropy-coded data cannot contain FF D9, so an EOI after the scan start means the
    # image data is complete; whatever trails it (phone makers' trailers, MPO frames) is fine.
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return "corrupt"
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xDA:
            return None if data.find(b"\xff\xd9", i) != -1 else "truncated"
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
        elif marker == 0xD9:
            return "corrupt"
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return "truncated"


def _png_problem(data: bytes) -> str | None:
    i, n = 8, len(data)
    for _ in range(MAX_PNG_CHUNKS):
        if i + 8 > n:
            return "truncated"
        length = int.from_bytes(data[i : i + 4], "big")
        chunk_type = data[i + 4 : i + 8]
        i += 12 + length
        if i > n:
            return "truncated"
        if chunk_type == b"IEND":
            return None
    return "corrupt"


def _gif_problem(data: bytes) -> str | None:
    # Only the first frame is ever decoded, so a GIF is complete once that frame's data is.
    n = len(data)
    if n < 13:
        return "truncated"
    i = 13 + _colour_table_size(data[10])
    budget = _MAX_GIF_BLOCKS
    while i < n:
        block = data[i]
        if block == 0x3B:
            return "corrupt"  # a trailer before any image
        if block == 0x21:
            i, budget = _skip_sub_blocks(data, i + 2, budget)
        elif block == 0x2C:
            if i + 10 > n:
                return "truncated"
            i, budget = _skip_sub_blocks(data, i + 11 + _colour_table_size(data[i + 9]), budget)
            if i >= 0:
                return None
        else:
            return "corrupt"
        if i < 0:
            return "truncated" if budget > 0 else "corrupt"
    return "truncated"


def _colour_table_size(packed: int) -> int:
    return 3 << ((packed & 7) + 1) if packed & 0x80 else 0


def _skip_sub_blocks(data: bytes, i: int, budget: int) -> tuple[int, int]:
    """Return the index after the chain's terminator, or -1 when the data or budget runs out."""
    n = len(data)
    while i < n and budget > 0:
        size = data[i]
        budget -= 1
        if size == 0:
            return i + 1, budget
        i += size + 1
    return -1, budget


def _webp_problem(data: bytes) -> str | None:
    riff_size = int.from_bytes(data[4:8], "little")
    return "truncated" if riff_size > len(data) - 8 else None


def _bmp_problem(data: bytes) -> str | None:
    n = len(data)
    if n < 26:
        return "truncated"
    offset = int.from_bytes(data[10:14], "little")
    header = int.from_bytes(data[14:18], "little")
    if header == 12:
        width, height = int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
        bits, compression = int.from_bytes(data[24:26], "little"), 0
    elif header >= 40 and n >= 34:
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = int.from_bytes(data[22:26], "little", signed=True)
        bits, compression = int.from_bytes(data[28:30], "little"), int.from_bytes(data[30:34], "little")
    else:
        return None  # exotic headers: left to Pillow
    if compression not in (0, 3, 6) or bits not in (1, 4, 8, 16, 24, 32):
        return None  # run-length data has no fixed size to check
    stride = (abs(width) * bits + 31) // 32 * 4
    return "truncated" if offset + stride * abs(height) > n else None


_STRUCTURE_CHECKS = {
    "JPEG": _jpeg_problem,
    "PNG": _png_problem,
    "GIF": _gif_problem,
    "WEBP": _webp_problem,
    "BMP": _bmp_problem,
}
