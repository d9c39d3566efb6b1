"""The peer framework's own virtual environment, built on first use under ``var/peers/``.

    python -m bench.peer_venv          # build (or check) it now and print where it is

BentoML pins its own versions of starlette, pydantic, uvicorn, opentelemetry and more; put into
the dev venv they would replace the versions digitflow is tested with. So it gets a venv of its
own (``python -m venv`` + ``pip install bentoml==1.4.*``). torch, by contrast, is a multi-GB CUDA
build: instead of installing it a second time, a ``.pth`` file in the peer venv *appends* the dev
venv's site-packages and the checkout to ``sys.path``. Appended, not prepended: every package the
peer venv has (BentoML and its pins) wins, and only what it lacks (torch, Pillow, safetensors,
digitflow's own packages) comes from the dev venv. The checkout is needed as well because the dev
venv finds digitflow through an editable-install finder that a plain path entry does not run.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from bench.paths import CHECKOUT

PEER_REQUIREMENT = "bentoml==1.4.*"
PEERS_DIR = CHECKOUT / "var" / "peers"
BENTOML_VENV = PEERS_DIR / "bentoml-venv"
PTH_NAME = "zz_digitflow_dev.pth"  # sorted last: its entries go after every other .pth's


class PeerVenvError(RuntimeError):
    """The peer venv could not be built; the message says which step failed and why."""


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def pth_lines(dev_site_packages: Path, checkout: Path) -> str:
    """The ``.pth`` contents: plain path lines, which ``site`` appends to ``sys.path`` in order."""
    return f"{dev_site_packages}\n{checkout}\n"


def _run(step: str, argv: list[str], log: Path) -> None:
    print(f"  peer venv: {step} ...", file=sys.stderr, flush=True)
    with log.open("ab") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code:
        tail = log.read_text(errors="replace")[-2500:]
        raise PeerVenvError(f"peer venv: {step} failed (exit {code}); full log {log}; it ends:\n{tail}")


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def _works(python: Path) -> bool:
    """The venv imports bentoml, and torch and digitflow through the appended paths."""
    probe = "import bentoml, torch, digitnet.loading, preprocess_worker.steps; print(bentoml.__version__)"
    if not python.exists():
        return False
    return subprocess.run([str(python), "-c", probe], capture_output=True, check=False).returncode == 0


def ensure_bentoml_venv(venv: Path = BENTOML_VENV) -> Path:
    """Return the peer venv's python, building the venv first if it does not work yet.

    Raises PeerVenvError naming the failed step (venv creation, pip install, import check).
    """
    python = venv_python(venv)
    if _works(python):
        return python
    began = time.monotonic()
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / "bentoml-venv-build.log"
    print(f"  peer venv: building {venv} (log {log}); needs PyPI, about 1-3 minutes", file=sys.stderr, flush=True)
    # The base interpreter of the dev venv: the same Python version torch was built for.
    base = Path(sys._base_executable)  # type: ignore[attr-defined]
    _run("python -m venv", [str(base), "-m", "venv", "--clear", str(venv)], log)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--progress-bar", "off"]
    _run(f"pip install {PEER_REQUIREMENT}", [*pip, PEER_REQUIREMENT], log)
    dev_site = Path(sysconfig.get_paths()["purelib"])
    (_site_packages(python) / PTH_NAME).write_text(pth_lines(dev_site, CHECKOUT))
    if not _works(python):
        probe = "import bentoml, torch, digitnet.loading, preprocess_worker.steps"
        err = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False).stderr
        raise PeerVenvError(f"peer venv {venv} built but cannot import what the peer needs:\n{err[-2500:]}")
    print(f"  peer venv: ready in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    return python


def main() -> int:
    try:
        python = ensure_bentoml_venv()
    except PeerVenvError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
