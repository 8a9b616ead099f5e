"""Thin routes: parse, call a service, shape the response. CPU-bound work runs in FastAPI's thread pool
(plain ``def`` routes), never on the event loop."""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, Request, Response

from appsim.api.deps import ContainerDep, RequestIdDep, choose_version, to_filters, to_query
from appsim.api.schemas import (
    BatchItemOut,
    ExperimentOut,
    FindSimilarBatchRequest,
    FindSimilarBatchResponse,
    FindSimilarRequest,
    FindSimilarResponse,
    HealthResponse,
    NeighbourOut,
    QueryInfoOut,
    VersionHealth,
)
from appsim.errors import AppsimError, ValidationError
from appsim.observability import render_metrics
from appsim.services.similarity import SimilarityResult

router = APIRouter()
log = structlog.get_logger("appsim.api")


def _experiment_out(assignment: dict[str, Any] | None) -> ExperimentOut | None:
    if not assignment:
        return None
    return ExperimentOut(
        experiment_id=assignment["experiment_id"],
        variant=assignment["variant"],
        unit_id=assignment.get("unit_id"),
        forced=bool(assignment.get("forced", False)),
        unit_fallback=bool(assignment.get("unit_fallback", False)),
    )


def _neighbours(res: SimilarityResult) -> list[NeighbourOut]:
    return [NeighbourOut(**n.to_dict()) for n in res.neighbours]


def _after(
    container: Any,
    request: Request,
    endpoint: str,
    version: str,
    assignment: dict[str, Any] | None,
    t0: float,
    error: str | None = None,
    result: SimilarityResult | None = None,
    **extra: Any,
) -> None:
    """Record the exposure (A/B) and feed drift monitoring; never fails the request. ``extra`` passes
    ``query`` / ``queries`` / ``results`` through to the hooks."""
    latency_ms = (time.perf_counter() - t0) * 1000.0
    for hook in container.extras.get("after_request", []):
        try:
            hook(
                request_id=request.state.request_id,
                endpoint=endpoint,
                model_version=version,
                assignment=assignment,
                latency_ms=latency_ms,
                error=error,
                result=result,
                **extra,
            )
        except Exception as e:
            log.warning(
                "after_request hook failed",
                hook=getattr(hook, "__qualname__", str(hook)),
                error=f"{type(e).__name__}: {e}",
            )


QUERY_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown app_id"},
    413: {"description": "body too large"},
    422: {"description": "invalid input (problem details name the field)"},
    503: {"description": "model versions are still loading or failed to load"},
}


def route_request(container: Any, body: Any, request: Request, request_id: str) -> tuple[Any, str, Any]:
    """``(similarity service, model version, assignment)`` for one query request; the version and variant
    are put on ``request.state`` for the access log and metrics. raises UnavailableError while loading,
    UnknownModelVersionError."""
    sim = container.require_similarity()
    version, assignment = choose_version(container, body, request_id)
    request.state.model_version = version
    if assignment:
        request.state.variant = assignment["variant"]
    return sim, version, assignment


def search(
    container: Any, sim: Any, version: str, query: Any, k: int | None, filters: Any
) -> SimilarityResult:
    """One similarity search, through the LRU cache when it is configured (``extras["search"]``)."""
    cached = container.extras.get("search")
    if cached is not None:
        return cached(sim, version, query, k, filters)
    return sim.find_similar(version, query, k, filters)


@router.post(
    "/find-similar",
    response_model=FindSimilarResponse,
    tags=["similarity"],
    summary="Top-k most similar catalogue apps, by app id, raw vector or new-app metadata",
    responses=QUERY_RESPONSES,
)
def find_similar(body: FindSimilarRequest, request: Request) -> FindSimilarResponse:
    # the container and the request id are read here, not through Depends(): each sync dependency costs a
    # thread-pool round trip per request (docs/benchmarks.md, "API overhead")
    t0 = time.perf_counter()
    container = request.app.state.container
    request_id = str(request.state.request_id)
    sim, version, assignment = route_request(container, body, request, request_id)
    query = to_query(body)
    try:
        _check_limits(container, body)
        res = search(container, sim, version, query, body.top_k, to_filters(body.filters))
    except AppsimError as e:
        _after(
            container, request, "find-similar", version, assignment, t0, error=e.code, error_status=e.status
        )
        raise
    _after(container, request, "find-similar", version, assignment, t0, result=res, query=query)
    out = FindSimilarResponse(
        request_id=request_id,
        model_version=version,
        experiment=_experiment_out(assignment),
        query=QueryInfoOut(kind=res.query_kind, encoding=res.encoding),
        top_k=res.top_k,
        candidates=res.candidates,
        results=_neighbours(res),
        latency_ms=round((time.perf_counter() - t0) * 1000.0, 3),
    )
    # serialised here: a returned model would be re-validated by FastAPI in one more thread-pool round trip
    return Response(out.model_dump_json(), media_type="application/json")  # type: ignore[return-value]


def _check_limits(container: Any, body: Any) -> None:
    lim = container.settings.limits
    app = getattr(body, "app", None)
    if app is not None:
        if app.description and len(app.description) > lim.max_description_chars:
            raise ValidationError(
                f"description is longer than {lim.max_description_chars} characters", field="app.description"
            )
        if len(app.name) > lim.max_name_chars:
            raise ValidationError(f"name is longer than {lim.max_name_chars} characters", field="app.name")


@router.post(
    "/find-similar/batch",
    response_model=FindSimilarBatchResponse,
    tags=["similarity"],
    summary="Many similarity queries in one call (one matrix product per version); per-item errors",
    responses={
        413: {"description": "body too large"},
        422: {"description": "invalid input (problem details name the field)"},
        503: {"description": "model versions are still loading or failed to load"},
    },
)
def find_similar_batch(
    body: FindSimilarBatchRequest, request: Request, container: ContainerDep, request_id: RequestIdDep
) -> FindSimilarBatchResponse:
    t0 = time.perf_counter()
    sim = container.require_similarity()
    lim = container.settings.limits
    if len(body.queries) > lim.max_batch:
        raise ValidationError(
            f"at most {lim.max_batch} queries per batch, got {len(body.queries)}", field="queries"
        )
    version, assignment = choose_version(container, body, request_id)
    request.state.model_version = version
    queries = []
    items: list[BatchItemOut | None] = [None] * len(body.queries)
    for i, q in enumerate(body.queries):
        try:
            _check_limits(container, q)
            queries.append((i, to_query(q)))
        except AppsimError as e:
            items[i] = BatchItemOut(index=i, ok=False, error=_problem(e, f"queries.{i}"))
    results = sim.find_similar_batch(version, [q for _, q in queries], body.top_k, to_filters(body.filters))
    for (i, _), r in zip(queries, results, strict=True):
        if isinstance(r, AppsimError):
            items[i] = BatchItemOut(index=i, ok=False, error=_problem(r, f"queries.{i}"))
        else:
            items[i] = BatchItemOut(
                index=i,
                ok=True,
                query=QueryInfoOut(kind=r.query_kind, encoding=r.encoding),
                results=_neighbours(r),
            )
    _after(
        container,
        request,
        "find-similar-batch",
        version,
        assignment,
        t0,
        queries=[q for _, q in queries],
        results=results,
    )
    out = FindSimilarBatchResponse(
        request_id=request_id,
        model_version=version,
        experiment=_experiment_out(assignment),
        top_k=sim.check_top_k(body.top_k),
        items=[it for it in items if it is not None],
        latency_ms=round((time.perf_counter() - t0) * 1000.0, 3),
    )
    # serialise here, in the worker thread: a 256 x top-100 answer is MBs of JSON and must not hold the
    # event loop
    return Response(orjson.dumps(out.model_dump()), media_type="application/json")  # type: ignore[return-value]


def _problem(e: AppsimError, prefix: str) -> dict[str, Any]:
    field = f"{prefix}.{e.field}" if e.field else prefix
    return {
        "type": f"https://appsim.dev/problems/{e.code}",
        "status": e.status,
        "detail": e.detail,
        "field": field,
    }


def _health(container: Any) -> HealthResponse:
    s = container.settings
    versions: list[VersionHealth] = []
    if container.similarity is not None:
        for name, mv in sorted(container.similarity.versions.items()):
            versions.append(
                VersionHealth(
                    model_version=name,
                    count=mv.size,
                    dim=mv.dim,
                    index=mv.index.name,
                    encoder=getattr(mv.encoder, "kind", None),
                    recall_at_k=getattr(mv.index, "recall_at_k", None),
                )
            )
    status = "ok" if container.ready else ("error" if container.load_error else "loading")
    return HealthResponse(
        status=status,
        ready=container.ready,
        versions=versions,
        default_model_version=s.default_model_version,
        detail=container.load_error,
    )


@router.get(
    "/health",
    response_model=HealthResponse,
    tags=["operations"],
    summary="Liveness (always 200 while the process runs) with the loaded model versions",
)
async def health(container: ContainerDep) -> HealthResponse:
    return _health(container)


@router.get(
    "/health/ready",
    response_model=HealthResponse,
    tags=["operations"],
    summary="Readiness: 200 when every model version is loaded, 503 while loading or on failure",
    responses={503: {"description": "loading or failed to load"}},
)
async def ready(container: ContainerDep) -> Response:
    h = _health(container)
    return Response(
        orjson.dumps(h.model_dump()), status_code=200 if h.ready else 503, media_type="application/json"
    )


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
)
async def metrics() -> Response:
    data, ctype = render_metrics()
    return Response(content=data, media_type=ctype)
