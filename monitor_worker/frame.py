"""The prediction-log rows a monitoring report reads, as numpy columns.

The report reads up to 50,000 rows per model and computes each window and time bucket from a
subset of them. Row by row (a ``getattr`` per row, column and subset) that cost about 1.1 s of
CPU per report at 30,000 rows on a 2-core VM, in a process that shares the machine with the job
path; columns are built once per report and subsets are boolean masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

# The columns of PredictionLog.window that the report uses; floats are NaN where SQL has NULL.
FLOAT_COLUMNS = ("at", "confidence", "calibrated", "ink_ratio", "mean_intensity", "aspect", "true_label")


@dataclass(frozen=True)
class Frame:
    """Rows in the log's order (newest first); every column has one entry per row."""

    id: np.ndarray  # int64
    version: np.ndarray  # str (object)
    label: np.ndarray  # int64, the predicted class
    outlier: np.ndarray  # bool
    at: np.ndarray
    confidence: np.ndarray
    calibrated: np.ndarray
    ink_ratio: np.ndarray
    mean_intensity: np.ndarray
    aspect: np.ndarray
    true_label: np.ndarray  # float64: NaN = no feedback

    @classmethod
    def of(cls, rows: Sequence[Any]) -> Frame:
        """Columns of SQLAlchemy rows (anything with the columns as named tuple fields)."""
        by_name: dict[str, Sequence[Any]]
        if rows:
            by_name = dict(zip(rows[0]._fields, zip(*rows, strict=True), strict=True))
        else:
            by_name = {f.name: () for f in fields(cls)}
        columns: dict[str, np.ndarray] = {
            "id": np.array(by_name["id"], dtype=np.int64),
            "version": np.array([str(v) for v in by_name["version"]], dtype=object),
            "label": np.array(by_name["label"], dtype=np.int64),
            "outlier": np.array([bool(v) for v in by_name["outlier"]], dtype=bool),
        }
        for name in FLOAT_COLUMNS:
            columns[name] = np.array(by_name[name], dtype=np.float64)  # None -> NaN
        return cls(**columns)

    def __len__(self) -> int:
        return len(self.id)

    def take(self, mask: np.ndarray) -> Frame:
        """The rows where ``mask`` is True, in order."""
        return Frame(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def accuracy(self) -> tuple[int, float | None]:
        """(labelled rows, share of them whose prediction matches the feedback)."""
        labelled = ~np.isnan(self.true_label)
        count = int(labelled.sum())
        if not count:
            return 0, None
        return count, float(np.mean(self.label[labelled] == self.true_label[labelled]))
