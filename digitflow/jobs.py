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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from digitflow.errors import DigitflowError, JobNotFoundError
from digitflow.keys import (
    ACTIVE_JOBS,
    ATTEMPT_PREFIX,
    DONE_CHANNEL,
    IDEMPOTENCY_PREFIX,
    IMAGE_PREFIX,
    JOB_PREFIX,
    SUSPECT_PREFIX,
)
from digitflow.tasks import STAGES

TERMINAL = frozenset({"succeeded", "failed"})
STATUS_OF_STAGE = {"preprocess": "preprocessing", "inference": "inferring", "postprocess": "postprocessing"}
# Which stage a job in each status waits on or runs in (a queued job waits for preprocess).
STAGE_OF_STATUS = {"queued": "preprocess", **{v: k for k, v in STATUS_OF_STAGE.items()}}

# KEYS: job hashes. ARGV[1]: JSON list, one entry per key: [job_id, terminal(0|1), {field: value}].
# ARGV[2]: done channel. ARGV[3]: image key prefix. ARGV[4]: active-jobs zset.
# Returns 1 per key that was live and updated.
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
      redis.call('ZREM', ARGV[4], u[1])
    end
    live[i] = 1
  else
    live[i] = 0
    if not status then redis.call('ZREM', ARGV[4], updates[i][1]) end
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
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for job, is_fresh in zip(jobs, fresh, strict=True):
            if not is_fresh:
                continue
            key = JOB_PREFIX + job.job_id
            pipe.hset(key, mapping={"status": "queued", "model": job.model, "created_at": repr(now)})
            pipe.expire(key, self.ttl_s)
            pipe.set(IMAGE_PREFIX + job.job_id, job.image, ex=self.ttl_s)
            pipe.zadd(ACTIVE_JOBS, {job.job_id: now})
        pipe.execute()
        return ids

    def fail_unsent(self, job_ids: Iterable[str], error: DigitflowError) -> None:
        """Fail jobs the gateway accepted but could not hand to the pipeline."""
        self.update([(job_id, _fail_fields("gateway", error)) for job_id in job_ids], terminal=True)

    # -- stage side ---------------------------------------------------------------------
    def update(
        self, changes: Sequence[tuple[str, Mapping[str, str]]], terminal: bool = False, client: Any = None
    ) -> list[bool]:
        """Apply field changes to live jobs only; returns, per job, whether it was live.

        With a pipeline as ``client`` the call is queued and the pipeline's result holds it.
        """
        if not changes:
            return []
        payload = json.dumps([[job_id, int(terminal), dict(fields)] for job_id, fields in changes])
        live = self._update(
            keys=[JOB_PREFIX + job_id for job_id, _ in changes],
            args=[payload, DONE_CHANNEL, IMAGE_PREFIX, ACTIVE_JOBS],
            client=client,
        )
        return [bool(x) for x in live] if client is None else []

    def start_stage(
        self,
        stage: str,
        batch_id: str,
        job_ids: Sequence[str],
        queued_at: float,
        extra: Mapping[str, Mapping[str, str]] | None = None,
    ) -> tuple[list[bool], int]:
        """Mark live jobs as running in ``stage`` (plus any ``extra`` fields per job, e.g. the
        model version the previous stage used) and count this delivery of the batch, in one
        round trip. Returns per job whether it is live, and the delivery attempt (1 = first).

        The previous stage's end time is this batch's ``queued_at``: stages write no separate
        "end" record on success, which saves a Redis round trip per stage and batch.
        """
        if not job_ids:
            return [], 1
        now = repr(time.time())
        fields = {"status": STATUS_OF_STAGE[stage], f"t:{stage}:queued": repr(queued_at), f"t:{stage}:start": now}
        extra = extra or {}
        attempt_key = f"{ATTEMPT_PREFIX}{stage}:{batch_id}"
        pipe = self.redis.pipeline(transaction=False)
        self.update([(job_id, {**fields, **extra.get(job_id, {})}) for job_id in job_ids], client=pipe)
        pipe.incr(attempt_key)
        pipe.expire(attempt_key, self.ttl_s)
        live, attempt, _ = pipe.execute()
        return [bool(x) for x in live], int(attempt)

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

    # -- redelivery bookkeeping (see digitflow/stage.py) -----------------------------------
    def set_suspect(self, stage: str, batch_id: str, job_id: str | None) -> None:
        key = f"{SUSPECT_PREFIX}{stage}:{batch_id}"
        if job_id is None:
            self.redis.delete(key)
        else:
            self.redis.set(key, job_id, ex=self.ttl_s)

    def strike_suspect(self, stage: str, batch_id: str) -> tuple[str, int] | None:
        """The job that was running alone when the last delivery's process died, with its
        strike count for this stage, now one higher; None if no job was running alone."""
        suspect = cast(bytes | None, self.redis.getdel(f"{SUSPECT_PREFIX}{stage}:{batch_id}"))
        if suspect is None:
            return None
        job_id = suspect.decode()
        strikes = int(cast(int, self.redis.hincrby(JOB_PREFIX + job_id, f"strikes:{stage}", 1)))
        return job_id, strikes

    # -- deadline sweep --------------------------------------------------------------------
    def overdue(self, deadline_s: float, limit: int = 500) -> list[str]:
        cutoff = time.time() - deadline_s
        ids = cast(list[bytes], self.redis.zrangebyscore(ACTIVE_JOBS, "-inf", cutoff, start=0, num=limit))
        return [i.decode() for i in ids]

    def fail_overdue(self, deadline_s: float, error_for: Callable[[str], DigitflowError]) -> list[str]:
        """Fail every job unfinished ``deadline_s`` after acceptance, at the stage it waits in.

        ``error_for(stage)`` builds the error; returns the ids failed now.
        """
        ids = self.overdue(deadline_s)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(JOB_PREFIX + job_id, "status")
        statuses = pipe.execute()
        changes = []
        for job_id, status in zip(ids, statuses, strict=True):
            stage = STAGE_OF_STATUS.get(status.decode() if status else "", "preprocess")
            changes.append((job_id, _fail_fields(stage, error_for(stage))))
        live = self.update(changes, terminal=True)
        # Already finished or expired records: just forget them.
        gone = [job_id for job_id, is_live in zip(ids, live, strict=True) if not is_live]
        if gone:
            self.redis.zrem(ACTIVE_JOBS, *gone)
        return [job_id for job_id, is_live in zip(ids, live, strict=True) if is_live]

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
    """Turn a stored hash into the API shape (docs/api.md)."""

    def ts(name: str) -> float | None:
        value = fields.get(name)
        return float(value) if value else None

    timings: dict[str, Any] = {}
    for i, stage in enumerate(STAGES):
        queued, start, end = ts(f"t:{stage}:queued"), ts(f"t:{stage}:start"), ts(f"t:{stage}:end")
        if end is None and i + 1 < len(STAGES):
            end = ts(f"t:{STAGES[i + 1]}:queued")  # a stage that passed the job on ended as it sent it
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
