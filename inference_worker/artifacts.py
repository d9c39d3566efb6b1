"""Fetching a registered version's files into this machine's model cache, once.

``<MODEL_CACHE>/<name>/<version>/`` holds a copy of the version's ``model`` artifacts. Versions
are immutable, so a copy that exists is used as it is (``load_model`` still checks its sha256),
unless its weights are not the ones the registry view names: a copy made from an MLflow store
that was reset since (its version numbers restart and name other models) is fetched again.
Files in a local artifact store (the embedded SQLite default) are copied directly; any other
location (the compose ``mlflow`` server's ``mlflow-artifacts:``, object stores) is downloaded
through MLflow, imported only then.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from digitflow.errors import ModelUnavailableError, ModelVersionInvalidError
from digitflow.model_files import install_dir, read_model_json
from digitflow.model_store import quiet_mlflow


def local_path(source: str) -> Path | None:
    """The folder behind ``source`` when it is on this machine's file system, else None."""
    if source.startswith("file:"):
        return Path(unquote(urlsplit(source).path))
    if source.startswith("/"):
        return Path(source)
    return None


def fetch_version(
    cache_dir: Path, tracking_uri: str, name: str, version: str, source: str, weights_sha256: str | None = None
) -> Path:
    """The local folder of ``name`` ``version`` (copied or downloaded on first use; again when
    the copy's weights are not ``weights_sha256``, the view's).

    Raises ModelUnavailableError when the source cannot be read.
    """
    target = cache_dir / name / version
    drop_stale_copy(target, weights_sha256)

    def fill(tmp: Path) -> None:
        path = local_path(source)
        if path is not None:
            if not path.is_dir():
                raise ModelUnavailableError(f"artifacts of {name} version {version} are missing at {path}", model=name)
            shutil.copytree(path, tmp)
            return
        quiet_mlflow()
        import mlflow.artifacts

        tmp.mkdir(parents=True)
        got = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp), tracking_uri=tracking_uri)
        )
        if got != tmp:  # download_artifacts may nest the folder under its own name
            for item in got.iterdir():
                shutil.move(str(item), tmp / item.name)
            got.rmdir()

    try:
        return install_dir(fill, target)
    except ModelUnavailableError:
        raise
    except Exception as exc:  # MLflow, network or disk: this worker cannot get the version
        raise ModelUnavailableError(
            f"cannot fetch {name} version {version} from the registry: {type(exc).__name__}: {exc}"[:400], model=name
        ) from exc


def drop_stale_copy(target: Path, weights_sha256: str | None) -> None:
    """Remove a cached copy whose model.json names other weights than ``weights_sha256``."""
    if not weights_sha256 or not target.is_dir():
        return
    try:
        cached = str(read_model_json(target).get("weights_sha256", "")).lower()
    except ModelVersionInvalidError:
        cached = ""
    if cached != weights_sha256.lower():
        aside = target.with_name(f".{target.name}.stale.{os.getpid()}")
        with contextlib.suppress(OSError):  # another process moved it first
            os.rename(target, aside)
        shutil.rmtree(aside, ignore_errors=True)
