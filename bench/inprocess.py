"""The physical limit: decode + preprocess + inference + postprocess in plain Python processes.

    python -m bench.inprocess --images DIR --procs N --batches 1,32 --warmup S --duration S

No queue, no HTTP, no Redis: each of ``--procs`` processes (one per core, one torch thread each)
loads the model once and loops over the images, B at a time for each B of ``--batches``:
preprocess each image, one forward pass for the batch, summarize each row. Latency is the time
of one batch (what each of its jobs would wait). Same output protocol as :mod:`bench.load` (``START``, ``END``,
``RESULT {json}``, once per batch size), so the parent reads CPU counters at the same moments.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.images import read_images


def worker(index: int, args: argparse.Namespace, ready: Any, window: Any, results: Any) -> None:
    """One process: load the model, then per batch size run until the window closes and report
    what it did inside it."""
    os.environ.setdefault("TORCH_THREADS", "1")
    from digitflow.errors import DigitflowError
    from digitflow.settings import InferenceSettings
    from inference_worker.serving import ModelCache
    from postprocess_worker.steps import summarize
    from preprocess_worker.steps import preprocess

    settings = InferenceSettings.from_env()
    model = ModelCache(settings).get(settings.default_model)
    images = read_images(Path(args.images))
    for size in args.batches:
        ready.put(index)
        start, end = window.get()
        ok = correct = 0
        failed: Counter[str] = Counter()
        latencies: list[float] = []
        i = index * size
        while time.monotonic() < end:
            batch = [images[(i + k) % len(images)] for k in range(size)]
            i += size * args.procs
            t0 = time.monotonic()
            pixels, labels = [], []
            for image in batch:
                try:
                    pixels.append(preprocess(image.data, settings.max_image_pixels))
                    labels.append(image.label)
                except DigitflowError as exc:
                    failed[f"failed:preprocess:{exc.code}"] += 1
            answers = [summarize(row) for row in model.predict_logits(pixels)]
            t1 = time.monotonic()
            if start <= t1 <= end:
                ok += len(answers)
                correct += sum(a["label"] == label for a, label in zip(answers, labels, strict=True))
                latencies += [(t1 - t0) * 1000.0] * len(answers)
        results.put({"ok": ok, "correct": correct, "failed": dict(failed), "latencies_ms": latencies})


def run(args: argparse.Namespace) -> None:
    """Run every batch size in turn, printing START, END and RESULT for each."""
    ctx = mp.get_context("spawn")  # each process imports torch itself, after it exists
    ready, results = ctx.Queue(), ctx.Queue()
    windows = [ctx.Queue() for _ in range(args.procs)]
    procs = [ctx.Process(target=worker, args=(i, args, ready, windows[i], results)) for i in range(args.procs)]
    for proc in procs:
        proc.start()
    for size in args.batches:
        for _ in procs:
            ready.get(timeout=120)
        start = time.monotonic() + args.warmup
        end = start + args.duration
        for queue in windows:
            queue.put((start, end))
        time.sleep(max(0.0, start - time.monotonic()))
        print("START", flush=True)
        time.sleep(max(0.0, end - time.monotonic()))
        print("END", flush=True)
        parts = [results.get(timeout=120) for _ in procs]
        failed: Counter[str] = Counter()
        for part in parts:
            failed.update(part["failed"])
        result = {
            "mode": "batch1" if size == 1 else "batched",
            "inflight": args.procs,
            "batch": size,
            "window_s": round(end - start, 4),
            "ok": sum(p["ok"] for p in parts),
            "correct": sum(p["correct"] for p in parts),
            "failed": dict(failed),
            "latencies_ms": [round(x, 3) for p in parts for x in p["latencies_ms"]],
        }
        print("RESULT " + json.dumps(result), flush=True)
    for proc in procs:
        proc.join(timeout=30)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("--images", required=True, help="a directory written by bench.images.write_images")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batches", type=lambda v: [int(x) for x in v.split(",")], default=[1, 32])
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
