"""Deterministic, sticky assignment of randomisation units to experiment variants (pure, no I/O).

Modelled on GrowthBook's SDK core (``growthbook-python`` ``core.py``): an experiment is data
(:class:`ExperimentSpec`), assignment is a pure function of (spec, weights in force, unit id, time).

Hashing (reproducible in any language)::

    bucket(seed, unit) = (first 8 bytes of sha256(f"{seed}:{unit}".encode("utf-8")), big-endian) >> 11
                         / 2**53                                   # in [0, 1), 53 significant bits

(the top 53 bits of ``u64 / 2**64``: plain ``u64 / 2**64`` in double precision rounds the largest values
up to 1.0). Python's ``hash()`` is never used: it is salted per process.

Two independent hashes per unit:

* the **gate** bucket ``g = bucket(f"{seed}:gate", unit)`` decides whether a unit is in the experiment:
  ``g >= 1 - holdout`` -> held out (long-term holdout, always served control, never analysed);
  ``g < coverage * (1 - holdout)`` -> in the experiment; otherwise out of coverage (served control). Raising
  ``coverage`` only adds units.
* the **variant** bucket ``b = bucket(f"{seed}:variant", unit)`` picks the variant. Treatments are stacked
  from the TOP of ``[0, 1)`` in config order, control takes the bottom: with weights v1 (control) 0.7 and
  v2 0.3, v2 = ``[0.7, 1)`` and v1 = ``[0, 0.7)``. Ramping v2 from 0.1 (``[0.9, 1)``) to 0.3 only grows its
  interval downwards, so no v2 unit ever moves back to v1. With several treatments the guarantee holds for
  a treatment whose weight grows while the weights of the treatments listed before it stay fixed.

Units without an id: the request id is used instead (``unit_fallback=True``). Such exposures are randomised
per request, hence not sticky; they stay in the analysis (which is per exposure by default) and the report
counts them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appsim.errors import ValidationError

WEIGHT_TOLERANCE = 1e-6

# Assignment.reason values
REASON_ASSIGNED = "assigned"
REASON_FORCED = "forced"
REASON_OVERRIDE = "override"
REASON_DISABLED = "disabled"
REASON_NOT_STARTED = "not_started"
REASON_ENDED = "ended"
REASON_HOLDOUT = "holdout"
REASON_COVERAGE = "coverage"
REASON_NO_EXPERIMENT = "no_active_experiment"


def bucket(seed: str, unit: str) -> float:
    """Uniform hash of ``unit`` under ``seed`` in ``[0, 1)`` (see the module docstring for the recipe)."""
    digest = hashlib.sha256(f"{seed}:{unit}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


class VariantSpec(BaseModel):
    """One arm: its name (``v1``, ``control``...), the model version it serves, its traffic weight."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    model_version: str = Field(min_length=1)
    weight: float = Field(ge=0.0, le=1.0)


class ExperimentSpec(BaseModel):
    """The assignment part of an experiment's configuration.

    ``unit`` names the randomisation unit (``advertiser_id``, ``user_id``); ``control`` defaults to the first
    variant; ``seed`` defaults to ``id``; ``start`` / ``end`` are UTC (naive datetimes are read as UTC), the
    experiment runs in ``[start, end)``; ``overrides`` pins unit ids to variants (excluded from analysis,
    like QA-forced requests); ``holdout`` is the share of units kept out entirely; ``coverage`` the share of
    the remaining units that enter (a ramp gate). Weights must sum to 1.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    unit: str = "advertiser_id"
    variants: tuple[VariantSpec, ...] = Field(min_length=2)
    control: str | None = None
    seed: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    overrides: dict[str, str] = Field(default_factory=dict)
    holdout: float = Field(default=0.0, ge=0.0, lt=1.0)
    coverage: float = Field(default=1.0, gt=0.0, le=1.0)
    enabled: bool = True

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return None if v is None else as_utc(v)

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate variant names: {names}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control {self.control!r} is not a variant ({names})")
        try:
            validate_weights({v.name: v.weight for v in self.variants}, names)
        except ValidationError as exc:  # pydantic only wraps ValueError
            raise ValueError(exc.detail) from None
        unknown = sorted({v for v in self.overrides.values() if v not in names})
        if unknown:
            raise ValueError(f"overrides name unknown variants {unknown}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    @property
    def control_name(self) -> str:
        return self.control or self.variants[0].name

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def hash_seed(self) -> str:
        return self.seed or self.id

    @property
    def weights(self) -> dict[str, float]:
        return {v.name: v.weight for v in self.variants}

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise ValidationError(f"unknown variant {name!r} of experiment {self.id!r}", field="variant")

    def is_active(self, now: datetime) -> bool:
        """Enabled and ``now`` within ``[start, end)``."""
        now = as_utc(now)
        return (
            self.enabled
            and (self.start is None or now >= self.start)
            and (self.end is None or now < self.end)
        )


@dataclass(frozen=True)
class Assignment:
    """The outcome of assigning one request.

    ``variant`` / ``experiment_id`` are ``None`` only when no experiment is active. ``bucket`` is the
    variant bucket in ``[0, 1)`` (``None`` without a unit). ``in_experiment`` is True when the request
    counts in the analysis; ``forced`` marks QA-forced or overridden requests (served, recorded, never
    analysed). ``reason`` is one of ``assigned, forced, override, disabled, not_started, ended, holdout,
    coverage, no_active_experiment``.
    """

    experiment_id: str | None
    unit_id: str | None
    variant: str | None
    model_version: str
    bucket: float | None
    forced: bool
    in_experiment: bool
    reason: str
    unit_fallback: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_utc(ts: datetime) -> datetime:
    """A timezone-aware UTC datetime (a naive one is taken to be UTC)."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def validate_weights(weights: Mapping[str, float], variants: list[str]) -> dict[str, float]:
    """Check ``weights`` against the experiment's ``variants``: known names, finite, in [0, 1], sum 1.

    Variants missing from ``weights`` get 0. Returns the full mapping in variant order.
    Raises :class:`appsim.errors.ValidationError`.
    """
    unknown = sorted(set(weights) - set(variants))
    if unknown:
        raise ValidationError(f"unknown variants {unknown}; known: {variants}", field="weights")
    full: dict[str, float] = {}
    for name in variants:
        w = weights.get(name, 0.0)
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValidationError(f"weight of {name!r} is not a number", field="weights") from None
        if not math.isfinite(w) or w < 0.0 or w > 1.0:
            raise ValidationError(f"weight of {name!r} must be in [0, 1], got {w}", field="weights")
        full[name] = w
    total = math.fsum(full.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValidationError(f"weights must sum to 1, got {total:.6g}", field="weights")
    return full


def variant_ranges(weights: Mapping[str, float], control: str) -> dict[str, tuple[float, float]]:
    """Bucket interval ``[lo, hi)`` of every variant: treatments stacked from the top, control at the bottom.

    ``weights`` in config order. The first treatment takes ``[1 - w1, 1)``, the next ``[1 - w1 - w2, 1 - w1)``
    and so on; control takes ``[0, lo of the last treatment)``.
    """
    ranges: dict[str, tuple[float, float]] = {}
    upper = 1.0
    for name, w in weights.items():
        if name == control:
            continue
        lower = max(0.0, upper - w)
        ranges[name] = (lower, upper)
        upper = lower
    ranges[control] = (0.0, upper)
    return {name: ranges[name] for name in weights}


def choose_variant(b: float, ranges: Mapping[str, tuple[float, float]], control: str) -> str:
    """The variant whose interval holds ``b`` (control when none does, e.g. all treatments at 0)."""
    for name, (lo, hi) in ranges.items():
        if name != control and lo <= b < hi:
            return name
    return control


def resolve_forced(spec: ExperimentSpec, forced: str) -> str:
    """Map a forced variant given by variant name or by model version to the variant name."""
    if forced in spec.variant_names:
        return forced
    matches = [v.name for v in spec.variants if v.model_version == forced]
    if len(matches) == 1:
        return matches[0]
    raise ValidationError(
        f"forced variant {forced!r} is neither a variant nor a model version of experiment {spec.id!r}",
        field="forced_variant",
        known_variants=spec.variant_names,
    )


def assign(
    spec: ExperimentSpec,
    unit_id: str | None,
    *,
    request_id: str | None = None,
    now: datetime | None = None,
    forced_variant: str | None = None,
    weights: Mapping[str, float] | None = None,
) -> Assignment:
    """Assign one request of ``unit_id`` to a variant of ``spec``.

    ``weights`` (variant -> weight) replaces the configured weights (runtime ramps); ``now`` defaults to
    the current UTC time. Order of precedence: forced variant (QA), per-unit override, enabled / time
    window, holdout, coverage, weighted variant. Everything but a forced variant / override serves the
    control variant when the unit is not in the experiment.

    Raises :class:`appsim.errors.ValidationError` for an unknown forced variant, or when neither a unit id
    nor a request id is given.
    """
    now = as_utc(now or datetime.now(UTC))
    w = dict(spec.weights if weights is None else weights)
    control = spec.control_name
    unit_fallback = False
    unit = unit_id if unit_id not in (None, "") else None
    if unit is None:
        if not request_id:
            raise ValidationError(
                f"request has no {spec.unit} and no request id to fall back on", field=spec.unit
            )
        unit, unit_fallback = request_id, True
    assert unit is not None
    seed = spec.hash_seed
    b = bucket(f"{seed}:variant", unit)

    def make(variant: str, reason: str, *, forced: bool = False, in_exp: bool = False) -> Assignment:
        return Assignment(
            experiment_id=spec.id,
            unit_id=unit,
            variant=variant,
            model_version=spec.variant(variant).model_version,
            bucket=b,
            forced=forced,
            in_experiment=in_exp,
            reason=reason,
            unit_fallback=unit_fallback,
        )

    if forced_variant is not None:
        return make(resolve_forced(spec, forced_variant), REASON_FORCED, forced=True)
    if not unit_fallback and unit in spec.overrides:
        return make(spec.overrides[unit], REASON_OVERRIDE, forced=True)
    if not spec.enabled:
        return make(control, REASON_DISABLED)
    if spec.start is not None and now < spec.start:
        return make(control, REASON_NOT_STARTED)
    if spec.end is not None and now >= spec.end:
        return make(control, REASON_ENDED)
    g = bucket(f"{seed}:gate", unit)
    if spec.holdout > 0.0 and g >= 1.0 - spec.holdout:
        return make(control, REASON_HOLDOUT)
    if g >= spec.coverage * (1.0 - spec.holdout):
        return make(control, REASON_COVERAGE)
    variant = choose_variant(b, variant_ranges(w, control), control)
    return make(variant, REASON_ASSIGNED, in_exp=True)
