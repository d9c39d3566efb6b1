"""``make drift-demo``: the monitoring loop end to end, with real workers and compressed time.

A private Redis and a whole stack (gateway, stage workers, registry, monitor + beat, training
worker) under ``var/drift-demo/``. Time is compressed: the "1h" window is 30 s, series buckets
are 5 s, the monitor runs every 3 s. Traffic is paced at RATE jobs/s, with feedback (the true
label) on FEEDBACK of the jobs:

1. normal: held-out MNIST digits as paper photos (the model's held-out accuracy applies);
2. shifted: a new population, other writers' digits scanned at low resolution and blown up
   (scikit-learn's optdigits, 43 writers none of whom is in the training data; the quarter of
   them in the retrain gate's regression suite is never sent), until the monitor has raised a
   drift alert, retrained, released the candidate and the canary has promoted it;
3. after: fresh digits of that population (never sent before), served by the new version.

The end state: the new version's accuracy on the new population, against every other population
of the retrain gate's fixed suites, before and after (the retrain outcome's suite record).
Prints and saves ``var/drift-demo/drift_demo.json`` (with every job) and ``drift_demo.png``
(accuracy over time, the shift, the detection, the retrain's start, the promotion); the summary
and the plot are also copied to ``bench/results/``.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image, ImageFilter

from bench import upload_render as ur
from bench.paths import CHECKOUT
from bench.population_suites import optdigits
from digitflow_cli.main import bootstrap_registry
from digitflow_cli.supervisor import StackConfig, Supervisor, build_specs, free_port, redis_spec
from training_worker.datasets import load_mnist_5k

VAR = CHECKOUT / "var" / "drift-demo"
RESULTS = CHECKOUT / "bench" / "results"
RATE, FEEDBACK, CLIENTS = 10.0, 0.6, 4
N_NORMAL, N_AFTER = 500, 450
SHIFTED_ROUNDS = 6  # about 12 minutes of shifted traffic at most
SCAN_SEED = 6161
ENV = {
    "MONITOR_INTERVAL_S": "3",
    "WINDOW_SCALE": str(30 / 3600),
    "BUCKET_S": "5",
    "MAX_BUCKETS": "120",
    "MIN_JOBS": "60",
    "SAMPLE_SIZE": "200",
    "RETRAIN_MIN_LABELS": "500",
    "RETRAIN_EPOCHS": "4",
    "RETRAIN_HOLDBACK": "0.2",
    "RETRAIN_COOLDOWN_S": "60",
    # The retrained candidate serves half the traffic; 100 of its jobs decide its promotion.
    "CANARY_SHARE": "0.5",
    "MIN_CANARY_JOBS": "100",
    "HEARTBEAT_INTERVAL_S": "0.5",
    "HEARTBEAT_TTL_S": "3",
    "LOG_LEVEL": "WARNING",
}


def new_population() -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]]]:
    """(shifted pool, after) of optdigits scans; every 4th digit (the gate's regression suite,
    bench/make_regression_suites.py) is left out, the last N_AFTER are kept for after."""
    images, labels = optdigits()
    rng = np.random.default_rng(SCAN_SEED)
    keep = [i for i in rng.permutation(len(labels)) if i % 4 != 0]
    scans = [(ur.lowres_scan(images[i], rng), int(labels[i])) for i in keep]
    return scans[:-N_AFTER], scans[-N_AFTER:]


def photo(img: np.ndarray, angle: float = 0.0, thick: int = 0) -> bytes:
    """A 28x28 digit as dark ink on white paper (112 px), optionally rotated and thickened."""
    im = Image.fromarray(img).resize((112, 112), Image.Resampling.BICUBIC)
    if thick:
        im = im.filter(ImageFilter.MaxFilter(thick))
    if angle:
        im = im.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    out = io.BytesIO()
    Image.fromarray(255 - np.asarray(im)).save(out, "PNG")
    return out.getvalue()


class Traffic:
    """Paced clients: every job's (time, phase, truth, label, version, outlier) is recorded."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.local = threading.local()
        self.rng = np.random.default_rng(0)

    def _session(self) -> requests.Session:
        if not hasattr(self.local, "s"):
            self.local.s = requests.Session()
        return self.local.s  # type: ignore[no-any-return]

    def one(self, data: bytes, truth: int, phase: str, give_feedback: bool) -> None:
        s, sent = self._session(), time.time()
        r = s.post(f"{self.base}/v1/jobs", data=data, headers={"Content-Type": "image/png", "Prefer": "wait=20"})
        job = r.json()
        if job.get("status") not in ("succeeded", "failed") and "job_id" in job:
            job = s.get(f"{self.base}/v1/jobs/{job['job_id']}?wait=20").json()
        rec = {"t": sent, "phase": phase, "truth": truth, "status": job.get("status")}
        if job.get("status") == "succeeded":
            res = job["result"]
            rec.update(label=res["label"], version=job["model"]["version"], outlier=res["outlier"])
            if give_feedback:
                s.post(f"{self.base}/v1/jobs/{job['job_id']}/feedback", json={"label": truth})
        with self.lock:
            self.records.append(rec)

    def run(self, pool: ThreadPoolExecutor, items: list[tuple[bytes, int]], phase: str, stop: Any = None) -> int:
        """Send ``items`` at RATE jobs/s (until ``stop()`` is true); returns how many were sent."""
        start = time.monotonic()
        futures = []
        for i, (data, truth) in enumerate(items):
            if stop is not None and stop():
                break
            time.sleep(max(0.0, start + i / RATE - time.monotonic()))
            futures.append(pool.submit(self.one, data, truth, phase, bool(self.rng.random() < FEEDBACK)))
        for f in futures:
            f.result()
        return len(futures)


def accuracy(records: list[dict[str, Any]]) -> float | None:
    done = [r for r in records if r["status"] == "succeeded"]
    return round(float(np.mean([r["label"] == r["truth"] for r in done])), 4) if done else None


def end_state(outcome: dict[str, Any] | None, after: float | None) -> dict[str, Any] | None:
    """The new version on the new population against the best other population, and what each
    regression population gained or lost (from the retrain gate's suite record)."""
    if outcome is None or after is None:
        return None
    suites = outcome["suites"]["suites"]
    others = {name: r["candidate"] for name, r in suites.items() if name != "mnist_heldout_augmented"}
    best = max(others, key=lambda n: others[n])
    return {
        "new_population_after": after,
        "best_population": best,
        "best_accuracy": others[best],
        "gap_to_best_points": round(100 * (others[best] - after), 1),
        "change_points": {n: round(100 * (r["candidate"] - r["production"]), 1) for n, r in suites.items()},
        "worst_change_points": round(min(100 * (r["candidate"] - r["production"]) for r in suites.values()), 1),
    }


def plot(result: dict[str, Any], records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = records[0]["t"]
    done = sorted((r for r in records if r["status"] == "succeeded"), key=lambda r: r["t"])
    xs, ys = [], []
    for i in range(0, len(done) - 49, 25):
        chunk = done[i : i + 50]
        xs.append(chunk[-1]["t"] - t0)
        ys.append(np.mean([r["label"] == r["truth"] for r in chunk]))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(xs, ys, label="accuracy (rolling 50 jobs)")
    marks = (("shift_at", "orange"), ("detected_at", "red"), ("retrain_started_at", "purple"), ("promoted_at", "green"))
    for key, colour in marks:
        if result.get(key):
            ax.axvline(result[key] - t0, color=colour, linestyle="--", label=key.replace("_at", ""))
    ax.set_xlabel("seconds")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.5, 1.01)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> dict[str, Any]:
    shutil.rmtree(VAR, ignore_errors=True)
    VAR.mkdir(parents=True)
    port = free_port()
    redis = redis_spec(VAR, port)
    cfg = StackConfig(
        var_dir=VAR,
        redis_url=f"redis://127.0.0.1:{port}/0",
        gateway_port=free_port(),
        flower=False,
        metrics_ports=(free_port(), free_port(), free_port()),
        monitoring=True,
        env=ENV,
    )
    bootstrap_registry(cfg)
    sup = Supervisor([redis, *build_specs(cfg)], VAR / "log")
    try:
        sup.start_all(cfg.redis_url)
        return _scenario(f"http://127.0.0.1:{cfg.gateway_port}", sup)
    finally:
        sup.close()


def _wait_ready(base: str, sup: Supervisor) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sup.poll()
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"stack not ready; logs in {VAR / 'log'}")


def _scenario(base: str, sup: Supervisor) -> dict[str, Any]:
    _wait_ready(base, sup)
    images, labels, held = load_mnist_5k()
    held = held[np.random.default_rng(2).permutation(len(held))]  # the split is stored sorted by class
    normal = [(photo(images[i]), int(labels[i])) for i in held[:N_NORMAL]]
    shifted_pool, after = new_population()
    traffic = Traffic(base)
    result: dict[str, Any] = {"rate_jobs_per_s": RATE, "feedback_share": FEEDBACK, "settings": ENV}
    state: dict[str, Any] = {"detected": None, "promoted": None, "retraining": [], "false_alarms": set()}

    def watch() -> None:
        while state.get("running", True):
            body = requests.get(f"{base}/v1/monitoring/digits", timeout=5).json()
            state["retraining"] = body.get("retraining", [])
            for v in body.get("versions", []):
                drift = [a for a in v["alerts"] if a["kind"].endswith("drift") or a["kind"] == "accuracy_drop"]
                if v["production"] and v["version"] == "1" and drift and not state.get("shift_at"):
                    state["false_alarms"] |= {f"{a['kind']}@{a['window']}" for a in drift}
                if (
                    v["production"]
                    and v["version"] == "1"
                    and drift
                    and state.get("shift_at")
                    and not state["detected"]
                ):
                    state["detected"] = (body["generated_at"], sorted({a["kind"] for a in drift}))
            # A retrain is released as the canary candidate; promoted once it is production.
            if any(v["production"] and v["version"] != "1" for v in body.get("versions", [])) and not state["promoted"]:
                state["promoted"] = time.time()
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        traffic.run(pool, normal, "normal")
        state["shift_at"] = time.time()
        # Until a retrain is promoted (a first retrain the gate turns down costs a cooldown and a
        # second one), at most SHIFTED_ROUNDS passes over the pool.
        traffic.run(pool, shifted_pool * SHIFTED_ROUNDS, "shifted", stop=lambda: state["promoted"] is not None)
        time.sleep(3)  # the promotion has reached every inference process
        traffic.run(pool, after, "after")
    state["running"] = False
    recs = traffic.records
    shifted = [r for r in recs if r["phase"] == "shifted"]
    detected_at = state["detected"][0] if state["detected"] else None
    promoted = next((r for r in state["retraining"] if r.get("candidate")), None)
    result.update(
        normal_accuracy=accuracy([r for r in recs if r["phase"] == "normal"]),
        shifted_accuracy_before_retrain=accuracy([r for r in shifted if r.get("version") == "1"]),
        shifted_jobs_before_detection=sum(r["t"] <= detected_at for r in shifted) if detected_at else None,
        detected_kinds=state["detected"][1] if state["detected"] else None,
        shift_at=state["shift_at"],
        detected_at=detected_at,
        promoted_at=state["promoted"],
        retrain_started_at=promoted["at"] if promoted else None,
        retraining=state["retraining"],
        after_accuracy=accuracy([r for r in recs if r["phase"] == "after"]),
        after_versions=sorted({str(r.get("version")) for r in recs if r["phase"] == "after"}),
        heldout_before=promoted["production"]["heldout"] if promoted else None,
        heldout_after=promoted["new"]["heldout"] if promoted else None,
        jobs=len(recs),
        failed=sum(r["status"] != "succeeded" for r in recs),
        alerts_before_shift=sorted(state["false_alarms"]),
        shift="optdigits: other writers' digits scanned at low resolution (bench.upload_render.lowres_scan)",
        end_state=end_state(promoted, accuracy([r for r in recs if r["phase"] == "after"])),
        outlier_rate_shifted=round(float(np.mean([bool(r.get("outlier")) for r in shifted])), 4) if shifted else None,
    )
    (VAR / "drift_demo.json").write_text(json.dumps({**result, "records": recs}, indent=1, default=str))
    plot(result, recs, VAR / "drift_demo.png")
    # The summary and the plot are kept with the other benchmark results (the records stay in var/).
    (RESULTS / "drift_demo.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    shutil.copyfile(VAR / "drift_demo.png", RESULTS / "drift_demo.png")
    print(json.dumps(result, indent=2, default=str))
    print(f"saved {VAR / 'drift_demo.json'} and {VAR / 'drift_demo.png'}")
    return result


if __name__ == "__main__":
    main()
