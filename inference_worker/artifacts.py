"""Fetching a registered version's files into this machine's model cache, once.

``<MODEL_CACHE>/<name>/<version>/`` holds a copy of the version's ``model`` artifacts. Versions
are immutable, so a copy that exists is used as it is (``load_model`` still checks its sha256).
Files in a local artifact store (the embedded SQLite default) are copied directly; any other
location (the compose ``mlflow`` server's ``mlflow-artifacts:``, object stores) is downloaded
through MLflow, imported only then.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from digitflow.errors import ModelUnavailableError
from digitflow.model_files import install_dir
from digitflow.model_store import quiet_mlflow


def local_path(source: str) -> Path | None:
    """The folder behind ``source`` when it is on this machine's file system, else None."""
    if source.startswith("file:"):
        return Path(unquote(urlsplit(source).path))
    if source.startswith("/"):
        return Path(source)
    return None


def fetch_version(cache_dir: Path, tracking_uri: str, name: str, version: str, source: str) -> Path:
    """The local folder of ``name`` ``version`` (copied or downloaded on first use).

    Raises ModelUnavailableError when the source cannot be read.
    """
    target = cache_dir / name / version

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
