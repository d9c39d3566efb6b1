"""A model version made in the training container, registered in the MLflow container and
promoted through the gateway reaches every inference replica: the replicas share no volume,
each fetches the version from MLflow itself."""

from __future__ import annotations

import json

from tests.deploy.compose_stack import ComposeStack
from tests.deploy.load import photos

TRAIN = (
    "from training_worker.register import train_and_register; "
    "from training_worker.settings import TrainingSettings; "
    "from training_worker.trainer import TrainConfig; import json; "
    "print(json.dumps(train_and_register('digits', TrainingSettings.from_env(), TrainConfig(epochs=1, threads=2), "
    "progress=False)))"
)


def test_retrain_register_promote_reaches_every_inference_replica(stack: ComposeStack) -> None:
    replicas = stack.containers("inference_worker")
    assert len(replicas) == 2, replicas
    for replica in replicas:
        mounts = stack.engine.inspect([replica])[0]["Mounts"]
        assert all(m["Type"] == "tmpfs" for m in mounts), mounts  # type: ignore[union-attr]

    out = stack.exec("training_worker", f'python -c "{TRAIN}"', timeout=900)
    trained = json.loads(out.strip().splitlines()[-1])
    version = str(trained["version"])
    assert version != "1" and trained["heldout_accuracy"] > 0.8, trained

    answer = stack.session.post(
        f"{stack.base_url}/v1/models/digits/promote",
        json={"version": int(version)},
        headers={"Authorization": f"Bearer {stack.env['ADMIN_TOKEN']}"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    promoted = answer.json()["promoted"]
    print(f"[deploy] digits/{version} trained in the training container and promoted: {json.dumps(promoted)[:600]}")

    served = set()
    for data, _ in photos(40, seed=21):
        body = stack.submit(data, wait=10).json()
        assert body["status"] == "succeeded", body
        served.add(body["model"]["version"])
    assert served == {version}, served
    # Each replica loaded the version from MLflow and swapped to it.
    swaps = {r: stack.metric(r, "digitflow_model_deploys_total", 'model="digits",outcome="swapped"') for r in replicas}
    assert all(n >= 1 for n in swaps.values()), swaps
