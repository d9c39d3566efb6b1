"""Each image's files, installed as the Dockerfile installs them, run as the image runs them.

No Docker engine runs here, so for every Dockerfile target this copies exactly what the target
COPYs into an empty folder, builds a wheel from it and installs it non-editable into a fresh
virtual environment, then starts the target's CMD from an unrelated working directory (nothing
of the checkout on sys.path) against a real Redis, and waits until the service is up: its
heartbeat in Redis, its HTTP port, or its first scheduled message. The training target must
also load its base data set there. A package file an image forgets to COPY, a shipped file
missing from the wheel's package data or a path computed from the git checkout fails here.

Third-party dependencies come from this checkout's virtual environment through a ``.pth`` line
(reinstalling torch per target would take minutes); the extras each package needs are checked
by ``tests/unit/test_import_contracts.py``. The mlflow target installs only MLflow and is not
ours to test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests

from digitflow_cli.supervisor import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def dockerfile_stages() -> dict[str, tuple[str, str]]:
    """stage -> (parent, body) for every ``FROM parent AS stage``."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM (\S+) AS ([\w-]+)\s*$", text, flags=re.MULTILINE)
    return {parts[i + 1]: (parts[i], parts[i + 2]) for i in range(1, len(parts), 3)}


def copied(stage: str) -> list[str]:
    """What the stage and the stages it builds on COPY into the image (sources, in order)."""
    stages = dockerfile_stages()
    parent, body = stages[stage]
    inherited = copied(parent) if parent in stages else []
    own = [src for line in re.findall(r"^COPY (.+)$", body, re.MULTILINE) for src in line.split()[:-1]]
    return inherited + own


def command(stage: str) -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", dockerfile_stages()[stage][1], re.MULTILINE)
    assert match, f"{stage} has no CMD"
    return list(json.loads(match.group(1)))


def install(stage: str, workdir: Path) -> Path:
    """The image's /app, built into a wheel and installed into a fresh venv; returns its bin/."""
    app = workdir / "app"
    app.mkdir()
    for src in copied(stage):
        target = app / src
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / src, target)
    wheels = workdir / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
        cwd=app,
        check=True,
        capture_output=True,
        timeout=300,
    )
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # After the fresh venv's own site-packages: the dev venv's third-party packages. Its .pth
    # files (the editable install of this checkout among them) are not processed from here.
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("digitflow-*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv / "bin"


def heartbeat(client: redis.Redis, queue: str) -> Callable[[], bool]:
    return lambda: bool(client.zrange(f"df:workers:{queue}", 0, -1))


def http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return requests.get(url, timeout=2).status_code < 500
        except requests.RequestException:
            return False

    return probe


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


TARGETS = ["gateway", "preprocess", "inference", "postprocess", "registry", "monitor", "training", "flower"]


@pytest.mark.parametrize("stage", TARGETS)
def test_the_image_installs_and_its_command_starts_from_another_directory(
    stage: str, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    bin_dir = install(stage, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = command(stage)
    python = str(bin_dir / "python")
    # Console scripts of the dependencies live in the dev venv: run them as modules of this one.
    argv = [python, *argv[1:]] if argv[0] == "python" else [python, "-m", *argv]
    port = free_port()
    var = tmp_path / "var"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "REDIS_URL": redis_url,
        "VAR_DIR": str(var),
        "PROMETHEUS_MULTIPROC_DIR": str(var / "prom"),
        "METRICS_PORT": str(free_port()),
        "GATEWAY_BIND": f"127.0.0.1:{port}",
        "FLOWER_PORT": str(port),
        "MONITOR_INTERVAL_S": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    up = {
        "gateway": http_ok(f"http://127.0.0.1:{port}/healthz"),
        "flower": http_ok(f"http://127.0.0.1:{port}/"),
    }.get(stage) or heartbeat(clean_redis, argv[argv.index("-Q") + 1])
    with (tmp_path / "service.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while not up():
            assert proc.poll() is None, f"{stage} exited: {(tmp_path / 'service.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"{stage} never came up: {(tmp_path / 'service.log').read_text()[-3000:]}"
            )
            time.sleep(0.3)
        # Imported from the fresh venv, never from the checkout.
        probe = "import digitflow, sys; print(digitflow.__file__)"
        where = subprocess.run(
            [str(bin_dir / "python"), "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True
        )
        assert where.returncode == 0 and str(tmp_path / "venv") in where.stdout, where.stdout + where.stderr
        if stage == "training":
            load = "from training_worker.datasets import load_dataset\nd = load_dataset('digits')\n"
            load += "print(len(d.y_train), len(d.y_held), len(d.x_outlier))"
            got = subprocess.run(
                [str(bin_dir / "python"), "-c", load], cwd=elsewhere, env=env, capture_output=True, text=True
            )
            # The same data the shipped digits/1 was trained on (its model.json records the sizes).
            metrics = json.loads((ROOT / "digitflow/shipped_models/digits/1/model.json").read_text())["metrics"]
            expected = [str(metrics["n_train"]), str(metrics["n_heldout"]), str(metrics["outlier_exposure"]["n"])]
            assert got.returncode == 0 and got.stdout.split() == expected, got.stderr[-2000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    text = (tmp_path / "service.log").read_text()
    assert "Traceback" not in text, text[-3000:]


def test_monitor_beat_from_the_monitor_image_schedules_its_report(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """compose runs the monitor image twice: the worker (above) and its beat."""
    bin_dir = install("monitor", tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = [
        str(bin_dir / "python"),
        "-m",
        "celery",
        "-A",
        "monitor_worker.worker:app",
        "beat",
        "--scheduler",
        "celery.beat:Scheduler",
    ]
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "REDIS_URL": redis_url,
        "VAR_DIR": str(tmp_path / "var"),
        "MONITOR_INTERVAL_S": "1",
    }
    proc = subprocess.Popen(argv, cwd=elsewhere, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not clean_redis.llen("monitor"):
            assert proc.poll() is None and time.monotonic() < deadline, "beat sent no monitor.run"
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(20)
