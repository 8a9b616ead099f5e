"""POST /predict through the HTTP client on the real catalogue (artifacts/real, SIMULATED history)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

RATES = ("ctr", "install_rate", "installs_per_impression", "revenue_per_install", "rpm")


def _no_constants(token: str) -> Any:
    raise AssertionError(f"non-finite number {token} in the JSON")


def post(client: TestClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    r = client.post("/predict", json=body)
    return r.status_code, json.loads(r.text, parse_constant=_no_constants)


@pytest.fixture(scope="module")
def holdout(real_dir: Path) -> pd.DataFrame:
    df = pd.read_csv(real_dir / "holdout.csv", dtype={"app_id": str}, keep_default_na=False)
    return df.sort_values(["rating_count", "app_id"], ascending=[False, True]).reset_index(drop=True)


def _metadata(row: pd.Series) -> dict[str, Any]:
    desc = row["description"][:4000] or None
    return {"name": row["name"], "category": row["category"], "description": desc}


def _neighbour_prediction(client: TestClient, holdout: pd.DataFrame, version: str) -> tuple[pd.Series, dict]:
    """The first held-out app (most ratings first) whose neighbours carry history."""
    for _, row in holdout.head(20).iterrows():
        status, body = post(client, {"app": _metadata(row), "model_version": version})
        assert status == 200, body
        if body["prediction"]["basis"] == "neighbours":
            return row, body
    raise AssertionError("no held-out app among the first 20 has neighbours with history")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_held_out_app_gets_full_prediction(client: TestClient, holdout: pd.DataFrame, version: str) -> None:
    row, body = _neighbour_prediction(client, holdout, version)
    assert body["model_version"] == version and body["query"]["kind"] == "app"
    assert body["neighbours_requested"] == 15 and body["latency_ms"] >= 0 and body["request_id"]
    hist = body["history"]
    assert hist["status"] == "loaded" and hist["rows"] > 0 and hist["apps_with_history"] > 0
    # the held-out apps' rows are evaluation ground truth: never fed to the service
    assert hist["rows_excluded"] > 0
    pred = body["prediction"]
    assert pred["category"] == {"value": row["category"], "known": True, "source": "metadata"}
    assert pred["prior_level"] in ("category", "global")
    for name in RATES:
        r = pred["rates"][name]
        assert r["interval"] == pytest.approx(0.8)
        assert r["low"] <= r["point"] <= r["high"], (name, r)
        assert r["mean_low"] <= r["point"] <= r["mean_high"], (name, r)
        assert r["low"] > 0
    assert 0 <= pred["performance_score"] <= 100
    neigh = pred["neighbours"]
    assert len(neigh) == 15 and [n["rank"] for n in neigh] == list(range(1, 16))
    assert row["app_id"] not in {n["app_id"] for n in neigh}
    held_out_ids = set(holdout["app_id"])
    assert not held_out_ids & {n["app_id"] for n in neigh}
    assert all(n["name"] and n["category"] and -1 <= n["score"] <= 1 for n in neigh)
    used = [n for n in neigh if n["weight"] > 0]
    assert used and all(n["has_history"] and n["impressions"] > 0 for n in used)
    assert math.isclose(sum(n["weight"] for n in neigh), 1.0, rel_tol=1e-9)
    assert pred["neighbours_with_history"] == len(used)
    ess = sum(n["evidence_multiplier"] for n in neigh)
    assert math.isclose(ess, pred["effective_sample_size"], rel_tol=1e-9)
    # same names / categories as /find-similar with the same k
    fs_body = {"app": _metadata(row), "model_version": version, "top_k": 15}
    fs = client.post("/find-similar", json=fs_body).json()
    assert [(n["app_id"], n["name"], n["category"]) for n in fs["results"]] == [
        (n["app_id"], n["name"], n["category"]) for n in neigh
    ]
    # segments: claimed only with support
    assert set(pred["segments"]) == {"country", "platform", "age_group", "gender"}
    claimed = [s for col in pred["segments"].values() for s in col]
    assert claimed and pred["top_segments"]
    for s in claimed:
        sup = s["support"]
        assert sup["impressions"] >= 1000 and sup["clicks"] >= 20 and sup["apps"] >= 2
        assert s["ctr_lift"] > 0 and s["ctr_lift_low"] <= s["ctr_lift"] <= s["ctr_lift_high"]


def test_default_neighbours_and_default_version(client: TestClient, holdout: pd.DataFrame) -> None:
    status, body = post(client, {"app": _metadata(holdout.iloc[0])})
    assert status == 200
    assert body["model_version"] in ("v1", "v2") and len(body["prediction"]["neighbours"]) == 15


def test_ab_assignment_when_no_model_version_is_given(client: TestClient, holdout: pd.DataFrame) -> None:
    body = {"app": _metadata(holdout.iloc[0]), "advertiser_id": "adv-predict-1"}
    (s1, b1), (s2, b2) = post(client, body), post(client, body)
    assert s1 == s2 == 200
    assert b1["experiment"] is not None and b1["experiment"]["experiment_id"]
    assert b1["model_version"] in ("v1", "v2") and b2["model_version"] == b1["model_version"]
    assert b2["experiment"]["variant"] == b1["experiment"]["variant"]


@pytest.mark.parametrize("k", [10, 20])
def test_neighbours_bounds_accepted(client: TestClient, holdout: pd.DataFrame, k: int) -> None:
    status, body = post(client, {"app": _metadata(holdout.iloc[1]), "model_version": "v1", "neighbours": k})
    assert status == 200 and body["neighbours_requested"] == k and len(body["prediction"]["neighbours"]) == k


@pytest.mark.parametrize("k", [9, 21, 0, -3])
def test_neighbours_out_of_range_is_422_naming_the_field(client: TestClient, k: int) -> None:
    r = client.post("/predict", json={"app_id": "284882215", "model_version": "v1", "neighbours": k})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["field"] == "neighbours" and "10..20" in body["detail"]
    assert body["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("bad", ["15", 15.5, True])
def test_neighbours_must_be_an_integer(client: TestClient, bad: Any) -> None:
    r = client.post("/predict", json={"app_id": "284882215", "model_version": "v1", "neighbours": bad})
    assert r.status_code == 422 and r.json()["field"] == "neighbours"


def test_unknown_field_and_missing_query_are_422(client: TestClient) -> None:
    r = client.post("/predict", json={"app_id": "284882215", "model_version": "v1", "top_k": 5})
    assert r.status_code == 422 and r.json()["field"] == "top_k"
    r = client.post("/predict", json={"model_version": "v1"})
    assert r.status_code == 422 and r.json()["field"] == "query"


def test_unknown_category_is_a_clear_answer(client: TestClient) -> None:
    app = {
        "name": "Block Puzzle Quest",
        "category": "Underwater Basket Weaving",
        "description": "A relaxing block puzzle game: slide, match and clear colourful tiles.",
    }
    status, body = post(client, {"app": app, "model_version": "v1"})
    assert status == 200
    pred = body["prediction"]
    assert pred["category"] == {"value": "Underwater Basket Weaving", "known": False, "source": "metadata"}
    assert pred["basis"] in ("neighbours", "global_prior")
    assert pred["prior_level"] == "global"
    assert "global prior" in pred["basis_explanation"] and "not in the catalogue" in pred["basis_explanation"]
    assert all(pred["rates"][r]["point"] is not None for r in RATES)


def test_app_id_query_uses_the_catalogue_category(client: TestClient) -> None:
    status, body = post(client, {"app_id": "284882215", "model_version": "v1"})  # Facebook
    assert status == 200 and body["query"]["kind"] == "app_id"
    pred = body["prediction"]
    assert pred["category"] == {"value": "Social Networking", "known": True, "source": "catalogue"}
    assert "284882215" not in {n["app_id"] for n in pred["neighbours"]}
    r = client.post("/predict", json={"app_id": "0000", "model_version": "v1"})
    assert r.status_code == 404 and r.json()["field"] == "app_id"


def test_vector_query_uses_the_neighbours_majority_category(client: TestClient) -> None:
    status, body = post(client, {"vector": [1.0] * 64, "model_version": "v1", "neighbours": 10})
    assert status == 200 and body["query"]["kind"] == "vector"
    pred = body["prediction"]
    cats = [n["category"] for n in pred["neighbours"]]
    assert pred["category"]["source"] == "neighbour_majority"
    assert cats.count(pred["category"]["value"]) == max(cats.count(c) for c in set(cats))


def test_filters_restrict_the_neighbours(client: TestClient) -> None:
    body = {"app_id": "284882215", "model_version": "v1", "filters": {"category": "Games"}}
    status, out = post(client, body)
    assert status == 200 and {n["category"] for n in out["prediction"]["neighbours"]} == {"Games"}
    assert out["prediction"]["category"]["value"] == "Social Networking"  # the app's own category
    r = client.post("/predict", json={**body, "filters": {"category": "Nope"}})
    assert r.status_code == 422 and r.json()["field"] == "filters.category"


def test_json_has_no_nan_and_is_deterministic(client: TestClient, holdout: pd.DataFrame) -> None:
    bodies = [
        {"app": _metadata(holdout.iloc[2]), "model_version": "v1"},
        {"app": _metadata(holdout.iloc[2]), "model_version": "v2"},
        {"app_id": "284882215", "model_version": "v1", "neighbours": 20},
        {"vector": [0.5] * 384, "model_version": "v2"},
    ]
    for b in bodies:
        r1, r2 = client.post("/predict", json=b), client.post("/predict", json=b)
        assert r1.status_code == r2.status_code == 200
        for token in ("NaN", "Infinity"):
            assert token not in r1.text
        j1 = json.loads(r1.text, parse_constant=_no_constants)
        j2 = json.loads(r2.text, parse_constant=_no_constants)
        for j in (j1, j2):
            j.pop("request_id"), j.pop("latency_ms")
        assert j1 == j2


def test_exposure_goes_through_the_after_request_hooks(client: TestClient) -> None:
    seen: list[dict[str, Any]] = []
    app: Any = client.app
    hooks = app.state.container.extras.setdefault("after_request", [])

    def hook(**kw: Any) -> None:
        seen.append(kw)

    hooks.append(hook)
    try:
        ok = client.post("/predict", json={"app_id": "284882215", "model_version": "v1"})
        bad = client.post("/predict", json={"app_id": "284882215", "model_version": "v1", "neighbours": 99})
    finally:
        hooks.remove(hook)
    assert ok.status_code == 200 and bad.status_code == 422
    assert [(s["endpoint"], s["model_version"], s["error"]) for s in seen] == [
        ("predict", "v1", None),
        ("predict", "v1", "validation-error"),
    ]
    assert seen[0]["request_id"] == ok.json()["request_id"] and seen[0]["result"] is not None


def test_missing_history_answers_without_history(
    real_dir: Path, settings_factory: Any, tmp_path: Path
) -> None:
    from appsim.app import create_app
    from appsim.config.settings import ModelVersionConfig

    (tmp_path / "apps.csv").symlink_to(real_dir / "apps.csv")
    (tmp_path / "v1").symlink_to(real_dir / "v1", target_is_directory=True)
    s = settings_factory(catalogue_dir=tmp_path, default_model_version="v1")
    s.model_versions = {"v1": ModelVersionConfig(path="v1")}
    s.experiments = []
    with TestClient(create_app(s, load_in_background=False)) as c:
        status, body = post(c, {"app_id": "284882215"})
    assert status == 200
    assert body["history"]["status"] == "missing" and body["history"]["rows"] == 0
    pred = body["prediction"]
    assert pred["basis"] == "none" and pred["neighbours_with_history"] == 0
    assert all(pred["rates"][r]["point"] is None for r in RATES)
    assert len(pred["neighbours"]) == 15 and all(n["weight"] == 0 for n in pred["neighbours"])
