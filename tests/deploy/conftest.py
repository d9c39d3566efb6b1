"""The deployment suite's fixtures: the engine, the images, and one compose stack for the session.

The suite skips, saying why, where no container engine works (``make system-deps`` installs
podman, runc and docker-compose where apt-get can). Images come from the Dockerfile as shipped;
the public images compose names are pulled, or stood in for by deploy/offline/build-standins.sh
where no registry answers. With layers cached the images take seconds; a cold build is minutes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.deploy.compose_stack import SERVICES, ComposeStack
from tests.deploy.engine import ROOT, Engine, engine_problem

ARTIFACTS = ROOT / "tests" / "artifacts" / "deploy"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/deploy/" in str(item.fspath):
            item.add_marker(pytest.mark.deploy)
            item.add_marker(pytest.mark.slow)
            # The first test's setup builds the images (minutes when cold) and starts the stack.
            item.add_marker(pytest.mark.timeout(2400))


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    problem = engine_problem()
    if problem:
        pytest.skip(f"no container engine: {problem}")
    found = Engine(tmp_path_factory.mktemp("podman"))
    yield found
    found.close()


@pytest.fixture(scope="session")
def images(engine: Engine) -> dict[str, float]:
    """Stand-ins where needed, then every service image; seconds each step took."""
    took = {}
    start = time.monotonic()
    print(engine.run_script(ROOT / "deploy" / "offline" / "build-standins.sh"))
    took["stand-ins"] = time.monotonic() - start
    start = time.monotonic()
    print(engine.run_script(ROOT / "deploy" / "offline" / "build-images.sh"))
    took["images"] = time.monotonic() - start
    print(f"[deploy] images ready: stand-ins {took['stand-ins']:.0f} s, service images {took['images']:.0f} s")
    return took


@pytest.fixture(scope="session")
def stack(engine: Engine, images: dict[str, float], request: pytest.FixtureRequest) -> Iterator[ComposeStack]:
    found = ComposeStack.create(engine, f"dfdeploy{os.getpid()}")
    start = time.monotonic()
    try:
        found.compose("up", "-d", *SERVICES)
        found.wait_ready()
        print(f"[deploy] compose up to ready: {time.monotonic() - start:.0f} s")
        yield found
    finally:
        if request.session.testsfailed:
            found.dump_logs(ARTIFACTS / found.project)
        found.remove()
