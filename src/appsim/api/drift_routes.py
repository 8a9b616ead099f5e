"""``GET /drift`` and the drift-monitoring wiring (``install_drift``), kept apart from the similarity routes.

``install_drift(app, container)`` (one call in ``create_app``) registers:

* an ``on_loaded`` hook: builds each loaded model version's ``VersionReference`` from its catalogue
  (``appsim.services.drift``); a failure is logged and that version is reported as not monitored, it never
  stops the service from becoming ready; an ``on_reloaded`` hook rebuilds a hot-reloaded version's;
* an ``after_request`` hook: feeds each answered query to the rolling window of its model version (O(d), no
  SVD, never raises). It reads ``result`` (a ``SimilarityResult``) and, when the caller passes them,
  ``query`` (the domain ``Query``: enables the category / platform / description-length features of
  metadata queries) and ``results`` (a batch's results, a list of ``SimilarityResult`` or errors);
* the router below, and Prometheus gauges ``appsim_drift_score{model_version, feature, method}`` (the
  statistic; NaN while a feature is not judged) and ``appsim_drift_alert{model_version, feature}`` (0/1),
  updated whenever ``/drift`` is computed and every ``drift.update_every`` observations of a version.

The monitor is ``container.extras["drift"]`` (a ``DriftMonitor``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import structlog
from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel, Field

from appsim.api.errors import problem_docs
from appsim.data.catalogue import APPS_FILE
from appsim.errors import UnavailableError, UnknownModelVersionError
from appsim.observability import DRIFT_ALERT, DRIFT_SCORE
from appsim.services.drift import DriftMonitor, VersionReference, description_lengths_for
from appsim.services.similarity import Query as DomainQuery
from appsim.services.similarity import SimilarityResult

log = structlog.get_logger("appsim.drift")
router = APIRouter()


class DriftMethodOut(BaseModel):
    statistic: float | None = Field(
        description="PSI / KS D / Wasserstein in reference std units; null until judged"
    )
    threshold: float
    p_value: float | None = Field(description="chi-square (PSI) or KS p-value; null until judged")
    alpha: float = Field(description="significance the p-value must beat for the method to flag drift")
    drifted: bool
    raw: float | None = Field(None, description="Wasserstein distance in the feature's own units")


class DriftFeatureOut(BaseModel):
    kind: Literal["categorical", "numeric"]
    n_window: int = Field(description="observations of this feature in the window")
    n_reference: int
    min_samples: int
    judged: bool = Field(description="the window holds at least min_samples observations")
    drifted: bool
    methods: dict[str, DriftMethodOut]


class DriftVersionOut(BaseModel):
    model_version: str
    status: Literal["ok", "error"]
    error: str | None = None
    n_observed: int = Field(description="queries observed since the reference was built")
    n_window: int = Field(description="queries in the rolling window")
    drifted: bool
    drifted_features: list[str]
    features: dict[str, DriftFeatureOut]


class DriftReportOut(BaseModel):
    status: Literal["ok", "disabled"]
    generated_at: float = Field(description="unix time, seconds")
    config: dict[str, Any]
    versions: dict[str, DriftVersionOut]


def update_gauges(report: dict[str, Any]) -> None:
    """Set ``appsim_drift_score`` / ``appsim_drift_alert`` from a ``DriftMonitor.report``."""
    for name, v in report.get("versions", {}).items():
        for feature, f in v.get("features", {}).items():
            for method, m in f["methods"].items():
                stat = m.get("statistic")
                DRIFT_SCORE.labels(name, feature, method).set(math.nan if stat is None else float(stat))
            DRIFT_ALERT.labels(name, feature).set(1.0 if f["drifted"] else 0.0)


def _descriptions(container: Any) -> pd.DataFrame | None:
    """``app_id`` / ``description`` of the catalogue (only the two columns drift needs; the loader has already
    validated the file), or None: description_length is then not monitored."""
    apps = container.extras.get("apps")
    if apps is not None and {"app_id", "description"} <= set(apps.columns):
        return apps[["app_id", "description"]].astype(str)
    try:
        path = Path(container.settings.catalogue_dir) / APPS_FILE
        return pd.read_csv(path, usecols=["app_id", "description"], dtype=str, keep_default_na=False,
                           encoding="utf-8")
    except Exception as e:  # descriptions are optional for drift
        log.warning("drift: no catalogue descriptions; description_length not monitored", error=str(e))
        return None


def _build_one(monitor: DriftMonitor, name: str, mv: Any, apps: pd.DataFrame | None) -> None:
    try:
        ref = VersionReference.build(mv, description_lengths_for(mv, apps), monitor.cfg)
    except Exception as e:  # this version is reported as not monitored
        monitor.set_error(name, f"{type(e).__name__}: {e}")
        log.error("drift reference failed; version not monitored", model_version=name, error=str(e))
        return
    monitor.set_reference(ref)
    log.info("drift reference built", model_version=name, features=ref.features,
             seconds=round(ref.build_seconds, 3))


def build_references(container: Any) -> None:
    """``on_loaded`` hook: a reference per loaded version. Never raises (drift is not worth an outage)."""
    monitor: DriftMonitor = container.extras["drift"]
    if container.similarity is None:
        return
    apps = _descriptions(container)
    for name, mv in sorted(container.similarity.versions.items()):
        _build_one(monitor, name, mv, apps)


def rebuild_reference(container: Any, version: str) -> None:
    """``on_reloaded`` hook (admin hot reload): the reloaded version's reference is rebuilt from its new
    artifact and its window restarts empty. Never raises."""
    monitor: DriftMonitor = container.extras["drift"]
    if container.similarity is None or version not in container.similarity.versions:
        return
    _build_one(monitor, version, container.similarity.versions[version], _descriptions(container))


def make_after_request(monitor: DriftMonitor) -> Any:
    def after_request(*, error: str | None = None, result: SimilarityResult | None = None,
                      query: DomainQuery | None = None, results: Sequence[Any] | None = None,
                      queries: Sequence[DomainQuery] | None = None, **_: Any) -> None:
        """Feed answered queries to the drift window (O(d) each); never raises."""
        if error is not None:
            return
        try:
            if result is not None:
                monitor.observe_result(result, query)
            qs = list(queries or ())
            for i, r in enumerate(results or ()):
                if isinstance(r, SimilarityResult):
                    monitor.observe_result(r, qs[i] if i < len(qs) else None)
        except Exception as e:  # monitoring never fails a request
            log.warning("drift observation failed", error=f"{type(e).__name__}: {e}")

    return after_request


def install_drift(app: FastAPI, container: Any) -> DriftMonitor:
    """Register the drift hooks on ``container`` and the ``/drift`` route on ``app`` (call before loading)."""
    monitor = DriftMonitor(container.settings.drift, on_refresh=update_gauges)
    container.extras["drift"] = monitor
    if container.settings.drift.enabled:
        # after readiness, in the background: monitoring never delays serving
        container.extras.setdefault("after_ready", []).append(build_references)
        container.extras.setdefault("on_reloaded", []).append(rebuild_reference)
        container.extras.setdefault("after_request", []).append(make_after_request(monitor))
    app.include_router(router)
    return monitor


@router.get(
    "/drift",
    response_model=DriftReportOut,
    tags=["operations"],
    summary="Input drift of recent queries vs the catalogue, per model version and feature",
    responses=problem_docs({422: "unknown model_version", 503: "model versions are still loading"}),
)
def drift_report(
    request: Request,
    model_version: str | None = Query(None, max_length=100, description="one version (default: all)"),
) -> DriftReportOut:
    """PSI (category, platform), KS and Wasserstein (description length, embedding projections, NN
    similarity) of each version's rolling window against its catalogue reference; also refreshes the
    drift gauges. Runs in the thread pool (a few ms of scipy per version)."""
    container = request.app.state.container
    sim = container.require_similarity()
    monitor: DriftMonitor | None = container.extras.get("drift")
    cfg = container.settings.drift
    if monitor is None or not cfg.enabled:
        return DriftReportOut(status="disabled", generated_at=0.0, config=cfg.model_dump(), versions={})
    if model_version is not None and model_version not in sim.versions:
        raise UnknownModelVersionError(model_version, sorted(sim.versions))
    if model_version is not None and model_version not in monitor.versions:
        raise UnavailableError(f"drift reference of {model_version!r} is not built yet")
    report = monitor.report(model_version)
    update_gauges(report)
    return DriftReportOut.model_validate(report | {"status": "ok"})
