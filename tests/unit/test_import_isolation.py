"""The light services never load torch or MLflow: the gateway reaches the registry through the
registry service and a Redis view, and the pre/post workers need neither."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "mlflow")


@pytest.mark.parametrize(
    "code",
    [
        "from gateway import create_app; from digitflow.settings import GatewaySettings; "
        "app = create_app(GatewaySettings(admin_token='a-long-enough-secret')); "
        "import gateway.models_api, gateway.jobs_api, gateway.uploads, gateway.monitoring_api",
        "import preprocess_worker.worker, preprocess_worker.tasks, preprocess_worker.steps_fashion",
        "import postprocess_worker.worker, postprocess_worker.tasks",
        "import digitflow_cli.main, digitflow_cli.models_cmd, digitflow.model_view, digitflow.registry_client",
    ],
    ids=["gateway", "preprocess", "postprocess", "cli"],
)
def test_light_services_import_neither_torch_nor_mlflow(code: str, tmp_path: Path) -> None:
    probe = (
        f"{code}\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    env = {"PATH": "/usr/bin:/bin", "VAR_DIR": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_probe_can_fail() -> None:
    """The same probe sees torch when the inference worker's code is imported."""
    probe = "import inference_worker.serving, sys; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True", result.stderr[-2000:]
