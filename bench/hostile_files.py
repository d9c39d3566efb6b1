"""Hostile uploads, crafted, and how fast the gateway's header walk refuses each one.

    python -m bench.hostile_files [--repeat 20]

Prints, per file, its size, the error code ``inspect_image`` answers and the median time of
``--repeat`` runs (time.perf_counter). The tests (tests/unit/test_hostile_files.py) build the
same files with these functions and check the answers; the times are reported here only.
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib
from collections.abc import Callable

from digitflow.errors import DigitflowError
from digitflow.images import inspect_image


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a valid CRC."""
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def png_with_chunks(extra: bytes, width: int = 1, height: int = 1) -> bytes:
    """A valid 8-bit greyscale PNG with ``extra`` chunks between IHDR and IDAT."""
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    rows = b"".join(b"\x00" + bytes([0x80]) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def ztxt_bomb(chunks: int = 63, inflated: int = 1_000_000) -> bytes:
    """The issue's file: a 1x1 PNG with ``chunks`` zTXt chunks of ``inflated`` bytes each
    (about 1 KB compressed apiece: 63 of them are a 64 KB file that inflates to 63 MB)."""
    body = zlib.compress(b"A" * inflated, 9)
    return png_with_chunks(b"".join(chunk(b"zTXt", b"k%d\x00\x00" % i + body) for i in range(chunks)))


def itxt_bomb(inflated: int = 4_000_000) -> bytes:
    """One compressed iTXt chunk (within every count) that inflates to ``inflated`` bytes."""
    payload = b"XML:com.adobe.xmp\x00\x01\x00en\x00\x00" + zlib.compress(b" " * inflated, 9)
    return png_with_chunks(chunk(b"iTXt", payload))


def ancillary_flood(chunks: int = 5000) -> bytes:
    """Thousands of tiny private ancillary chunks (nothing to inflate, only to walk)."""
    return png_with_chunks(chunk(b"prIv", b"x") * chunks)


HOSTILE: dict[str, Callable[[], bytes]] = {
    "63 zTXt x 1 MB (the issue's file)": ztxt_bomb,
    "16 zTXt x 1 MB (within the count)": lambda: ztxt_bomb(16),
    "1 iTXt of 4 MB": itxt_bomb,
    "5000 private ancillary chunks": ancillary_flood,
}


def refusal_ms(data: bytes, repeat: int) -> tuple[str, float]:
    """The error code inspect_image answers (or "accepted") and the median time in ms."""
    times, answer = [], "accepted"
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            inspect_image(data, 12_000_000)
        except DigitflowError as exc:
            answer = exc.code
        times.append(time.perf_counter() - start)
    return answer, statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{'file':<36} {'bytes':>8}  {'answer':<20} {'median ms':>9}")
    for name, make in HOSTILE.items():
        data = make()
        answer, ms = refusal_ms(data, args.repeat)
        print(f"{name:<36} {len(data):>8}  {answer:<20} {ms:>9.3f}")


if __name__ == "__main__":
    main()
