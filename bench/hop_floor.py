"""The floor Celery puts under a lone job: a three-hop chain of tasks that do nothing.

    python -m bench.hop_floor [--jobs 300] [--pool solo|prefork] [--events] [--json PATH]

Three worker processes (one queue each, as the three stages), configured by digitflow's own
``make_celery`` and published with its ``hop_options``, run a chain whose tasks only return their
argument: a batch of one item with a 784-byte input, the size of a preprocessed digit. The last
task pushes its finish time to a Redis list. One client sends one chain at a time (a lone job on
an idle system) on a private redis-server, and reports per hop the time from the client's send
(first hop) or the previous task's return (Celery then publishes the next hop and acknowledges)
to the task's start, and end to end, from the client's send to the last task's push. What a digitflow
lone job takes beyond that floor is its own work (preprocess, inference, postprocess, the job
store, the HTTP request). Task events are off, as in the bench's ``digitflow`` scenario;
``--events`` turns them on, as ``make run`` has them. Timestamps are ``time.time()`` of processes on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from digitflow.celery_app import hop_options, make_celery
from digitflow.settings import CoreSettings
from digitflow_cli.supervisor import free_port, redis_argv

QUEUES = ("floor.a", "floor.b", "floor.c")
DONE_KEY = "floor:done"


def _settings(url: str, events: bool) -> CoreSettings:
    return CoreSettings(redis_url=url, task_events=events)


def _app() -> Celery:
    url = os.environ.get("FLOOR_REDIS_URL", "redis://127.0.0.1:6379/0")
    app = make_celery("hop-floor", _settings(url, os.environ.get("FLOOR_TASK_EVENTS") == "1"))
    done = redis.Redis.from_url(app.conf.broker_url)

    def hop(name: str, last: bool) -> None:
        @app.task(name=name)
        def run(batch: dict[str, Any]) -> dict[str, Any]:
            batch["starts"].append(time.time())
            if last:
                done.rpush(DONE_KEY, json.dumps({"starts": batch["starts"], "end": time.time()}))
            batch["starts"].append(time.time())  # the return: Celery publishes the next hop after it
            return batch

    for i, queue in enumerate(QUEUES):
        hop(queue, i == len(QUEUES) - 1)
    return app


app = _app()  # what `celery -A bench.hop_floor:app worker` loads


def measure(jobs: int, pool: str, events: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="digitflow-floor-") as tmp:
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        env = {**os.environ, "FLOOR_REDIS_URL": url, "FLOOR_TASK_EVENTS": "1" if events else "0"}
        procs = [subprocess.Popen(redis_argv(Path(tmp), port), stdout=subprocess.DEVNULL)]
        try:
            for queue in QUEUES:
                argv = [sys.executable, "-m", "celery", "-A", "bench.hop_floor:app", "worker", "-Q", queue]
                argv += ["--concurrency", "1", "--pool", pool, "--loglevel", "WARNING", "-n", f"{queue}@%h"]
                argv += ["--without-gossip", "--without-mingle"]
                procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            client = make_celery("hop-floor-client", _settings(url, events))
            r = redis.Redis.from_url(url)
            rows = [_one(client, r) for _ in range(jobs + 20)][20:]  # the first ones warm up
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    hops = [[row["starts"][2 * i] - row["published"][i] for row in rows] for i in range(len(QUEUES))]
    total = [row["end"] - row["sent"] for row in rows]
    ms = lambda xs: round(1000 * statistics.median(xs), 2)  # noqa: E731
    p99 = lambda xs: round(1000 * sorted(xs)[int(0.99 * (len(xs) - 1))], 2)  # noqa: E731
    return {
        "pool": pool,
        "events": events,
        "jobs": jobs,
        "hop_p50_ms": [ms(h) for h in hops],
        "chain_p50_ms": ms(total),
        "chain_p99_ms": p99(total),
    }


def _one(client: Celery, r: redis.Redis) -> dict[str, Any]:
    batch = {"items": [{"job_id": "x", "pixels": bytes(784)}], "starts": []}
    sent = time.time()
    chain = [dict(client.signature(q, **hop_options(q))) for q in reversed(QUEUES[1:])]  # next step last
    client.send_task(QUEUES[0], args=(batch,), chain=chain, **hop_options(QUEUES[0]))
    _, raw = r.blpop([DONE_KEY], timeout=30) or (None, None)
    if raw is None:
        raise SystemExit("a chain did not finish in 30 s: see the workers (celery -A bench.hop_floor:app ...)")
    row: dict[str, Any] = json.loads(raw)
    row["sent"] = sent
    row["published"] = [sent, row["starts"][1], row["starts"][3]]
    time.sleep(0.02)  # idle between jobs, as for a lone job
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--pool", choices=("solo", "prefork"), default="solo")
    parser.add_argument("--events", action="store_true", help="task events on, as make run has them")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    out = measure(args.jobs, args.pool, args.events)
    label = f"{args.pool}, task events" if args.events else args.pool
    print(
        f"{label}: three empty hops, p50 per hop {out['hop_p50_ms']} ms (publish -> task start); "
        f"chain p50 {out['chain_p50_ms']} ms, p99 {out['chain_p99_ms']} ms (send -> last task done)"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
