"""The mock company data: deterministic bytes, the planted structure, and the import of it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from appsim.data.artifacts import load_version_artifact
from appsim.data.company import import_company
from appsim.data.mock import CATEGORIES, FILES, generate_mock
from appsim.data.safe_pickle import safe_load

N, SEED = 600, 7


def _shas(d: Path) -> dict[str, str]:
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in FILES}


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("mock")
    summary = generate_mock(N, SEED, root / "src")
    report = import_company(root / "src", root / "out")
    return {"root": root, "src": root / "src", "out": root / "out", "summary": summary, "report": report}


def test_same_seed_gives_identical_bytes(tmp_path: Path, mock: dict[str, Any]) -> None:
    again = generate_mock(N, SEED, tmp_path / "again")
    assert _shas(tmp_path / "again") == _shas(mock["src"]) == mock["summary"]["files"] == again["files"]
    other = generate_mock(N, SEED + 1, tmp_path / "other")
    assert all(other["files"][f] != again["files"][f] for f in FILES)


def test_same_seed_gives_identical_bytes_across_processes(tmp_path: Path) -> None:
    """Another interpreter (another PYTHONHASHSEED) writes the same bytes, DataFrame pickle included."""
    generate_mock(60, SEED, tmp_path / "here")
    code = (
        f"from appsim.data.mock import generate_mock; generate_mock(60, {SEED}, {str(tmp_path / 'there')!r})"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert _shas(tmp_path / "here") == _shas(tmp_path / "there")


def test_files_use_the_documented_layouts(mock: dict[str, Any]) -> None:
    v1 = safe_load(mock["src"] / "mock_embeddings_v1.pkl")
    assert isinstance(v1, dict) and len(v1) == N
    first = next(iter(v1.values()))
    assert isinstance(first, np.ndarray) and first.shape == (64,)
    assert min(float(v.min()) for v in v1.values()) > -1.5  # shifted positive, un-normalised
    v2 = safe_load(mock["src"] / "mock_embeddings_v2.pkl")
    assert isinstance(v2, pd.DataFrame) and v2.shape == (N, 129)
    assert v2.columns[0] == "app_id" and all(pd.api.types.is_float_dtype(v2[c]) for c in v2.columns[1:])
    apps = pd.read_csv(mock["src"] / "sample_apps.csv", dtype=str)
    assert list(apps.columns) == ["app_id", "app_name", "super_category", "app_platform"]
    assert set(apps["super_category"].dropna()) == set(CATEGORIES)
    assert apps["app_id"].str.fullmatch(r"APP_\d{5}").all()
    assert "seed=7" in (mock["src"] / "README.md").read_text()


def test_planted_problems_are_found_by_the_import(mock: dict[str, Any]) -> None:
    planted, rep = mock["summary"]["planted"], mock["report"]
    assert rep["sample_apps"]["counts"] == {
        "missing_ids": 0,
        "duplicate_ids": planted["duplicate_ids"],
        "missing_name": planted["missing_app_name"],
        "missing_category": planted["missing_super_category"],
        "missing_platform": planted["missing_app_platform"],
    }
    assert planted["duplicate_ids"] == 5
    for v in ("v1", "v2"):
        c = rep["versions"][v]["counts"]
        assert c["ids_without_metadata"] == 2 and c["metadata_without_vectors"] == 3
        assert sorted(rep["versions"][v]["examples"]["ids_without_metadata"]) == sorted(
            planted["orphan_ids_without_metadata"]
        )
        assert c["non_finite_rows"] == c["zero_rows"] == c["duplicate_ids"] == 0
        assert rep["versions"][v]["count"] == N - 2
    assert rep["versions"]["v1"]["info"]["mean_pairwise_cosine"] > 0.5  # un-normalised, shifted
    assert rep["versions"]["v2"]["info"]["mean_pairwise_cosine"] < 0.2
    apps = pd.read_csv(mock["out"] / "apps.csv", dtype=str, keep_default_na=False)
    assert not apps["name"].str.endswith(" (old)").any()  # the last duplicate row was kept


def _precision_at_10(out: Path, version: str) -> float:
    art = load_version_artifact(out / version)
    apps = pd.read_csv(out / "apps.csv", dtype=str, keep_default_na=False).set_index("app_id")
    cat = apps.loc[art.ids.astype(str), "category"].to_numpy()
    x = np.asarray(art.vectors, dtype=np.float64)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :10]
    ok = cat != ""
    return float((cat[top][ok] == cat[ok, None]).mean())


def test_v2_separates_genres_better_than_v1(mock: dict[str, Any]) -> None:
    p1, p2 = _precision_at_10(mock["out"], "v1"), _precision_at_10(mock["out"], "v2")
    assert p2 > p1 + 0.15
    assert p1 > 1 / len(CATEGORIES) + 0.1  # v1 is noisy, not useless


def test_history_covers_a_minority_with_the_documented_columns(mock: dict[str, Any]) -> None:
    h = pd.read_csv(mock["src"] / "historical_performance.csv")
    assert list(h.columns) == [
        "app_id",
        "date",
        "country",
        "platform",
        "age_group",
        "gender",
        "impressions",
        "clicks",
        "event_count",
        "mmp_offer_default_revenue",
    ]
    share = h["app_id"].nunique() / N
    assert 0.2 < share < 0.4
    assert mock["summary"]["history_apps"] == h["app_id"].nunique()
    assert (h["clicks"] <= h["impressions"]).all() and (h["event_count"] <= h["clicks"]).all()
    assert (h["mmp_offer_default_revenue"] >= 0).all()
    rep = mock["report"]["history"]
    assert rep["info"]["rows"] == len(h) and rep["counts"]["clicks_gt_impressions"] == 0


def test_neighbours_carry_performance_signal_v2_more(mock: dict[str, Any]) -> None:
    h = pd.read_csv(mock["out"] / "history.csv", dtype={"app_id": str})
    g = h.groupby("app_id")[["impressions", "clicks"]].sum()
    logit = np.log((g["clicks"] + 0.5) / (g["impressions"] - g["clicks"] + 0.5))
    err = {}
    for v in ("v1", "v2"):
        art = load_version_artifact(mock["out"] / v)
        pos = {a: k for k, a in enumerate(art.ids.astype(str).tolist())}
        ids = [a for a in g.index if a in pos]
        x = np.asarray(art.vectors, dtype=np.float64)[[pos[a] for a in ids]]
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        top = np.argsort(-s, axis=1, kind="stable")[:, :10]
        y = logit.loc[ids].to_numpy()
        err[v] = float(np.abs(y[top].mean(axis=1) - y).mean())
        baseline = float(np.abs(y - y.mean()).mean())
    assert err["v2"] < err["v1"] < baseline


def test_planted_segment_lift_is_visible(mock: dict[str, Any]) -> None:
    h = pd.read_csv(mock["out"] / "history.csv", dtype={"app_id": str})
    apps = pd.read_csv(mock["out"] / "apps.csv", dtype=str, keep_default_na=False)[["app_id", "category"]]
    m = h.merge(apps, on="app_id")
    t = m.groupby([m["category"] == "Games & Betting", "age_group"])[["clicks", "impressions"]].sum()
    ctr = (t["clicks"] / t["impressions"]).unstack()
    assert ctr.loc[True, "18-24"] > 1.3 * ctr.loc[True, "25-34"]  # Games x 18-24: CTR +0.5 logit
    assert 0.85 < ctr.loc[False, "18-24"] / ctr.loc[False, "25-34"] < 1.15  # no lift elsewhere


def test_too_few_apps_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_apps"):
        generate_mock(10, 1, tmp_path)
