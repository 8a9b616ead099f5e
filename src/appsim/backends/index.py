"""Index backends: exact top-k by inner product (cosine on L2-normalised rows).

``ExactIndex`` is a brute-force matrix product with numpy (one BLAS sgemv/sgemm per call): for the real
catalogue (6.5k x 384 float32, 10 MB) a query scans the whole matrix in well under a millisecond.
Ties are broken deterministically: score descending, then ``tiebreak`` ascending (the rank of the app id in
sorted order), so the first 5 of a top-50 always equal the top-5.
"""

from __future__ import annotations

import numpy as np


def topk_rows(scores: np.ndarray, k: int, tiebreak: np.ndarray) -> np.ndarray:
    """Row numbers of the ``k`` best entries of ``scores`` ((n,) float32, -inf = excluded), ordered by score
    desc then ``tiebreak`` asc. Rows tied with the k-th score are all candidates, so truncation is exact."""
    valid = int(np.isfinite(scores).sum())
    k = min(k, valid)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < scores.shape[0]:
        kth = np.partition(scores, scores.shape[0] - k)[scores.shape[0] - k]
        cand = np.flatnonzero(scores >= kth)
    else:
        cand = np.flatnonzero(np.isfinite(scores))
    order = np.lexsort((tiebreak[cand], -scores[cand].astype(np.float64)))
    return cand[order[:k]].astype(np.int64)


class ExactIndex:
    """Exact search over ``vectors`` ((n, d) float32, L2-normalised; may be a read-only memmap)."""

    name = "exact"

    def __init__(self, vectors: np.ndarray, tiebreak: np.ndarray | None = None) -> None:
        # a plain ndarray view of the (memory-mapped) rows: same pages, no copy, but without np.memmap's
        # per-operation __array_finalize__ overhead on every query
        self._x = np.asarray(vectors)
        self.size, self.dim = int(vectors.shape[0]), int(vectors.shape[1])
        self._tiebreak = (
            np.arange(self.size, dtype=np.int64) if tiebreak is None else np.asarray(tiebreak, dtype=np.int64)
        )

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """``(m, n) float32`` cosine similarities of each query to every row."""
        return np.asarray(queries, dtype=np.float32) @ self._x.T

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query; see ``appsim.domain.IndexBackend``. Returns lists per query when the
        number of results differs (never here: it is ``min(k, allowed rows)`` for every query)."""
        s = self.scores(np.atleast_2d(queries))
        if allowed is not None:
            s[:, ~allowed] = -np.inf
        rows = [topk_rows(row, k, self._tiebreak) for row in s]
        kk = min((len(r) for r in rows), default=0)
        out_rows = np.stack([r[:kk] for r in rows]) if rows else np.empty((0, 0), dtype=np.int64)
        out_scores = np.take_along_axis(s, out_rows, axis=1) if kk else np.empty((len(rows), 0), np.float32)
        return np.clip(out_scores, -1.0, 1.0).astype(np.float32), out_rows
