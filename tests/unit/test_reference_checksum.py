"""``reference.safetensors`` (outlier detector, drift reference) is covered by model.json's
``reference_sha256`` like the weights are: recorded when written, checked when loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from digitflow.errors import ModelVersionInvalidError
from digitflow.model_files import REFERENCE_FILE, sha256_file, verify_model_dir
from digitflow.reference import load_reference, save_reference
from digitflow.settings import shipped_models_dir

SHIPPED = sorted(p.parent for p in shipped_models_dir().glob("*/*/model.json"))


def copy_of(version: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(version, tmp_path / version.parent.name / version.name))


def edit_meta(folder: Path, **changes: object) -> None:
    path = folder / "model.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps({k: v for k, v in meta.items() if v is not None}, indent=2))


@pytest.mark.parametrize("version", SHIPPED, ids=[f"{p.parent.name}-{p.name}" for p in SHIPPED])
def test_shipped_versions_record_their_reference_digest(version: Path) -> None:
    meta = verify_model_dir(version)
    assert meta["reference_sha256"] == sha256_file(version / REFERENCE_FILE)
    assert load_reference(version) is not None


def test_a_replaced_reference_is_refused_on_load(tmp_path: Path) -> None:
    folder = copy_of(SHIPPED[0], tmp_path)
    data = bytearray((folder / REFERENCE_FILE).read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the detector's arrays: still valid safetensors
    (folder / REFERENCE_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelVersionInvalidError, match=r"reference\.safetensors does not match model\.json"):
        verify_model_dir(folder)
    with pytest.raises(ValueError, match="corrupt or replaced"):
        load_reference(folder)
    (folder / REFERENCE_FILE).unlink()
    with pytest.raises(ModelVersionInvalidError, match="missing"):
        verify_model_dir(folder)


def test_writing_a_reference_records_its_digest(tmp_path: Path) -> None:
    folder = copy_of(SHIPPED[0], tmp_path)
    edit_meta(folder, reference_sha256=None)
    ref = load_reference(folder)
    assert ref is not None
    ref.threshold += 1.0  # a recalibrated detector: a different file
    save_reference(folder, ref)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["reference_sha256"] == sha256_file(folder / REFERENCE_FILE) != sha256_file(SHIPPED[0] / REFERENCE_FILE)
    assert verify_model_dir(folder)["weights_sha256"] == meta["weights_sha256"]


def test_versions_written_before_the_field_still_load_but_go_unchecked(tmp_path: Path) -> None:
    folder = copy_of(SHIPPED[0], tmp_path)
    edit_meta(folder, reference_sha256=None)
    ref = load_reference(folder)
    assert ref is not None
    ref.threshold += 1.0
    save_reference(folder, ref)
    edit_meta(folder, reference_sha256=None)  # as an old version's model.json reads
    verify_model_dir(folder)  # what they lose: a replaced reference is not detected
    loaded = load_reference(folder)
    assert loaded is not None and loaded.threshold == ref.threshold


def test_a_malformed_digest_is_invalid_metadata(tmp_path: Path) -> None:
    folder = copy_of(SHIPPED[0], tmp_path)
    edit_meta(folder, reference_sha256="abc")
    with pytest.raises(ModelVersionInvalidError, match="reference_sha256"):
        verify_model_dir(folder)
