"""A model version's files, checked without torch: ``model.json`` and the weights' sha256.

The registry service checks a version with these before any inference worker is asked to load
it, and reads from ``model.json`` what serving needs (architecture, input profile, labels) to
tag the registered version with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from digitflow.errors import ModelVersionInvalidError

WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "model.json"
REQUIRED = ("name", "architecture", "weights_sha256")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes. Raises OSError if it cannot be read."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_model_json(model_dir: Path) -> dict[str, Any]:
    """``model.json`` of a version directory; ModelVersionInvalidError naming what is wrong."""
    path = Path(model_dir) / METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelVersionInvalidError(f"{path.name} is missing", path=str(path)) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelVersionInvalidError(f"{path.name} cannot be read: {exc}", path=str(path)) from exc
    if not isinstance(meta, dict):
        raise ModelVersionInvalidError(f"{path.name} is not a JSON object", path=str(path))
    missing = [key for key in REQUIRED if not isinstance(meta.get(key), str) or not meta[key]]
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        missing.append("labels")
    if missing:
        raise ModelVersionInvalidError(f"{path.name} lacks or has invalid {', '.join(missing)}", path=str(path))
    return meta


def verify_model_dir(model_dir: Path) -> dict[str, Any]:
    """Check that the weights are the ones ``model.json`` names (sha256); return the metadata.

    Raises ModelVersionInvalidError for missing files, bad metadata or a digest mismatch.
    """
    meta = read_model_json(model_dir)
    weights = Path(model_dir) / WEIGHTS_FILE
    try:
        actual = sha256_file(weights)
    except OSError as exc:
        raise ModelVersionInvalidError(f"{WEIGHTS_FILE} cannot be read: {exc}", path=str(weights)) from exc
    if actual != str(meta["weights_sha256"]).lower():
        raise ModelVersionInvalidError(
            f"{WEIGHTS_FILE} does not match model.json (sha256 {actual[:12]}..., expected "
            f"{str(meta['weights_sha256'])[:12]}...): corrupt or replaced",
            path=str(weights),
        )
    return meta


def install_dir(fill: Any, target: Path) -> Path:
    """Create ``target`` atomically: ``fill(tmp)`` writes a sibling temporary folder, which is then
    renamed. Whoever renames first wins; the others' copies are dropped (versions are immutable)."""
    if (target / METADATA_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        fill(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / METADATA_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
