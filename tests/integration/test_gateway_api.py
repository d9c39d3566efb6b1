"""The gateway's HTTP contract against a real Redis (no workers needed: nothing is consumed).

Every bad input is refused before it reaches a queue, with one JSON error shape.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from digitflow.settings import GatewaySettings
from digitflow_cli.supervisor import free_port
from gateway import create_app
from tests.conftest import wait_until


def png_bytes(size: tuple[int, int] = (64, 64), mode: str = "L") -> bytes:
    img = Image.new(mode, size, 255)
    img.paste(0, (20, 10, 40, 54))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def tiff_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("L", (32, 32), 0).save(out, "TIFF")
    return out.getvalue()


def bomb_png(side: int = 30_000) -> bytes:
    """A 1-bit PNG of side x side zero pixels: a few KB on disk, 900 megapixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes((side + 7) // 8)
    raw = zlib.compress(row * side, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.fixture
def settings(redis_url: str) -> GatewaySettings:
    return GatewaySettings(redis_url=redis_url, max_upload_mb=1.0, max_wait_s=2.0)


@pytest.fixture
def app(settings: GatewaySettings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    services = app.extensions["digitflow"]
    services.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def test_a_valid_upload_is_accepted_parked_and_queued(client: FlaskClient, redis_client: redis.Redis) -> None:
    response = client.post("/v1/jobs", data={"image": (io.BytesIO(png_bytes()), "seven.png")})
    assert response.status_code == 202
    body = response.get_json()
    job_id = body["job_id"]
    assert body["status"] == "queued"
    assert body["links"]["self"] == f"/v1/jobs/{job_id}"
    assert response.headers["Location"] == f"/v1/jobs/{job_id}"
    assert redis_client.get(f"df:img:{job_id}") == png_bytes()
    assert 0 < redis_client.ttl(f"df:job:{job_id}") <= 24 * 3600
    wait_until(lambda: redis_client.llen("preprocess") == 1, 5, what="the chain message")
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "queued"
    assert job["model"] == {"name": "digits", "version": None}
    assert job["result"] is None and job["error"] is None


def test_raw_image_body_and_several_parts(client: FlaskClient, redis_client: redis.Redis) -> None:
    raw = client.post("/v1/jobs", data=png_bytes(), content_type="image/png")
    assert raw.status_code == 202 and len(raw.get_json()["job_id"]) == 32
    many = client.post("/v1/jobs", data={"image": [(io.BytesIO(png_bytes()), f"{i}.png") for i in range(3)]})
    assert many.status_code == 202
    jobs = many.get_json()["jobs"]
    assert len({j["job_id"] for j in jobs}) == 3
    wait_until(lambda: redis_client.exists(*(f"df:job:{j['job_id']}" for j in jobs)) == 3, 2)


def test_idempotency_key_returns_the_same_job(client: FlaskClient, redis_client: redis.Redis) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", data=png_bytes(), content_type="image/png", headers=headers)
    second = client.post("/v1/jobs", data=png_bytes(), content_type="image/png", headers=headers)
    other = client.post("/v1/jobs", data=png_bytes(), content_type="image/png", headers={"Idempotency-Key": "order-43"})
    assert first.status_code == second.status_code == 202
    assert first.get_json()["job_id"] == second.get_json()["job_id"] != other.get_json()["job_id"]
    time.sleep(0.3)
    assert redis_client.llen("preprocess") == 2, "the repeated request must not start a second chain"
    assert len(redis_client.keys("df:job:*")) == 2


BAD_INPUTS = [
    ("no body", dict(data=b"", content_type=""), 400, "invalid_request"),
    ("multipart without image", dict(data={"file": (io.BytesIO(b"x"), "x.png")}), 400, "invalid_request"),
    ("empty image part", dict(data={"image": (io.BytesIO(b""), "x.png")}), 400, "empty_image"),
    ("empty raw body", dict(data=b"", content_type="image/png"), 400, "empty_image"),
    (
        "text is not an image",
        dict(data=b"hello, I am not a picture" * 10, content_type="image/png"),
        400,
        "invalid_image",
    ),
    ("truncated png", dict(data=png_bytes()[:-30], content_type="image/png"), 400, "invalid_image"),
    ("tiff is not allowed", dict(data=tiff_bytes(), content_type="image/tiff"), 415, "unsupported_format"),
    ("json body", dict(data=b'{"a": 1}', content_type="application/json"), 415, "unsupported_format"),
    ("decompression bomb", dict(data=bomb_png(), content_type="image/png"), 413, "image_too_large"),
    (
        "over the upload limit",
        dict(data=b"\x89PNG" + bytes(2 * 1024 * 1024), content_type="image/png"),
        413,
        "payload_too_large",
    ),
    (
        "unknown model",
        dict(data=png_bytes(), content_type="image/png", query_string={"model": "cats"}),
        404,
        "model_not_found",
    ),
    (
        "malformed model",
        dict(data=png_bytes(), content_type="image/png", query_string={"model": "../x"}),
        400,
        "invalid_request",
    ),
    (
        "bad idempotency key",
        dict(data=png_bytes(), content_type="image/png", headers={"Idempotency-Key": "a b"}),
        400,
        "invalid_request",
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "code"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_before_any_queue(
    client: FlaskClient, redis_client: redis.Redis, case: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    assert_error(client.post("/v1/jobs", **kwargs), status, code)
    time.sleep(0.05)
    assert redis_client.llen("preprocess") == 0
    assert redis_client.keys("df:job:*") == []


def test_malformed_multipart_is_a_clear_400(client: FlaskClient) -> None:
    body = b'--XX\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n\x89PNG'  # never closed
    response = client.post("/v1/jobs", data=body, content_type="multipart/form-data; boundary=XX")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] in {"invalid_request", "empty_image", "invalid_image"}


@pytest.mark.parametrize("job_id", ["0" * 32, "nope", "..%2F..%2Fetc%2Fpasswd", "A" * 32, "x" * 500])
def test_unknown_job_ids_are_404(client: FlaskClient, job_id: str) -> None:
    assert_error(client.get(f"/v1/jobs/{job_id}"), 404, "job_not_found" if "%2F" not in job_id else "not_found")


def test_wait_parameter_is_validated_and_bounded(client: FlaskClient) -> None:
    assert_error(client.get(f"/v1/jobs/{'0' * 32}?wait=soon"), 400, "invalid_request")
    job_id = client.post("/v1/jobs", data=png_bytes(), content_type="image/png").get_json()["job_id"]
    start = time.monotonic()
    job = client.get(f"/v1/jobs/{job_id}?wait=60").get_json()  # capped at max_wait_s = 2
    assert job["status"] == "queued"
    assert 1.5 < time.monotonic() - start < 5


def test_prefer_wait_falls_back_to_202_when_not_done(client: FlaskClient) -> None:
    start = time.monotonic()
    response = client.post("/v1/jobs", data=png_bytes(), content_type="image/png", headers={"Prefer": "wait=1"})
    assert response.status_code == 202
    assert 0.8 < time.monotonic() - start < 4


def test_redis_down_answers_503_with_retry_after_quickly() -> None:
    app = create_app(GatewaySettings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    client = app.test_client()
    start = time.monotonic()
    response = client.post("/v1/jobs", data=png_bytes(), content_type="image/png")
    assert_error(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "2"
    assert_error(client.get(f"/v1/jobs/{'0' * 32}"), 503, "service_unavailable")
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["redis"] is False
    assert time.monotonic() - start < 5, "a down Redis must not hang requests"


def test_health_and_metrics(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["missing_stages"] == ["preprocess", "inference", "postprocess"]
    text = client.get("/metrics").get_data(as_text=True)
    assert 'digitflow_queue_depth{queue="preprocess"}' in text
    assert "digitflow_queue_oldest_age_seconds" in text
    assert "digitflow_redis_up 1.0" in text
