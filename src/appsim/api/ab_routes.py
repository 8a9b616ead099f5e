"""A/B experiment routes: outcome feedback, experiment reports, admin weights and audit log.

Contracts (errors are RFC 9457 problems raised as :mod:`appsim.errors` domain errors; ``field`` names the
offending input as a dotted path):

``POST /feedback``
    Outcomes that arrive after the response (impression, click, install, revenue), attributed to the
    ``request_id`` of a served request. Body: one event ``{event_id, request_id, kind, value?, ts?}``, or a
    batch ``{"events": [event, ...]}`` (a bare JSON array is accepted too), at most
    :data:`MAX_FEEDBACK_EVENTS`. ``event_id`` is the client's idempotency key; ``value`` is 1 for counting
    events and the amount for ``revenue`` (required there), finite and >= 0; ``ts`` defaults to now (UTC;
    a naive time is UTC). All or nothing: an invalid event -> 422 naming ``events.<i>.<field>`` (or
    ``<field>`` for a single event), a request id without a recorded exposure -> 404 naming
    ``events.<i>.request_id``; nothing is written in both cases. A repeated ``event_id`` is not an error:
    200 with ``duplicate: true`` for that event (nothing changes). 200 ``{accepted, duplicates, duplicate,
    events: [{event_id, request_id, duplicate}]}``. 503 when the event store is unavailable (retry).
``GET /experiments``
    Every configured experiment with its weights in force and its latest decision (a report at most
    30 s old). 200 ``{experiments: [...]}``.
``GET /experiments/{experiment_id}``
    The controller's full report, computed now (``ABTestController.report``): per variant exposures,
    outcomes, metrics with 95% intervals, latency p50/p95/p99 (ms), error rate; SRM; primary metric
    (z-test, mSPRT, Bayesian); secondary metrics (Holm); guardrails; sample size and ETA; decision. JSON
    without NaN (``null``). Updates the SRM / decision gauges. 404 for an unknown id.
``PUT /experiments/{experiment_id}/weights`` (admin)
    Header ``X-API-Key``, checked by the shared ``appsim.api.security.require_admin`` (constant-time
    comparison with ``admin_api_key``): missing or wrong -> 401; no key configured -> 503 (admin API
    disabled). Body ``{weights: {variant: share}, actor?, reason?}``
    (known variants, each in [0, 1], summing to 1; missing variants get 0) -> 422 otherwise. Audited as
    ``ab.set_weights`` (actor = ``actor`` or ``key:<sha256 prefix of the key>``; the key id is always in
    the payload as ``key_id``). Takes effect in every worker within ~2 s. 200 ``{experiment_id, weights,
    previous, actor, effective_at}``.
``GET /experiments/{experiment_id}/audit`` (admin)
    The experiment's audit entries (weight changes, auto-rollbacks), newest first, ``?limit=`` 1..1000.

The key is never logged nor echoed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Security
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, model_validator
from pydantic import ValidationError as PydanticValidationError

from appsim.api.ab_wiring import ABRuntime
from appsim.api.deps import ContainerDep
from appsim.api.errors import problem_docs
from appsim.api.security import AdminDep, api_key_header
from appsim.errors import NotFoundError, UnavailableError, ValidationError

router = APIRouter(tags=["experiments"])

MAX_FEEDBACK_EVENTS = 1000

_BODY_ERRORS = problem_docs({400: "invalid Content-Length", 413: "body too large"})


def _admin_errors(invalid: str) -> dict[int | str, dict[str, Any]]:
    """The problems an admin route answers; ``invalid`` describes its 422."""
    return problem_docs(
        {
            401: "missing or wrong X-API-Key",
            404: "unknown experiment",
            422: invalid,
            503: "admin API disabled (no key configured) or event store unavailable",
        }
    )


Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ExperimentId = Annotated[str, Path(min_length=1, max_length=200, description="the experiment's id")]


# ------------------------------------------------------------------------------------------- models


class FeedbackEventIn(BaseModel):
    """One outcome of a served request."""

    model_config = ConfigDict(extra="forbid")

    event_id: Id = Field(description="idempotency key chosen by the client (a repeat is acknowledged)")
    request_id: Id = Field(description="the request_id of the /find-similar, /batch or /predict answer")
    kind: Literal["impression", "click", "install", "revenue"]
    value: float = Field(
        1.0,
        ge=0.0,
        allow_inf_nan=False,
        strict=True,
        description="1 for impression / click / install; the amount for revenue (required there)",
    )
    ts: datetime | None = Field(None, description="when it happened (ISO 8601, UTC if naive); default now")

    @model_validator(mode="after")
    def _revenue_has_value(self) -> FeedbackEventIn:
        if self.kind == "revenue" and "value" not in self.model_fields_set:
            raise ValueError("value: a revenue event needs its amount")
        return self


class FeedbackBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackEventIn] = Field(min_length=1, max_length=MAX_FEEDBACK_EVENTS)


class FeedbackEventOut(BaseModel):
    event_id: str
    request_id: str
    duplicate: bool = Field(description="already recorded before (or earlier in this batch): nothing changed")


class FeedbackOut(BaseModel):
    accepted: int = Field(description="events recorded by this call")
    duplicates: int = Field(description="events whose event_id was already recorded")
    duplicate: bool = Field(description="true when every event of this call was already recorded")
    events: list[FeedbackEventOut]


class VariantSummaryOut(BaseModel):
    name: str
    model_version: str
    weight: float = Field(description="share of the experiment's units in force now")
    configured_weight: float


class ExperimentSummaryOut(BaseModel):
    id: str
    unit: str = Field(description="randomisation unit (request field), e.g. advertiser_id")
    control: str
    enabled: bool
    active: bool = Field(description="enabled and within its [start, end) window")
    serving: bool = Field(description="the experiment assigning requests now (one at a time)")
    start: str | None
    end: str | None
    primary_metric: str
    variants: list[VariantSummaryOut]
    weights: dict[str, float]
    decision: str | None = Field(
        description="keep_running | ship:<variant> | stop:guardrail | invalid:srm; null if unavailable"
    )
    decision_reasons: list[str]
    decided_at: str | None = Field(description="when the report behind the decision was computed")
    decision_error: str | None = None


class ExperimentListOut(BaseModel):
    experiments: list[ExperimentSummaryOut]


class ExperimentReportOut(BaseModel):
    """``ABTestController.report``: see docs/ab-testing.md for every section."""

    model_config = ConfigDict(extra="allow")

    experiment_id: str
    generated_at: str
    config: dict[str, Any]
    weights: dict[str, float]
    weight_history: list[dict[str, Any]]
    analysis: dict[str, Any]
    variants: dict[str, dict[str, Any]] = Field(
        description="per variant: model_version, weight, rows, exposures, units, outcomes, metrics (value, "
        "ci_low, ci_high), latency_ms (p50, p95, p99), error_rate"
    )
    srm: dict[str, Any]
    primary: dict[str, Any]
    secondary: dict[str, Any]
    guardrails: dict[str, Any]
    power: dict[str, Any]
    decision: str
    decision_reasons: list[str]
    actions: list[dict[str, Any]]
    warnings: list[str]


class WeightsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=100)],
        Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False, strict=True)],
    ] = Field(min_length=1, max_length=50, description="variant -> share; missing variants get 0; sum 1")
    actor: (
        Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[\x21-\x7e ]+$")] | None
    ) = Field(None, description="who (recorded in the audit log); default: the key's id")
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


class WeightsOut(BaseModel):
    experiment_id: str
    weights: dict[str, float]
    previous: dict[str, float]
    actor: str
    effective_at: str | None


class AuditEntryOut(BaseModel):
    id: int
    ts: str
    actor: str
    action: str
    payload: dict[str, Any]


class AuditOut(BaseModel):
    experiment_id: str
    entries: list[AuditEntryOut]


# --------------------------------------------------------------------------------------- dependencies


def get_runtime(container: ContainerDep) -> ABRuntime:
    runtime = container.extras.get("ab")
    if runtime is None:
        raise UnavailableError("A/B testing is not available in this process")
    return runtime


RuntimeDep = Annotated[ABRuntime, Depends(get_runtime)]


def admin_key(_: AdminDep, key: Annotated[str | None, Security(api_key_header)] = None) -> str:
    """The caller's admin key, once ``appsim.api.security.require_admin`` accepted it (constant-time
    comparison; 503 when no key is configured, 401 when missing or wrong). Used only to derive the
    non-secret key id of the audit log; never logged nor echoed."""
    return key or ""


AdminKey = Annotated[str, Depends(admin_key)]


# ------------------------------------------------------------------------------------------- feedback

_EVENT = TypeAdapter(FeedbackEventIn)
_EVENT_SCHEMA = FeedbackEventIn.model_json_schema()
_FEEDBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _EVENT_SCHEMA,
                        {
                            "type": "object",
                            "required": ["events"],
                            "additionalProperties": False,
                            "properties": {
                                "events": {
                                    "type": "array",
                                    "items": _EVENT_SCHEMA,
                                    "minItems": 1,
                                    "maxItems": MAX_FEEDBACK_EVENTS,
                                }
                            },
                        },
                        {
                            "type": "array",
                            "items": _EVENT_SCHEMA,
                            "minItems": 1,
                            "maxItems": MAX_FEEDBACK_EVENTS,
                        },
                    ]
                },
                "examples": {
                    "one": {"value": {"event_id": "ev-1", "request_id": "3f2a...", "kind": "click"}},
                    "batch": {
                        "value": {
                            "events": [
                                {"event_id": "ev-2", "request_id": "3f2a...", "kind": "install"},
                                {
                                    "event_id": "ev-3",
                                    "request_id": "3f2a...",
                                    "kind": "revenue",
                                    "value": 4.99,
                                },
                            ]
                        }
                    },
                },
            }
        },
    }
}


def _parse_feedback(payload: Any) -> tuple[list[FeedbackEventIn], bool]:
    """The events of a feedback body and whether it was a batch; ``ValidationError`` names the field."""
    if isinstance(payload, dict) and "events" in payload:
        extra = sorted(set(payload) - {"events"})
        if extra:
            raise ValidationError(f"unknown field {extra[0]!r} next to events", field=extra[0])
        items, batch = payload["events"], True
        if not isinstance(items, list):
            raise ValidationError("events must be a list of events", field="events")
    elif isinstance(payload, list):
        items, batch = payload, True
    elif isinstance(payload, dict):
        items, batch = [payload], False
    else:
        raise ValidationError('body must be an event, a list of events or {"events": [...]}', field="body")
    if batch and not items:
        raise ValidationError("events must hold at least one event", field="events")
    if len(items) > MAX_FEEDBACK_EVENTS:
        raise ValidationError(
            f"at most {MAX_FEEDBACK_EVENTS} events per call, got {len(items)}", field="events"
        )
    events: list[FeedbackEventIn] = []
    errors: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        try:
            events.append(_EVENT.validate_python(item))
        except PydanticValidationError as exc:
            for err in exc.errors():
                loc = [str(p) for p in err.get("loc", ())]
                msg = str(err.get("msg", "invalid"))
                if not loc and msg.startswith("Value error, value:"):
                    loc = ["value"]
                prefix = f"events.{i}" if batch else ""
                field = ".".join(p for p in (prefix, *loc) if p) or "body"
                errors.append({"field": field, "message": msg, "type": err.get("type")})
    if errors:
        first = errors[0]
        raise ValidationError(f"{first['field']}: {first['message']}", field=first["field"], errors=errors)
    return events, batch


def _relocate(exc: ValidationError | NotFoundError, batch: bool) -> ValidationError | NotFoundError:
    """The store's error with ``field`` as the request path (``events.<i>.<field>``)."""
    extra = dict(exc.extra)
    index = extra.pop("index", None)
    field = exc.field or "body"
    if batch and isinstance(index, int):
        field = f"events.{index}.{field}"
    return type(exc)(exc.detail, field=field, **extra)


@router.post(
    "/feedback",
    response_model=FeedbackOut,
    summary="Report outcomes (impression, click, install, revenue) of served requests; idempotent",
    openapi_extra=_FEEDBACK_BODY,
    responses={
        **problem_docs(
            {
                404: "a request_id has no recorded exposure (nothing written)",
                422: "invalid event (the field is named, e.g. events.3.value; nothing written)",
                503: "event store unavailable; retry later",
            }
        ),
        **_BODY_ERRORS,
    },
)
def feedback(payload: Annotated[Any, Body()], runtime: RuntimeDep) -> FeedbackOut:
    events, batch = _parse_feedback(payload)
    items = [e.model_dump(exclude_none=True) for e in events]
    try:
        recorded = runtime.record_feedback(items)
    except (ValidationError, NotFoundError) as exc:
        raise _relocate(exc, batch) from None
    out = [
        FeedbackEventOut(event_id=e.event_id, request_id=e.request_id, duplicate=not new)
        for e, new in zip(events, recorded, strict=True)
    ]
    accepted = sum(recorded)
    return FeedbackOut(accepted=accepted, duplicates=len(out) - accepted, duplicate=accepted == 0, events=out)


# ---------------------------------------------------------------------------------------- experiments


@router.get(
    "/experiments",
    response_model=ExperimentListOut,
    summary="Configured experiments with their weights in force and latest decision",
)
def list_experiments(runtime: RuntimeDep) -> ExperimentListOut:
    return ExperimentListOut.model_validate({"experiments": runtime.summaries()})


@router.get(
    "/experiments/{experiment_id}",
    response_model=ExperimentReportOut,
    summary="Full report: exposures, outcomes, rates with CIs, latency, SRM, tests, decision",
    responses=problem_docs(
        {404: "unknown experiment", 422: "invalid experiment id", 503: "event store unavailable"}
    ),
)
def experiment_report(experiment_id: ExperimentId, runtime: RuntimeDep) -> dict[str, Any]:
    return runtime.report(experiment_id)


@router.put(
    "/experiments/{experiment_id}/weights",
    response_model=WeightsOut,
    summary="Admin: change an experiment's weights (ramp, pause, rollback); audited",
    responses={
        **_admin_errors("invalid weights (unknown variant, outside [0, 1], not summing to 1)"),
        **_BODY_ERRORS,
    },
)
def set_weights(
    experiment_id: ExperimentId, body: WeightsIn, runtime: RuntimeDep, key: AdminKey
) -> WeightsOut:
    res = runtime.set_weights(
        experiment_id, body.weights, admin_key=key, actor=body.actor, reason=body.reason
    )
    return WeightsOut.model_validate(res)


@router.get(
    "/experiments/{experiment_id}/audit",
    response_model=AuditOut,
    summary="Admin: the experiment's audit log (weight changes, auto-rollbacks), newest first",
    responses=_admin_errors("invalid limit"),
)
def experiment_audit(
    experiment_id: ExperimentId,
    runtime: RuntimeDep,
    _key: AdminKey,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many entries")] = 100,
) -> AuditOut:
    return AuditOut.model_validate(
        {"experiment_id": experiment_id, "entries": runtime.audit(experiment_id, limit)}
    )
