"""How a job's chain is published: one message per hop, straight to the stage's queue (the
anonymous exchange: no binding lookup per message), with a short argument summary instead of a
repr of the whole batch, and the next steps embedded in the message."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgpack
from celery import Celery

from digitflow.celery_app import describe_batch, hop_options, make_celery
from digitflow.messages import make_batch
from digitflow.settings import CoreSettings
from digitflow.tasks import INFERENCE, POSTPROCESS, PREPROCESS
from digitflow.worker_runtime import forward


def memory_app() -> Celery:
    app = make_celery("test", CoreSettings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
    app.conf.broker_url = "memory://"
    return app


def test_a_hop_goes_straight_to_its_queue_with_a_short_args_summary() -> None:
    app = memory_app()
    batch = make_batch("b1", [{"job_id": "a" * 32, "model": "digits"}, {"job_id": "b" * 32, "model": "digits"}])
    chain = [
        dict(app.signature(POSTPROCESS, **hop_options("postprocess"))),
        dict(app.signature(INFERENCE, **hop_options("inference"))),
    ]
    options = {**hop_options("preprocess"), "argsrepr": describe_batch(batch)}
    with app.connection_for_write() as conn:
        app.send_task(PREPROCESS, args=(batch,), chain=chain, connection=conn, **options)
        message = conn.SimpleQueue("preprocess", no_ack=True, accept=["msgpack"]).get(timeout=1)
    assert message.delivery_info["exchange"] == ""  # anonymous: the queue is the routing key
    assert message.headers["argsrepr"] == "(batch b1: 2 jobs,)"
    args, _, embed = msgpack.unpackb(message.body, raw=False)
    assert args[0]["items"][1]["job_id"] == "b" * 32
    steps = embed["chain"]
    assert [s["task"] for s in steps] == [POSTPROCESS, INFERENCE]  # the next step is popped from the end
    assert steps[-1]["options"]["queue"] == "inference" and steps[-1]["options"]["exchange"] == ""


def fake_task(chain: list[dict[str, Any]] | None) -> Any:
    return SimpleNamespace(request=SimpleNamespace(chain=chain))


def test_forward_names_the_next_hops_batch_and_ends_an_empty_chain() -> None:
    chain = [{"task": POSTPROCESS, "options": {}}, {"task": INFERENCE, "options": {"queue": "inference"}}]
    task = fake_task(chain)
    batch = make_batch("b2", [{"job_id": "c" * 32, "model": "digits"}])
    assert forward(task, batch) is batch
    assert task.request.chain[-1]["options"] == {"queue": "inference", "argsrepr": "(batch b2: 1 jobs,)"}
    assert "argsrepr" not in task.request.chain[0]["options"]
    empty = fake_task([{"task": INFERENCE, "options": {}}])
    forward(empty, make_batch("b3", []))
    assert empty.request.chain is None  # no job left: nothing is sent on
