"""Shadow mode: for an experiment with ``shadow: true``, every served ``/find-similar`` request of the
experiment is also answered by the OTHER variant's model version, off the response path, and the overlap@k
of the two neighbour lists is recorded (``appsim_shadow_overlap_at_k`` histogram and a log line).

overlap@k = |served top-k ∩ shadow top-k| / k, with k the number of neighbours served. Only ``app_id`` and
metadata queries can be shadowed (a raw vector belongs to one version's space). The work runs in one
background thread fed by a bounded queue: when the queue is full the comparison is skipped and counted
(``appsim_shadow_skipped_total``), so shadow traffic never slows or fails a request.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import structlog

from appsim.observability import SHADOW_OVERLAP, SHADOW_SKIPPED

log = structlog.get_logger("appsim.shadow")


def overlap_at_k(served: list[str], shadow: list[str]) -> float:
    """|served ∩ shadow| / len(served); 0.0 for an empty served list."""
    return len(set(served) & set(shadow)) / len(served) if served else 0.0


class ShadowRunner:
    """Bounded background comparison of the served and the other variant's neighbours."""

    def __init__(self, container: Any, configs: list[Any], max_queue: int = 256) -> None:
        self._container = container
        self._other: dict[tuple[str, str], str] = {}
        for cfg in configs:
            if getattr(cfg, "shadow", False):
                versions = [v.model_version for v in cfg.variants]
                for v in cfg.variants:
                    others = [m for m in versions if m != v.model_version]
                    if others:
                        self._other[(cfg.id, v.name)] = others[0]
        self._q: queue.Queue[tuple[str, str, str, Any, list[str]] | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        if self._other:
            self._thread = threading.Thread(target=self._run, name="ab-shadow", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return bool(self._other)

    def after_request(
        self,
        *,
        endpoint: str,
        assignment: Any,
        error: str | None = None,
        result: Any = None,
        query: Any = None,
        **_: Any,
    ) -> None:
        """``after_request`` hook (never raises, never blocks)."""
        if (
            not self._other
            or error is not None
            or result is None
            or endpoint != "find-similar"
            or not assignment
        ):
            return
        key = (str(assignment.get("experiment_id")), str(assignment.get("variant")))
        other = self._other.get(key)
        if other is None or assignment.get("forced"):
            return
        if query is None or getattr(query, "vector", None) is not None:
            SHADOW_SKIPPED.labels(key[0], "vector_query").inc()
            return
        served = [n.app_id for n in result.neighbours]
        try:
            self._q.put_nowait((key[0], result.model_version, other, query, served))
        except queue.Full:
            SHADOW_SKIPPED.labels(key[0], "queue_full").inc()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            experiment, served_version, other, query, served = item
            try:
                sim = self._container.similarity
                res = sim.find_similar(other, query, top_k=max(1, len(served)))
                value = overlap_at_k(served, [n.app_id for n in res.neighbours])
                SHADOW_OVERLAP.labels(experiment, served_version, other).observe(value)
                log.info(
                    "shadow",
                    experiment=experiment,
                    served=served_version,
                    shadow=other,
                    overlap_at_k=round(value, 4),
                    k=len(served),
                )
            except Exception as e:  # shadow work never affects serving
                SHADOW_SKIPPED.labels(experiment, "error").inc()
                log.warning("shadow comparison failed", error=f"{type(e).__name__}: {e}")
            finally:
                self._q.task_done()

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until queued comparisons are done (tests, shutdown); ``True`` when the queue is empty."""
        import time

        deadline = time.monotonic() + timeout_s
        while self._q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._q.unfinished_tasks
