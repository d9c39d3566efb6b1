"""The drift demo's new population and its end-state summary (bench/drift_demo.py)."""

from __future__ import annotations

from bench.drift_demo import N_AFTER, end_state, new_population
from bench.population_suites import optdigits


def test_new_population_is_other_writers_never_in_the_gate_suite() -> None:
    pool, after = new_population()
    images, _ = optdigits()
    assert len(after) == N_AFTER and len(pool) + len(after) == sum(1 for i in range(len(images)) if i % 4)
    assert all(data[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0") for data, _ in pool[:50])
    assert {label for _, label in pool} == set(range(10))
    assert not {data for data, _ in pool} & {data for data, _ in after}  # fresh digits after


def test_end_state_compares_the_new_population_with_the_best_other_one() -> None:
    outcome = {
        "suites": {
            "suites": {
                "mnist_heldout": {"candidate": 0.992, "production": 0.99},
                "mnist_heldout_augmented": {"candidate": 0.999, "production": 0.99},
                "photos": {"candidate": 0.97, "production": 0.978},
                "lowres_scans": {"candidate": 0.975, "production": 0.95},
            }
        }
    }
    state = end_state(outcome, 0.981)
    assert state is not None
    # The augmented copy of MNIST held-out is a proxy, not a population: never "the best".
    assert state["best_population"] == "mnist_heldout" and state["gap_to_best_points"] == 1.1
    assert state["change_points"]["photos"] == -0.8 and state["worst_change_points"] == -0.8
    assert end_state(None, 0.9) is None and end_state(outcome, None) is None
