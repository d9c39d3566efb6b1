"""One Redis, one deployment: what ``digitflow run`` (``make run``) checks before it uses a Redis.

A deployment is one ``var/`` folder: its id is made on first run and kept in
``var/deployment-id``. While it runs, ``digitflow run`` holds ``df:deployment`` in its Redis (the
id, folder, pid and host, with a DEPLOYMENT_TTL_S expiry renewed every RENEW_S). A second
deployment that finds that key held by another id does not join: its workers would take the
first one's jobs (and leave them for redelivery when it stops). It starts a private
redis-server on a free port instead and says so in one line: a second checkout just works, and
nothing is shared silently. A key no one renews expires, so a stopped deployment's Redis is free
to take over; ``df:deployment:last`` remembers who used it last, for the line that says so.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, cast

import redis

from digitflow.keys import DEPLOYMENT, DEPLOYMENT_LAST

ID_FILE = "deployment-id"
DEPLOYMENT_TTL_S = 15
RENEW_S = 5.0
# Set (or renew) the owner record if it is absent or ours; 1 if we hold it now, else 0.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held)['id'] ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
"""
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held)['id'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def deployment_id(var_dir: Path) -> str:
    """This deployment's id, read from ``var_dir/deployment-id`` (made there on first use)."""
    path = var_dir / ID_FILE
    if path.is_file():
        found = path.read_text().strip()
        if found:
            return found
    var_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(uuid.uuid4().hex + "\n")
    os.replace(tmp, path)
    return path.read_text().strip()


def record(dep_id: str, var_dir: Path) -> dict[str, Any]:
    """What the owner key says about a deployment: enough for another one to name it."""
    return {"id": dep_id, "dir": str(var_dir), "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def claim(client: redis.Redis, me: dict[str, Any]) -> dict[str, Any] | None:
    """Hold (or renew) ``client``'s owner key as ``me``; None when we hold it, else the live
    owner's record."""
    payload = json.dumps(me)
    if client.eval(_CLAIM, 1, DEPLOYMENT, me["id"], payload, DEPLOYMENT_TTL_S):
        return None
    return owner(client) or {"id": "?"}


def owner(client: redis.Redis) -> dict[str, Any] | None:
    raw = cast(bytes | None, client.get(DEPLOYMENT))
    return cast(dict[str, Any], json.loads(raw)) if raw else None


def last_user(client: redis.Redis) -> dict[str, Any] | None:
    raw = cast(bytes | None, client.get(DEPLOYMENT_LAST))
    return cast(dict[str, Any], json.loads(raw)) if raw else None


def mark_last(client: redis.Redis, me: dict[str, Any]) -> None:
    client.set(DEPLOYMENT_LAST, json.dumps(me))


def release(client: redis.Redis, dep_id: str) -> None:
    """Drop the owner key if we hold it, so the next deployment need not wait for it to expire."""
    client.eval(_RELEASE, 1, DEPLOYMENT, dep_id)


def describe(rec: dict[str, Any]) -> str:
    return f"deployment {rec.get('id')} ({rec.get('dir')}, pid {rec.get('pid')} on {rec.get('host')})"


def taken_over_line(url: str, me: dict[str, Any], previous: dict[str, Any] | None) -> str | None:
    """The line that says this deployment takes over a Redis another (stopped) one used; None if
    it was ours or unused."""
    if previous is None or previous.get("id") == me["id"]:
        return None
    return (
        f"Redis at {url} last served {describe(previous)}, which is not running: this deployment "
        f"({me['id']}) takes it over; each service checks the state there against its own stores"
    )


def busy_line(url: str, holder: dict[str, Any], port: int) -> str:
    """The line that says why a private Redis was started instead of the one at ``url``."""
    return (
        f"Redis at {url} serves another live {describe(holder)}; starting a private redis-server on "
        f"port {port} so the two never share queues. To share one Redis, stop that deployment, or "
        "set REDIS_URL to a Redis (or database number, e.g. redis://host:6379/1) no other uses."
    )
