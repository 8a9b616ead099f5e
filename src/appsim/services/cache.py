"""A bounded, thread-safe LRU cache of similarity results for repeated queries.

Key: ``(model version, artifact vectors_sha256, index backend name, query key, filters key, k)`` where the
query key is ``("app_id", id)``, ``("vector", sha256 of the float64 bytes)`` or ``("app", sha256 of the
canonical JSON of the metadata)``. The metadata strings are hashed exactly as given: a normalisation the
encoders do not also do (case, whitespace) could merge two queries whose answers differ (e.g. the
category-centroid fallback looks the category up as given).

Invalidation: a reloaded model version with other vectors has another ``vectors_sha256`` (from its
manifest), so its queries never hit the old entries (they age out of the LRU); ``clear(version)`` drops a
version's entries explicitly. A result computed while the version was being swapped is not stored.

Only successful results are cached; errors (unknown app_id, bad vector, ...) are raised every time.
Cached ``SimilarityResult`` objects are shared between callers and must be treated as read-only.
Hits and misses are counted in ``appsim_cache_hits`` / ``appsim_cache_misses`` (label ``model_version``).
Memory: about ``cache_size * (top_k * 0.5 kB + 4 * dim bytes)``; 4,096 entries of top-10 ~ 30 MB.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np
import orjson

from appsim.observability import CACHE_HITS, CACHE_MISSES
from appsim.services.similarity import Filters, ModelVersion, Query, SimilarityResult, SimilarityService


def query_key(query: Query) -> tuple[str, str] | None:
    """``(kind, value)`` identifying the query, or None when it cannot be keyed (the search then runs
    uncached and raises its own error). raises ValidationError when not exactly one of the three is given."""
    kind = query.kind
    if kind == "app_id":
        return ("app_id", str(query.app_id))
    if kind == "vector":
        try:
            v = np.ascontiguousarray(np.asarray(query.vector, dtype=np.float64))
        except (TypeError, ValueError):
            return None
        return ("vector", f"{v.shape}:" + hashlib.sha256(v.tobytes()).hexdigest())
    app = query.app
    assert app is not None
    canon = orjson.dumps(
        {
            "name": app.name,
            "category": app.category,
            "platform": app.platform,
            "description": app.description,
            "extra": dict(sorted((app.extra or {}).items())),
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return ("app", hashlib.sha256(canon).hexdigest())


class SimilarityCache:
    """LRU of at most ``max_entries`` results (``max_entries >= 1``; raises ValueError otherwise).

    ``search(sim, version, query, top_k, filters) -> SimilarityResult`` is a drop-in for
    ``SimilarityService.find_similar`` (same errors) and is what ``create_app`` installs as
    ``container.extras["search"]``. ``hits`` / ``misses`` count this instance's lookups."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = int(max_entries)
        self._data: OrderedDict[Hashable, SimilarityResult] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    @staticmethod
    def key(mv: ModelVersion, query: Query, filters: Filters | None, k: int) -> tuple[Any, ...] | None:
        """The cache key of a query against ``mv`` (None: not cacheable)."""
        qk = query_key(query)
        if qk is None:
            return None
        fk = filters.key() if filters is not None else (None, None)
        sha = str(mv.manifest.get("vectors_sha256") or f"id:{id(mv.vectors)}")
        return (mv.name, sha, getattr(mv.index, "name", "?"), qk, fk, int(k))

    def get(self, key: Hashable) -> SimilarityResult | None:
        """The cached result (marked most recently used) or None; counts a hit or a miss."""
        with self._lock:
            res = self._data.get(key)
            if res is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end(key)
            return res

    def put(self, key: Hashable, result: SimilarityResult) -> None:
        with self._lock:
            self._data[key] = result
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self, version: str | None = None) -> int:
        """Drop the entries of ``version`` (all entries when None); returns how many were dropped."""
        with self._lock:
            if version is None:
                n = len(self._data)
                self._data.clear()
                return n
            stale = [k for k in self._data if isinstance(k, tuple) and k and k[0] == version]
            for k in stale:
                del self._data[k]
            return len(stale)

    def search(
        self,
        sim: SimilarityService,
        version: str,
        query: Query,
        top_k: int | None = None,
        filters: Filters | None = None,
    ) -> SimilarityResult:
        """``sim.find_similar(version, query, top_k, filters)``, answered from the cache when the same query
        was answered before by the same artifact. Errors: as ``SimilarityService.find_similar``."""
        mv = sim.version(version)
        k = sim.check_top_k(top_k)
        key = self.key(mv, query, filters, k)
        if key is None:
            return sim.find_similar(version, query, k, filters)
        res = self.get(key)
        if res is not None:
            CACHE_HITS.labels(version).inc()
            return res
        CACHE_MISSES.labels(version).inc()
        res = sim.find_similar(version, query, k, filters)
        if sim.version(version) is mv:  # not swapped meanwhile: the result belongs to this key
            self.put(key, res)
        return res
