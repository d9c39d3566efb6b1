"""Liveness, readiness and Prometheus metrics of the gateway."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify
from prometheus_client import CollectorRegistry, Gauge

from digitflow.heartbeat import live_workers
from digitflow.observability import render_metrics
from digitflow.queues import all_queues, queue_work
from digitflow.tasks import MONITOR_QUEUE, REGISTRY_QUEUE, STAGES, TRAINING_QUEUE
from gateway.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready when Redis answers and every stage has at least one live worker; says what is missing."""
    svc = services()
    try:
        svc.redis.ping()
        workers = live_workers(svc.redis, svc.settings.heartbeat_ttl_s)
    except redis.RedisError:
        return jsonify({"ready": False, "redis": False, "missing_stages": list(STAGES), "workers": {}}), 503
    missing = [stage for stage in STAGES if not workers.get(stage)]
    body = {"ready": not missing, "redis": True, "missing_stages": missing, "workers": workers}
    return jsonify(body), 200 if not missing else 503


@bp.get("/metrics")
def metrics() -> Response:
    """This gateway's counters plus live queue depth and oldest-job age per stage queue."""
    svc = services()
    live = CollectorRegistry()
    depth = Gauge("digitflow_queue_depth", "Messages waiting in the stage queue", ["queue"], registry=live)
    age = Gauge("digitflow_queue_oldest_age_seconds", "Age of the oldest waiting message", ["queue"], registry=live)
    up = Gauge("digitflow_redis_up", "1 if the gateway reaches Redis", registry=live)
    workers = Gauge("digitflow_live_workers", "Workers with a fresh heartbeat", ["stage"], registry=live)
    in_flight = Gauge("digitflow_gateway_batches_in_flight", "This process's unfinished batches", registry=live)
    pending = Gauge("digitflow_gateway_jobs_pending", "Jobs waiting in this process's batcher", registry=live)
    work = Gauge("digitflow_queue_work", "Messages waiting plus held unacked by workers", ["queue"], registry=live)
    in_flight.set(svc.batcher.in_flight)
    pending.set(svc.batcher.pending)
    try:
        for stats in svc.queue_stats(max_age_s=0.0):
            depth.labels(stats.queue).set(stats.depth)
            age.labels(stats.queue).set(stats.oldest_age_s)
        for queue, count in queue_work(svc.redis, all_queues(svc.settings.dedicated_model_queues)).items():
            work.labels(queue).set(count)
        every_service = (*STAGES, REGISTRY_QUEUE, MONITOR_QUEUE, TRAINING_QUEUE)  # their heartbeat names
        for stage, names in live_workers(svc.redis, svc.settings.heartbeat_ttl_s, every_service).items():
            workers.labels(stage).set(len(names))
        up.set(1)
    except redis.RedisError:
        up.set(0)
    return Response(render_metrics(live), mimetype="text/plain; version=0.0.4")
