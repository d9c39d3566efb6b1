"""`make run`'s Celery pools: one-process inference and postprocess workers run solo (no prefork
parent); preprocess, and any stage scaled to several processes, run prefork."""

from __future__ import annotations

from pathlib import Path

from digitflow_cli.supervisor import SOLO_STAGES, StackConfig, build_specs


def pools(config: StackConfig) -> dict[str, str]:
    out = {}
    for spec in build_specs(config):
        if "--pool" in spec.argv:
            out[spec.name] = spec.argv[spec.argv.index("--pool") + 1]
    return out


def test_one_process_inference_and_postprocess_run_solo_and_preprocess_prefork(tmp_path: Path) -> None:
    got = pools(StackConfig(var_dir=tmp_path, registry=True, monitoring=True))
    assert got["inference"] == got["postprocess"] == "solo"
    assert got["preprocess"] == "prefork"
    assert got["registry"] == got["monitor"] == got["training"] == "solo"


def test_a_stage_scaled_to_several_processes_runs_prefork(tmp_path: Path) -> None:
    workers = {"preprocess": 1, "inference": 2, "postprocess": 3}
    got = pools(StackConfig(var_dir=tmp_path, workers=workers, registry=False))
    assert got == {"preprocess": "prefork", "inference": "prefork", "postprocess": "prefork"}


def test_a_stack_can_run_preprocess_solo_too(tmp_path: Path) -> None:
    workers = {"preprocess": 1, "inference": 1, "postprocess": 1}
    config = StackConfig(var_dir=tmp_path, workers=workers, registry=False, solo=SOLO_STAGES | {"preprocess"})
    assert set(pools(config).values()) == {"solo"}
