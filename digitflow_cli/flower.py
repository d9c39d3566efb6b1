"""Start Flower for the digitflow broker, refusing placeholder credentials.

``python -m digitflow.flower`` reads ``REDIS_URL``, ``FLOWER_PORT`` (5555), ``FLOWER_ADDRESS``
and ``FLOWER_BASIC_AUTH`` (``user:password``). In compose the basic auth is mandatory
(``FLOWER_REQUIRE_AUTH=1``); locally (``make run``) Flower listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from digitflow.settings import PLACEHOLDER_SECRETS


def flower_argv(env: Mapping[str, str]) -> list[str]:
    """The celery command line; raises SystemExit with a clear message on unsafe settings."""
    auth = env.get("FLOWER_BASIC_AUTH", "")
    if auth:
        user, _, password = auth.partition(":")
        if not user or len(password) < 8 or password.lower() in PLACEHOLDER_SECRETS:
            raise SystemExit("FLOWER_BASIC_AUTH must be user:password with a real password of 8+ characters")
    elif env.get("FLOWER_REQUIRE_AUTH", "") in {"1", "true", "yes"}:
        raise SystemExit("FLOWER_BASIC_AUTH is required (user:password)")
    argv = [sys.executable, "-m", "celery", "-b", env.get("REDIS_URL", "redis://127.0.0.1:6379/0"), "flower"]
    argv += [f"--port={env.get('FLOWER_PORT', '5555')}", f"--address={env.get('FLOWER_ADDRESS', '127.0.0.1')}"]
    if auth:
        argv.append(f"--basic-auth={auth}")
    return argv


def main() -> None:
    argv = flower_argv(os.environ)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
