"""Request and response models (inputs and outputs kept apart). Unknown fields are rejected (422), so a
misspelt filter is never silently ignored."""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

StrictTopK = Annotated[int, Field(strict=True, description="number of neighbours (default 10)")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
UnitId = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: The new app of the request examples in the OpenAPI schema (find-similar and predict).
EXAMPLE_APP: dict[str, str] = {
    "name": "Sleep Sounds Pro",
    "category": "Health & Fitness",
    "description": "Relaxing rain and ocean sounds to help you fall asleep.",
}


def request_config(*examples: dict[str, Any]) -> ConfigDict:
    """``model_config`` of a request model: unknown fields rejected, ``examples`` in its JSON schema (copied:
    models never share them)."""
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [copy.deepcopy(e) for e in examples]})


class AppIn(_In):
    """A (new) app's metadata; cold start encodes it with the chosen model version's encoder."""

    name: Name
    category: Short | None = Field(None, description="store genre, e.g. 'Games' or 'Health & Fitness'")
    platform: Short | None = Field(None, description="e.g. 'ios' or 'android'")
    description: str | None = Field(None, max_length=4000, description="up to 4,000 characters")


class FiltersIn(_In):
    """Applied before ranking. Each accepts one value or a list (any of them matches, case-insensitive)."""

    category: Short | list[Short] | None = None
    platform: Short | list[Short] | None = None

    @field_validator("category", "platform")
    @classmethod
    def _list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        values = [v] if isinstance(v, str) else v
        if not values:
            raise ValueError("give at least one value or leave the filter out")
        if len(values) > 50:
            raise ValueError("at most 50 values")
        return values


class RoutingIn(_In):
    """A/B routing: the randomisation unit and, for QA, a forced variant (excluded from analysis)."""

    model_version: Short | None = Field(
        None, description="force a model version; otherwise the A/B test decides"
    )
    advertiser_id: UnitId | None = Field(None, description="randomisation unit of the default experiment")
    user_id: UnitId | None = None
    force_variant: Short | None = Field(
        None, description="QA only: recorded as forced, excluded from analysis"
    )


class QueryIn(_In):
    """Exactly one of ``app_id``, ``vector`` or ``app``."""

    app_id: Short | None = Field(None, description="a catalogue app's id (the app itself is excluded)")
    vector: list[float] | None = Field(
        None, max_length=4096, description="raw embedding; its dimension must match the model version"
    )
    app: AppIn | None = None


class FindSimilarRequest(QueryIn, RoutingIn):
    top_k: StrictTopK | None = None
    filters: FiltersIn | None = None

    model_config = request_config(
        {"app": EXAMPLE_APP, "top_k": 10, "advertiser_id": "adv-42"},
        {"app_id": "284882215", "model_version": "v1", "top_k": 5, "filters": {"category": "Games"}},
    )


class BatchItemIn(QueryIn):
    pass


class FindSimilarBatchRequest(RoutingIn):
    queries: list[BatchItemIn] = Field(..., min_length=1)
    top_k: StrictTopK | None = None
    filters: FiltersIn | None = None


class NeighbourOut(BaseModel):
    rank: int
    app_id: str
    name: str
    category: str
    platform: str
    score: float = Field(description="cosine similarity in [-1, 1]")


class ExperimentOut(BaseModel):
    experiment_id: str
    variant: str
    unit_id: str | None = None
    forced: bool = False
    unit_fallback: bool = False


class QueryInfoOut(BaseModel):
    kind: Literal["app_id", "vector", "app"]
    encoding: str | None = None


class FindSimilarResponse(BaseModel):
    request_id: str
    model_version: str
    experiment: ExperimentOut | None = None
    query: QueryInfoOut
    top_k: int
    candidates: int = Field(description="catalogue apps eligible after filters")
    results: list[NeighbourOut]
    latency_ms: float


class BatchItemOut(BaseModel):
    index: int
    ok: bool
    query: QueryInfoOut | None = None
    results: list[NeighbourOut] | None = None
    error: dict[str, Any] | None = None


class FindSimilarBatchResponse(BaseModel):
    request_id: str
    model_version: str
    experiment: ExperimentOut | None = None
    top_k: int
    items: list[BatchItemOut]
    latency_ms: float


class VersionHealth(BaseModel):
    model_version: str
    count: int
    dim: int
    index: str
    encoder: str | None
    recall_at_k: float | None = None


class HealthResponse(BaseModel):
    status: Literal["ok", "loading", "error"]
    ready: bool
    versions: list[VersionHealth]
    default_model_version: str
    detail: str | None = None
