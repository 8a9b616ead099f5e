"""SimilarityService against a brute-force oracle (float64, full sort) on the real catalogue and on a tiny
hand-made one; filters before ranking; top_k bounds; deterministic tie-breaking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appsim.backends.index import ExactIndex
from appsim.data.catalogue import load_model_version
from appsim.domain import AppMetadata
from appsim.errors import DimensionMismatchError, InvalidVectorError, NotFoundError, ValidationError
from appsim.services.similarity import Filters, ModelVersion, Query, SimilarityService


def oracle(
    vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray
) -> list[tuple[str, float]]:
    """Independent brute force: float64 dot products, python sort by (-score, app_id)."""
    x = np.asarray(vectors, dtype=np.float64)
    s = x @ (q.astype(np.float64) / np.linalg.norm(q))
    pairs = [(float(s[i]), str(ids[i])) for i in range(len(ids)) if allowed[i]]
    pairs.sort(key=lambda t: (-t[0], t[1]))
    return [(a, sc) for sc, a in pairs[:k]]


def assert_matches_oracle(got: list, want: list[tuple[str, float]]) -> None:
    assert len(got) == len(want)
    for g, (_wid, wsc) in zip(got, want, strict=True):
        assert abs(g.score - wsc) < 1e-5
    # ids equal, except that two apps whose float64 scores differ by < 1e-6 may swap (float32 rounding)
    for i, (g, (wid, wsc)) in enumerate(zip(got, want, strict=True)):
        if g.app_id != wid:
            near = [w for w in want if abs(w[1] - wsc) < 1e-6]
            assert g.app_id in {w[0] for w in near}, f"rank {i + 1}: {g.app_id} != {wid}"


@pytest.fixture(scope="module", params=["v1", "v2"])
def real_version(request: pytest.FixtureRequest, real_dir: Path) -> ModelVersion:
    if not (real_dir / request.param / "manifest.json").is_file():
        pytest.fail(f"artifacts/real/{request.param} missing")
    return load_model_version(real_dir, request.param)


def test_real_catalogue_equals_brute_force_oracle(real_version: ModelVersion) -> None:
    svc = SimilarityService({real_version.name: real_version})
    rng = np.random.default_rng(7)
    for row in rng.choice(real_version.size, size=25, replace=False):
        app_id = str(real_version.ids[row])
        res = svc.find_similar(real_version.name, Query(app_id=app_id), top_k=20)
        allowed = np.ones(real_version.size, dtype=bool)
        allowed[row] = False
        want = oracle(
            real_version.vectors, real_version.ids, np.asarray(real_version.vectors[row]), 20, allowed
        )
        assert_matches_oracle(res.neighbours, want)
        assert app_id not in {n.app_id for n in res.neighbours}


def test_real_filters_apply_before_ranking(real_version: ModelVersion) -> None:
    svc = SimilarityService({real_version.name: real_version})
    row = int(np.flatnonzero(real_version.categories != "Games")[0])
    q = np.asarray(real_version.vectors[row])
    res = svc.find_similar(
        real_version.name, Query(vector=q.tolist()), top_k=15, filters=Filters(category=("Games",))
    )
    assert len(res.neighbours) == 15
    assert {n.category for n in res.neighbours} == {"Games"}
    allowed = real_version.categories == "Games"
    assert_matches_oracle(res.neighbours, oracle(real_version.vectors, real_version.ids, q, 15, allowed))
    assert res.candidates == int(allowed.sum())


def test_top_k_larger_than_filtered_catalogue_returns_all_without_padding(real_version: ModelVersion) -> None:
    svc = SimilarityService({real_version.name: real_version})
    n_catalogs = int((real_version.categories == "Catalogs").sum())
    assert 0 < n_catalogs < 100
    res = svc.find_similar(
        real_version.name,
        Query(app_id=str(real_version.ids[0])),
        top_k=100,
        filters=Filters(category=("catalogs",)),
    )
    got = [n.app_id for n in res.neighbours]
    assert len(got) == len(set(got)) == n_catalogs - (1 if real_version.categories[0] == "Catalogs" else 0)
    assert all(real_version.id_to_row[a] >= 0 for a in got)


def test_prefix_property_and_repeatability(real_version: ModelVersion) -> None:
    svc = SimilarityService({real_version.name: real_version})
    q = Query(app_id=str(real_version.ids[123]))
    top50 = svc.find_similar(real_version.name, q, top_k=50).neighbours
    top5 = svc.find_similar(real_version.name, q, top_k=5).neighbours
    assert [n.app_id for n in top50[:5]] == [n.app_id for n in top5]
    again = svc.find_similar(real_version.name, q, top_k=50).neighbours
    assert [(n.app_id, n.score) for n in again] == [(n.app_id, n.score) for n in top50]
    scores = [n.score for n in top50]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)


def test_cold_start_metadata_query_lands_in_genre(real_version: ModelVersion) -> None:
    svc = SimilarityService({real_version.name: real_version})
    app = AppMetadata(
        name="Chess Master",
        category="Games",
        description="Play chess against the computer or friends. Openings, puzzles, ELO rating.",
    )
    res = svc.find_similar(real_version.name, Query(app=app), top_k=10)
    assert sum(n.category == "Games" for n in res.neighbours) >= 8
    assert res.encoding == real_version.encoder.kind  # type: ignore[union-attr]


def _tiny() -> SimilarityService:
    # rows 0 and 2 are identical (a score tie); ids chosen so that id order != row order
    vecs = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32)
    ids = np.array(["b", "c", "a", "d", "e"], dtype=object)
    mv = ModelVersion(
        name="t",
        ids=ids,
        vectors=vecs,
        names=ids.copy(),
        categories=np.array(["X", "X", "Y", "Y", "X"], dtype=object),
        platforms=np.array(["ios"] * 5, dtype=object),
        index=ExactIndex(vecs),
        encoder=None,
    )
    mv.index = ExactIndex(vecs, mv.tiebreak)
    return SimilarityService({"t": mv}, max_top_k=10)


def test_ties_break_by_app_id_and_known_scores() -> None:
    svc = _tiny()
    res = svc.find_similar("t", Query(vector=[2.0, 0.0, 0.0]), top_k=3)
    assert [(n.app_id, round(n.score, 6)) for n in res.neighbours] == [("a", 1.0), ("b", 1.0), ("d", 0.6)]
    res1 = svc.find_similar("t", Query(vector=[1.0, 0.0, 0.0]), top_k=1)
    assert [n.app_id for n in res1.neighbours] == ["a"]
    # a query by id excludes the app itself; its twin stays first
    res2 = svc.find_similar("t", Query(app_id="b"), top_k=2)
    assert [n.app_id for n in res2.neighbours] == ["a", "d"]


def test_errors_are_domain_errors() -> None:
    svc = _tiny()
    with pytest.raises(DimensionMismatchError) as e:
        svc.find_similar("t", Query(vector=[1.0, 0.0]))
    assert e.value.extra == {"expected_dimension": 3, "received_dimension": 2}
    for bad in ([0.0, 0.0, 0.0], [float("nan"), 0, 1], [float("inf"), 0, 1]):
        with pytest.raises(InvalidVectorError):
            svc.find_similar("t", Query(vector=bad))
    with pytest.raises(NotFoundError):
        svc.find_similar("t", Query(app_id="zzz"))
    for k in (0, 11, -1, True, 2.5):
        with pytest.raises(ValidationError):
            svc.find_similar("t", Query(app_id="a"), top_k=k)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as f:
        svc.find_similar("t", Query(app_id="a"), filters=Filters(category=("nope",)))
    assert f.value.field == "filters.category"


def test_batch_equals_single_queries_and_isolates_errors(real_dir: Path) -> None:
    mv = load_model_version(real_dir, "v1")
    svc = SimilarityService({"v1": mv})
    qs = [Query(app_id=str(mv.ids[i])) for i in (1, 2, 3)] + [
        Query(app_id="missing"),
        Query(vector=[1.0] * 64),
    ]
    out = svc.find_similar_batch("v1", qs, top_k=7)
    for q, r in zip(qs, out, strict=True):
        if q.app_id == "missing":
            assert isinstance(r, NotFoundError)
            continue
        single = svc.find_similar("v1", q, top_k=7)
        assert [n.app_id for n in r.neighbours] == [n.app_id for n in single.neighbours]  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from appsim.data.build import build_mock

    out = tmp_path_factory.mktemp("mock")
    build_mock(out, n_apps=600, seed=11, log=lambda _m: None)
    return out


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_mock_catalogue_equals_brute_force_oracle(mock_dir: Path, version: str) -> None:
    mv = load_model_version(mock_dir, version)
    assert mv.dim == {"v1": 64, "v2": 128}[version]
    svc = SimilarityService({version: mv})
    rng = np.random.default_rng(3)
    cats = sorted(c for c in set(mv.categories.tolist()) if c)  # '' = missing category in sample_apps.csv
    for i, row in enumerate(rng.choice(mv.size, size=20, replace=False)):
        app_id = str(mv.ids[row])
        filters = Filters(category=(cats[i % len(cats)],)) if i % 2 else None
        res = svc.find_similar(version, Query(app_id=app_id), top_k=15, filters=filters)
        allowed = np.ones(mv.size, dtype=bool) if filters is None else mv.categories == cats[i % len(cats)]
        allowed[row] = False
        assert_matches_oracle(
            res.neighbours, oracle(mv.vectors, mv.ids, np.asarray(mv.vectors[row]), 15, allowed)
        )
    # cold start on the company format: the category centroid encoder places a new app in its category
    cat = cats[0]
    res = svc.find_similar(version, Query(app=AppMetadata(name="new", category=cat, platform=None)), top_k=10)
    assert res.encoding == "category_centroid"
    assert sum(n.category == cat for n in res.neighbours) >= 7
