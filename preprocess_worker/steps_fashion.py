"""Pure image code of the ``fashion-mnist`` input profile: a product photo -> 28x28 as
Fashion-MNIST was made.

Unlike digits there is no ink to find and no centring by mass: the whole picture is the object.
It is turned grey (transparency composited on white), inverted when its background is light so
the object is light on dark as in Fashion-MNIST, and fitted whole into 28x28, aspect ratio kept,
centred on black.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from digitflow.errors import NoInkError
from preprocess_worker.decoding import opened_upload

SIDE = 28
_MIN_CONTRAST = 24.0  # on 0..255: a flatter picture shows nothing to classify
_BORDER = 2  # px of the working image's edges that tell the background's brightness


def preprocess_fashion(data: bytes, max_pixels: int) -> bytes:
    """Turn upload bytes into 784 row-major uint8 bytes, the object light on a dark background.

    Raises what :func:`~digitflow.images.inspect_image` raises, InvalidImageError for pixel data
    that is corrupt, and NoInkError for a picture with no contrast at all.
    """
    gray = decode_gray(data, max_pixels)
    arr = np.asarray(gray, dtype=np.float32)
    if float(arr.max() - arr.min()) < _MIN_CONTRAST:
        raise NoInkError("the picture is blank: nothing to classify")
    edges = np.concatenate(
        [arr[:_BORDER].ravel(), arr[-_BORDER:].ravel(), arr[:, :_BORDER].ravel(), arr[:, -_BORDER:].ravel()]
    )
    if float(np.median(edges)) > 127.0:
        arr = 255.0 - arr
    return fit(arr).tobytes()


def decode_gray(data: bytes, max_pixels: int, work_size: int = 112) -> Image.Image:
    """Decode to an upright 8-bit grey image of at most ``work_size`` px on its long side."""
    with opened_upload(data, max_pixels, work_size) as opened:
        img = ImageOps.exif_transpose(opened)
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        img = img.convert("L") if img.mode in ("L", "RGB", "RGBA", "P", "1") else img.convert("RGB").convert("L")
        img.thumbnail((work_size, work_size), Image.Resampling.BOX)
        return img


def fit(arr: np.ndarray) -> np.ndarray:
    """Scale a float (H, W) picture so its longer side is 28 px and centre it on 28x28 black."""
    height, width = arr.shape
    scale = SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    out = np.zeros((SIDE, SIDE), np.uint8)
    y0, x0 = (SIDE - size[1]) // 2, (SIDE - size[0]) // 2
    out[y0 : y0 + size[1], x0 : x0 + size[0]] = np.asarray(small, dtype=np.uint8)
    return out
