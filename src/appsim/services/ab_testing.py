"""The A/B experiment controller: configuration, assignment, event recording, runtime weights, reports.

:class:`ABTestController` is pure orchestration over :mod:`appsim.services.assignment` (who gets which
model version), an :class:`~appsim.services.ab_events.EventStore` (exposures, outcomes, audit log) and
:mod:`appsim.services.ab_stats` (the statistics). It raises domain errors only
(:class:`~appsim.errors.ValidationError`, :class:`~appsim.errors.NotFoundError`).

Decision rules of :meth:`ABTestController.report` (in this order; ``docs/ab-testing.md`` explains why):

1. ``invalid:srm`` when the exposure counts do not match the weights in force (chi-square, p < 0.001):
   nothing is concluded, not even a guardrail stop; a human investigates.
2. ``stop:guardrail`` when a treatment is shown worse than a guardrail's non-inferiority margin (latency
   quantile, error rate) by an always-valid confidence sequence; with ``auto_rollback`` the weights are
   set to control 100% and the change is audited.
3. ``keep_running`` until ``min_runtime_days`` have passed (full weekly cycles).
4. ``ship:<treatment>`` when its current mSPRT p-value ``1/Lambda_n`` on the primary metric (Holm across
   treatments) is <= alpha with a positive effect and every guardrail has passed (non-inferiority shown);
   the largest such effect wins. ``ship:<control>`` when every treatment is significantly worse.
5. ``keep_running`` otherwise.

The decision reads the mSPRT (valid at any number of looks), never the fixed-horizon z-test, which is
reported for information only: reading a z-test at every look inflates its false-positive rate (about 19%
instead of 5% with ten looks). Rejecting whenever the *current* ``1/Lambda_n <= alpha`` at a reading is
covered by Ville's inequality (``P(sup_n Lambda_n >= 1/alpha) <= alpha``) whatever the number and timing
of readings; unlike the running minimum (the paper's always-valid p-value, also reported), it keeps the
decision, the effect's sign and the confidence sequence coherent when a decision was deferred (minimum
runtime, guardrails) and the data moved since the crossing.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from appsim.errors import NotFoundError, ValidationError
from appsim.jsonsafe import jsonable
from appsim.services import ab_stats
from appsim.services.ab_events import OUTCOME_KINDS, EventStore, Exposure, Outcome, OutcomeKind
from appsim.services.assignment import (
    REASON_FORCED,
    REASON_NO_EXPERIMENT,
    Assignment,
    ExperimentSpec,
    as_utc,
    assign,
    validate_weights,
)

log = structlog.get_logger(__name__)

MetricName = Literal["install_rate", "ctr", "revenue_per_exposure", "installs_per_exposure"]


@dataclass(frozen=True)
class MetricDef:
    """A metric computed per analysis row: ``column`` of the row table, ``kind`` proportion or mean."""

    column: str
    kind: Literal["proportion", "mean"]
    description: str


METRICS: dict[str, MetricDef] = {
    "install_rate": MetricDef("install", "proportion", "rows with >= 1 install / rows"),
    "ctr": MetricDef("click", "proportion", "rows with >= 1 click / rows (per exposure, not per impression)"),
    "revenue_per_exposure": MetricDef("revenue", "mean", "summed revenue value per row"),
    "installs_per_exposure": MetricDef("install_count", "mean", "install events per row"),
}

ACTION_SET_WEIGHTS = "ab.set_weights"
ACTION_AUTO_ROLLBACK = "ab.auto_rollback"
ROLLBACK_ACTOR = "system:auto-rollback"
_DAY = timedelta(days=1)


class GuardrailConfig(BaseModel):
    """Non-inferiority margins: latency quantile (relative, e.g. 0.10 = +10%) and error rate (absolute)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_quantile: float = Field(default=0.95, gt=0.5, lt=1.0)
    latency_relative_margin: float = Field(default=0.10, gt=0.0, le=1.0)
    error_rate_absolute_margin: float = Field(default=0.005, gt=0.0, le=0.5)
    min_exposures: int = Field(default=100, ge=10)


class ExperimentConfig(ExperimentSpec):
    """One experiment: the assignment fields of :class:`ExperimentSpec` plus its analysis plan.

    ``primary_metric`` must be a proportion (``install_rate`` or ``ctr``); ``secondary_metrics`` are
    reported with Holm-adjusted mSPRT p-values. ``alpha`` is the two-sided level of the primary
    test, ``srm_alpha`` that of the SRM check. ``mde_relative`` (minimum detectable effect, relative) and
    ``power`` size the experiment; ``baseline_rate`` is the expected control rate (the observed one when
    unset). ``msprt_tau`` is the sd of the mSPRT's normal mixing distribution in absolute rate units;
    unset -> ``mde_relative * baseline`` (Johari et al.: centre the mixture on the effects you care about).
    ``msprt_burn_in``: observations per arm before the mSPRT is read. ``analysis_unit``: ``exposure``
    (each request is a row) or ``unit`` (each randomisation unit is a row; metrics aggregated per unit).
    """

    primary_metric: MetricName = "install_rate"
    secondary_metrics: tuple[MetricName, ...] = ("ctr", "revenue_per_exposure")
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    srm_alpha: float = Field(default=ab_stats.SRM_ALPHA, gt=0.0, lt=0.5)
    mde_relative: float = Field(default=0.10, gt=0.0)
    power: float = Field(default=0.8, gt=0.0, lt=1.0)
    baseline_rate: float | None = Field(default=None, gt=0.0, lt=1.0)
    msprt_tau: float | None = Field(default=None, gt=0.0)
    msprt_burn_in: int = Field(default=100, ge=1)
    min_runtime_days: float = Field(default=7.0, ge=0.0)
    guardrails: GuardrailConfig = Field(default_factory=GuardrailConfig)
    auto_rollback: bool = False
    shadow: bool = False  # also run the non-served variant off the response path; record overlap@k
    prior: tuple[float, float] = (1.0, 1.0)
    analysis_unit: Literal["exposure", "unit"] = "exposure"

    @model_validator(mode="after")
    def _check_metrics(self) -> ExperimentConfig:
        if METRICS[self.primary_metric].kind != "proportion":
            raise ValueError(f"primary_metric must be a proportion metric, got {self.primary_metric!r}")
        if min(self.prior) <= 0:
            raise ValueError("prior parameters must be positive")
        return self


def parse_experiments(items: Sequence[ExperimentConfig | Mapping[str, Any]]) -> list[ExperimentConfig]:
    """Validate experiment configs (dicts from settings or models); raises ``ValidationError``."""
    out: list[ExperimentConfig] = []
    for i, item in enumerate(items):
        try:
            cfg = item if isinstance(item, ExperimentConfig) else ExperimentConfig.model_validate(dict(item))
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            raise ValidationError(
                f"experiment #{i}: {loc or 'config'}: {first.get('msg')}", field=f"experiments[{i}].{loc}"
            ) from None
        out.append(cfg)
    ids = [c.id for c in out]
    dup = sorted({x for x in ids if ids.count(x) > 1})
    if dup:
        raise ValidationError(f"duplicate experiment ids {dup}", field="experiments")
    return out


# -------------------------------------------------------------------------------------------- helpers


def _micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch (exact, also for ``datetime.min``)."""
    delta = as_utc(ts) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class _Epoch:
    start: datetime
    weights: dict[str, float]


def _build_rows(
    cfg: ExperimentConfig, exposures: pd.DataFrame, outcomes: pd.DataFrame
) -> tuple[pd.DataFrame, dict]:
    """Per-exposure analysis rows (forced excluded) and bookkeeping counts."""
    info: dict[str, Any] = {"forced_excluded": {}, "unknown_variant_rows": 0, "duplicate_request_ids": 0}
    cols = ["request_id", "unit_id", "variant", "ts", "latency_ms", "error"]
    if exposures is None or len(exposures) == 0:
        empty = pd.DataFrame(columns=[*cols, "install", "click", "impression", "revenue", "install_count"])
        return empty, info
    exp = exposures
    if "experiment_id" in exp.columns:
        exp = exp[exp["experiment_id"] == cfg.id]
    forced = exp["forced"].fillna(False).astype(bool)
    info["forced_excluded"] = {str(k): int(v) for k, v in exp[forced].groupby("variant").size().items()}
    exp = exp[~forced]
    known = exp["variant"].isin(cfg.variant_names)
    info["unknown_variant_rows"] = int((~known).sum())
    exp = exp[known]
    n_before = len(exp)
    exp = exp.drop_duplicates("request_id", keep="first")
    info["duplicate_request_ids"] = n_before - len(exp)
    rows = pd.DataFrame(
        {
            "request_id": exp["request_id"].astype(str).to_numpy(),
            "unit_id": exp["unit_id"].astype(str).to_numpy(),
            "variant": exp["variant"].astype(str).to_numpy(),
            "ts": pd.to_datetime(exp["ts"], utc=True).reset_index(drop=True),
            "latency_ms": pd.to_numeric(exp["latency_ms"], errors="coerce").to_numpy(dtype=float),
            "error": (exp["error"].notna() & (exp["error"].astype(str) != "")).to_numpy(dtype=bool),
        }
    )
    out = outcomes if outcomes is not None else pd.DataFrame(columns=["request_id", "kind", "value"])
    if len(out):
        out = out[out["request_id"].isin(rows["request_id"])]
    idx = pd.Index(rows["request_id"])
    for kind in ("install", "click", "impression"):
        counts = out[out["kind"] == kind].groupby("request_id").size() if len(out) else pd.Series(dtype=float)
        c = counts.reindex(idx, fill_value=0).to_numpy(dtype=float)
        rows[kind] = (c > 0).astype(float)
        if kind == "install":
            rows["install_count"] = c
    if len(out):
        rev = pd.to_numeric(out.loc[out["kind"] == "revenue", "value"], errors="coerce")
        revenue = rev.groupby(out.loc[out["kind"] == "revenue", "request_id"]).sum()
    else:
        revenue = pd.Series(dtype=float)
    rows["revenue"] = revenue.reindex(idx, fill_value=0.0).to_numpy(dtype=float)
    rows = rows.sort_values(["ts", "request_id"], kind="stable").reset_index(drop=True)
    return rows, info


def _deff(rows: pd.DataFrame, column: str) -> float:
    """Design effect of a per-row metric clustered by ``unit_id`` (1.0 for one row per unit)."""
    if len(rows) < 2:
        return 1.0
    return ab_stats.design_effect(rows[column].to_numpy(dtype=float), rows["unit_id"].to_numpy())


def _unit_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Aggregate exposure rows per randomisation unit (units seen in several variants are dropped)."""
    if rows.empty:
        return rows, 0
    n_var = rows.groupby("unit_id")["variant"].nunique()
    mixed = set(n_var[n_var > 1].index)
    r = rows[~rows["unit_id"].isin(mixed)]
    g = r.groupby("unit_id", sort=False)
    units = pd.DataFrame(
        {
            "variant": g["variant"].first(),
            "ts": g["ts"].min(),
            "install": g["install"].max(),
            "click": g["click"].max(),
            "impression": g["impression"].max(),
            "revenue": g["revenue"].sum(),
            "install_count": g["install_count"].sum(),
        }
    ).reset_index()
    units["request_id"] = units["unit_id"]
    units = units.sort_values(["ts", "unit_id"], kind="stable").reset_index(drop=True)
    return units, len(mixed)


# ------------------------------------------------------------------------------------------ controller


class ABTestController:
    """Runs the configured experiments against an :class:`EventStore`.

    ``experiments``: configs (dicts as in settings' ``experiments`` list, or :class:`ExperimentConfig`).
    ``default_model_version``: served when no experiment is active (defaults to the first experiment's
    control). ``clock``: returns the current UTC time (injected by simulations and tests).
    ``restore_from_audit``: replay the store's audit log (``ab.set_weights`` / ``ab.auto_rollback``
    entries, ordered by their ``effective_at``) so runtime weight changes survive a restart.

    Thread-safe: runtime weights are guarded by a lock; reports read the store without holding it.
    """

    def __init__(
        self,
        experiments: Sequence[ExperimentConfig | Mapping[str, Any]],
        store: EventStore,
        *,
        default_model_version: str | None = None,
        clock: Callable[[], datetime] | None = None,
        restore_from_audit: bool = True,
    ) -> None:
        self._configs = {c.id: c for c in parse_experiments(experiments)}
        self.store = store
        self._clock = clock or (lambda: datetime.now(UTC))
        first = next(iter(self._configs.values()), None)
        self.default_model_version = default_model_version or (
            first.variant(first.control_name).model_version if first else "v1"
        )
        self._lock = threading.RLock()
        self._generation = 0  # bumped by every local weight change (see sync_weights_from_audit)
        epoch0 = datetime.min.replace(tzinfo=UTC)
        self._epochs: dict[str, list[_Epoch]] = {
            c.id: [_Epoch(epoch0, dict(c.weights))] for c in self._configs.values()
        }
        if restore_from_audit:
            self.restore_weights_from_audit()

    # ---- configuration / state

    @property
    def experiments(self) -> list[ExperimentConfig]:
        return list(self._configs.values())

    def get(self, experiment_id: str) -> ExperimentConfig:
        """The config of ``experiment_id``; raises ``NotFoundError``."""
        try:
            return self._configs[experiment_id]
        except KeyError:
            raise NotFoundError(f"unknown experiment {experiment_id!r}", field="experiment_id") from None

    def weights(self, experiment_id: str) -> dict[str, float]:
        """The weights in force (variant -> share)."""
        self.get(experiment_id)
        with self._lock:
            return dict(self._epochs[experiment_id][-1].weights)

    def weight_history(self, experiment_id: str) -> list[dict[str, Any]]:
        """Every weight epoch: ``{"start": iso | None (config), "weights": {...}}``, oldest first."""
        self.get(experiment_id)
        with self._lock:
            epochs = list(self._epochs[experiment_id])
        return [
            {"start": None if i == 0 else e.start.isoformat(), "weights": dict(e.weights)}
            for i, e in enumerate(epochs)
        ]

    def active_experiment(self, now: datetime | None = None) -> ExperimentConfig | None:
        """The first configured experiment that is enabled and within its time window at ``now``.

        Experiments all choose the model version, so they are mutually exclusive: one runs at a time.
        """
        now = as_utc(now or self._clock())
        return next((c for c in self._configs.values() if c.is_active(now)), None)

    def restore_weights_from_audit(self, limit: int = 10000) -> int:
        """Re-apply audited weight changes (see the class docstring); returns how many were applied."""
        try:
            entries = self.store.audit_log(limit=limit)
        except Exception as exc:  # a store without history must not prevent start-up
            log.warning("ab.restore_failed", error=str(exc))
            return 0
        changes = self._audited_changes(entries)
        with self._lock:
            for ts, exp_id, w in changes:
                self._epochs[exp_id].append(_Epoch(ts, w))
        return len(changes)

    def sync_weights_from_audit(self, limit: int = 10000) -> bool:
        """Rebuild every experiment's weight epochs from the config and the store's audit log, so that a
        change made by ANOTHER process (an API worker, an auto-rollback) takes effect here too.

        Returns ``True`` when the weights in force or their history changed. Raises the store's errors
        (``UnavailableError``); the epochs are left untouched then.
        """
        with self._lock:
            generation = self._generation
        changes = self._audited_changes(self.store.audit_log(limit=limit))
        epoch0 = datetime.min.replace(tzinfo=UTC)
        rebuilt = {c.id: [_Epoch(epoch0, dict(c.weights))] for c in self._configs.values()}
        for ts, exp_id, w in changes:
            rebuilt[exp_id].append(_Epoch(ts, w))
        with self._lock:
            if generation != self._generation:  # changed here while reading: the next sync catches up
                return False
            changed = rebuilt != self._epochs
            if changed:
                self._epochs = rebuilt
        return changed

    def _audited_changes(self, entries: Sequence[Mapping[str, Any]]) -> list[tuple[datetime, str, dict]]:
        """The valid weight changes of ``entries`` as ``(effective_at, experiment_id, weights)``, oldest
        first (entries of unknown experiments or with invalid weights are skipped)."""
        changes = []
        for entry in entries:
            payload = entry.get("payload") or {}
            if entry.get("action") not in (ACTION_SET_WEIGHTS, ACTION_AUTO_ROLLBACK):
                continue
            exp_id = payload.get("experiment_id")
            if exp_id not in self._configs or "weights" not in payload or "effective_at" not in payload:
                continue
            try:
                ts = as_utc(datetime.fromisoformat(str(payload["effective_at"])))
                w = validate_weights(payload["weights"], self._configs[exp_id].variant_names)
            except (ValueError, ValidationError):
                continue
            changes.append((ts, exp_id, w))
        changes.sort(key=lambda c: c[0])
        return changes

    # ---- serving path

    def assign(
        self,
        unit_id: str | None,
        request_id: str | None,
        forced_variant: str | None = None,
        *,
        experiment_id: str | None = None,
        now: datetime | None = None,
    ) -> Assignment:
        """Assign a request to a variant of ``experiment_id`` (default: the active experiment).

        ``unit_id`` is the randomisation unit's id (``None`` / empty -> the request id, non-sticky,
        ``unit_fallback=True``). ``forced_variant`` (QA) is a variant name or model version: it is served,
        recorded with ``forced=True`` and never analysed. With no active experiment the assignment has
        ``experiment_id=None`` and serves ``default_model_version`` (or the forced model version).
        Raises ``ValidationError`` (unknown forced variant, no unit and no request id) or
        ``NotFoundError`` (unknown ``experiment_id``).
        """
        now = as_utc(now or self._clock())
        cfg = self.get(experiment_id) if experiment_id is not None else self.active_experiment(now)
        if cfg is None:
            if forced_variant is not None:
                return Assignment(
                    None, unit_id or None, None, forced_variant, None, True, False, REASON_FORCED
                )
            return Assignment(
                None,
                unit_id or None,
                None,
                self.default_model_version,
                None,
                False,
                False,
                REASON_NO_EXPERIMENT,
            )
        return assign(
            cfg,
            unit_id,
            request_id=request_id,
            now=now,
            forced_variant=forced_variant,
            weights=self.weights(cfg.id),
        )

    def record_exposure(
        self,
        assignment: Assignment,
        *,
        request_id: str,
        endpoint: str,
        latency_ms: float,
        error: str | None = None,
        ts: datetime | None = None,
    ) -> bool:
        """Record the exposure of a served request (latency in ms, ``error`` code or ``None``).

        Only assignments that are in an experiment or forced are recorded (returns ``True``); others
        (no experiment, holdout, out of coverage, outside the window) return ``False``, and outcomes of
        those requests will be refused by the store (``NotFoundError``). Raises ``ValidationError``.
        """
        if assignment.experiment_id is None or assignment.variant is None:
            return False
        if not (assignment.in_experiment or assignment.forced):
            return False
        if not request_id:
            raise ValidationError("request_id is required", field="request_id")
        try:
            lat = float(latency_ms)
        except (TypeError, ValueError):
            raise ValidationError("latency_ms must be a number", field="latency_ms") from None
        if not math.isfinite(lat) or lat < 0:
            raise ValidationError(
                f"latency_ms must be finite and >= 0, got {latency_ms!r}", field="latency_ms"
            )
        self.store.record_exposure(
            Exposure(
                request_id=request_id,
                experiment_id=assignment.experiment_id,
                unit_id=assignment.unit_id or request_id,
                variant=assignment.variant,
                model_version=assignment.model_version,
                endpoint=endpoint,
                latency_ms=lat,
                error=error or None,
                forced=assignment.forced,
                ts=as_utc(ts or self._clock()),
            )
        )
        return True

    def record_outcome(
        self,
        request_id: str,
        kind: str,
        *,
        event_id: str,
        value: float = 1.0,
        ts: datetime | None = None,
    ) -> bool:
        """Record an outcome of a request; ``False`` if ``event_id`` was already recorded (idempotent).

        ``kind`` in impression / click / install / revenue; ``value`` finite and >= 0 (1.0 for counting
        events, the amount for revenue). Raises ``ValidationError`` or the store's ``NotFoundError``
        (unknown ``request_id``).
        """
        if kind not in OUTCOME_KINDS:
            raise ValidationError(
                f"kind must be one of {', '.join(OUTCOME_KINDS)}, got {kind!r}", field="kind"
            )
        if not event_id:
            raise ValidationError("event_id is required (idempotency key)", field="event_id")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValidationError("value must be a number", field="value") from None
        if not math.isfinite(v) or v < 0:
            raise ValidationError(f"value must be finite and >= 0, got {value!r}", field="value")
        outcome_kind = cast(OutcomeKind, kind)
        return self.store.record_outcome(
            Outcome(event_id, request_id, outcome_kind, v, as_utc(ts or self._clock()))
        )

    def record_outcomes(self, items: Sequence[Mapping[str, Any]]) -> list[bool]:
        """Record a batch of outcomes, all or nothing: every item is validated first (as
        :meth:`record_outcome`; keys ``request_id``, ``kind``, ``event_id``, optional ``value`` (1.0) and
        ``ts`` (now)), then written in one transaction when the store has ``record_outcomes``.

        Returns, per item, ``True`` if recorded now, ``False`` if its ``event_id`` was already recorded
        (idempotent; a repeat inside the batch counts as already recorded). Raises ``ValidationError`` /
        ``NotFoundError`` with ``extra['index']`` naming the item (nothing written) or the store's
        ``UnavailableError``.
        """
        outcomes: list[Outcome] = []
        now = as_utc(self._clock())
        for index, item in enumerate(items):
            try:
                kind = item.get("kind")
                if kind not in OUTCOME_KINDS:
                    raise ValidationError(
                        f"kind must be one of {', '.join(OUTCOME_KINDS)}, got {kind!r}", field="kind"
                    )
                event_id, request_id = item.get("event_id"), item.get("request_id")
                if not event_id or not isinstance(event_id, str):
                    raise ValidationError("event_id is required (idempotency key)", field="event_id")
                if not request_id or not isinstance(request_id, str):
                    raise ValidationError("request_id is required", field="request_id")
                raw = item.get("value", 1.0)
                try:
                    v = float(raw)
                except (TypeError, ValueError):
                    raise ValidationError("value must be a number", field="value") from None
                if not math.isfinite(v) or v < 0:
                    raise ValidationError(f"value must be finite and >= 0, got {raw!r}", field="value")
            except ValidationError as exc:
                raise ValidationError(exc.detail, field=exc.field, index=index) from None
            ts = item.get("ts")
            outcomes.append(
                Outcome(event_id, request_id, cast(OutcomeKind, kind), v, as_utc(ts) if ts else now)
            )
        batch = getattr(self.store, "record_outcomes", None)
        if batch is not None:
            return list(batch(outcomes))
        return [self.store.record_outcome(o) for o in outcomes]

    # ---- admin

    def set_weights(
        self,
        experiment_id: str,
        weights: Mapping[str, float],
        actor: str,
        *,
        reason: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, float]:
        """Change an experiment's weights at runtime (ramp, pause, rollback); audited as ``ab.set_weights``.

        Variants missing from ``weights`` get 0; the weights must be known variants in [0, 1] summing to 1.
        ``extra`` adds keys to the audit payload (e.g. the admin key's id). Returns the weights now in
        force. Raises ``NotFoundError`` or ``ValidationError``.
        """
        return self._apply_weights(
            experiment_id, weights, actor, ACTION_SET_WEIGHTS, reason=reason, extra=extra
        )

    def _apply_weights(
        self,
        experiment_id: str,
        weights: Mapping[str, float],
        actor: str,
        action: str,
        *,
        reason: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, float]:
        cfg = self.get(experiment_id)
        if not isinstance(actor, str) or not actor.strip():
            raise ValidationError("actor is required", field="actor")
        new = validate_weights(weights, cfg.variant_names)
        with self._lock:
            previous = dict(self._epochs[experiment_id][-1].weights)
            effective_at = as_utc(self._clock())
            payload = {
                "experiment_id": experiment_id,
                "previous": previous,
                "weights": new,
                "effective_at": effective_at.isoformat(),
                "reason": reason,
                **(dict(extra) if extra else {}),
            }
            self.store.record_audit(actor, action, jsonable(payload))
            self._epochs[experiment_id].append(_Epoch(effective_at, new))
            self._generation += 1
        log.info("ab.weights_changed", experiment_id=experiment_id, actor=actor, action=action, weights=new)
        return dict(new)

    # ---- analysis

    def report(self, experiment_id: str, now: datetime | None = None) -> dict[str, Any]:
        """The experiment's analysis and decision as a JSON-serialisable dict (no NaN: ``None``).

        Keys: ``experiment_id, generated_at, config, weights, weight_history, analysis, variants, srm,
        primary, secondary, guardrails, power, decision, decision_reasons, actions, warnings``.
        Per variant: rows (exposures or units), forced exposures excluded, outcome counts, every metric
        with a 95% interval (Wilson for rates, CLT for means), latency p50/p95/p99 (ms), error rate.
        ``decision`` is ``keep_running``, ``ship:<variant>``, ``stop:guardrail`` or ``invalid:srm`` (module
        docstring). With ``auto_rollback`` a ``stop:guardrail`` sets control to 100% (audited, reported in
        ``actions``). Raises ``NotFoundError``.
        """
        cfg = self.get(experiment_id)
        now = as_utc(now or self._clock())
        rows, info = _build_rows(cfg, self.store.exposures(experiment_id), self.store.outcomes(experiment_id))
        warnings: list[str] = []
        with self._lock:
            epochs = list(self._epochs[experiment_id])
        current = dict(epochs[-1].weights)
        control = cfg.control_name
        treatments = [v for v in cfg.variant_names if v != control]

        exposure_rows = rows
        mixed = 0
        table = rows
        if cfg.analysis_unit == "unit":
            table, mixed = _unit_rows(rows)
            if mixed:
                warnings.append(f"{mixed} units were exposed to several variants and are excluded")
        fallback = int((rows["unit_id"] == rows["request_id"]).sum()) if len(rows) else 0
        if fallback:
            warnings.append(f"{fallback} exposures had no {cfg.unit} (request id used: not sticky)")
        if info["unknown_variant_rows"]:
            warnings.append(f"{info['unknown_variant_rows']} exposures name variants not in the config")
        if len(epochs) > 1:
            warnings.append(
                "weights changed during the experiment: SRM uses the weights in force at each exposure; "
                "the pooled comparison can be biased if the base rate drifted between weight epochs"
            )

        by_var = {v: table[table["variant"] == v] for v in cfg.variant_names}
        exp_by_var = {v: exposure_rows[exposure_rows["variant"] == v] for v in cfg.variant_names}
        variants = self._variant_section(cfg, by_var, exp_by_var, current, info)
        srm = self._srm(cfg, table, epochs)
        primary = self._primary(cfg, table, by_var, treatments)
        secondary = self._secondary(cfg, table, by_var, treatments)
        guardrails = self._guardrails(cfg, exp_by_var, treatments)
        first_ts = cfg.start or (table["ts"].min() if len(table) else None)
        runtime_days = (
            None if first_ts is None else max(0.0, (now - as_utc(first_ts)).total_seconds() / 86400)
        )
        power = self._power(cfg, table, by_var, primary, current, now, first_ts)

        decision, reasons = self._decide(cfg, len(table), srm, primary, guardrails, runtime_days, treatments)
        actions: list[dict[str, Any]] = []
        if decision == "stop:guardrail" and cfg.auto_rollback:
            rollback = {v: (1.0 if v == control else 0.0) for v in cfg.variant_names}
            failed = {
                t: [m for m, g in guardrails["by_treatment"][t].items() if g["status"] == "fail"]
                for t in treatments
            }
            with self._lock:  # check-and-set: concurrent reports roll back (and audit) once
                current = dict(self._epochs[experiment_id][-1].weights)
                if current != rollback:
                    current = self._apply_weights(
                        experiment_id,
                        rollback,
                        ROLLBACK_ACTOR,
                        ACTION_AUTO_ROLLBACK,
                        reason="guardrail failed: " + "; ".join(reasons),
                        extra={"failed_guardrails": failed},
                    )
                    actions.append(
                        {"action": ACTION_AUTO_ROLLBACK, "weights": current, "actor": ROLLBACK_ACTOR}
                    )
                else:
                    reasons.append("already rolled back to control")

        report = {
            "experiment_id": cfg.id,
            "generated_at": now,
            "config": {
                "unit": cfg.unit,
                "control": control,
                "primary_metric": cfg.primary_metric,
                "secondary_metrics": list(cfg.secondary_metrics),
                "alpha": cfg.alpha,
                "srm_alpha": cfg.srm_alpha,
                "mde_relative": cfg.mde_relative,
                "min_runtime_days": cfg.min_runtime_days,
                "analysis_unit": cfg.analysis_unit,
                "auto_rollback": cfg.auto_rollback,
                "guardrails": cfg.guardrails.model_dump(),
            },
            "weights": current,
            "weight_history": self.weight_history(experiment_id),
            "analysis": {
                "rows": len(table),
                "exposures": len(exposure_rows),
                "forced_excluded": info["forced_excluded"],
                "duplicate_request_ids": info["duplicate_request_ids"],
                "fallback_unit_exposures": fallback,
                "mixed_units_excluded": mixed,
                "runtime_days": runtime_days,
                "first_exposure": first_ts,
            },
            "variants": variants,
            "srm": srm,
            "primary": primary,
            "secondary": secondary,
            "guardrails": guardrails,
            "power": power,
            "decision": decision,
            "decision_reasons": reasons,
            "actions": actions,
            "warnings": warnings,
        }
        return jsonable(report)

    # ---- report sections

    @staticmethod
    def _variant_section(
        cfg: ExperimentConfig,
        by_var: Mapping[str, pd.DataFrame],
        exp_by_var: Mapping[str, pd.DataFrame],
        current: Mapping[str, float],
        info: Mapping[str, Any],
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for v in cfg.variant_names:
            t, e = by_var[v], exp_by_var[v]
            n = len(t)
            metrics: dict[str, Any] = {}
            for name, m in METRICS.items():
                y = t[m.column].to_numpy(dtype=float) if n else np.zeros(0)
                if m.kind == "proportion":
                    x = int(y.sum())
                    lo, hi = ab_stats.wilson_interval(x, n)
                    metrics[name] = {
                        "value": x / n if n else None,
                        "successes": x,
                        "ci_low": lo,
                        "ci_high": hi,
                    }
                else:
                    lo, hi = ab_stats.mean_interval(y)
                    metrics[name] = {"value": float(y.mean()) if n else None, "ci_low": lo, "ci_high": hi}
            n_e = len(e)
            errors = int(e["error"].sum()) if n_e else 0
            err_lo, err_hi = ab_stats.wilson_interval(errors, n_e)
            out[v] = {
                "model_version": cfg.variant(v).model_version,
                "weight": current.get(v, 0.0),
                "rows": n,
                "exposures": n_e,
                "units": int(e["unit_id"].nunique()) if n_e else 0,
                "forced_excluded": info["forced_excluded"].get(v, 0),
                "outcomes": {
                    "impression": int(e["impression"].sum()) if n_e else 0,
                    "click": int(e["click"].sum()) if n_e else 0,
                    "install": int(e["install_count"].sum()) if n_e else 0,
                    "revenue": float(e["revenue"].sum()) if n_e else 0.0,
                },
                "metrics": metrics,
                "latency_ms": ab_stats.latency_percentiles(
                    e["latency_ms"].to_numpy(dtype=float) if n_e else []
                ),
                "error_rate": {
                    "value": errors / n_e if n_e else None,
                    "errors": errors,
                    "ci_low": err_lo,
                    "ci_high": err_hi,
                },
            }
        return out

    @staticmethod
    def _srm(cfg: ExperimentConfig, table: pd.DataFrame, epochs: Sequence[_Epoch]) -> dict[str, Any]:
        # Count randomisation units (each at its first exposure), not exposures: a unit's exposures all
        # land in one variant, so exposure counts are over-dispersed and would raise false SRM alarms.
        units = table.drop_duplicates("unit_id", keep="first") if len(table) else table
        observed = {v: int((units["variant"] == v).sum()) for v in cfg.variant_names}
        expected = dict.fromkeys(cfg.variant_names, 0.0)
        if len(units):
            starts = np.array([_micros(e.start) for e in epochs], dtype=np.int64)
            ts = pd.to_datetime(units["ts"], utc=True).dt.as_unit("us").astype("int64").to_numpy()
            ep = np.searchsorted(starts, ts, "right")
            ep = np.clip(ep - 1, 0, len(epochs) - 1)
            counts = np.bincount(ep, minlength=len(epochs))
            for i, e in enumerate(epochs):
                for v in cfg.variant_names:
                    expected[v] += counts[i] * e.weights.get(v, 0.0)
        res = ab_stats.srm_test(observed, expected, alpha=cfg.srm_alpha).to_dict()
        res["method"] = (
            "Pearson chi-square goodness of fit of randomisation units (at their first exposure) per variant "
            "vs the weights in force at that time"
        )
        return res

    def _tau(self, cfg: ExperimentConfig, control_rate: float | None) -> tuple[float | None, str]:
        if cfg.msprt_tau is not None:
            return cfg.msprt_tau, "config msprt_tau"
        if cfg.baseline_rate is not None:
            return cfg.mde_relative * cfg.baseline_rate, "mde_relative * baseline_rate (config)"
        if control_rate:
            return cfg.mde_relative * control_rate, "mde_relative * observed control rate (plug-in)"
        return None, "no control data yet"

    def _primary(
        self,
        cfg: ExperimentConfig,
        table: pd.DataFrame,
        by_var: Mapping[str, pd.DataFrame],
        treatments: Sequence[str],
    ) -> dict[str, Any]:
        metric = METRICS[cfg.primary_metric]
        control = cfg.control_name
        ctrl = by_var[control][metric.column].to_numpy(dtype=float)
        n_a, x_a = len(ctrl), int(ctrl.sum())
        tau, tau_source = self._tau(cfg, x_a / n_a if n_a else None)
        comps: dict[str, Any] = {}
        for t in treatments:
            y_b = by_var[t][metric.column].to_numpy(dtype=float)
            n_b, x_b = len(y_b), int(y_b.sum())
            c: dict[str, Any] = {"n_a": n_a, "x_a": x_a, "n_b": n_b, "x_b": x_b}
            if n_a == 0 or n_b == 0:
                comps[t] = {**c, "status": "insufficient_data"}
                continue
            p_a, p_b = x_a / n_a, x_b / n_b
            c.update(
                {
                    "value_a": p_a,
                    "value_b": p_b,
                    "abs_diff": p_b - p_a,
                    "rel_diff": (p_b - p_a) / p_a if p_a > 0 else None,
                    "ci_abs_fixed": None,
                }
            )
            z = ab_stats.two_proportion_ztest(x_a, n_a, x_b, n_b)
            c["ztest"] = {**z.to_dict(), "note": "fixed-horizon; for information only"}
            if z.se > 0:
                se_u = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
                c["ci_abs_fixed"] = [
                    p_b - p_a - 1.959963984540054 * se_u,
                    p_b - p_a + 1.959963984540054 * se_u,
                ]
            deff = (_deff(by_var[control], metric.column), _deff(by_var[t], metric.column))
            c["design_effect"] = list(deff)
            if tau is not None:
                pair = table[table["variant"].isin([control, t])]
                seq = ab_stats.sequential_proportion_pvalues(
                    pair[metric.column].to_numpy(dtype=float),
                    (pair["variant"] == t).to_numpy(),
                    tau=tau,
                    burn_in=cfg.msprt_burn_in,
                    deff=deff,
                )
                p_hist = float(seq[-1]) if len(seq) else 1.0
                m = ab_stats.msprt_two_proportions(
                    x_a, n_a, x_b, n_b, tau=tau, alpha=cfg.alpha, p_history=p_hist, deff=deff
                )
                c["msprt"] = m.to_dict()
            else:
                c["msprt"] = None
            c["bayes"] = ab_stats.beta_binomial(x_a, n_a, x_b, n_b, prior=cfg.prior).to_dict()
            comps[t] = c
        ps = [comps[t]["msprt"]["p_value_now"] if comps[t].get("msprt") else None for t in treatments]
        reject, adjusted = ab_stats.holm(ps, cfg.alpha)
        for t, r, a in zip(treatments, reject, adjusted, strict=True):
            if "msprt" in comps[t]:
                comps[t]["p_value_holm"] = a
                comps[t]["significant"] = r
        return {
            "metric": cfg.primary_metric,
            "definition": metric.description,
            "alpha": cfg.alpha,
            "tau": tau,
            "tau_source": tau_source,
            "decision_basis": "current mSPRT p-value 1/Lambda_n (msprt.p_value_now), Holm-adjusted across "
            "treatments; msprt.p_value is the running minimum over every observation (Johari et al.)",
            "comparisons": comps,
        }

    def _secondary(
        self,
        cfg: ExperimentConfig,
        table: pd.DataFrame,
        by_var: Mapping[str, pd.DataFrame],
        treatments: Sequence[str],
    ) -> dict[str, Any]:
        control = cfg.control_name
        names = [m for m in cfg.secondary_metrics if m != cfg.primary_metric]
        results: dict[str, dict[str, Any]] = {m: {} for m in names}
        keys: list[tuple[str, str]] = []
        ps: list[float | None] = []
        for name in names:
            metric = METRICS[name]
            y_a = by_var[control][metric.column].to_numpy(dtype=float)
            for t in treatments:
                y_b = by_var[t][metric.column].to_numpy(dtype=float)
                r: dict[str, Any] = {"n_a": len(y_a), "n_b": len(y_b)}
                p_val: float | None = None
                p_now: float | None = None
                if len(y_a) >= 2 and len(y_b) >= 2:
                    m_a, m_b = float(y_a.mean()), float(y_b.mean())
                    r.update({"value_a": m_a, "value_b": m_b, "abs_diff": m_b - m_a})
                    r["rel_diff"] = (m_b - m_a) / m_a if m_a != 0 else None
                    tau = cfg.mde_relative * abs(m_a) if m_a != 0 else None
                    if metric.kind == "proportion":
                        z = ab_stats.two_proportion_ztest(int(y_a.sum()), len(y_a), int(y_b.sum()), len(y_b))
                    else:
                        z = ab_stats.two_mean_ztest(
                            m_a, float(y_a.var(ddof=1)), len(y_a), m_b, float(y_b.var(ddof=1)), len(y_b)
                        )
                    r["p_value_fixed"] = z.p_value
                    deff = (_deff(by_var[control], metric.column), _deff(by_var[t], metric.column))
                    r["design_effect"] = list(deff)
                    if tau:
                        pair = table[table["variant"].isin([control, t])]
                        fn = (
                            ab_stats.sequential_proportion_pvalues
                            if metric.kind == "proportion"
                            else ab_stats.sequential_mean_pvalues
                        )
                        seq = fn(
                            pair[metric.column].to_numpy(dtype=float),
                            (pair["variant"] == t).to_numpy(),
                            tau=tau,
                            burn_in=cfg.msprt_burn_in,
                            deff=deff,
                            running=False,
                        )
                        p_val = float(seq.min()) if len(seq) else 1.0
                        p_now = float(seq[-1]) if len(seq) else 1.0
                    r["tau"] = tau
                r["p_value_always_valid"] = p_val
                r["p_value_now"] = p_now
                results[name][t] = r
                keys.append((name, t))
                ps.append(p_now)
        reject, adjusted = ab_stats.holm(ps, cfg.alpha)
        for (m_name, t), rej, adj in zip(keys, reject, adjusted, strict=True):
            results[m_name][t]["p_value_holm"] = adj
            results[m_name][t]["significant"] = rej
        return {
            "method": "Holm over the current mSPRT p-values (1/Lambda_n) of every (metric, treatment) pair; "
            "informational, not part of the decision",
            "metrics": results,
        }

    @staticmethod
    def _guardrails(
        cfg: ExperimentConfig, exp_by_var: Mapping[str, pd.DataFrame], treatments: Sequence[str]
    ) -> dict[str, Any]:
        g = cfg.guardrails
        ctrl = exp_by_var[cfg.control_name]
        lat_name = f"latency_p{round(g.latency_quantile * 100):d}"
        by_t: dict[str, dict[str, Any]] = {}
        for t in treatments:
            tr = exp_by_var[t]
            if min(len(ctrl), len(tr)) < g.min_exposures:
                lat = ab_stats.GuardrailResult(
                    lat_name,
                    None,
                    None,
                    None,
                    None,
                    math.log1p(g.latency_relative_margin),
                    None,
                    None,
                    None,
                    "insufficient_data",
                    cfg.alpha,
                )
            else:
                lat = ab_stats.noninferiority_latency_quantile(
                    ctrl["latency_ms"].to_numpy(dtype=float),
                    tr["latency_ms"].to_numpy(dtype=float),
                    q=g.latency_quantile,
                    relative_margin=g.latency_relative_margin,
                    alpha=cfg.alpha,
                    metric=lat_name,
                )
            err = ab_stats.noninferiority_rate(
                int(ctrl["error"].sum()),
                len(ctrl),
                int(tr["error"].sum()),
                len(tr),
                margin=g.error_rate_absolute_margin,
                alpha=cfg.alpha,
                min_n=g.min_exposures,
            )
            by_t[t] = {lat_name: lat.to_dict(), "error_rate": err.to_dict()}
        return {
            "method": "non-inferiority, decided on always-valid (mSPRT) confidence sequences; latency on the "
            "log scale with order-statistic standard errors, error rate as an absolute difference",
            "by_treatment": by_t,
        }

    @staticmethod
    def _power(
        cfg: ExperimentConfig,
        table: pd.DataFrame,
        by_var: Mapping[str, pd.DataFrame],
        primary: Mapping[str, Any],
        current: Mapping[str, float],
        now: datetime,
        first_ts: Any,
    ) -> dict[str, Any]:
        control = cfg.control_name
        metric = METRICS[cfg.primary_metric]
        ctrl = by_var[control][metric.column]
        baseline, source = cfg.baseline_rate, "config baseline_rate"
        if baseline is None:
            baseline, source = (float(ctrl.mean()), "observed control rate") if len(ctrl) else (None, "none")
        out: dict[str, Any] = {
            "baseline_rate": baseline,
            "baseline_source": source,
            "mde_relative": cfg.mde_relative,
            "alpha": cfg.alpha,
            "power": cfg.power,
            "method": "Cohen's h, two-sided normal test (statsmodels NormalIndPower); fixed-horizon planning "
            "number, the mSPRT needs more at exactly the MDE and fewer for larger effects",
        }
        if baseline is None or not 0 < baseline < 1 or not 0 < baseline * (1 + cfg.mde_relative) < 1:
            out.update({"required": None, "eta_days": None, "eta": None, "reached": False})
            return out
        target = baseline * (1 + cfg.mde_relative)
        required: dict[str, int] = {}
        planning = {v: current.get(v, 0.0) for v in cfg.variant_names}
        if planning.get(control, 0.0) <= 0 or all(
            planning.get(t, 0.0) <= 0 for t in planning if t != control
        ):
            planning = dict(cfg.weights)  # paused / rolled back: plan on the configured split
        for t in planning:
            if t == control or planning[t] <= 0 or planning[control] <= 0:
                continue
            n_a, n_b = ab_stats.sample_size_per_variant(
                baseline, target, alpha=cfg.alpha, power=cfg.power, ratio=planning[t] / planning[control]
            )
            required[control] = max(required.get(control, 0), n_a)
            required[t] = n_b
        have = {v: len(by_var[v]) for v in cfg.variant_names}
        per_day: dict[str, float] = dict.fromkeys(cfg.variant_names, 0.0)
        if len(table) and first_ts is not None:
            span_days = min(1.0, max((now - as_utc(first_ts)).total_seconds() / 86400, 1e-9))
            recent = int((table["ts"] > pd.Timestamp(now - span_days * _DAY)).sum())
            total_rate = recent / span_days
            per_day = {v: total_rate * current.get(v, 0.0) for v in cfg.variant_names}
        eta = ab_stats.eta_days(required, have, per_day)
        out.update(
            {
                "target_rate": target,
                "cohens_h": ab_stats.cohens_h(target, baseline),
                "required": required,
                "current": have,
                "per_day": per_day,
                "reached": all(have.get(k, 0) >= n for k, n in required.items()),
                "eta_days": eta,
                "eta": None if eta is None else now + timedelta(days=eta),
            }
        )
        return out

    @staticmethod
    def _decide(
        cfg: ExperimentConfig,
        n_rows: int,
        srm: Mapping[str, Any],
        primary: Mapping[str, Any],
        guardrails: Mapping[str, Any],
        runtime_days: float | None,
        treatments: Sequence[str],
    ) -> tuple[str, list[str]]:
        control = cfg.control_name
        if n_rows == 0:
            return "keep_running", ["no exposures yet"]
        if srm["srm"]:
            return "invalid:srm", [
                f"sample ratio mismatch: observed {srm['observed']} vs expected "
                f"{ {k: round(v, 1) for k, v in srm['expected'].items()} } "
                f"(chi-square p = {srm['p_value']:.3g} "
                f"< {srm['alpha']}); results are untrustworthy, no winner is declared: check assignment, "
                "exposure logging and bot filtering"
            ]
        failed = [
            f"{t}: {m} worse than its margin (always-valid interval {g['cs_low']:.4g}..{g['cs_high']:.4g}, "
            f"margin {g['margin']:.4g})"
            for t in treatments
            for m, g in guardrails["by_treatment"][t].items()
            if g["status"] == "fail"
        ]
        if failed:
            return "stop:guardrail", failed
        comps = primary["comparisons"]
        if runtime_days is not None and runtime_days < cfg.min_runtime_days:
            return "keep_running", [
                f"minimum runtime not reached ({runtime_days:.2f} of {cfg.min_runtime_days:g} days)"
            ]
        winners, losers, reasons = [], [], []
        for t in treatments:
            c = comps.get(t, {})
            if not c.get("significant"):
                p = c.get("p_value_holm")
                reasons.append(f"{t}: primary not significant (mSPRT p = {p if p is None else f'{p:.3g}'})")
                continue
            if c["abs_diff"] < 0:
                losers.append(t)
                continue
            pending = [m for m, g in guardrails["by_treatment"][t].items() if g["status"] != "pass"]
            if pending:
                reasons.append(
                    f"{t}: primary significant but guardrails not yet shown non-inferior: {pending}"
                )
                continue
            winners.append(t)
        if winners:
            best = max(winners, key=lambda t: comps[t]["abs_diff"])
            c = comps[best]
            return f"ship:{best}", [
                f"{best} beats {control} on {cfg.primary_metric}: {c['value_b']:.4g} vs {c['value_a']:.4g} "
                f"(mSPRT p = {c['p_value_holm']:.3g} <= {cfg.alpha}); guardrails non-inferior"
            ]
        if treatments and len(losers) == len(treatments):
            return f"ship:{control}", [f"every treatment is significantly worse than {control}"]
        return "keep_running", reasons or ["no conclusion yet"]
