"""A stage scales by replicas of its container: `--scale preprocess_worker=3` and two inference
replicas each take work (each one's own /metrics counts jobs) and Prometheus, finding them by
DNS, scrapes every one."""

from __future__ import annotations

from tests.conftest import wait_until
from tests.deploy.compose_stack import ComposeStack
from tests.deploy.load import Load

SCALE = {"preprocess_worker": 3, "inference_worker": 2}
STAGE = {"preprocess_worker": "preprocess", "inference_worker": "inference"}


def test_every_replica_does_work_and_prometheus_scrapes_every_replica(stack: ComposeStack) -> None:
    args = [arg for service, n in SCALE.items() for arg in ("--scale", f"{service}={n}")]
    stack.compose("up", "-d", "--no-deps", "--no-recreate", *args, *SCALE)
    for service, n in SCALE.items():
        wait_until(lambda s=service, k=n: len(stack.containers(s)) == k, 120, 1, what=f"{n} {service} replicas")
    stack.wait_ready()

    load = Load(stack.base_url, total=240, inflight=16, seed=11).start()
    load.join(timeout_s=300)
    print(load.tally.line("scaled load (3 preprocess, 2 inference replicas)", None))
    assert all(r["status"] == "succeeded" for r in load.tally.results.values())

    for service, stage in STAGE.items():
        counts = {
            c: stack.metric(c, "digitflow_jobs_processed_total", f'stage="{stage}"') for c in stack.containers(service)
        }
        print(f"[deploy] {service} jobs per replica: {counts}")
        assert len(counts) == SCALE[service] and all(v > 0 for v in counts.values()), counts

    def every_replica_scraped() -> bool:
        for service, stage in STAGE.items():
            series = stack.prometheus(f'digitflow_jobs_processed_total{{job="{service}",stage="{stage}"}} > 0')
            if len({s["metric"]["instance"] for s in series}) < SCALE[service]:
                return False
        return True

    # DNS service discovery refreshes every 30 s and scrapes every 15 s (deploy/prometheus).
    wait_until(every_replica_scraped, timeout_s=120, interval_s=3, what="Prometheus scrapes every replica")
    targets = stack.session.get(
        f"http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}/api/v1/targets", params={"state": "active"}, timeout=30
    ).json()["data"]["activeTargets"]
    up = {(t["labels"]["job"], t["labels"]["instance"]) for t in targets if t["health"] == "up"}
    for service, n in SCALE.items():
        assert len({i for job, i in up if job == service}) == n, up
