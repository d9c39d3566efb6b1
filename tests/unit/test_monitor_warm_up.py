"""The monitor worker imports MLflow and opens the prediction log when it starts, not in its
first report (which would spend seconds of CPU beside the job path): a fresh interpreter loads
monitor_worker.worker, then Celery's worker_ready fires; the warm-up runs in a thread, which
waits for the registry to list a version (none answers here: the wait is set to one look)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
import threading
import monitor_worker.worker
import monitor_worker.tasks
from celery.signals import worker_ready
monitor_worker.tasks.WARM_UP_WAIT_S = 0.0
before = "mlflow" in sys.modules
worker_ready.send(sender=None)
threads = [t for t in threading.enumerate() if t.name == "monitor-warm-up"]
for t in threads:
    t.join(60)
print(json.dumps({"before": before, "after": "mlflow" in sys.modules, "threads": len(threads)}))
"""


def test_mlflow_is_imported_at_worker_start_not_in_the_first_report(tmp_path: Path) -> None:
    env = {**os.environ, "VAR_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"before": False, "after": True, "threads": 1}
    assert (tmp_path / "predictions.db").is_file()  # the prediction log was opened (SQLite by default)
    assert "monitor_warmed_up" in done.stderr  # the event a real worker logs at start, with its duration
