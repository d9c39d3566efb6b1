"""Start Flower for the digitflow broker, refusing placeholder credentials.

``python -m digitflow_cli.flower`` reads ``REDIS_URL``, ``FLOWER_PORT`` (5555),
``FLOWER_ADDRESS``, ``FLOWER_BASIC_AUTH`` (``user:password``) and ``DEDICATED_MODEL_QUEUES``.
In compose the basic auth is mandatory (``FLOWER_REQUIRE_AUTH=1``); locally (``make run``)
Flower listens on 127.0.0.1 only.

Flower runs on the app :func:`digitflow.celery_app.make_celery` builds, so its remote-control
messages (``enable_events``, ``inspect``, ``revoke``) use the workers' serializer and it decodes
their msgpack replies. Its Broker page reads queue lengths from Redis (``LLEN`` per queue and
priority list) for the queue names it knows: those live workers report consuming, or, only
when it knows no worker, the app's ``task_queues``. A stage whose every worker is down would
thus drop off the page exactly when its depth matters, so the declared queues are added.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from celery import Celery
from kombu import Queue

from digitflow.settings import PLACEHOLDER_SECRETS, CoreSettings


def flower_argv(env: Mapping[str, str]) -> list[str]:
    """Flower's command line; raises SystemExit with a clear message on unsafe settings."""
    auth = env.get("FLOWER_BASIC_AUTH", "")
    if auth:
        user, _, password = auth.partition(":")
        if not user or len(password) < 8 or password.lower() in PLACEHOLDER_SECRETS:
            raise SystemExit("FLOWER_BASIC_AUTH must be user:password with a real password of 8+ characters")
    elif env.get("FLOWER_REQUIRE_AUTH", "") in {"1", "true", "yes"}:
        raise SystemExit("FLOWER_BASIC_AUTH is required (user:password)")
    argv = ["flower", f"--port={env.get('FLOWER_PORT', '5555')}", f"--address={env.get('FLOWER_ADDRESS', '127.0.0.1')}"]
    if auth:
        argv.append(f"--basic-auth={auth}")
    return argv


def declared_queues(env: Mapping[str, str]) -> list[str]:
    """Every digitflow queue, the dedicated ``inference.<model>`` ones included."""
    from digitflow.queues import all_queues

    dedicated = [m.strip() for m in env.get("DEDICATED_MODEL_QUEUES", "").split(",") if m.strip()]
    return all_queues(dedicated)


def flower_app(env: Mapping[str, str]) -> Celery:
    """The shared Celery configuration (msgpack out, msgpack/JSON in) with every queue declared."""
    from digitflow.celery_app import make_celery

    app = make_celery("flower", CoreSettings.from_env(env))
    app.conf.task_queues = [Queue(name) for name in declared_queues(env)]
    return app


def list_declared_queues(queues: list[str]) -> None:
    """Make Flower's Broker page (and ``/api/queues/length``) always list ``queues``."""
    from flower.views import BaseHandler

    active: Callable[[BaseHandler], list[str]] = BaseHandler.get_active_queue_names

    def names(handler: BaseHandler) -> list[str]:
        return sorted(set(active(handler)) | set(queues))

    BaseHandler.get_active_queue_names = names


def main() -> None:
    argv = flower_argv(os.environ)
    list_declared_queues(declared_queues(os.environ))
    flower_app(os.environ).start(argv)


if __name__ == "__main__":
    main()
