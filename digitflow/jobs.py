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
from digitflow.job_scripts import CREATE_LUA, SET_IF_LIVE_LUA, STRIKE_LUA, UPDATE_LUA
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
Fence = tuple[str, ...]  # ("token", t) or ("msg", sender's fence, message id): see job_scripts.py
STATUS_OF_STAGE = {"preprocess": "preprocessing", "inference": "inferring", "postprocess": "postprocessing"}
# Which stage a job in each status waits on or runs in (a queued job waits for preprocess).
STAGE_OF_STATUS = {"queued": "preprocess", **{v: k for k, v in STATUS_OF_STAGE.items()}}

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
        self._update = client.register_script(UPDATE_LUA)
        self._strike = client.register_script(STRIKE_LUA)
        self._create = client.register_script(CREATE_LUA)
        self._set_if_live = client.register_script(SET_IF_LIVE_LUA)

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
    # A stage writes a job only while it holds the job's fence (digitflow/job_scripts.py): the
    # delivery that claimed the job last. A worker that was paused or cut off while another
    # took its batch over finds its writes refused, and the next stage refuses what it sent.
    def update(
        self,
        changes: Sequence[tuple[str, Mapping[str, str]]],
        terminal: bool = False,
        fences: Sequence[Fence | None] | None = None,
    ) -> list[bool]:
        """Apply field changes to live jobs only (and, per job with a ``fences`` entry, only
        while that fence holds); returns, per job, whether it was written."""
        if not changes:
            return []
        keys, args = _update_call(changes, terminal, fences)
        return [int(x) > 0 for x in self._update(keys=keys, args=args)]

    def start_stage(
        self,
        stage: str,
        batch_id: str,
        job_ids: Sequence[str],
        queued_at: float,
        extra: Mapping[str, Mapping[str, str]] | None = None,
        sender_fences: Sequence[str] | None = None,
    ) -> tuple[list[int], int]:
        """Claim live jobs for this delivery of a batch and mark them running in ``stage`` (plus
        any ``extra`` fields per job, e.g. the model version the previous stage used), and count
        this delivery of the batch, in one round trip.

        ``sender_fences``: per job, the fence its sender held ("" from the gateway). A job is
        claimed when its fence is still that one, or its last claim came from this same message
        (a redelivery). Returns per job its new fence (> 0: this delivery holds the job now),
        0 (finished or expired) or -1 (another delivery holds it), and the delivery attempt
        (1 = first).

        The previous stage's end time is this batch's ``queued_at``: stages write no separate
        "end" record on success, which saves a Redis round trip per stage and batch.
        """
        if not job_ids:
            return [], 1
        now = repr(time.time())
        fields = {"status": STATUS_OF_STAGE[stage], f"t:{stage}:queued": repr(queued_at), f"t:{stage}:start": now}
        extra = extra or {}
        senders = sender_fences or [""] * len(job_ids)
        claims: list[Fence | None] = [message_fence(stage, batch_id, f) for f in senders]
        attempt_key = f"{ATTEMPT_PREFIX}{stage}:{batch_id}"
        changes = [(job_id, {**fields, **extra.get(job_id, {})}) for job_id in job_ids]
        keys, args = _update_call(changes, False, claims, claim=True)
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
        claimed, attempt, _ = results
        return [int(x) for x in claimed], int(attempt)

    def fail(
        self,
        stage: str,
        failures: Sequence[tuple[str, DigitflowError]],
        fences: Mapping[str, Fence] | None = None,
    ) -> list[bool]:
        """Fail jobs at ``stage`` (those with an entry in ``fences`` only while it holds);
        returns, per job, whether it was live (and is failed now)."""
        now = repr(time.time())
        fences = fences or {}
        return self.update(
            [(job_id, {**_fail_fields(stage, err), f"t:{stage}:end": now}) for job_id, err in failures],
            terminal=True,
            fences=[fences.get(job_id) for job_id, _ in failures],
        )

    def succeed(
        self, stage: str, results: Sequence[tuple[str, Mapping[str, Any]]], fences: Mapping[str, Fence] | None = None
    ) -> list[bool]:
        """Record results (those with an entry in ``fences`` only while it holds); returns,
        per job, whether it was recorded."""
        now = repr(time.time())
        fences = fences or {}
        return self.update(
            [
                (
                    job_id,
                    {"status": "succeeded", "result": json.dumps(result), "finished_at": now, f"t:{stage}:end": now},
                )
                for job_id, result in results
            ],
            terminal=True,
            fences=[fences.get(job_id) for job_id, _ in results],
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


def token_fence(token: int) -> Fence:
    """The condition of a write by the delivery that claimed a job with fence ``token``."""
    return ("token", str(token))


def message_fence(stage: str, batch_id: str, sender_fence: str) -> Fence:
    """The condition of a write by any delivery of one message: the job is still its sender's,
    or was last claimed by a delivery of this message (used to claim, and where the claiming
    delivery's token is unknown: a pool's parent failing the batch of a child it killed)."""
    return ("msg", sender_fence, f"{stage}|{batch_id}|{sender_fence}")


def _update_call(
    changes: Sequence[tuple[str, Mapping[str, str]]],
    terminal: bool,
    fences: Sequence[Fence | None] | None = None,
    claim: bool = False,
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV of UPDATE_LUA for ``changes``."""
    entries: list[list[Any]] = [[job_id, int(terminal), dict(fields)] for job_id, fields in changes]
    for entry, fence in zip(entries, fences or [None] * len(entries), strict=True):
        if fence is not None:
            entry += [list(fence), int(claim)]
    payload = json.dumps(entries)
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
