"""``/v1/models`` and model choice at submit, against a real Redis (no workers, no MLflow):
the gateway reads the registry view, refuses write actions without the admin token, and puts
the input profile, a pinned version and the model's inference queue into the chain it sends."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from digitflow.model_view import write_entries
from digitflow.settings import GatewaySettings
from gateway import create_app
from tests.conftest import wait_until
from tests.integration.test_gateway_api import assert_error, png_bytes

TOKEN = "admin-token-for-tests-1234"


def entry(name: str, profile: str, versions: tuple[str, ...], production: str) -> dict[str, Any]:
    records = {v: {"version": v, "input_profile": profile, "labels": ["a", "b"], "source": f"/x/{v}"} for v in versions}
    return {"name": name, "aliases": {"production": production}, "history": [production], "versions": records}


def make_app(redis_url: str, **changes: Any) -> Flask:
    settings = GatewaySettings(redis_url=redis_url, heartbeat_ttl_s=3.0, heartbeat_interval_s=0.5, **changes)
    return create_app(settings)


@pytest.fixture
def apps(redis_url: str) -> Iterator[list[Flask]]:
    made: list[Flask] = []
    yield made
    for app in made:
        app.extensions["digitflow"].batcher.close()
        app.extensions["digitflow"].listener.stop()


@pytest.fixture
def client(apps: list[Flask], redis_url: str) -> FlaskClient:
    apps.append(make_app(redis_url, admin_token=TOKEN, dedicated_model_queues=("fashion",), registry_timeout_s=2.0))
    return apps[-1].test_client()


def sent_chain(redis_client: redis.Redis) -> tuple[list[dict[str, Any]], str]:
    """The items of the first chain waiting in the preprocess queue, and its inference queue."""
    wait_until(lambda: redis_client.llen("preprocess") > 0, 10, what="a chain in the preprocess queue")
    envelope = json.loads(redis_client.rpop("preprocess"))  # type: ignore[arg-type]
    args, _, embed = msgpack.unpackb(base64.b64decode(envelope["body"]), raw=False)
    inference = next(sig for sig in embed["chain"] if sig["task"] == "inference.run")
    return args[0]["items"], inference["options"]["queue"]


def test_models_are_listed_from_the_registry_view(client: FlaskClient, redis_client: redis.Redis) -> None:
    empty = client.get("/v1/models").get_json()
    assert empty == {
        "models": [{"name": "digits", "production": None, "links": {"self": "/v1/models/digits"}}],
        "registry": False,
    }
    write_entries(
        redis_client, [entry("digits", "digits-mnist", ("1", "2"), "2"), entry("fashion", "fashion-mnist", ("1",), "1")]
    )
    body = client.get("/v1/models").get_json()
    assert body["registry"] and [(m["name"], m["production"], m["versions"]) for m in body["models"]] == [
        ("digits", "2", 2),
        ("fashion", "1", 1),
    ]
    detail = client.get("/v1/models/digits").get_json()
    assert detail["production"] == "2" and [v["version"] for v in detail["versions"]] == ["1", "2"]
    assert "source" not in detail["versions"][0]
    assert_error(client.get("/v1/models/shoes"), 404, "model_not_found")
    assert_error(client.get("/v1/models/digits@2"), 400, "invalid_request")


def test_submit_carries_profile_pin_and_route(client: FlaskClient, redis_client: redis.Redis) -> None:
    # Version 1 is marked servable (pinnable); version 3 is not, and a pin of it is refused.
    digits = {**entry("digits", "digits-mnist", ("1", "2", "3"), "2"), "servable": ["1"]}
    write_entries(redis_client, [digits, entry("fashion", "fashion-mnist", ("1",), "1")])
    assert client.post("/v1/jobs?model=digits@1", data=png_bytes(), content_type="image/png").status_code == 202
    items, queue = sent_chain(redis_client)
    assert items[0]["model"] == "digits" and items[0]["pin"] == "1" and items[0]["profile"] == "digits-mnist"
    assert queue == "inference"
    assert client.post("/v1/jobs?model=fashion", data=png_bytes(), content_type="image/png").status_code == 202
    items, queue = sent_chain(redis_client)
    assert items[0]["profile"] == "fashion-mnist" and "pin" not in items[0] and queue == "inference.fashion"
    job = json.loads(client.get(f"/v1/jobs/{items[0]['job_id']}").get_data())
    assert job["model"]["name"] == "fashion"
    for bad, status, code in [
        ("digits@7", 404, "model_not_found"),
        ("digits@3", 403, "version_not_servable"),
        ("shoes", 404, "model_not_found"),
        ("digits@x", 400, "invalid_request"),
    ]:
        assert_error(client.post(f"/v1/jobs?model={bad}", data=png_bytes(), content_type="image/png"), status, code)


def test_write_actions_need_a_valid_admin_token(client: FlaskClient, apps: list[Flask], redis_url: str) -> None:
    url = "/v1/models/digits/promote"
    err = assert_error(client.post(url, json={"version": 2}), 401, "unauthorized")
    assert "Bearer" in err["message"]
    assert_error(client.post(url, json={"version": 2}, headers={"Authorization": "Bearer wrong"}), 403, "forbidden")
    assert_error(client.post("/v1/models/digits/rollback", headers={"Authorization": "Basic x"}), 401, "unauthorized")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for body in ({"version": 0}, {"version": "2a"}, {"version": True}, {}, None):
        assert_error(client.post(url, json=body, headers=auth), 400, "invalid_request")
    # A valid request, but no registry service is running: 503 with Retry-After, quickly.
    response = client.post(url, json={"version": 2}, headers=auth)
    assert_error(response, 503, "registry_unavailable")
    assert response.headers["Retry-After"]
    apps.append(make_app(redis_url))
    disabled = apps[-1].test_client().post(url, json={"version": 2}, headers=auth)
    assert "disabled" in assert_error(disabled, 403, "admin_disabled")["message"]
