"""Hostile multipart bodies: many tiny parts, huge part headers. Refused before any part is
parsed (docs/reliability.md, "Hostile clients and lost work"); the times are printed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from digitflow.settings import GatewaySettings
from gateway import create_app
from tests.integration.test_gateway_api import assert_error, png_bytes

BOUNDARY = "hostile"


@pytest.fixture
def client(redis_url: str) -> Iterator[FlaskClient]:
    app: Flask = create_app(GatewaySettings(redis_url=redis_url, max_upload_mb=4.0))
    yield app.test_client()
    app.extensions["digitflow"].close()


def multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    """``parts``: (header lines, content) pairs, joined into one form-data body."""
    out = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n" for head, data in parts)
    return out + b"--" + BOUNDARY.encode() + b"--\r\n"


IMAGE = (b'Content-Disposition: form-data; name="image"; filename="a.png"', png_bytes())


def post(client: FlaskClient, body: bytes) -> tuple[object, float]:
    start = time.perf_counter()
    response = client.post("/v1/jobs", data=body, content_type=f"multipart/form-data; boundary={BOUNDARY}")
    return response, time.perf_counter() - start


def test_a_body_of_many_tiny_parts_is_refused_before_parsing(client: FlaskClient) -> None:
    tiny = (b'Content-Disposition: form-data; name="x"', b"1")
    body = multipart([IMAGE, *([tiny] * 50_000)])
    response, seconds = post(client, body)
    print(f"\n50,000-part body ({len(body) // 1024} KB) refused in {seconds * 1000:.1f} ms")
    error = assert_error(response, 400, "invalid_request")
    assert "too many multipart parts" in error["message"]


def test_a_part_with_huge_headers_is_refused(client: FlaskClient) -> None:
    head = IMAGE[0] + b"\r\nX-Padding: " + b"a" * 200_000
    response, seconds = post(client, multipart([(head, IMAGE[1])]))
    print(f"\n200 KB part header refused in {seconds * 1000:.1f} ms")
    error = assert_error(response, 400, "invalid_request")
    assert "part headers exceed" in error["message"]


def test_a_normal_form_with_a_model_field_still_passes(client: FlaskClient) -> None:
    model = (b'Content-Disposition: form-data; name="model"', b"digits")
    response, _ = post(client, multipart([IMAGE, IMAGE, model]))
    assert response.status_code == 202, response.get_data(as_text=True)  # type: ignore[attr-defined]
