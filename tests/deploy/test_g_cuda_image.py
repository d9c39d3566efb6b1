"""The image the Kubernetes GPU overlay names, `digitflow/inference:cuda` (the Dockerfile's
`inference-cuda` target), holds a CUDA build of torch and, on a host without a GPU, serves on the
CPU with DEVICE=auto: it takes the inference replicas' place in the running stack and jobs succeed.

Its torch and CUDA libraries make it about 6 GB, so the suite does not build it: where it has
not been built (`deploy/offline/build-images.sh inference-cuda`), this test skips and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.deploy.compose_stack import ComposeStack
from tests.deploy.load import photos

CUDA_IMAGE = "docker.io/digitflow/inference:cuda"


def test_the_cuda_image_serves_on_the_cpu_without_a_gpu(stack: ComposeStack, tmp_path: Path) -> None:
    if not stack.engine.inspect([CUDA_IMAGE]):
        pytest.skip(f"{CUDA_IMAGE} is not built here (deploy/offline/build-images.sh inference-cuda, ~6 GB)")
    override = tmp_path / "compose.cuda.yaml"
    override.write_text(json.dumps({"services": {"inference_worker": {"image": CUDA_IMAGE}}}))
    stack.compose("up", "-d", "--no-deps", "--scale", "inference_worker=1", "inference_worker", override=override)
    try:
        replica = stack.container("inference_worker")
        assert stack.engine.inspect([replica])[0]["ImageName"] == CUDA_IMAGE  # type: ignore[index]
        probe = 'python -c "import torch; print(torch.version.cuda, torch.cuda.is_available())"'
        cuda, available = stack.engine.podman("exec", replica, "sh", "-c", probe).split()
        assert cuda != "None" and available == "False", (cuda, available)
        wait_until(lambda: stack.readyz()[0] == 200, 180, 2, what="the CUDA image's worker is ready")
        answers = [stack.submit(data, wait=30).json() for data, _ in photos(8, seed=51)]
        assert all(body["status"] == "succeeded" for body in answers), answers
        print(f"[deploy] {CUDA_IMAGE}: torch built for CUDA {cuda}, no GPU visible, served 8/8 jobs on the CPU")
    finally:
        stack.compose("up", "-d", "--no-deps", "--scale", "inference_worker=1", "inference_worker")
