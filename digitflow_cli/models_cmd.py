"""``digitflow models ...`` and ``digitflow train``: the model lifecycle from the command line.

digitflow models list | show NAME            what the registry holds (Redis view, else MLflow)
digitflow models promote NAME VERSION        move production; waits until every inference
                                             process serves it, or reports why it could not
digitflow models rollback NAME               back to the previous production version
digitflow models canary NAME                 the candidate in release: state, live numbers, decision
digitflow models candidate NAME VERSION [--mode canary|shadow] [--share 0.1]   start a release
digitflow models abort NAME [--reason TEXT]  retire the candidate (promote: models promote NAME V)
digitflow models servable NAME VERSION [--off]   allow (or forbid) pinning NAME@VERSION
digitflow models bootstrap | sync            register the shipped models / rewrite the view
digitflow train NAME [--epochs N] [--promote-if-better]

Promotion and rollback go to the registry service by task name when one is running (as the
gateway does), and run in this process otherwise (same code, MLflow imported here).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from digitflow.errors import DigitflowError
from digitflow.model_spec import production_of, public_entry
from digitflow.model_view import read_view
from digitflow.redis_client import connect
from digitflow.settings import CoreSettings
from digitflow.tasks import REGISTRY_PROMOTE, REGISTRY_ROLLBACK, REGISTRY_SYNC
from digitflow_cli.registry_actions import registry_action, registry_callbacks

EPOCHS = {"digits": 14, "fashion": 2}
BATCH_SIZE = {"digits": 128, "fashion": 128}


def _settings() -> CoreSettings:
    return CoreSettings.from_env()


def view_of(settings: CoreSettings) -> dict[str, dict[str, Any]]:
    try:
        view = read_view(connect(settings.redis_url, socket_timeout=2.0))
    except redis.RedisError:
        view = {}
    if view:
        return view
    try:
        from digitflow.model_store import RegistryStore  # no view (registry service never ran): ask MLflow

        return {e["name"]: e for e in RegistryStore(settings.tracking_uri, settings.artifact_root).entries()}
    except ImportError:
        print("digitflow: no registry view in Redis, and mlflow is not installed here", file=sys.stderr)
        return {}


def cmd_list(args: argparse.Namespace) -> int:
    view = view_of(_settings())
    if args.json:
        print(json.dumps([public_entry(e) for e in view.values()], indent=2))
        return 0
    print(f"{'model':<16}{'production':>11}{'versions':>10}  {'profile':<15}{'held-out accuracy':>18}")
    for name, entry in view.items():
        prod = production_of(entry)
        record = entry.get("versions", {}).get(prod, {}) if prod else {}
        acc = record.get("metrics", {}).get("heldout_accuracy")
        acc_text = f"{acc:.2%}" if isinstance(acc, float) else "-"
        profile = record.get("input_profile") or "-"
        print(f"{name:<16}{prod or '-':>11}{len(entry.get('versions', {})):>10}  {profile:<15}{acc_text:>18}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    entry = view_of(_settings()).get(args.name)
    if entry is None:
        print(f"digitflow: no model named {args.name!r}", file=sys.stderr)
        return 2
    print(json.dumps(public_entry(entry), indent=2))
    return 0


def report_action(what: str, action: Callable[[], dict[str, Any]]) -> int:
    try:
        result = action()
    except DigitflowError as exc:
        print(f"{what} FAILED: {exc.code}: {exc.message}", file=sys.stderr)
        if exc.details:
            print(json.dumps(exc.details, indent=2, default=str), file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"{what} FAILED: Redis is unreachable ({exc})", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    settings = _settings()
    payload = {"name": args.name, "version": str(args.version), "alias": args.alias}
    return report_action(
        f"promote {args.name} {args.version}",
        lambda: registry_action(
            settings, REGISTRY_PROMOTE, payload, lambda d: d.promote(args.name, str(args.version), args.alias)
        ),
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    settings = _settings()
    return report_action(
        f"rollback {args.name}",
        lambda: registry_action(settings, REGISTRY_ROLLBACK, {"name": args.name}, lambda d: d.rollback(args.name)),
    )


def bootstrap(settings: CoreSettings) -> list[str]:
    """Register the shipped models if the registry does not know them (what ``make run`` does first)."""
    from digitflow.model_store import RegistryStore

    return RegistryStore(settings.tracking_uri, settings.artifact_root).bootstrap(settings.model_dir)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    settings = _settings()
    done = bootstrap(settings)
    print(f"registered: {', '.join(done)}" if done else "the registry already knows every shipped model")
    return cmd_sync(args)


def cmd_sync(args: argparse.Namespace) -> int:
    settings = _settings()

    def direct(d: Any) -> dict[str, Any]:
        return {"models": [e["name"] for e in d.sync()]}

    try:
        return report_action("sync", lambda: registry_action(settings, REGISTRY_SYNC, {}, direct))
    except redis.RedisError as exc:
        print(f"the Redis view was not written (Redis unreachable: {exc})", file=sys.stderr)
        return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training_worker.register import train_and_register
    from training_worker.settings import TrainingSettings
    from training_worker.trainer import TrainConfig

    settings = TrainingSettings.from_env()
    cfg = TrainConfig(
        epochs=EPOCHS.get(args.name, 10) if args.epochs is None else args.epochs,
        batch_size=args.batch_size or BATCH_SIZE.get(args.name, 64),
        seed=args.seed,
        threads=args.threads,
    )

    promote, refresh = registry_callbacks(settings)

    def registered(name: str) -> None:
        try:  # the new version shows in the view (and can be pinned) at once
            refresh(name)
        except redis.RedisError as exc:
            print(f"note: the Redis view was not refreshed ({exc})", file=sys.stderr)

    return report_action(
        f"train {args.name}",
        lambda: train_and_register(
            args.name, settings, cfg, args.promote_if_better, promote, progress=not args.quiet, registered=registered
        ),
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    from training_worker.calibrate import calibrate_dir

    folder = Path(args.models_dir) / args.name / args.version
    ref = calibrate_dir(folder, args.name)
    print(
        json.dumps(
            {
                "path": str(folder / "reference.safetensors"),
                "threshold": ref.threshold,
                "temperature": ref.temperature,
                **ref.meta,
            },
            indent=2,
        )
    )
    return 0


def add_calibrate_command(msub: Any) -> None:
    from digitflow.settings import shipped_models_dir

    cal = msub.add_parser("calibrate", help="fit a shipped version's outlier detector and drift reference")
    cal.add_argument("name")
    cal.add_argument("version")
    cal.add_argument("--models-dir", default=str(shipped_models_dir()))
    cal.set_defaults(func=cmd_calibrate)


def add_model_commands(sub: Any) -> None:
    """Add ``models`` and ``train`` to the ``digitflow`` parser's subcommands."""
    models = sub.add_parser("models", help="list, show, promote, roll back registered models")
    msub = models.add_subparsers(dest="models_command", required=True)
    listing = msub.add_parser("list", help="every model with its production version")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)
    add_calibrate_command(msub)
    show = msub.add_parser("show", help="one model: aliases, history, versions and metrics")
    show.add_argument("name")
    show.set_defaults(func=cmd_show)
    promote = msub.add_parser("promote", help="make VERSION production on every inference worker")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("--alias", default="production", choices=["production", "candidate"])
    promote.set_defaults(func=cmd_promote)
    rollback = msub.add_parser("rollback", help="production back to the previous version")
    rollback.add_argument("name")
    rollback.set_defaults(func=cmd_rollback)
    from digitflow_cli.canary_cmd import add_canary_commands  # it imports this module

    add_canary_commands(msub)
    msub.add_parser("bootstrap", help="register the shipped models (first start)").set_defaults(func=cmd_bootstrap)
    msub.add_parser("sync", help="rewrite the Redis view from the registry").set_defaults(func=cmd_sync)
    train = sub.add_parser("train", help="train a model, register it (and promote it if better)")
    train.add_argument("name", choices=["digits", "fashion"])
    train.add_argument("--epochs", type=int, default=None, help="default: digits 40, fashion 2")
    train.add_argument("--promote-if-better", action="store_true")
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
