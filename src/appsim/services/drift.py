"""Input drift of recent queries against the catalogue each model version was built from (pure + small state).

Features (per model version)
----------------------------
===================== =========== ===========================================================================
feature               kind        value of one query / reference
===================== =========== ===========================================================================
``category``          categorical store genre (App Store ``prime_genre``); reference: the catalogue's mix
``platform``          categorical ``ios`` / ``android`` / ...; reference: the catalogue's mix
``description_length`` numeric    characters of the description (missing = 0); reference: every catalogue app
``embedding_pc1..3``  numeric     projection of the (d,) query embedding on the first 3 principal components
                                  of the version's catalogue vectors (centred; numpy SVD, computed once)
``nn_similarity``     numeric     cosine similarity of the query to its nearest catalogue app; reference: each
                                  app's top-1 similarity to the REST of the catalogue, on a seeded sample
                                  (``DriftConfig.nn_reference_sample`` apps, default 1,000)
===================== =========== ===========================================================================

What a query contributes (``observation_from_result``):

* ``vector`` (raw embedding): the embedding projections and the NN similarity only.
* ``app`` (new-app metadata): also ``category`` / ``platform`` when given (a missing optional field adds no
  observation; an unknown value counts in an ``(other)`` bin) and ``description_length`` (no description
  = 0 characters, as the catalogue's apps without one).
* ``app_id`` (a catalogue app): the catalogue app's OWN features (its category, platform and description
  length), its embedding, and its nearest OTHER app (the reference NN similarity is leave-one-out too).
  Monitoring this traffic answers "which part of the catalogue do callers ask about": a campaign that only
  looks up games shows as category drift. The app is found from the ``app_id`` when the caller passes the
  query, otherwise from its embedding, which is exactly its catalogue row: a 64-bit fingerprint of the
  row's float32 bits (built at load, vectorised) finds the candidate rows, an exact comparison confirms.
* Queries ranked under filters (fewer candidates than the catalogue) add no NN similarity: the nearest
  allowed app is not the nearest app.

Statistics (``judge``)
----------------------
* Categorical: the Population Stability Index ``PSI = sum_i (a_i - e_i) ln(a_i / e_i)`` over the
  catalogue's values plus ``(other)`` (unseen values), with ``e`` the reference and ``a`` the window
  proportions. Empty bins (epsilon): a bin empty in both samples is left out; a bin empty in one sample is
  given half an observation there, proportion ``0.5 / n`` (``n`` = that sample's size; the usual
  continuity correction), never less than ``psi_epsilon`` (default 1e-4), so ``ln(a/e)`` stays finite.
  Usual reading (Siddiqi 2006, *Credit Risk Scorecards*, Wiley, ch. 8): < 0.1 stable, 0.1-0.25 moderate
  shift, > 0.25 significant shift; the alert threshold ``psi_threshold`` defaults to 0.25.
* Numeric: the two-sample Kolmogorov-Smirnov statistic ``D = sup |F_window - F_reference|`` and its
  asymptotic p-value (``scipy.stats.ks_2samp``; Massey 1951, JASA 46:68-78), threshold ``ks_threshold``
  (default 0.1); and the first Wasserstein (earth mover's) distance (``scipy.stats.wasserstein_distance``;
  Villani 2009) divided by the reference standard deviation, so that one threshold fits every feature
  (``wasserstein_threshold``, default 0.2 standard deviations: Cohen's "small" effect).
* Significance gate: a method flags drift only when its effect size exceeds its threshold AND the
  difference is significant at ``alpha`` (default 0.01): the chi-square goodness-of-fit test of the window
  counts against the reference mix (``scipy.stats.chisquare``) for PSI, the KS p-value for KS and
  Wasserstein. PSI and the Wasserstein distance are biased upwards in small samples (23 App Store genres:
  the PSI of 100 apps drawn FROM the catalogue has median 0.16 and 95th percentile 0.24; of 500 apps, 0.04
  and 0.06); the gate keeps each feature's false-alarm rate of an undrifted window near ``alpha`` (measured
  on v1, 200 windows of catalogue apps: 0.5-1.5 % per feature at 100-250 queries, none at 500).
* A feature is judged once its window holds ``min_samples`` observations (default 100); before that its
  statistics are ``None`` and it is not drifted. A feature is drifted when any of its methods is.

State: one bounded deque of recent observations per model version (``window_size``, default 500) behind a
lock; ``observe`` is O(d) (two small dot products and a hash), statistics are computed on demand
(``report``) on a snapshot taken under the lock. Every output is JSON-safe: no NaN or infinity.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from appsim.config.settings import DriftConfig
from appsim.services.similarity import ModelVersion, Query, SimilarityResult

OTHER = "(other)"
CATEGORICAL = ("category", "platform")
_W_CAP = 1e6  # a normalised Wasserstein distance is reported at most this large (finite JSON)


def _floor_proportions(counts: np.ndarray, epsilon: float) -> np.ndarray:
    """Proportions of ``counts`` ((k,) >= 0) with every empty bin given half an observation (``0.5 / n``),
    never below ``epsilon``."""
    c = np.asarray(counts, dtype=np.float64)
    n = float(c.sum())
    if n <= 0:
        return np.full(c.shape, 1.0 / max(c.size, 1))
    return np.maximum(np.where(c > 0, c, 0.5) / n, epsilon)


def _informative_bins(
    reference_counts: np.ndarray, window_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop the bins empty in BOTH samples (they carry no information, and flooring them would add a
    sample-size-dependent term)."""
    ref = np.asarray(reference_counts, dtype=np.float64)
    win = np.asarray(window_counts, dtype=np.float64)
    keep = (ref > 0) | (win > 0)
    return ref[keep], win[keep]


def psi(reference_counts: np.ndarray, window_counts: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population Stability Index ``sum_i (a_i - e_i) ln(a_i / e_i)`` of ``window_counts`` against
    ``reference_counts`` (both (k,) counts per bin, same bins). Empty bins: half an observation, at least
    ``epsilon`` (see the module docstring). Unitless, >= 0; 0.1 / 0.25 are the usual "moderate" /
    "significant" cut-offs (Siddiqi 2006). 0.0 for an empty window."""
    ref, win = _informative_bins(reference_counts, window_counts)
    if float(win.sum()) <= 0:
        return 0.0
    e = _floor_proportions(ref, epsilon)
    a = _floor_proportions(win, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def chi_square_pvalue(
    reference_counts: np.ndarray, window_counts: np.ndarray, epsilon: float = 1e-4
) -> float:
    """p-value of Pearson's chi-square goodness-of-fit test of ``window_counts`` ((k,)) against the
    reference mix (``scipy.stats.chisquare``; expected proportions floored as in ``psi``, k - 1 degrees of
    freedom). 1.0 for an empty window."""
    ref, obs = _informative_bins(reference_counts, window_counts)
    n = float(obs.sum())
    if n <= 0 or obs.size < 2:
        return 1.0
    e = _floor_proportions(ref, epsilon)
    res = stats.chisquare(obs, f_exp=e / e.sum() * n)
    p = float(res.pvalue)
    return p if np.isfinite(p) else 0.0


def ks(reference: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov ``(D, p-value)`` (``scipy.stats.ks_2samp``, two-sided, asymptotic
    p-value). ``D`` in [0, 1] is the largest gap between the two empirical CDFs."""
    res = stats.ks_2samp(np.asarray(reference, np.float64), np.asarray(window, np.float64), method="asymp")
    return float(res.statistic), float(res.pvalue)


def wasserstein_normalised(reference: np.ndarray, window: np.ndarray, scale: float) -> tuple[float, float]:
    """``(W / scale, W)``: the first Wasserstein distance between the two samples (in the feature's units,
    ``scipy.stats.wasserstein_distance``) and the same divided by ``scale`` (the reference standard
    deviation; a constant reference uses 1)."""
    w = float(stats.wasserstein_distance(np.asarray(reference, np.float64), np.asarray(window, np.float64)))
    s = scale if scale > 1e-12 else 1.0
    return float(min(w / s, _W_CAP)), w


@dataclass(frozen=True)
class Observation:
    """One query's features; ``None`` = this query says nothing about that feature.

    ``projection`` is ``(k,)`` float (principal-component coordinates), ``description_length`` in characters,
    ``nn_similarity`` a cosine similarity in [-1, 1]."""

    category: str | None = None
    platform: str | None = None
    description_length: float | None = None
    projection: tuple[float, ...] | None = None
    nn_similarity: float | None = None


@dataclass
class CategoricalReference:
    """The catalogue's mix of one categorical feature: ``values`` (k,) canonical spellings with
    ``counts_ref`` (k,) catalogue apps per value; the last bin is ``(other)`` (0 in the reference)."""

    values: tuple[str, ...]
    counts_ref: np.ndarray
    n: int
    _lookup: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lookup = {v.lower(): i for i, v in enumerate(self.values)}

    @classmethod
    def from_values(cls, values: Iterable[str]) -> CategoricalReference:
        arr = np.asarray([str(v) for v in values], dtype=object)
        uniq, counts = np.unique(arr.astype(str), return_counts=True)
        names = (*[str(u) for u in uniq if str(u) != OTHER], OTHER)
        kept = [int(c) for u, c in zip(uniq, counts, strict=True) if str(u) != OTHER]
        return cls(values=names, counts_ref=np.array([*kept, 0], dtype=np.int64), n=int(arr.shape[0]))

    def canonical(self, value: str) -> str:
        """The catalogue's spelling of ``value`` (case-insensitive), or ``(other)``."""
        i = self._lookup.get(str(value).strip().lower())
        return self.values[i] if i is not None else OTHER

    def counts(self, window: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(self.values), dtype=np.int64)
        other = len(self.values) - 1
        for v in window:
            out[self._lookup.get(v.lower(), other)] += 1
        return out


@dataclass
class NumericReference:
    """A reference sample ``values`` (n,) float64 with its standard deviation ``scale``."""

    values: np.ndarray
    scale: float

    @classmethod
    def from_values(cls, values: np.ndarray) -> NumericReference:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        return cls(values=v, scale=float(v.std()) if v.size > 1 else 0.0)


@dataclass
class VersionReference:
    """Reference distributions of one model version, built once at load (``build``).

    ``mean`` (d,) and ``components`` (k, d) define the projection ``(x - mean) @ components.T``;
    ``row_*`` are the catalogue rows' own features, aligned with the version's rows."""

    name: str
    dim: int
    categorical: dict[str, CategoricalReference]
    numeric: dict[str, NumericReference]
    mean: np.ndarray
    components: np.ndarray
    row_category: np.ndarray
    row_platform: np.ndarray
    row_description_length: np.ndarray
    id_to_row: Mapping[str, int]
    fingerprint_mult: np.ndarray
    fingerprints: np.ndarray
    fingerprint_rows: np.ndarray
    vectors: np.ndarray
    size: int
    build_seconds: float = 0.0

    @classmethod
    def build(
        cls,
        mv: ModelVersion,
        description_lengths: np.ndarray | None,
        cfg: DriftConfig,
    ) -> VersionReference:
        """References of ``mv`` from its catalogue: ``description_lengths`` (n,) characters aligned with its
        rows (``None``: unknown, the feature is not monitored).

        Numeric references (projections, description lengths) use every row, or a seeded sample of
        ``cfg.reference_sample`` rows when the catalogue is larger; the principal components are fitted on
        the same rows (``np.linalg.svd`` of their (d, d) scatter matrix, whose right singular vectors are
        those of the centred (m, d) matrix; signs fixed so the largest loading is positive). The NN
        reference runs one top-2 search per sampled app through the version's own index. Cost: O(m d^2 +
        n d) numpy; v1 (6,463 x 64) ~0.2 s."""
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed)
        x = mv.vectors
        n, d = int(x.shape[0]), int(x.shape[1])
        rows = np.sort(rng.choice(n, size=cfg.reference_sample, replace=False)) if n > cfg.reference_sample \
            else np.arange(n)
        xf = np.asarray(x[rows], dtype=np.float64)
        mean = xf.mean(axis=0)
        k = min(cfg.projection_components, d, max(n - 1, 1))
        xc = xf - mean
        _, _, vt = np.linalg.svd(xc.T @ xc)
        comps = vt[:k].copy()
        signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
        comps *= np.where(signs == 0, 1.0, signs)[:, None]
        proj = xc @ comps.T
        numeric = {f"embedding_pc{i + 1}": NumericReference.from_values(proj[:, i]) for i in range(k)}
        nn = _nn_reference(mv, cfg.nn_reference_sample, rng)
        numeric["nn_similarity"] = NumericReference.from_values(nn)
        lengths = (np.asarray(description_lengths, dtype=np.float64) if description_lengths is not None
                   else np.full(n, np.nan))
        if description_lengths is not None:
            numeric["description_length"] = NumericReference.from_values(lengths[rows])
        cats = np.asarray(mv.categories, dtype=object)
        plats = np.asarray(mv.platforms, dtype=object)
        mult = rng.integers(1, 2**63, size=d, dtype=np.uint64) | np.uint64(1)
        fps = np.concatenate([_fingerprint(np.asarray(x[s:s + 65_536]), mult) for s in range(0, n, 65_536)])
        order = np.argsort(fps, kind="stable")
        return cls(
            name=mv.name, dim=d,
            categorical={"category": CategoricalReference.from_values(cats.tolist()),
                         "platform": CategoricalReference.from_values(plats.tolist())},
            numeric=numeric, mean=mean, components=comps, row_category=cats, row_platform=plats,
            row_description_length=lengths, id_to_row=mv.id_to_row, fingerprint_mult=mult,
            fingerprints=fps[order], fingerprint_rows=order.astype(np.int64), vectors=x, size=n,
            build_seconds=time.perf_counter() - t0,
        )

    def row_of_vector(self, vector: np.ndarray) -> int | None:
        """The catalogue row whose embedding is exactly ``vector`` ((d,) float32), or None. O(d + log n)."""
        v = np.ascontiguousarray(vector, dtype=np.float32)
        if v.shape != (self.dim,):
            return None
        fp = _fingerprint(v[None, :], self.fingerprint_mult)[0]
        lo = int(np.searchsorted(self.fingerprints, fp, side="left"))
        hi = int(np.searchsorted(self.fingerprints, fp, side="right"))
        for row in self.fingerprint_rows[lo:hi].tolist():
            if np.array_equal(np.asarray(self.vectors[row], dtype=np.float32), v):
                return int(row)
        return None

    @property
    def features(self) -> list[str]:
        """Monitored features, in report order."""
        names = [*self.categorical]
        if "description_length" in self.numeric:
            names.append("description_length")
        names += [f for f in self.numeric if f.startswith("embedding_pc")]
        names.append("nn_similarity")
        return names

    def project(self, vector: np.ndarray) -> tuple[float, ...]:
        """``(k,)`` principal-component coordinates of one (d,) embedding (O(k d))."""
        v = np.asarray(vector, dtype=np.float64) - self.mean
        return tuple(float(c) for c in self.components @ v)

    def row_of(self, result: SimilarityResult, query: Query | None) -> int | None:
        """The catalogue row an ``app_id`` query asked about (from the query, else from its embedding)."""
        if query is not None and query.app_id is not None:
            return self.id_to_row.get(str(query.app_id))
        if result.query_vector is None:
            return None
        return self.row_of_vector(result.query_vector)

    def observation_from_result(
        self, result: SimilarityResult, query: Query | None = None
    ) -> Observation | None:
        """The features one answered query contributes (see the module docstring); ``None`` when it
        contributes nothing (no embedding, wrong dimension)."""
        vec = result.query_vector
        if vec is None or np.shape(vec) != (self.dim,):
            return None
        kind = result.query_kind
        projection = self.project(vec)
        nn: float | None = None
        unfiltered = result.candidates >= self.size - (1 if kind == "app_id" else 0)
        if result.neighbours and unfiltered:
            nn = float(result.neighbours[0].score)
        category = platform = None
        length: float | None = None
        if kind == "app_id":
            row = self.row_of(result, query)
            if row is not None:
                category, platform = str(self.row_category[row]), str(self.row_platform[row])
                ln = float(self.row_description_length[row])
                length = ln if np.isfinite(ln) else None
        elif kind == "app" and query is not None and query.app is not None:
            app = query.app
            category = self.categorical["category"].canonical(app.category) if app.category else None
            platform = self.categorical["platform"].canonical(app.platform) if app.platform else None
            length = float(len(app.description or ""))
        if "description_length" not in self.numeric:
            length = None
        return Observation(category=category, platform=platform, description_length=length,
                           projection=projection, nn_similarity=nn)


def _fingerprint(x: np.ndarray, mult: np.ndarray) -> np.ndarray:
    """(m,) uint64 fingerprints of (m, d) float32 rows: ``sum_i mult_i * bits_i mod 2^64`` over the rows'
    IEEE-754 bit patterns (a random linear hash; equal rows -> equal fingerprints)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        return (bits * mult).sum(axis=1, dtype=np.uint64)


def _nn_reference(mv: ModelVersion, sample: int, rng: np.random.Generator) -> np.ndarray:
    """(m,) top-1 cosine similarity of ``sample`` seeded catalogue apps to the rest of the catalogue
    (leave-one-out: the app's own row is skipped), through the version's index."""
    n = mv.size
    if n < 2:
        return np.empty(0, dtype=np.float64)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    out = np.empty(rows.shape[0], dtype=np.float64)
    for s in range(0, rows.shape[0], 256):
        block = rows[s:s + 256]
        q = np.asarray(mv.vectors[block], dtype=np.float32)
        scores, found = mv.index.search(q, 2, None)
        for j, r in enumerate(block.tolist()):
            pairs = zip(scores[j].tolist(), found[j].tolist(), strict=True)
            keep = [float(sc) for sc, fr in pairs if fr != r]
            out[s + j] = keep[0] if keep else np.nan
    return out[np.isfinite(out)]


@dataclass
class _Window:
    obs: deque[Observation]
    seen: int = 0
    since_refresh: int = 0


class DriftMonitor:
    """Rolling windows of recent queries per model version, judged against ``VersionReference``s.

    Thread-safe: ``observe`` / ``set_reference`` / ``report`` may be called from any thread.
    ``on_refresh(report)`` (optional) is called with a version's report every ``cfg.update_every``
    observations of that version (e.g. to update Prometheus gauges), outside the lock."""

    def __init__(self, cfg: DriftConfig, on_refresh: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self._refs: dict[str, VersionReference] = {}
        self._windows: dict[str, _Window] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._on_refresh = on_refresh

    # ---- state -------------------------------------------------------------------------------------
    def set_reference(self, ref: VersionReference) -> None:
        """Install (or replace) a version's reference; its window starts empty."""
        with self._lock:
            self._refs[ref.name] = ref
            self._windows[ref.name] = _Window(obs=deque(maxlen=self.cfg.window_size))
            self._errors.pop(ref.name, None)

    def set_error(self, version: str, error: str) -> None:
        """Record why a version's reference could not be built (it is then not monitored)."""
        with self._lock:
            self._errors[version] = error

    def reference(self, version: str) -> VersionReference | None:
        with self._lock:
            return self._refs.get(version)

    @property
    def versions(self) -> list[str]:
        with self._lock:
            return sorted(set(self._refs) | set(self._errors))

    def reset(self, version: str | None = None) -> None:
        """Empty the window of ``version`` (all versions when None)."""
        with self._lock:
            for name, w in self._windows.items():
                if version is None or name == version:
                    w.obs.clear()
                    w.seen = w.since_refresh = 0

    def observe(self, version: str, obs: Observation) -> None:
        """Append one observation to ``version``'s window (ignored for an unmonitored version)."""
        due = False
        with self._lock:
            w = self._windows.get(version)
            if w is None:
                return
            w.obs.append(obs)
            w.seen += 1
            w.since_refresh += 1
            if w.since_refresh >= self.cfg.update_every:
                w.since_refresh = 0
                due = True
        if due and self._on_refresh is not None and self._refreshing.acquire(blocking=False):
            try:
                self._on_refresh(self.report(version))
            finally:
                self._refreshing.release()

    def observe_result(self, result: SimilarityResult, query: Query | None = None) -> bool:
        """Feed one answered query (O(d)); returns whether it was recorded."""
        ref = self.reference(result.model_version)
        if ref is None:
            return False
        obs = ref.observation_from_result(result, query)
        if obs is None:
            return False
        self.observe(result.model_version, obs)
        return True

    # ---- judging -----------------------------------------------------------------------------------
    def report(self, version: str | None = None) -> dict[str, Any]:
        """``{"generated_at": epoch s, "config": {...}, "versions": {name: version report}}`` (JSON-safe).

        A version report: ``{"model_version", "status" ("ok"|"error"), "error", "n_observed" (since the
        reference was built), "n_window", "drifted", "drifted_features", "features": {feature: {"kind",
        "n_window", "n_reference", "judged", "drifted", "methods": {method: {"statistic", "threshold",
        "drifted", "p_value"?, "raw"?}}}}}``."""
        with self._lock:
            names = [version] if version is not None else sorted(set(self._refs) | set(self._errors))
            snaps = {}
            for n in names:
                w = self._windows.get(n)
                obs = list(w.obs) if w else []
                snaps[n] = (self._refs.get(n), obs, w.seen if w else 0, self._errors.get(n))
        out: dict[str, Any] = {}
        for name, (ref, window, seen, error) in snaps.items():
            if ref is None:
                out[name] = {"model_version": name, "status": "error", "error": error or "no reference",
                             "n_observed": 0, "n_window": 0, "drifted": False, "drifted_features": [],
                             "features": {}}
                continue
            feats = judge(ref, window, self.cfg)
            drifted = [f for f, r in feats.items() if r["drifted"]]
            out[name] = {"model_version": name, "status": "ok", "error": None, "n_observed": seen,
                         "n_window": len(window), "drifted": bool(drifted), "drifted_features": drifted,
                         "features": feats}
        return {"generated_at": round(time.time(), 3), "config": self.cfg.model_dump(), "versions": out}


def _window_values(window: Sequence[Observation], feature: str) -> list[Any]:
    if feature in CATEGORICAL:
        return [v for o in window if (v := getattr(o, feature)) is not None]
    if feature.startswith("embedding_pc"):
        i = int(feature.removeprefix("embedding_pc")) - 1
        return [o.projection[i] for o in window if o.projection is not None and len(o.projection) > i]
    return [v for o in window if (v := getattr(o, feature)) is not None]


def judge(
    ref: VersionReference, window: Sequence[Observation], cfg: DriftConfig
) -> dict[str, dict[str, Any]]:
    """Per-feature drift of ``window`` against ``ref`` (see the module docstring for the statistics)."""
    out: dict[str, dict[str, Any]] = {}
    for feature in ref.features:
        values = _window_values(window, feature)
        judged = len(values) >= cfg.min_samples
        methods: dict[str, dict[str, Any]] = {}
        if feature in CATEGORICAL:
            cref = ref.categorical[feature]
            stat = p = None
            if judged:
                counts = cref.counts(values)
                stat = psi(cref.counts_ref, counts, cfg.psi_epsilon)
                p = chi_square_pvalue(cref.counts_ref, counts, cfg.psi_epsilon)
            methods["psi"] = _method(stat, p, cfg.psi_threshold, cfg.alpha)
            kind, n_ref = "categorical", cref.n
        else:
            nref = ref.numeric[feature]
            d = p = wn = w = None
            if judged and nref.values.size:
                arr = np.asarray(values, dtype=np.float64)
                d, p = ks(nref.values, arr)
                wn, w = wasserstein_normalised(nref.values, arr, nref.scale)
            methods["ks"] = _method(d, p, cfg.ks_threshold, cfg.alpha)
            methods["wasserstein"] = {**_method(wn, p, cfg.wasserstein_threshold, cfg.alpha), "raw": _r(w)}
            kind, n_ref = "numeric", int(nref.values.size)
        out[feature] = {
            "kind": kind, "n_window": len(values), "n_reference": n_ref, "min_samples": cfg.min_samples,
            "judged": judged, "drifted": any(m["drifted"] for m in methods.values()), "methods": methods,
        }
    return out


def _method(stat: float | None, p: float | None, threshold: float, alpha: float) -> dict[str, Any]:
    drifted = stat is not None and p is not None and stat > threshold and p < alpha
    return {"statistic": _r(stat), "threshold": threshold, "p_value": _r(p, 8), "alpha": alpha,
            "drifted": bool(drifted)}


def _r(v: float | None, digits: int = 6) -> float | None:
    if v is None or not np.isfinite(v):
        return None
    return round(float(v), digits)


def description_lengths_for(mv: ModelVersion, apps: Any) -> np.ndarray | None:
    """(n,) description lengths in characters aligned with ``mv``'s rows, from the catalogue metadata
    (a pandas DataFrame with ``app_id`` and ``description``); ``None`` without a description column."""
    if apps is None or "description" not in getattr(apps, "columns", ()):
        return None
    meta = apps.drop_duplicates("app_id", keep="last").set_index("app_id")
    lens = meta["description"].astype(str).str.len()
    aligned = lens.reindex(np.asarray(mv.ids, dtype=str))
    return aligned.fillna(0).to_numpy(dtype=np.float64)
