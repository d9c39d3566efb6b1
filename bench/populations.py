"""Accuracy per population and the outlier figures, against issue 15's targets.

    python -m bench.populations [--model DIR] [--json PATH]      (make eval; about 3 minutes)

Every population is rendered from a fixed seed (bench/population_suites.py) and comes from a source
the model does not train on: scikit-learn's bundled optdigits (other writers, scanned at low
resolution), Debian handwriting and serif fonts (photos, canvas exports, outlined strokes), and
for the non-digits letters, symbols, shapes, noise, blank and textured pages and Fashion-MNIST.
MNIST held-out and the team's renders are reported for reference. A population whose source is
not installed is skipped with the package to install. Prints one table; --json writes every
figure (with per-population confusion matrices).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from bench import nondigit_suites
from bench import population_suites as ps
from bench.paths import MODELS
from bench.population_eval import Measured, digit_summary, inference_ms_per_job, measure, non_digit_summary
from digitflow.reference import Reference
from digitnet.loading import LoadedModel, load_model

ACCURACY_TARGETS = {"photos": 0.98, "canvases": 0.98, "lowres_scans": 0.90, "mnist_held": 0.99}
MAX_FLAGGED = 0.03  # of real digit uploads
MIN_AUROC = 0.95
MAX_INFERENCE_MS = 1.0


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _measured(
    suites: Mapping[str, Callable[[], tuple[list[bytes], list[int]]]],
    model: LoadedModel,
    ref: Reference,
    skipped: dict[str, str],
) -> Iterator[tuple[str, Measured]]:
    """Each suite's measurement, in order; a suite whose source is missing is named in
    ``skipped`` (and printed) instead."""
    for name, make in suites.items():
        try:
            uploads, labels = make()
        except ps.SourceMissing as exc:
            skipped[name] = str(exc)
            print(f"skipped {name}: {exc}", flush=True)
            continue
        yield name, measure(model, ref, uploads, labels)


def run(model_dir: Path) -> dict[str, object]:
    torch.set_num_threads(1)
    model = load_model(model_dir, device="cpu", threads=1)
    ref = model.reference
    if ref is None:
        raise SystemExit(f"{model_dir} has no reference.safetensors: run `digitflow models calibrate`")
    out: dict[str, object] = {"model": str(model_dir), "threshold": ref.threshold, "skipped": {}}
    skipped: dict[str, str] = out["skipped"]  # type: ignore[assignment]
    digits: dict[str, dict[str, object]] = {}
    digit_scores, all_pixels = [], []
    for name, m in _measured({**ps.INDEPENDENT, **ps.REFERENCE}, model, ref, skipped):
        digits[name] = digit_summary(m, ref.threshold)
        digit_scores.append(m.scores)
        all_pixels.append(m.pixels[m.ok])
        print(f"{name}: {digits[name]['accuracy']:.1%}", flush=True)
    pooled = np.concatenate(digit_scores) if digit_scores else np.zeros(0)
    others: dict[str, dict[str, object]] = {}
    outlier_scores = []
    for name, m in _measured(nondigit_suites.NON_DIGITS, model, ref, skipped):
        if len(pooled):
            others[name] = non_digit_summary(m, ref.threshold, pooled)
            outlier_scores.append(m.scores)
    out["digits"], out["non_digits"] = digits, others
    finite = pooled[np.isfinite(pooled)]
    out["flagged_all_digits"] = float((finite > ref.threshold).mean()) if len(finite) else None
    if outlier_scores:
        from bench.population_eval import auroc

        out["auroc_all"] = auroc(pooled, np.concatenate(outlier_scores))
    if all_pixels:
        out["inference_ms_per_job"] = inference_ms_per_job(model, np.concatenate(all_pixels))
    return out


def report(res: dict[str, object]) -> str:
    digits: dict[str, dict[str, object]] = res["digits"]  # type: ignore[assignment]
    others: dict[str, dict[str, object]] = res["non_digits"]  # type: ignore[assignment]
    lines = [f"model {res['model']}, outlier threshold {res['threshold']:.1f}", ""]
    lines.append(f"{'population':<15}{'n':>6}{'accuracy':>10}{'target':>17}{'refused':>9}{'flagged':>9}  worst classes")
    for name, d in digits.items():
        acc, flagged = float(d["accuracy"]), float(d["flagged"])  # type: ignore[arg-type]
        target = ACCURACY_TARGETS.get(name)
        goal = f">={target:.0%} {verdict(acc >= target)}" if target else "-"
        worst = ", ".join(d["worst_classes"])  # type: ignore[arg-type]
        conf = ", ".join(d["top_confusions"])  # type: ignore[arg-type]
        lines.append(
            f"{name:<15}{d['n']:>6}{acc:>10.1%}{goal:>17}{d['refused']:>9}{flagged:>8.1%} "
            f"{verdict(flagged <= MAX_FLAGGED):>6}  {worst}; {conf}"
        )
    flagged_all = res.get("flagged_all_digits")
    if isinstance(flagged_all, float):
        lines.append(
            f"real digit uploads flagged: {flagged_all:.1%} (target <= 3%: {verdict(flagged_all <= MAX_FLAGGED)})"
        )
    lines += ["", f"{'non-digits':<15}{'n':>6}{'AUROC':>8}{'target':>14}{'refused':>9}{'caught':>8}"]
    for name, o in others.items():
        auc = float(o["auroc"])  # type: ignore[arg-type]
        lines.append(
            f"{name:<15}{o['n']:>6}{auc:>8.3f}{'>=0.95 ' + verdict(auc >= MIN_AUROC):>14}"
            f"{o['refused']:>9}{float(o['caught']):>8.0%}"  # type: ignore[arg-type]
        )
    if "auroc_all" in res:
        auc = float(res["auroc_all"])  # type: ignore[arg-type]
        lines.append(
            f"all non-digits vs all real digits: AUROC {auc:.3f} (target >= 0.95: {verdict(auc >= MIN_AUROC)})"
        )
    if "inference_ms_per_job" in res:
        ms = float(res["inference_ms_per_job"])  # type: ignore[arg-type]
        lines.append(
            f"batched CPU inference (1 thread): {ms:.3f} ms/job (target <= 1 ms: {verdict(ms <= MAX_INFERENCE_MS)})"
        )
    for name, why in res["skipped"].items():  # type: ignore[attr-defined]
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench.populations", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODELS / "digits" / "1", help="a model version's directory")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    res = run(args.model)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
