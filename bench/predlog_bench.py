"""What the prediction log costs the postprocess stage: jobs/s of the postprocess step alone vs.
the step plus its one-transaction-per-batch SQLite write (in-process, batches of 32).

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


def main() -> None:
    report = {}
    for rep in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            work = batches(150)
            report[f"run{rep}"] = {
                "without_log_jobs_per_s": round(run(False, work, Path(tmp))),
                "with_log_jobs_per_s": round(run(True, work, Path(tmp))),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
