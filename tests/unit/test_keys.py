"""``digitflow/keys.py`` is the one place a Redis key is named, and its table lists every key."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from digitflow import keys

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "digitflow",
    "digitflow_cli",
    "digitnet",
    "gateway",
    "preprocess_worker",
    "inference_worker",
    "postprocess_worker",
    "registry_worker",
    "monitor_worker",
    "training_worker",
)


def test_no_module_but_keys_spells_a_key() -> None:
    spelled = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "digitflow" / "keys.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("df:"):
                    spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert spelled == []


def test_every_key_constant_is_in_the_table() -> None:
    table = {row.split("|")[1].strip() for row in (keys.__doc__ or "").splitlines() if row.startswith("| df:")}
    names = {value for name, value in vars(keys).items() if name.isupper() and isinstance(value, str)}
    for value in names:
        assert any(row == value or row.startswith(value) for row in table), f"{value} is not documented"
    assert keys.workers("preprocess") == "df:workers:preprocess"
    assert re.fullmatch(r"df:monitor:report:digits", keys.monitor("report", "digits"))
