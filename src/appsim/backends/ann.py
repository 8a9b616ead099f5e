"""Approximate nearest neighbours: ``HNSWIndex``, faiss ``IndexHNSWFlat`` over inner product.

Same contract as ``ExactIndex`` (``appsim.domain.IndexBackend``): ``search(queries (m, d) float32
L2-normalised, k, allowed (size,) bool | None) -> (scores (m, k') float32, rows (m, k') int64)`` with
``k' = min(k, allowed rows)``, scores descending, ties broken by ``tiebreak`` ascending.

How a search runs (the allowed mask is always applied *before* ranking, as in ``ExactIndex``):

1. ``allowed`` is None, or blocks at most ``post_filter_max_blocked`` rows (the app_id query's own row):
   the graph is searched without a selector for ``k + pad + blocked`` candidates and blocked rows are
   dropped. No per-query bitmap is built for the common "exclude self" case.
2. ``n_allowed**2 <= filter_cost_ratio * ef_search * size`` (a selective filter): exact search over the
   allowed rows only (a gather plus one matrix product). With a filter the graph walk still visits
   blocked nodes, so at a fixed efSearch recall collapses (measured at 100k x 64, efSearch 128: 0.92 at
   10% allowed, 0.73 at 5%, 0.50 at 2%); efSearch must grow as 1/fraction to keep recall, and then the
   walk costs ~ ``ratio * ef_search / fraction`` row dot products against ``n_allowed`` for the scan.
   ``filter_cost_ratio`` (22) was measured with ``bench/bench_index.py --filters`` (docs/benchmarks.md).
3. Otherwise: HNSW with ``SearchParametersHNSW(sel=IDSelectorBitmap(allowed), efSearch=ef_search /
   fraction)`` (capped at ``ef_cap``): recall stays at the unfiltered level (0.998 at 10% allowed).

The graph returns ``k + pad`` candidates (``pad = max(8, k // 2)``) which are re-scored exactly with numpy
and ordered by score desc then tiebreak asc, so ties (duplicate apps) are broken exactly as ``ExactIndex``
breaks them among the returned candidates. A query for which the graph finds fewer than ``k'`` allowed
candidates falls back to exact search, so ``k'`` is the same for every query.

Threads: OpenMP's thread count is per calling thread (``omp_set_num_threads`` in the main thread does not
reach FastAPI's worker threads), so every search sets it to ``threads`` first. The build with one thread is
deterministic (faiss seeds the level generator); with more threads the graph depends on scheduling.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from appsim.backends.index import ExactIndex, topk_rows

_faiss: Any = faiss  # the wheel's stubs miss SearchParametersHNSW and the numpy IDSelectorBitmap wrapper

# Filter rule (measured, docs/benchmarks.md "filters"): an exact scan of the allowed rows costs ~ n_allowed
# row dot products; a filtered graph walk with efSearch scaled by 1/fraction costs ~ FILTER_COST_RATIO
# row dot products per unit of efSearch, i.e. ~ C * ef_search * size / n_allowed. Exact is cheaper when
# n_allowed**2 <= C * ef_search * size (about 16.8k allowed rows of 100k, 53k of 1M at efSearch 128).
FILTER_COST_RATIO = 22.0
POST_FILTER_MAX_BLOCKED = 64
EF_CAP = 8192


def _pad(k: int) -> int:
    return max(8, k // 2)


class HNSWIndex:
    """HNSW over ``vectors`` ((n, d) float32, L2-normalised; copied into the faiss index).

    Attributes: ``name = "hnsw"``, ``dim``, ``size``, ``m``, ``ef_construction``, ``ef_search``,
    ``threads``, ``build_seconds`` (graph construction, s; ~0 with ``prebuilt``), ``recall_at_k`` (mean
    recall@``recall_k`` of ``recall_queries`` catalogue rows as queries, their own row excluded, against
    ``ExactIndex``; None when not measured) and ``recall_seconds``.

    ``prebuilt``: an ``IndexHNSWFlat`` over the same rows (read with ``faiss.read_index``) used instead of
    building the graph. raises ValueError for a non-2-D ``vectors``, a ``tiebreak`` of the wrong length or a
    ``prebuilt`` index of another shape or metric.
    """

    name = "hnsw"

    def __init__(
        self,
        vectors: np.ndarray,
        tiebreak: np.ndarray | None = None,
        *,
        m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        threads: int | None = None,
        recall_k: int = 20,
        recall_queries: int = 200,
        seed: int = 0,
        filter_cost_ratio: float = FILTER_COST_RATIO,
        post_filter_max_blocked: int = POST_FILTER_MAX_BLOCKED,
        ef_cap: int = EF_CAP,
        prebuilt: Any | None = None,
    ) -> None:
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (n, d), got shape {vectors.shape}")
        self._x = vectors
        self.size, self.dim = int(vectors.shape[0]), int(vectors.shape[1])
        self._tiebreak = (
            np.arange(self.size, dtype=np.int64) if tiebreak is None else np.asarray(tiebreak, dtype=np.int64)
        )
        if self._tiebreak.shape != (self.size,):
            raise ValueError(f"tiebreak must have shape ({self.size},), got {self._tiebreak.shape}")
        self.m, self.ef_construction, self.ef_search = int(m), int(ef_construction), int(ef_search)
        # None: the calling thread's current OpenMP limit (load_all bounds it to settings.threads.blas)
        self.threads = int(threads) if threads is not None else int(faiss.omp_get_max_threads())
        self.filter_cost_ratio = float(filter_cost_ratio)
        self.post_filter_max_blocked = int(post_filter_max_blocked)
        self.ef_cap = int(ef_cap)
        self._exact = ExactIndex(vectors, self._tiebreak)

        faiss.omp_set_num_threads(self.threads)
        t0 = time.perf_counter()
        if prebuilt is not None:  # a graph saved with faiss.write_index(index.faiss_index, path)
            if (prebuilt.ntotal, prebuilt.d) != (self.size, self.dim) or prebuilt.metric_type != 0:
                raise ValueError(
                    f"prebuilt index has {prebuilt.ntotal} x {prebuilt.d} (metric {prebuilt.metric_type}), "
                    f"expected {self.size} x {self.dim} inner product"
                )
            self._index = prebuilt
            self.m = int(prebuilt.hnsw.nb_neighbors(1))
            self.ef_construction = int(prebuilt.hnsw.efConstruction)
        else:
            self._index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = self.ef_construction
            if self.size:
                self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._index.hnsw.efSearch = self.ef_search
        self.build_seconds = time.perf_counter() - t0

        self.recall_k = int(recall_k)
        self.recall_at_k: float | None = None
        self.recall_seconds: float | None = None
        if recall_queries > 0 and self.size > 1:
            t0 = time.perf_counter()
            self.recall_at_k = self.measure_recall(self.recall_k, recall_queries, seed=seed)
            self.recall_seconds = time.perf_counter() - t0

    @property
    def faiss_index(self) -> Any:
        """The underlying ``faiss.IndexHNSWFlat`` (e.g. to persist it with ``faiss.write_index``)."""
        return self._index

    # -- measurement ---------------------------------------------------------------------------------
    def measure_recall(self, k: int = 20, n_queries: int = 200, *, seed: int = 0) -> float:
        """Mean recall@``k`` (0..1) over ``n_queries`` catalogue rows (sampled with ``seed``) used as queries,
        each query's own row excluded (as the service does for an app_id query), against ``ExactIndex``."""
        rng = np.random.default_rng(seed)
        n_q = min(n_queries, self.size)
        rows = np.sort(rng.choice(self.size, size=n_q, replace=False))
        q = np.asarray(self._x[rows], dtype=np.float32)
        kk = min(k + 1, self.size)
        hits = 0
        total = 0
        for start in range(0, n_q, 32):  # chunks bound the exact score matrix (32 x size float32)
            sl = slice(start, start + 32)
            _, truth = self._exact.search(q[sl], kk)
            _, got = self.search(q[sl], kk)
            for r, t, g in zip(rows[sl], truth, got, strict=True):
                ts = [int(x) for x in t if x != r][:k]
                gl = [int(x) for x in g if x != r][:k]
                hits += len(set(ts) & set(gl))
                total += len(ts)
        return hits / total if total else 1.0

    # -- search --------------------------------------------------------------------------------------
    def _graph(
        self, q: np.ndarray, n_cand: int, sel: Any | None = None, fraction: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        faiss.omp_set_num_threads(self.threads)
        ef = min(int(np.ceil(max(self.ef_search, n_cand) / max(fraction, 1e-9))), max(self.ef_cap, n_cand))
        params = _faiss.SearchParametersHNSW(efSearch=ef)
        if sel is not None:
            params.sel = sel
        return self._index.search(q, n_cand, params=params)

    def _exact_subset(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sub = np.flatnonzero(allowed)
        xs = np.asarray(self._x[sub], dtype=np.float32)
        tb = self._tiebreak[sub]
        s = q @ xs.T
        kk = min(k, sub.size)
        rows = np.empty((q.shape[0], kk), dtype=np.int64)
        for i in range(q.shape[0]):
            rows[i] = topk_rows(s[i], kk, tb)
        scores = np.take_along_axis(s, rows, axis=1)
        return np.clip(scores, -1.0, 1.0).astype(np.float32), sub[rows]

    def exact_is_cheaper(self, n_allowed: int) -> bool:
        """The filter rule: scan the ``n_allowed`` rows exactly rather than walk the graph with a selector."""
        return float(n_allowed) ** 2 <= self.filter_cost_ratio * self.ef_search * self.size

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query; see the module docstring and ``appsim.domain.IndexBackend``.

        ``queries`` (m, dim) or (dim,) float32; ``allowed`` (size,) bool. Returns ``(scores (m, k')
        float32, rows (m, k') int64)``, ``k' = min(k, allowed rows)``."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        m = q.shape[0]
        n_allowed = self.size if allowed is None else int(np.count_nonzero(allowed))
        kk = min(int(k), n_allowed)
        if kk <= 0 or m == 0:
            return np.empty((m, 0), dtype=np.float32), np.empty((m, 0), dtype=np.int64)
        blocked = self.size - n_allowed
        sel = None
        if allowed is not None and blocked > self.post_filter_max_blocked:
            if self.exact_is_cheaper(n_allowed):
                return self._exact_subset(q, kk, allowed)
            bits = np.packbits(allowed, bitorder="little")
            sel = _faiss.IDSelectorBitmap(bits)
            n_cand = min(kk + _pad(kk), n_allowed)
        else:
            n_cand = min(kk + _pad(kk) + blocked, self.size)
        _, cand = self._graph(q, n_cand, sel, n_allowed / self.size)

        out_rows = np.empty((m, kk), dtype=np.int64)
        out_scores = np.empty((m, kk), dtype=np.float32)
        for i in range(m):
            c = cand[i]
            c = c[c >= 0]
            if allowed is not None:
                c = c[allowed[c]]
            if c.size < kk:  # the graph walk found too few allowed rows: exact for this query
                s_i, r_i = self._exact.search(q[i : i + 1], kk, allowed)
                out_scores[i], out_rows[i] = s_i[0], r_i[0]
                continue
            s = np.asarray(self._x[c], dtype=np.float32) @ q[i]
            order = np.lexsort((self._tiebreak[c], -s.astype(np.float64)))[:kk]
            out_rows[i] = c[order]
            out_scores[i] = s[order]
        return np.clip(out_scores, -1.0, 1.0), out_rows


def make_hnsw_factory(
    cfg: Any, *, threads: int | None = None, recall_queries: int = 200
) -> Callable[..., HNSWIndex]:
    """``cfg``: an ``IndexConfig`` (``hnsw_m``, ``hnsw_ef_construction``, ``hnsw_ef_search``). Returns
    ``factory(vectors (n, d) float32, tiebreak (n,) int64 | None) -> HNSWIndex``, the shape
    ``load_model_version(index_factory=...)`` expects. ``threads`` None: the building thread's OpenMP limit
    (``load_all`` sets it from ``settings.threads.blas``)."""

    def factory(vectors: np.ndarray, tiebreak: np.ndarray | None = None) -> HNSWIndex:
        return HNSWIndex(
            vectors,
            tiebreak,
            m=cfg.hnsw_m,
            ef_construction=cfg.hnsw_ef_construction,
            ef_search=cfg.hnsw_ef_search,
            threads=threads,
            recall_queries=recall_queries,
        )

    return factory


def clustered_vectors(
    n: int,
    d: int,
    *,
    seed: int = 0,
    n_clusters: int | None = None,
    intrinsic: int = 16,
    spread: float = 0.6,
    noise: float = 0.15,
) -> np.ndarray:
    """Seeded synthetic catalogue for tests and benchmarks: ``(n, d) float32`` L2-normalised rows.

    ``n_clusters`` (default ``max(8, n // 1000)``) topic centres on the unit sphere; each row is its centre
    plus a Gaussian in a per-cluster random ``intrinsic``-dimensional subspace (scale ``spread``) plus
    isotropic noise (scale ``noise``), then normalised: clustered, with a low intrinsic dimension like
    real text embeddings, and not trivially easy for a graph index."""
    rng = np.random.default_rng(seed)
    c = n_clusters or max(8, n // 1000)
    centres = rng.standard_normal((c, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((c, intrinsic, d), dtype=np.float32) / np.float32(np.sqrt(d))
    assign = rng.integers(0, c, size=n)
    order = np.argsort(assign, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=c))])
    out = np.empty((n, d), dtype=np.float32)
    for j in range(c):
        rows = order[bounds[j] : bounds[j + 1]]
        z = rng.standard_normal((rows.size, intrinsic), dtype=np.float32) * np.float32(spread)
        x = centres[j] + z @ bases[j]
        x += rng.standard_normal((rows.size, d), dtype=np.float32) * np.float32(noise / np.sqrt(d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[rows] = x
    return out
