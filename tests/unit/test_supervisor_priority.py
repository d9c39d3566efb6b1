"""`make run` on one machine: the services off the job path run at a lower CPU priority, so a
monitoring report, a retrain or Flower's event processing does not take CPU from a busy stage."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from digitflow_cli.supervisor import BACKGROUND, BACKGROUND_NICE, ServiceSpec, StackConfig, Supervisor, build_specs


def test_services_off_the_job_path_are_niced_and_the_stages_are_not(tmp_path: Path) -> None:
    config = StackConfig(var_dir=tmp_path, registry=True, monitoring=True, flower=True)
    nice = {spec.name: spec.nice for spec in build_specs(config)}
    assert {name for name, n in nice.items() if n == BACKGROUND_NICE} == BACKGROUND
    assert all(nice[name] == 0 for name in ("gateway", "preprocess", "inference", "postprocess"))


def test_the_supervisor_starts_a_niced_service_at_that_priority(tmp_path: Path) -> None:
    spec = ServiceSpec("idle", [sys.executable, "-c", "import time; time.sleep(30)"], nice=BACKGROUND_NICE)
    supervisor = Supervisor([spec], tmp_path, restart=False)
    try:
        supervisor.start(spec)
        pid = supervisor.running["idle"].proc.pid
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE
    finally:
        supervisor.close()
