"""`docker compose down` then `up`: what the volumes hold outlives the containers. The registry
(MLflow's volume and the Redis view), the prediction log (PostgreSQL's volume) and jobs that
were queued while no stage worker ran (Redis's AOF) are all there after the restart."""

from __future__ import annotations

from tests.deploy.compose_stack import SERVICES, ComposeStack
from tests.deploy.load import photos


def test_down_then_up_keeps_registry_prediction_log_and_queued_jobs(stack: ComposeStack) -> None:
    production = {m["name"]: m["production"] for m in stack.models()["models"]}
    logged = stack.logged_predictions()
    assert logged > 0

    stack.compose("stop", "preprocess_worker")
    queued = []
    for data, _ in photos(10, seed=31):
        answer = stack.submit(data)
        assert answer.status_code == 202, answer.text
        queued.append(answer.json()["job_id"])

    stack.compose("down", "-t", "20")
    assert not stack.containers("redis", running=False)  # the containers are gone, the volumes stay
    stack.compose("up", "-d", *SERVICES)
    stack.wait_ready()

    assert {m["name"]: m["production"] for m in stack.models()["models"]} == production
    for job_id in queued:
        body = stack.session.get(f"{stack.base_url}/v1/jobs/{job_id}", params={"wait": "30"}, timeout=60).json()
        assert body["status"] == "succeeded", body
    assert stack.logged_predictions() >= logged + len(queued)
    print(f"[deploy] down/up: production {production}, {len(queued)} queued jobs succeeded, prediction log kept")
