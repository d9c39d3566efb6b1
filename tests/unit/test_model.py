"""The shipped digit model: accuracy on the held-out split, batching, and every load failure."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from digitflow.errors import InvalidMessageError, ModelUnavailableError
from digitflow.model_files import METADATA_FILE, WEIGHTS_FILE, sha256_file
from digitflow.settings import shipped_models_dir
from digitnet.loading import LoadedModel, load_model
from tests.model_dirs import MNIST_NPZ
from training_worker.datasets import digits

MODEL_DIR = shipped_models_dir() / "digits" / "1"
DATA = MNIST_NPZ


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    # One thread, as workers run: on a shared CPU, extra intra-op threads mostly wait on each other.
    return load_model(MODEL_DIR, device="cpu", threads=1)


@pytest.fixture(scope="module")
def heldout() -> tuple[list[bytes], np.ndarray]:
    with np.load(DATA, allow_pickle=False) as data:
        idx = data["heldout_idx"]
        return [img.tobytes() for img in data["images"][idx]], data["labels"][idx]


def test_shipped_model_metadata(model: LoadedModel) -> None:
    assert (model.name, model.version, model.input_profile) == ("digits", "1", "digits-mnist")
    assert model.labels == [str(d) for d in range(10)]
    assert str(model.device) == "cpu"
    assert model.weights_sha256 == sha256_file(MODEL_DIR / WEIGHTS_FILE)
    # The digests of the files it was trained on, as datasets.digits() hashes them.
    assert model.metadata["metrics"]["dataset_sha256"] == digits().sha256
    # The shipped weights stay small enough to live in git.
    assert (MODEL_DIR / WEIGHTS_FILE).stat().st_size < 2_000_000


def test_heldout_accuracy(model: LoadedModel, heldout: tuple[list[bytes], np.ndarray]) -> None:
    pixels, labels = heldout
    assert len(pixels) == 1000
    preds = np.concatenate([model.predict_logits(pixels[i : i + 64]).argmax(axis=1) for i in range(0, 1000, 64)])
    accuracy = float((preds == labels).mean())
    assert accuracy >= 0.96
    # model.json records what this very file scores, not a number from some other run.
    assert model.metadata["metrics"]["heldout_accuracy"] == pytest.approx(accuracy, abs=1e-4)


def test_batch_of_one_matches_batch_of_many(model: LoadedModel, heldout: tuple[list[bytes], np.ndarray]) -> None:
    pixels = heldout[0][:37]
    batched = model.predict_logits(pixels)
    singles = np.concatenate([model.predict_logits([p]) for p in pixels])
    assert batched.shape == singles.shape == (37, 10)
    np.testing.assert_allclose(singles, batched, atol=1e-4, rtol=0)


def test_output_shape_and_dtype(model: LoadedModel, heldout: tuple[list[bytes], np.ndarray]) -> None:
    logits = model.predict_logits(heldout[0][:5])
    assert logits.shape == (5, 10) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert model.predict_logits([]).shape == (0, 10)
    feats = model.features(heldout[0][:5])
    assert feats.shape == (5, 128) and feats.dtype == np.float32
    assert (feats >= 0).all()  # post-ReLU embedding
    assert model.features([]).shape == (0, 128)


@pytest.mark.parametrize("size", [0, 783, 785, 28 * 28 * 3])
def test_wrong_pixel_count_is_rejected(model: LoadedModel, size: int) -> None:
    with pytest.raises(InvalidMessageError, match=f"item 1 has {size} bytes"):
        model.predict_logits([bytes(784), bytes(size)])


def _flip_bytes(d: Path) -> None:
    blob = bytearray((d / WEIGHTS_FILE).read_bytes())
    for i in range(len(blob) // 2, len(blob) // 2 + 16):
        blob[i] ^= 0xFF
    (d / WEIGHTS_FILE).write_bytes(bytes(blob))


def _garble_and_reseal(d: Path) -> None:
    # The sha256 matches, so only the safetensors parser can notice.
    (d / WEIGHTS_FILE).write_bytes(b"\xff" * 64 + (d / WEIGHTS_FILE).read_bytes()[64:])
    _edit_meta(d, weights_sha256=sha256_file(d / WEIGHTS_FILE))


def _edit_meta(d: Path, **changes: object) -> None:
    meta = json.loads((d / METADATA_FILE).read_text())
    meta.update(changes)
    (d / METADATA_FILE).write_text(json.dumps(meta))


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "flipped weight bytes": (_flip_bytes, "sha256 mismatch"),
    "truncated weights": (
        lambda d: (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:1000]),
        "sha256 mismatch",
    ),
    "garbled weights, resealed sha": (_garble_and_reseal, "not valid safetensors"),
    "missing model.json": (lambda d: (d / METADATA_FILE).unlink(), "metadata file is missing"),
    "missing weights": (lambda d: (d / WEIGHTS_FILE).unlink(), "weights file is missing"),
    "bad json": (lambda d: (d / METADATA_FILE).write_text("{not json"), "cannot read metadata"),
    "json not an object": (lambda d: (d / METADATA_FILE).write_text("[1, 2]"), "must be a JSON object"),
    "no sha recorded": (lambda d: _edit_meta(d, weights_sha256=None), "'weights_sha256' missing"),
    "unknown architecture": (lambda d: _edit_meta(d, architecture="ResNet"), "unknown architecture"),
    "shape mismatch": (lambda d: _edit_meta(d, labels=[str(i) for i in range(11)]), "do not fit DigitNet"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_broken_model_dir_is_unavailable(tmp_path: Path, case: str) -> None:
    corrupt, cause = CORRUPTIONS[case]
    broken = tmp_path / "digits" / "1"
    shutil.copytree(MODEL_DIR, broken)
    corrupt(broken)
    with pytest.raises(ModelUnavailableError, match=cause) as info:
        load_model(broken, device="cpu")
    assert str(broken) in info.value.message  # the message names the path
    assert info.value.code == "model_unavailable"


def test_missing_directory_and_bad_device(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="model directory does not exist"):
        load_model(tmp_path / "nope", device="cpu")
    with pytest.raises(ModelUnavailableError, match="unknown device"):
        load_model(MODEL_DIR, device="tpu0")
