"""/find-similar through an HTTP client on the real catalogue: each error class, filters, top_k bounds,
determinism, version-specific dimensions, request ids."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

GAME = {"app_id": "284882215"}  # Facebook (Social Networking) is a catalogue app; see below


def post(client: TestClient, body: dict, **kw) -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/find-similar", json=body, **kw)
    return {"status": r.status_code, "json": r.json(), "headers": r.headers}


def catalogue_id(client: TestClient) -> str:
    r = client.post("/find-similar", json={"vector": [1.0] * 64, "model_version": "v1", "top_k": 1})
    assert r.status_code == 200
    return str(r.json()["results"][0]["app_id"])


def assert_problem(resp: dict, status: int, code: str, field: str | None) -> dict:
    assert resp["status"] == status, resp["json"]
    body = resp["json"]
    assert resp["headers"]["content-type"].startswith("application/problem+json")
    assert body["type"].endswith("/" + code) and body["status"] == status and body["title"] and body["detail"]
    if field is not None:
        assert body["field"] == field
    assert body["request_id"] == resp["headers"]["x-request-id"]
    return body


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cold_start_metadata_returns_real_apps_mostly_in_genre(client: TestClient, version: str) -> None:
    body = {
        "app": {
            "name": "Meditation & Sleep Sounds",
            "category": "Health & Fitness",
            "description": "Guided meditation, breathing exercises and calming sleep sounds "
                "to reduce stress.",
        },
        "model_version": version,
    }
    r = post(client, body)
    assert r["status"] == 200
    res = r["json"]
    assert res["model_version"] == version and res["query"]["kind"] == "app" and res["top_k"] == 10
    assert len(res["results"]) == 10
    assert all(n["name"] and n["app_id"].isdigit() for n in res["results"])
    assert sum(n["category"] == "Health & Fitness" for n in res["results"]) >= 6
    assert [n["rank"] for n in res["results"]] == list(range(1, 11))


def test_request_id_is_echoed_and_incoming_kept(client: TestClient) -> None:
    aid = catalogue_id(client)
    r = post(client, {"app_id": aid, "model_version": "v1"}, headers={"X-Request-ID": "abc-123"})
    assert r["headers"]["x-request-id"] == "abc-123" and r["json"]["request_id"] == "abc-123"
    r2 = post(client, {"app_id": aid, "model_version": "v1"}, headers={"X-Request-ID": "bad id with spaces"})
    assert r2["headers"]["x-request-id"] != "bad id with spaces" and len(r2["json"]["request_id"]) == 32


def test_unknown_app_id_is_404(client: TestClient) -> None:
    assert_problem(post(client, {"app_id": "0000", "model_version": "v1"}), 404, "not-found", "app_id")


@pytest.mark.parametrize(("version", "good", "bad"), [("v1", 64, 384), ("v2", 384, 64)])
def test_vector_dimension_is_per_version(client: TestClient, version: str, good: int, bad: int) -> None:
    ok = post(client, {"vector": [0.5] * good, "model_version": version, "top_k": 3})
    assert ok["status"] == 200 and len(ok["json"]["results"]) == 3
    body = assert_problem(
        post(client, {"vector": [0.5] * bad, "model_version": version}), 422, "dimension-mismatch", "vector"
    )
    assert body["expected_dimension"] == good and body["received_dimension"] == bad


def test_zero_vector_and_nan_tokens_rejected(client: TestClient) -> None:
    assert_problem(
        post(client, {"vector": [0.0] * 64, "model_version": "v1"}), 422, "invalid-vector", "vector"
    )
    for token in (b"NaN", b"Infinity", b"-Infinity"):
        raw = b'{"model_version": "v1", "vector": [' + b", ".join([token] + [b"0.1"] * 63) + b"]}"
        r = client.post("/find-similar", content=raw, headers={"content-type": "application/json"})
        assert_problem(
            {"status": r.status_code, "json": r.json(), "headers": r.headers}, 422, "invalid-json", "body"
        )


def test_unknown_model_version_lists_known(client: TestClient) -> None:
    body = assert_problem(
        post(client, {"app_id": "1", "model_version": "v3"}), 422, "unknown-model-version", "model_version"
    )
    assert body["known_versions"] == ["v1", "v2"]


@pytest.mark.parametrize("top_k", [0, 101, -3, "5", 2.5, True, None])
def test_top_k_out_of_range_or_wrong_type(client: TestClient, top_k: object) -> None:
    aid = catalogue_id(client)
    r = post(client, {"app_id": aid, "model_version": "v1", "top_k": top_k})
    if top_k is None:
        assert r["status"] == 200 and len(r["json"]["results"]) == 10
    else:
        assert_problem(r, 422, "validation-error", "top_k")


def test_top_k_bounds_inclusive(client: TestClient) -> None:
    aid = catalogue_id(client)
    assert len(post(client, {"app_id": aid, "model_version": "v1", "top_k": 1})["json"]["results"]) == 1
    assert len(post(client, {"app_id": aid, "model_version": "v1", "top_k": 100})["json"]["results"]) == 100


def test_oversized_body_is_413(client: TestClient) -> None:
    raw = json.dumps({"app": {"name": "x", "description": "a" * 2_000_000}}).encode()
    r = client.post("/find-similar", content=raw, headers={"content-type": "application/json"})
    assert_problem(
        {"status": r.status_code, "json": r.json(), "headers": r.headers}, 413, "payload-too-large", None
    )


def test_field_errors_name_the_field(client: TestClient) -> None:
    assert_problem(post(client, {"app": {"name": ""}}), 422, "validation-error", "app.name")
    assert_problem(
        post(client, {"app": {"name": "x", "description": "d" * 4001}}),
        422,
        "validation-error",
        "app.description",
    )
    assert_problem(post(client, {"app_id": "1", "filterz": {}}), 422, "validation-error", "filterz")
    assert_problem(post(client, {}), 422, "validation-error", "query")
    assert_problem(post(client, {"app_id": "1", "vector": [1.0]}), 422, "validation-error", "query")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_filters(client: TestClient, version: str) -> None:
    aid = catalogue_id(client)
    r = post(client, {"app_id": aid, "model_version": version, "top_k": 20, "filters": {"category": "Games"}})
    assert {n["category"] for n in r["json"]["results"]} == {"Games"} and len(r["json"]["results"]) == 20
    r = post(
        client,
        {
            "app_id": aid,
            "model_version": version,
            "top_k": 20,
            "filters": {"category": ["Finance", "weather"], "platform": "ios"},
        },
    )
    assert {n["category"] for n in r["json"]["results"]} <= {"Finance", "Weather"}
    r = post(
        client, {"app_id": aid, "model_version": version, "top_k": 100, "filters": {"category": "Catalogs"}}
    )
    assert 0 < len(r["json"]["results"]) < 12 and r["json"]["candidates"] == len(r["json"]["results"])
    assert_problem(
        post(client, {"app_id": aid, "model_version": version, "filters": {"platform": "android"}}),
        422,
        "validation-error",
        "filters.platform",
    )
    assert_problem(
        post(client, {"app_id": aid, "model_version": version, "filters": {"category": []}}),
        422,
        "validation-error",
        "filters.category",
    )


def test_determinism_and_prefix(client: TestClient) -> None:
    aid = catalogue_id(client)
    a = post(client, {"app_id": aid, "model_version": "v2", "top_k": 50})["json"]["results"]
    b = post(client, {"app_id": aid, "model_version": "v2", "top_k": 50})["json"]["results"]
    c = post(client, {"app_id": aid, "model_version": "v2", "top_k": 5})["json"]["results"]
    assert a == b and a[:5] == c


def test_health_lists_versions(client: TestClient) -> None:
    h = client.get("/health").json()
    assert h["ready"] is True
    dims = {v["model_version"]: (v["dim"], v["count"]) for v in h["versions"]}
    assert dims["v1"][0] == 64 and dims["v2"][0] == 384 and dims["v1"][1] == dims["v2"][1] > 6000
    assert client.get("/health/ready").status_code == 200


def test_metrics_count_requests_per_endpoint_and_version(client: TestClient) -> None:
    aid = catalogue_id(client)
    post(client, {"app_id": aid, "model_version": "v1"})
    text = client.get("/metrics").text
    assert (
        'appsim_requests_total{endpoint="/find-similar",method="POST",model_version="v1",status="200"}'
        in text
    )
    assert (
        'appsim_request_latency_seconds_bucket{endpoint="/find-similar",le="0.005",model_version="v1"}'
        in text
    )
    assert "appsim_request_errors_total" in text


def test_no_nan_in_any_response(client: TestClient) -> None:
    r = client.post("/find-similar", json={"vector": [1e-30] * 64, "model_version": "v1"})
    assert "NaN" not in r.text and "Infinity" not in r.text


def test_non_json_body_is_415(client: TestClient) -> None:
    r = client.post("/find-similar", content=b'{"app_id": "1"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["type"].endswith("/unsupported-media-type")
