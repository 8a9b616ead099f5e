"""Importing the company's file set: every layout, validation policy, idempotency, the centroid encoder."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from appsim.backends.centroid import CategoryCentroidEncoder
from appsim.data.artifacts import load_version_artifact
from appsim.data.company import (
    DuplicateIdError,
    EmbeddingLayoutError,
    EmptyEmbeddingsError,
    HistoryError,
    MetadataError,
    MixedDimensionError,
    NonFiniteVectorError,
    WrongDimensionError,
    ZeroVectorError,
    import_company,
    load_embeddings_pickle,
    load_sample_apps,
)
from appsim.domain import AppMetadata
from appsim.errors import ArtifactError, DataError, UnsafePickleError

D = 8
CATS = ["Games & Betting", "Utilities & Productivity", "Education & Reference"]
ONE = {"v1": "emb.pkl"}


def _apps(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "app_id": ids,
            "app_name": [f"name {i}" for i in ids],
            "super_category": [CATS[k % 3] for k in range(len(ids))],
            "app_platform": ["iOS" if k % 2 else "Android" for k in range(len(ids))],
        }
    )


def _history(ids: list[str]) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "app_id": ids,
            "date": ["2024-01-01"] * n,
            "country": ["US"] * n,
            "impressions": [1000] * n,
            "clicks": [30] * n,
            "event_count": [3] * n,
            "mmp_offer_default_revenue": [4.5] * n,
        }
    )


def _src(
    tmp: Path,
    emb: Any,
    apps: pd.DataFrame,
    history: pd.DataFrame | None = None,
    *,
    protocol: int = 4,
    name: str = "src",
) -> Path:
    src = tmp / name
    src.mkdir(parents=True, exist_ok=True)
    (src / "emb.pkl").write_bytes(emb if isinstance(emb, bytes) else pickle.dumps(emb, protocol=protocol))
    apps.to_csv(src / "sample_apps.csv", index=False)
    if history is not None:
        history.to_csv(src / "historical_performance.csv", index=False)
    return src


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------------ layouts
IDS = [f"APP_{10000 + 37 * k}" for k in range(20)]
X = np.random.default_rng(5).normal(size=(20, D)) + 0.3


def _layouts() -> dict[str, tuple[Any, int]]:
    """layout name -> (object to pickle, protocol). All hold IDS / X (rows in IDS order unless stated)."""
    perm = np.random.default_rng(1).permutation(20)
    ids_arr = np.array(IDS, dtype=object)
    numeric = pd.concat([pd.DataFrame({"app_id": IDS}), pd.DataFrame(X)], axis=1)
    return {
        "dict-ndarray": ({i: X[k] for k, i in enumerate(IDS)}, 4),
        "dict-list": ({i: X[k].tolist() for k, i in enumerate(IDS)}, 2),
        "ordered-dict-tuple": (OrderedDict((i, tuple(X[k])) for k, i in enumerate(IDS)), 5),
        "dict-of-lists": ({"app_id": IDS, "embedding": [x for x in X]}, 3),
        "dict-of-arrays": ({"App_IDs": np.array(IDS), "Embeddings": X}, 5),
        "dict-vectors-key": ({"ids": IDS, "vectors": X.tolist()}, 4),
        "wrapper-of-dict": ({"embeddings": {i: X[k] for k, i in enumerate(IDS)}, "model": "v1"}, 4),
        "ndarray-csv-order": (X, 4),
        "list-csv-order": ([x.tolist() for x in X], 2),
        "wrapper-of-matrix": ({"embeddings": X}, 5),
        "df-numeric-int-columns": (numeric, 4),
        "df-numeric-named-columns": (
            pd.concat(
                [pd.DataFrame({"app_id": IDS}), pd.DataFrame(X, columns=[f"dim_{j}" for j in range(D)])],
                axis=1,
            ),
            5,
        ),
        "df-numeric-shuffled": (numeric.iloc[perm].reset_index(drop=True), 4),
        "df-numeric-extra-text-column": (numeric.assign(note="x"), 4),
        "df-vector-column": (pd.DataFrame({"app_id": IDS, "embedding": list(X)}), 4),
        "df-vector-lists-shuffled": (
            pd.DataFrame({"APP_ID": ids_arr[perm], "vec": [X[k].tolist() for k in perm]}),
            2,
        ),
        "df-vector-json-text": (
            pd.DataFrame({"app_id": IDS, "embedding": [json.dumps(x.tolist()) for x in X]}),
            4,
        ),
        "df-index-ids": (pd.DataFrame(X, index=pd.Index(IDS, name="app_id")), 5),
        "series": (pd.Series(list(X), index=IDS), 4),
        "records": ([{"app_id": i, "embedding": X[k]} for k, i in enumerate(IDS)], 4),
        "pairs": ([(i, X[k]) for k, i in enumerate(IDS)], 4),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ref")
    src = _src(tmp, {i: X[k] for k, i in enumerate(IDS)}, _apps(IDS), _history(IDS[:5]))
    import_company(src, tmp / "out", ONE, expected_dims={})
    return json.loads((tmp / "out" / "v1" / "manifest.json").read_text())


@pytest.mark.parametrize("layout", sorted(_layouts()))
def test_every_layout_gives_the_identical_artifact(
    tmp_path: Path, layout: str, reference: dict[str, Any]
) -> None:
    obj, protocol = _layouts()[layout]
    src = _src(tmp_path, obj, _apps(IDS), _history(IDS[:5]), protocol=protocol)
    rep = import_company(src, tmp_path / "out", ONE, expected_dims={"v1": D})
    manifest = json.loads((tmp_path / "out" / "v1" / "manifest.json").read_text())
    assert manifest["vectors_sha256"] == reference["vectors_sha256"]
    assert manifest["ids_sha256"] == reference["ids_sha256"]
    assert manifest["count"] == 20 and manifest["dim"] == D
    assert rep["versions"]["v1"]["counts"]["duplicate_ids"] == 0
    art = load_version_artifact(tmp_path / "out" / "v1")
    assert art.ids.tolist() == sorted(IDS)
    want = X[[IDS.index(i) for i in sorted(IDS)]]
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(art.vectors, want, atol=1e-6)


def test_load_embeddings_pickle_returns_raw_float64(tmp_path: Path) -> None:
    p = tmp_path / "e.pkl"
    p.write_bytes(pickle.dumps({i: X[k].astype(np.float32) for k, i in enumerate(IDS)}))
    ids, vecs = load_embeddings_pickle(p, expected_dim=D)
    assert ids == IDS and vecs.dtype == np.float64 and vecs.shape == (20, D)
    np.testing.assert_array_equal(vecs, X.astype(np.float32).astype(np.float64))


def test_bare_matrix_follows_raw_csv_rows_or_distinct_ids(tmp_path: Path) -> None:
    apps = _apps(["APP_1", "APP_2", "APP_1", "APP_3"])  # APP_1 twice
    p = tmp_path / "m.pkl"
    raw_rows = np.eye(4) + 0.1
    p.write_bytes(pickle.dumps(raw_rows))
    ids, vecs = load_embeddings_pickle(p, apps_order=apps["app_id"].tolist())
    assert ids == ["APP_2", "APP_1", "APP_3"]  # APP_1 keeps its LAST row (row 2)
    np.testing.assert_array_equal(vecs[1], raw_rows[2])
    p.write_bytes(pickle.dumps(raw_rows[:3]))
    ids, vecs = load_embeddings_pickle(p, apps_order=apps["app_id"].tolist())
    assert ids == ["APP_1", "APP_2", "APP_3"]
    p.write_bytes(pickle.dumps(raw_rows[:2]))
    with pytest.raises(EmbeddingLayoutError, match="2 rows"):
        load_embeddings_pickle(p, apps_order=apps["app_id"].tolist())
    with pytest.raises(EmbeddingLayoutError, match=r"needs the sample_apps\.csv row order"):
        load_embeddings_pickle(p)


# ------------------------------------------------------------------------------------------------ validation
def _planted(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """30 good apps + 3 NaN/inf rows, 2 zero rows, 4 duplicate ids (later rows win), 5 vector ids without
    metadata, 5 metadata ids without vectors, 1 row without id, 1 id without vector."""
    rng = np.random.default_rng(11)
    good = [f"APP_{20000 + k}" for k in range(30)]
    nan_ids = ["APP_NAN1", "APP_NAN2", "APP_INF"]
    zero_ids = ["APP_ZERO1", "APP_ZERO2"]
    orphan = [f"APP_ORPH{k}" for k in range(5)]
    meta_only = [f"APP_META{k}" for k in range(5)]
    ids: list[Any] = []
    vecs: list[Any] = []
    for i in good + orphan:
        ids.append(i)
        vecs.append(rng.normal(size=D))
    for k, i in enumerate(nan_ids):
        v = rng.normal(size=D)
        v[k] = np.inf if i == "APP_INF" else np.nan
        ids.append(i)
        vecs.append(v)
    for i in zero_ids:
        ids.append(i)
        vecs.append(np.zeros(D))
    later = {}
    for i in good[:4]:  # duplicates: a later row with a different vector
        later[i] = rng.normal(size=D)
        ids.append(i)
        vecs.append(later[i])
    ids.append(None)
    vecs.append(rng.normal(size=D))
    ids.append("APP_NOVEC")
    vecs.append(None)
    apps = _apps(good + nan_ids + zero_ids + meta_only + ["APP_NOVEC"])
    apps = pd.concat([apps, apps.iloc[[0, 1]].assign(app_name=["renamed 0", "renamed 1"])], ignore_index=True)
    apps.loc[2, "app_name"] = None
    apps.loc[3, "super_category"] = "  "
    apps.loc[4, "app_platform"] = None
    apps = pd.concat([apps, pd.DataFrame({"app_id": [None], "app_name": ["no id"]})], ignore_index=True)
    hist = _history([*good[:10], "APP_GONE"])
    src = _src(tmp_path, {"app_id": ids, "embedding": vecs}, apps, hist)
    return src, {"good": good, "later": later, "apps": apps}


def test_report_counts_are_exact(tmp_path: Path) -> None:
    src, planted = _planted(tmp_path)
    rep = import_company(src, tmp_path / "out", ONE, expected_dims={"v1": D})
    c = rep["versions"]["v1"]["counts"]
    assert c == {
        "missing_ids": 1,
        "missing_vectors": 1,
        "non_finite_rows": 3,
        "zero_rows": 2,
        "duplicate_ids": 4,
        "ids_without_metadata": 5,
        # 5 metadata-only apps + the 3 NaN, 2 zero and 1 vector-less apps whose rows were dropped
        "metadata_without_vectors": 11,
    }
    ex = rep["versions"]["v1"]["examples"]
    assert ex["non_finite_rows"] == ["APP_NAN1", "APP_NAN2", "APP_INF"]
    assert ex["zero_rows"] == ["APP_ZERO1", "APP_ZERO2"]
    assert ex["duplicate_ids"] == planted["good"][:4]
    assert ex["ids_without_metadata"] == [f"APP_ORPH{k}" for k in range(5)]
    assert rep["versions"]["v1"]["count"] == 30
    assert rep["sample_apps"]["counts"] == {
        "missing_ids": 1,
        "duplicate_ids": 2,
        "missing_name": 1,
        "missing_category": 1,
        "missing_platform": 1,
    }
    h = rep["history"]
    assert h["counts"]["ids_not_in_catalogue"] == 1 and h["examples"]["ids_not_in_catalogue"] == ["APP_GONE"]
    assert h["info"]["rows"] == 11 and h["info"]["apps_in_catalogue"] == 10
    # the last occurrence wins, in the artifact and in apps.csv
    art = load_version_artifact(tmp_path / "out" / "v1")
    for i, v in planted["later"].items():
        row = art.ids.tolist().index(i)
        np.testing.assert_allclose(art.vectors[row], v / np.linalg.norm(v), atol=1e-6)
    apps_csv = pd.read_csv(tmp_path / "out" / "apps.csv", dtype=str, keep_default_na=False)
    assert apps_csv["app_id"].tolist() == sorted(planted["good"])
    assert list(apps_csv.columns[:4]) == ["app_id", "name", "category", "platform"]
    by_id = apps_csv.set_index("app_id")
    g = planted["good"]
    assert by_id.loc[g[0], "name"] == "renamed 0" and by_id.loc[g[1], "name"] == "renamed 1"
    assert by_id.loc[g[2], "name"] == g[2]  # missing name -> the id
    assert by_id.loc[g[3], "category"] == "" and by_id.loc[g[4], "platform"] == ""
    assert set(by_id["platform"]) == {"ios", "android", ""}
    report_file = json.loads((tmp_path / "out" / "import_report.json").read_text())
    assert report_file["versions"]["v1"]["counts"] == c


@pytest.mark.parametrize(
    ("error", "check"),
    [
        (NonFiniteVectorError, "non_finite_rows"),
        (ZeroVectorError, "zero_rows"),
        (DuplicateIdError, "duplicate_ids"),
    ],
)
def test_strict_mode_raises_the_named_error(tmp_path: Path, error: type[DataError], check: str) -> None:
    src, _ = _planted(tmp_path)
    rows: dict[str, Any] = {"app_id": [], "embedding": []}
    base = {"non_finite_rows": [np.nan] + [1.0] * (D - 1), "zero_rows": [0.0] * D}
    rows["app_id"] += ["APP_20000", "APP_20001"]
    rows["embedding"] += [np.ones(D), base.get(check, np.ones(D))]
    if check == "duplicate_ids":
        rows["app_id"][1] = "APP_20000"
    (src / "emb.pkl").write_bytes(pickle.dumps(rows))
    with pytest.raises(error) as exc:
        import_company(src, tmp_path / "out", ONE, expected_dims={}, strict=True)
    assert exc.value.check == check
    assert not (tmp_path / "out").exists()
    rep = import_company(src, tmp_path / "out2", ONE, expected_dims={})  # default: dropped and reported
    assert rep["versions"]["v1"]["counts"][check] == 1


@pytest.mark.parametrize("layout", ["dict", "ragged-list-in-csv-order"])
def test_mixed_dimensions_are_fatal(tmp_path: Path, layout: str) -> None:
    emb: Any = {i: np.ones(D) for i in IDS}
    emb[IDS[3]] = np.ones(D + 1)
    emb[IDS[4]] = np.ones(D + 1)
    if layout != "dict":
        emb = [v.tolist() for v in emb.values()]
    src = _src(tmp_path, emb, _apps(IDS))
    with pytest.raises(MixedDimensionError) as exc:
        import_company(src, tmp_path / "out", ONE, expected_dims={})
    assert exc.value.extra["dimensions"] == {D: 18, D + 1: 2}
    assert exc.value.extra["examples"] == [IDS[3], IDS[4]]
    assert not (tmp_path / "out").exists()


def test_wrong_dimension_is_fatal(tmp_path: Path) -> None:
    src = _src(tmp_path, {i: X[k] for k, i in enumerate(IDS)}, _apps(IDS))
    with pytest.raises(WrongDimensionError, match="expected 64-d") as exc:
        import_company(src, tmp_path / "out", ONE)  # default expected dims: v1 is 64-d
    assert exc.value.extra["received_dimension"] == D


@pytest.mark.parametrize(
    "emb",
    [
        {i: np.full(D, np.nan) for i in IDS},
        {i: np.zeros(D) for i in IDS},
        {f"OTHER_{k}": np.ones(D) for k in range(3)},
    ],
    ids=["all-nan", "all-zero", "no-id-in-metadata"],
)
def test_no_usable_vector_is_fatal(tmp_path: Path, emb: dict[str, np.ndarray]) -> None:
    src = _src(tmp_path, emb, _apps(IDS))
    with pytest.raises(EmptyEmbeddingsError):
        import_company(src, tmp_path / "out", ONE, expected_dims={})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("emb", "match"),
    [
        ("just a string", "unsupported pickle content"),
        ({"app_id": IDS, "embedding": list(X[:5])}, "20 ids"),
        ({"APP_1": "abc", "APP_2": "def"}, "not 1-d"),
        ({"APP_1": ["a", "b"], "APP_2": ["c", "d"]}, "non-numeric"),
        (np.ones((2, 3, 4)), "3-d array"),
        (pd.DataFrame({"app_id": IDS, "label": ["x"] * 20}), "neither a vector column nor numeric"),
    ],
    ids=["string", "length-mismatch", "string-vectors", "text-vectors", "3d", "df-no-vectors"],
)
def test_layout_errors(tmp_path: Path, emb: Any, match: str) -> None:
    src = _src(tmp_path, emb, _apps(IDS))
    with pytest.raises(EmbeddingLayoutError, match=match):
        import_company(src, tmp_path / "out", ONE, expected_dims={})


def test_unsafe_pickle_is_refused_by_the_import(tmp_path: Path) -> None:
    blob = b"\x80\x04cos\nsystem\nX\x04\x00\x00\x00true\x85R."
    src = _src(tmp_path, blob, _apps(IDS))
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        import_company(src, tmp_path / "out", ONE, expected_dims={})
    assert not (tmp_path / "out").exists()


def test_metadata_errors(tmp_path: Path) -> None:
    src = _src(tmp_path, {i: X[k] for k, i in enumerate(IDS)}, _apps(IDS).rename(columns={"app_id": "key"}))
    with pytest.raises(MetadataError, match="no app_id column"):
        import_company(src, tmp_path / "out", ONE, expected_dims={})
    (src / "sample_apps.csv").unlink()
    with pytest.raises(MetadataError) as exc:
        import_company(src, tmp_path / "out", ONE, expected_dims={})
    assert exc.value.check == "exists"


def _mutate(col: str, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def f(h: pd.DataFrame) -> pd.DataFrame:
        h = h.astype({col: object})
        h.loc[1, col] = value
        return h

    return f


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        (lambda h: h.drop(columns=["clicks"]), "columns"),
        (_mutate("impressions", "lots"), "numeric"),
        (_mutate("clicks", -3), "non-negative"),
        (_mutate("event_count", -1), "non-negative"),
    ],
    ids=["missing-column", "text", "negative-clicks", "negative-events"],
)
def test_history_fatal_checks(
    tmp_path: Path, mutate: Callable[[pd.DataFrame], pd.DataFrame], check: str
) -> None:
    src = _src(tmp_path, {i: X[k] for k, i in enumerate(IDS)}, _apps(IDS), mutate(_history(IDS)))
    with pytest.raises(HistoryError) as exc:
        import_company(src, tmp_path / "out", ONE, expected_dims={})
    assert exc.value.check == check
    assert not (tmp_path / "out").exists()


def test_history_soft_problems_are_reported_and_the_file_copied(tmp_path: Path) -> None:
    h = _history(IDS)
    h.loc[0, "clicks"] = 5000  # > impressions
    h.loc[1, "event_count"] = 40  # > clicks
    h.loc[2, "mmp_offer_default_revenue"] = -2.0  # a refund
    h = h.astype({"impressions": object})
    h.loc[3, "impressions"] = None
    src = _src(tmp_path, {i: X[k] for k, i in enumerate(IDS)}, _apps(IDS), h)
    rep = import_company(src, tmp_path / "out", ONE, expected_dims={})
    c = rep["history"]["counts"]
    assert (
        c["clicks_gt_impressions"],
        c["events_gt_clicks"],
        c["negative_revenue"],
        c["missing_values"],
    ) == (1, 1, 1, 1)
    assert rep["history"]["examples"]["clicks_gt_impressions"] == [IDS[0]]
    assert (tmp_path / "out" / "history.csv").read_bytes() == (
        src / "historical_performance.csv"
    ).read_bytes()
    assert rep["history"]["info"]["extra_columns"] == ["date", "country"]


def test_history_is_optional(tmp_path: Path) -> None:
    src = _src(tmp_path, {i: X[k] for k, i in enumerate(IDS)}, _apps(IDS))
    rep = import_company(src, tmp_path / "out", ONE, expected_dims={})
    assert rep["history"]["present"] is False
    assert not (tmp_path / "out" / "history.csv").exists()


def test_import_is_idempotent_byte_for_byte(tmp_path: Path) -> None:
    from appsim.data.mock import generate_mock

    generate_mock(120, 3, tmp_path / "src")
    import_company(tmp_path / "src", tmp_path / "out")
    first = _tree(tmp_path / "out")
    import_company(tmp_path / "src", tmp_path / "out")
    assert _tree(tmp_path / "out") == first
    assert {
        "apps.csv",
        "history.csv",
        "import_report.json",
        "v1/manifest.json",
        "v2/encoder/centroids.npy",
    } <= set(first)
    # and a fresh directory gets the same bytes except the manifests' created_at
    import_company(tmp_path / "src", tmp_path / "out2")
    second = _tree(tmp_path / "out2")
    assert {k for k in first if first[k] != second[k]} <= {"v1/manifest.json", "v2/manifest.json"}


def test_load_sample_apps_maps_columns_and_keeps_extras(tmp_path: Path) -> None:
    p = tmp_path / "apps.csv"
    p.write_text(
        "ID,Title,category,super_category,OS,rating\n"
        "00123, First ,old-cat,Games,IOS,4.5\n"
        "APP_2,,x,Tools,android,3.0\n"
        "00123,First v2,y,Games,IOS,4.0\n"
        ",orphan,z,Games,ios,1.0\n"
    )
    df = load_sample_apps(p)
    assert list(df.columns) == ["app_id", "name", "category", "platform", "category_raw", "rating"]
    assert df["app_id"].tolist() == ["APP_2", "00123"]  # string ids (leading zeros kept); last row of 00123
    assert df["name"].tolist() == ["APP_2", "First v2"]
    assert df["category"].tolist() == ["Tools", "Games"] and df["platform"].tolist() == ["android", "ios"]
    assert df["rating"].tolist() == [3.0, 4.0]


# ---------------------------------------------------------------------------------------- centroid encoder
def _small_catalogue() -> tuple[pd.DataFrame, list[str], np.ndarray]:
    apps = pd.DataFrame(
        {
            "app_id": ["a", "b", "c", "d", "e"],
            "category": ["Games", "Games", "Games", "Tools", None],
            "platform": ["ios", "ios", "android", "android", "web"],
        }
    )
    vecs = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [1.0, 1.0, 0], [0, 0, -1.0]])
    return apps, list(apps["app_id"]), vecs


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_centroid_fallback_levels_and_values(tmp_path: Path) -> None:
    apps, ids, vecs = _small_catalogue()
    enc = CategoryCentroidEncoder.fit(apps, ids, vecs)
    queries = [
        AppMetadata(name="q1", category=" games ", platform="iOS"),  # category+platform (a, b)
        AppMetadata(name="q2", category="Games", platform="web"),  # no Games x web: category (a, b, c)
        AppMetadata(name="q3", category="Unknown", platform="android"),  # platform (c, d)
        AppMetadata(name="q4", category=None, platform=None),  # global
        AppMetadata(name="q5", category="", platform="unknown"),  # global
    ]
    out, basis = enc.encode_with_basis(queries)
    assert basis == ["category+platform", "category", "platform", "global", "global"]
    assert out.dtype == np.float32 and out.shape == (5, 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    u = np.array([_unit(v) for v in vecs])
    np.testing.assert_allclose(out[0], _unit(u[0] + u[1]), atol=1e-6)
    np.testing.assert_allclose(out[1], _unit(u[0] + u[1] + u[2]), atol=1e-6)
    np.testing.assert_allclose(out[2], _unit(u[2] + u[3]), atol=1e-6)
    np.testing.assert_allclose(out[3], _unit(u.sum(axis=0)), atol=1e-6)
    enc.encode(queries[:2])
    assert enc.last_basis == ["category+platform", "category"]
    # save / load round trip (no pickle) and the registry used by the service
    enc.save(tmp_path / "enc")
    again = CategoryCentroidEncoder.load(tmp_path / "enc")
    np.testing.assert_array_equal(again.encode(queries), out)
    assert again.kind == "category_centroid" and again.dim == 3
    from appsim.backends.encoders import load_encoder

    loaded = load_encoder({"encoder": enc.describe()}, tmp_path / "enc")
    np.testing.assert_array_equal(loaded.encode(queries), out)


def test_centroid_min_count_falls_back(tmp_path: Path) -> None:
    apps, ids, vecs = _small_catalogue()
    enc = CategoryCentroidEncoder.fit(apps, ids, vecs, min_count=3)
    _, basis = enc.encode_with_basis([AppMetadata(name="q", category="Games", platform="ios")])
    assert basis == ["category"]  # Games x ios has 2 apps < 3; Games has 3


def test_centroid_load_errors(tmp_path: Path) -> None:
    apps, ids, vecs = _small_catalogue()
    CategoryCentroidEncoder.fit(apps, ids, vecs).save(tmp_path / "enc")
    np.save(tmp_path / "enc" / "centroids.npy", np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ArtifactError) as exc:
        CategoryCentroidEncoder.load(tmp_path / "enc")
    assert exc.value.check == "shape"
    (tmp_path / "enc" / "centroids.npy").unlink()
    with pytest.raises(ArtifactError) as exc:
        CategoryCentroidEncoder.load(tmp_path / "enc")
    assert exc.value.check == "exists"


def test_imported_version_has_a_working_encoder(tmp_path: Path) -> None:
    src = _src(tmp_path, {i: X[k] for k, i in enumerate(IDS)}, _apps(IDS))
    import_company(src, tmp_path / "out", ONE, expected_dims={})
    art = load_version_artifact(tmp_path / "out" / "v1")
    assert art.manifest["encoder"]["kind"] == "category_centroid"
    assert set(art.manifest["inputs"]) == {"emb.pkl", "sample_apps.csv"}
    enc = CategoryCentroidEncoder.load(art.encoder_dir)
    v = enc.encode([AppMetadata(name="new", category="games & betting", platform="ios")])
    assert enc.last_basis == ["category+platform"]
    members = [k for k, i in enumerate(IDS) if k % 3 == 0 and k % 2 == 1]
    want = _unit(np.sum([_unit(X[k]) for k in members], axis=0))
    np.testing.assert_allclose(v[0], want, atol=1e-6)


def test_pairs_layout_with_a_missing_id_is_dropped_and_counted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A (None, vector) pair is a row without an id: dropped and counted, never a traceback."""
    import os
    import pickle as _pickle

    import numpy as _np
    import pandas as _pd

    from appsim.data.company import import_company as _import
    from appsim.data.mock import generate_mock as _gen

    src = tmp_path / "src"
    _gen(120, 5, src)
    ids = _pd.read_csv(src / "sample_apps.csv")["app_id"].dropna().unique().tolist()
    rng = _np.random.default_rng(1)
    pairs = [(i, rng.random(64)) for i in ids] + [(None, rng.random(64))]
    with open(os.path.join(src, "mock_embeddings_v1.pkl"), "wb") as f:
        _pickle.dump(pairs, f)
    report = _import(src, tmp_path / "out")
    assert report["versions"]["v1"]["counts"]["missing_ids"] == 1
