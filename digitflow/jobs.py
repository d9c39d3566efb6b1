"""The job record in Redis: the single source of truth for a job's state.

One hash per job (``df:job:<id>``) with a TTL, written by the gateway and by each stage. Every
write after creation goes through one Lua script that refuses to touch a finished job, so a
redelivered task (at-least-once delivery) can never overwrite a result: exactly one result is
recorded per job. Finished job ids are published on ``df:done`` so waiting clients wake at once.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from digitflow.errors import DigitflowError, JobNotFoundError
from digitflow.tasks import STAGES

JOB_PREFIX = "df:job:"
IMAGE_PREFIX = "df:img:"
IDEMPOTENCY_PREFIX = "df:idem:"
DONE_CHANNEL = "df:done"
TERMINAL = frozenset({"succeeded", "failed"})
STATUS_OF_STAGE = {"preprocess": "preprocessing", "inference": "inferring", "postprocess": "postprocessing"}

# KEYS: job hashes. ARGV[1]: JSON list, one entry per key: [job_id, terminal(0|1), {field: value}].
# ARGV[2]: done channel. ARGV[3]: image key prefix. Returns 1 per key that was live and updated.
_UPDATE_LUA = """
local updates = cjson.decode(ARGV[1])
local live, done = {}, {}
for i, key in ipairs(KEYS) do
  local status = redis.call('HGET', key, 'status')
  if status and status ~= 'succeeded' and status ~= 'failed' then
    local u = updates[i]
    local args = {}
    for k, v in pairs(u[3]) do args[#args + 1] = k; args[#args + 1] = v end
    if #args > 0 then redis.call('HSET', key, unpack(args)) end
    if u[2] == 1 then
      done[#done + 1] = u[1]
      redis.call('DEL', ARGV[3] .. u[1])
    end
    live[i] = 1
  else
    live[i] = 0
  end
end
if #done > 0 then redis.call('PUBLISH', ARGV[2], table.concat(done, ',')) end
return live
"""


def new_job_id() -> str:
    # 128 bits of randomness, URL-safe, and nothing a client can steer (no path tricks).
    return secrets.token_hex(16)


def is_valid_job_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


@dataclass(frozen=True)
class NewJob:
    job_id: str
    model: str
    image: bytes


def _ms(later: float | None, earlier: float | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier) * 1000.0, 3)


class JobStore:
    """Reads and writes job records. Raises redis errors as they come; callers map them."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._update = client.register_script(_UPDATE_LUA)

    # -- gateway side -------------------------------------------------------------------
    def create(self, jobs: Sequence[NewJob], idempotency_keys: Sequence[str | None] | None = None) -> list[str]:
        """Create job records and park their images; returns the job ids actually in effect.

        With an idempotency key that was seen before, the earlier job's id is returned and no
        new job is created.
        """
        keys = idempotency_keys or [None] * len(jobs)
        ids = [job.job_id for job in jobs]
        fresh = [True] * len(jobs)
        if any(keys):
            pipe = self.redis.pipeline(transaction=False)
            for job, key in zip(jobs, keys, strict=True):
                if key:
                    pipe.set(IDEMPOTENCY_PREFIX + key, job.job_id, nx=True, ex=self.ttl_s)
                    pipe.get(IDEMPOTENCY_PREFIX + key)
            answers = iter(pipe.execute())
            for i, key in enumerate(keys):
                if key:
                    created, existing = next(answers), next(answers)
                    if not created:
                        ids[i] = existing.decode()
                        fresh[i] = False
        now = repr(time.time())
        pipe = self.redis.pipeline(transaction=False)
        for job, is_fresh in zip(jobs, fresh, strict=True):
            if not is_fresh:
                continue
            key = JOB_PREFIX + job.job_id
            pipe.hset(key, mapping={"status": "queued", "model": job.model, "created_at": now})
            pipe.expire(key, self.ttl_s)
            pipe.set(IMAGE_PREFIX + job.job_id, job.image, ex=self.ttl_s)
        pipe.execute()
        return ids

    def fail_unsent(self, job_ids: Iterable[str], error: DigitflowError) -> None:
        """Fail jobs the gateway accepted but could not hand to the pipeline."""
        self.update([(job_id, _fail_fields("gateway", error)) for job_id in job_ids], terminal=True)

    # -- stage side ---------------------------------------------------------------------
    def update(self, changes: Sequence[tuple[str, Mapping[str, str]]], terminal: bool = False) -> list[bool]:
        """Apply field changes to live jobs only; returns, per job, whether it was live."""
        if not changes:
            return []
        payload = json.dumps([[job_id, int(terminal), dict(fields)] for job_id, fields in changes])
        live = self._update(
            keys=[JOB_PREFIX + job_id for job_id, _ in changes], args=[payload, DONE_CHANNEL, IMAGE_PREFIX]
        )
        return [bool(x) for x in live]

    def start_stage(self, stage: str, job_ids: Sequence[str], queued_at: float) -> list[bool]:
        now = repr(time.time())
        fields = {"status": STATUS_OF_STAGE[stage], f"t:{stage}:queued": repr(queued_at), f"t:{stage}:start": now}
        return self.update([(job_id, fields) for job_id in job_ids])

    def end_stage(
        self, stage: str, job_ids: Sequence[str], extra: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        now = repr(time.time())
        extra = extra or {}
        self.update([(job_id, {f"t:{stage}:end": now, **extra.get(job_id, {})}) for job_id in job_ids])

    def fail(self, stage: str, failures: Sequence[tuple[str, DigitflowError]]) -> None:
        now = repr(time.time())
        self.update(
            [(job_id, {**_fail_fields(stage, err), f"t:{stage}:end": now}) for job_id, err in failures],
            terminal=True,
        )

    def succeed(self, stage: str, results: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        now = repr(time.time())
        self.update(
            [
                (
                    job_id,
                    {"status": "succeeded", "result": json.dumps(result), "finished_at": now, f"t:{stage}:end": now},
                )
                for job_id, result in results
            ],
            terminal=True,
        )

    def images(self, job_ids: Sequence[str]) -> list[bytes | None]:
        return cast(list[bytes | None], self.redis.mget([IMAGE_PREFIX + j for j in job_ids])) if job_ids else []

    # -- reading ------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any]:
        """The public view of a job; raises JobNotFoundError for unknown or expired ids."""
        if not is_valid_job_id(job_id):
            raise JobNotFoundError("no job with this id", job_id=job_id[:64])
        raw = cast(dict[bytes, bytes], self.redis.hgetall(JOB_PREFIX + job_id))
        if not raw:
            raise JobNotFoundError("no job with this id (unknown or expired)", job_id=job_id)
        return render_job(job_id, {k.decode(): v.decode() for k, v in raw.items()})

    def status(self, job_id: str) -> str | None:
        value = cast(bytes | None, self.redis.hget(JOB_PREFIX + job_id, "status"))
        return value.decode() if value is not None else None


def _fail_fields(stage: str, error: DigitflowError) -> dict[str, str]:
    return {
        "status": "failed",
        "error": json.dumps(error.to_dict(stage=stage)),
        "finished_at": repr(time.time()),
    }


def render_job(job_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """Turn a stored hash into the API shape (see README, "API")."""

    def ts(name: str) -> float | None:
        value = fields.get(name)
        return float(value) if value else None

    timings: dict[str, Any] = {}
    for stage in STAGES:
        queued, start, end = ts(f"t:{stage}:queued"), ts(f"t:{stage}:start"), ts(f"t:{stage}:end")
        if start is not None:
            timings[stage] = {"queue": _ms(start, queued), "run": _ms(end, start)}
    created, finished = ts("created_at"), ts("finished_at")
    first_queued = ts("t:preprocess:queued")
    if first_queued is not None:
        timings["gateway"] = {"batching": _ms(first_queued, created)}
    timings["total"] = _ms(finished, created)
    version = fields.get("model_version")
    return {
        "job_id": job_id,
        "status": fields.get("status", "queued"),
        "model": {"name": fields.get("model"), "version": version},
        "result": json.loads(fields["result"]) if "result" in fields else None,
        "error": json.loads(fields["error"]) if "error" in fields else None,
        "timings_ms": timings,
        "created_at": created,
        "finished_at": finished,
    }
