"""``digitflow models canary | candidate | abort | servable``: canary releases from the command
line (docs/models.md, "Canary releases"). Actions go to the registry service by task name when
one is running, else run in this process (``digitflow_cli.registry_actions``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import redis

from digitflow.model_spec import MODES, public_entry
from digitflow.redis_client import connect
from digitflow.settings import CoreSettings
from digitflow.tasks import REGISTRY_CANDIDATE, REGISTRY_RETIRE, REGISTRY_SERVABLE
from digitflow_cli.models_cmd import report_action, view_of
from digitflow_cli.registry_actions import registry_action


def cmd_candidate(args: argparse.Namespace) -> int:
    from registry_worker.canary import start_candidate

    s = CoreSettings.from_env()
    mode, share = args.mode or s.canary_mode, args.share or s.canary_share
    payload = {"name": args.name, "version": str(args.version), "mode": mode, "share": share, "by": "admin"}
    return report_action(
        f"candidate {args.name} {args.version}",
        lambda: registry_action(
            s, REGISTRY_CANDIDATE, payload, lambda d: start_candidate(d, args.name, str(args.version), mode, share)
        ),
    )


def cmd_abort(args: argparse.Namespace) -> int:
    from registry_worker.canary import retire

    s, reason = CoreSettings.from_env(), args.reason or "aborted by an admin"
    payload = {"name": args.name, "reason": reason, "by": "admin"}
    return report_action(
        f"abort {args.name}",
        lambda: registry_action(s, REGISTRY_RETIRE, payload, lambda d: retire(d, args.name, reason)),
    )


def cmd_servable(args: argparse.Namespace) -> int:
    from registry_worker.canary import set_servable

    s, flag = CoreSettings.from_env(), not args.off
    payload = {"name": args.name, "version": str(args.version), "servable": flag}
    return report_action(
        f"servable {args.name} {args.version}",
        lambda: registry_action(
            s, REGISTRY_SERVABLE, payload, lambda d: set_servable(d, args.name, str(args.version), flag)
        ),
    )


def canary_text(entry: dict[str, Any], numbers: dict[str, Any] | None) -> str:
    """The release of one model as a few lines: the candidate, its numbers, the last outcomes."""
    public = public_entry(entry)
    canary = public["canary"]
    lines = [f"model {entry['name']}: production {public['production'] or '-'}"]
    if canary is None:
        lines.append("no candidate in release")
    else:
        how = f"{canary['share']:.0%} of live jobs" if canary["mode"] == "canary" else "shadow (answers logged only)"
        lines.append(f"candidate {canary['version']}: {canary['mode']}, {how}, since {canary['since']:.0f}")
        if numbers and numbers.get("version") == canary["version"]:
            lines.append(f"decision: {numbers['decision']}: {numbers['reason']}")
            lines.append(f"{'signal':<20}{'candidate':>12}{'production':>12}")
            for key in ("jobs", "labelled", "accuracy", "estimated_accuracy", "outlier_rate", "failure_rate"):
                row = [numbers["numbers"][side][key] for side in ("candidate", "production")]
                cells = [f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v)) for v in row]
                lines.append(f"{key:<20}{cells[0]:>12}{cells[1]:>12}")
        else:
            lines.append("decision: not evaluated by the monitor yet")
        suites = canary.get("suites")
        lines.append(f"suites: {suites['reason'] if suites else 'none recorded (started by hand)'}")
    for record in public["releases"][-5:]:
        lines.append(f"release {record['version']}: {record['outcome']}: {record['reason']}")
    lines.append(f"pinnable: {', '.join(public['servable']) or '-'}")
    return "\n".join(lines)


def cmd_canary(args: argparse.Namespace) -> int:
    from digitflow.monitor_store import read_report

    settings = CoreSettings.from_env()
    entry = view_of(settings).get(args.name)
    if entry is None:
        print(f"digitflow: no model named {args.name!r}", file=sys.stderr)
        return 2
    try:
        report = read_report(connect(settings.redis_url, socket_timeout=2.0), args.name) or {}
    except redis.RedisError:
        report = {}
    if args.json:
        print(json.dumps({**public_entry(entry), "evaluation": report.get("canary")}, indent=2))
    else:
        print(canary_text(entry, report.get("canary")))
    return 0


def add_canary_commands(msub: Any) -> None:
    """Add the release commands to ``digitflow models``."""
    canary = msub.add_parser("canary", help="the candidate in release: state, live numbers, decision")
    canary.add_argument("name")
    canary.add_argument("--json", action="store_true")
    canary.set_defaults(func=cmd_canary)
    candidate = msub.add_parser("candidate", help="start a canary (or shadow) release of VERSION")
    candidate.add_argument("name")
    candidate.add_argument("version", type=int)
    candidate.add_argument("--mode", choices=MODES, default=None, help="default: CANARY_MODE")
    candidate.add_argument("--share", type=float, default=None, help="default: CANARY_SHARE")
    candidate.set_defaults(func=cmd_candidate)
    abort = msub.add_parser("abort", help="retire the candidate without promoting it")
    abort.add_argument("name")
    abort.add_argument("--reason", default=None)
    abort.set_defaults(func=cmd_abort)
    servable = msub.add_parser("servable", help="allow jobs to pin NAME@VERSION (--off: forbid again)")
    servable.add_argument("name")
    servable.add_argument("version", type=int)
    servable.add_argument("--off", action="store_true")
    servable.set_defaults(func=cmd_servable)
