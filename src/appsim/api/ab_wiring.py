"""Runtime wiring of the A/B experiment: event store, controller, assignment and exposure recording.

:func:`install_ab` (one call in ``create_app``) builds, per process (each uvicorn worker runs its own):

* the event store from ``settings.event_store``: a :class:`~appsim.backends.event_store.BufferedEventStore`
  (outage tolerant, at most ``buffer_size`` exposures held in memory) over a
  :class:`~appsim.backends.event_store.SQLAlchemyEventStore` on SQLite (default ``var/events.sqlite``,
  folder created) or PostgreSQL (``postgresql+psycopg://...``);
* the :class:`~appsim.services.ab_testing.ABTestController` over ``settings.experiments``;
* an :class:`ABRuntime` in ``container.extras["ab"]``, used by ``appsim.api.deps.choose_version``
  (:meth:`ABRuntime.assign_request`) and by the routes of ``appsim.api.ab_routes``;
* an ``after_request`` hook recording the exposure of ``/find-similar``, ``/find-similar/batch`` and
  ``/predict`` requests, and an ``on_shutdown`` hook that drains the writer and closes the store.

Serving path. Assignment is a pure hash (no I/O). The exposure is handed to a background writer thread
(:class:`ExposureWriter`, O(1) on the request path) that writes what has accumulated in one transaction
(group commit: ~5 ms per transaction on SQLite with ``synchronous=FULL``, whatever the batch size). When its
queue is full the request writes synchronously (back-pressure, nothing dropped). Store outages are absorbed
by the BufferedEventStore (never raises); counters go to the ``appsim_event_store_buffered`` gauge and the
``appsim_event_store_lost`` counter.

Feedback right after a response: an exposure still queued in this process is written before the outcome
(read-your-writes); an unknown request id is re-checked once after :data:`FEEDBACK_RECHECK_S` seconds,
which covers an exposure another worker is committing at that moment.

Weights changed through the admin API (or an auto-rollback) in one worker reach the others within
:data:`WEIGHTS_SYNC_S` seconds: every process re-reads the audit log in a background thread.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from appsim.backends.event_store import BufferedEventStore, SQLAlchemyEventStore
from appsim.config.settings import ConfigError
from appsim.errors import NotFoundError, UnavailableError, ValidationError
from appsim.jsonsafe import jsonable
from appsim.observability import DECISION, EXPOSURES, SRM_PVALUE, STORE_BUFFERED, STORE_LOST
from appsim.services.ab_events import Exposure
from appsim.services.ab_testing import ABTestController, ExperimentConfig, parse_experiments

if TYPE_CHECKING:
    from appsim.app import Container

log = structlog.get_logger("appsim.ab")

#: endpoint names (as passed by the routes to the ``after_request`` hooks) whose requests are exposures
AB_ENDPOINTS: frozenset[str] = frozenset({"find-similar", "find-similar-batch", "predict"})
#: RoutingIn fields that can serve as the randomisation unit
UNIT_FIELDS: tuple[str, ...] = ("advertiser_id", "user_id")
WEIGHTS_SYNC_S = 2.0
FEEDBACK_RECHECK_S = 0.1
LIST_DECISION_MAX_AGE_S = 30.0
REPORT_INTERVAL_S = 60.0  # scheduled experiment analysis: gauges for the alert rules, auto-rollback
WRITER_BATCH = 500
MAX_AUDIT_READ = 10_000


def key_id(key: str) -> str:
    """A non-secret id of an admin key for the audit log: ``key:`` + the first 12 hex digits of its sha256."""
    return "key:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


class ExposureWriter:
    """Writes exposures in a background thread, in batches (one transaction per batch).

    ``submit`` is O(1) and never raises; with ``max_queue`` exposures already waiting it writes the exposure
    itself (back-pressure rather than loss). ``store`` must not raise on writes (a BufferedEventStore).
    ``on_batch`` is called after each batch (gauges). Thread-safe.
    """

    def __init__(
        self,
        store: BufferedEventStore,
        *,
        max_queue: int = 10_000,
        batch_size: int = WRITER_BATCH,
        on_batch: Any = None,
    ) -> None:
        self.store = store
        self.max_queue = max(1, max_queue)
        self.batch_size = batch_size
        self.on_batch = on_batch
        self._queue: deque[Exposure] = deque()
        self._pending: set[str] = set()  # request ids queued or being written
        self._inflight = 0
        self._closed = False
        self._cv = threading.Condition()
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="ab-exposure-writer", daemon=True)
        self._thread.start()

    def submit(self, e: Exposure) -> None:
        """Queue ``e`` for writing (or write it now when the queue is full or the writer is closed)."""
        with self._cv:
            if not self._closed and len(self._queue) < self.max_queue:
                self._queue.append(e)
                self._pending.add(e.request_id)
                self._cv.notify()
                return
        self.store.record_exposure(e)  # never raises

    def is_pending(self, request_id: str) -> bool:
        with self._cv:
            return request_id in self._pending

    @property
    def queued(self) -> int:
        with self._cv:
            return len(self._queue) + self._inflight

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything submitted so far is written; ``False`` on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._queue and not self._inflight, timeout=timeout_s)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                n = min(self.batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(n)]
                self._inflight = n
            try:
                self.store.record_exposures(batch)
            except Exception:  # BufferedEventStore does not raise; never let the writer die
                log.exception("ab.exposure_write_failed", batch=len(batch))
            finally:
                with self._cv:
                    for e in batch:
                        self._pending.discard(e.request_id)
                    self._inflight = 0
                    self.written += len(batch)
                    self._cv.notify_all()
            if self.on_batch is not None:
                try:
                    self.on_batch()
                except Exception:  # gauges are not worth a dead writer
                    log.exception("ab.gauge_update_failed")

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything still queued, then stop the thread (idempotent)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=timeout_s)
        with self._cv:  # the thread did not finish in time: write the rest here
            rest = list(self._queue)
            self._queue.clear()
        if rest:
            self.store.record_exposures(rest)


class ABRuntime:
    """The experiment as the API sees it (``container.extras["ab"]``).

    ``store``: the (buffered) event store; ``controller``: the :class:`ABTestController`;
    ``model_versions``: the configured model versions (each variant must serve one of them).
    """

    def __init__(
        self,
        controller: ABTestController,
        store: BufferedEventStore,
        *,
        max_queue: int = 10_000,
        weights_sync_s: float | None = WEIGHTS_SYNC_S,
    ) -> None:
        self.controller = controller
        self.store = store
        self._lost_reported = 0
        self._gauge_lock = threading.Lock()
        self._reports: dict[str, tuple[float, dict[str, Any]]] = {}
        self._decisions: dict[str, set[str]] = {}
        self.writer = ExposureWriter(store, max_queue=max_queue, on_batch=self.update_store_gauges)
        self._stop = threading.Event()
        self._sync_thread: threading.Thread | None = None
        if weights_sync_s is not None and controller.experiments:
            self._sync_thread = threading.Thread(
                target=self._sync_loop, args=(weights_sync_s,), name="ab-weights-sync", daemon=True
            )
            self._sync_thread.start()
        self._closed = False

    # ---- serving path

    def assign_request(self, routing: Any, request_id: str) -> dict[str, Any] | None:
        """The assignment of one request, or ``None`` (no experiment running: the default version serves).

        ``routing``: a ``RoutingIn`` (``model_version``, ``advertiser_id``, ``user_id``, ``force_variant``).
        An explicit ``model_version`` bypasses the experiment (``None``, not an exposure). The unit is the
        routing field named by the experiment's ``unit``; when it is absent the request id is used
        (``unit_fallback: true``, randomised per request, not sticky). ``force_variant`` (a variant name or
        model version) is served and recorded with ``forced: true``, never analysed; it is ignored when no
        experiment is running. Returns ``experiment_id, variant, model_version, unit_id, forced,
        unit_fallback, in_experiment, reason``. Raises ``ValidationError`` (field ``force_variant``) for an
        unknown forced variant.
        """
        if getattr(routing, "model_version", None) is not None:
            return None
        cfg = self.controller.active_experiment()
        if cfg is None:
            return None
        unit = getattr(routing, cfg.unit, None) if cfg.unit in UNIT_FIELDS else None
        forced = getattr(routing, "force_variant", None)
        try:
            a = self.controller.assign(unit, request_id, forced, experiment_id=cfg.id)
        except ValidationError as exc:
            if exc.field == "forced_variant":
                raise ValidationError(exc.detail, field="force_variant", **exc.extra) from None
            raise
        return {
            "experiment_id": a.experiment_id,
            "variant": a.variant,
            "model_version": a.model_version,
            "unit_id": a.unit_id,
            "forced": a.forced,
            "unit_fallback": a.unit_fallback,
            "in_experiment": a.in_experiment,
            "reason": a.reason,
        }

    def after_request(
        self,
        *,
        request_id: str,
        endpoint: str,
        model_version: str,
        assignment: Mapping[str, Any] | None,
        latency_ms: float,
        error: str | None = None,
        error_status: int | None = None,
        **_: Any,
    ) -> None:
        """``after_request`` hook: queue the exposure of an experiment request (latency in ms, ``error`` the
        problem code or ``None``). Only requests of :data:`AB_ENDPOINTS` that are in the experiment or
        forced are exposures; explicit ``model_version`` requests have no assignment. A request rejected
        for the caller's own mistake (``error_status`` 4xx: bad input, unknown app id) is not an exposure:
        no model version served it, and counting it would let one client's bad requests trip the error-rate
        guardrail. Server-side failures (5xx) are exposures with their error. Never raises."""
        if not assignment or endpoint not in AB_ENDPOINTS:
            return
        if error is not None and error_status is not None and error_status < 500:
            return
        if not (assignment.get("in_experiment") or assignment.get("forced")):
            return
        try:
            lat = float(latency_ms)
            if not math.isfinite(lat) or lat < 0:
                lat = 0.0
            e = Exposure(
                request_id=str(request_id),
                experiment_id=str(assignment["experiment_id"]),
                unit_id=str(assignment.get("unit_id") or request_id),
                variant=str(assignment["variant"]),
                model_version=str(assignment.get("model_version") or model_version),
                endpoint=endpoint,
                latency_ms=lat,
                error=error or None,
                forced=bool(assignment.get("forced")),
                ts=datetime.now(UTC),
            )
            self.writer.submit(e)
            if not e.forced:
                EXPOSURES.labels(e.experiment_id, e.variant).inc()
        except Exception:  # an exposure is never worth a failed request
            log.exception("ab.exposure_failed", endpoint=endpoint)

    # ---- feedback

    def record_feedback(self, items: Sequence[Mapping[str, Any]]) -> list[bool]:
        """Record outcomes (dicts ``event_id, request_id, kind, value, ts``), all or nothing; per item
        ``True`` if new, ``False`` if its ``event_id`` was already recorded. Raises ``ValidationError`` /
        ``NotFoundError`` (``extra['index']`` the item; nothing written) or ``UnavailableError``."""
        if any(self.writer.is_pending(str(i.get("request_id"))) for i in items):
            self.writer.flush()
        try:
            return self.controller.record_outcomes(items)
        except NotFoundError:
            time.sleep(FEEDBACK_RECHECK_S)  # an exposure may be being committed by another worker
            return self.controller.record_outcomes(items)

    # ---- experiments

    def report(self, experiment_id: str) -> dict[str, Any]:
        """The controller's full report (``ABTestController.report``; JSON-safe, no NaN), fresh; updates
        the SRM / decision gauges. Raises ``NotFoundError`` or ``UnavailableError``."""
        self.controller.get(experiment_id)
        self._sync_quietly()
        if self.writer.queued:
            self.writer.flush()
        report = self.controller.report(experiment_id)
        self._reports[experiment_id] = (time.monotonic(), report)
        self._update_report_gauges(experiment_id, report)
        return report

    def summaries(self, max_age_s: float = LIST_DECISION_MAX_AGE_S) -> list[dict[str, Any]]:
        """Every configured experiment with its weights in force and its decision (from a report at most
        ``max_age_s`` old, computed if needed; ``decision: null`` and ``decision_error`` when the store is
        unavailable). Never raises for store errors."""
        self._sync_quietly()
        now = datetime.now(UTC)
        active = self.controller.active_experiment()
        out: list[dict[str, Any]] = []
        for cfg in self.controller.experiments:
            weights = self.controller.weights(cfg.id)
            item: dict[str, Any] = {
                "id": cfg.id,
                "unit": cfg.unit,
                "control": cfg.control_name,
                "enabled": cfg.enabled,
                "active": cfg.is_active(now),
                "serving": active is not None and active.id == cfg.id,
                "start": cfg.start,
                "end": cfg.end,
                "primary_metric": cfg.primary_metric,
                "variants": [
                    {
                        "name": v.name,
                        "model_version": v.model_version,
                        "weight": weights.get(v.name, 0.0),
                        "configured_weight": v.weight,
                    }
                    for v in cfg.variants
                ],
                "weights": weights,
                "decision": None,
                "decision_reasons": [],
                "decided_at": None,
                "decision_error": None,
            }
            cached = self._reports.get(cfg.id)
            try:
                report = (
                    cached[1]
                    if cached is not None and time.monotonic() - cached[0] <= max_age_s
                    else self.report(cfg.id)
                )
                item.update(
                    decision=report["decision"],
                    decision_reasons=report["decision_reasons"],
                    decided_at=report["generated_at"],
                    weights=report["weights"],
                )
            except UnavailableError as exc:
                item["decision_error"] = exc.detail
            out.append(jsonable(item))
        return out

    def set_weights(
        self,
        experiment_id: str,
        weights: Mapping[str, float],
        *,
        admin_key: str,
        actor: str | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Change the weights (audited ``ab.set_weights``; actor = ``actor`` or the key's :func:`key_id`,
        whose id is always in the payload as ``key_id``). Returns ``experiment_id, weights, previous,
        actor, effective_at``. Raises ``NotFoundError`` / ``ValidationError`` / ``UnavailableError``."""
        self.controller.get(experiment_id)
        self._sync_quietly()
        previous = self.controller.weights(experiment_id)
        kid = key_id(admin_key)
        who = actor or kid
        new = self.controller.set_weights(experiment_id, weights, who, reason=reason, extra={"key_id": kid})
        self._reports.pop(experiment_id, None)
        history = self.controller.weight_history(experiment_id)
        return {
            "experiment_id": experiment_id,
            "weights": new,
            "previous": previous,
            "actor": who,
            "effective_at": history[-1]["start"],
        }

    def audit(self, experiment_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The audit entries of ``experiment_id``, newest first, at most ``limit``: ``id, ts, actor,
        action, payload``. Raises ``NotFoundError`` or ``UnavailableError``."""
        self.controller.get(experiment_id)
        entries = self.store.audit_log(MAX_AUDIT_READ)
        mine = [e for e in entries if (e.get("payload") or {}).get("experiment_id") == experiment_id]
        return [jsonable(dict(e)) for e in mine[:limit]]

    # ---- gauges, sync, lifecycle

    def update_store_gauges(self) -> None:
        """``appsim_event_store_buffered`` = exposures held in memory (outage queue + writer queue);
        ``appsim_event_store_lost`` += exposures dropped since the last update."""
        stats = self.store.stats()
        with self._gauge_lock:
            STORE_BUFFERED.set(stats["pending"] + self.writer.queued)
            lost = stats["lost"] - self._lost_reported
            if lost > 0:
                STORE_LOST.inc(lost)
                self._lost_reported = stats["lost"]

    def _update_report_gauges(self, experiment_id: str, report: Mapping[str, Any]) -> None:
        p = (report.get("srm") or {}).get("p_value")
        SRM_PVALUE.labels(experiment_id).set(math.nan if p is None else float(p))
        decision = str(report.get("decision"))
        with self._gauge_lock:
            seen = self._decisions.setdefault(experiment_id, set())
            seen.add(decision)
            for d in seen:
                DECISION.labels(experiment_id, d).set(1.0 if d == decision else 0.0)

    def _sync_quietly(self) -> None:
        try:
            self.controller.sync_weights_from_audit()
        except Exception as exc:  # keep the weights we have
            log.warning("ab.weights_sync_failed", error=str(exc))

    def _sync_loop(self, interval_s: float) -> None:
        last_report = time.monotonic()
        while not self._stop.wait(interval_s):
            try:
                if self.controller.sync_weights_from_audit():
                    log.info(
                        "ab.weights_synced",
                        weights={c.id: self.controller.weights(c.id) for c in self.controller.experiments},
                    )
            except Exception as exc:
                log.warning("ab.weights_sync_failed", error=str(exc))
            if time.monotonic() - last_report >= REPORT_INTERVAL_S:
                last_report = time.monotonic()
                self._report_all_quietly()

    def _report_all_quietly(self) -> None:
        """Scheduled analysis (every ``REPORT_INTERVAL_S``): refreshes the SRM / decision / event-store gauges
        that the alert rules read, and lets a guardrail breach roll traffic back (``auto_rollback``) even
        when nobody reads ``GET /experiments``. Never raises."""
        self.update_store_gauges()
        for cfg in self.controller.experiments:
            try:
                self.report(cfg.id)
            except Exception as exc:  # the store may be down; the next round retries
                log.warning("ab.scheduled_report_failed", experiment=cfg.id, error=str(exc))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write every exposure submitted so far (queued here or in the outage buffer); ``True`` when
        nothing is left in memory."""
        done = self.writer.flush(timeout_s)
        self.store.flush()
        return done and self.store.pending == 0

    def close(self) -> None:
        """Drain the writer, stop the threads, close the store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.writer.close()
        if self._sync_thread is not None:
            self._sync_thread.join(timeout=5.0)
        self.store.close()
        self.update_store_gauges()
        log.info("ab.closed", written=self.writer.written, **self.store.stats())


def _check_model_versions(configs: Sequence[ExperimentConfig], known: Sequence[str]) -> None:
    for cfg in configs:
        unknown = sorted({v.model_version for v in cfg.variants} - set(known))
        if unknown:
            raise ConfigError(
                f"experiments: {cfg.id!r} serves model versions {unknown} that are not configured "
                f"(model_versions: {sorted(known)})"
            )
        if cfg.unit not in UNIT_FIELDS:
            log.warning(
                "ab.unit_not_in_requests",
                experiment_id=cfg.id,
                unit=cfg.unit,
                note="every request falls back to its request id (not sticky)",
            )


def install_ab(container: Container) -> ABRuntime:
    """Build the event store, the controller and the :class:`ABRuntime`; register it as
    ``container.extras["ab"]`` with its ``after_request`` and ``on_shutdown`` hooks.

    Raises ``ConfigError`` for an invalid experiment config or a variant serving an unconfigured model
    version, ``ValidationError`` for an unsupported store URL and ``UnavailableError`` when the database is
    unreachable at start (the store migrates its schema on start).
    """
    s = container.settings
    try:
        configs = parse_experiments(s.experiments)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc.detail}") from None
    _check_model_versions(configs, list(s.model_versions))
    inner = SQLAlchemyEventStore(s.event_store.url)
    store = BufferedEventStore(inner, max_buffer=s.event_store.buffer_size)
    try:
        controller = ABTestController(
            configs, store, default_model_version=s.default_model_version, restore_from_audit=True
        )
    except BaseException:
        store.close()
        raise
    runtime = ABRuntime(controller, store, max_queue=max(1, s.event_store.buffer_size))
    container.extras["ab"] = runtime
    container.extras.setdefault("after_request", []).append(runtime.after_request)
    from appsim.api.shadow import ShadowRunner

    shadow = ShadowRunner(container, configs)
    if shadow.enabled:  # experiments with `shadow: true`: the other variant runs off the response path
        container.extras["shadow"] = shadow
        container.extras["after_request"].append(shadow.after_request)
    container.extras.setdefault("on_shutdown", []).append(lambda _c: runtime.close())
    log.info("ab.installed", store=repr(inner), experiments=[c.id for c in configs])
    return runtime
