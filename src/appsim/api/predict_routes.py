"""``POST /predict``: campaign-performance prediction for a new app from its most similar catalogue apps.

Flow (the find-similar pattern): ``choose_version`` (explicit ``model_version`` or the A/B assignment) ->
the similarity service finds ``neighbours`` catalogue apps (``settings.prediction.neighbours``, 15 by
default; allowed ``min_neighbours..max_neighbours``, 10-20) -> :func:`appsim.services.prediction.predict`
over their campaign history -> the ``after_request`` hooks of ``appsim.api.endpoints._after`` (A/B exposure,
drift) -> the response.

The category of the new app (it picks the prior the neighbours' evidence is shrunk toward):

* metadata query: the request's ``app.category``; when it is omitted, the neighbours' majority (below);
* ``app_id`` query: that catalogue app's category;
* ``vector`` query: the most frequent category among the neighbours found; ties go to the category with
  the larger sum of similarity scores, then the alphabetically first.

An unknown category is not an error: the prediction falls back to the global prior and ``basis`` /
``prior_level`` / ``basis_explanation`` say so.

History: :func:`load_prediction` (an ``on_loaded`` hook registered in ``create_app``) reads
``<catalogue_dir>/<settings.prediction.history_file>`` ONCE, keeps only the rows of catalogue apps (the
real build's ``history_simulated.csv`` also holds the held-out apps, whose rows are evaluation ground
truth and must never feed the service) and stores a :class:`PredictionState` in
``container.extras["prediction"]``. A missing or unreadable file never stops the service: /predict then
answers ``basis: "none"`` and ``history.status`` says why.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import structlog
from fastapi import APIRouter, Request

from appsim.api.deps import ContainerDep, RequestIdDep, to_filters, to_query
from appsim.api.endpoints import (
    QUERY_RESPONSES,
    _after,
    _check_limits,
    _experiment_out,
    route_request,
    search,
)
from appsim.api.predict_schemas import (
    CategoryOut,
    CategorySource,
    HistoryInfoOut,
    PredictionNeighbourOut,
    PredictionOut,
    PredictRequest,
    PredictResponse,
)
from appsim.api.schemas import QueryInfoOut
from appsim.config.settings import PredictionSettings
from appsim.errors import AppsimError, ValidationError
from appsim.services.prediction import (
    DEFAULT_SEGMENT_COLUMNS,
    REQUIRED_HISTORY_COLUMNS,
    HistoryStats,
    Prediction,
    PredictionConfig,
    PredictionService,
)
from appsim.services.similarity import ModelVersion, Query, SimilarityResult

log = structlog.get_logger("appsim.predict")
router = APIRouter()


# ------------------------------------------------------------------------------------------ start-up state


@dataclass(frozen=True)
class PredictionState:
    """The start-up prediction service and where its history came from (``info``: the fields of
    ``HistoryInfoOut``: status "loaded" / "missing" / "error" / "not_loaded", file, simulated, rows,
    apps_with_history, rows_excluded, detail)."""

    service: PredictionService
    info: dict[str, Any] = field(default_factory=dict)


def _empty_stats(catalogue: Mapping[str, str | None]) -> HistoryStats:
    return HistoryStats.from_frame(pd.DataFrame(columns=list(REQUIRED_HISTORY_COLUMNS)), catalogue)


def _simulated_flag(path: Path) -> bool | None:
    """``simulated`` from ``<stem>.manifest.json`` next to the history file; None when there is none."""
    manifest = path.with_name(path.stem + ".manifest.json")
    try:
        value = json.loads(manifest.read_text()).get("simulated")
    except (OSError, ValueError, AttributeError):
        return None
    return bool(value) if value is not None else None


def read_history(path: Path, segment_columns: Sequence[str] = DEFAULT_SEGMENT_COLUMNS) -> pd.DataFrame:
    """The history CSV (``historical_performance.csv`` format) with ``app_id`` and segment columns as
    text: only an empty cell is missing (so a country code such as "NA" stays a value)."""
    text_cols = ["app_id", "date", *segment_columns]
    return pd.read_csv(
        path,
        dtype=dict.fromkeys(text_cols, str),
        keep_default_na=False,
        na_values={c: [""] for c in [*text_cols, *REQUIRED_HISTORY_COLUMNS[1:]]},
        encoding="utf-8",
    )


def build_prediction_state(
    path: str | Path, catalogue: Mapping[str, str | None], config: PredictionConfig | None = None
) -> PredictionState:
    """Build the prediction service from the history at ``path``, restricted to the ``catalogue``
    (app id -> category) apps. Never raises: a missing file gives status "missing", any read or check
    failure status "error" (both with empty statistics, so predictions say ``basis: "none"``)."""
    p = Path(path)
    info: dict[str, Any] = {
        "status": "loaded", "file": p.name, "simulated": _simulated_flag(p), "rows": 0,
        "apps_with_history": 0, "rows_excluded": 0, "detail": None,
    }  # fmt: skip
    t0 = time.perf_counter()
    if not p.is_file():
        info.update(status="missing", detail=f"{p.name} not found: predictions have no campaign history")
        log.warning("prediction history missing; /predict answers basis 'none'", file=str(p))
        return PredictionState(PredictionService(_empty_stats(catalogue), config), info)
    try:
        history = read_history(p)
        if "app_id" not in history.columns:
            raise ValueError("history has no app_id column")
        keep = history["app_id"].isin(set(catalogue)).to_numpy()
        stats = HistoryStats.from_frame(history.loc[keep], catalogue)
        service = PredictionService(stats, config)
    except Exception as e:  # a bad history file never stops the service
        info.update(status="error", detail=f"{type(e).__name__}: {e}")
        log.error(
            "prediction history unreadable; /predict answers basis 'none'", file=str(p), error=info["detail"]
        )
        return PredictionState(PredictionService(_empty_stats(catalogue), config), info)
    info.update(
        rows=int(keep.sum()),
        rows_excluded=int((~keep).sum()),
        apps_with_history=int(stats.report.get("apps_with_impressions", 0)),
    )
    log.info(
        "prediction history loaded",
        seconds=round(time.perf_counter() - t0, 3),
        **{k: v for k, v in info.items() if k != "detail"},
    )
    return PredictionState(service, info)


def catalogue_categories(versions: Mapping[str, ModelVersion]) -> dict[str, str | None]:
    """App id -> category over every loaded model version's catalogue."""
    out: dict[str, str | None] = {}
    for _, mv in sorted(versions.items()):
        out.update(zip(mv.ids.astype(str).tolist(), [str(c) for c in mv.categories.tolist()], strict=True))
    return out


def load_prediction(container: Any) -> None:
    """``on_loaded`` hook: build ``container.extras["prediction"]`` once from
    ``<catalogue_dir>/<settings.prediction.history_file>`` (catalogue apps only). Never raises."""
    s = container.settings
    path = Path(s.catalogue_dir) / s.prediction.history_file
    sim = container.similarity
    catalogue = catalogue_categories(sim.versions) if sim is not None else {}
    container.extras["prediction"] = build_prediction_state(path, catalogue)


def _state(container: Any) -> PredictionState:
    state = container.extras.get("prediction")
    if isinstance(state, PredictionState):
        return state
    # not built (a container wired without the hook): answer without history rather than fail
    sim = container.require_similarity()
    path = Path(container.settings.catalogue_dir) / container.settings.prediction.history_file
    return PredictionState(
        PredictionService(_empty_stats(catalogue_categories(sim.versions))),
        {"status": "not_loaded", "file": path.name, "simulated": None, "rows": 0, "apps_with_history": 0,
         "rows_excluded": 0, "detail": "the prediction history was not loaded at start-up"},
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------- logic


def check_neighbours(cfg: PredictionSettings, neighbours: int | None) -> int:
    """The neighbour count: ``cfg.neighbours`` when None; else it must lie in
    ``cfg.min_neighbours..cfg.max_neighbours`` (ValidationError naming ``neighbours`` otherwise)."""
    k = cfg.neighbours if neighbours is None else neighbours
    if not cfg.min_neighbours <= k <= cfg.max_neighbours:
        raise ValidationError(
            f"neighbours must be an integer in {cfg.min_neighbours}..{cfg.max_neighbours}, "
            f"got {neighbours!r}",
            field="neighbours",
        )
    return int(k)


def majority_category(res: SimilarityResult) -> str | None:
    """The most frequent category among the neighbours; ties: larger score sum, then alphabetical."""
    count: dict[str, int] = defaultdict(int)
    total: dict[str, float] = defaultdict(float)
    for n in res.neighbours:
        count[n.category] += 1
        total[n.category] += n.score
    if not count:
        return None
    return min(count, key=lambda c: (-count[c], -total[c], c))


def prior_category(
    mv: ModelVersion, query: Query, res: SimilarityResult
) -> tuple[str | None, CategorySource]:
    """``(category, source)`` of the new app, by the rules of the module docstring."""
    if query.app is not None and query.app.category:
        return query.app.category, "metadata"
    if query.app_id is not None:
        row = mv.id_to_row.get(str(query.app_id))
        if row is not None:
            return str(mv.categories[row]), "catalogue"
    cat = majority_category(res)
    return (cat, "neighbour_majority") if cat is not None else (None, "none")


def _neighbours_out(res: SimilarityResult, pred: Prediction) -> list[PredictionNeighbourOut]:
    used = {e.app_id: e for e in pred.neighbours}
    out = []
    for n in res.neighbours:
        e = used.get(n.app_id)
        out.append(PredictionNeighbourOut(
            rank=n.rank, app_id=n.app_id, name=n.name, category=n.category, platform=n.platform,
            score=n.score,
            weight=e.weight if e else 0.0, evidence_multiplier=e.evidence_multiplier if e else 0.0,
            has_history=bool(e and e.has_history), impressions=e.impressions if e else 0.0,
            clicks=e.clicks if e else 0.0, installs=e.installs if e else 0.0, revenue=e.revenue if e else 0.0,
            note=e.note if e else "not used",
        ))  # fmt: skip
    return out


def _prediction_out(
    pred: Prediction, res: SimilarityResult, category: str | None, source: CategorySource
) -> PredictionOut:
    d = pred.to_dict()  # JSON-ready: None instead of NaN / inf
    return PredictionOut(
        basis=d["basis"],
        basis_explanation=d["basis_explanation"],
        prior_level=d["prior_level"],
        category=CategoryOut(
            value=d["category"] if d["category"] is not None else category,
            known=bool(d["category_known"]),
            source=source,
        ),
        effective_sample_size=d["effective_sample_size"],
        neighbours_with_history=d["neighbours_with_history"],
        rates=d["rates"],
        performance_score=d["performance_score"],
        performance_score_detail=d["performance_score_detail"],
        segments=d["segments"],
        top_segments=d["top_segments"],
        segments_not_claimed=d["segments_not_claimed"],
        segment_columns_missing=d["segment_columns_missing"],
        neighbours=_neighbours_out(res, pred),
        warnings=d["warnings"],
        config=d["config"],
    )


@router.post(
    "/predict",
    response_model=PredictResponse,
    tags=["prediction"],
    summary="Predict a new app's campaign rates (with 80% intervals) from its 10-20 most similar apps",
    responses=QUERY_RESPONSES,
)
def predict_route(
    body: PredictRequest, request: Request, container: ContainerDep, request_id: RequestIdDep
) -> PredictResponse:
    t0 = time.perf_counter()
    sim, version, assignment = route_request(container, body, request, request_id)
    try:
        k = check_neighbours(container.settings.prediction, body.neighbours)
        _check_limits(container, body)
        query, filters = to_query(body), to_filters(body.filters)
        res = search(container, sim, version, query, k, filters)
        state = _state(container)
        category, source = prior_category(sim.version(version), query, res)
        pred = state.service.predict([(n.app_id, n.score) for n in res.neighbours], category)
    except AppsimError as e:
        _after(container, request, "predict", version, assignment, t0, error=e.code, error_status=e.status)
        raise
    _after(container, request, "predict", version, assignment, t0, result=res)
    return PredictResponse(
        request_id=request_id,
        model_version=version,
        experiment=_experiment_out(assignment),
        query=QueryInfoOut(kind=res.query_kind, encoding=res.encoding),
        neighbours_requested=k,
        candidates=res.candidates,
        prediction=_prediction_out(pred, res, category, source),
        history=HistoryInfoOut(**state.info),
        latency_ms=round((time.perf_counter() - t0) * 1000.0, 3),
    )
