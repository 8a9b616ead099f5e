"""Structured JSON logs (structlog) and Prometheus metrics (prometheus-client).

Logs: one JSON line per request with request_id, route, model_version, status and latency_ms; never raw
vectors, descriptions or secrets (the request body is never logged). The request id is bound with
structlog's contextvars in the ASGI middleware, so code running for that request logs it too.

Metrics: module-level collectors in the default registry. With several worker processes set
``PROMETHEUS_MULTIPROC_DIR`` (an empty directory shared by the workers): ``render_metrics`` then aggregates
every worker's files (prometheus-client multiprocess mode), so each scrape counts every request.

Multiprocess bookkeeping (each worker process imports this module once):

* the directory is created if missing (a missing one would fail the first metric update); it must be
  EMPTY when the server starts (``appsim serve --workers N`` makes a fresh one; the Dockerfile empties it),
  otherwise a previous run's counts are added in;
* counters and histograms of a worker that exits stay in the directory (totals never go down when a
  worker restarts);
* gauges use ``live*`` or ``mostrecent`` modes: ``appsim_event_store_buffered`` sums LIVE workers only and
  ``appsim_models_loaded`` is the value most recently set by a live worker (a hot reload in one worker is
  seen at once). A worker's live-gauge files are removed when it exits through its exit handlers
  (``atexit``) and otherwise (SIGKILL, OOM kill, or uvicorn re-raising SIGTERM after its graceful shutdown,
  which skips exit handlers) at the next scrape, once its pid no longer exists.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import re
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
_MP_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or ""
_MP = bool(_MP_DIR)
if _MP:
    os.makedirs(_MP_DIR, exist_ok=True)

REQUESTS = Counter(
    "appsim_requests",
    "HTTP requests by endpoint, method, status and model version",
    ["endpoint", "method", "status", "model_version"],
)
ERRORS = Counter(
    "appsim_request_errors",
    "Requests answered with an error, by kind (problem type)",
    ["endpoint", "model_version", "kind"],
)
LATENCY = Histogram(
    "appsim_request_latency_seconds",
    "Request latency in seconds",
    ["endpoint", "model_version"],
    buckets=LATENCY_BUCKETS,
)
CACHE_HITS = Counter("appsim_cache_hits", "Similarity cache hits", ["model_version"])
CACHE_MISSES = Counter("appsim_cache_misses", "Similarity cache misses", ["model_version"])
EXPOSURES = Counter("appsim_experiment_exposures", "Experiment exposures recorded", ["experiment", "variant"])
# multiprocess_mode only matters in multiprocess mode (ignored otherwise): see the module docstring
SRM_PVALUE = Gauge(
    "appsim_experiment_srm_pvalue",
    "Sample-ratio-mismatch chi-square p-value",
    ["experiment"],
    multiprocess_mode="mostrecent",
)
DECISION = Gauge(
    "appsim_experiment_decision",
    "1 for the experiment's current decision",
    ["experiment", "decision"],
    multiprocess_mode="mostrecent",
)
DRIFT_SCORE = Gauge(
    "appsim_drift_score",
    "Drift statistic of recent queries vs the catalogue reference",
    ["model_version", "feature", "method"],
    multiprocess_mode="mostrecent",
)
DRIFT_ALERT = Gauge(
    "appsim_drift_alert",
    "1 when the feature's drift exceeds its threshold",
    ["model_version", "feature"],
    multiprocess_mode="mostrecent",
)
SHADOW_OVERLAP = Histogram(
    "appsim_shadow_overlap_at_k",
    "Shadow mode: share of the served top-k also returned by the other variant's model version",
    ["experiment", "served", "shadow"],
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
SHADOW_SKIPPED = Counter(
    "appsim_shadow_skipped",
    "Shadow comparisons not run (queue full, vector query, error)",
    ["experiment", "reason"],
)
STORE_BUFFERED = Gauge(
    "appsim_event_store_buffered",
    "Exposures buffered while the event store is unavailable",
    multiprocess_mode="livesum",
)
STORE_LOST = Counter("appsim_event_store_lost", "Exposures dropped because the buffer was full")
MODELS_LOADED = Gauge(
    "appsim_models_loaded",
    "Catalogue rows loaded per model version",
    ["model_version"],
    multiprocess_mode="livemostrecent",
)

_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def prune_dead_workers(path: str | None = None) -> list[int]:
    """Multiprocess mode: drop the live-gauge files of worker pids that no longer exist (a worker killed
    without running its exit handlers). Returns the pids pruned. Counters are never touched."""
    path = path or _MP_DIR
    dead: set[int] = set()
    for f in glob.glob(os.path.join(path, "gauge_live*.db")):
        m = _LIVE_FILE.match(os.path.basename(f))
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        prom_mp.mark_process_dead(pid, path)
    return sorted(dead)


def _mark_this_worker_dead(pid: int = os.getpid()) -> None:
    if os.getpid() == pid:  # not in a forked child that inherited the handler
        with contextlib.suppress(OSError):
            prom_mp.mark_process_dead(pid, _MP_DIR)


if _MP:
    atexit.register(_mark_this_worker_dead)


def render_metrics() -> tuple[bytes, str]:
    """The Prometheus text exposition of this process, or of all workers in multiprocess mode."""
    if _MP:
        with contextlib.suppress(OSError):  # a racing worker removed a file first
            prune_dead_workers()
        registry = CollectorRegistry()
        prom_mp.MultiProcessCollector(registry)
        for _ in range(2):  # another worker pruned a dead worker's file between listing and reading it
            with contextlib.suppress(FileNotFoundError):
                return generate_latest(registry), CONTENT_TYPE_LATEST
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
        logger_factory=structlog.PrintLoggerFactory(),  # sys.stdout at call time (capturable in tests)
        cache_logger_on_first_use=False,
    )
