"""``digitflow feedback``, ``digitflow monitor report|run``, ``digitflow retrain``,
(docs/monitoring.md)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from digitflow_cli.http import request

DEFAULT_URL = os.environ.get("DIGITFLOW_URL", "http://127.0.0.1:8000")
WINDOW_COLUMNS = ("jobs", "labelled", "accuracy", "estimated_accuracy", "outlier_rate")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def report_table(report: dict[str, Any]) -> str:
    """A terminal table: one line per version and window, then the alerts and retrainings."""
    head = [
        "version",
        "window",
        "jobs",
        "labelled",
        "acc",
        "est.acc",
        "outliers",
        "psi",
        "chi2 p",
        "conf KS p",
        "ink KS p",
        "MMD p",
        "alerts",
    ]
    lines = [head]
    for v in report.get("versions", []):
        name = v["version"] + (" (prod)" if v.get("production") else "")
        for window, w in v["windows"].items():
            pd, cd, inp = w.get("prediction_drift") or {}, w.get("confidence_drift") or {}, w.get("input_drift") or {}
            kinds = sorted({a["kind"] for a in v["alerts"] if a["window"] == window})
            lines.append(
                [
                    name,
                    window,
                    *(_fmt(w.get(c)) for c in WINDOW_COLUMNS),
                    _fmt(pd.get("psi")),
                    _fmt(pd.get("p_value"), 4),
                    _fmt(cd.get("p_value"), 4),
                    _fmt((inp.get("ink_ratio") or {}).get("p_value"), 4),
                    _fmt((inp.get("embedding_mmd") or {}).get("p_value"), 4),
                    ",".join(kinds) or "-",
                ]
            )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    out = [f"model {report.get('model')}  (report of {report.get('generated_at')})"]
    out += ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)) for row in lines]
    for r in report.get("retraining", []):
        out.append(
            f"retrain at {r.get('at')}: {r.get('trigger')} -> version {r.get('new_version')}, "
            f"promoted={r.get('promoted')}, candidate={r.get('candidate')}: {r.get('reason')}"
        )
    return "\n".join(out)


def cmd_feedback(args: argparse.Namespace) -> int:
    body = json.dumps({"label": args.label}).encode()
    headers = {"Content-Type": "application/json"}
    if args.api_key:  # the key that submitted the job (feedback is scoped to it)
        headers["X-API-Key"] = args.api_key
    status, answer = request(f"{args.url}/v1/jobs/{args.job_id}/feedback", body, headers, timeout=30)
    print(json.dumps(answer, indent=2))
    return 0 if status < 400 else 2


def cmd_report(args: argparse.Namespace) -> int:
    status, answer = request(f"{args.url}/v1/monitoring/{args.name}", timeout=30)
    print(json.dumps(answer, indent=2) if args.json or status >= 400 else report_table(answer))
    return 0 if status < 400 else 2


def cmd_monitor_run(args: argparse.Namespace) -> int:
    """Compute the reports here, now (what the beat-scheduled task does)."""
    from digitflow.predlog import PredictionLog
    from digitflow.redis_client import connect
    from digitflow.settings import MonitorSettings
    from monitor_worker.references import References
    from monitor_worker.tasks import run_monitor

    s = MonitorSettings.from_env()
    reports = run_monitor(s, connect(s.redis_url), PredictionLog(s.prediction_db_url), References(s), args.names)
    for report in reports:
        print(report_table(report))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from digitflow_cli.registry_actions import registry_callbacks, release_callback
    from training_worker.retrain import run_retrain
    from training_worker.settings import TrainingSettings

    settings = TrainingSettings.from_env()
    _, registered = registry_callbacks(settings)
    outcome = run_retrain(
        args.name, "manual", settings, release_callback(settings), registered, args.min_labels, args.epochs
    )
    print(json.dumps(outcome, indent=2, default=str))
    return 0 if outcome and outcome.get("new_version") else 1


def add_monitor_commands(sub: Any) -> None:
    """Add ``feedback``, ``monitor`` and ``retrain`` to the ``digitflow`` parser."""
    fb = sub.add_parser("feedback", help="record the true label of a job")
    fb.add_argument("job_id")
    fb.add_argument("label", type=int)
    fb.add_argument("--url", default=DEFAULT_URL)
    fb.add_argument("--api-key", default=os.environ.get("DIGITFLOW_API_KEY"))
    fb.set_defaults(func=cmd_feedback)
    mon = sub.add_parser("monitor", help="drift, outliers and accuracy per model version")
    msub = mon.add_subparsers(dest="monitor_command", required=True)
    rep = msub.add_parser("report", help="the latest report as a table (from the gateway)")
    rep.add_argument("name")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--url", default=DEFAULT_URL)
    rep.set_defaults(func=cmd_report)
    run = msub.add_parser("run", help="compute the reports now, here")
    run.add_argument("names", nargs="*")
    run.set_defaults(func=cmd_monitor_run)
    re = sub.add_parser("retrain", help="retrain on collected feedback; promote if the gate passes")
    re.add_argument("name")
    re.add_argument("--min-labels", type=int, default=None)
    re.add_argument("--epochs", type=int, default=None)
    re.set_defaults(func=cmd_retrain)
