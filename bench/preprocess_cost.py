"""Preprocessing's own cost, in-process: CPU ms per upload, and the accuracy it leaves.

    python -m bench.preprocess_cost [--repeats R] [--json PATH]      (about a minute)

One process, one thread, no Redis: ``preprocess_worker.steps`` over the bench's own images
(bench.images: phone photos and canvas exports of MNIST held-out digits) and, where their Debian
fonts are installed, the phone photos and canvas exports of ``make eval``
(bench.population_suites). Each set is timed at the shipped working size
(``decoding.WORK_SIZE``) and at 256 px, the size before it, interleaved: best of R passes of
this process's CPU time, per upload. The accuracy is the shipped model's on 1,000 bench images
at both sizes, so "no lower than before" is read in one run. ``python -m bench`` runs it with
the ``inprocess`` scenario and prints issue 14's targets for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.images import make_images
from digitflow.errors import DigitflowError
from digitflow.settings import WorkerSettings

BEFORE = 256  # the working size before issue 14 changed it
MAX_MS_PER_PHOTO = 2.0
MAX_PIXELS = WorkerSettings.max_image_pixels  # the preprocess worker's default limit


def _preprocessor(work_size: int) -> Callable[[bytes], bytes | None]:
    from preprocess_worker.steps import preprocess

    def run(data: bytes) -> bytes | None:
        try:
            return preprocess(data, MAX_PIXELS, work_size)
        except DigitflowError:
            return None

    return run


def _uploads() -> tuple[dict[str, list[bytes]], dict[str, str]]:
    from bench import population_suites as ps

    sets = {"bench_images": [image.data for image in make_images(200)]}
    skipped: dict[str, str] = {}
    for name, make in (("photos", ps.photos), ("canvases", ps.canvases)):
        try:
            sets[name] = make()[0]
        except ps.SourceMissing as exc:
            skipped[name] = str(exc)
    return sets, skipped


def cpu_ms(sets: dict[str, list[bytes]], sizes: tuple[int, ...], repeats: int) -> dict[str, dict[str, float]]:
    """Best-of-``repeats`` process CPU ms per upload of each set at each working size (keyed
    by the size as text, as JSON keeps it)."""
    best = {name: dict.fromkeys(sizes, float("inf")) for name in sets}
    runs = {size: _preprocessor(size) for size in sizes}
    for _ in range(repeats):
        for size in sizes:  # interleaved: a slow spell of the machine hits both sizes
            for name, uploads in sets.items():
                start = time.process_time()
                for data in uploads:
                    runs[size](data)
                best[name][size] = min(best[name][size], 1000 * (time.process_time() - start) / len(uploads))
    return {name: {str(size): round(ms, 3) for size, ms in by_size.items()} for name, by_size in best.items()}


def accuracy(sizes: tuple[int, ...], count: int = 1000) -> dict[str, float]:
    """The shipped model's accuracy on ``count`` bench images at each working size (a refused
    upload counts as wrong)."""
    os.environ.setdefault("TORCH_THREADS", "1")
    from digitflow.settings import InferenceSettings
    from inference_worker.serving import ModelCache

    settings = InferenceSettings.from_env()
    model = ModelCache(settings).get(settings.default_model)
    images = make_images(count)
    out: dict[str, float] = {}
    for size in sizes:
        run = _preprocessor(size)
        pixels = [run(image.data) for image in images]
        kept = [i for i, p in enumerate(pixels) if p is not None]
        logits = model.predict_logits([pixels[i] for i in kept])  # type: ignore[misc]
        right = sum(int(logits[k].argmax()) == images[i].label for k, i in enumerate(kept))
        out[str(size)] = round(right / count, 4)
    return out


def measure(repeats: int = 3) -> dict[str, Any]:
    from preprocess_worker.decoding import WORK_SIZE

    sizes = (WORK_SIZE, BEFORE)
    sets, skipped = _uploads()
    return {
        "work_size": WORK_SIZE,
        "before": BEFORE,
        "cpu_ms_per_upload": cpu_ms(sets, sizes, repeats),
        "uploads": {name: len(uploads) for name, uploads in sets.items()},
        "accuracy_bench_images": accuracy(sizes),
        "skipped": skipped,
    }


def targets(report: dict[str, Any]) -> list[tuple[str, float | None, float, bool]]:
    """(target, value, limit, higher is better) for ``bench.report.targets``."""
    now, before = str(report["work_size"]), str(report["before"])
    cost = report["cpu_ms_per_upload"]
    acc = report["accuracy_bench_images"]
    photos = cost.get("photos", {}).get(now)
    return [
        (f"preprocess CPU ms/photo in-process <= {MAX_MS_PER_PHOTO:g}", photos, MAX_MS_PER_PHOTO, False),
        (f"preprocess CPU ms/bench image <= {MAX_MS_PER_PHOTO:g}", cost["bench_images"][now], MAX_MS_PER_PHOTO, False),
        (f"bench images accuracy >= at {before} px ({acc[before]:.1%})", acc[now], acc[before], True),
    ]


def render(report: dict[str, Any]) -> str:
    now, before = str(report["work_size"]), str(report["before"])
    lines = [f"Preprocessing in-process (1 thread, CPU ms per upload, best of the passes): {now} px vs {before} px"]
    for name, by_size in report["cpu_ms_per_upload"].items():
        ratio = by_size[now] / by_size[before]
        n = report["uploads"][name]
        lines.append(f"  {name:<13} ({n:>4}) {by_size[now]:6.2f} vs {by_size[before]:6.2f}  ({ratio:.2f}x)")
    acc = report["accuracy_bench_images"]
    lines.append(f"  accuracy on 1,000 bench images: {acc[now]:.1%} vs {acc[before]:.1%}")
    lines += [f"  skipped {name}: {why}" for name, why in report["skipped"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the report here ('-': stdout, alone)")
    args = parser.parse_args(argv)
    report = measure(args.repeats)
    if str(args.json) == "-":
        json.dump(report, sys.stdout)
        return 0
    print(render(report))
    for name, value, limit, higher in targets(report):
        met = value is not None and (value >= limit if higher else value <= limit)
        print(f"  {'met' if met else 'MISSED':>6}  {name}: {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
