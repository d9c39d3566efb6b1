"""``python -m bench.models_bench``: one model against a hundred, through the whole system.

Starts a private stack (the project's supervisor: Redis, gateway, workers, registry service
with its SQLite MLflow), registers 100 models ``m000``..``m099`` (copies of ``models/digits/1``:
one MLflow run's artifacts, 100 registered models each with version 1 as production), then
drives the gateway with a closed loop of ``--inflight`` clients, each job a phone-photo digit:

* ``single``: every job names ``digits``;
* ``spread``: jobs name ``m000``..``m099`` in turn, with the default MAX_LOADED_MODELS (8);
* ``spread-hot``: the same after restarting the inference worker with MAX_LOADED_MODELS=128,
  so every model stays loaded once it was used.

Reported per scenario: jobs/s, latency p50/p99 (submit to answer, ``Prefer: wait``), failures,
and the inference worker's model loads and evictions during the window (its Prometheus
counters). Prints a table and writes JSON (``--out``).

    python -m bench.models_bench [--duration 20] [--inflight 16] [--models 100]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.images import BenchImage, make_images
from bench.paths import CHECKOUT, MODELS
from digitflow.celery_app import make_celery
from digitflow.deploy_protocol import SERVERS
from digitflow.heartbeat import live_workers
from digitflow.model_files import verify_model_dir
from digitflow.model_store import RegistryStore, version_tags
from digitflow.model_view import read_view
from digitflow.redis_client import connect
from digitflow.registry_client import RegistryClient
from digitflow.settings import CoreSettings
from digitflow.tasks import REGISTRY_SYNC
from digitflow_cli.supervisor import StackConfig, Supervisor, build_specs, free_port, redis_spec

WORKERS = {"preprocess": 2, "inference": 1, "postprocess": 1}  # what `make run` starts


@dataclasses.dataclass
class Stack:
    url: str
    redis_url: str
    supervisor: Supervisor


def ready(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        conn.request("GET", "/readyz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@contextlib.contextmanager
def stack_with_registry(var_dir: Path, env: dict[str, str]) -> Iterator[Stack]:
    """A private Redis, then every service ``make run`` starts, the registry service included."""
    port, gateway_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    config = StackConfig(
        var_dir=var_dir,
        redis_url=redis_url,
        gateway_port=gateway_port,
        workers=WORKERS,
        flower=False,
        env=env,
        metrics_ports=(free_port(), free_port(), free_port()),
        registry=True,
    )
    specs = [redis_spec(var_dir, port), *build_specs(config)]
    supervisor = Supervisor(specs, var_dir / "log", restart=False)
    try:
        supervisor.start_all(redis_url)
        stack = Stack(f"http://127.0.0.1:{gateway_port}", redis_url, supervisor)
        wait_until("the stack to be ready", lambda: ready(stack.url), 90)
        yield stack
    finally:
        supervisor.close()


def register_copies(store: RegistryStore, count: int) -> list[str]:
    """``count`` registered models sharing one run's copy of models/digits/1; returns their names."""
    source = MODELS / "digits" / "1"
    tags = version_tags(verify_model_dir(source))
    run_id = store.start_run("bench", "models bench: 100 copies of digits/1")
    store.client.log_artifacts(run_id, str(source), artifact_path="model")
    store.client.set_terminated(run_id, "FINISHED")
    names = [f"m{i:03d}" for i in range(count)]
    for name in names:
        store.ensure_model(name)
        version = store.client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags=tags).version
        store.set_alias(name, "production", str(version))
        store.set_history(name, [str(version)])
    return names


def counters(stack: Stack, service: str = "inference") -> dict[str, float]:
    """Sums of the inference worker's model load / eviction counters."""
    port = stack.supervisor.running[service].spec.env["METRICS_PORT"]
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {"loads": 0.0, "evictions": 0.0, "load_failures": 0.0}
    for line in text.splitlines():
        if line.startswith("digitflow_model_loads_total{"):
            out["load_failures" if 'outcome="failed"' in line else "loads"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("digitflow_model_evictions_total{"):
            out["evictions"] += float(line.rsplit(" ", 1)[1])
    return out


@dataclasses.dataclass
class Tally:
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    failed: dict[str, int] = dataclasses.field(default_factory=dict)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def drive(
    url: str, images: list[BenchImage], models: list[str], inflight: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Closed loop: ``inflight`` clients, each with one keep-alive connection and one job in flight."""
    host, port = url.removeprefix("http://").split(":")
    tally, counter, lock = Tally(), iter(range(10**9)), threading.Lock()
    start = time.monotonic() + warmup_s
    end = start + duration_s

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        while time.monotonic() < end:
            with lock:
                i = next(counter)
            image, model = images[i % len(images)], models[i % len(models)]
            t0 = time.monotonic()
            try:
                conn.request(
                    "POST",
                    f"/v1/jobs?model={model}",
                    body=image.data,
                    headers={"Content-Type": image.content_type, "Prefer": "wait=30"},
                )
                response = conn.getresponse()
                body = json.loads(response.read())
                status = body.get("status") if response.status < 400 else f"http_{response.status}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                status = type(exc).__name__
            t1 = time.monotonic()
            if start <= t1 <= end:
                with tally.lock:
                    if status == "succeeded":
                        tally.latencies_ms.append((t1 - t0) * 1000)
                    else:
                        key = f"{status}:{(body.get('error') or {}).get('code', '-') if status == 'failed' else '-'}"
                        tally.failed[key] = tally.failed.get(key, 0) + 1
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(inflight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + warmup_s + 90)
    lat = np.array(tally.latencies_ms) if tally.latencies_ms else np.zeros(1)
    return {
        "ok": len(tally.latencies_ms),
        "failed": tally.failed,
        "jobs_per_s": round(len(tally.latencies_ms) / duration_s, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }


def restart_inference(stack: Stack, env: dict[str, str]) -> None:
    """Restart the inference worker with more environment, and wait until it serves again."""
    sup = stack.supervisor
    spec = sup.running["inference"].spec
    sup.stop("inference")
    sup.start(dataclasses.replace(spec, env={**spec.env, **env}))
    wait_until("the restarted inference worker", lambda: ready(stack.url), 90)


def wait_until(what: str, predicate: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    var_dir = Path(tempfile.mkdtemp(prefix="digitflow-models-bench-"))
    images = make_images(args.images)
    env = {"TASK_EVENTS": "false", "LOG_LEVEL": "WARNING", "HEARTBEAT_INTERVAL_S": "0.5", "HEARTBEAT_TTL_S": "3"}
    report: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}, "scenarios": {}}
    with stack_with_registry(var_dir, env) as stack:
        redis_url = stack.redis_url
        client = connect(redis_url)
        wait_until("the registry view", lambda: "digits" in read_view(client))
        settings = CoreSettings(redis_url=redis_url, var_dir=var_dir)
        began = time.monotonic()
        names = register_copies(RegistryStore(settings.tracking_uri, settings.artifact_root), args.models)
        registry = RegistryClient(make_celery("bench", settings), redis_url, 3.0)
        registry.call(REGISTRY_SYNC, {}, timeout_s=120)
        report["register_s"] = round(time.monotonic() - began, 1)
        print(f"registered {len(names)} models in {report['register_s']} s", file=sys.stderr, flush=True)
        scenarios = [
            ("single", ["digits"], None),
            ("spread", names, None),
            ("spread-hot", names, {"MAX_LOADED_MODELS": "128"}),
        ]
        for label, models, restart in scenarios:
            if restart:
                restart_inference(stack, restart)
            wait_until("a deploy watcher", lambda: live_workers(client, 3.0, [SERVERS])[SERVERS])
            before = counters(stack)
            result = drive(stack.url, images, models, args.inflight, args.warmup, args.duration)
            after = counters(stack)
            result.update({k: after[k] - before[k] for k in after}, models=len(models))
            report["scenarios"][label] = result
            print(
                f"  {label:<11} {result['jobs_per_s']:7.1f} jobs/s  p50 {result['p50_ms']:7.1f}  "
                f"p99 {result['p99_ms']:7.1f} ms  loads {result['loads']:.0f}  "
                f"evictions {result['evictions']:.0f}  failed {result['failed']}",
                file=sys.stderr,
                flush=True,
            )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.models_bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--out", type=Path, default=CHECKOUT / "var" / "bench" / "models_bench.json")
    args = parser.parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["scenarios"], indent=2))
    print(f"JSON report: {args.out}", file=sys.stderr)
    return 0 if all(not s["failed"] for s in report["scenarios"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
