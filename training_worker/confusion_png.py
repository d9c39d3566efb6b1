"""A confusion matrix as a PNG picture (Pillow only), for the training run's artifacts.

Rows are true labels, columns predicted ones; each cell is shaded by its share of its row and
shows its count, so a glance shows which classes the model mixes up.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 44
MARGIN = 110


def confusion_png(confusion: np.ndarray, labels: list[str], title: str = "") -> bytes:
    """PNG bytes of a (K, K) confusion matrix with its K labels. Raises ValueError on a shape mismatch."""
    k = len(labels)
    if confusion.shape != (k, k):
        raise ValueError(f"confusion matrix is {confusion.shape}, expected ({k}, {k})")
    side = MARGIN + k * CELL + 20
    img = Image.new("RGB", (side, side + 30), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    rows = confusion.sum(axis=1, keepdims=True).clip(min=1)
    share = confusion / rows
    for i in range(k):
        for j in range(k):
            x0, y0 = MARGIN + j * CELL, MARGIN + i * CELL
            level = int(255 - 200 * share[i, j])
            colour = (level, level, 255) if i == j else (255, level, level)
            draw.rectangle([x0, y0, x0 + CELL - 1, y0 + CELL - 1], fill=colour, outline=(200, 200, 200))
            if confusion[i, j]:
                text = str(int(confusion[i, j]))
                draw.text((x0 + CELL / 2, y0 + CELL / 2), text, fill="black", font=font, anchor="mm")
        short = labels[i][:14]
        draw.text((MARGIN - 6, MARGIN + i * CELL + CELL / 2), short, fill="black", font=font, anchor="rm")
        column = Image.new("RGB", (MARGIN - 10, 14), "white")
        ImageDraw.Draw(column).text((2, 7), short, fill="black", font=font, anchor="lm")
        rotated = column.rotate(90, expand=True)
        img.paste(rotated, (MARGIN + i * CELL + (CELL - 14) // 2, 4))
    draw.text((MARGIN, side + 4), "rows: true label, columns: predicted", fill="black", font=font)
    if title:
        draw.text((6, side + 16), title, fill="black", font=font)
    out = BytesIO()
    img.save(out, "PNG")
    return out.getvalue()
