"""The prediction log's store reset under a running stack (issue 31): PostgreSQL's volume is
deleted and the database comes back empty while Redis keeps its state. Jobs keep succeeding
(the services reconnect and create the log's tables again), and the monitor notices the new
log's identity and resets the Redis state that pointed into the old one, with one log line."""

from __future__ import annotations

import json

from tests.conftest import wait_until
from tests.deploy.compose_stack import ComposeStack
from tests.deploy.load import photos


def monitor_resets(stack: ComposeStack) -> list[dict[str, object]]:
    lines = stack.logs(stack.container("monitor_worker"), tail=5000).splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{") and "store_state_reset" in line]
    return [e for e in events if e.get("event") == "store_state_reset"]


def test_a_reset_prediction_log_volume_with_redis_kept(stack: ComposeStack) -> None:
    for data, _ in photos(5, seed=41):
        assert stack.submit(data, wait=10).json()["status"] == "succeeded"
    before = len(monitor_resets(stack))
    postgres = stack.container("postgres")
    volume = next(m["Name"] for m in stack.engine.inspect([postgres])[0]["Mounts"] if m["Type"] == "volume")  # type: ignore[union-attr]

    stack.compose("rm", "-s", "-f", "postgres")
    stack.engine.podman("volume", "rm", volume)
    stack.compose("up", "-d", "--no-deps", "postgres")
    ready = "pg_isready -q && echo ok || echo no"
    wait_until(lambda: stack.exec("postgres", ready, timeout=30).strip() == "ok", 120, 2, what="postgres")

    answers = [stack.submit(data, wait=20).json() for data, _ in photos(10, seed=43)]
    assert all(a["status"] == "succeeded" for a in answers), [a.get("error") for a in answers]
    wait_until(lambda: stack.logged_predictions() >= 10, 60, 2, what="the new log has rows")
    # The monitor checks the log's identity before each report (MONITOR_INTERVAL_S, 60 s).
    wait_until(lambda: len(monitor_resets(stack)) > before, 150, 3, what="the monitor's store_state_reset line")
    print(f"[deploy] prediction log volume reset: {json.dumps(monitor_resets(stack)[-1])[:400]}")
