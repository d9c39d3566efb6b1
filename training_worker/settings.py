"""The training service's settings: the monitor's retraining thresholds plus where data lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from digitflow.errors import ConfigurationError
from digitflow.settings import MonitorSettings

BASE_DATA_FILE = "mnist_5k.npz"


def shipped_data_dir() -> Path:
    """The data sets installed with this package (``training_worker/data``): DATA_DIR's default."""
    return Path(str(resources.files("training_worker") / "data"))


@dataclass(frozen=True)
class TrainingSettings(MonitorSettings):
    """Retraining reads the RETRAIN_* thresholds it shares with the monitor (which decides when
    to ask), the base data set from DATA_DIR and Fashion-MNIST from FASHION_MNIST_DIR."""

    data_dir: Path = field(default_factory=shipped_data_dir)
    fashion_mnist_dir: Path = Path("/usr/share/datasets/fashion-mnist")

    def validate(self) -> None:
        super().validate()
        if not (self.data_dir / BASE_DATA_FILE).is_file():
            raise ConfigurationError(f"DATA_DIR {self.data_dir} has no {BASE_DATA_FILE} (the base data set)")
