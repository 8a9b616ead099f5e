"""Offline evaluation of the model versions on held-out apps (``appsim evaluate`` -> docs/evaluation.md).

Catalogues
----------
* **real**: the App Store catalogue built by ``appsim data build`` (``artifacts/real``). Queries are the
  held-out 10% (``holdout.csv``, 734 apps, stable sha256 split), encoded by each version's encoder
  (``<v>/holdout_vectors.npy`` + ``holdout_ids.npy``); the catalogue is ``apps.csv`` with ``<v>/vectors.npy``.
  ``eval/<v>-nocat`` holds the same vectors built WITHOUT the category in the encoded text.
* **mock**: the mock company catalogue (``artifacts/mock``, :func:`appsim.data.build.build_mock`); its apps
  are split by the same stable hash (:func:`appsim.data.real_apps.is_holdout`, 10%), the held-out apps'
  own vectors are the queries, the rest the catalogue.

Metrics (fixed up front; nothing here is tuned toward a winner)
---------------------------------------------------------------
* **Genre precision@k** (k = 10): per query, the share of its k nearest catalogue apps (cosine, exact
  search, ties by app id as the service breaks them) whose category equals the query's; averaged over the
  queries. **Chance**: ``sum_c p_query(c) * p_catalogue(c)``, the expected precision of random
  neighbours. Real catalogue: measured with and without the category in the encoded text.
* **Real outcomes** (real catalogue only; ``neighbours`` = 15 nearest apps of the serving artifacts
  ``v1/``, ``v2/``): ``user_rating`` (stars 0-5; only apps with ``rating_count > 0``, queries and
  neighbours alike) and ``log1p(rating_count)``. Prediction: the similarity-weighted neighbour mean
  ``sum_j w_j y_j`` with ``w_j = max(score_j, 0) / sum`` (the service's weights, power 1); a query without
  a usable neighbour takes the baseline (counted). **Baseline**: the mean of the query's category over the
  catalogue (the global mean for a category the catalogue lacks).
* **Simulated campaign rates** (SIMULATED history; CTR, install rate per click, RPM in USD per 1,000
  impressions): predicted by :func:`appsim.services.prediction.predict` from the neighbours and
  :class:`HistoryStats` built from the CATALOGUE apps' history only; targets: the held-out apps' true
  rates (:func:`appsim.data.history.true_rates`, real catalogue) and their observed rates in the history
  (held-out apps with history; a rate is used only when its numerator is > 0). **Baseline**: ``predict``
  with no neighbours, i.e. the category prior (method-of-moments mean of the category's per-app rates).
  Errors are on the log scale: ``MAE = mean |log(predicted / actual)|``.
* **MAE** ``mean |predicted - actual|`` (units of the outcome) and **Spearman's rank correlation**
  (Pearson correlation of the average ranks; Spearman 1904, Am. J. Psychol. 15:72-101).
* **Bootstrap** 95% percentile intervals (Efron & Tibshirani 1993, *An Introduction to the Bootstrap*,
  ch. 13) of the paired differences ``version - baseline`` and ``v2 - v1``: the held-out apps are
  resampled with replacement ``resamples`` times (default 2,000) from ``numpy.random.default_rng(seed)``
  and both predictions of a resampled app move together. A difference is called only when its interval
  excludes 0.

Verdict rule (stated before any number was seen): a version *beats the baseline* on an outcome when the
interval of ``MAE(version) - MAE(baseline)`` lies below 0; *loses* when it lies above 0; otherwise no
detectable difference (Spearman reported alongside). A version *wins offline* when, on the REAL metrics
(precision@10 with and without category, MAE of both real outcomes), the interval of ``v2 - v1`` favours
it at least once and never favours the other; simulated campaign rates are reported, not voted.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats as sstats

from appsim.backends.index import ExactIndex
from appsim.data.artifacts import load_version_artifact
from appsim.data.real_apps import is_holdout
from appsim.services.prediction import HistoryStats, PredictionConfig, predict

SEED = 20261129
K_PRECISION = 10
NEIGHBOURS = 15
RESAMPLES = 2000
LEVEL = 0.95
VERSIONS = ("v1", "v2")
CAMPAIGN_RATES = ("ctr", "install_rate", "rpm")
RATE_LABELS = {"ctr": "CTR", "install_rate": "install rate (per click)", "rpm": "RPM (USD / 1,000 impr.)"}
OUTCOME_LABELS = {
    "user_rating": "user rating (stars, rated apps)",
    "log1p_rating_count": "log1p(rating count)",
}
Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ metrics


def precision_at_k(
    query_categories: Sequence[str] | np.ndarray, neighbour_categories: np.ndarray
) -> np.ndarray:
    """Per-query genre precision: ``(m,)`` share of the ``(m, k)`` neighbour categories equal to the
    query's category (a row with k = 0 gives 0)."""
    q = np.asarray(query_categories, dtype=object).reshape(-1, 1)
    nc = np.asarray(neighbour_categories, dtype=object)
    if nc.ndim != 2 or nc.shape[0] != q.shape[0]:
        raise ValueError(f"neighbour_categories must be (m, k) with m = {q.shape[0]}, got {nc.shape}")
    if nc.shape[1] == 0:
        return np.zeros(q.shape[0])
    return np.asarray(nc == q, dtype=np.float64).mean(axis=1)


def chance_precision(
    query_categories: Sequence[str] | np.ndarray, catalogue_categories: Sequence[str] | np.ndarray
) -> float:
    """Precision of random neighbours: ``sum_c p_query(c) * p_catalogue(c)`` (shares of each category
    among the queries and among the catalogue apps)."""
    q = pd.Series(np.asarray(query_categories, dtype=object)).value_counts(normalize=True)
    c = pd.Series(np.asarray(catalogue_categories, dtype=object)).value_counts(normalize=True)
    return float(sum(p * float(c.get(cat, 0.0)) for cat, p in q.items()))


def mae(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute error ``mean |predicted - actual|`` (same units as the inputs)."""
    p, a = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if p.shape != a.shape or p.size == 0:
        raise ValueError("predicted and actual must be non-empty arrays of the same shape")
    return float(np.mean(np.abs(p - a)))


def _rank_corr(p: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Row-wise Spearman of ``(..., n)`` arrays (NaN where a row is constant)."""
    rp, ra = sstats.rankdata(p, axis=-1), sstats.rankdata(a, axis=-1)
    rp = rp - rp.mean(axis=-1, keepdims=True)
    ra = ra - ra.mean(axis=-1, keepdims=True)
    den = np.sqrt((rp**2).sum(axis=-1) * (ra**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((rp * ra).sum(axis=-1) / den)


def spearman(predicted: np.ndarray, actual: np.ndarray) -> float | None:
    """Spearman's rank correlation (Pearson correlation of average ranks; Spearman 1904); None when
    either input is constant or has fewer than 3 values."""
    p, a = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if p.shape != a.shape:
        raise ValueError("predicted and actual must have the same shape")
    if p.size < 3:
        return None
    r = float(_rank_corr(p, a))
    return r if np.isfinite(r) else None


def bootstrap_difference(
    metric: Literal["mae", "spearman", "mean"],
    a: np.ndarray,
    b: np.ndarray,
    actual: np.ndarray | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Paired bootstrap of ``metric(a) - metric(b)`` over the ``n`` items (percentile interval; Efron &
    Tibshirani 1993). ``metric``: "mae" / "spearman" of predictions ``a``, ``b`` against ``actual``, or
    "mean" of per-item values ``a``, ``b`` (e.g. per-query precision). Returns ``{"difference", "low",
    "high", "level", "resamples", "seed"}`` (None where undefined); resampled Spearman values that are
    undefined (a constant resample) are dropped."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = a.shape[0]
    if b.shape != a.shape or (metric != "mean" and (actual is None or np.shape(actual) != a.shape)):
        raise ValueError("a, b (and actual) must have the same shape")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), dtype=np.int64)
    if metric == "mean":
        point = float(a.mean() - b.mean()) if n else None
        diffs = (a[idx] - b[idx]).mean(axis=1) if n else np.empty(0)
    elif metric == "mae":
        y = np.asarray(actual, dtype=np.float64)
        ea, eb = np.abs(a - y), np.abs(b - y)
        point = float(ea.mean() - eb.mean()) if n else None
        diffs = (ea[idx] - eb[idx]).mean(axis=1) if n else np.empty(0)
    elif metric == "spearman":
        y = np.asarray(actual, dtype=np.float64)
        sa, sb = spearman(a, y), spearman(b, y)
        point = None if sa is None or sb is None else sa - sb
        diffs = np.empty(0)
        if n >= 3:
            chunks = []
            for start in range(0, resamples, 500):
                j = idx[start : start + 500]
                chunks.append(_rank_corr(a[j], y[j]) - _rank_corr(b[j], y[j]))
            diffs = np.concatenate(chunks)
            diffs = diffs[np.isfinite(diffs)]
    else:
        raise ValueError(f"unknown metric {metric!r}")
    lo = hi = None
    if point is not None and diffs.size:
        q = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
        lo, hi = float(q[0]), float(q[1])
    return {"difference": point, "low": lo, "high": hi, "level": level, "resamples": resamples, "seed": seed}


def call(ci: Mapping[str, Any], lower_is_better: bool) -> str:
    """ "better" / "worse" / "no detectable difference" for a bootstrap interval of ``x - y``."""
    lo, hi = ci.get("low"), ci.get("high")
    if lo is None or hi is None:
        return "undefined"
    if hi < 0:
        return "better" if lower_is_better else "worse"
    if lo > 0:
        return "worse" if lower_is_better else "better"
    return "no detectable difference"


# --------------------------------------------------------------------------------------------- neighbours


@dataclass
class VectorSet:
    """One version's catalogue (``ids`` (n,), ``vectors`` (n, d) float32, L2-normalised) and held-out
    queries (``query_ids`` (m,), ``queries`` (m, d)); ``name`` e.g. "v2" or "v2-nocat"."""

    name: str
    version: str
    category_in_text: bool
    ids: np.ndarray
    vectors: np.ndarray
    query_ids: np.ndarray
    queries: np.ndarray


def nearest(vs: VectorSet, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (m, k) int64, scores (m, k) float32)``: each query's k nearest catalogue rows by cosine,
    score descending then app id ascending (the service's tie-break)."""
    order = np.argsort(vs.ids.astype(str), kind="stable")
    tiebreak = np.empty(len(order), dtype=np.int64)
    tiebreak[order] = np.arange(len(order))
    index = ExactIndex(np.asarray(vs.vectors, dtype=np.float32), tiebreak)
    rows, scores = [], []
    for start in range(0, len(vs.queries), 256):
        s, r = index.search(np.asarray(vs.queries[start : start + 256], dtype=np.float32), k)
        scores.append(s)
        rows.append(r)
    if not rows:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return np.concatenate(rows), np.concatenate(scores)


def weighted_neighbour_mean(
    values: np.ndarray, usable: np.ndarray, rows: np.ndarray, scores: np.ndarray, fallback: np.ndarray
) -> tuple[np.ndarray, int]:
    """Similarity-weighted neighbour mean per query: ``sum_j w_j values[rows_j]`` with ``w_j =
    max(score_j, 0) / sum`` over the neighbours with ``usable`` True; ``fallback`` (m,) where no neighbour
    has a positive weight. Returns ``(predictions (m,), queries that fell back)``."""
    w = np.maximum(np.asarray(scores, dtype=np.float64), 0.0) * usable[rows]
    tot = w.sum(axis=1)
    safe = np.where(tot > 0, tot, 1.0)
    pred = (w * values[rows]).sum(axis=1) / safe
    fell = tot <= 0
    return np.where(fell, fallback, pred), int(fell.sum())


def category_means(values: np.ndarray, categories: np.ndarray, usable: np.ndarray) -> dict[str | None, float]:
    """Mean of ``values`` per category over the ``usable`` rows; key None = the global mean."""
    df = pd.DataFrame({"c": categories[usable], "v": values[usable]})
    out: dict[str | None, float] = {str(c): float(v) for c, v in df.groupby("c")["v"].mean().items()}
    out[None] = float(df["v"].mean()) if len(df) else float("nan")
    return out


def _baseline(means: Mapping[str | None, float], categories: np.ndarray) -> np.ndarray:
    return np.asarray([means.get(str(c), means[None]) for c in categories], dtype=np.float64)


# ---------------------------------------------------------------------------------------------- loading


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"app_id": str}, keep_default_na=False, encoding="utf-8")


def read_history(path: Path) -> pd.DataFrame:
    """History CSV with ``app_id`` and segment columns as text (only empty cells are missing)."""
    text = ["app_id", "date", "country", "platform", "age_group", "gender"]
    return pd.read_csv(
        path,
        dtype=dict.fromkeys(text, str),
        keep_default_na=False,
        na_values={c: [""] for c in text},
        encoding="utf-8",
    )


def _vector_set(root: Path, sub: str, name: str, version: str, with_cat: bool) -> VectorSet | None:
    d = root / sub
    if not (d / "manifest.json").is_file() or not (d / "holdout_vectors.npy").is_file():
        return None
    art = load_version_artifact(d, verify=False)
    return VectorSet(
        name, version, with_cat, art.ids.astype(str), np.asarray(art.vectors, dtype=np.float32),
        np.load(d / "holdout_ids.npy", allow_pickle=False).astype(str),
        np.load(d / "holdout_vectors.npy", allow_pickle=False).astype(np.float32),
    )  # fmt: skip


def _mock_vector_set(root: Path, version: str) -> VectorSet | None:
    d = root / version
    if not (d / "manifest.json").is_file():
        return None
    art = load_version_artifact(d, verify=False)
    ids = art.ids.astype(str)
    held = np.asarray([is_holdout(a) for a in ids], dtype=bool)
    vec = np.asarray(art.vectors, dtype=np.float32)
    return VectorSet(version, version, True, ids[~held], vec[~held], ids[held], vec[held])


def _true_rates(holdout: pd.DataFrame, seed: int) -> pd.DataFrame | None:
    from appsim.data.history import true_rates

    try:
        return true_rates(holdout, seed=seed).set_index("app_id")
    except Exception:  # targets are optional (a holdout without the simulator's columns)
        return None


def observed_rates(history: pd.DataFrame) -> pd.DataFrame:
    """Per-app observed rates of a history frame: impressions, clicks, installs, revenue (USD) totals and
    ``ctr`` (clicks / impressions), ``install_rate`` (installs / clicks), ``rpm`` (1000 revenue /
    impressions); NaN where a numerator is 0 (log-scale errors need positive rates)."""
    cols = ["impressions", "clicks", "event_count", "mmp_offer_default_revenue"]
    num = history[cols].apply(pd.to_numeric, errors="coerce").fillna(0.0)
    t = num.groupby(history["app_id"].astype(str)).sum()
    imp, clk, ins, rev = (t[c].to_numpy(dtype=np.float64) for c in cols)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = pd.DataFrame(
            {
                "impressions": imp, "clicks": clk, "installs": ins, "revenue": rev,
                "ctr": np.where((imp > 0) & (clk > 0), clk / imp, np.nan),
                "install_rate": np.where((clk > 0) & (ins > 0), ins / clk, np.nan),
                "rpm": np.where((imp > 0) & (rev > 0), 1000.0 * rev / imp, np.nan),
            },
            index=t.index,
        )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------- evaluation


def _precision_block(
    vs: VectorSet,
    query_cat: np.ndarray,
    cat_cat: np.ndarray,
    rows: np.ndarray,
    k: int,
    resamples: int,
    seed: int,
) -> tuple[dict[str, Any], np.ndarray]:
    keep = np.asarray([bool(c) for c in query_cat], dtype=bool)  # queries with a category
    per = precision_at_k(query_cat[keep], cat_cat[rows[keep, :k]])
    ci = bootstrap_difference("mean", per, np.zeros_like(per), resamples=resamples, seed=seed)
    chance = chance_precision(query_cat[keep], cat_cat)
    out = {
        "model_version": vs.version, "category_in_text": vs.category_in_text, "k": k, "n": int(keep.sum()),
        "precision": float(per.mean()) if per.size else None, "low": ci["low"], "high": ci["high"],
        "chance": chance, "lift": float(per.mean()) / chance if per.size and chance > 0 else None,
    }  # fmt: skip
    full = np.full(len(query_cat), np.nan)
    full[keep] = per
    return out, full


def _error_entry(pred: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    return {"mae": mae(pred, actual), "spearman": spearman(pred, actual), "n": int(actual.size)}


def _compare(
    preds: Mapping[str, np.ndarray], baseline: np.ndarray, actual: np.ndarray, resamples: int, seed: int
) -> dict[str, Any]:
    """Errors of the baseline and each version, their bootstrap differences vs the baseline and v2 - v1."""
    out: dict[str, Any] = {"n": int(actual.size), "baseline": _error_entry(baseline, actual)}
    for v, p in preds.items():
        out[v] = {
            **_error_entry(p, actual),
            "vs_baseline": {
                "mae": bootstrap_difference("mae", p, baseline, actual, resamples=resamples, seed=seed),
                "spearman": bootstrap_difference(
                    "spearman", p, baseline, actual, resamples=resamples, seed=seed
                ),
            },
        }
    if "v1" in preds and "v2" in preds:
        out["v2_minus_v1"] = {
            "mae": bootstrap_difference(
                "mae", preds["v2"], preds["v1"], actual, resamples=resamples, seed=seed
            ),
            "spearman": bootstrap_difference(
                "spearman", preds["v2"], preds["v1"], actual, resamples=resamples, seed=seed
            ),
        }
    return out


def _campaign(
    sets: Mapping[str, VectorSet],
    neighbours: Mapping[str, tuple[np.ndarray, np.ndarray]],
    query_ids: np.ndarray,
    query_cat: np.ndarray,
    stats: HistoryStats,
    targets: Mapping[str, pd.DataFrame],
    config: PredictionConfig,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Predict CTR / install rate / RPM for every query with ``predict`` (each version) and the category
    prior (baseline), then compare on each target (log-scale errors)."""
    base_cache: dict[str, dict[str, float | None]] = {}
    baseline = np.full((len(query_ids), len(CAMPAIGN_RATES)), np.nan)
    for i, c in enumerate(query_cat):
        key = str(c)
        if key not in base_cache:
            p = predict([], key or None, stats, config)
            base_cache[key] = {r: p.rates[r].point for r in CAMPAIGN_RATES}
        baseline[i] = [np.nan if base_cache[key][r] is None else base_cache[key][r] for r in CAMPAIGN_RATES]
    preds: dict[str, np.ndarray] = {}
    for v, vs in sets.items():
        rows, scores = neighbours[v]
        arr = np.full((len(query_ids), len(CAMPAIGN_RATES)), np.nan)
        for i in range(len(query_ids)):
            nb = list(zip(vs.ids[rows[i]].tolist(), scores[i].astype(np.float64).tolist(), strict=True))
            p = predict(nb, str(query_cat[i]) or None, stats, config)
            arr[i] = [np.nan if p.rates[r].point is None else p.rates[r].point for r in CAMPAIGN_RATES]
        preds[v] = arr
    out: dict[str, Any] = {}
    for target, frame in targets.items():
        out[target] = {}
        for j, rate in enumerate(CAMPAIGN_RATES):
            actual = frame[rate].reindex(query_ids).to_numpy(dtype=np.float64)
            ok = np.isfinite(actual) & (actual > 0) & np.isfinite(baseline[:, j]) & (baseline[:, j] > 0)
            for arr in preds.values():
                ok &= np.isfinite(arr[:, j]) & (arr[:, j] > 0)
            if ok.sum() < 3:
                continue
            out[target][rate] = _compare(
                {v: np.log(a[ok, j]) for v, a in preds.items()},
                np.log(baseline[ok, j]), np.log(actual[ok]), resamples, seed,
            )  # fmt: skip
    return out


def evaluate_real(
    real_dir: str | Path,
    *,
    k: int = K_PRECISION,
    neighbours: int = NEIGHBOURS,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    history_file: str = "history_simulated.csv",
    history_seed: int = SEED,
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate the real catalogue (layout in the module docstring). Versions or ``eval/`` variants that
    are not built are skipped and listed in ``missing``."""
    root = Path(real_dir)
    apps, hold = _read_csv(root / "apps.csv"), _read_csv(root / "holdout.csv")
    cat_index = pd.Index(apps["app_id"].astype(str))
    hold_idx = hold.set_index(hold["app_id"].astype(str))
    sets: dict[str, VectorSet] = {}
    missing: list[str] = []
    for v in VERSIONS:
        for with_cat, sub, name in ((True, v, v), (False, f"eval/{v}-nocat", f"{v}-nocat")):
            vs = _vector_set(root, sub, name, v, with_cat)
            if vs is None:
                missing.append(sub)
            else:
                sets[name] = vs
    res: dict[str, Any] = {
        "n_catalogue": len(apps), "n_holdout": len(hold), "missing": missing, "precision": {},
        "precision_differences": {}, "outcomes": {}, "campaign": {}, "fallbacks": {},
    }  # fmt: skip
    kmax = max(k, neighbours)
    nn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    per_query: dict[str, np.ndarray] = {}
    for name, vs in sets.items():
        t0 = time.perf_counter()
        nn[name] = nearest(vs, kmax)
        cat_cat = apps["category"].to_numpy(dtype=object)[cat_index.get_indexer(vs.ids)]
        q_cat = hold_idx["category"].reindex(vs.query_ids).fillna("").to_numpy(dtype=object)
        res["precision"][name], per_query[name] = _precision_block(
            vs, q_cat, cat_cat, nn[name][0], k, resamples, seed
        )
        log(f"real {name}: precision@{k} {res['precision'][name]['precision']:.3f} "
            f"({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    for tag, a, b in (("with_category", "v2", "v1"), ("without_category", "v2-nocat", "v1-nocat")):
        if a in per_query and b in per_query and np.array_equal(sets[a].query_ids, sets[b].query_ids):
            pa, pb = per_query[a], per_query[b]
            ok = np.isfinite(pa) & np.isfinite(pb)
            res["precision_differences"][tag] = bootstrap_difference(
                "mean", pa[ok], pb[ok], resamples=resamples, seed=seed
            )

    # real outcomes from the serving versions' neighbours
    serving = {v: sets[v] for v in VERSIONS if v in sets}
    if serving:
        q_ids = next(iter(serving.values())).query_ids
        if not all(np.array_equal(vs.query_ids, q_ids) for vs in serving.values()):
            raise ValueError("held-out ids differ between versions; rebuild with `appsim data build`")
        q = hold_idx.reindex(q_ids)
        q_cat = q["category"].to_numpy(dtype=object)
        cat_cat = apps["category"].to_numpy(dtype=object)
        rated_cat = apps["rating_count"].to_numpy(dtype=np.float64) > 0
        outcomes = {
            "user_rating": (apps["user_rating"].to_numpy(dtype=np.float64), rated_cat,
                            q["user_rating"].to_numpy(dtype=np.float64), q["rating_count"].to_numpy() > 0),
            "log1p_rating_count": (np.log1p(apps["rating_count"].to_numpy(dtype=np.float64)),
                                   np.ones(len(apps), dtype=bool),
                                   np.log1p(q["rating_count"].to_numpy(dtype=np.float64)),
                                   np.ones(len(q), dtype=bool)),
        }  # fmt: skip
        for oname, (vals, usable, actual, q_ok) in outcomes.items():
            means = category_means(vals, cat_cat, usable)
            base = _baseline(means, q_cat)
            preds = {}
            for v, vs in serving.items():
                rows, scores = nn[v]
                crow = cat_index.get_indexer(vs.ids)  # artifact row -> apps row
                p, fell = weighted_neighbour_mean(
                    vals[crow], usable[crow], rows[:, :neighbours], scores[:, :neighbours], base
                )
                preds[v] = p[q_ok]
                res["fallbacks"][f"{oname}/{v}"] = int(fell)
            res["outcomes"][oname] = _compare(preds, base[q_ok], actual[q_ok], resamples, seed)

        # SIMULATED campaign rates
        hist_path = root / history_file
        if hist_path.is_file():
            t0 = time.perf_counter()
            history = read_history(hist_path)
            in_cat = history["app_id"].isin(set(cat_index))
            catalogue = dict(zip(cat_index.tolist(), apps["category"].astype(str).tolist(), strict=True))
            stats = HistoryStats.from_frame(history.loc[in_cat.to_numpy()], catalogue)
            targets: dict[str, pd.DataFrame] = {}
            truth = _true_rates(hold, history_seed)
            if truth is not None:
                targets["true"] = truth
            targets["observed"] = observed_rates(history.loc[~in_cat.to_numpy()])
            res["campaign"] = _campaign(
                serving, {v: (nn[v][0][:, :neighbours], nn[v][1][:, :neighbours]) for v in serving},
                q_ids, q_cat, stats, targets, PredictionConfig(), resamples, seed,
            )  # fmt: skip
            res["history"] = {
                "file": str(hist_path), "rows_catalogue": int(in_cat.sum()),
                "rows_held_out": int((~in_cat).sum()),
                "held_out_apps_with_history": int(history.loc[~in_cat.to_numpy(), "app_id"].nunique()),
                "simulated": True,
            }  # fmt: skip
            log(f"real campaign rates ({time.perf_counter() - t0:.1f}s)")
        else:
            missing.append(history_file)
    return res


def evaluate_mock(
    mock_dir: str | Path,
    *,
    k: int = K_PRECISION,
    neighbours: int = NEIGHBOURS,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate the mock company catalogue: stable 10% hash split of its apps (``is_holdout``), genre
    precision@k per version and the campaign rates vs the held-out apps' observed history."""
    root = Path(mock_dir)
    apps = _read_csv(root / "apps.csv")
    cat_of = dict(zip(apps["app_id"].astype(str), apps["category"].astype(str), strict=True))
    sets = {v: vs for v in VERSIONS if (vs := _mock_vector_set(root, v)) is not None}
    res: dict[str, Any] = {"missing": [v for v in VERSIONS if v not in sets], "precision": {},
                           "precision_differences": {}, "campaign": {}}  # fmt: skip
    kmax = max(k, neighbours)
    nn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    per_query: dict[str, np.ndarray] = {}
    for v, vs in sets.items():
        nn[v] = nearest(vs, kmax)
        cat_cat = np.asarray([cat_of.get(a, "") for a in vs.ids], dtype=object)
        q_cat = np.asarray([cat_of.get(a, "") for a in vs.query_ids], dtype=object)
        res["precision"][v], per_query[v] = _precision_block(vs, q_cat, cat_cat, nn[v][0], k, resamples, seed)
        res["n_catalogue"], res["n_holdout"] = len(vs.ids), len(vs.query_ids)
        log(f"mock {v}: precision@{k} {res['precision'][v]['precision']:.3f}")
    if "v1" in per_query and "v2" in per_query and np.array_equal(sets["v1"].query_ids, sets["v2"].query_ids):
        pa, pb = per_query["v2"], per_query["v1"]
        ok = np.isfinite(pa) & np.isfinite(pb)
        res["precision_differences"]["with_category"] = bootstrap_difference(
            "mean", pa[ok], pb[ok], resamples=resamples, seed=seed
        )
    hist_path = root / "history.csv"
    if sets and hist_path.is_file():
        vs0 = next(iter(sets.values()))
        history = read_history(hist_path)
        in_cat = history["app_id"].isin(set(vs0.ids.tolist())).to_numpy()
        stats = HistoryStats.from_frame(history.loc[in_cat], {a: cat_of.get(a) for a in vs0.ids.tolist()})
        q_cat = np.asarray([cat_of.get(a, "") for a in vs0.query_ids], dtype=object)
        res["campaign"] = _campaign(
            sets, {v: (nn[v][0][:, :neighbours], nn[v][1][:, :neighbours]) for v in sets}, vs0.query_ids,
            q_cat, stats, {"observed": observed_rates(history.loc[~in_cat])}, PredictionConfig(),
            resamples, seed,
        )  # fmt: skip
    return res


def machine_info() -> dict[str, Any]:
    """nproc (CPUs this process may use), the CPU model (/proc/cpuinfo), OS, Python and numpy versions."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"nproc": nproc, "cpu_model": model, "os": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}  # fmt: skip


def verdict(results: Mapping[str, Any]) -> dict[str, Any]:
    """Plain statements from the fixed rule of the module docstring: per real outcome, does v2 (and v1)
    beat the category-mean baseline; which version wins offline."""
    lines: list[str] = []
    real = results.get("real") or {}
    for oname, o in (real.get("outcomes") or {}).items():
        for v in sorted(VERSIONS, reverse=True):  # v2 first: the question asked
            if v not in o:
                continue
            e, b = o[v], o["baseline"]
            ci = e["vs_baseline"]["mae"]
            c = call(ci, lower_is_better=True)
            word = {
                "better": "BEATS",
                "worse": "is WORSE than",
                "no detectable difference": "does NOT beat",
            }.get(c, "cannot be compared with")
            sp_ci = e["vs_baseline"]["spearman"]
            lines.append(
                f"{v} neighbour mean {word} the category-mean baseline on {OUTCOME_LABELS[oname]}: MAE "
                f"{e['mae']:.3f} vs {b['mae']:.3f} (difference {ci['difference']:+.3f}, 95% CI "
                f"[{_fmt(ci['low'], '+.3f')}, {_fmt(ci['high'], '+.3f')}]); Spearman "
                f"{_fmt(e['spearman'], '.3f')} vs {_fmt(b['spearman'], '.3f')} (difference 95% CI "
                f"[{_fmt(sp_ci['low'], '+.3f')}, "
                f"{_fmt(sp_ci['high'], '+.3f')}])."
            )
    votes: list[tuple[str, str]] = []
    for tag, d in (real.get("precision_differences") or {}).items():
        votes.append((f"genre precision@10 {tag.replace('_', ' ')}", call(d, lower_is_better=False)))
    for oname, o in (real.get("outcomes") or {}).items():
        if "v2_minus_v1" in o:
            votes.append(
                (f"MAE of {OUTCOME_LABELS[oname]}", call(o["v2_minus_v1"]["mae"], lower_is_better=True))
            )
    v2_better = [m for m, c in votes if c == "better"]
    v1_better = [m for m, c in votes if c == "worse"]
    if not votes:
        winner = "undecided: v1 and v2 were not both available"
    elif v2_better and not v1_better:
        winner = "v2 wins offline"
    elif v1_better and not v2_better:
        winner = "v1 wins offline"
    elif v1_better and v2_better:
        winner = "no overall winner: the versions win on different metrics"
    else:
        winner = "no detectable difference between v1 and v2 on the real metrics"
    return {
        "outcome_statements": lines,
        "version_votes": [{"metric": m, "v2_vs_v1": c} for m, c in votes],
        "winner": winner,
        "v2_better_on": v2_better,
        "v1_better_on": v1_better,
    }


def evaluate(
    real_dir: str | Path | None,
    mock_dir: str | Path | None,
    *,
    k: int = K_PRECISION,
    neighbours: int = NEIGHBOURS,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    mock_apps: int = 2000,
    mock_seed: int = 7,
    log: Log = print,
) -> dict[str, Any]:
    """Run every evaluation; returns ``{"meta", "real", "mock", "verdict"}`` (JSON-serialisable).

    ``real_dir`` None or without ``apps.csv``: the real part is skipped. ``mock_dir`` None or not built:
    the mock catalogue is built on the fly in a temporary directory (``build_mock(mock_apps, mock_seed)``).
    """
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "machine": machine_info(),
            "k_precision": k, "neighbours": neighbours,
            "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL},
        }
    }  # fmt: skip
    if real_dir is not None and (Path(real_dir) / "apps.csv").is_file():
        out["real"] = evaluate_real(
            real_dir, k=k, neighbours=neighbours, resamples=resamples, seed=seed, log=log
        )
        out["meta"]["real_dir"] = str(real_dir)
    if mock_dir is not None and (Path(mock_dir) / "apps.csv").is_file():
        out["mock"] = evaluate_mock(
            mock_dir, k=k, neighbours=neighbours, resamples=resamples, seed=seed, log=log
        )
        out["meta"]["mock_dir"] = str(mock_dir)
    else:
        from appsim.data.build import build_mock

        with tempfile.TemporaryDirectory(prefix="appsim-mock-") as tmp:
            build_mock(tmp, n_apps=mock_apps, seed=mock_seed, log=lambda _m: None)
            out["mock"] = evaluate_mock(
                tmp, k=k, neighbours=neighbours, resamples=resamples, seed=seed, log=log
            )
        out["meta"]["mock_dir"] = f"built on the fly: build_mock(n_apps={mock_apps}, seed={mock_seed})"
    out["verdict"] = verdict(out)
    out["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# ----------------------------------------------------------------------------------------------- report


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or not np.isfinite(x) else format(x, spec)


def _ci(d: Mapping[str, Any], spec: str = "+.3f") -> str:
    return f"{_fmt(d.get('difference'), spec)} [{_fmt(d.get('low'), spec)}, {_fmt(d.get('high'), spec)}]"


def _comparison_table(
    blocks: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str], unit: str
) -> list[str]:
    rows = [
        f"| outcome | n | predictor | MAE ({unit}) | Spearman | MAE − baseline [95% CI] | "
        "Spearman − baseline [95% CI] |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for name, o in blocks.items():
        label = labels.get(name, name)
        b = o["baseline"]
        rows.append(
            f"| {label} | {o['n']} | category mean (baseline) | {b['mae']:.4f} | {_fmt(b['spearman'])} | | |"
        )
        for v in VERSIONS:
            if v in o:
                e = o[v]
                rows.append(
                    f"| {label} | {o['n']} | {v} neighbours | {e['mae']:.4f} | {_fmt(e['spearman'])} | "
                    f"{_ci(e['vs_baseline']['mae'], '+.4f')} | {_ci(e['vs_baseline']['spearman'])} |"
                )
        if "v2_minus_v1" in o:
            d = o["v2_minus_v1"]
            rows.append(
                f"| {label} | {o['n']} | **v2 − v1** | | | {_ci(d['mae'], '+.4f')} | {_ci(d['spearman'])} |"
            )
    return rows


def _precision_table(blocks: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    rows = [
        "| catalogue | variant | category in text | queries | precision@10 [95% CI] | chance | lift |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for cat, prec in blocks.items():
        for name, p in prec.items():
            rows.append(
                f"| {cat} | {name} | {'yes' if p['category_in_text'] else 'no'} | {p['n']} | "
                f"{_fmt(p['precision'])} [{_fmt(p['low'])}, {_fmt(p['high'])}] | {p['chance']:.3f} | "
                f"{_fmt(p['lift'], '.2f')} |"
            )
    return rows


def render_markdown(results: Mapping[str, Any], command: str, png_name: str = "evaluation.png") -> str:
    """docs/evaluation.md: command, machine, date, the tables, the verdict (numbers from ``results``)."""
    meta, real, mock, ver = results["meta"], results.get("real"), results.get("mock"), results["verdict"]
    m = meta["machine"]
    bs = meta["bootstrap"]
    md = [
        "# Offline evaluation: v1 (TF-IDF + SVD, 64-d) vs v2 (all-MiniLM-L6-v2, 384-d)",
        "",
        "Generated by the command below; every number in this file comes from that run (nothing is "
        "edited by hand, nothing was tuned toward a winner). Method and sources: "
        "`src/appsim/services/evaluation.py`.",
        "",
        "```",
        command,
        "```",
        "",
        f"* date: {meta['date']} (UTC)",
        f"* machine: {m['nproc']} CPU(s) available (nproc), {m['cpu_model']}; {m['os']}; "
        f"Python {m['python']}, numpy {m['numpy']}",
        f"* runtime: {meta['seconds']} s",
        f"* neighbours: precision@{meta['k_precision']}; predictions from the {meta['neighbours']} nearest "
        "catalogue apps (cosine, exact search)",
        f"* bootstrap: paired, {bs['resamples']} resamples of the held-out apps, seed {bs['seed']}, 95% "
        "percentile intervals (Efron & Tibshirani 1993)",
        "",
        "## Verdict",
        "",
    ]
    md += [f"* {s}" for s in ver["outcome_statements"]] or ["* no real outcomes were evaluated"]
    said = {"better": "v2 is better", "worse": "v1 is better"}
    md += [
        f"* v2 vs v1, {v['metric']}: {said.get(v['v2_vs_v1'], v['v2_vs_v1'])}" for v in ver["version_votes"]
    ]
    md += ["", f"**Which version wins offline: {ver['winner']}.**", ""]
    md += [
        "Rule (fixed before the run): a difference counts only when its 95% bootstrap interval excludes 0; "
        "a version wins offline when it is better on at least one real metric (genre precision@10 with and "
        "without the category in the text, MAE of the two real outcomes) and worse on none. The simulated "
        "campaign rates are reported but do not vote.",
        "",
        f"![evaluation]({png_name})",
        "",
        "## Data",
        "",
    ]
    if real:
        md.append(
            f"* **real**: App Store catalogue `{meta.get('real_dir')}`: {real['n_catalogue']} catalogue "
            f"apps, {real['n_holdout']} held-out apps (stable sha256 split, 10%) as new-app queries, "
            "encoded by each version's encoder (`<v>/holdout_vectors.npy`)."
        )
        if real.get("history"):
            h = real["history"]
            md.append(
                f"* campaign history: `{h['file']}` is **SIMULATED** (no public campaign data exists). "
                f"{h['rows_catalogue']} rows of catalogue apps feed the predictor; the {h['rows_held_out']} "
                f"rows of {h['held_out_apps_with_history']} held-out apps are used only as targets."
            )
        if real["missing"]:
            md.append(f"* not built, skipped: {', '.join(real['missing'])}")
    if mock:
        md.append(
            f"* **mock**: company-format mock catalogue ({meta.get('mock_dir')}): "
            f"{mock.get('n_catalogue', 0)} catalogue apps, {mock.get('n_holdout', 0)} held-out apps (same "
            "stable hash split); its v1 (64-d) / v2 (128-d) vectors are the company's mock embeddings."
        )
    md += ["", "## 1. Genre precision@10 of the neighbours", ""]
    md.append(
        "Share of the 10 nearest catalogue apps sharing the query's category; *chance* = "
        "Σ_c p_query(c) · p_catalogue(c) (random neighbours); lift = precision / chance. With the category "
        "in the encoded text the measure partly rewards the encoder for reading the label it is scored "
        "on, so the *without* rows are the fairer test of the text itself."
    )
    md.append("")
    blocks = {}
    if real:
        blocks["real"] = real["precision"]
    if mock:
        blocks["mock"] = mock["precision"]
    md += _precision_table(blocks)
    md.append("")
    for cat, r in (("real", real), ("mock", mock)):
        for tag, d in ((r or {}).get("precision_differences") or {}).items():
            c = {"better": "v2 is better", "worse": "v1 is better"}.get(call(d, False), call(d, False))
            md.append(f"* {cat}, {tag.replace('_', ' ')}: v2 − v1 = {_ci(d)} ({c})")
    if real and real.get("outcomes"):
        md += ["", "## 2. Real outcomes of the held-out apps", ""]
        md.append(
            f"Similarity-weighted mean of the {meta['neighbours']} nearest catalogue apps (weights "
            "max(score, 0), normalised) vs the category mean over the catalogue. User rating: apps with "
            "rating_count > 0 only (queries and neighbours). Differences are version − baseline "
            "(negative MAE difference = better); fallbacks to the baseline (no usable neighbour): "
            + ", ".join(f"{k} {v}" for k, v in real["fallbacks"].items())
            + "."
        )
        md.append("")
        md += _comparison_table(real["outcomes"], OUTCOME_LABELS, "outcome units")
    section = iter("abcdefgh")
    for cat, r in (("real", real), ("mock", mock)):
        camp = (r or {}).get("campaign") or {}
        for target, blk in camp.items():
            if not blk:
                continue
            what = (
                "true rates of the simulator (`true_rates`)" if target == "true"
                else "observed rates in the held-out apps' own history"
            )  # fmt: skip
            md += ["", f"## 3{next(section)}. SIMULATED campaign rates, {cat} catalogue: {what}", ""]
            md.append(
                "Predicted by `predict` (empirical Bayes, default config) from the neighbours vs the "
                "category prior alone (baseline). MAE is mean |log(predicted / actual)| (log points)."
            )
            md.append("")
            md += _comparison_table(blk, RATE_LABELS, "log")
    md += [
        "",
        "## Sources",
        "",
        "* Spearman, C. (1904). The proof and measurement of association between two things. *American "
        "Journal of Psychology* 15(1), 72–101.",
        "* Efron, B. & Tibshirani, R. J. (1993). *An Introduction to the Bootstrap*. Chapman & Hall, ch. 13 "
        "(percentile intervals).",
        "* Prediction method: docs/prediction.md.",
        "",
    ]
    return "\n".join(md)


def plot(results: Mapping[str, Any], path: str | Path) -> None:
    """docs/evaluation.png (matplotlib Agg): precision@10 vs chance; MAE difference vs baseline with 95%
    CIs (real outcomes and simulated true rates); Spearman per predictor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real, mock = results.get("real") or {}, results.get("mock") or {}
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    ax = axes[0]
    labels, vals, errs, chance = [], [], [], []
    for cat, r in (("real", real), ("mock", mock)):
        for name, p in (r.get("precision") or {}).items():
            if p["precision"] is None:
                continue
            labels.append(f"{cat}\n{name}")
            vals.append(p["precision"])
            errs.append(
                [
                    p["precision"] - (p["low"] or p["precision"]),
                    (p["high"] or p["precision"]) - p["precision"],
                ]
            )
            chance.append(p["chance"])
    x = np.arange(len(labels))
    colors = ["#4C72B0" if "v1" in lab else "#DD8452" for lab in labels]
    ax.bar(x, vals, color=colors, yerr=np.asarray(errs).T if errs else None, capsize=3)
    ax.scatter(x, chance, color="black", marker="_", s=400, zorder=3, label="chance")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("genre precision@10")
    ax.set_title("Genre precision@10 (95% CI) vs chance")
    ax.legend(loc="upper center", ncols=1, fontsize=8)

    ax = axes[1]
    names, d, lo, hi = [], [], [], []
    groups = [("real", real.get("outcomes") or {}, OUTCOME_LABELS)]
    groups.append(("sim. true", (real.get("campaign") or {}).get("true") or {}, RATE_LABELS))
    groups.append(("mock obs.", (mock.get("campaign") or {}).get("observed") or {}, RATE_LABELS))
    for tag, blk, lab in groups:
        for oname, o in blk.items():
            for v in VERSIONS:
                if v in o and o[v]["vs_baseline"]["mae"]["low"] is not None:
                    ci = o[v]["vs_baseline"]["mae"]
                    # relative to the baseline's MAE, so that outcomes of different units share an axis
                    scale = o["baseline"]["mae"] or 1.0
                    names.append(f"{tag}: {lab.get(oname, oname).split(' (')[0]} · {v}")
                    d.append(100 * ci["difference"] / scale)
                    lo.append(100 * ci["low"] / scale)
                    hi.append(100 * ci["high"] / scale)
    y = np.arange(len(names))[::-1]
    ax.errorbar(d, y, xerr=[np.subtract(d, lo), np.subtract(hi, d)], fmt="o", capsize=3, color="#333333")
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlabel("MAE change vs category-mean baseline, % of baseline MAE (negative = better)")
    ax.set_title("Neighbour prediction vs baseline (95% bootstrap CI)")

    ax = axes[2]
    rows = []
    for tag, blk, lab in groups:
        for oname, o in blk.items():
            rows.append((f"{tag}: {lab.get(oname, oname).split(' (')[0]}", o))
    y = np.arange(len(rows))[::-1]
    for j, (who, color) in enumerate((("baseline", "grey"), ("v1", "#4C72B0"), ("v2", "#DD8452"))):
        sv = [(o.get(who) or {}).get("spearman") for _, o in rows]
        ax.barh(
            y + (1 - j) * 0.27, [s if s is not None else 0 for s in sv], height=0.27, color=color, label=who
        )
    ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
    lowest = min(
        [0.0]
        + [s for _, o in rows for w in ("baseline", *VERSIONS) if (s := (o.get(w) or {}).get("spearman"))]
    )
    ax.set_xlim(lowest - 0.05 if lowest < 0 else 0.0, 1.0)
    ax.set_xlabel("Spearman rank correlation with the actual value")
    ax.set_title("Ranking quality")
    ax.legend(loc="upper right")
    fig.suptitle(f"appsim offline evaluation ({results['meta']['date'][:10]}); campaign rates are SIMULATED")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: Mapping[str, Any], md_path: str | Path, png_path: str | Path, command: str) -> None:
    """Write the markdown report and the figure next to each other."""
    md, png = Path(md_path), Path(png_path)
    md.parent.mkdir(parents=True, exist_ok=True)
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(results, png)
    rel = os.path.relpath(png, md.parent)
    md.write_text(render_markdown(results, command, rel), encoding="utf-8")
