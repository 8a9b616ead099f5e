"""Drift detection (appsim.services.drift) on the real catalogue, with planted, seeded query streams.

* undrifted: catalogue apps (app_id queries) and held-out apps (artifacts/real/holdout.csv, encoded by the
  version's own encoder: their embeddings are ``<version>/holdout_vectors.npy``) -> no feature drifts;
* one genre only -> category drifts (PSI), and so do the embedding projections;
* random vectors -> the embedding projections and the nearest-neighbour similarity drift.

Every version whose artifact exists is covered (v1 always; v2 once built).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from appsim.config.settings import DriftConfig, Settings
from appsim.data.catalogue import load_model_version, read_apps
from appsim.domain import AppMetadata
from appsim.services.drift import (
    DriftMonitor,
    Observation,
    VersionReference,
    chi_square_pvalue,
    description_lengths_for,
    ks,
    psi,
    wasserstein_normalised,
)
from appsim.services.similarity import ModelVersion, Query, SimilarityResult, SimilarityService

REAL = Path(__file__).resolve().parents[2] / "artifacts" / "real"
VERSIONS = [v for v in ("v1", "v2") if (REAL / v / "manifest.json").is_file()]
CFG = DriftConfig(window_size=500, min_samples=100)
EMBEDDING = ("embedding_pc1", "embedding_pc2", "embedding_pc3")


@dataclasses.dataclass
class Loaded:
    mv: ModelVersion
    ref: VersionReference
    sim: SimilarityService
    holdout: pd.DataFrame  # metadata rows aligned with holdout_vectors
    holdout_vectors: np.ndarray


@pytest.fixture(scope="module")
def apps() -> pd.DataFrame:
    return read_apps(REAL)


@pytest.fixture(scope="module", params=VERSIONS)
def loaded(request: pytest.FixtureRequest, apps: pd.DataFrame) -> Loaded:
    version = str(request.param)
    mv = load_model_version(REAL, version, apps=apps)
    ref = VersionReference.build(mv, description_lengths_for(mv, apps), CFG)
    if not (REAL / version / "holdout_vectors.npy").is_file():
        pytest.skip(f"{version} has no holdout_vectors.npy (optional in the artifact format)")
    hv = np.load(REAL / version / "holdout_vectors.npy", allow_pickle=False)
    hid = np.load(REAL / version / "holdout_ids.npy", allow_pickle=False).astype(str)
    meta = pd.read_csv(REAL / "holdout.csv", dtype={"app_id": str}, keep_default_na=False).set_index("app_id")
    return Loaded(mv, ref, SimilarityService({version: mv}), meta.loc[hid].reset_index(), hv)


def monitor_for(ld: Loaded, **cfg: Any) -> DriftMonitor:
    m = DriftMonitor(CFG.model_copy(update=cfg) if cfg else CFG)
    m.set_reference(ld.ref)
    return m


def feed_app_ids(ld: Loaded, m: DriftMonitor, rows: np.ndarray) -> None:
    queries = [Query(app_id=str(ld.mv.ids[r])) for r in rows]
    for res in ld.sim.find_similar_batch(ld.mv.name, queries, 10):
        assert isinstance(res, SimilarityResult)
        assert m.observe_result(res)  # no query passed: the app is found from its embedding


def feed_holdout(ld: Loaded, m: DriftMonitor, idx: np.ndarray) -> None:
    """Held-out apps as metadata (cold-start) queries: their encoder embeddings + their metadata."""
    vecs = [Query(vector=ld.holdout_vectors[i]) for i in idx]
    for i, res in zip(idx, ld.sim.find_similar_batch(ld.mv.name, vecs, 10), strict=True):
        assert isinstance(res, SimilarityResult)
        row = ld.holdout.iloc[int(i)]
        q = Query(app=AppMetadata(name=row["name"], category=row["category"], platform=row["platform"],
                                  description=row["description"]))
        assert m.observe_result(dataclasses.replace(res, query_kind="app"), q)


def drifted(report: dict[str, Any], version: str) -> set[str]:
    return set(report["versions"][version]["drifted_features"])


def summary(report: dict[str, Any], version: str) -> dict[str, Any]:
    return {f: {k: m["statistic"] for k, m in v["methods"].items()}
            for f, v in report["versions"][version]["features"].items()}


def show(label: str, report: dict[str, Any], version: str) -> None:
    """One line per stream (``pytest -s`` prints it; docs/reliability.md quotes it)."""
    parts = []
    for f, v in report["versions"][version]["features"].items():
        if v["judged"]:
            stats = "/".join(f"{m['statistic']:.3g}" for m in v["methods"].values())
            parts.append(f"{f}={stats}{'*' if v['drifted'] else ''}")
    print(f"\n[{version}] {label}: " + " ".join(parts) + "  (* = drifted; psi or ks/wasserstein)")


# ---- the statistics --------------------------------------------------------------------------------


def test_psi_matches_hand_computation_and_empty_bins_stay_finite() -> None:
    ref = np.array([50, 30, 20, 0])
    assert psi(ref, np.array([5, 3, 2, 0])) == pytest.approx(0.0, abs=1e-12)
    # a = (.4, .4, .2), e = (.5, .3, .2): PSI = -.1 ln(.8) + .1 ln(4/3) + 0
    want = -0.1 * np.log(0.8) + 0.1 * np.log(0.4 / 0.3)
    got = psi(np.array([50, 30, 20]), np.array([40, 40, 20]))
    assert got == pytest.approx(want, rel=1e-9)
    # an empty window bin counts half an observation; an unseen value ((other), 0 in the reference) too
    one_bin = psi(ref, np.array([100, 0, 0, 0]))
    unseen = psi(ref, np.array([0, 0, 0, 100]))
    assert np.isfinite(one_bin) and np.isfinite(unseen) and unseen > one_bin > 0.25
    assert psi(ref, np.zeros(4)) == 0.0
    assert chi_square_pvalue(ref, np.array([50, 30, 20, 0])) > 0.5
    assert chi_square_pvalue(ref, np.array([0, 0, 100, 0])) < 1e-6


def test_ks_and_wasserstein_on_known_samples() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(0.0, 2.0, 5000)
    d, p = ks(a, a)
    assert d == 0.0 and p == pytest.approx(1.0)
    shifted = a + 1.0
    wn, w = wasserstein_normalised(a, shifted, scale=2.0)
    assert w == pytest.approx(1.0, rel=1e-9) and wn == pytest.approx(0.5, rel=1e-9)
    d, p = ks(a, rng.normal(1.0, 2.0, 500))
    assert 0.1 < d < 0.35 and p < 1e-6
    # a constant reference has no scale: the distance is reported in the feature's units, finite
    wn, w = wasserstein_normalised(np.zeros(10), np.ones(10), scale=0.0)
    assert wn == w == 1.0


def test_config_is_typed_and_validated() -> None:
    s = Settings(drift={"window_size": 300, "min_samples": 50, "psi_threshold": 0.1})  # type: ignore[arg-type]
    assert isinstance(s.drift, DriftConfig) and s.drift.window_size == 300 and s.drift.psi_threshold == 0.1
    with pytest.raises(ValueError, match="min_samples"):
        DriftConfig(window_size=50, min_samples=100)
    with pytest.raises(ValueError):
        DriftConfig(window_sise=50)  # type: ignore[call-arg]  # a misspelt key is an error, not ignored


# ---- references ------------------------------------------------------------------------------------


def test_reference_is_built_from_the_catalogue(loaded: Loaded) -> None:
    ref, mv = loaded.ref, loaded.mv
    assert ref.features == ["category", "platform", "description_length", *EMBEDDING, "nn_similarity"]
    cat = ref.categorical["category"]
    assert cat.n == mv.size and cat.counts_ref.sum() == mv.size and cat.values[-1] == "(other)"
    assert cat.counts_ref[cat.values.index("Games")] == int((mv.categories == "Games").sum())
    assert ref.components.shape == (3, mv.dim)
    assert np.allclose(ref.components @ ref.components.T, np.eye(3), atol=1e-6)  # orthonormal PCs
    pcs = np.stack([ref.numeric[f].values for f in EMBEDDING], axis=1)
    var = pcs.var(axis=0)
    assert var[0] >= var[1] >= var[2] > 0  # ordered by explained variance
    nn = ref.numeric["nn_similarity"].values
    assert nn.shape == (CFG.nn_reference_sample,) and np.all((nn > 0) & (nn <= 1.0 + 1e-6))
    lengths = ref.numeric["description_length"].values
    assert lengths.shape == (mv.size,) and lengths.min() >= 0 and lengths.max() <= 4000
    assert ref.build_seconds < 30
    # an app_id query's embedding IS its catalogue row: found again exactly
    for row in (0, mv.size // 2, mv.size - 1):
        assert ref.row_of_vector(np.asarray(mv.vectors[row])) in {row, *np.flatnonzero(
            (np.asarray(mv.vectors) == np.asarray(mv.vectors[row])).all(axis=1)).tolist()}
    assert ref.row_of_vector(np.ones(mv.dim, dtype=np.float32)) is None


def test_reference_is_deterministic(loaded: Loaded, apps: pd.DataFrame) -> None:
    again = VersionReference.build(loaded.mv, description_lengths_for(loaded.mv, apps), CFG)
    assert np.array_equal(again.numeric["nn_similarity"].values, loaded.ref.numeric["nn_similarity"].values)
    assert np.allclose(again.components, loaded.ref.components)


# ---- what a query contributes ---------------------------------------------------------------------


def test_observation_per_query_kind(loaded: Loaded) -> None:
    ld = loaded
    row = int(np.flatnonzero(ld.mv.categories == "Education")[3])
    aid = str(ld.mv.ids[row])
    res = ld.sim.find_similar(ld.mv.name, Query(app_id=aid), 5)
    for q in (None, Query(app_id=aid)):  # found from the embedding, or from the app_id
        o = ld.ref.observation_from_result(res, q)
        assert o is not None and o.category == "Education" and o.platform == ld.mv.platforms[row]
        assert o.description_length == ld.ref.row_description_length[row]
        assert o.nn_similarity == res.neighbours[0].score and len(o.projection or ()) == 3
    # raw vectors: embedding and NN only
    vres = ld.sim.find_similar(ld.mv.name, Query(vector=np.ones(ld.mv.dim)), 5)
    o = ld.ref.observation_from_result(vres)
    assert o is not None and o.category is None and o.description_length is None
    assert o.nn_similarity is not None
    # filtered: the nearest ALLOWED app is not the nearest app -> no NN observation
    from appsim.services.similarity import Filters

    fres = ld.sim.find_similar(ld.mv.name, Query(vector=np.ones(ld.mv.dim)), 5, Filters(category=("Games",)))
    fo = ld.ref.observation_from_result(fres)
    assert fo is not None and fo.nn_similarity is None and fo.projection is not None
    # metadata: case-insensitive category, unknown platform -> (other), no description -> 0 characters
    app = AppMetadata(name="x", category="health & fitness", platform="symbian")
    mo = ld.ref.observation_from_result(dataclasses.replace(vres, query_kind="app"), Query(app=app))
    assert mo is not None and (mo.category, mo.platform, mo.description_length) == (
        "Health & Fitness", "(other)", 0.0)
    # wrong dimension / no vector: nothing
    assert ld.ref.observation_from_result(dataclasses.replace(vres, query_vector=np.ones(3))) is None


# ---- planted streams -------------------------------------------------------------------------------


def test_catalogue_queries_show_no_drift(loaded: Loaded) -> None:
    m = monitor_for(loaded)
    rows = np.random.default_rng(11).choice(loaded.mv.size, 500, replace=False)
    feed_app_ids(loaded, m, rows)
    rep = m.report(loaded.mv.name)
    show("500 catalogue apps (app_id)", rep, loaded.mv.name)
    v = rep["versions"][loaded.mv.name]
    assert v["n_window"] == 500 and all(f["judged"] for f in v["features"].values())
    assert drifted(rep, loaded.mv.name) == set(), summary(rep, loaded.mv.name)


def test_held_out_apps_show_no_drift(loaded: Loaded) -> None:
    m = monitor_for(loaded)
    idx = np.random.default_rng(12).choice(len(loaded.holdout), 500, replace=False)
    feed_holdout(loaded, m, idx)
    rep = m.report(loaded.mv.name)
    show("500 held-out apps (metadata)", rep, loaded.mv.name)
    feats = rep["versions"][loaded.mv.name]["features"]
    for f in ("category", "platform", "description_length", *EMBEDDING):
        assert feats[f]["n_window"] == 500
    assert drifted(rep, loaded.mv.name) == set(), summary(rep, loaded.mv.name)


@pytest.mark.parametrize("genre", ["Education", "Games"])
def test_single_genre_drifts_on_category_and_projections(loaded: Loaded, genre: str) -> None:
    m = monitor_for(loaded)
    pool = np.flatnonzero(loaded.mv.categories == genre)
    feed_app_ids(loaded, m, np.random.default_rng(13).choice(pool, 300, replace=False))
    rep = m.report(loaded.mv.name)
    show(f"300 {genre} apps only", rep, loaded.mv.name)
    found = drifted(rep, loaded.mv.name)
    cat = rep["versions"][loaded.mv.name]["features"]["category"]["methods"]["psi"]
    assert "category" in found, summary(rep, loaded.mv.name)
    assert cat["statistic"] > 0.25 and cat["p_value"] < 1e-6
    assert found & set(EMBEDDING), summary(rep, loaded.mv.name)
    assert "platform" not in found


def test_random_vectors_drift_on_projections_and_nn(loaded: Loaded) -> None:
    m = monitor_for(loaded)
    rng = np.random.default_rng(14)
    queries = [Query(vector=v) for v in rng.standard_normal((300, loaded.mv.dim))]
    for res in loaded.sim.find_similar_batch(loaded.mv.name, queries, 10):
        assert isinstance(res, SimilarityResult) and m.observe_result(res)
    rep = m.report(loaded.mv.name)
    show("300 random gaussian vectors", rep, loaded.mv.name)
    found = drifted(rep, loaded.mv.name)
    assert "nn_similarity" in found and len(found & set(EMBEDDING)) >= 2, summary(rep, loaded.mv.name)
    feats = rep["versions"][loaded.mv.name]["features"]
    # raw vectors say nothing about metadata: those features are not judged, not drifted
    for f in ("category", "platform", "description_length"):
        assert feats[f]["n_window"] == 0 and not feats[f]["judged"] and not feats[f]["drifted"]
        assert all(m["statistic"] is None for m in feats[f]["methods"].values())


# ---- window, report, threads ---------------------------------------------------------------------


def test_window_is_bounded_and_needs_min_samples(loaded: Loaded) -> None:
    m = monitor_for(loaded, window_size=120, min_samples=100)
    name = loaded.mv.name
    far = Observation(projection=(9.0, 9.0, 9.0), nn_similarity=-1.0)
    for _ in range(99):
        m.observe(name, far)
    v = m.report(name)["versions"][name]
    assert v["n_window"] == 99 and not v["drifted"] and not v["features"]["nn_similarity"]["judged"]
    m.observe(name, far)
    assert m.report(name)["versions"][name]["drifted"]  # judged at min_samples
    for _ in range(500):
        m.observe(name, far)
    v = m.report(name)["versions"][name]
    assert v["n_window"] == 120 and v["n_observed"] == 600
    m.reset(name)
    assert m.report(name)["versions"][name]["n_window"] == 0
    m.observe("v-unknown", far)  # an unmonitored version is ignored
    assert "v-unknown" not in m.report()["versions"]


def test_report_is_strict_json(loaded: Loaded) -> None:
    m = monitor_for(loaded)
    name = loaded.mv.name
    text = json.dumps(m.report(), allow_nan=False)  # empty window: nulls, no NaN
    for i in range(150):
        m.observe(name, Observation(category="Games", platform="ios", description_length=float(i),
                                    projection=(0.0, 0.0, 0.0), nn_similarity=1.0))
    rep = m.report()
    text = json.dumps(rep, allow_nan=False)
    assert json.loads(text)["versions"][name]["features"]["description_length"]["judged"] is True
    m.set_error("v-broken", "ArtifactError: boom")
    broken = m.report()["versions"]["v-broken"]
    assert broken["status"] == "error" and "boom" in broken["error"]
    json.dumps(m.report(), allow_nan=False)


def test_concurrent_observe_and_report_is_thread_safe(loaded: Loaded) -> None:
    refreshes: list[int] = []
    m = DriftMonitor(CFG.model_copy(update={"window_size": 1000, "update_every": 250}),
                     on_refresh=lambda r: refreshes.append(1))
    m.set_reference(loaded.ref)
    name = loaded.mv.name
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(500):
                m.observe(name, Observation(projection=tuple(rng.normal(size=3)), nn_similarity=0.5))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader() -> None:
        try:
            for _ in range(10):
                json.dumps(m.report(name), allow_nan=False)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    v = m.report(name)["versions"][name]
    assert v["n_observed"] == 2000 and v["n_window"] == 1000
    assert 1 <= len(refreshes) <= 8  # every 250 observations, never two refreshes at once


def test_observe_is_cheap(loaded: Loaded) -> None:
    m = monitor_for(loaded)
    res = loaded.sim.find_similar(loaded.mv.name, Query(app_id=str(loaded.mv.ids[0])), 10)
    t0 = time.perf_counter()
    for _ in range(2000):
        m.observe_result(res)
    per_call = (time.perf_counter() - t0) / 2000
    print(f"observe_result: {per_call * 1e6:.1f} us per query ({loaded.mv.name}, d={loaded.mv.dim})")
    assert per_call < 1e-3  # O(d): a hash and a (3, d) product; generous for shared CPUs
