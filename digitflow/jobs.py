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

from digitflow.errors import DigitflowError, IdempotencyConflictError, JobNotFoundError
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
# Returns 1 per key that was live and updated. allow-oom (Redis 7): at maxmemory (noeviction)
# Redis refuses ordinary writes, but this script must still be able to fail or finish a job;
# a terminal update deletes the job's parked image, so it frees more memory than it takes.
_UPDATE_LUA = """#!lua flags=allow-oom
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


# KEYS[1]: a job hash, ARGV[1]: the strike field. A strike for a job whose record expired
# would re-create its hash without a TTL (HINCRBY creates what is missing): return -1 instead.
_STRIKE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""


# Creation, one atomic step. KEYS[1] (optional): the idempotency record. ARGV[1]: JSON spec
# (jobs [[id, model, item JSON for the backlog]], owner, fp, now, ttl, outage codes, backlog zset);
# ARGV[2..4]: job prefix, image prefix, active-jobs zset; ARGV[5..]: one image per job.
# Returns {'created', ''}, {'replay', record} or {'conflict', record}.
_CREATE_LUA = """
local spec = cjson.decode(ARGV[1])
if #KEYS == 1 then
  local prior = redis.call('GET', KEYS[1])
  if prior then
    local record = cjson.decode(prior)
    if record.fp ~= spec.fp then return {'conflict', prior} end
    local outage, replay = {}, true
    for _, code in ipairs(spec.outage) do outage[code] = true end
    for _, id in ipairs(record.ids) do
      local fields = redis.call('HMGET', ARGV[2] .. id, 'status', 'error')
      if not fields[1] then
        replay = false
      elseif fields[1] == 'failed' and fields[2] then
        local ok, err = pcall(cjson.decode, fields[2])
        if ok and type(err) == 'table' and outage[err.code] then replay = false end
      end
    end
    if replay then return {'replay', prior} end
  end
end
local ids = {}
for i, job in ipairs(spec.jobs) do
  local key = ARGV[2] .. job[1]
  redis.call('HSET', key, 'status', 'queued', 'model', job[2], 'created_at', spec.now, 'owner', spec.owner)
  redis.call('EXPIRE', key, spec.ttl)
  redis.call('SET', ARGV[3] .. job[1], ARGV[4 + i], 'EX', spec.ttl)
  redis.call('ZADD', ARGV[4], spec.now, job[1])
  if spec.backlog ~= '' then
    redis.call('HSET', key, 'item', job[3])
    redis.call('ZADD', spec.backlog, spec.now, job[1])
  end
  ids[i] = job[1]
end
if #KEYS == 1 then
  redis.call('SET', KEYS[1], cjson.encode({ids = ids, fp = spec.fp}), 'EX', spec.ttl)
end
return {'created', ''}
"""
# KEYS[1]: a job hash; ARGV: field, value. Written only while the record lives (an HSET on an
# expired record would re-create it without a TTL).
_SET_IF_LIVE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# Failures that say nothing about the request, only that the system was away: a retry with the
# same idempotency key gets new jobs instead of this answer again.
OUTAGE_CODES = frozenset(
    {"service_unavailable", "store_unavailable", "registry_unavailable", "model_unavailable", "model_loading"}
    | {"deadline_exceeded", "stage_timeout"}
)


@dataclass(frozen=True)
class Idempotency:
    """A client's Idempotency-Key and the fingerprint of the request body it was sent with."""

    key: str
    fingerprint: str


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
        self._strike = client.register_script(_STRIKE_LUA)
        self._create = client.register_script(_CREATE_LUA)
        self._set_if_live = client.register_script(_SET_IF_LIVE_LUA)

    # -- gateway side -------------------------------------------------------------------
    def create(
        self,
        jobs: Sequence[NewJob],
        idempotency: Idempotency | None = None,
        owner: str = "",
        backlog: tuple[str, Sequence[str]] | None = None,
    ) -> list[str]:
        """Create job records, park their images and list the jobs as accepted but not yet
        sent (``backlog``: the zset and one entry per job), in one atomic step. Returns the
        job ids in effect: the new ones, or an earlier request's with the same idempotency key.

        An idempotency key is scoped to ``owner`` (the submitting credential's fingerprint). A
        replay with a different body raises IdempotencyConflictError; when an earlier job failed
        because of an outage (OUTAGE_CODES) or its record is gone, the retry creates new jobs.
        """
        backlog_key, entries = backlog or ("", [""] * len(jobs))
        spec = {
            "jobs": [[job.job_id, job.model, entry] for job, entry in zip(jobs, entries, strict=True)],
            "owner": owner,
            "fp": idempotency.fingerprint if idempotency else "",
            "now": repr(time.time()),
            "ttl": self.ttl_s,
            "outage": sorted(OUTAGE_CODES),
            "backlog": backlog_key,
        }
        keys = [IDEMPOTENCY_PREFIX + f"{owner}:{idempotency.key}"] if idempotency else []
        answer = self._create(
            keys=keys,
            args=[json.dumps(spec), JOB_PREFIX, IMAGE_PREFIX, ACTIVE_JOBS, *(job.image for job in jobs)],
        )
        outcome, prior = answer[0].decode(), answer[1]
        if outcome == "created":
            return [job.job_id for job in jobs]
        record = json.loads(prior)
        if outcome == "conflict":
            raise IdempotencyConflictError(
                "this Idempotency-Key was used with a different request body", job_ids=record["ids"]
            )
        return list(record["ids"])

    def fail_unsent(self, job_ids: Iterable[str], error: DigitflowError) -> None:
        """Fail jobs the gateway accepted but could not hand to the pipeline."""
        self.update([(job_id, _fail_fields("gateway", error)) for job_id in job_ids], terminal=True)

    # -- stage side ---------------------------------------------------------------------
    def update(self, changes: Sequence[tuple[str, Mapping[str, str]]], terminal: bool = False) -> list[bool]:
        """Apply field changes to live jobs only; returns, per job, whether it was live."""
        if not changes:
            return []
        keys, args = _update_call(changes, terminal)
        return [bool(x) for x in self._update(keys=keys, args=args)]

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
        keys, args = _update_call([(job_id, {**fields, **extra.get(job_id, {})}) for job_id in job_ids], False)
        # EVALSHA queued by hand: a registered Script in a pipeline makes redis-py send SCRIPT
        # EXISTS first, a second round trip on every batch of every stage.
        pipe = self.redis.pipeline(transaction=False)
        pipe.evalsha(self._update.sha, len(keys), *keys, *args)
        pipe.incr(attempt_key)
        pipe.expire(attempt_key, self.ttl_s)
        results = pipe.execute(raise_on_error=False)
        if isinstance(results[0], redis.exceptions.NoScriptError):  # Redis restarted without its scripts
            results[0] = self._update(keys=keys, args=args)  # loads the script; the attempt counted once
        for result in results:
            if isinstance(result, Exception):
                raise result
        live, attempt, _ = results
        return [bool(x) for x in live], int(attempt)

    def fail(self, stage: str, failures: Sequence[tuple[str, DigitflowError]]) -> list[bool]:
        """Fail jobs at ``stage``; returns, per job, whether it was live (and is failed now)."""
        now = repr(time.time())
        return self.update(
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
        strike count for this stage, now one higher; None if no job was running alone or its
        record has expired (it is not re-created)."""
        suspect = cast(bytes | None, self.redis.getdel(f"{SUSPECT_PREFIX}{stage}:{batch_id}"))
        if suspect is None:
            return None
        job_id = suspect.decode()
        strikes = int(cast(int, self._strike(keys=[JOB_PREFIX + job_id], args=[f"strikes:{stage}"])))
        return (job_id, strikes) if strikes >= 0 else None

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

    def image(self, job_id: str) -> bytes | None:
        """A job's parked upload, one per call: Redis counts a reply being sent against its
        ``maxmemory``, and one MGET of a batch of large photos briefly held megabytes there, which
        made the other stages' writes fail as out of memory (tests/integration/test_redis_full.py)."""
        return cast(bytes | None, self.redis.get(IMAGE_PREFIX + job_id))

    # -- reading ------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any]:
        """The public view of a job; raises JobNotFoundError for unknown or expired ids."""
        if not is_valid_job_id(job_id):
            raise JobNotFoundError("no job with this id", job_id=job_id[:64])
        raw = cast(dict[bytes, bytes], self.redis.hgetall(JOB_PREFIX + job_id))
        if not raw:
            raise JobNotFoundError("no job with this id (unknown or expired)", job_id=job_id)
        return render_job(job_id, {k.decode(): v.decode() for k, v in raw.items()})

    def credentials(self, job_id: str) -> tuple[str, str] | None:
        """Who submitted the job and who last labelled it (credential fingerprints, "" when
        not recorded); None when the record is unknown or expired."""
        status, owner, labeller = cast(
            list[bytes | None], self.redis.hmget(JOB_PREFIX + job_id, ["status", "owner", "feedback_by"])
        )
        if status is None:
            return None
        return (owner or b"").decode(), (labeller or b"").decode()

    def set_labeller(self, job_id: str, credential: str) -> bool:
        """Record which credential labelled the job; False (nothing written) if it expired."""
        return bool(self._set_if_live(keys=[JOB_PREFIX + job_id], args=["feedback_by", credential]))

    def status(self, job_id: str) -> str | None:
        value = cast(bytes | None, self.redis.hget(JOB_PREFIX + job_id, "status"))
        return value.decode() if value is not None else None


def _update_call(changes: Sequence[tuple[str, Mapping[str, str]]], terminal: bool) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of _UPDATE_LUA for ``changes``."""
    payload = json.dumps([[job_id, int(terminal), dict(fields)] for job_id, fields in changes])
    return [JOB_PREFIX + job_id for job_id, _ in changes], [payload, DONE_CHANNEL, IMAGE_PREFIX, ACTIVE_JOBS]


def _fail_fields(stage: str, error: DigitflowError) -> dict[str, str]:
    return {
        "status": "failed",
        # The public view: operator detail (paths, library text) stays in the service log.
        "error": json.dumps(error.public().to_dict(stage=stage)),
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
