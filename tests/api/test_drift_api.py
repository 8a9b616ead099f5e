"""GET /drift through the real app: the hooks feed the window from /find-similar, the report is strict JSON,
the Prometheus gauges follow it, an unknown version is 422, and a drifting stream raises the alert."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from real_catalogue import DIMS, VERSIONS, settings_for


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from appsim.app import create_app

    s = settings_for(tmp_path_factory.mktemp("drift"),
                     drift={"window_size": 150, "min_samples": 100, "update_every": 50})
    app = create_app(s, load_in_background=False)
    with TestClient(app) as c:
        yield c


@pytest.fixture(autouse=True)
def _fresh_window(client: TestClient) -> None:
    client.app.state.container.extras["drift"].reset()  # type: ignore[attr-defined]


def strict_json(text: str) -> Any:
    def no_constants(token: str) -> Any:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=no_constants)


def catalogue_ids(client: TestClient, version: str, category: str | None = None) -> list[str]:
    mv = client.app.state.container.similarity.versions[version]  # type: ignore[attr-defined]
    rows = np.arange(mv.size) if category is None else np.flatnonzero(mv.categories == category)
    return [str(a) for a in mv.ids[rows]]


def gauge(metrics: str, name: str, **labels: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_drift_is_documented_and_empty_at_start(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/drift"]["get"]
    assert {"200", "422", "503"} <= set(op["responses"])
    r = client.get("/drift")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = strict_json(r.text)
    assert body["status"] == "ok" and set(body["versions"]) == set(VERSIONS)
    for v in VERSIONS:
        rep = body["versions"][v]
        assert rep["status"] == "ok" and rep["n_window"] == 0 and rep["drifted"] is False
        assert set(rep["features"]) == {"category", "platform", "description_length", "embedding_pc1",
                                        "embedding_pc2", "embedding_pc3", "nn_similarity"}
        for f in rep["features"].values():
            assert f["judged"] is False and all(m["statistic"] is None for m in f["methods"].values())


@pytest.mark.parametrize("version", VERSIONS)
def test_catalogue_traffic_no_drift_then_one_genre_drifts(client: TestClient, version: str) -> None:
    rng = np.random.default_rng(21)
    everyone = catalogue_ids(client, version)
    for aid in rng.choice(everyone, 150, replace=False):
        r = client.post("/find-similar", json={"app_id": str(aid), "model_version": version, "top_k": 5})
        assert r.status_code == 200
    rep = strict_json(client.get("/drift", params={"model_version": version}).text)["versions"][version]
    assert rep["n_window"] == 150 and rep["n_observed"] == 150
    assert rep["features"]["category"]["judged"] and rep["drifted_features"] == [], rep["features"]
    metrics = client.get("/metrics").text
    assert gauge(metrics, "appsim_drift_alert", model_version=version, feature="category") == 0.0
    score = gauge(metrics, "appsim_drift_score", model_version=version, feature="category", method="psi")
    psi = rep["features"]["category"]["methods"]["psi"]["statistic"]
    assert score is not None and score == pytest.approx(psi)

    # the window now fills with one genre only: category (and the projections) drift
    for aid in rng.choice(catalogue_ids(client, version, "Education"), 150, replace=False):
        r = client.post("/find-similar", json={"app_id": str(aid), "model_version": version})
        assert r.status_code == 200
    # the gauges were refreshed every 50 observations, before /drift is asked
    metrics = client.get("/metrics").text
    assert gauge(metrics, "appsim_drift_alert", model_version=version, feature="category") == 1.0
    rep = strict_json(client.get(f"/drift?model_version={version}").text)["versions"][version]
    assert rep["n_observed"] == 300 and rep["n_window"] == 150
    assert "category" in rep["drifted_features"]
    assert {"embedding_pc1", "embedding_pc2", "embedding_pc3"} & set(rep["drifted_features"])


@pytest.mark.parametrize("version", VERSIONS)
def test_random_vectors_drift_on_embedding_and_nn(client: TestClient, version: str) -> None:
    rng = np.random.default_rng(22)
    for v in rng.standard_normal((120, DIMS[version])):
        r = client.post("/find-similar", json={"vector": v.tolist(), "model_version": version})
        assert r.status_code == 200
    rep = strict_json(client.get("/drift").text)["versions"][version]
    assert "nn_similarity" in rep["drifted_features"]
    assert {"embedding_pc1", "embedding_pc2", "embedding_pc3"} & set(rep["drifted_features"])
    assert rep["features"]["category"]["n_window"] == 0 and not rep["features"]["category"]["drifted"]
    metrics = client.get("/metrics").text
    assert gauge(metrics, "appsim_drift_alert", model_version=version, feature="nn_similarity") == 1.0


def test_failed_queries_and_metadata_queries(client: TestClient) -> None:
    version = VERSIONS[0]
    monitor = client.app.state.container.extras["drift"]  # type: ignore[attr-defined]
    bad = client.post("/find-similar", json={"vector": [1.0, 2.0], "model_version": version})
    assert bad.status_code == 422
    assert monitor.report(version)["versions"][version]["n_window"] == 0  # errors are not observed
    app = {"name": "Kids Math Tutor", "category": "Education", "description": "Learn fractions. " * 20}
    assert client.post("/find-similar", json={"app": app, "model_version": version}).status_code == 200
    feats = monitor.report(version)["versions"][version]["features"]
    assert feats["embedding_pc1"]["n_window"] == 1 and feats["nn_similarity"]["n_window"] == 1
    # category/platform/description length of a metadata query need the query itself: the hook uses it
    # when the endpoint passes ``query=`` (see appsim.api.drift_routes)
    from appsim.services.similarity import Query

    hooks = [h for h in client.app.state.container.extras["after_request"]  # type: ignore[attr-defined]
             if h.__module__ == "appsim.api.drift_routes"]
    assert len(hooks) == 1
    sim = client.app.state.container.similarity  # type: ignore[attr-defined]
    from appsim.api.deps import to_app
    from appsim.api.schemas import AppIn

    q = Query(app=to_app(AppIn(**app)))
    res = sim.find_similar(version, q, 5)
    for hook in hooks:
        hook(request_id="t", endpoint="find-similar", model_version=version, assignment=None, latency_ms=1.0,
             error=None, result=res, query=q)
    feats = monitor.report(version)["versions"][version]["features"]
    assert feats["category"]["n_window"] >= 1 and feats["description_length"]["n_window"] >= 1


@pytest.mark.parametrize("bad", ["v9", "../v1", "V1", "v1 ", "__init__"])
def test_unknown_model_version_is_422(client: TestClient, bad: str) -> None:
    r = client.get("/drift", params={"model_version": bad})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["field"] == "model_version"
    assert re.search(r"/(unknown-model-version|validation-error)$", body["type"])


def test_drift_is_503_while_loading(tmp_path: Path) -> None:
    import threading

    from appsim.app import create_app

    gate = threading.Event()
    app = create_app(settings_for(tmp_path), load_in_background=True)
    app.state.container.extras.setdefault("on_loaded", []).insert(0, lambda c: gate.wait(30))
    with TestClient(app) as c:
        r = c.get("/drift")
        assert r.status_code == 503 and r.headers["content-type"].startswith("application/problem+json")
        gate.set()
        for _ in range(600):  # let the loader thread finish before the app goes away
            if c.get("/health/ready").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert c.get("/drift").status_code == 200


def test_hot_reload_rebuilds_the_reference(client: TestClient) -> None:
    """The ``on_reloaded`` hook (admin hot reload) rebuilds the version's reference; its window restarts."""
    version = VERSIONS[0]
    container = client.app.state.container  # type: ignore[attr-defined]
    monitor = container.extras["drift"]
    for aid in catalogue_ids(client, version)[:10]:
        assert client.post("/find-similar", json={"app_id": aid, "model_version": version}).status_code == 200
    before = monitor.reference(version)
    assert monitor.report(version)["versions"][version]["n_window"] == 10
    hooks = [h for h in container.extras.get("on_reloaded", []) if h.__module__ == "appsim.api.drift_routes"]
    assert len(hooks) == 1
    hooks[0](container, version)
    after = monitor.reference(version)
    assert after is not before and np.allclose(after.components, before.components)
    assert monitor.report(version)["versions"][version]["n_window"] == 0
