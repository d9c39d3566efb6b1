"""The gateway refuses metadata bombs and over-budget requests with a 413 before anything is
queued (real Redis, no workers: nothing may reach it)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import redis
from flask import Flask
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from bench.hostile_files import chunk, png_with_chunks, ztxt_bomb
from digitflow.settings import GatewaySettings
from gateway import create_app


@pytest.fixture
def app(redis_url: str) -> Iterator[Flask]:
    app = create_app(GatewaySettings(redis_url=redis_url, max_wait_s=1.0))
    yield app
    app.extensions["digitflow"].close()


def post(app: Flask, images: list[bytes]) -> tuple[int, dict[str, object]]:
    # Encoded in memory: the test client would spool a large body to a temporary file it never closes.
    files = [FileStorage(io.BytesIO(data), f"{i}.png", "image", "image/png") for i, data in enumerate(images)]
    boundary, body = encode_multipart(MultiDict([("image", f) for f in files]))
    response = app.test_client().post("/v1/jobs", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    return response.status_code, response.get_json()


def test_forty_ztxt_bombs_in_one_request_are_refused_at_the_first(app: Flask, redis_client: redis.Redis) -> None:
    status, body = post(app, [ztxt_bomb()] * 40)  # the 2.6 MB request
    assert status == 413
    assert body["error"]["code"] == "metadata_too_large"  # type: ignore[index]
    assert body["error"]["details"]["part"] == 0  # type: ignore[index]
    assert redis_client.keys("df:job:*") == []


def test_a_request_over_its_pixel_budget_is_refused_whole(app: Flask, redis_client: redis.Redis) -> None:
    # Five 10 MP images, each within MAX_IMAGE_PIXELS (12 MP), 50 MP together (budget 48 MP);
    # a private chunk pads each past the decompression-bomb ratio.
    big = png_with_chunks(chunk(b"prIv", bytes(6000)), width=3200, height=3125)
    status, body = post(app, [big] * 4)
    assert status == 202, body
    status, body = post(app, [big] * 5)
    assert status == 413
    assert body["error"] == {
        "code": "payload_too_large",
        "message": "the request is too large: at most 48000000 pixels per request",
        "details": {"limit": "pixels", "max": 48_000_000, "part": 4},
    }
    assert len(redis_client.keys("df:job:*")) == 4  # only the first request's jobs exist


def test_the_default_pixel_limit_is_twelve_megapixels(app: Flask) -> None:
    status, body = post(app, [png_with_chunks(chunk(b"prIv", bytes(7000)), width=4000, height=3001)])
    assert status == 413
    assert body["error"]["code"] == "image_too_large"  # type: ignore[index]
