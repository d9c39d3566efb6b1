"""What the prediction log costs the postprocess stage: jobs/s of the postprocess step alone vs.
the step plus its one-transaction-per-batch SQLite write (in-process, batches of 32 and of 1,
best of 3; the log's cost per job and per batch is the difference of the two).

    python -m bench.predlog_bench
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from digitflow.settings import WorkerSettings
from postprocess_worker.predictions import PredictionWriter
from postprocess_worker.steps import postprocess_items


def batches(n_batches: int, size: int = 32) -> list[list[dict[str, object]]]:
    rng = np.random.default_rng(0)
    out = []
    for b in range(n_batches):
        out.append(
            [
                {
                    "job_id": f"{b:08x}{i:024x}",
                    "model": "digits",
                    "version": "1",
                    "logits": rng.normal(0, 3, 10).tolist(),
                    "pixels": rng.integers(0, 256, 784, dtype=np.uint8).tobytes(),
                    "outlier_score": 100.0,
                    "outlier_threshold": 229.0,
                    "temperature": 0.6,
                    "ink": [0.2, 0.1, 0.8],
                    "embedding": rng.normal(0, 1, 128).astype(np.float16).tobytes(),
                }
                for i in range(size)
            ]
        )
    return out


def run(with_log: bool, work: list[list[dict[str, object]]], var: Path) -> float:
    writer = PredictionWriter(WorkerSettings(var_dir=var, prediction_log=with_log))
    started = time.perf_counter()
    for items in work:
        results = postprocess_items(items)  # type: ignore[arg-type]
        writer.write(items, results)  # type: ignore[arg-type]
    return sum(len(b) for b in work) / (time.perf_counter() - started)


def case(n_batches: int, size: int, reps: int = 3) -> dict[str, float]:
    """Best of ``reps`` (a shared machine's noise only ever slows a run down)."""
    without, with_log = 0.0, 0.0
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            work = batches(n_batches, size)
            without = max(without, run(False, work, Path(tmp)))
            with_log = max(with_log, run(True, work, Path(tmp)))
    log_ms_per_job = 1000 / with_log - 1000 / without
    return {
        "without_log_jobs_per_s": round(without),
        "with_log_jobs_per_s": round(with_log),
        "log_ms_per_job": round(log_ms_per_job, 4),
        "log_ms_per_batch": round(log_ms_per_job * size, 4),
    }


def main() -> None:
    report = {"batch_32": case(150, 32), "batch_1": case(2000, 1)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
