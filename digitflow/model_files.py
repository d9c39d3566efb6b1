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
from collections.abc import Collection
from pathlib import Path
from typing import Any

from digitflow.errors import ModelVersionInvalidError

WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "model.json"
# The outlier detector and drift reference (digitflow/reference.py), covered by
# ``reference_sha256`` in versions written since it was added; older versions lack the field and
# stay loadable, but nothing then detects a replaced reference (outlier flags, drift alerts).
REFERENCE_FILE = "reference.safetensors"
REQUIRED = ("name", "version", "architecture", "weights_sha256")
# The input profile of a model.json that names none (every version shipped before profiles).
DIGITS_PROFILE = "digits-mnist"
FASHION_PROFILE = "fashion-mnist"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes. Raises OSError if it cannot be read."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_model_json(model_dir: Path, architectures: Collection[str] = ()) -> dict[str, Any]:
    """``model.json`` of a version directory, validated: name, version, architecture and
    weights_sha256 are non-empty strings, labels a non-empty list of strings, and (when
    ``architectures`` is given) the architecture one of them. The one validator of the file:
    the registry checks a version with it, and inference loads with it.

    Raises ModelVersionInvalidError naming the path and every problem.
    """
    path = Path(model_dir) / METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelVersionInvalidError(f"{path}: metadata file is missing", path=str(path)) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelVersionInvalidError(f"{path}: cannot read metadata: {exc}", path=str(path)) from exc
    if not isinstance(meta, dict):
        raise ModelVersionInvalidError(f"{path}: metadata must be a JSON object", path=str(path))
    problems = [
        f"{key!r} missing or not a non-empty string"
        for key in REQUIRED
        if not isinstance(meta.get(key), str) or not meta[key]
    ]
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        problems.append("'labels' must be a non-empty list of strings")
    digest = meta.get("reference_sha256")
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        problems.append("'reference_sha256' must be a hex sha256")
    if architectures and meta.get("architecture") not in architectures:
        problems.append(f"unknown architecture {meta.get('architecture')!r} (known: {sorted(architectures)})")
    if problems:
        raise ModelVersionInvalidError(f"{path}: invalid metadata: {'; '.join(problems)}", path=str(path))
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
    problem = reference_problem(Path(model_dir), meta)
    if problem is not None:
        raise ModelVersionInvalidError(problem, path=str(Path(model_dir) / REFERENCE_FILE))
    return meta


def reference_problem(model_dir: Path, meta: dict[str, Any]) -> str | None:
    """Why ``reference.safetensors`` is not the one ``model.json`` names, or None when it is (or
    when model.json names none: a version written before the field existed)."""
    expected = meta.get("reference_sha256")
    if expected is None:
        return None
    try:
        actual = sha256_file(model_dir / REFERENCE_FILE)
    except OSError:
        return f"{REFERENCE_FILE} is missing or unreadable, but model.json names its sha256"
    if actual != str(expected).lower():
        return (
            f"{REFERENCE_FILE} does not match model.json (sha256 {actual[:12]}..., expected "
            f"{str(expected)[:12]}...): corrupt or replaced"
        )
    return None


def record_reference_digest(model_dir: Path) -> None:
    """Write the sha256 of the version's ``reference.safetensors`` into its ``model.json``
    (atomically; nothing when the folder has no model.json yet)."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        return
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["reference_sha256"] = sha256_file(Path(model_dir) / REFERENCE_FILE)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, path)


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
