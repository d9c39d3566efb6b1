"""PNG metadata bombs: text and ICC chunks counted and inflated (boundedly) from the chunk
headers, before Pillow sees the file (:func:`png_metadata_bytes`, called by
``digitflow.images.inspect_image``).

Importing this module also lowers Pillow's own text-chunk limits for the whole process, so the
gateway and the preprocess decode path (both import ``digitflow.images``) share them.
"""

from __future__ import annotations

import zlib

from PIL import PngImagePlugin

from digitflow.errors import MetadataTooLargeError

MAX_PNG_CHUNKS = 100_000  # bounds every walk over a PNG's chunks (here and in digitflow.images)
# PNG metadata. Pillow inflates every zTXt/iTXt/iCCP chunk while it opens a file, so a few KB
# of compressed text can cost it 60 MB of zlib output (its defaults: 1 MB a chunk, 64 MB in all).
# Real uploads carry a handful of text chunks (software, XMP) and one ICC profile, together
# well under 100 KB inflated; the walk below refuses anything beyond these bounds before
# Pillow sees the file, and Pillow's own limits are lowered to the same total.
MAX_PNG_TEXT_CHUNKS = 16
MAX_PNG_ANCILLARY_CHUNKS = 64  # besides text chunks and APNG frame chunks (fcTL, fdAT)
MAX_PNG_METADATA_BYTES = 512 * 1024  # text and ICC bytes per file, counted after inflating
_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_PNG_FRAMES = frozenset({b"fcTL", b"fdAT"})
PngImagePlugin.MAX_TEXT_CHUNK = MAX_PNG_METADATA_BYTES
PngImagePlugin.MAX_TEXT_MEMORY = MAX_PNG_METADATA_BYTES


def png_metadata_bytes(data: bytes) -> int:
    """The text and ICC bytes a PNG carries, inflated, found by walking its chunk headers.

    Raises MetadataTooLargeError when it has more than MAX_PNG_TEXT_CHUNKS text chunks, more
    than MAX_PNG_ANCILLARY_CHUNKS other ancillary chunks, more than one ICC profile, or more
    than MAX_PNG_METADATA_BYTES of them; counting comes first, so a file of many chunks is
    refused without inflating any. Truncation and corruption are left to the structure check.
    """
    compressed: list[tuple[bytes, bytes]] = []
    plain = texts = ancillary = profiles = 0
    i, n = 8, len(data)
    for _ in range(MAX_PNG_CHUNKS):
        if i + 8 > n:
            break
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        start, i = i + 8, i + 12 + length
        if kind == b"IEND" or i > n:
            break
        if kind in _PNG_TEXT:
            texts += 1
            body = data[start : start + length]  # sliced only for metadata, never pixel data
            if kind == b"zTXt" or (kind == b"iTXt" and body[body.find(b"\0") + 1 : body.find(b"\0") + 2] == b"\1"):
                compressed.append((kind, body))
            else:
                plain += length
        elif kind == b"iCCP":
            profiles += 1
            compressed.append((kind, data[start : start + length]))
        elif kind[:1].islower() and kind not in _PNG_FRAMES:
            ancillary += 1
    if texts > MAX_PNG_TEXT_CHUNKS or ancillary > MAX_PNG_ANCILLARY_CHUNKS or profiles > 1:
        raise MetadataTooLargeError(
            f"The PNG file carries too many metadata chunks (at most {MAX_PNG_TEXT_CHUNKS} text "
            f"chunks, {MAX_PNG_ANCILLARY_CHUNKS} other ancillary chunks and one ICC profile).",
            format="PNG",
        )
    total = plain
    for kind, body in compressed:
        total += _inflated_size(kind, body, MAX_PNG_METADATA_BYTES - total)
        if total > MAX_PNG_METADATA_BYTES:
            raise MetadataTooLargeError(
                f"The PNG file carries more than {MAX_PNG_METADATA_BYTES} bytes of metadata.", format="PNG"
            )
    return total


def _inflated_size(kind: bytes, body: bytes, room: int) -> int:
    """Bytes the chunk's compressed payload inflates to, or ``room + 1`` once it passes ``room``
    (zlib stops there: a bomb costs at most ``room`` bytes of work)."""
    start = body.find(b"\0") + 2  # keyword or profile name, NUL, compression method
    if kind == b"iTXt":  # ... compression flag too, then language and translated keyword
        start = body.find(b"\0", body.find(b"\0", start + 1) + 1) + 1
    try:
        inflater = zlib.decompressobj()
        size = len(inflater.decompress(body[start:], max(room, 0) + 1))
    except zlib.error:
        return 0  # Pillow drops or refuses an undecodable chunk itself; nothing was inflated
    return size
