"""Structured JSON logs (structlog) and Prometheus metrics (prometheus-client).

Logs: one JSON line per request with request_id, route, model_version, status and latency_ms; never raw
vectors, descriptions or secrets (the request body is never logged). The request id is bound with
structlog's contextvars in the ASGI middleware, so code running for that request logs it too.

Metrics: module-level collectors in the default registry. With several worker processes set
``PROMETHEUS_MULTIPROC_DIR`` (an empty directory shared by the workers): ``render_metrics`` then aggregates
every worker's files (prometheus-client multiprocess mode), so each scrape counts every request.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_mp

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_MP = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter(
    "appsim_requests", "HTTP requests by endpoint, method, status and model version",
    ["endpoint", "method", "status", "model_version"],
)
ERRORS = Counter(
    "appsim_request_errors", "Requests answered with an error, by kind (problem type)",
    ["endpoint", "model_version", "kind"],
)
LATENCY = Histogram(
    "appsim_request_latency_seconds", "Request latency in seconds", ["endpoint", "model_version"],
    buckets=LATENCY_BUCKETS,
)
CACHE_HITS = Counter("appsim_cache_hits", "Similarity cache hits", ["model_version"])
CACHE_MISSES = Counter("appsim_cache_misses", "Similarity cache misses", ["model_version"])
EXPOSURES = Counter("appsim_experiment_exposures", "Experiment exposures recorded", ["experiment", "variant"])
_gauge_mode = {"multiprocess_mode": "mostrecent"} if _MP else {}
SRM_PVALUE = Gauge(
    "appsim_experiment_srm_pvalue", "Sample-ratio-mismatch chi-square p-value", ["experiment"], **_gauge_mode
)
DECISION = Gauge(
    "appsim_experiment_decision", "1 for the experiment's current decision", ["experiment", "decision"],
    **_gauge_mode,
)
DRIFT_SCORE = Gauge(
    "appsim_drift_score", "Drift statistic of recent queries vs the catalogue reference",
    ["model_version", "feature", "method"], **_gauge_mode,
)
DRIFT_ALERT = Gauge(
    "appsim_drift_alert", "1 when the feature's drift exceeds its threshold", ["model_version", "feature"],
    **_gauge_mode,
)
STORE_BUFFERED = Gauge(
    "appsim_event_store_buffered", "Exposures buffered while the event store is unavailable",
    **({"multiprocess_mode": "livesum"} if _MP else {}),
)
STORE_LOST = Counter("appsim_event_store_lost", "Exposures dropped because the buffer was full")
MODELS_LOADED = Gauge(
    "appsim_models_loaded", "Catalogue rows loaded per model version", ["model_version"],
    **({"multiprocess_mode": "max"} if _MP else {}),
)


def render_metrics() -> tuple[bytes, str]:
    """The Prometheus text exposition of this process, or of all workers in multiprocess mode."""
    if _MP:
        registry = CollectorRegistry()
        prom_mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    """structlog to stdout: JSON lines (production) or a console renderer (``json_logs=False``)."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=lvl, force=True)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
