"""The MLflow Model Registry, as digitflow uses it: register, alias, list, download.

Only the registry service, the trainer, the CLI's model commands and (to download) inference
workers use this module; it imports MLflow lazily, so importing it costs nothing elsewhere.
A version is a run's ``model`` artifact folder holding ``weights.safetensors`` + ``model.json``
(no pickle). Each version is tagged with what serving needs (input profile, architecture,
labels, weights sha256) and with its training metrics, so the registry view can be built from
the registry alone. The production history (for rollback) is a tag of the registered model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from digitflow.errors import ModelNotFoundError, ModelVersionNotFoundError
from digitflow.model_files import DIGITS_PROFILE, verify_model_dir
from digitflow.model_spec import PRODUCTION

# Checked without importing MLflow (about a second): the error names the extra to install.
if importlib.util.find_spec("mlflow") is None:
    raise ImportError("digitflow.model_store needs MLflow: pip install 'digitflow[registry]'")

logger = logging.getLogger("digitflow.model_store")
EXPERIMENT = "digitflow"
HISTORY_TAG = "digitflow.production_history"
SERVING_TAGS = ("input_profile", "architecture", "weights_sha256")
METRIC_KEYS = ("heldout_accuracy", "heldout_augmented_accuracy", "n_train", "n_heldout", "train_seconds")
LINEAGE_KEYS = ("dataset", "dataset_sha256", "code_version", "git_commit", "torch_version", "epochs", "seed")


def quiet_mlflow() -> None:
    """Before MLflow is imported: no usage telemetry (nothing leaves the machine but what we ask)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class RegistryStore:
    """One MLflow client on ``tracking_uri`` (also the registry URI)."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None) -> None:
        quiet_mlflow()
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._artifact_uris: dict[str, str] = {}

    # -- runs and versions ------------------------------------------------------------------
    def experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return str(found.experiment_id)
        location = self.artifact_root.resolve().as_uri() if self.artifact_root is not None else None
        try:
            return str(self.client.create_experiment(EXPERIMENT, artifact_location=location))
        except MlflowException:  # created meanwhile by another process
            return str(self.client.get_experiment_by_name(EXPERIMENT).experiment_id)  # type: ignore[union-attr]

    def store_id(self) -> str:
        """This registry's id: its ``digitflow`` experiment's id and creation time (made here if
        missing). A store deleted and made again, or another server, gives another one; derived,
        not written, so two processes that ask at once agree without a race."""
        experiment = self.client.get_experiment(self.experiment_id())
        return f"{experiment.experiment_id}-{experiment.creation_time}"

    def start_run(self, name: str, run_name: str) -> str:
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags={"digitflow.model": name})
        return str(run.info.run_id)

    def log_run(self, run_id: str, params: dict[str, Any], metrics: dict[str, float]) -> None:
        for key, value in params.items():
            self.client.log_param(run_id, key, str(value)[:6000])
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value))

    def register_dir(self, name: str, model_dir: Path, run_id: str | None = None, description: str = "") -> str:
        """Log ``model_dir`` as a run's ``model`` artifacts and register it as a new version of
        ``name`` (created if needed); returns the version. Raises ModelVersionInvalidError when
        the folder's weights do not match its model.json."""
        meta = verify_model_dir(model_dir)
        own_run = run_id is None
        if run_id is None:
            run_id = self.start_run(name, f"register {name} from {model_dir.name}")
            metrics = meta.get("metrics") or {}
            self.log_run(
                run_id,
                {k: metrics.get(k) for k in LINEAGE_KEYS if metrics.get(k) is not None},
                {k: metrics[k] for k in METRIC_KEYS if isinstance(metrics.get(k), int | float)},
            )
        self.client.log_artifacts(run_id, str(model_dir), artifact_path="model")
        if own_run:
            self.client.set_terminated(run_id, "FINISHED")
        self.ensure_model(name)
        tags = version_tags(meta)
        mv = self.client.create_model_version(
            name, f"runs:/{run_id}/model", run_id=run_id, tags=tags, description=description
        )
        logger.info("registered %s version %s from %s", name, mv.version, model_dir)
        return str(mv.version)

    def next_version(self, name: str) -> str:
        """The number MLflow gives the next version of ``name`` (what a model.json must say)."""
        versions = self.client.search_model_versions(f"name='{name}'")
        return str(1 + max((int(mv.version) for mv in versions), default=0))

    def ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise

    # -- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        names, token = [], None
        while True:
            page = self.client.search_registered_models(max_results=1000, page_token=token)
            names += [rm.name for rm in page]
            token = page.token
            if not token:
                return sorted(names)

    def entry(self, name: str) -> dict[str, Any]:
        """The view entry of ``name`` built from the registry; ModelNotFoundError if unknown."""
        from mlflow.exceptions import MlflowException

        try:
            rm = self.client.get_registered_model(name)
        except MlflowException as exc:
            raise ModelNotFoundError(f"no model named {name!r} in the registry", model=name) from exc
        versions = {}
        for mv in self.client.search_model_versions(f"name='{name}'"):
            record = version_record(mv.tags or {})
            record.update(
                version=str(mv.version),
                run_id=mv.run_id,
                source=self.location(str(mv.source)),
                registered_at=round((mv.creation_timestamp or 0) / 1000, 3),
            )
            versions[str(mv.version)] = record
        return {
            "name": name,
            "aliases": {alias: str(version) for alias, version in (rm.aliases or {}).items()},
            "history": json.loads((rm.tags or {}).get(HISTORY_TAG, "[]")),
            "versions": versions,
        }

    def location(self, source: str) -> str:
        """Where a version's files are: ``runs:/<id>/<path>`` resolved to the run's artifact store
        (a local folder with the embedded store, ``mlflow-artifacts:/...`` behind a server)."""
        if not source.startswith("runs:/"):
            return source
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        if run_id not in self._artifact_uris:
            self._artifact_uris[run_id] = str(self.client.get_run(run_id).info.artifact_uri)
        return f"{self._artifact_uris[run_id].rstrip('/')}/{path}"

    def entries(self) -> list[dict[str, Any]]:
        return [self.entry(name) for name in self.names()]

    def check_version(self, name: str, version: str) -> None:
        """Raise ModelNotFoundError / ModelVersionNotFoundError unless ``name`` has ``version``."""
        from mlflow.exceptions import MlflowException

        self.entry_exists(name)
        try:
            self.client.get_model_version(name, version)
        except MlflowException as exc:
            raise ModelVersionNotFoundError(f"model {name!r} has no version {version}", model=name) from exc

    def entry_exists(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            raise ModelNotFoundError(f"no model named {name!r} in the registry", model=name) from exc

    def download(self, name: str, version: str, dst: Path) -> Path:
        """Copy a version's files into ``dst`` (created); returns the folder holding them."""
        import mlflow.artifacts

        uri = self.location(str(self.client.get_model_version(name, version).source))
        dst.mkdir(parents=True, exist_ok=True)
        return Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=self.tracking_uri)
        )

    def verify(self, name: str, version: str) -> dict[str, Any]:
        """Download a version and check its files (no torch); ModelVersionInvalidError if corrupt."""
        with tempfile.TemporaryDirectory(prefix="digitflow-verify-") as tmp:
            return verify_model_dir(self.download(name, version, Path(tmp)))

    # -- aliases and history ---------------------------------------------------------------
    def alias(self, name: str, alias: str = PRODUCTION) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: str | None) -> None:
        if version is None:
            self.client.delete_registered_model_alias(name, alias)
        else:
            self.client.set_registered_model_alias(name, alias, version)

    def history(self, name: str) -> list[str]:
        tags = self.client.get_registered_model(name).tags or {}
        return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]

    def set_history(self, name: str, history: list[str]) -> None:
        # Bounded: a tag value holds at most a few thousand characters.
        self.client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-200:]))

    # -- first start -----------------------------------------------------------------------
    def bootstrap(self, models_dir: Path) -> list[str]:
        """Register every shipped ``MODEL_DIR/<name>/<version>/`` of a model the registry does not
        know yet, and make the highest one production. Idempotent; returns the names registered."""
        known = set(self.names())
        done = []
        for model_dir in sorted(p for p in Path(models_dir).iterdir() if p.is_dir()):
            shipped = sorted(
                (p for p in model_dir.iterdir() if p.name.isdigit() and (p / "model.json").is_file()),
                key=lambda p: int(p.name),
            )
            if not shipped or model_dir.name in known:
                continue
            self.ensure_model(model_dir.name)
            if self.client.search_model_versions(f"name='{model_dir.name}'"):
                continue  # another process is bootstrapping it
            versions = [
                self.register_dir(model_dir.name, p, description=f"shipped as {model_dir.name}/{p.name}")
                for p in shipped
            ]
            self.set_alias(model_dir.name, PRODUCTION, versions[-1])
            self.set_history(model_dir.name, [versions[-1]])
            done.append(model_dir.name)
        return done


def version_tags(meta: dict[str, Any]) -> dict[str, str]:
    """Tags of a registered version: what serving needs plus held-out metrics and lineage."""
    metrics = meta.get("metrics") or {}
    tags = {key: str(meta[key]) for key in SERVING_TAGS if meta.get(key) is not None}
    tags["input_profile"] = str(meta.get("input_profile") or DIGITS_PROFILE)
    tags["labels"] = json.dumps(meta["labels"])
    for key in (*METRIC_KEYS, *LINEAGE_KEYS):
        if metrics.get(key) is not None:
            tags[f"metric.{key}" if key in METRIC_KEYS else key] = str(metrics[key])
    if meta.get("created_at"):
        tags["created_at"] = str(meta["created_at"])
    return tags


def version_record(tags: dict[str, str]) -> dict[str, Any]:
    """The view's record of a version, from its tags (see version_tags)."""
    record: dict[str, Any] = {key: tags.get(key) for key in SERVING_TAGS}
    record["labels"] = json.loads(tags.get("labels", "[]"))
    record["metrics"] = {
        key.removeprefix("metric."): float(value) for key, value in tags.items() if key.startswith("metric.")
    }
    for key in (*LINEAGE_KEYS, "created_at"):
        if key in tags:
            record[key] = tags[key]
    return record
