from __future__ import annotations

import pytest

from digitflow.errors import ConfigurationError, InvalidMessageError
from digitflow.messages import check_item, make_batch, parse_batch
from digitflow.settings import GatewaySettings, InferenceSettings


def test_settings_read_typed_values_from_the_environment() -> None:
    s = GatewaySettings.from_env(
        {"BATCH_MAX": "8", "TASK_EVENTS": "false", "MODELS": "digits, fashion", "MAX_UPLOAD_MB": "2.5"}
    )
    assert s.batch_max == 8
    assert s.task_events is False
    assert s.models == ("digits", "fashion")
    assert s.max_upload_bytes == int(2.5 * 1024 * 1024)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"BATCH_MAX": "many"}, "BATCH_MAX"),
        ({"BATCH_MAX": "0"}, "BATCH_MAX"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"TASK_EVENTS": "maybe"}, "TASK_EVENTS"),
        ({"DEFAULT_MODEL": "nope"}, "DEFAULT_MODEL"),
    ],
)
def test_invalid_settings_are_refused_at_start(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        GatewaySettings.from_env(env)


def test_inference_device_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="DEVICE"):
        InferenceSettings.from_env({"DEVICE": "tpu"})


def test_batch_envelope_is_validated() -> None:
    good = make_batch("b1", [{"job_id": "j", "model": "digits"}], sent_at=1.0)
    assert parse_batch(good)["items"][0]["job_id"] == "j"
    for bad in [
        None,
        [],
        {"v": 2, "items": [], "sent_at": 1.0},
        {"v": 1, "items": "x", "sent_at": 1.0},
        {"v": 1, "items": []},
    ]:
        with pytest.raises(InvalidMessageError):
            parse_batch(bad)


def test_items_are_checked_one_by_one() -> None:
    assert check_item({"job_id": "j", "model": "m", "pixels": bytes(784)}, ["pixels"])["job_id"] == "j"
    with pytest.raises(InvalidMessageError) as info:
        check_item({"job_id": "j", "model": "m", "pixels": bytes(10)}, ["pixels"])
    assert info.value.details["job_id"] == "j"
    with pytest.raises(InvalidMessageError):
        check_item({"job_id": "j", "model": "m", "logits": []}, ["logits"])
    with pytest.raises(InvalidMessageError):
        check_item({"model": "m"}, [])


def test_placeholder_secrets_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="placeholder"):
        GatewaySettings.from_env({"REDIS_URL": "redis://:changeme@redis:6379/0"})
    assert GatewaySettings.from_env({"REDIS_URL": "redis://:s3cr3t-Xq9@redis:6379/0"}).redis_url.endswith("/0")


def test_flower_refuses_placeholder_or_missing_auth() -> None:
    from digitflow_cli.flower import flower_argv

    with pytest.raises(SystemExit, match="real password"):
        flower_argv({"FLOWER_BASIC_AUTH": "admin:changeme"})
    with pytest.raises(SystemExit, match="required"):
        flower_argv({"FLOWER_REQUIRE_AUTH": "1"})
    argv = flower_argv({"FLOWER_BASIC_AUTH": "admin:a-long-secret", "FLOWER_PORT": "6000"})
    assert "--basic-auth=admin:a-long-secret" in argv and "--port=6000" in argv
