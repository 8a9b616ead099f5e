"""Planted effects: A/A false-positive rates under peeking; end-to-end decisions through the controller."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from appsim.errors import ValidationError
from appsim.services import ab_stats
from appsim.services.ab_simulation import simulate
from fakes_ab import InMemoryEventStore

WEIGHTS = {"v1": 0.7, "v2": 0.3}


def _mc_bound(p: float, n: int) -> float:
    return p + 3 * math.sqrt(p * (1 - p) / n)


def test_aa_peeking_naive_z_vs_msprt() -> None:
    """2,000 A/A experiments at 70/30, base rate 10%, 10 equally spaced looks of 2,000 requests each.

    Stopping at the first look with z-test p < 0.05 gives ~19% false positives (Armitage, McPherson, Rowe
    1969: 0.193 for 10 looks); the mSPRT (tau = 0.01, 10% of the base rate) stays under 5%.
    """
    rng = np.random.default_rng(20240601)
    experiments, looks, per_look = 2000, 10, 2000
    n_b_look = rng.binomial(per_look, 0.3, size=(experiments, looks))
    n_a_look = per_look - n_b_look
    x_a = np.cumsum(rng.binomial(n_a_look, 0.10), axis=1)
    x_b = np.cumsum(rng.binomial(n_b_look, 0.10), axis=1)
    n_a, n_b = np.cumsum(n_a_look, axis=1), np.cumsum(n_b_look, axis=1)
    diff = x_b / n_b - x_a / n_a
    var = ab_stats.proportion_diff_var(x_a, n_a, x_b, n_b, pooled=True)
    p_z = np.vectorize(lambda z: math.erfc(abs(z) / math.sqrt(2)))(diff / np.sqrt(var))
    naive_fpr = float((p_z < 0.05).any(axis=1).mean())
    final_look_fpr = float((p_z[:, -1] < 0.05).mean())
    msprt_fpr = float((ab_stats.msprt_pvalue(diff, var, tau=0.01) <= 0.05).any(axis=1).mean())
    # the single pre-planned look is fine, peeking is not
    assert final_look_fpr <= _mc_bound(0.05, experiments)
    assert 0.16 <= naive_fpr <= 0.23, naive_fpr
    assert msprt_fpr <= _mc_bound(0.05, experiments), msprt_fpr
    assert msprt_fpr < naive_fpr / 4


def test_aa_continuous_monitoring_of_every_observation() -> None:
    """What the controller does: the running minimum over every prefix (after a burn-in of 100 per arm)."""
    rng = np.random.default_rng(7)
    experiments, n = 600, 20_000
    hits = 0
    for _ in range(experiments):
        is_b = rng.random(n) < 0.3
        y = (rng.random(n) < 0.10).astype(float)
        hits += bool(ab_stats.sequential_proportion_pvalues(y, is_b, tau=0.01, burn_in=100)[-1] <= 0.05)
    assert hits / experiments <= _mc_bound(0.05, experiments), hits / experiments


@pytest.mark.slow
def test_planted_lift_ships_v2(tmp_path: Path) -> None:
    store = InMemoryEventStore()
    png = tmp_path / "sim.png"
    res = simulate(0.10, 14, 10_000, WEIGHTS, 0.10, seed=1, store=store, out_png=png)
    assert res.decision == "ship:v2", res.report["decision_reasons"]
    assert res.decided_at_look is not None and res.decided_at_look >= 7  # min_runtime_days = 7
    assert png.is_file() and png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    comp = res.report["primary"]["comparisons"]["v2"]
    assert comp["msprt"]["p_value"] <= 0.05 and comp["bayes"]["prob_b_beats_a"] > 0.99
    assert not res.report["srm"]["srm"]
    assert all(g["status"] == "pass" for g in res.report["guardrails"]["by_treatment"]["v2"].values())
    # the running minimum is below the current value; the decision look is the first with p_now <= alpha
    assert all(pt["p_msprt"]["v2"] <= pt["p_msprt_now"]["v2"] for pt in res.trajectory)
    assert res.trajectory[-1]["p_msprt_now"]["v2"] <= 0.05
    assert store.audit_log() == []


def test_latency_regression_stops_and_rolls_back() -> None:
    store = InMemoryEventStore()
    res = simulate(0.0, 7, 10_000, WEIGHTS, 0.10, latency_regression_ms=30, seed=2, store=store)
    assert res.decision == "stop:guardrail"
    lat = res.report["guardrails"]["by_treatment"]["v2"]["latency_p95"]
    assert lat["status"] == "fail" and lat["relative"] > 0.10
    assert res.report["weights"] == {"v1": 1.0, "v2": 0.0}
    (entry,) = store.audit_log()
    assert entry["action"] == "ab.auto_rollback" and entry["payload"]["weights"] == {"v1": 1.0, "v2": 0.0}


def test_broken_split_is_invalid() -> None:
    res = simulate(0.10, 7, 10_000, WEIGHTS, 0.10, broken_split=True, seed=3, store=InMemoryEventStore())
    assert res.decision == "invalid:srm"
    assert res.report["srm"]["p_value"] < 0.001
    assert "sample ratio mismatch" in res.report["decision_reasons"][0]


@pytest.mark.slow
def test_aa_through_the_controller_does_not_ship() -> None:
    res = simulate(0.0, 7, 5_000, WEIGHTS, 0.10, seed=4, store=InMemoryEventStore(), looks_per_day=2)
    assert res.decision == "keep_running" and res.looks == 14
    assert all(pt["decision"] == "keep_running" for pt in res.trajectory)


def test_simulate_needs_a_store() -> None:
    with pytest.raises(ValidationError):
        simulate(0.1, 1, 100, WEIGHTS, 0.1)
    with pytest.raises(ValidationError):
        simulate(0.1, 1, 100, WEIGHTS, 0.95, store=InMemoryEventStore())
