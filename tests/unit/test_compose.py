"""compose.yaml cannot rot: its services, commands, queues and health checks match the code."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from digitflow.tasks import QUEUE_OF_STAGE
from digitflow_cli.supervisor import StackConfig, build_specs

ROOT = Path(__file__).resolve().parents[2]
WORKERS = {"preprocess_worker": "preprocess", "inference_worker": "inference", "postprocess_worker": "postprocess"}
SECRETS = {"REDIS_PASSWORD": "test-secret", "FLOWER_USER": "admin", "FLOWER_PASSWORD": "test-pass"}
SECRETS["POSTGRES_PASSWORD"] = "pg-pass"
SECRETS["GRAFANA_PASSWORD"] = "grafana-pass"
MONITORING = {"monitor_worker", "monitor_beat", "training_worker", "postgres"}
OBSERVABILITY = {"prometheus", "grafana", "jaeger"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def dockerfile_stages() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM .* AS ([\w-]+)\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_service_is_there_with_a_health_check_and_restart_policy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "redis",
        "gateway",
        *WORKERS,
        "registry_worker",
        "mlflow",
        "flower",
        *MONITORING,
        *OBSERVABILITY,
    }
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name


def test_redis_persists_with_aof_and_a_password(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "--requirepass" in command


@pytest.mark.parametrize(("service", "stage"), WORKERS.items())
def test_worker_commands_match_the_real_entry_points(compose: dict[str, Any], service: str, stage: str) -> None:
    command = compose["services"][service]["command"]
    app = command[command.index("-A") + 1]
    module, attr = app.split(":")
    assert module == f"{service}.worker" and attr == "app"
    source = (ROOT / service / "worker.py").read_text()
    assert re.search(r"^app = create_worker_app\(", source, re.MULTILINE), f"{module} defines no Celery app"
    assert command[command.index("-Q") + 1] == QUEUE_OF_STAGE[stage]
    # The same entry point and queue as `make run` starts.
    local = {s.name: s.argv for s in build_specs(StackConfig(flower=False))}[stage]
    assert local[local.index("-A") + 1] == app and local[local.index("-Q") + 1] == QUEUE_OF_STAGE[stage]
    assert compose["services"][service]["build"]["target"] == stage


def test_gateway_runs_the_slow_client_safe_server_everywhere(compose: dict[str, Any]) -> None:
    """compose, the Dockerfile's gateway image and `make run` start the same server module, and
    compose passes the client keys through (an unset API_KEYS would leave submission open)."""
    gateway = compose["services"]["gateway"]
    command = gateway["command"]
    assert command == ["python", "-m", "gateway.serve"] and importlib.util.find_spec(command[-1]) is not None
    assert f"CMD {json.dumps(command)}" in dockerfile_stages()["gateway"]
    local = {s.name: s.argv for s in build_specs(StackConfig(flower=False))}["gateway"]
    assert local[1:] == command[1:]
    assert gateway["environment"]["API_KEYS"] == "${API_KEYS:-}"
    # MLflow has no authentication: the gateway is given no way to it (and imports no mlflow).
    assert not any(name.startswith("MLFLOW") for name in gateway["environment"])
    assert "mlflow" not in gateway.get("depends_on", {})


def test_only_the_inference_and_training_images_install_torch() -> None:
    stages = dockerfile_stages()
    assert {"gateway", "preprocess", "inference", "training", "postprocess", "flower"} <= set(stages)
    for name, body in stages.items():
        installs_torch = any(f"install-deps {extra}" in body for extra in ("inference", "training")) or (
            "torch" in body
        )
        assert installs_torch == (name in {"inference", "inference-cuda", "training"}), name


def test_docker_compose_validates_the_file() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (Debian package) is not installed; `make system-deps` installs it")
    env = {**os.environ, **SECRETS}
    result = subprocess.run(
        [exe, "-f", str(ROOT / "compose.yaml"), "config", "-q"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    bare = {k: v for k, v in os.environ.items() if k not in SECRETS}
    refused = subprocess.run(
        [exe, "-f", str(ROOT / "compose.yaml"), "config", "-q"], env=bare, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "REDIS_PASSWORD" in refused.stderr


def test_registry_service_matches_its_entry_point_and_reaches_mlflow(compose: dict[str, Any]) -> None:
    service = compose["services"]["registry_worker"]
    command = service["command"]
    assert command[command.index("-A") + 1] == "registry_worker.worker:app"
    assert command[command.index("-Q") + 1] == "registry" and command[command.index("--pool") + 1] == "solo"
    assert re.search(r"^app = create_worker_app\(", (ROOT / "registry_worker" / "worker.py").read_text(), re.MULTILINE)
    local = {s.name: s for s in build_specs(StackConfig(flower=False))}["registry"]
    assert local.argv[local.argv.index("-A") + 1] == "registry_worker.worker:app"
    assert local.argv[local.argv.index("-Q") + 1] == "registry" and "solo" in local.argv
    assert service["build"]["target"] == "registry"
    # Whatever needs MLflow is told where it is; what must not import it is not.
    for name in ("registry_worker", "inference_worker"):
        assert compose["services"][name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert "mlflow" in compose["services"][name]["depends_on"], name
    for name in ("gateway", "preprocess_worker", "postprocess_worker"):
        assert "MLFLOW_TRACKING_URI" not in compose["services"][name]["environment"], name
    for name in ("registry", "inference"):
        assert local.env["MLFLOW_TRACKING_URI"].startswith("sqlite:///"), name


def test_mlflow_server_keeps_its_store_and_artifacts_in_a_volume(compose: dict[str, Any]) -> None:
    service = compose["services"]["mlflow"]
    command = service["command"]
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--backend-store-uri") + 1].startswith("sqlite:////mlflow/")
    assert command[command.index("--artifacts-destination") + 1].startswith("/mlflow/")
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert any(v.endswith(":/mlflow") for v in service["volumes"]) and "mlflow-data" in compose["volumes"]
    stages = dockerfile_stages()
    assert "mlflow==" in stages["mlflow"] and "install-deps registry" in stages["registry"]


def test_prediction_log_is_postgres_for_exactly_the_services_that_use_it(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:") and "postgres-data" in compose["volumes"]
    users = {"gateway", "postprocess_worker", "monitor_worker", "monitor_beat", "training_worker"}
    for name in users:
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://"), name
    for name in ("preprocess_worker", "inference_worker", "registry_worker"):
        assert "DATABASE_URL" not in services[name]["environment"], name
    stages = dockerfile_stages()
    for stage in ("gateway", "postprocess", "monitor", "training"):
        assert "postgres" in stages[stage], stage


def test_monitor_and_training_services_match_the_local_stack(compose: dict[str, Any]) -> None:
    local = {s.name: s.argv for s in build_specs(StackConfig(flower=False, monitoring=True))}
    for service, name, app, queue in (
        ("monitor_worker", "monitor", "monitor_worker.worker:app", "monitor"),
        ("training_worker", "training", "training_worker.worker:app", "training"),
    ):
        command = compose["services"][service]["command"]
        for argv in (command, local[name]):
            assert argv[argv.index("-A") + 1] == app and argv[argv.index("-Q") + 1] == queue
            assert argv[argv.index("--pool") + 1] == "solo"
    beat = compose["services"]["monitor_beat"]["command"]
    for argv in (beat, local["monitor-beat"]):
        assert "beat" in argv and argv[argv.index("--scheduler") + 1] == "celery.beat:Scheduler"  # no shelve file
    assert compose["services"]["training_worker"]["build"]["target"] == "training"
    assert "monitor" not in {s.name for s in build_specs(StackConfig(flower=False))}


def test_only_the_registry_clients_can_reach_mlflow(compose: dict[str, Any]) -> None:
    """MLflow has no authentication: it sits on an internal network of its own clients."""
    services = compose["services"]
    assert compose["networks"]["registry"]["internal"] is True
    assert services["mlflow"]["networks"] == ["registry"]
    clients = {"inference_worker", "registry_worker", "monitor_worker", "monitor_beat", "training_worker"}
    for name, service in services.items():
        on_registry = "registry" in service.get("networks", [])
        assert on_registry == (name in clients | {"mlflow"}), name
        if name in clients:
            assert "default" in service["networks"], f"{name} must still reach Redis"


def test_every_service_is_hardened_and_shares_nothing_but_the_network(compose: dict[str, Any]) -> None:
    """Read-only root and a tmpfs /tmp everywhere, as the Kubernetes manifests declare; non-root
    (the image's USER, or `user:` for the public images that start as root); a named volume is
    mounted by one service at most (the config bind mounts are read-only)."""
    stages = dockerfile_stages()
    owners: dict[str, str] = {}
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, name
        assert any(str(path).split(":")[0] == "/tmp" for path in service["tmpfs"]), name
        target = service.get("build", {}).get("target")
        if target:
            assert "\nUSER digitflow" in stages[target] or "\nUSER mlflow" in stages[target], name
        elif name in {"redis", "postgres"}:
            assert service["user"] == name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert volume.endswith(":ro"), (name, volume)
            else:
                assert owners.setdefault(source, name) == name, f"{source} is shared by {owners[source]} and {name}"
    assert compose["services"]["grafana"]["profiles"] == ["dashboards"]
