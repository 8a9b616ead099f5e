"""ABTestController: config, assignment + recording through an EventStore, runtime weights, reports."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from appsim.errors import NotFoundError, ValidationError
from appsim.services import ab_stats
from appsim.services.ab_testing import ABTestController, ExperimentConfig, parse_experiments
from fakes_ab import InMemoryEventStore

T0 = datetime(2026, 3, 2, tzinfo=UTC)

# the entry of src/appsim/config/config.yaml
YAML_ENTRY: dict[str, Any] = {
    "id": "v1-vs-v2",
    "unit": "advertiser_id",
    "variants": [
        {"name": "control", "model_version": "v1", "weight": 0.7},
        {"name": "treatment", "model_version": "v2", "weight": 0.3},
    ],
    "seed": "exp-v1-vs-v2-2026",
    "primary_metric": "install_rate",
    "enabled": True,
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make(**overrides: Any) -> tuple[ABTestController, InMemoryEventStore, Clock]:
    cfg = {**YAML_ENTRY, "start": T0, "baseline_rate": 0.10, **overrides}
    store = InMemoryEventStore()
    clock = Clock(T0)
    return ABTestController([cfg], store, clock=clock), store, clock


def feed(
    ctl: ABTestController,
    clock: Clock,
    *,
    n: int,
    days: float,
    rates: dict[str, float],
    seed: int,
    start: datetime = T0,
    latency_ms: dict[str, float] | None = None,
    prefix: str = "r",
) -> None:
    """``n`` requests spread over ``days``; installs with the given per-variant rates."""
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.random(n)) * days * 86400
    for i in range(n):
        ts = start + timedelta(seconds=float(offsets[i]))
        clock.now = ts
        rid = f"{prefix}{seed}-{i}"
        a = ctl.assign(f"adv-{rng.integers(0, n // 2)}", rid)
        lat = rng.lognormal(np.log(60), 0.35) + (latency_ms or {}).get(a.variant or "", 0.0)
        if not ctl.record_exposure(a, request_id=rid, endpoint="/v1/similar", latency_ms=lat):
            continue
        if rng.random() < rates[a.variant or ""]:
            ctl.record_outcome(rid, "install", event_id=f"{rid}-i")
        if rng.random() < 0.2:
            ctl.record_outcome(rid, "click", event_id=f"{rid}-c")
    clock.now = start + timedelta(days=days)


def test_config_yaml_entry_parses_with_defaults() -> None:
    (cfg,) = parse_experiments([YAML_ENTRY])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.control_name == "control" and cfg.weights == {"control": 0.7, "treatment": 0.3}
    assert cfg.alpha == 0.05 and cfg.srm_alpha == 0.001 and cfg.auto_rollback is False
    ctl = ABTestController([YAML_ENTRY], InMemoryEventStore())
    assert ctl.default_model_version == "v1"
    with pytest.raises(ValidationError):
        parse_experiments([YAML_ENTRY, YAML_ENTRY])
    with pytest.raises(ValidationError):
        parse_experiments([{**YAML_ENTRY, "primary_metric": "revenue_per_exposure"}])
    with pytest.raises(ValidationError):
        parse_experiments([{**YAML_ENTRY, "typo_key": 1}])


def test_assign_record_and_forced_exposures_are_excluded() -> None:
    ctl, store, _ = make()
    a = ctl.assign("adv-1", "req-1")
    assert a.experiment_id == "v1-vs-v2" and a.in_experiment and a.variant in {"control", "treatment"}
    assert ctl.record_exposure(a, request_id="req-1", endpoint="/v1/similar", latency_ms=12.5)
    qa = ctl.assign("adv-1", "req-qa", forced_variant="v2")
    assert qa.forced and qa.variant == "treatment" and qa.model_version == "v2"
    assert ctl.record_exposure(qa, request_id="req-qa", endpoint="/v1/similar", latency_ms=10.0)
    assert ctl.record_outcome("req-qa", "install", event_id="e-qa")  # outcomes of QA requests are accepted
    df = store.exposures("v1-vs-v2")
    assert df.set_index("request_id").loc["req-qa", "forced"]
    with pytest.raises(ValidationError):
        ctl.record_exposure(a, request_id="req-2", endpoint="/v1/similar", latency_ms=float("nan"))
    rep = ctl.report("v1-vs-v2")
    assert rep["analysis"]["forced_excluded"] == {"treatment": 1}
    assert sum(v["rows"] for v in rep["variants"].values()) == 1
    assert rep["variants"]["treatment"]["outcomes"]["install"] == 0  # the QA install is not counted


def test_no_active_experiment_serves_the_default_version() -> None:
    ctl, _, clock = make(end=T0 + timedelta(days=1))
    clock.now = T0 + timedelta(days=2)
    a = ctl.assign("adv-1", "req-1")
    assert (a.experiment_id, a.model_version, a.in_experiment, a.reason) == (
        None,
        "v1",
        False,
        "no_active_experiment",
    )
    assert not ctl.record_exposure(a, request_id="req-1", endpoint="/v1/similar", latency_ms=1.0)
    qa = ctl.assign("adv-1", "req-2", forced_variant="v2")
    assert qa.model_version == "v2" and qa.forced
    # an explicit experiment id still answers, with the reason
    assert ctl.assign("adv-1", "req-3", experiment_id="v1-vs-v2").reason == "ended"
    with pytest.raises(NotFoundError):
        ctl.assign("adv-1", "req-3", experiment_id="nope")


def test_record_outcome_contract() -> None:
    ctl, _, _ = make()
    a = ctl.assign("adv-1", "req-1")
    ctl.record_exposure(a, request_id="req-1", endpoint="/v1/similar", latency_ms=5.0)
    assert ctl.record_outcome("req-1", "install", event_id="e1") is True
    assert ctl.record_outcome("req-1", "install", event_id="e1") is False  # idempotent
    assert ctl.record_outcome("req-1", "revenue", event_id="e2", value=2.5)
    with pytest.raises(NotFoundError):
        ctl.record_outcome("req-unknown", "click", event_id="e3")
    for kwargs in ({"kind": "purchase"}, {"value": -1.0}, {"value": float("inf")}, {"event_id": ""}):
        args: dict[str, Any] = {"kind": "click", "event_id": "e4", **kwargs}
        with pytest.raises(ValidationError):
            ctl.record_outcome("req-1", args.pop("kind"), **args)


def test_set_weights_is_validated_audited_and_restored() -> None:
    ctl, store, clock = make()
    clock.now = T0 + timedelta(hours=5)
    assert ctl.set_weights("v1-vs-v2", {"control": 0.5, "treatment": 0.5}, "alice", reason="ramp") == {
        "control": 0.5,
        "treatment": 0.5,
    }
    (entry,) = store.audit_log()
    assert entry["actor"] == "alice" and entry["action"] == "ab.set_weights"
    assert entry["payload"]["previous"] == {"control": 0.7, "treatment": 0.3}
    assert entry["payload"]["weights"] == {"control": 0.5, "treatment": 0.5}
    assert entry["payload"]["effective_at"] == clock.now.isoformat()
    for bad in (
        {"control": 0.5, "treatment": 0.6},
        {"control": 0.5, "v3": 0.5},
        {"control": -1, "treatment": 2},
    ):
        with pytest.raises(ValidationError):
            ctl.set_weights("v1-vs-v2", bad, "alice")
    with pytest.raises(ValidationError):
        ctl.set_weights("v1-vs-v2", {"control": 1.0}, " ")
    with pytest.raises(NotFoundError):
        ctl.set_weights("nope", {"control": 1.0}, "alice")
    assert len(store.audit_log()) == 1  # rejected changes are not audited
    # a restarted controller replays the audit log
    again = ABTestController([{**YAML_ENTRY, "start": T0}], store, clock=clock)
    assert again.weights("v1-vs-v2") == {"control": 0.5, "treatment": 0.5}
    assert len(again.weight_history("v1-vs-v2")) == 2


def test_report_is_json_safe_and_complete() -> None:
    ctl, _, clock = make()
    empty = ctl.report("v1-vs-v2")
    json.dumps(empty, allow_nan=False)
    assert empty["decision"] == "keep_running" and empty["decision_reasons"] == ["no exposures yet"]
    feed(ctl, clock, n=3000, days=2, rates={"control": 0.1, "treatment": 0.1}, seed=1)
    rep = ctl.report("v1-vs-v2")
    json.dumps(rep, allow_nan=False)
    sections = {"variants", "srm", "primary", "secondary", "guardrails", "power", "decision", "warnings"}
    assert set(rep) >= sections | {"decision_reasons", "weight_history", "actions"}
    for v in ("control", "treatment"):
        var = rep["variants"][v]
        assert var["rows"] == var["exposures"] > 0
        assert set(var["latency_ms"]) == {"p50", "p95", "p99"}
        m = var["metrics"]["install_rate"]
        assert m["ci_low"] <= m["value"] <= m["ci_high"]
        assert var["error_rate"]["value"] == 0.0
    comp = rep["primary"]["comparisons"]["treatment"]
    assert {"ztest", "msprt", "bayes", "p_value_holm", "significant", "design_effect"} <= set(comp)
    assert rep["primary"]["tau"] == pytest.approx(0.01)  # mde_relative 0.10 * baseline_rate 0.10
    assert 0 <= comp["bayes"]["prob_b_beats_a"] <= 1
    assert set(rep["secondary"]["metrics"]) == {"ctr", "revenue_per_exposure"}
    assert rep["guardrails"]["by_treatment"]["treatment"]["latency_p95"]["status"] in {"pass", "inconclusive"}
    power = rep["power"]
    assert power["required"]["control"] > power["required"]["treatment"] > 0  # 70/30 split
    assert power["eta_days"] is not None and power["eta_days"] > 0
    assert rep["decision"] == "keep_running"
    assert "minimum runtime" in rep["decision_reasons"][0]


def test_srm_follows_the_weight_history() -> None:
    ctl, _, clock = make(variants=[
        {"name": "control", "model_version": "v1", "weight": 0.9},
        {"name": "treatment", "model_version": "v2", "weight": 0.1},
    ])  # fmt: skip
    feed(ctl, clock, n=4000, days=1, rates={"control": 0.1, "treatment": 0.1}, seed=2)
    ctl.set_weights("v1-vs-v2", {"control": 0.7, "treatment": 0.3}, "alice", reason="ramp to 30%")
    feed(
        ctl,
        clock,
        n=8000,
        days=1,
        rates={"control": 0.1, "treatment": 0.1},
        seed=3,
        start=clock.now,
        prefix="s",
    )
    rep = ctl.report("v1-vs-v2")
    assert not rep["srm"]["srm"], rep["srm"]
    assert any("weights changed" in w for w in rep["warnings"])
    # judged against the current 70/30 only, the same units would look like a mismatch
    assert ab_stats.srm_test(rep["srm"]["observed"], {"control": 0.7, "treatment": 0.3}).srm


def test_runtime_gate_then_ship_and_ship_control() -> None:
    ctl, _, clock = make()
    feed(ctl, clock, n=20_000, days=3, rates={"control": 0.10, "treatment": 0.16}, seed=4)
    rep = ctl.report("v1-vs-v2")
    assert rep["decision"] == "keep_running" and "minimum runtime" in rep["decision_reasons"][0]
    assert rep["primary"]["comparisons"]["treatment"]["significant"]
    clock.now = T0 + timedelta(days=7)
    assert ctl.report("v1-vs-v2")["decision"] == "ship:treatment"

    ctl2, _, clock2 = make(min_runtime_days=0)
    feed(ctl2, clock2, n=20_000, days=3, rates={"control": 0.16, "treatment": 0.10}, seed=5)
    rep2 = ctl2.report("v1-vs-v2")
    assert rep2["decision"] == "ship:control", rep2["decision_reasons"]


def test_guardrail_stop_without_auto_rollback_keeps_weights() -> None:
    ctl, store, clock = make(min_runtime_days=0)
    feed(
        ctl,
        clock,
        n=5000,
        days=1,
        rates={"control": 0.1, "treatment": 0.1},
        seed=6,
        latency_ms={"treatment": 40},
    )
    rep = ctl.report("v1-vs-v2")
    assert rep["decision"] == "stop:guardrail" and rep["actions"] == []
    assert ctl.weights("v1-vs-v2") == {"control": 0.7, "treatment": 0.3}
    assert store.audit_log() == []


def test_auto_rollback_is_audited_once() -> None:
    ctl, store, clock = make(min_runtime_days=0, auto_rollback=True)
    feed(
        ctl,
        clock,
        n=5000,
        days=1,
        rates={"control": 0.1, "treatment": 0.1},
        seed=6,
        latency_ms={"treatment": 40},
    )
    rep = ctl.report("v1-vs-v2")
    assert rep["decision"] == "stop:guardrail"
    assert rep["actions"][0]["action"] == "ab.auto_rollback"
    assert ctl.weights("v1-vs-v2") == {"control": 1.0, "treatment": 0.0}
    (entry,) = store.audit_log()
    assert entry["actor"] == "system:auto-rollback" and entry["action"] == "ab.auto_rollback"
    assert entry["payload"]["failed_guardrails"] == {"treatment": ["latency_p95"]}
    again = ctl.report("v1-vs-v2")
    assert again["decision"] == "stop:guardrail" and again["actions"] == []
    assert len(store.audit_log()) == 1
    assert ctl.assign("adv-9", "req-new").variant == "control"


def test_unit_level_analysis() -> None:
    ctl, _, clock = make(analysis_unit="unit")
    feed(ctl, clock, n=3000, days=1, rates={"control": 0.1, "treatment": 0.1}, seed=7)
    rep = ctl.report("v1-vs-v2")
    json.dumps(rep, allow_nan=False)
    assert rep["analysis"]["rows"] < rep["analysis"]["exposures"]
    assert rep["primary"]["comparisons"]["treatment"]["design_effect"] == [1.0, 1.0]


def test_active_experiment_is_chosen_by_window() -> None:
    later = {**YAML_ENTRY, "id": "second", "seed": "s2", "start": T0 + timedelta(days=10)}
    first = {**YAML_ENTRY, "start": T0, "end": T0 + timedelta(days=10)}
    ctl = ABTestController([first, later], InMemoryEventStore(), clock=Clock(T0))
    assert ctl.assign("adv-1", "r1").experiment_id == "v1-vs-v2"
    assert ctl.assign("adv-1", "r2", now=T0 + timedelta(days=11)).experiment_id == "second"
