"""Pure image code of the preprocess stage: upload bytes -> ink map -> 28x28 MNIST-style digit.

No Redis and no Celery here: the task calls :func:`preprocess` and ships the 784 bytes on.
Preprocessing is most of the system's CPU, so every step works on small images: JPEGs are
decoded at a reduced DCT scale and everything is shrunk to ``work_size`` before any float math.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from digitflow.errors import InvalidImageError, NoInkError
from digitflow.images import inspect_image, pillow_guard
from preprocess_worker import strokes

SIDE = 28
BOX = 20
_FINE = 4  # the digit is shaped at BOX*_FINE px, then box-reduced, which leaves MNIST-like soft edges
# Stroke widths at 28x28, in pixels: MNIST's median is 2.4 and 95% of its digits are over 1.6.
_STROKE = 2.4
_THIN = 1.5  # strokes thinner than this are thickened to _STROKE
_MIN_CONTRAST = 24.0  # on 0..255: fainter marks are paper texture or JPEG noise, not ink
_WINDOW = 0.25  # background window, as a share of the long side: wider than strokes, narrower than shadows
_ALPHA_SHARE = 0.10  # this share of (nearly) transparent pixels makes the alpha channel the ink
_HIGH_DEPTH = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def preprocess(data: bytes, max_pixels: int) -> bytes:
    """Turn upload bytes into 784 row-major uint8 bytes, a 28x28 digit with bright ink.

    Raises the errors of :func:`decode` and :func:`normalize`, all DigitflowError subclasses.
    """
    return normalize(decode(data, max_pixels)).tobytes()


def decode(data: bytes, max_pixels: int, work_size: int = 256) -> Image.Image:
    """Decode an upload into an 8-bit ink map (ink bright, background dark), upright per EXIF,
    at most ``work_size`` pixels on its long side.

    Raises what :func:`~digitflow.images.inspect_image` raises, and InvalidImageError when the
    pixel data turns out corrupt or truncated while decoding.
    """
    info = inspect_image(data, max_pixels)
    try:
        with pillow_guard(), Image.open(BytesIO(data), formats=[info.format]) as opened:
            if info.format == "JPEG":
                # Let libjpeg decode at 1/2..1/8 scale (and to grey when it can): most of the cost
                # of a phone photo never happens.
                opened.draft("L", (work_size, work_size))
            opened.load()
            orientation = _orientation(opened)
            # Shrink before turning upright: the EXIF rotation then moves few pixels. The
            # shrunk copy carries only the orientation tag for ImageOps to apply.
            img = _shrink(_working_mode(opened), work_size)
            if orientation != 1:
                tag = Image.Exif()
                tag[0x0112] = orientation
                img.info["exif"] = tag.tobytes()
                img = ImageOps.exif_transpose(img)
    except Exception as exc:  # decoders fail on hostile data in many ways; all mean "corrupt"
        raise InvalidImageError("The image data is corrupt or truncated.", format=info.format) from exc
    if img.mode == "RGBA":
        rgba = np.asarray(img, dtype=np.float32)
        if np.mean(rgba[..., 3] < 32) > _ALPHA_SHARE:
            return _to_image(_alpha_ink(rgba))
        alpha = rgba[..., 3:] / 255.0
        gray = (rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)) @ np.array([0.299, 0.587, 0.114], np.float32)
    else:
        gray = np.asarray(img, dtype=np.float32)
    return _to_image(255.0 - gray if _light_background(gray) else gray)


def normalize(ink: Image.Image) -> np.ndarray:
    """Prepare an ink map as MNIST was prepared: a (28, 28) uint8 array, ink bright.

    The background is flattened, ink found by thresholding, specks and page edges dropped, the
    digit cropped, thickened when its strokes would be thinner than MNIST's, scaled so its longer
    side is 20 px, and placed with its centre of mass at (14, 14). Raises NoInkError when nothing
    ink-like is found.
    """
    arr = _working_array(ink)
    clean = _remove_background(arr)
    noise, threshold = _levels(clean)
    mask, (y0, y1, x0, x1) = _keep_digit(clean, threshold)
    # Anti-aliased stroke edges sit just under the threshold: keep them, as grey.
    y0, x0, y1, x1 = max(y0 - 3, 0), max(x0 - 3, 0), y1 + 3, x1 + 3
    region = ndimage.maximum_filter(mask[y0:y1, x0:x1], size=5)
    clean = clean[y0:y1, x0:x1]
    peak = float(np.percentile(clean[mask[y0:y1, x0:x1]], 98))
    soft = np.clip((clean - noise) / max(peak - noise, 1e-3), 0.0, 1.0) * region
    ys, xs = np.nonzero(soft)
    crop = soft[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return _centre(_shape(crop))


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # broken EXIF only loses the orientation, never the image
        return 1
    return value if isinstance(value, int) else 1


def _working_mode(img: Image.Image) -> Image.Image:
    """Return an L image, or RGBA when transparency matters."""
    if img.mode in _HIGH_DEPTH:
        # Scaled by the brightest value, as auto-exposure would: a 16-bit scan using only part
        # of its range still shows its ink. Data already in 0..255 (or 0..1 floats) is kept.
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max())
        scale = 255.0 if img.mode == "F" and 0.0 < top <= 1.0 else 255.0 / top if top > 255 else 1.0
        return _to_image(arr * scale)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return img.convert("RGBA")
    if img.mode in ("L", "RGB", "P", "1"):
        return img.convert("L")
    return img.convert("RGB").convert("L")  # CMYK, YCbCr, LAB, HSV


def _shrink(img: Image.Image, work_size: int) -> Image.Image:
    width, height = img.size
    scale = work_size / max(width, height)
    if scale >= 1.0:
        return img
    # BOX averages every source pixel once: fast, and thin strokes fade instead of vanishing.
    return img.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _alpha_ink(rgba: np.ndarray) -> np.ndarray:
    """Ink from a transparent-background image: the alpha, weighted by contrast when the opaque
    part looks like a sheet of paper (a cut-out) rather than strokes."""
    alpha = rgba[..., 3]
    opaque = alpha >= 128
    if opaque.mean() <= 0.6:
        return alpha
    gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    contrast = np.abs(gray - np.median(gray[opaque]))
    top = float(np.percentile(contrast[opaque], 99))
    if top < 2 * _MIN_CONTRAST:  # one flat colour: a huge stroke, not paper
        return alpha
    return alpha * np.clip(contrast / top, 0.0, 1.0)


def _light_background(gray: np.ndarray) -> bool:
    """Whether the ink is darker than its background (a page) rather than brighter."""
    low, median, high = _quantiles(gray, (0.005, 0.5, 0.995))
    dark, bright = median - low, high - median
    if max(dark, bright) < _MIN_CONTRAST:  # under 0.5% of the picture is ink: use the extremes
        dark, bright = median - float(gray.min()), float(gray.max()) - median
    if dark > 2 * bright + 8 or bright > 2 * dark + 8:
        return bool(dark > bright)
    # Ambiguous globally (a shadow over much of a photo): compare against the local background.
    small = Image.fromarray(gray).resize((32, 32), Image.Resampling.BOX)
    coarse = ndimage.median_filter(np.asarray(small), size=9, mode="nearest")
    local = np.asarray(Image.fromarray(coarse).resize(gray.shape[::-1], Image.Resampling.BILINEAR))
    return bool(_quantiles(local - gray, (0.995,))[0] > _quantiles(gray - local, (0.995,))[0])


def _working_array(ink: Image.Image) -> np.ndarray:
    img = ink if ink.mode == "L" else _working_mode(ink)
    if img.mode != "L":
        img = img.convert("L")
    long_side = max(img.size)
    if long_side > 512:
        img = _shrink(img, 512)
    elif long_side < 96:  # tiny inputs (an MNIST-sized upload): give the filters room
        factor = -(-96 // long_side)
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _remove_background(arr: np.ndarray) -> np.ndarray:
    """Subtract the background: a constant where it is flat (canvases, scans, MNIST itself),
    else a grey opening, which follows lighting gradients and shadows and erases bright
    structures narrower than its window (so it would hollow very thick blobs: hence not used
    on flat backgrounds). The opening runs on a 4x mean-pooled copy: 16x cheaper, and pooling
    dilutes specks and glare that would otherwise print their own halo.
    """
    levels = np.clip(arr, 0, 255).astype(np.uint8)
    hist = np.bincount(levels.ravel(), minlength=256)
    below = levels[levels <= _otsu(hist)]
    # Flat: the frame's border ring (a tenth of it may be ink) and what lies below Otsu's level
    # (whose top quarter is mostly anti-aliased stroke edges) both vary by a few levels at most.
    height, width = arr.shape
    ring = max(1, round(0.04 * min(height, width)))
    border = np.concatenate(
        [levels[:ring].ravel(), levels[-ring:].ravel(), levels[:, :ring].ravel(), levels[:, -ring:].ravel()]
    )
    low, median, high = _quantiles(below, (0.02, 0.5, 0.75))
    edge_low, edge_high = _quantiles(border, (0.02, 0.9))
    if max(high - low, edge_high - edge_low) <= _MIN_CONTRAST / 2:
        return np.clip(arr - median, 0.0, None)
    pool = 4 if min(height, width) >= 64 else 1
    small = arr[: height // pool * pool, : width // pool * pool]
    for _ in range(pool.bit_length() - 1):  # halve twice: elementwise means are fastest
        small = (small[0::2] + small[1::2]) * 0.5
        small = (small[:, 0::2] + small[:, 1::2]) * 0.5
    # A wide soft stroke (a low-resolution scan blown up) can be as wide as the window: widen it.
    window = strokes.stroke_window(small, max(3, round(_WINDOW * max(arr.shape) / pool)))
    background = ndimage.grey_opening(small, size=window)
    if pool > 1:
        background = np.asarray(Image.fromarray(background).resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(arr - background, 0.0, None)


def _quantiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Quantiles of values on the 0..255 scale, to one grey level, from a histogram (fast)."""
    hist = np.bincount(np.clip(values, 0, 255).astype(np.uint8).ravel(), minlength=256)
    cumulative = np.cumsum(hist)
    return np.searchsorted(cumulative, np.asarray(qs) * (cumulative[-1] - 1), side="right").astype(np.float64)


def _otsu(hist: np.ndarray) -> float:
    """Otsu's threshold of a 256-bin histogram: the level that best splits it in two classes."""
    share = np.cumsum(hist) / hist.sum()
    mean = np.cumsum(hist * np.arange(256)) / hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * share - mean) ** 2 / (share * (1.0 - share))
    return float(np.argmax(np.nan_to_num(between, nan=0.0, posinf=0.0)))


def _levels(clean: np.ndarray) -> tuple[float, float]:
    """Return (noise level, ink threshold): Otsu, floored above the noise and a minimum contrast."""
    levels = np.clip(clean, 0, 255).astype(np.uint8)
    hist = np.bincount(levels.ravel(), minlength=256).astype(np.float64)
    otsu = _otsu(hist)
    median = float(np.searchsorted(np.cumsum(hist), hist.sum() / 2))
    sigma = 1.4826 * float(_quantiles(np.abs(levels.astype(np.int16) - int(median)), (0.5,))[0])
    median, sigma = strokes.background_class(levels, hist, otsu, median, sigma)
    threshold = max(otsu, median + max(5 * sigma, _MIN_CONTRAST))
    return min(median + 2 * sigma, threshold / 2), threshold


def _keep_digit(clean: np.ndarray, threshold: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Keep the most massive strong component and the big strong ones near it; drop specks, page
    edges and faint blobs (shadow remnants). Returns the kept mask and its box (y0, y1, x0, x1).

    Raises NoInkError when no component is big and clear enough to be a mark.
    """
    height, width = clean.shape
    labels, count = ndimage.label(clean > threshold, structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    slices = ndimage.find_objects(labels)
    speck = max(8.0, 3e-4 * height * width)
    sized = [int(i) for i in np.flatnonzero(areas >= speck)]
    if not sized:
        raise NoInkError("No ink was found in the image.")
    boxes, mass, peak = {}, {}, {}
    for i in sized:
        values = clean[slices[i]][labels[slices[i]] == i + 1]
        boxes[i] = (slices[i][0].start, slices[i][0].stop, slices[i][1].start, slices[i][1].stop)
        mass[i], peak[i] = float(values.sum()), float(np.percentile(values, 90))
    kind = {i: _border_kind(boxes[i], areas[i], height, width) for i in sized}
    sized = [i for i in sized if kind[i] != "strip"]
    if not sized:
        raise NoInkError("No ink was found in the image, only the page's edges.")
    lines = [i for i in sized if kind[i] == "line"]
    inner = [i for i in sized if kind[i] is None]
    # Ruled lines and page edges go, unless they are all there is (a lone "1" cropped tight).
    if not inner or (lines and max(mass[i] for i in inner) < 0.2 * max(mass[i] for i in lines)):
        inner = sized
    # Ink is the strongest thing on the page; what is much fainter is shadow or smudge.
    level = max(peak[i] for i in inner)
    strong = [i for i in inner if peak[i] >= 0.5 * level]
    best = max(strong, key=lambda i: mass[i])
    y0, y1, x0, x1 = box = boxes[best]
    # A mark is more than a speck, and its core stands well clear of the threshold (noise and
    # shading artefacts barely cross it).
    if max(y1 - y0, x1 - x0) < max(5.0, 0.03 * max(height, width)) or areas[best] < 2 * speck:
        raise NoInkError("No ink was found in the image, only specks.")
    if peak[best] < 1.4 * threshold:
        raise NoInkError("No ink was found in the image, only faint shading.")
    kept, reach = {best}, 0.4 * max(y1 - y0, x1 - x0)
    grew = True
    while grew:
        grew = False
        for i in strong:
            gap = _gap(box, boxes[i])
            if i not in kept and (gap == 0 or (areas[i] >= 0.08 * areas[best] and gap <= reach)):
                kept.add(i)
                b = boxes[i]
                box = (min(box[0], b[0]), max(box[1], b[1]), min(box[2], b[2]), max(box[3], b[3]))
                grew = True
    keep = np.zeros(count + 1, dtype=bool)
    keep[[i + 1 for i in kept]] = True
    return keep[labels], box


def _border_kind(box: tuple[int, int, int, int], area: float, height: int, width: int) -> str | None:
    """Classify a component by its box: a "strip" hugging one side of the frame (the table past
    the page, a rotated scan's wedge), a thin "line" running across the frame (ruled paper, the
    page's edge) or None."""
    y0, y1, x0, x1 = box
    bh, bw = y1 - y0, x1 - x0
    my, mx = max(2, 0.02 * height), max(2, 0.02 * width)
    left, right, top, bottom = x0 <= mx, x1 >= width - mx, y0 <= my, y1 >= height - my
    # Inside a band along one side: the band is thin (6%), or it is 12% and the part long.
    for near, depth, side, length, along in (
        (left, x1, width, bh, height),
        (right, width - x0, width, bh, height),
        (top, y1, height, bw, width),
        (bottom, height - y0, height, bw, width),
    ):
        if near and (depth <= 0.06 * side or (depth <= 0.12 * side and length >= max(0.3 * along, 3 * depth))):
            return "strip"
    spans = bw >= 0.8 * width or bh >= 0.8 * height
    thin = min(bh / height, bw / width) < 0.06 or area / (bh * bw) < 0.15
    return "line" if (left or right or top or bottom) and spans and thin else None


def _gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    return max(0, b[0] - a[1], a[0] - b[1], b[2] - a[3], a[2] - b[3])


def _shape(crop: np.ndarray) -> np.ndarray:
    """Scale a cropped digit (0..1) so its longer side is BOX px, thickening thin strokes first."""
    fine = _resize_long(crop, BOX * _FINE, Image.Resampling.BILINEAR)
    core = fine > 0.5
    if core.any():
        grow = _growth(core)
        if grow > 0:
            # Outlined ("hollow") strokes: a thin line drawn around each stroke encloses long, narrow
            # holes, where a digit's own loops are round. Fill those first: the digit is the
            # outline's inside (thickening would turn the outlines into one blob).
            filled = strokes.fill_tubes(core)
            if filled is not None:
                fine = np.maximum(fine, filled.astype(np.float32))
                grow = _growth(fine > 0.5)
        if grow > 0:
            # A thin pen photographed large would shrink below a pixel: draw it with MNIST's pen.
            yy, xx = np.mgrid[-grow : grow + 1, -grow : grow + 1]
            fine = ndimage.grey_dilation(np.pad(fine, grow), footprint=yy**2 + xx**2 <= grow**2)
            ys, xs = np.nonzero(fine)
            fine = fine[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return _resize_long(fine, BOX, Image.Resampling.BOX)


def _growth(core: np.ndarray) -> int:
    """How many fine pixels to grow a stroke of mask ``core`` by (0 for strokes wide enough)."""
    width = 4.0 * float(ndimage.distance_transform_edt(core)[core].mean()) - 2.0
    return min(round((_STROKE * _FINE - width) / 2), 2 * _FINE) if width < _THIN * _FINE else 0


def _resize_long(arr: np.ndarray, long_side: int, resample: Image.Resampling) -> np.ndarray:
    height, width = arr.shape
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(arr.astype(np.float32)).resize(size, resample))


def _centre(digit: np.ndarray) -> np.ndarray:
    top = float(digit.max())
    if top <= 0.0:
        raise NoInkError("No ink was found in the image.")
    digit = digit * (255.0 / top)
    height, width = digit.shape
    cy, cx = ndimage.center_of_mass(digit)
    # As MNIST: centre of mass at (14, 14); clamped so that no ink is cut off.
    oy = int(np.clip(round(SIDE / 2 - cy), 0, SIDE - height))
    ox = int(np.clip(round(SIDE / 2 - cx), 0, SIDE - width))
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[oy : oy + height, ox : ox + width] = digit
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
