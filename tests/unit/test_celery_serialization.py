"""The one Celery configuration: msgpack out; msgpack and JSON (Flower's and bare `celery
inspect`'s remote control) accepted in; pickle refused, so no received message can run code."""

from __future__ import annotations

import pytest
from kombu.exceptions import ContentDisallowed
from kombu.serialization import dumps, loads, prepare_accept_content

from digitflow.celery_app import make_celery
from digitflow.settings import CoreSettings


@pytest.fixture(scope="module")
def conf() -> object:
    app = make_celery("test", CoreSettings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
    return app.conf


def test_sends_msgpack_and_accepts_only_msgpack_and_json(conf: object) -> None:
    assert conf.task_serializer == "msgpack" and conf.result_serializer == "msgpack"  # type: ignore[attr-defined]
    assert sorted(conf.accept_content) == ["json", "msgpack"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_msgpack_and_json_bodies_are_decoded(conf: object, serializer: str) -> None:
    content_type, encoding, body = dumps({"method": "enable_events", "arguments": {}}, serializer=serializer)
    accept = prepare_accept_content(conf.accept_content)  # type: ignore[attr-defined]  # as kombu's consumers do
    assert loads(body, content_type, encoding, accept=accept) == {"method": "enable_events", "arguments": {}}


def test_a_pickled_body_is_refused_before_it_is_unpickled(conf: object) -> None:
    # A pickle whose loading would call RuntimeError("unpickled: this code ran") (protocol 4,
    # written out as bytes so that nothing in the project imports pickle).
    body = (
        b"\x80\x04\x95<\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x0cRuntimeError\x94\x93\x94"
        b"\x8c\x18unpickled: this code ran\x94\x85\x94R\x94."
    )
    with pytest.raises(ContentDisallowed, match="pickle"):
        accept = prepare_accept_content(conf.accept_content)  # type: ignore[attr-defined]
        loads(body, "application/x-python-serialize", "binary", accept=accept)
