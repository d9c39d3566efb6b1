"""``digitflow``: run the system locally, submit images, read jobs.

digitflow run [--preprocess-workers N ...]   start everything (what `make run` calls)
digitflow submit IMAGE... [--wait [S]]        send images, print the jobs (and answers)
digitflow job JOB_ID [--wait S]               show one job
digitflow models list|show|promote|rollback   the model registry (see digitflow/cli_models.py)
digitflow train NAME [--promote-if-better]    train, register, maybe promote
digitflow feedback JOB_ID LABEL               record a job's true label
digitflow monitor report|run NAME             drift and accuracy per version (digitflow/cli_monitor.py)
digitflow retrain NAME                        retrain on feedback, promote if the gate passes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

from digitflow_cli.http import multipart, request

DEFAULT_URL = os.environ.get("DIGITFLOW_URL", "http://127.0.0.1:8000")


def cmd_submit(args: argparse.Namespace) -> int:
    body, ctype = multipart([Path(f) for f in args.images], args.model)
    headers = {"Content-Type": ctype}
    if args.wait:
        headers["Prefer"] = f"wait={args.wait:g}"
    if args.api_key:
        headers["X-API-Key"] = args.api_key
    status, answer = request(f"{args.url}/v1/jobs", body, headers, timeout=args.wait + 30)
    jobs = answer.get("jobs", [answer]) if isinstance(answer, dict) else []
    if args.wait and status == 202:  # not all finished in time: poll the rest
        jobs = [request(f"{args.url}/v1/jobs/{j['job_id']}?wait={args.wait:g}")[1] for j in jobs]
    print(json.dumps(jobs[0] if len(jobs) == 1 else {"jobs": jobs} if jobs else answer, indent=2))
    if status >= 400:
        return 2
    return 1 if any(j.get("status") == "failed" for j in jobs) else 0


def cmd_job(args: argparse.Namespace) -> int:
    suffix = f"?wait={args.wait:g}" if args.wait else ""
    status, answer = request(f"{args.url}/v1/jobs/{args.job_id}{suffix}", timeout=args.wait + 30)
    print(json.dumps(answer, indent=2))
    return 0 if status < 400 else 2


def choose_redis(redis_url: str, var_dir: Path, me: dict[str, Any]) -> tuple[str, list[Any]]:
    """The Redis this deployment uses, and the private redis-server to start (if any): the one at
    ``redis_url`` when it answers and no other live deployment holds it (digitflow_cli/deployment.py)."""
    from digitflow.redis_client import connect, is_reachable
    from digitflow_cli import deployment
    from digitflow_cli.supervisor import free_port, redis_spec

    if is_reachable(redis_url):
        client = connect(redis_url)
        holder = deployment.claim(client, me)
        if holder is None:
            print(f"using Redis at {redis_url} (deployment {me['id']})")
            line = deployment.taken_over_line(redis_url, me, deployment.last_user(client))
            if line:
                print(line)
            deployment.mark_last(client, me)
            return redis_url, []
        port = free_port()
        print(deployment.busy_line(redis_url, holder, port))
    else:
        port = free_port()
        print(f"no Redis answered; starting a private redis-server on port {port} (data in {var_dir}/redis)")
    return f"redis://127.0.0.1:{port}/0", [redis_spec(var_dir, port)]


def cmd_run(args: argparse.Namespace) -> int:
    import redis

    from digitflow.redis_client import connect
    from digitflow_cli import deployment
    from digitflow_cli.supervisor import StackConfig, Supervisor, build_specs

    var_dir = Path(os.environ.get("VAR_DIR", Path.cwd() / "var")).resolve()
    me = deployment.record(deployment.deployment_id(var_dir), var_dir)
    redis_url, specs = choose_redis(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), var_dir, me)
    cfg = StackConfig(
        var_dir=var_dir,
        redis_url=redis_url,
        gateway_port=args.port,
        flower_port=args.flower_port,
        workers={
            "preprocess": args.preprocess_workers,
            "inference": args.inference_workers,
            "postprocess": args.postprocess_workers,
        },
        gateway_workers=args.gateway_workers,
        metrics_ports=tuple(int(p) for p in args.metrics_ports.split(",")),  # type: ignore[arg-type]
        registry_metrics_port=args.registry_metrics_port,
        mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", ""),
        monitoring=not args.no_monitoring,
        monitor_metrics_port=args.monitor_metrics_port,
    )
    bootstrap_registry(cfg)
    sup = Supervisor(specs + build_specs(cfg), var_dir / "log")
    stop = {"now": False}

    def _on_signal(signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    owner = connect(redis_url)
    held = {"renewed": 0.0, "lost": False}

    def renew() -> None:
        """Keep holding this Redis (the key expires DEPLOYMENT_TTL_S after the last renewal)."""
        if time.monotonic() - held["renewed"] < deployment.RENEW_S:
            return
        with contextlib.suppress(redis.RedisError):  # Redis restarting: the next renewal claims again
            holder = deployment.claim(owner, me)
            held["renewed"] = time.monotonic()
            if holder is not None and not held["lost"]:
                print(f"warning: Redis at {redis_url} is now held by {deployment.describe(holder)}", flush=True)
            held["lost"] = holder is not None

    try:
        sup.start_all(redis_url)
        renew()
        base = f"http://127.0.0.1:{args.port}"
        deadline, ready = time.monotonic() + args.ready_timeout, False
        while not stop["now"] and not ready and time.monotonic() < deadline:
            sup.poll()
            renew()
            with contextlib.suppress(OSError, ValueError):
                ready = request(f"{base}/readyz", timeout=2)[0] == 200
            time.sleep(0.3)
        print(("digitflow is ready" if ready else "digitflow started, but not every stage is ready yet") + ":")
        print(f"  gateway   {base}   (POST /v1/jobs, GET /v1/jobs/<id>, /readyz, /metrics)")
        print(f"  flower    http://127.0.0.1:{args.flower_port}")
        print("  metrics   " + "  ".join(f"http://127.0.0.1:{p}/metrics" for p in cfg.metrics_ports))
        print(f"  registry  {cfg.tracking_uri}   (digitflow models list)")
        if cfg.monitoring:
            print(
                f"  monitor   http://127.0.0.1:{cfg.monitor_metrics_port}/metrics   (digitflow monitor report digits)"
            )
        print(f"  logs      {var_dir / 'log'}/<service>.log")
        print("Ctrl-C stops everything.", flush=True)
        while not stop["now"]:
            sup.poll()
            renew()
            time.sleep(0.5)
    finally:
        print("stopping ...", flush=True)
        with contextlib.suppress(redis.RedisError):
            deployment.release(owner, me["id"])
        sup.close()
    return 0


def bootstrap_registry(cfg: Any) -> None:
    """First start: register the shipped models as production, before any worker asks for them."""
    from digitflow.settings import CoreSettings

    try:
        from digitflow_cli.models_cmd import bootstrap

        settings = CoreSettings.from_env(var_dir=cfg.var_dir, mlflow_tracking_uri=cfg.tracking_uri)
        done = bootstrap(settings)
    except ImportError:
        print("registry: mlflow is not installed (pip install '.[registry]'); serving the shipped models")
        return
    except Exception as exc:  # the registry service retries on its own start
        print(f"registry: bootstrap failed ({type(exc).__name__}: {exc}); the registry service will retry")
        return
    if done:
        print(f"registry: first start, registered {', '.join(done)} (shipped with digitflow) as production")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    env = os.environ.get
    run = sub.add_parser("run", help="start Redis (if needed), gateway, workers and Flower")
    run.add_argument("--port", type=int, default=int(env("GATEWAY_PORT", "8000")))
    run.add_argument("--flower-port", type=int, default=int(env("FLOWER_PORT", "5555")))
    run.add_argument("--preprocess-workers", type=int, default=int(env("PREPROCESS_WORKERS", "2")))
    run.add_argument("--inference-workers", type=int, default=int(env("INFERENCE_WORKERS", "1")))
    run.add_argument("--postprocess-workers", type=int, default=int(env("POSTPROCESS_WORKERS", "1")))
    run.add_argument("--gateway-workers", type=int, default=int(env("GATEWAY_WORKERS", "1")))
    run.add_argument(
        "--metrics-ports", default=env("METRICS_PORTS", "9101,9102,9103"), help="preprocess,inference,postprocess"
    )
    run.add_argument("--registry-metrics-port", type=int, default=int(env("REGISTRY_METRICS_PORT", "9104")))
    run.add_argument("--ready-timeout", type=float, default=90.0)
    run.add_argument("--monitor-metrics-port", type=int, default=int(env("MONITOR_METRICS_PORT", "9105")))
    run.add_argument("--no-monitoring", action="store_true", help="without the monitor, its beat and the trainer")
    run.set_defaults(func=cmd_run)
    submit = sub.add_parser("submit", help="submit images, one job each")
    submit.add_argument("images", nargs="+")
    submit.add_argument("--model", default="digits")
    submit.add_argument(
        "--wait", type=float, nargs="?", const=10.0, default=0.0, help="wait up to S seconds (default 10)"
    )
    submit.add_argument("--url", default=DEFAULT_URL)
    submit.add_argument("--api-key", default=env("DIGITFLOW_API_KEY"))
    submit.set_defaults(func=cmd_submit)
    job = sub.add_parser("job", help="show a job")
    job.add_argument("job_id")
    job.add_argument("--wait", type=float, default=0.0)
    job.add_argument("--url", default=DEFAULT_URL)
    job.set_defaults(func=cmd_job)
    from digitflow_cli.models_cmd import add_model_commands
    from digitflow_cli.monitor_cmd import add_monitor_commands

    add_model_commands(sub)
    add_monitor_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, urllib.error.URLError) as exc:
        print(f"digitflow: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
