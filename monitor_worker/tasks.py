"""``monitor.run``: the report of every model (digitflow.monitoring), stored in Redis for the
gateway and the CLI, exported as Prometheus gauges, and a retrain started when a production
version raises a drift or accuracy alert and enough new labelled data exists. While a candidate
is in release, the report carries its numbers and the canary decision (``monitor_worker.canary``),
which this run carries out through the registry service: promote, or retire with the reason."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import uuid
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready
from prometheus_client import Gauge
from sqlalchemy.exc import SQLAlchemyError

from digitflow.errors import DigitflowError
from digitflow.model_spec import canary_of, production_of
from digitflow.model_store import quiet_mlflow
from digitflow.model_view import read_view
from digitflow.monitor_store import pruned_until, set_pruned_until, take_retrain_lock, write_report
from digitflow.observability import log_event
from digitflow.predlog import PredictionLog
from digitflow.redis_client import connect
from digitflow.registry_client import RegistryClient
from digitflow.settings import MonitorSettings
from digitflow.store_identity import MLFLOW, bound_id
from digitflow.tasks import MONITOR_RUN, REGISTRY_PROMOTE, REGISTRY_RETIRE, TRAINING_QUEUE, TRAINING_RETRAIN
from monitor_worker.canary import PROMOTE, RETIRE, canary_numbers
from monitor_worker.references import References
from monitor_worker.report import model_report
from monitor_worker.store_check import check_prediction_log, retrain_mark

logger = logging.getLogger("monitor_worker")
LABELS = ("model", "version", "window")
STATISTIC = Gauge(
    "digitflow_drift_statistic", "Drift statistics per window", [*LABELS, "test"], multiprocess_mode="mostrecent"
)
P_VALUE = Gauge(
    "digitflow_drift_p_value", "Drift test p-values per window", [*LABELS, "test"], multiprocess_mode="mostrecent"
)
ALERT = Gauge("digitflow_drift_alert", "1 while an alert is raised", [*LABELS, "kind"], multiprocess_mode="mostrecent")
ACCURACY = Gauge(
    "digitflow_model_accuracy", "Accuracy from feedback / estimated", [*LABELS, "kind"], multiprocess_mode="mostrecent"
)
OUTLIERS = Gauge("digitflow_outlier_rate", "Share of jobs flagged as outliers", LABELS, multiprocess_mode="mostrecent")
JOBS = Gauge("digitflow_monitored_jobs", "Jobs in the window", LABELS, multiprocess_mode="mostrecent")
ALERT_KINDS = ("prediction_drift", "confidence_drift", "input_drift", "accuracy_drop", "outlier_rate")
WARM_UP_WAIT_S = 120.0  # how long the warm-up waits for the registry to list a production version
WARM_UP_POLL_S = 2.0
RETRAIN_KINDS = {
    "prediction_drift": "drift",
    "confidence_drift": "drift",
    "input_drift": "drift",
    "accuracy_drop": "accuracy",
}


def export(report: dict[str, Any]) -> None:
    """Set the Prometheus gauges from a report (statistics that are null are left out)."""
    model = report["model"]
    for version in report["versions"]:
        raised = {(a["window"], a["kind"]) for a in version["alerts"]}
        for window, w in version["windows"].items():
            labels = (model, version["version"], window)
            JOBS.labels(*labels).set(w["jobs"])
            for kind in ALERT_KINDS:
                ALERT.labels(*labels, kind).set(1 if (window, kind) in raised else 0)
            for kind, value in (("observed", w["accuracy"]), ("estimated", w["estimated_accuracy"])):
                if value is not None:
                    ACCURACY.labels(*labels, kind).set(value)
            if w["outlier_rate"] is not None:
                OUTLIERS.labels(*labels).set(w["outlier_rate"])
            tests = {}
            if w["prediction_drift"]:
                tests["chi2"] = (w["prediction_drift"]["chi2"], w["prediction_drift"]["p_value"])
                tests["psi"] = (w["prediction_drift"]["psi"], None)
            if w["confidence_drift"]:
                tests["confidence_ks"] = (w["confidence_drift"]["ks"], w["confidence_drift"]["p_value"])
            for name, value in (w["input_drift"] or {}).items():
                if isinstance(value, dict):
                    tests[name] = (value.get("ks", value.get("mmd")), value["p_value"])
            for test, (stat, p) in tests.items():
                STATISTIC.labels(*labels, test).set(stat)
                if p is not None:
                    P_VALUE.labels(*labels, test).set(p)


def retrain_trigger(report: dict[str, Any]) -> str | None:
    """ "drift" or "accuracy" when the production version raises such an alert, else None."""
    for version in report["versions"]:
        if version["production"]:
            kinds = [RETRAIN_KINDS[a["kind"]] for a in version["alerts"] if a["kind"] in RETRAIN_KINDS]
            if kinds:
                return "accuracy" if "accuracy" in kinds else "drift"
    return None


def maybe_retrain(
    app: Celery, client: redis.Redis, log: PredictionLog, s: MonitorSettings, report: dict[str, Any]
) -> bool:
    """Send ``training.retrain`` when an alert asks for it, enough new labels exist, the cooldown
    passed and no retrain of the model is queued or running; returns whether it was sent."""
    trigger = retrain_trigger(report)
    if trigger is None or not s.auto_retrain or report.get("canary"):
        return False  # a candidate in release is decided first
    model = report["model"]
    # The watermark is the log's own (a new log has none), so its rows are always counted.
    last_id, last_at = retrain_mark(log, model)
    if time.time() - last_at < s.retrain_cooldown_s or log.count_labelled(model, last_id) < s.retrain_min_labels:
        return False
    token = uuid.uuid4().hex
    if not take_retrain_lock(client, model, token):
        return False
    payload = {"model": model, "trigger": trigger, "token": token}
    app.send_task(TRAINING_RETRAIN, args=(payload,), queue=TRAINING_QUEUE)
    log_event(logger, "retrain_requested", model=model, trigger=trigger)
    return True


def run_monitor(
    s: MonitorSettings, client: redis.Redis, log: PredictionLog, refs: References, models: list[str] | None = None
) -> list[dict[str, Any]]:
    """Compute, store and export the report of ``models`` (default: every model in the registry view)."""
    check_prediction_log(client, log)
    # The references of the MLflow store the view describes (a reset store's version 2 is another model).
    refs.use_store(bound_id(client, MLFLOW))
    view = read_view(client)
    reports = []
    for name in models or sorted(view) or list(s.models):
        entry = view.get(name)
        production = production_of(entry) if entry else None
        report = model_report(name, log, functools.partial(refs.get, name), production, s)
        canary = canary_of(entry) if entry else None
        report["canary"] = canary_numbers(entry, canary, log, client, s) if entry and canary else None
        write_report(client, report)
        export(report)
        reports.append(report)
    return reports


def act_on_canary(registry: RegistryClient, report: dict[str, Any], timeout_s: float) -> str | None:
    """Carry out the canary decision of a report (promote or retire through the registry
    service); returns the action taken, None when there was nothing to do or it failed."""
    canary = report.get("canary")
    if not canary or canary["decision"] not in (PROMOTE, RETIRE):
        return None
    payload = {"name": report["model"], "reason": canary["reason"], "by": "monitor", "numbers": canary["numbers"]}
    task = REGISTRY_PROMOTE if canary["decision"] == PROMOTE else REGISTRY_RETIRE
    if task == REGISTRY_PROMOTE:
        payload["candidate"] = True
    try:
        registry.call(task, payload, timeout_s=timeout_s)
    except DigitflowError as exc:
        log_event(logger, "canary_action_failed", logging.WARNING, model=report["model"], error_code=exc.code)
        return None
    log_event(logger, "canary_decided", model=report["model"], version=canary["version"], decision=canary["decision"])
    return str(canary["decision"])


def prune_log(s: MonitorSettings, client: redis.Redis, log: PredictionLog, now: float | None = None) -> dict[str, Any]:
    """Apply the retention settings to every model in the log; returns the counts per model."""
    now = time.time() if now is None else now
    out = {}
    for model in log.models():
        since = pruned_until(client, model)
        inputs_before = now - s.pixels_retention_days * 86400 if s.pixels_retention_days else since
        rows_before = now - s.predictions_retention_days * 86400 if s.predictions_retention_days else 0.0
        counts = log.prune(model, since, max(since, inputs_before), rows_before)
        set_pruned_until(client, model, max(since, inputs_before))
        if any(counts.values()):
            log_event(logger, "prediction_log_pruned", model=model, **counts)
        out[model] = counts
    return out


def register_tasks(app: Celery, settings: MonitorSettings) -> None:
    state: dict[str, Any] = {}

    lock = threading.Lock()  # the warm-up thread and the task share these

    def resources() -> tuple[redis.Redis, PredictionLog, References]:
        with lock:
            if not state:
                state.update(
                    client=connect(settings.redis_url),
                    log=PredictionLog(settings.prediction_db_url),
                    refs=References(settings),
                )
        return state["client"], state["log"], state["refs"]

    def warm(started: float) -> None:
        quiet_mlflow()
        import mlflow  # noqa: F401

        client, log, refs = resources()
        with contextlib.suppress(SQLAlchemyError, redis.RedisError):  # not up yet: the first report checks
            check_prediction_log(client, log, full=True)
        # Under `make run` the registry starts beside this worker and bootstraps its view a few
        # seconds later: wait for it (the references are what the first report would fetch).
        deadline = time.monotonic() + WARM_UP_WAIT_S
        fetched = 0
        while True:
            with contextlib.suppress(SQLAlchemyError, redis.RedisError):  # not up yet: look again
                log.models()
                refs.use_store(bound_id(client, MLFLOW))
                versions = [(name, production_of(entry)) for name, entry in read_view(client).items()]
                for name, version in versions:
                    if version:
                        fetched += refs.get(name, version) is not None
            if fetched or time.monotonic() >= deadline:
                break
            time.sleep(WARM_UP_POLL_S)
        log_event(
            logger,
            "monitor_warmed_up",
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            references=fetched,
        )

    @worker_ready.connect(weak=False)
    def warm_up(sender: Any = None, **_: Any) -> None:
        # The first report would otherwise import MLflow and open its store (the registry client
        # that fetches the references: most of the 2-3.5 s of CPU that report took on a 2-core
        # VM) and compile the prediction log's queries while the job path is serving; at start
        # the cost lands before traffic. MLflow's store is opened only for versions the registry
        # view lists: opening it first would create the registry's database before the registry
        # service's first-start bootstrap, which then registered nothing (caught by the canary
        # tests). In a thread, so the worker takes tasks while the registry is still starting.
        if getattr(sender, "app", app) is not app:
            return  # another app's worker in this process (the signal is global)
        threading.Thread(target=warm, args=(time.perf_counter(),), name="monitor-warm-up", daemon=True).start()

    @app.task(name=MONITOR_RUN, acks_late=False)
    def run(payload: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        client, log, refs = resources()
        reports = run_monitor(settings, client, log, refs, payload.get("models"))
        registry = RegistryClient(app, settings.redis_url, settings.heartbeat_ttl_s)
        timeout_s = settings.deploy_timeout_s * 2 + 30
        releases = {r["model"]: act_on_canary(registry, r, timeout_s) for r in reports if r.get("canary")}
        retrains = [r["model"] for r in reports if maybe_retrain(app, client, log, settings, r)]
        prune_log(settings, client, log)
        seconds = round(time.perf_counter() - started, 3)
        log_event(
            logger, "monitor_done", models=[r["model"] for r in reports], retrains=retrains, duration_ms=seconds * 1000
        )
        return {"models": [r["model"] for r in reports], "retrains": retrains, "releases": releases, "seconds": seconds}
