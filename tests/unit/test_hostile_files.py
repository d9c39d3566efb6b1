"""PNG metadata bombs are refused from the header walk, before Pillow inflates anything, and
one request's images are bounded together (UploadBudget). Times: ``python -m bench.hostile_files``."""

from __future__ import annotations

import zlib
from io import BytesIO

import pytest
from PIL import Image, PngImagePlugin

from bench.hostile_files import ancillary_flood, chunk, itxt_bomb, png_with_chunks, ztxt_bomb
from digitflow.errors import MetadataTooLargeError, PayloadTooLargeError
from digitflow.images import ImageInfo, UploadBudget, inspect_image
from digitflow.png_metadata import MAX_PNG_ANCILLARY_CHUNKS, MAX_PNG_METADATA_BYTES, MAX_PNG_TEXT_CHUNKS

MAX_PIXELS = 12_000_000


@pytest.fixture
def pillow_never_inflates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if Pillow's PNG reader gets to any compressed metadata chunk."""

    def refuse(*_: object) -> bytes:
        raise AssertionError("Pillow inflated a metadata chunk: the header walk let the file through")

    for name in ("chunk_zTXt", "chunk_iTXt", "chunk_iCCP"):
        monkeypatch.setattr(PngImagePlugin.PngStream, name, refuse)


@pytest.mark.parametrize(
    "data",
    [ztxt_bomb(63), ztxt_bomb(MAX_PNG_TEXT_CHUNKS), itxt_bomb(), ancillary_flood()],
    ids=["63-ztxt-of-1MB", "16-ztxt-of-1MB", "itxt-of-4MB", "5000-ancillary"],
)
def test_metadata_bombs_are_refused_before_pillow_reads_them(data: bytes, pillow_never_inflates: None) -> None:
    with pytest.raises(MetadataTooLargeError) as info:
        inspect_image(data, MAX_PIXELS)
    assert info.value.code == "metadata_too_large" and info.value.status == 413
    assert info.value.details == {"format": "PNG"}


def test_text_chunks_anywhere_count_even_after_the_image_data() -> None:
    # Pillow reads trailing text chunks when it decodes (load_end), so they count too.
    body = zlib.compress(b"A" * 100_000, 9)
    tail = b"".join(chunk(b"zTXt", b"k%d\x00\x00" % i + body) for i in range(MAX_PNG_TEXT_CHUNKS + 1))
    data = png_with_chunks(b"")
    data = data[:-12] + tail + data[-12:]  # before IEND
    with pytest.raises(MetadataTooLargeError):
        inspect_image(data, MAX_PIXELS)


def test_bounds_are_inclusive_and_a_second_icc_profile_is_refused() -> None:
    text = b"".join(chunk(b"tEXt", b"k%d\x00value" % i) for i in range(MAX_PNG_TEXT_CHUNKS))
    other = chunk(b"prIv", b"x") * MAX_PNG_ANCILLARY_CHUNKS
    assert inspect_image(png_with_chunks(text + other), MAX_PIXELS).metadata_bytes == len(text) - 12 * 16
    profile = chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"p" * 3000))
    assert inspect_image(png_with_chunks(profile), MAX_PIXELS).metadata_bytes == 3000
    with pytest.raises(MetadataTooLargeError):
        inspect_image(png_with_chunks(profile * 2), MAX_PIXELS)


def test_real_files_with_text_icc_and_animation_frames_pass() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "digitflow test")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>" + "m" * 20_000 + "</x:xmpmeta>", zip=True)
    out = BytesIO()
    Image.new("RGB", (64, 64), "white").save(out, "PNG", pnginfo=info, icc_profile=b"\x00" * 3144)
    inspected = inspect_image(out.getvalue(), MAX_PIXELS)
    assert inspected.format == "PNG" and inspected.metadata_bytes > 20_000
    # An APNG of 100 frames has 200 frame chunks: image data, not metadata.
    frames = [Image.new("L", (32, 32), i) for i in range(100)]
    out = BytesIO()
    frames[0].save(out, "PNG", save_all=True, append_images=frames[1:], duration=10)
    assert inspect_image(out.getvalue(), MAX_PIXELS).width == 32


def test_pillow_text_limits_are_lowered_for_every_decode() -> None:
    import preprocess_worker.steps  # noqa: F401  (the decode path imports the limits with it)

    assert PngImagePlugin.MAX_TEXT_CHUNK == MAX_PNG_METADATA_BYTES
    assert PngImagePlugin.MAX_TEXT_MEMORY == MAX_PNG_METADATA_BYTES
    # Opened directly (no header walk), Pillow itself now stops at the limit, not at 64 MB.
    with pytest.raises(ValueError, match="MAX_TEXT"):
        Image.open(BytesIO(itxt_bomb(MAX_PNG_METADATA_BYTES + 1)))


def test_a_request_is_bounded_in_images_bytes_pixels_and_metadata() -> None:
    photo = ImageInfo("JPEG", 4000, 3000, "RGB")  # 12 MP
    budget = UploadBudget(max_images=64, max_bytes=10_000_000, max_pixels=48_000_000)
    for _ in range(4):
        budget.charge(1_000_000, photo)
    with pytest.raises(PayloadTooLargeError) as info:
        budget.charge(1_000_000, photo)
    assert info.value.details == {"limit": "pixels", "max": 48_000_000}
    assert info.value.status == 413

    small = ImageInfo("PNG", 28, 28, "L", metadata_bytes=400_000)
    budget = UploadBudget(max_images=3, max_bytes=10_000_000, max_pixels=48_000_000)
    budget.charge(100, small)
    budget.charge(100, small)
    with pytest.raises(PayloadTooLargeError) as info:
        budget.charge(100, small)  # 1.2 MB of metadata over the 1 MB a request may carry
    assert info.value.details["limit"] == "metadata_bytes"
    with pytest.raises(PayloadTooLargeError) as info:
        UploadBudget(max_images=1, max_bytes=10, max_pixels=10**9).charge(11, small)
    assert info.value.details["limit"] == "bytes"
