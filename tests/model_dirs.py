"""Model version folders for registry tests: copies, corrupt ones, unloadable ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from digitflow.model_files import METADATA_FILE, WEIGHTS_FILE, sha256_file
from digitflow.settings import shipped_models_dir
from training_worker.settings import BASE_DATA_FILE, shipped_data_dir

SHIPPED = shipped_models_dir()
# The base data set as installed (training_worker/data), read by tests that need real digits.
MNIST_NPZ = shipped_data_dir() / BASE_DATA_FILE


def copy_of(name: str, dst: Path, note: str = "copy") -> Path:
    """A byte-identical copy of the shipped ``models/<name>/1`` (a new version, same weights)."""
    shutil.copytree(SHIPPED / name / "1", dst)
    meta = json.loads((dst / METADATA_FILE).read_text())
    meta["note"] = note
    (dst / METADATA_FILE).write_text(json.dumps(meta))
    return dst


def corrupt_copy(name: str, dst: Path) -> Path:
    """Weights garbled after model.json recorded their sha256: the registry's check refuses it."""
    copy_of(name, dst, "corrupt")
    data = bytearray((dst / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 256] = bytes(256)
    (dst / WEIGHTS_FILE).write_bytes(bytes(data))
    return dst


def unloadable_copy(name: str, dst: Path) -> Path:
    """Intact, valid safetensors (sha256 right) that do not fit the architecture: only a worker
    that tries to load them finds out."""
    from safetensors.torch import load_file, save_file

    copy_of(name, dst, "unloadable")
    state = load_file(str(dst / WEIGHTS_FILE))
    state["fc2.weight"] = state["fc2.weight"][:, :64].contiguous()
    save_file(state, str(dst / WEIGHTS_FILE))
    meta = json.loads((dst / METADATA_FILE).read_text())
    meta["weights_sha256"] = sha256_file(dst / WEIGHTS_FILE)
    (dst / METADATA_FILE).write_text(json.dumps(meta))
    return dst
