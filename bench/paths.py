"""Where the benchmarks read and write: the checkout (bench is never installed) and the
shipped files, found through the installed packages like every service finds them."""

from __future__ import annotations

from pathlib import Path

from digitflow.settings import shipped_models_dir
from training_worker.settings import BASE_DATA_FILE, shipped_data_dir

CHECKOUT = Path(__file__).resolve().parent.parent
MODELS = shipped_models_dir()
MNIST_NPZ = shipped_data_dir() / BASE_DATA_FILE
