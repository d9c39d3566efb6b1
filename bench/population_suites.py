"""The evaluation populations of `python -m bench.populations`: deterministic (seeded), and made
from sources the model never trains on.

Digit populations (label 0-9):
  lowres_scans   scikit-learn's bundled ``load_digits`` (UCI optdigits: 8x8 scans of 43 other
                 writers, inside the wheel), blown up to 64-256 px as soft dark ink on paper
  photos         22 handwriting fonts (Debian fonts-*) as phone photos of ink on paper
  canvases       the same fonts as browser-canvas exports with thick brushes
  hollow         outlined ("bubble") digits of every other of those fonts, photographed
  serif_ones     printed serif fonts (URW C059, P052, Nimbus Roman, Bookman, Nimbus Mono), photographed
  mnist_held     the 1,000 held-out digits of mnist_5k.npz as PNGs (reference: same source as training)
  team_renders   bench/images.make_images, the team's own renders (reference)
Non-digit populations (bench/nondigit_suites.py): letters (no digit look-alikes), symbols,
shapes, noise, blank_pages, textured_pages, fashion (Fashion-MNIST t10k).

Training-only fonts (``TRAIN_FONT_GLOBS``, bench/make_font_digits.py) are other families.
A population whose source is not installed is skipped with the package to install.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench import upload_render as ur

Suite = tuple[list[bytes], list[int]]
F = "/usr/share/fonts"
HAND_FONTS = {  # path under /usr/share/fonts -> Debian package
    **{f"truetype/fifthhorseman/{n}.ttf": "fonts-dkg-handwriting" for n in ("dkg", "dkgBd", "dkgIt")},
    "truetype/breip/Breip.ttf": "fonts-breip",
    "truetype/femkeklaver/femkeklaver.ttf": "fonts-femkeklaver",
    "truetype/sjfonts/SteveHand.ttf": "fonts-sjfonts",
    "truetype/sjfonts/Delphine.ttf": "fonts-sjfonts",
    "truetype/humor-sans/Humor-Sans.ttf": "fonts-humor-sans",
    "truetype/kristi/Kristi.ttf": "fonts-kristi",
    "truetype/ecolier-court/Ecolier-court.ttf": "fonts-ecolier-court",
    "truetype/rufscript/Rufscript010.ttf": "fonts-rufscript",
    "truetype/tomsontalks/TomsonTalks.ttf": "fonts-tomsontalks",
    "truetype/yusei-magic/YuseiMagic-Regular.ttf": "fonts-yusei-magic",
    "truetype/klee/KleeOne-Regular.ttf": "fonts-klee",
    "opentype/tlwg/Purisa.otf": "fonts-tlwg-purisa-otf",
    "opentype/tlwg/Purisa-Oblique.otf": "fonts-tlwg-purisa-otf",
    **{
        f"opentype/bwht/BecauseWe{n}-Regular.otf": "fonts-bwht"
        for n in ("Build", "Connect", "Create", "Learn", "Mentor", "Organize")
    },
}
SERIF_FONTS = {
    f"opentype/urw-base35/{n}.otf": "fonts-urw-base35"
    for n in (
        "C059-Roman",
        "P052-Roman",
        "NimbusRoman-Regular",
        "URWBookman-Light",
        "NimbusMonoPS-Regular",
        "C059-Italic",
        "NimbusRoman-Italic",
        "P052-Bold",
    )
}
# Training-only families (bench/make_font_digits.py): none of them is an evaluation family.
TRAIN_FONT_GLOBS = (
    "truetype/dejavu/DejaVu*.ttf",
    "opentype/comic-neue/*.otf",
    "opentype/dancingscript/*.otf",
    "opentype/kaushanscript/*.otf",
    "opentype/opendyslexic/OpenDyslexic-*.otf",
    "opentype/urw-base35/NimbusSans-*.otf",
    "opentype/urw-base35/NimbusSansNarrow-*.otf",
    "opentype/urw-base35/URWGothic-*.otf",
    "opentype/urw-base35/Z003-*.otf",
    "truetype/leckerli-one/LeckerliOne-Regular.ttf",
    # Handwriting, brush and script families (Debian fonts-kiloji, fonts-seto, fonts-nanum-extra,
    # fonts-isabella, fonts-lobster, fonts-lobstertwo, fonts-havana, fonts-staypuft,
    # fonts-aoyagi-soseki, fonts-kouzan-mouhitsu, fonts-unfonts-extra, fonts-navilu): their digits
    # are pen, felt-tip and brush shapes, narrow and slanted ones among them.
    "truetype/kiloji/kiloji*.ttf",
    "truetype/seto/setofont.ttf",
    "truetype/nanum/NanumBarunpen*.ttf",
    "truetype/nanum/NanumBrush.ttf",
    "truetype/nanum/NanumPen.ttf",
    "truetype/isabella/Isabella.ttf",
    "opentype/lobster/lobster.otf",
    "opentype/lobstertwo/LobsterTwo-*.otf",
    "opentype/havana/Havana-Regular.otf",
    "truetype/staypuft/StayPuft.ttf",
    "truetype/aoyagi-soseki/aoyagi-soseki.ttf",
    "truetype/kouzan-mouhitsu/*.ttf",
    "truetype/unfonts-extra/UnPilgia.ttf",
    "truetype/Navilu/Navilu.ttf",
)


class SourceMissing(Exception):
    """A population's source (a Debian package, a PyPI package) is not installed."""


def fonts(table: dict[str, str]) -> list[str]:
    """The fonts of ``table`` as paths; SourceMissing naming the packages when any is absent."""
    missing = sorted({pkg for rel, pkg in table.items() if not Path(F, rel).is_file()})
    if missing:
        raise SourceMissing(f"fonts not installed: apt-get install {' '.join(missing)} (or make system-deps)")
    return [f"{F}/{rel}" for rel in table]


def train_fonts() -> list[str]:
    found = [p for pattern in TRAIN_FONT_GLOBS for p in sorted(glob.glob(f"{F}/{pattern}"))]
    return [p for p in found if "MathTeX" not in p and "ExtraLight" not in p]


def pen_mask(font: str, ch: str, rng: np.random.Generator) -> np.ndarray:
    return ur.transform(ur.glyph(font, ch, 160, int(rng.choice([0, 0, 0, 2, 4]))), rng)


def brush_mask(font: str, ch: str, rng: np.random.Generator) -> np.ndarray:
    return ur.transform(ur.glyph(font, ch, 160, int(rng.choice([0, 3, 6, 10, 14]))), rng, rot=8, shear=0.2)


def hollow_mask(font: str, ch: str, rng: np.random.Generator) -> np.ndarray:
    return ur.transform(ur.hollow(font, ch, 160, int(rng.integers(4, 9))), rng)


def font_digits(
    font_list: list[str],
    per: int,
    seed: int,
    render: Callable[[np.ndarray, np.random.Generator], bytes],
    mask: Callable[[str, str, np.random.Generator], np.ndarray],
) -> Suite:
    rng = np.random.default_rng(seed)
    data, labels = [], []
    for font in font_list:
        for digit in range(10):
            for _ in range(per):
                data.append(render(mask(font, str(digit), rng), rng))
                labels.append(digit)
    return data, labels


def optdigits() -> tuple[np.ndarray, np.ndarray]:
    """(8x8 images 0..16, labels) of scikit-learn's bundled optdigits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SourceMissing("scikit-learn not installed: pip install -e '.[dev]'") from exc
    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def lowres_scans(seed: int = 101, take: slice = slice(None)) -> Suite:
    images, labels = optdigits()
    rng = np.random.default_rng(seed)
    return [ur.lowres_scan(img, rng) for img in images[take]], [int(t) for t in labels[take]]


def photos(seed: int = 202) -> Suite:
    return font_digits(fonts(HAND_FONTS), 5, seed, ur.photo, pen_mask)


def canvases(seed: int = 303) -> Suite:
    return font_digits(fonts(HAND_FONTS), 5, seed, ur.canvas, brush_mask)


def hollow(seed: int = 404) -> Suite:
    return font_digits(fonts(HAND_FONTS)[::2], 3, seed, ur.photo, hollow_mask)


def serif_ones(seed: int = 505) -> Suite:
    return font_digits(fonts(SERIF_FONTS), 4, seed, ur.photo, pen_mask)


def mnist_held() -> Suite:
    from training_worker.datasets import load_mnist_5k

    images, labels, held = load_mnist_5k()
    return [ur.encode(Image.fromarray(255 - images[i]), "PNG") for i in held], [int(labels[i]) for i in held]


def team_renders() -> Suite:
    from bench.images import make_images

    made = make_images(200)
    return [im.data for im in made], [im.label for im in made]


INDEPENDENT: dict[str, Callable[[], Suite]] = {
    "lowres_scans": lowres_scans,
    "photos": photos,
    "canvases": canvases,
    "hollow": hollow,
    "serif_ones": serif_ones,
}
REFERENCE: dict[str, Callable[[], Suite]] = {"mnist_held": mnist_held, "team_renders": team_renders}
