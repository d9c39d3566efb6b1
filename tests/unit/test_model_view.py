"""The registry view's pure parts: model specs, version resolution, routes, error round trips."""

from __future__ import annotations

from typing import Any

import pytest

from digitflow.errors import (
    DeployFailedError,
    InvalidRequestError,
    ModelVersionNotFoundError,
    RegistryUnavailableError,
    error_from_dict,
)
from digitflow.model_spec import ModelSpec, public_entry, resolve
from digitflow.settings import ConfigurationError, CoreSettings, GatewaySettings, InferenceSettings
from digitflow.tasks import ROUTES, inference_queue

ENTRY: dict[str, Any] = {
    "name": "digits",
    "aliases": {"production": "2"},
    "history": ["1", "2"],
    "versions": {
        "1": {"version": "1", "input_profile": "digits-mnist", "source": "/x/1", "run_id": "r1"},
        "2": {"version": "2", "input_profile": "digits-mnist", "source": "/x/2", "run_id": "r2"},
        "10": {"version": "10", "input_profile": "digits-mnist", "source": "/x/10", "run_id": "r10"},
    },
}


@pytest.mark.parametrize(
    ("text", "name", "pin"),
    [("digits", "digits", None), ("digits@3", "digits", "3"), ("fashion-v2_x@12", "fashion-v2_x", "12")],
)
def test_model_specs_name_a_model_and_maybe_a_version(text: str, name: str, pin: str | None) -> None:
    spec = ModelSpec.parse(text)
    assert (spec.name, spec.pin) == (name, pin)
    assert str(spec) == text


@pytest.mark.parametrize("text", ["", "Digits", "digits@", "digits@0", "digits@latest", "digits@1@2", "../x", "a" * 65])
def test_malformed_model_specs_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        ModelSpec.parse(text)


def test_resolution_picks_production_or_the_pinned_version() -> None:
    assert resolve(ENTRY, None)[0] == "2"
    # A pin must name a servable version (production, the candidate, or one an admin marked).
    assert resolve({**ENTRY, "servable": ["1"]}, "1")[1]["source"] == "/x/1"
    with pytest.raises(ModelVersionNotFoundError) as err:
        resolve(ENTRY, "7")
    assert err.value.details["available"] == ["1", "2", "10"]  # numeric order
    with pytest.raises(ModelVersionNotFoundError):
        resolve({**ENTRY, "aliases": {}}, None)


def test_public_entry_hides_storage_details() -> None:
    body = public_entry(ENTRY)
    assert body["production"] == "2" and [v["version"] for v in body["versions"]] == ["1", "2", "10"]
    assert all("source" not in v and "run_id" not in v for v in body["versions"])


def test_dedicated_models_get_their_own_inference_queue() -> None:
    assert inference_queue("fashion", ("fashion",)) == "inference.fashion"
    assert inference_queue("digits", ("fashion",)) == "inference"
    assert ROUTES["registry.promote"] == {"queue": "registry"}


def test_errors_survive_the_trip_through_redis() -> None:
    err = error_from_dict(DeployFailedError("no", model="digits", errors={"w1": "bad"}).to_dict())
    assert isinstance(err, DeployFailedError) and err.status == 409 and err.details["errors"] == {"w1": "bad"}
    unavailable = error_from_dict(RegistryUnavailableError("away", retry_after=5).to_dict())
    assert isinstance(unavailable, RegistryUnavailableError) and unavailable.status == 503
    assert error_from_dict({"code": "something_new", "message": "x"}).code == "internal_error"


@pytest.mark.parametrize(
    ("cls", "env", "fragment"),
    [
        (GatewaySettings, {"ADMIN_TOKEN": "changeme"}, "ADMIN_TOKEN"),
        (GatewaySettings, {"ADMIN_TOKEN": "short"}, "ADMIN_TOKEN"),
        (InferenceSettings, {"MAX_LOADED_MODELS": "0"}, "MAX_LOADED_MODELS"),
        (InferenceSettings, {"DEPLOY_RECHECK_S": "0"}, "DEPLOY_RECHECK_S"),
    ],
)
def test_registry_settings_are_validated(cls: type[CoreSettings], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        cls.from_env(env)


def test_registry_defaults_to_sqlite_under_var(tmp_path: Any) -> None:
    s = InferenceSettings.from_env({"VAR_DIR": str(tmp_path)})
    assert s.tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert s.max_loaded_models == 8 and s.model_cache_dir == tmp_path / "model-cache"
    assert InferenceSettings.from_env({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}).artifact_root is None


def test_the_gateway_rereads_the_view_only_when_the_cached_copy_would_refuse() -> None:
    from gateway.uploads import _refused_by

    settings = GatewaySettings.from_env({"MODELS": "digits"})
    # No registry: the view stays empty and MODELS decides, so a re-read would change nothing.
    assert not _refused_by({}, ModelSpec.parse("digits"), settings)
    assert _refused_by({}, ModelSpec.parse("letters"), settings)
    view = {"digits": ENTRY}
    assert not _refused_by(view, ModelSpec.parse("digits"), settings)
    assert not _refused_by(view, ModelSpec.parse("digits@2"), settings)  # production: servable
    assert _refused_by(view, ModelSpec.parse("digits@10"), settings)  # marked servable a moment ago?
    assert _refused_by(view, ModelSpec.parse("letters"), settings)
