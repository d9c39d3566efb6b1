"""``python -m bench.hop_floor``: three real worker processes and a private redis-server run
chains of empty tasks with digitflow's Celery configuration, and every chain comes back."""

from __future__ import annotations

import pytest

from bench.hop_floor import QUEUES, measure


@pytest.mark.parametrize(("pool", "events"), [("solo", False), ("prefork", True)])
def test_every_chain_of_empty_hops_comes_back_with_its_hop_times(pool: str, events: bool) -> None:
    out = measure(jobs=10, pool=pool, events=events)
    assert out["pool"] == pool and out["events"] is events and out["jobs"] == 10
    assert len(out["hop_p50_ms"]) == len(QUEUES) and all(h > 0 for h in out["hop_p50_ms"])
    # The chain's time holds its hops' (medians of each, so compared loosely).
    assert out["chain_p99_ms"] >= out["chain_p50_ms"] > max(out["hop_p50_ms"])
