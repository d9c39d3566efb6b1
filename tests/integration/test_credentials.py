"""Credentials scope what a client can touch: feedback on its own jobs only, idempotency keys
in its own namespace (docs/api.md, "Credentials"). Real Redis and a real prediction log; no
workers (nothing here needs a job to run)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from digitflow.errors import ServiceUnavailableError
from digitflow.jobs import JobStore
from digitflow.keys import JOB_PREFIX
from digitflow.predlog import PredictionLog
from digitflow.settings import GatewaySettings
from gateway import create_app
from tests.integration.test_gateway_api import assert_error, png_bytes

ALICE, BOB, ADMIN = "alice-key-0123456789", "bob-key-0123456789", "admin-token-0123456789"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'predictions.db'}"


@pytest.fixture
def app(redis_url: str, db_url: str) -> Iterator[Flask]:
    settings = GatewaySettings(
        redis_url=redis_url, api_keys=(ALICE, BOB), admin_token=ADMIN, database_url=db_url, max_wait_s=1.0
    )
    app = create_app(settings)
    yield app
    app.extensions["digitflow"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def submit(client: FlaskClient, key: str, image: bytes | None = None, **headers: str) -> Any:
    return client.post(
        "/v1/jobs", data=image or png_bytes(), content_type="image/png", headers={"X-API-Key": key, **headers}
    )


def logged(db_url: str, job_id: str) -> None:
    """The row postprocess would write for a finished job (what feedback labels)."""
    log = PredictionLog(db_url)
    row = {"job_id": job_id, "at": 1.0, "model": "digits", "version": "1", "label": 3, "classes": 10}
    row |= {"confidence": 0.9, "outlier": False, "pixels": bytes(784), "embedding": bytes(256)}
    log.append([row])
    log.close()


def feedback(client: FlaskClient, job_id: str, label: int, **headers: str) -> Any:
    return client.post(f"/v1/jobs/{job_id}/feedback", json={"label": label}, headers=headers)


def true_label(db_url: str, job_id: str) -> int | None:
    log = PredictionLog(db_url)
    row = log.get(job_id)
    log.close()
    return None if row is None else row.true_label


def test_the_job_record_keeps_a_fingerprint_of_the_submitting_key(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    job_id = submit(client, ALICE).get_json()["job_id"]
    record = {k.decode(): v.decode() for k, v in redis_client.hgetall(JOB_PREFIX + job_id).items()}
    assert len(record["owner"]) == 32 and ALICE not in json.dumps(record)
    other = submit(client, BOB).get_json()["job_id"]
    assert redis_client.hget(JOB_PREFIX + other, "owner").decode() != record["owner"]


def test_feedback_needs_the_credential_that_submitted_the_job(client: FlaskClient, db_url: str) -> None:
    job_id = submit(client, ALICE).get_json()["job_id"]
    logged(db_url, job_id)
    assert_error(feedback(client, job_id, 7), 401, "unauthorized")
    assert_error(feedback(client, job_id, 7, **{"X-API-Key": "guess-0123456789"}), 401, "unauthorized")
    assert_error(feedback(client, job_id, 7, **{"X-API-Key": BOB}), 403, "forbidden")
    assert true_label(db_url, job_id) is None, "a refused label must not be recorded"
    ok = feedback(client, job_id, 7, **{"X-API-Key": ALICE})
    assert ok.status_code == 200 and ok.get_json()["label"] == 7
    assert true_label(db_url, job_id) == 7
    changed = feedback(client, job_id, 4, **{"X-API-Key": ALICE})
    assert changed.status_code == 200 and true_label(db_url, job_id) == 4


def test_the_admin_token_may_label_and_then_only_it_may_change_that_label(client: FlaskClient, db_url: str) -> None:
    job_id = submit(client, ALICE).get_json()["job_id"]
    logged(db_url, job_id)
    assert feedback(client, job_id, 2, Authorization=f"Bearer {ADMIN}").status_code == 200
    assert_error(feedback(client, job_id, 5, **{"X-API-Key": ALICE}), 403, "forbidden")
    assert true_label(db_url, job_id) == 2


def test_an_expired_job_record_leaves_feedback_to_the_admin(
    client: FlaskClient, db_url: str, redis_client: redis.Redis
) -> None:
    job_id = submit(client, ALICE).get_json()["job_id"]
    logged(db_url, job_id)
    redis_client.delete(JOB_PREFIX + job_id)  # the record's TTL ran out; the logged row lives on
    assert_error(feedback(client, job_id, 1, **{"X-API-Key": ALICE}), 403, "forbidden")
    assert feedback(client, job_id, 1, Authorization=f"Bearer {ADMIN}").status_code == 200
    assert redis_client.exists(JOB_PREFIX + job_id) == 0, "labelling must not re-create the record"


def test_idempotency_keys_are_scoped_to_the_credential(client: FlaskClient, redis_client: redis.Redis) -> None:
    first = submit(client, ALICE, **{"Idempotency-Key": "order-1"})
    replay = submit(client, ALICE, **{"Idempotency-Key": "order-1"})
    other = submit(client, BOB, **{"Idempotency-Key": "order-1"})
    assert first.status_code == replay.status_code == other.status_code == 202
    assert first.get_json()["job_id"] == replay.get_json()["job_id"]
    assert other.get_json()["job_id"] != first.get_json()["job_id"], "Bob must not get Alice's job"
    assert redis_client.hget(JOB_PREFIX + other.get_json()["job_id"], "owner") != redis_client.hget(
        JOB_PREFIX + first.get_json()["job_id"], "owner"
    )


def test_the_same_key_with_a_different_body_is_refused(client: FlaskClient) -> None:
    submit(client, ALICE, **{"Idempotency-Key": "order-2"})
    different = submit(client, ALICE, png_bytes(size=(80, 64)), **{"Idempotency-Key": "order-2"})
    assert_error(different, 422, "idempotency_key_reused")


def test_a_job_failed_by_an_outage_is_not_replayed_to_the_retry(
    client: FlaskClient, redis_client: redis.Redis, redis_url: str
) -> None:
    first = submit(client, ALICE, **{"Idempotency-Key": "order-3"}).get_json()["job_id"]
    JobStore(redis_client, 3600).fail_unsent([first], ServiceUnavailableError("the broker was away"))
    retry = submit(client, ALICE, **{"Idempotency-Key": "order-3"})
    assert retry.status_code == 202 and retry.get_json()["job_id"] != first
    again = submit(client, ALICE, **{"Idempotency-Key": "order-3"})
    assert again.get_json()["job_id"] == retry.get_json()["job_id"], "the new job is what the key means now"


def test_a_key_whose_job_record_is_gone_creates_a_new_job(client: FlaskClient, redis_client: redis.Redis) -> None:
    """Key and record are written in one script; should the record still vanish (expired, or
    written by an older gateway in two steps), the key does not point at nothing."""
    first = submit(client, ALICE, **{"Idempotency-Key": "order-4"}).get_json()["job_id"]
    redis_client.delete(JOB_PREFIX + first)
    retry = submit(client, ALICE, **{"Idempotency-Key": "order-4"})
    assert retry.status_code == 202 and retry.get_json()["job_id"] != first
    assert redis_client.hget(JOB_PREFIX + retry.get_json()["job_id"], "status") == b"queued"
