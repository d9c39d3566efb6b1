"""Load a shipped model directory and run it.

A model directory (``models/<name>/<version>/``) holds ``weights.safetensors`` and ``model.json``
(name, version, architecture, input_profile, labels, metrics, created_at, weights_sha256).
:func:`load_model` verifies the weights against the recorded sha256 before parsing them, builds
the network in eval mode, folds BatchNorm, and runs one warm-up pass. Every load failure surfaces
as :class:`digitflow.errors.ModelUnavailableError` naming the path and the cause.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import Tensor

from digitflow.errors import InvalidMessageError, ModelUnavailableError, ModelVersionInvalidError
from digitflow.model_files import WEIGHTS_FILE, read_model_json
from digitflow.reference import Reference, load_reference
from digitnet.net import ARCHITECTURES, EMBEDDING_DIM, DigitNet

SIDE = 28
PIXELS = SIDE * SIDE
# Architectures a model.json may name, each built from its number of classes.


class LoadedModel:
    """A network ready for inference on one device, with the metadata it was shipped with.

    Built by :func:`load_model`. The network is in eval mode and calls keep no state between
    them, so threads may share one instance.
    """

    def __init__(self, net: DigitNet, metadata: dict[str, Any], device: torch.device, model_dir: Path) -> None:
        self.net = net
        self.metadata = metadata
        self.device = device
        self.model_dir = model_dir
        self.name: str = metadata["name"]
        self.version: str = str(metadata["version"])
        self.labels: list[str] = list(metadata["labels"])
        self.input_profile: str = metadata.get("input_profile", "")
        self.weights_sha256: str = metadata["weights_sha256"]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def _to_tensor(self, pixels: Sequence[bytes]) -> Tensor:
        for i, item in enumerate(pixels):
            if len(item) != PIXELS:
                raise InvalidMessageError(f"pixels item {i} has {len(item)} bytes, expected {PIXELS}", index=i)
        # bytearray: a writable buffer, so torch.from_numpy does not warn about read-only memory.
        raw = np.frombuffer(bytearray().join(pixels), dtype=np.uint8).reshape(-1, 1, SIDE, SIDE)
        x = torch.from_numpy(raw).to(self.device, non_blocking=True).float().div_(255.0)
        return x.contiguous(memory_format=torch.channels_last)

    def predict_logits(self, pixels: Sequence[bytes]) -> np.ndarray:
        """Return float32 (N, num_classes) logits for N images of 784 uint8 bytes (row-major, ink high).

        The whole batch goes through one forward pass. An empty batch returns shape (0, num_classes).
        Raises InvalidMessageError if an item is not exactly 784 bytes.
        """
        if len(pixels) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        x = self._to_tensor(pixels)
        with torch.inference_mode():
            logits = self.net(x)
        return logits.float().cpu().numpy()

    @property
    def reference(self) -> Reference | None:
        """The version's outlier detector and reference statistics (``reference.safetensors``),
        read once; None for a version without one (its jobs keep the low-confidence signal)."""
        if not hasattr(self, "_reference"):
            try:
                self._reference: Reference | None = load_reference(self.model_dir)
            except ValueError as exc:  # e.g. not the file model.json's reference_sha256 names
                logging.getLogger("digitnet").error(
                    "reference refused, serving without the outlier detector: %s",
                    exc,
                    extra={"event": "reference_refused"},
                )
                self._reference = None
        return self._reference

    def predict_with_features(self, pixels: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Return (logits (N, num_classes), embeddings (N, 128)) from one forward pass.

        Same input contract and errors as :meth:`predict_logits`.
        """
        if len(pixels) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32), np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        x = self._to_tensor(pixels)
        with torch.inference_mode():
            emb = self.net.penultimate(x)
            logits = self.net.fc2(emb)
        return logits.float().cpu().numpy(), emb.float().cpu().numpy()

    def features(self, pixels: Sequence[bytes]) -> np.ndarray:
        """Return float32 (N, 128) penultimate-layer embeddings (for outlier detection).

        Same input contract and errors as :meth:`predict_logits`.
        """
        if len(pixels) == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        x = self._to_tensor(pixels)
        with torch.inference_mode():
            emb = self.net.penultimate(x)
        return emb.float().cpu().numpy()


def resolve_device(device: str) -> torch.device:
    """Map "auto" to cuda when available, else cpu; validate explicit names.

    Raises ModelUnavailableError for an unknown device or cuda without a usable GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelUnavailableError(f"unknown device {device!r}: {exc}", device=device) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError(f"device {device!r} requested but CUDA is not available", device=device)
    if dev.type not in {"cpu", "cuda"}:
        raise ModelUnavailableError(f"unsupported device {device!r}", device=device)
    return dev


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """Read and validate ``model.json`` (``digitflow.model_files.read_model_json``, with the
    architectures this package can build). Raises ModelUnavailableError naming the path and the cause."""
    try:
        return read_model_json(model_dir, ARCHITECTURES)
    except ModelVersionInvalidError as exc:
        raise ModelUnavailableError(exc.message, **exc.details) from exc


def read_weights(path: Path, expected_sha256: str) -> dict[str, Tensor]:
    """Read the weights once, check their sha256, then parse them (safetensors: no code runs).

    Hashing and parsing the same bytes means a file swapped between the two cannot slip through.
    Raises ModelUnavailableError if the file is missing or unreadable, the digest differs, or the
    bytes are not valid safetensors.
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelUnavailableError(f"{path}: weights file is missing", path=str(path)) from exc
    except OSError as exc:
        raise ModelUnavailableError(f"{path}: cannot read weights: {exc}", path=str(path)) from exc
    actual = hashlib.sha256(blob).hexdigest()
    if actual != str(expected_sha256).lower():
        raise ModelUnavailableError(
            f"{path}: sha256 mismatch (expected {expected_sha256}, got {actual}): weights corrupt or replaced",
            path=str(path),
        )
    try:
        return load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelUnavailableError(f"{path}: not valid safetensors: {exc}", path=str(path)) from exc


def load_model(model_dir: Path, device: str = "auto", threads: int = 1) -> LoadedModel:
    """Load the model in ``model_dir`` onto ``device`` ("auto", "cpu", "cuda", "cuda:N").

    Sets ``torch.set_num_threads(threads)`` for this process, verifies and loads the weights,
    and runs a warm-up forward pass so the first real batch is not slow. Raises
    ModelUnavailableError for a missing directory or file, bad JSON or metadata, a sha256
    mismatch, unparsable weights, weights that do not fit the architecture, or an unusable device.
    """
    model_dir = Path(model_dir)
    if threads < 1:
        raise ModelUnavailableError(f"threads must be >= 1, got {threads}", threads=threads)
    torch.set_num_threads(threads)
    if not model_dir.is_dir():
        raise ModelUnavailableError(f"{model_dir}: model directory does not exist", path=str(model_dir))
    meta = read_metadata(model_dir)
    state = read_weights(model_dir / WEIGHTS_FILE, meta["weights_sha256"])
    dev = resolve_device(device)

    net = ARCHITECTURES[meta["architecture"]](len(meta["labels"]))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # load_state_dict reports every missing/unexpected key and shape mismatch at once.
        raise ModelUnavailableError(
            f"{model_dir / WEIGHTS_FILE}: weights do not fit {meta['architecture']} with "
            f"{len(meta['labels'])} classes: {exc}",
            path=str(model_dir / WEIGHTS_FILE),
        ) from exc
    net.eval().fuse_for_inference()
    # channels_last lets oneDNN run conv and max-pool without layout reorders (~2x faster on CPU).
    net = net.to(dev).to(memory_format=torch.channels_last)

    model = LoadedModel(net, meta, dev, model_dir)
    try:
        model.predict_logits([bytes(PIXELS)])
    except Exception as exc:  # any failure here means this worker cannot serve the model
        raise ModelUnavailableError(f"{model_dir}: warm-up inference failed: {exc}", path=str(model_dir)) from exc
    return model
