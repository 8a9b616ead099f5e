"""Simulated traffic with planted effects, driven through the real :class:`ABTestController` and store.

Used to check the experiment machinery end to end (assignment -> exposures/outcomes in the store ->
report -> decision) and to show how the decision evolves over interim looks. Each simulated request:

* a unit (``adv-NNNNNN``, drawn from a pool of ``total/3`` units, so units come back) and a request id;
* is assigned by the controller (real sha256 bucketing, weights as given);
* with ``broken_split`` 10% of the treatment's exposures are "lost" before logging (a classic SRM cause);
* latency ~ lognormal(median 60 ms, sigma 0.35) ms, plus ``latency_regression_ms`` for the treatments;
  errors with probability 0.5%;
* installs with probability ``base_rate`` (control) or ``base_rate * (1 + lift)`` (treatments), clicks
  with probability 0.25, revenue ~ Exponential(mean 1.5) per install.

After every look (``looks_per_day`` per day) the controller's report is read; the trajectory records
exposures, rates, the fixed-horizon z-test p-value, the mSPRT p-value ``1/Lambda_n`` the decision reads
and its running minimum (the always-valid p-value), and the decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from appsim.errors import ValidationError
from appsim.services.ab_events import EventStore, Exposure, Outcome
from appsim.services.ab_testing import ABTestController

SIM_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
CLICK_RATE = 0.25
ERROR_RATE = 0.005
LATENCY_MEDIAN_MS = 60.0
LATENCY_SIGMA = 0.35
REVENUE_MEAN = 1.5
LOST_TREATMENT_SHARE = 0.10


class WriteBehindStore:
    """Collects the controller's writes in memory and writes them in bulk before any read (the bulk path
    of the simulation: one transaction per look instead of one per event, ~5 ms each on SQLite).

    ``record_outcome`` returns ``True`` at once (the simulation never repeats an event id nor sends an
    outcome without its exposure; a store error surfaces at the next read). Uses the inner store's
    ``record_exposures`` / ``record_outcomes`` when it has them, one call per event otherwise. Audit
    entries and reads go straight through (reads after :meth:`flush`).
    """

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner
        self._exposures: list[Exposure] = []
        self._outcomes: list[Outcome] = []

    def record_exposure(self, e: Exposure) -> None:
        self._exposures.append(e)

    def record_outcome(self, o: Outcome) -> bool:
        self._outcomes.append(o)
        return True

    def flush(self) -> None:
        """Write what was collected: exposures first (outcomes reference them), then outcomes."""
        exposures, self._exposures = self._exposures, []
        outcomes, self._outcomes = self._outcomes, []
        if exposures:
            many = getattr(self.inner, "record_exposures", None)
            if many is not None:
                many(exposures)
            else:
                for e in exposures:
                    self.inner.record_exposure(e)
        if outcomes:
            batch = getattr(self.inner, "record_outcomes", None)
            if batch is not None:
                batch(outcomes)
            else:
                for o in outcomes:
                    self.inner.record_outcome(o)

    def exposures(self, experiment_id: str) -> pd.DataFrame:
        self.flush()
        return self.inner.exposures(experiment_id)

    def outcomes(self, experiment_id: str) -> pd.DataFrame:
        self.flush()
        return self.inner.outcomes(experiment_id)

    def record_audit(self, actor: str, action: str, payload: dict) -> None:
        self.inner.record_audit(actor, action, payload)

    def audit_log(self, limit: int = 100) -> list[dict]:
        return self.inner.audit_log(limit)


@dataclass
class SimulationResult:
    """Outcome of :func:`simulate`: the final ``decision``, the look it was reached at (1-based; ``None``
    if still ``keep_running``), the per-look ``trajectory``, the last full ``report`` and the PNG path."""

    experiment_id: str
    decision: str
    decided_at_look: int | None
    looks: int
    exposures: int
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    png: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weights(weights: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    if isinstance(weights, Mapping):
        w = {str(k): float(v) for k, v in weights.items()}
    else:
        w = {f"v{i + 1}": float(v) for i, v in enumerate(weights)}
    if len(w) < 2:
        raise ValidationError("a simulation needs at least two variants", field="weights")
    return w


def simulate(
    lift: float,
    days: int,
    traffic_per_day: int,
    weights: Mapping[str, float] | Sequence[float],
    base_rate: float,
    latency_regression_ms: float = 0.0,
    broken_split: bool = False,
    seed: int = 0,
    store: EventStore | None = None,
    looks_per_day: int = 1,
    out_png: str | Path | None = None,
    *,
    config_overrides: Mapping[str, Any] | None = None,
    stop_on_decision: bool = True,
    echo: Callable[[str], None] | None = None,
    on_look: Callable[[dict[str, Any]], None] | None = None,
    batch_writes: bool = True,
) -> SimulationResult:
    """Run a simulated experiment with a planted effect through the real controller and ``store``.

    ``lift``: relative install-rate lift of every treatment (0.10 = +10%); ``days`` x ``traffic_per_day``
    requests in total; ``weights``: variant -> share (first = control; model version = variant name) or a
    list of shares (variants ``v1, v2, ...``); ``base_rate``: control install rate per exposure;
    ``latency_regression_ms``: added to the treatments' latency (ms); ``broken_split``: drop 10% of the
    treatment exposures before logging (SRM); ``seed``: seeds the traffic and the experiment's hash seed;
    ``store``: any :class:`EventStore` (required; it should be empty for this experiment id);
    ``looks_per_day``: reports per simulated day; ``out_png``: where to save the plot (matplotlib Agg).
    ``config_overrides`` updates the experiment config (defaults: ``auto_rollback=True``,
    ``baseline_rate=base_rate``); ``stop_on_decision`` ends at the first decision other than
    ``keep_running``; ``echo`` receives one line per look and ``on_look`` each trajectory point;
    ``batch_writes`` writes each look's events in bulk (:class:`WriteBehindStore`) instead of one
    transaction per event. Raises ``ValidationError``.
    """
    if store is None:
        raise ValidationError("simulate needs an EventStore (the CLI passes the SQLite store)", field="store")
    if days <= 0 or traffic_per_day <= 0 or looks_per_day <= 0:
        raise ValidationError("days, traffic_per_day and looks_per_day must be positive")
    if not 0 < base_rate < 1 or not 0 < base_rate * (1 + lift) < 1:
        raise ValidationError("base_rate and base_rate * (1 + lift) must be in (0, 1)", field="base_rate")
    w = _weights(weights)
    names = list(w)
    control = names[0]
    exp_id = f"sim-{seed}"
    cfg: dict[str, Any] = {
        "id": exp_id,
        "unit": "advertiser_id",
        "variants": [{"name": n, "model_version": n, "weight": w[n]} for n in names],
        "control": control,
        "seed": f"sim-seed-{seed}",
        "start": SIM_START,
        "auto_rollback": True,
        "baseline_rate": base_rate,
    }
    cfg.update(config_overrides or {})
    now = [SIM_START]
    sink: EventStore = WriteBehindStore(store) if batch_writes else store
    controller = ABTestController([cfg], sink, clock=lambda: now[0], restore_from_audit=False)
    rng = np.random.default_rng(seed)
    total = days * traffic_per_day
    pool = max(100, total // 3)
    n_looks = days * looks_per_day
    look_len = timedelta(days=1) / looks_per_day
    per_look = [traffic_per_day // looks_per_day] * n_looks
    for i in range(traffic_per_day % looks_per_day):
        per_look[i::looks_per_day] = [c + 1 for c in per_look[i::looks_per_day]]
    trajectory: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    decided_at: int | None = None
    recorded = 0
    req = 0
    for look in range(n_looks):
        t0 = SIM_START + look * look_len
        n = per_look[look]
        offsets = np.sort(rng.random(n)) * look_len.total_seconds()
        units = rng.integers(0, pool, n)
        u = rng.random((n, 4))
        lat_noise = rng.lognormal(math.log(LATENCY_MEDIAN_MS), LATENCY_SIGMA, n)
        revenue = rng.exponential(REVENUE_MEAN, n)
        for i in range(n):
            ts = t0 + timedelta(seconds=float(offsets[i]))
            now[0] = ts
            req += 1
            request_id = f"r{seed}-{req:08d}"
            a = controller.assign(f"adv-{units[i]:06d}", request_id, now=ts)
            treated = a.variant != control
            if broken_split and treated and u[i, 3] < LOST_TREATMENT_SHARE:
                continue
            latency = float(lat_noise[i]) + (latency_regression_ms if treated else 0.0)
            error = "internal" if u[i, 2] < ERROR_RATE else None
            if not controller.record_exposure(
                a, request_id=request_id, endpoint="/v1/similar", latency_ms=latency, error=error, ts=ts
            ):
                continue
            recorded += 1
            p_install = base_rate * (1 + lift) if treated else base_rate
            if u[i, 0] < CLICK_RATE:
                controller.record_outcome(request_id, "click", event_id=f"{request_id}-c", ts=ts)
            if u[i, 1] < p_install:
                controller.record_outcome(request_id, "install", event_id=f"{request_id}-i", ts=ts)
                controller.record_outcome(
                    request_id, "revenue", event_id=f"{request_id}-r", value=float(revenue[i]), ts=ts
                )
        now[0] = t0 + look_len
        report = controller.report(exp_id, now=now[0])
        point = _trajectory_point(report, look + 1, (look + 1) / looks_per_day, names, control)
        trajectory.append(point)
        if echo is not None:
            echo(_format_point(point, names))
        if on_look is not None:
            on_look(point)
        if report["decision"] != "keep_running" and decided_at is None:
            decided_at = look + 1
            if stop_on_decision:
                break
    png = _plot(trajectory, names, control, out_png, report) if out_png is not None else None
    return SimulationResult(
        experiment_id=exp_id,
        decision=report.get("decision", "keep_running"),
        decided_at_look=decided_at,
        looks=len(trajectory),
        exposures=recorded,
        trajectory=trajectory,
        report=report,
        png=png,
    )


def _trajectory_point(
    report: Mapping[str, Any], look: int, day: float, names: Sequence[str], control: str
) -> dict[str, Any]:
    metric = report["primary"]["metric"]
    point: dict[str, Any] = {
        "look": look,
        "day": day,
        "ts": report["generated_at"],
        "exposures": {v: report["variants"][v]["rows"] for v in names},
        "rate": {v: report["variants"][v]["metrics"][metric]["value"] for v in names},
        "p_z": {},
        "p_msprt": {},
        "p_msprt_now": {},
        "srm_p": report["srm"]["p_value"],
        "guardrails": {
            t: {m: g["status"] for m, g in gs.items()}
            for t, gs in report["guardrails"]["by_treatment"].items()
        },
        "decision": report["decision"],
    }
    for t in names:
        if t == control:
            continue
        c = report["primary"]["comparisons"].get(t, {})
        point["p_z"][t] = (c.get("ztest") or {}).get("p_value")
        point["p_msprt"][t] = (c.get("msprt") or {}).get("p_value")
        point["p_msprt_now"][t] = (c.get("msprt") or {}).get("p_value_now")
    return point


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _format_point(p: Mapping[str, Any], names: Sequence[str]) -> str:
    rates = " ".join(f"{v}={_fmt(p['rate'][v], '.4f')}({p['exposures'][v]})" for v in names)
    ps = " ".join(
        f"{t}: z p={_fmt(p['p_z'][t], '.3g')} mSPRT p={_fmt(p['p_msprt_now'][t], '.3g')}"
        f" (min {_fmt(p['p_msprt'][t], '.3g')})"
        for t in p["p_z"]
    )
    srm = _fmt(p["srm_p"], ".3g")
    return f"look {p['look']:3d} day {p['day']:6.2f} {rates} | {ps} | srm p={srm} -> {p['decision']}"


def _plot(
    trajectory: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    control: str,
    out_png: str | Path,
    report: Mapping[str, Any],
) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    days = [p["day"] for p in trajectory]
    metric = report.get("primary", {}).get("metric", "primary metric")
    for v in names:
        ax1.plot(
            days,
            [p["rate"][v] if p["rate"][v] is not None else np.nan for p in trajectory],
            marker="o",
            label=v,
        )
    ax1.set_ylabel(f"{metric} (cumulative)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    alpha = report.get("primary", {}).get("alpha", 0.05)
    for t in names:
        if t == control:
            continue
        for key, style, label in (
            ("p_z", "--", "z-test (fixed horizon)"),
            ("p_msprt_now", "-", "mSPRT 1/Lambda_n (decision)"),
            ("p_msprt", ":", "mSPRT running min (always-valid p)"),
        ):
            ys = [p[key].get(t) for p in trajectory]
            ax2.plot(
                days,
                [max(y, 1e-12) if y is not None else np.nan for y in ys],
                style,
                marker=".",
                label=f"{t} {label}",
            )
    ax2.axhline(alpha, color="grey", linestyle=":", label=f"alpha = {alpha}")
    ax2.set_yscale("log")
    ax2.set_ylabel("p-value")
    ax2.set_xlabel("day")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    fig.suptitle(f"{report.get('experiment_id', '')}: decision {report.get('decision', '')}")
    fig.tight_layout()
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return str(path)
