"""The benchmark's report with a peer framework and make run's defaults: ratio columns, the
issue's targets, the peer's error summary and how the load driver reads a peer's answers."""

from __future__ import annotations

import site
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.load import Tally, answers, error_code, record
from bench.peer_venv import PTH_NAME, PeerVenvError, _run, pth_lines
from bench.report import ratios, render_peers, render_ratios, tail_ratio, targets
from bench.scenarios import variant_cost


def row(scenario: str, mode: str, inflight: object, jobs_per_s: float, p50: float = 100.0, p99: float = 150.0) -> dict:
    return {
        "scenario": scenario,
        "mode": mode,
        "inflight": inflight,
        "jobs": int(jobs_per_s * 8),
        "jobs_per_s": jobs_per_s,
        "latency_ms": {"p50": p50, "p95": p99, "p99": p99},
        "failed": 0,
        "failures": {},
        "reconnects": 0,
        "cpu_ms_per_job_system": 10.0,
    }


ROWS = [
    row("digitflow", "prefer", 64, 120.0, p50=500.0, p99=800.0),
    row("monolith", "both", 64, 160.0),
    row("bentoml", "both", 64, 100.0),
    row("defaults", "prefer", 64, 90.0, p50=400.0, p99=1000.0),
]


def test_ratio_rows_carry_the_peer_and_only_where_it_ran() -> None:
    out = ratios(ROWS, (64,), "4x50")
    prefer = next(r for r in out if r["mode"] == "prefer")
    assert prefer["digitflow/bentoml"] == 1.2  # the peer's one-round-trip row serves prefer
    assert prefer["digitflow/monolith"] == 0.75
    assert next(r for r in out if r["mode"] == "poll")["digitflow/bentoml"] is None  # no digitflow poll row


def test_ratio_table_shows_the_bentoml_column_only_when_measured() -> None:
    with_peer = render_ratios(ratios(ROWS, (64,), "4x50"))
    assert "/bentoml" in with_peer[1] and "1.20" in next(line for line in with_peer if "prefer" in line)
    without = render_ratios(ratios([r for r in ROWS if r["scenario"] != "bentoml"], (64,), "4x50"))
    assert "/bentoml" not in without[1] and "/monolith" in without[1]


def test_targets_report_tails_of_both_settings_and_the_peer_ratio() -> None:
    out = {t["target"]: t for t in targets(ROWS, ratios(ROWS, (64,), "4x50"), {})}
    assert out["digitflow p99/p50 prefer @64 <= 2"]["met"] is True  # 800 / 500 = 1.6
    assert out["defaults p99/p50 prefer @64 <= 2"] == {
        "target": "defaults p99/p50 prefer @64 <= 2",
        "value": 2.5,
        "limit": 2.0,
        "met": False,
    }
    assert out["defaults p99/p50 poll @64 <= 2"]["met"] is None  # ran, but no poll row: n/a, still listed
    assert out["digitflow/bentoml prefer @64 >= 1.0"]["met"] is True
    assert "digitflow/bentoml poll @64 >= 1.0" not in out  # no ratio there: a peer target only where measured


def test_targets_without_the_optional_scenarios_list_no_peer_or_defaults_line() -> None:
    rows = ROWS[:2]
    names = [t["target"] for t in targets(rows, ratios(rows, (64,), "4x50"), {})]
    assert not [n for n in names if "bentoml" in n or n.startswith("defaults")]
    assert "digitflow p99/p50 poll @64 <= 2" in names  # the base targets are always listed


@pytest.mark.parametrize(
    ("latency", "expected"),
    [({"p50": 200.0, "p99": 500.0}, 2.5), ({"p50": None, "p99": None}, None), ({"p50": 0.0, "p99": 1.0}, None)],
)
def test_tail_ratio(latency: dict[str, Any], expected: float | None) -> None:
    assert tail_ratio({"latency_ms": latency}) == expected
    assert tail_ratio(None) is None


def test_peer_summary_counts_errors_as_a_share_of_what_was_asked() -> None:
    shed = {**row("bentoml", "both", 64, 50.0), "jobs": 48, "failed": 52, "failures": {"http_error:-:http_503:x": 52}}
    lines = render_peers([ROWS[0], shed])
    assert lines[1].startswith("bentoml:")
    assert "failed 52/100 (52%): http_error:-:http_503:x 52" in lines[2]
    assert render_peers([ROWS[0]]) == []  # the peer did not run: no section


def test_error_code_reads_digitflow_objects_and_peer_strings() -> None:
    assert error_code(429, {"error": {"code": "overloaded"}}) == "http_429:overloaded"
    assert error_code(503, {"error": "process is overloaded"}) == "http_503:process is overloaded"
    assert error_code(500, None) == "http_500:?"


class NoCalls:
    def call(self, *args: object) -> tuple[int, Any]:
        raise AssertionError("a finished answer needs no poll")


def test_a_peer_list_answer_is_one_job_per_part() -> None:
    views = [
        {"status": "succeeded", "result": {"label": 3}},
        {"status": "failed", "error": {"stage": "preprocess", "code": "invalid_image"}},
    ]
    jobs = answers(NoCalls(), 200, views, 1.0, 0.0, 2)  # type: ignore[arg-type]
    tally = Tally()
    record(tally, jobs, [3, 4], 12.0)
    assert tally.ok == 1 and tally.correct == 1
    assert dict(tally.failed) == {"failed:preprocess:invalid_image": 1}


def test_a_refused_request_fails_every_part_it_carried() -> None:
    jobs = answers(NoCalls(), 503, {"error": "busy"}, 1.0, 0.0, 3)  # type: ignore[arg-type]
    assert [j["error"]["code"] for j in jobs] == ["http_503:busy"] * 3


def test_variant_cost_pairs_defaults_with_digitflow_case_by_case() -> None:
    (cost,) = variant_cost(ROWS, "defaults")
    assert cost["jobs_per_s"] == [120.0, 90.0] and cost["p50_ms"] == [500.0, 400.0]
    assert variant_cost(ROWS, "traced") == []


def test_the_peer_pth_appends_dev_packages_after_the_peers_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev, checkout, peer_site = tmp_path / "dev-site", tmp_path / "checkout", tmp_path / "peer-site"
    for d in (dev, checkout, peer_site):
        d.mkdir()
    (peer_site / PTH_NAME).write_text(pth_lines(dev, checkout))
    monkeypatch.setattr(sys, "path", ["/stdlib", str(peer_site)])
    site.addsitedir(str(peer_site))  # what the peer interpreter does with its site-packages at start
    # The peer's own packages (and the stdlib) are found first; torch and digitflow only after them.
    assert sys.path == ["/stdlib", str(peer_site), str(dev), str(checkout)]


def test_a_failed_build_step_names_the_step_and_shows_the_log_tail(tmp_path: Path) -> None:
    failing = [sys.executable, "-c", "import sys; print('ERROR: No matching distribution found'); sys.exit(1)"]
    with pytest.raises(PeerVenvError, match=r"pip install bentoml==1\.4\.\* failed \(exit 1\)") as info:
        _run("pip install bentoml==1.4.*", failing, tmp_path / "build.log")
    assert "No matching distribution found" in str(info.value) and str(tmp_path / "build.log") in str(info.value)


def test_preprocessing_targets_read_the_shipped_size_against_the_one_before() -> None:
    from bench import preprocess_cost

    report = {
        "work_size": 192,
        "before": 256,
        "cpu_ms_per_upload": {"bench_images": {"192": 2.1, "256": 2.7}, "photos": {"192": 1.8, "256": 2.3}},
        "uploads": {"bench_images": 200, "photos": 1100},
        "accuracy_bench_images": {"192": 0.985, "256": 0.99},
        "skipped": {"canvases": "install fonts-x"},
    }
    listed = {t["target"]: t for t in targets([], [], {}, report)}
    assert listed["preprocess CPU ms/photo in-process <= 2"]["met"] is True
    assert listed["preprocess CPU ms/bench image <= 2"] == {
        "target": "preprocess CPU ms/bench image <= 2",
        "value": 2.1,
        "limit": 2.0,
        "met": False,
    }
    assert listed["bench images accuracy >= at 256 px (99.0%)"]["met"] is False  # 98.5% < 99.0%
    text = preprocess_cost.render(report)
    assert "photos        (1100)   1.80 vs   2.30  (0.78x)" in text and "skipped canvases: install fonts-x" in text


def test_preprocessing_cost_times_each_set_at_each_size() -> None:
    from bench import preprocess_cost
    from bench.images import make_images

    uploads = [image.data for image in make_images(4)]
    cost = preprocess_cost.cpu_ms({"bench_images": uploads}, (192, 256), repeats=1)
    assert set(cost["bench_images"]) == {"192", "256"}
    assert all(0 < ms < 1000 for ms in cost["bench_images"].values())
