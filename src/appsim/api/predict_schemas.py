"""Request and response models of ``POST /predict`` (inputs and outputs kept apart).

The input reuses the find-similar query (``QueryIn``: exactly one of ``app_id``, ``vector``, ``app``) and
routing (``RoutingIn``: ``model_version`` or the A/B test) models; unknown fields are rejected (422). The
output carries the prediction of :func:`appsim.services.prediction.predict` (units: CTR = clicks per
impression, install rate = installs per click, installs per impression, revenue per install in USD, RPM =
USD per 1,000 impressions) with the neighbours it used, named from the similarity result. Every float is
finite; ``null`` stands where a value is undefined (never NaN / Infinity).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from appsim.api.schemas import (
    EXAMPLE_APP,
    ExperimentOut,
    FiltersIn,
    NeighbourOut,
    QueryIn,
    QueryInfoOut,
    RoutingIn,
    request_config,
)

CategorySource = Literal["metadata", "catalogue", "neighbour_majority", "none"]
StrictNeighbours = Annotated[
    int,
    Field(
        strict=True,
        description="neighbours the prediction uses: settings.prediction.min_neighbours.."
        "max_neighbours (10-20 by default); default settings.prediction.neighbours (15)",
    ),
]


class PredictRequest(QueryIn, RoutingIn):
    """A new app's metadata (``app``), a catalogue ``app_id`` or a raw ``vector``; optional routing,
    ``neighbours`` and catalogue ``filters`` (applied before the neighbours are ranked)."""

    neighbours: StrictNeighbours | None = None
    filters: FiltersIn | None = None

    model_config = request_config(
        {"app": EXAMPLE_APP, "neighbours": 15, "advertiser_id": "adv-42"},
        {"app_id": "284882215", "model_version": "v1"},
    )


# ------------------------------------------------------------------------------------------------ output


class RateOut(BaseModel):
    """One predicted rate. ``point``: posterior mean; ``[low, high]``: predictive interval of the new app's
    own rate; ``[mean_low, mean_high]``: credible interval of the mean rate of apps like it; both at
    ``interval`` (0.8 = 10% / 90% quantiles). ``null`` when no history exists."""

    name: str
    unit: str
    point: float | None
    low: float | None
    high: float | None
    mean_low: float | None
    mean_high: float | None
    interval: float
    method: str
    prior: dict[str, Any] | None = Field(description="the category / global prior it was shrunk toward")
    evidence: dict[str, Any] = Field(description="effective counts, credibility and what moved the estimate")


class RatesOut(BaseModel):
    ctr: RateOut = Field(description="clicks per impression")
    install_rate: RateOut = Field(description="installs per click")
    installs_per_impression: RateOut = Field(description="installs per impression")
    revenue_per_install: RateOut = Field(description="USD per install")
    rpm: RateOut = Field(description="USD per 1,000 impressions")


class SegmentOut(BaseModel):
    """Lifts of one segment value over the neighbours' overall rate of that column (1 = no change)."""

    column: str
    value: str
    ctr_lift: float
    ctr_lift_low: float | None
    ctr_lift_high: float | None
    install_rate_lift: float
    install_rate_lift_low: float | None
    install_rate_lift_high: float | None
    installs_per_impression_lift: float
    expected_ctr: float | None
    expected_install_rate: float | None
    support: dict[str, float] = Field(description="raw impressions, clicks, installs and neighbour apps")


class PredictionNeighbourOut(NeighbourOut):
    """A neighbour as found (rank, name, category, cosine ``score``) and as used (``weight``: share of the
    evidence, summing to 1 over the neighbours with history; ``evidence_multiplier`` = ESS x weight; its
    history totals)."""

    weight: float
    evidence_multiplier: float
    has_history: bool
    impressions: float
    clicks: float
    installs: float
    revenue: float = Field(description="USD")
    note: str | None = None


class CategoryOut(BaseModel):
    """The new app's category used for the prior. ``source``: "metadata" (the request's category),
    "catalogue" (an app_id's catalogue category), "neighbour_majority" (vector queries and metadata without
    a category: the most frequent category among the neighbours) or "none"."""

    value: str | None
    known: bool = Field(description="the category exists in the catalogue")
    source: CategorySource


class HistoryInfoOut(BaseModel):
    """The campaign history behind the prediction (built once at start-up)."""

    status: Literal["loaded", "missing", "error", "not_loaded"]
    file: str = Field(description="file name in the catalogue directory")
    simulated: bool | None = Field(description="true: SIMULATED history (manifest says so); null: unknown")
    rows: int = Field(description="rows used (catalogue apps only)")
    apps_with_history: int
    rows_excluded: int = Field(description="rows of apps outside the catalogue (e.g. held-out apps), unused")
    detail: str | None = None


class PredictionOut(BaseModel):
    basis: Literal["neighbours", "category_prior", "global_prior", "none"]
    basis_explanation: str
    prior_level: Literal["category", "global"] | None
    category: CategoryOut
    effective_sample_size: float = Field(description="Kish ESS of the neighbour weights")
    neighbours_with_history: int
    rates: RatesOut
    performance_score: float | None = Field(description="percentile 0-100 of the RPM among the category")
    performance_score_detail: dict[str, Any]
    segments: dict[str, list[SegmentOut]]
    top_segments: list[SegmentOut]
    segments_not_claimed: dict[str, int]
    segment_columns_missing: list[str]
    neighbours: list[PredictionNeighbourOut]
    warnings: list[str]
    config: dict[str, Any]


class PredictResponse(BaseModel):
    request_id: str
    model_version: str
    experiment: ExperimentOut | None = None
    query: QueryInfoOut
    neighbours_requested: int
    candidates: int = Field(description="catalogue apps eligible after filters")
    prediction: PredictionOut
    history: HistoryInfoOut
    latency_ms: float
