"""The A/B experiment through the HTTP API on the real catalogue, with a private SQLite event store.

Assignment (sticky per advertiser, explicit model_version bypasses, forced variants flagged), exposures
(recorded with latency, endpoint and error by the after_request hook), feedback (idempotent, all or
nothing, 404 / 422 problems), reports (shape, no NaN, gauges) and the admin API (401 / 503 / 200, audit,
the key never in logs or responses).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from appsim.services.ab_testing import ExperimentConfig
from appsim.services.assignment import assign

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from real_catalogue import EXP_ID, EXPERIMENT, HAS_V2, TREATMENT_VERSION

KEY = "test-admin-key-7f3c9b2e5a1d4c8f"
APP = {"app_id": "284882215"}  # Facebook, a catalogue app


@pytest.fixture(scope="module")
def ab(real_dir: Path, settings_factory: Any) -> Iterator[tuple[TestClient, Any]]:
    """A real app (v1, and v2 when built) with the experiment, an admin key and its own SQLite store."""
    from appsim.app import create_app
    from appsim.config.settings import ModelVersionConfig

    s = settings_factory(admin_api_key=KEY, experiments=[EXPERIMENT], default_model_version="v1")
    # (the packaged config.yaml lists v1 and v2; keyword overrides merge into it, so replace afterwards)
    s.model_versions = {v: ModelVersionConfig(path=v) for v in ("v1", "v2") if v == "v1" or HAS_V2}
    app = create_app(s, load_in_background=False)
    with TestClient(app) as c:
        yield c, app.state.container.extras["ab"]


def _no_constants(token: str) -> float:
    raise AssertionError(f"JSON holds the non-standard token {token}")


def find(c: TestClient, body: dict[str, Any], **kw: Any) -> Any:
    return c.post("/find-similar", json={**APP, "top_k": 3, **body}, **kw)


def exposures(rt: Any) -> Any:
    assert rt.flush(), "exposures still in memory after flush"
    return rt.store.exposures(EXP_ID).set_index("request_id")


def outcome_ids(rt: Any) -> set[str]:
    return set(rt.store.outcomes(EXP_ID)["event_id"])


def served(c: TestClient, rt: Any, n: int = 1, prefix: str = "adv-fb") -> list[str]:
    """Request ids of ``n`` fresh in-experiment requests, their exposures written."""
    ids = []
    for i in range(n):
        r = find(c, {"advertiser_id": f"{prefix}-{i}"})
        assert r.status_code == 200 and r.json()["experiment"] is not None
        ids.append(r.json()["request_id"])
    rt.flush()
    return ids


def assert_problem(r: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith("/" + code) and body["status"] == status and body["detail"]
    if field is not None:
        assert body["field"] == field, body
    return body  # type: ignore[no-any-return]


# ---- assignment ------------------------------------------------------------------------------------


def test_assignment_is_sticky_per_advertiser_over_http(ab: tuple[TestClient, Any]) -> None:
    c, _ = ab
    spec = ExperimentConfig.model_validate(EXPERIMENT)
    seen: dict[str, set[tuple[str, str]]] = {}
    for rnd in range(3):
        for i in range(30):
            adv = f"adv-sticky-{i}"
            route = ("/find-similar", "/predict")[rnd % 2] if rnd else "/find-similar"
            r = c.post(route, json={**APP, "advertiser_id": adv})
            assert r.status_code == 200, r.text
            body = r.json()
            exp = body["experiment"]
            assert exp["experiment_id"] == EXP_ID and exp["unit_id"] == adv
            assert not exp["forced"] and not exp["unit_fallback"]
            seen.setdefault(adv, set()).add((exp["variant"], body["model_version"]))
    assert all(len(v) == 1 for v in seen.values()), seen
    variants = {next(iter(v))[0] for v in seen.values()}
    assert variants == {"control", "treatment"}  # 30 advertisers at 70/30
    for adv, v in seen.items():  # the documented sha256 bucketing, reproducible anywhere
        a = assign(spec, adv)
        assert next(iter(v)) == (a.variant, a.model_version)


def test_explicit_model_version_bypasses_the_experiment(ab: tuple[TestClient, Any]) -> None:
    c, rt = ab
    r = find(c, {"advertiser_id": "adv-explicit", "model_version": "v1"})
    assert r.status_code == 200 and r.json()["experiment"] is None and r.json()["model_version"] == "v1"
    rid = r.json()["request_id"]
    assert rid not in exposures(rt).index
    fb = c.post("/feedback", json={"event_id": "ev-explicit", "request_id": rid, "kind": "click"})
    assert_problem(fb, 404, "not-found", "request_id")


def test_forced_variant_is_served_flagged_and_excluded(ab: tuple[TestClient, Any]) -> None:
    c, rt = ab
    spec = ExperimentConfig.model_validate(EXPERIMENT)
    adv = next(f"adv-f-{i}" for i in range(100) if assign(spec, f"adv-f-{i}").variant == "control")
    r = find(c, {"advertiser_id": adv, "force_variant": "treatment"}, headers={"X-Request-ID": "forced-1"})
    assert r.status_code == 200
    body = r.json()
    assert body["experiment"]["variant"] == "treatment" and body["experiment"]["forced"] is True
    assert body["model_version"] == TREATMENT_VERSION
    row = exposures(rt).loc["forced-1"]
    assert bool(row["forced"]) and row["variant"] == "treatment"
    report = c.get(f"/experiments/{EXP_ID}").json()
    assert report["analysis"]["forced_excluded"].get("treatment", 0) >= 1
    bad = find(c, {"advertiser_id": adv, "force_variant": "v9"})
    assert_problem(bad, 422, "validation-error", "force_variant")


def test_missing_unit_falls_back_to_the_request_id(ab: tuple[TestClient, Any]) -> None:
    c, rt = ab
    r = find(c, {}, headers={"X-Request-ID": "no-unit-1"})
    exp = r.json()["experiment"]
    assert exp["unit_fallback"] is True and exp["unit_id"] == "no-unit-1"
    assert exposures(rt).loc["no-unit-1"]["unit_id"] == "no-unit-1"


# ---- exposures -------------------------------------------------------------------------------------


def test_exposures_are_recorded_with_latency_endpoint_and_error(ab: tuple[TestClient, Any]) -> None:
    c, rt = ab
    before = c.get("/metrics").text
    calls = [
        ("/find-similar", {**APP, "advertiser_id": "adv-exp-1"}, "exp-1", "find-similar"),
        (
            "/find-similar/batch",
            {"queries": [APP, APP], "advertiser_id": "adv-exp-2"},
            "exp-2",
            "find-similar-batch",
        ),
        ("/predict", {**APP, "advertiser_id": "adv-exp-3"}, "exp-3", "predict"),
        ("/find-similar", {"app_id": "0000", "advertiser_id": "adv-exp-4"}, "exp-4", "find-similar"),
    ]
    answers = {}
    for route, body, rid, _ in calls:
        answers[rid] = c.post(route, json=body, headers={"X-Request-ID": rid})
    assert [answers[r].status_code for r in ("exp-1", "exp-2", "exp-3", "exp-4")] == [200, 200, 200, 404]
    rows = exposures(rt)
    # a request rejected for the caller's mistake (404 unknown app id) is not an exposure: no model version
    # served it, and it must not count against the error-rate guardrail
    assert "exp-4" not in rows.index
    for _route, body, rid, endpoint in calls[:3]:
        row = rows.loc[rid]
        assert row["endpoint"] == endpoint and row["unit_id"] == body["advertiser_id"]
        assert row["experiment_id"] == EXP_ID and not bool(row["forced"])
        assert 0.0 < row["latency_ms"] < 60_000
        if answers[rid].status_code == 200:
            assert row["error"] is None
            assert row["variant"] == answers[rid].json()["experiment"]["variant"]
            assert row["model_version"] == answers[rid].json()["model_version"]
            assert row["latency_ms"] <= answers[rid].json()["latency_ms"] + 50
    after = c.get("/metrics").text
    assert 'appsim_experiment_exposures_total{experiment="v1-vs-v2"' in after and after != before
    assert "appsim_event_store_buffered" in after
    assert rt.store.stats()["lost"] == 0 and rt.store.stats()["rejected"] == 0


# ---- feedback --------------------------------------------------------------------------------------


def test_feedback_is_idempotent_by_event_id(ab: tuple[TestClient, Any]) -> None:
    c, rt = ab
    (rid,) = served(c, rt, 1, "adv-idem")
    ev = {"event_id": "ev-idem-1", "request_id": rid, "kind": "install"}
    first = c.post("/feedback", json=ev)
    assert first.status_code == 200
    assert first.json() == {
        "accepted": 1,
        "duplicates": 0,
        "duplicate": False,
        "events": [{"event_id": "ev-idem-1", "request_id": rid, "duplicate": False}],
    }
    again = c.post("/feedback", json=ev | {"kind": "click"})  # same id, other content: still the first
    assert again.status_code == 200 and again.json()["duplicate"] is True and again.json()["accepted"] == 0
    out = rt.store.outcomes(EXP_ID)
    mine = out[out["event_id"] == "ev-idem-1"]
    assert len(mine) == 1 and mine.iloc[0]["kind"] == "install"


def test_feedback_batch_and_bare_list(ab: tuple[TestClient, Any]) -> None:
    c, rt = ab
    r1, r2 = served(c, rt, 2, "adv-batch")
    events = [
        {"event_id": "ev-b-1", "request_id": r1, "kind": "impression"},
        {"event_id": "ev-b-2", "request_id": r1, "kind": "click"},
        {
            "event_id": "ev-b-3",
            "request_id": r2,
            "kind": "revenue",
            "value": 4.99,
            "ts": "2026-03-02T10:00:00Z",
        },
        {"event_id": "ev-b-2", "request_id": r1, "kind": "click"},  # repeated inside the batch
    ]
    r = c.post("/feedback", json={"events": events})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"], body["duplicate"]) == (3, 1, False)
    assert [e["duplicate"] for e in body["events"]] == [False, False, False, True]
    bare = c.post("/feedback", json=events[:2])
    assert bare.status_code == 200 and bare.json()["duplicates"] == 2 and bare.json()["duplicate"] is True
    out = rt.store.outcomes(EXP_ID).set_index("event_id")
    assert out.loc["ev-b-3", "value"] == pytest.approx(4.99) and out.loc["ev-b-3", "kind"] == "revenue"


def test_feedback_for_an_unknown_request_is_404_and_writes_nothing(ab: tuple[TestClient, Any]) -> None:
    c, rt = ab
    (rid,) = served(c, rt, 1, "adv-unknown")
    before = outcome_ids(rt)
    single = c.post(
        "/feedback", json={"event_id": "ev-u-0", "request_id": "no-such-request", "kind": "click"}
    )
    assert_problem(single, 404, "not-found", "request_id")
    batch = [
        {"event_id": "ev-u-1", "request_id": rid, "kind": "click"},
        {"event_id": "ev-u-2", "request_id": "no-such-request", "kind": "install"},
    ]
    body = assert_problem(
        c.post("/feedback", json={"events": batch}), 404, "not-found", "events.1.request_id"
    )
    assert body["request_ids"] == ["no-such-request"]
    assert outcome_ids(rt) == before  # the valid event of the batch was not written either


@pytest.mark.parametrize(
    ("bad", "field", "code"),
    [
        ({"value": -1.0}, "events.3.value", "validation-error"),
        ({"kind": "purchase"}, "events.3.kind", "validation-error"),
        ({"value": "NaN"}, "events.3.value", "validation-error"),
        ({"value": True}, "events.3.value", "validation-error"),
        ({"kind": "revenue"}, "events.3.value", "validation-error"),  # revenue needs its amount
        ({"event_id": ""}, "events.3.event_id", "validation-error"),
        ({"ts": "1900-01-01T00:00:00Z"}, "events.3.ts", "validation-error"),
        ({"extra": 1}, "events.3.extra", "validation-error"),
    ],
)
def test_invalid_feedback_is_422_naming_the_item_and_writes_nothing(
    ab: tuple[TestClient, Any], bad: dict[str, Any], field: str, code: str
) -> None:
    c, rt = ab
    (rid,) = served(c, rt, 1, "adv-invalid")
    before = outcome_ids(rt)
    events = [{"event_id": f"ev-i-{field}-{i}-{bad}", "request_id": rid, "kind": "click"} for i in range(5)]
    events[3] = events[3] | bad
    assert_problem(c.post("/feedback", json={"events": events}), 422, code, field)
    assert outcome_ids(rt) == before


def test_nan_token_in_feedback_is_422_and_writes_nothing(ab: tuple[TestClient, Any]) -> None:
    c, rt = ab
    (rid,) = served(c, rt, 1, "adv-nan")
    before = outcome_ids(rt)
    for token in (b"NaN", b"Infinity", b"-Infinity"):
        raw = (
            b'{"event_id": "ev-nan", "request_id": "'
            + rid.encode()
            + b'", "kind": "revenue", "value": '
            + token
        )
        r = c.post("/feedback", content=raw + b"}", headers={"content-type": "application/json"})
        assert_problem(r, 422, "invalid-json", "body")
    assert_problem(c.post("/feedback", json={"events": []}), 422, "validation-error", "events")
    assert_problem(c.post("/feedback", json=42), 422, "validation-error", "body")
    assert outcome_ids(rt) == before


# ---- reports ---------------------------------------------------------------------------------------


def test_experiment_report_shape_and_no_nan(ab: tuple[TestClient, Any]) -> None:
    c, rt = ab
    ids = served(c, rt, 6, "adv-report")
    c.post("/feedback", json=[{"event_id": f"ev-r-{r}", "request_id": r, "kind": "install"} for r in ids[:3]])
    r = c.get(f"/experiments/{EXP_ID}")
    assert r.status_code == 200
    report = json.loads(r.text, parse_constant=_no_constants)
    for key in (
        "experiment_id",
        "generated_at",
        "config",
        "weights",
        "weight_history",
        "analysis",
        "variants",
        "srm",
        "primary",
        "secondary",
        "guardrails",
        "power",
        "decision",
        "decision_reasons",
        "actions",
        "warnings",
    ):
        assert key in report, key
    assert report["decision"] in {"keep_running", "invalid:srm", "stop:guardrail"} or report[
        "decision"
    ].startswith("ship:")
    assert set(report["variants"]) == {"control", "treatment"}
    total = 0
    for v in report["variants"].values():
        assert set(v["latency_ms"]) >= {"p50", "p95", "p99"}
        assert {"value", "ci_low", "ci_high"} <= set(v["metrics"]["install_rate"])
        assert {"impression", "click", "install", "revenue"} <= set(v["outcomes"])
        assert "error_rate" in v and v["exposures"] >= 0
        total += v["outcomes"]["install"]
    assert total >= 3
    assert "p_value" in report["srm"] and "comparisons" in report["primary"]
    assert {"required", "eta_days"} <= set(report["power"])
    assert "treatment" in report["guardrails"]["by_treatment"]

    listing = c.get("/experiments").json()["experiments"]
    (item,) = listing
    assert item["id"] == EXP_ID and item["serving"] and item["decision"] == report["decision"]
    assert {v["name"]: v["model_version"] for v in item["variants"]} == {
        "control": "v1",
        "treatment": TREATMENT_VERSION,
    }
    metrics = c.get("/metrics").text
    assert 'appsim_experiment_srm_pvalue{experiment="v1-vs-v2"}' in metrics
    assert (
        f'appsim_experiment_decision{{decision="{report["decision"]}",experiment="v1-vs-v2"}} 1.0' in metrics
    )
    assert_problem(c.get("/experiments/nope"), 404, "not-found")


# ---- admin -----------------------------------------------------------------------------------------


def test_admin_weights_auth_validation_effect_and_audit(
    ab: tuple[TestClient, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    import logging

    import structlog

    from appsim.observability import configure_logging

    c, _ = ab
    saved_structlog, root = structlog.get_config(), logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    url = f"/experiments/{EXP_ID}/weights"
    configure_logging("DEBUG", json_logs=True)  # every log line of this test goes to the captured stdout
    try:
        assert_problem(
            c.put(url, json={"weights": {"control": 0.5, "treatment": 0.5}}), 401, "unauthorized", "X-API-Key"
        )
        wrong = c.put(
            url, json={"weights": {"control": 0.5, "treatment": 0.5}}, headers={"X-API-Key": "nope"}
        )
        assert_problem(wrong, 401, "unauthorized", "X-API-Key")
        # unauthenticated callers learn nothing, not even whether the body or the experiment is valid
        assert_problem(c.put("/experiments/nope/weights", json={}), 401, "unauthorized")
        assert_problem(c.get(f"/experiments/{EXP_ID}/audit"), 401, "unauthorized")
        h = {"X-API-Key": KEY}
        assert_problem(
            c.put(url, json={"weights": {"control": 0.5, "treatment": 0.6}}, headers=h),
            422,
            "validation-error",
            "weights",
        )
        assert_problem(
            c.put(url, json={"weights": {"control": 0.5, "v9": 0.5}}, headers=h),
            422,
            "validation-error",
            "weights",
        )
        assert_problem(
            c.put(url, json={"weights": {"control": -0.5, "treatment": 1.5}}, headers=h),
            422,
            "validation-error",
        )
        assert_problem(
            c.put("/experiments/nope/weights", json={"weights": {"a": 1.0}}, headers=h), 404, "not-found"
        )
        ok = c.put(url, json={"weights": {"treatment": 1.0}, "reason": "QA ramp"}, headers=h)
        assert ok.status_code == 200, ok.text
        res = ok.json()
        assert res["weights"] == {"control": 0.0, "treatment": 1.0}
        assert res["previous"] == {"control": 0.7, "treatment": 0.3} and res["actor"].startswith("key:")
        # in force at once: every new advertiser now gets the treatment
        got = {find(c, {"advertiser_id": f"adv-ramp-{i}"}).json()["experiment"]["variant"] for i in range(10)}
        assert got == {"treatment"}
        back = c.put(url, json={"weights": {"control": 0.7, "treatment": 0.3}, "actor": "alice"}, headers=h)
        assert back.status_code == 200 and back.json()["actor"] == "alice"
        audit = c.get(f"/experiments/{EXP_ID}/audit", headers=h, params={"limit": 10})
        assert audit.status_code == 200
        entries = audit.json()["entries"]
        assert [e["action"] for e in entries[:2]] == ["ab.set_weights", "ab.set_weights"]
        assert entries[0]["actor"] == "alice" and entries[0]["payload"]["weights"] == {
            "control": 0.7,
            "treatment": 0.3,
        }
        assert entries[1]["payload"]["reason"] == "QA ramp" and entries[1]["actor"] == res["actor"]
        assert entries[0]["payload"]["key_id"] == res["actor"]  # the key's id, never the key
        listing = c.get("/experiments").json()["experiments"][0]
        assert listing["weights"] == {"control": 0.7, "treatment": 0.3}
        bodies = [ok.text, back.text, audit.text, wrong.text, c.get("/experiments").text]
    finally:  # back to the session's logging (this test's capture is closed afterwards)
        structlog.configure(**saved_structlog)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    logs = capfd.readouterr()
    assert "ab.weights_changed" in logs.out and "admin request refused" in logs.out  # the capture works
    for text in (logs.out, logs.err, *bodies):
        assert KEY not in text


def test_admin_api_disabled_without_a_key_is_503(
    ab: tuple[TestClient, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, _ = ab
    app: Any = c.app
    monkeypatch.setattr(app.state.container.settings, "admin_api_key", None)
    r = c.put(
        f"/experiments/{EXP_ID}/weights", json={"weights": {"control": 1.0}}, headers={"X-API-Key": KEY}
    )
    body = assert_problem(r, 503, "unavailable")
    assert "disabled" in body["detail"]
    assert_problem(c.get(f"/experiments/{EXP_ID}/audit", headers={"X-API-Key": KEY}), 503, "unavailable")
    assert c.get("/experiments").status_code == 200  # reading stays open


def test_shutdown_drains_exposures_still_queued(real_dir: Path, settings_factory: Any) -> None:
    """Exposures are written off the response path; a shutdown writes those still queued (none lost)."""
    import threading

    from appsim.app import create_app
    from appsim.backends.event_store import SQLAlchemyEventStore
    from appsim.config.settings import ModelVersionConfig

    s = settings_factory(experiments=[EXPERIMENT], default_model_version="v1", search={"cache_size": 0})
    s.model_versions = {v: ModelVersionConfig(path=v) for v in ("v1", "v2") if v == "v1" or HAS_V2}
    app = create_app(s, load_in_background=False)
    rt = app.state.container.extras["ab"]
    gate = threading.Event()
    inner = rt.store.inner
    write_many = inner.record_exposures

    def slow(batch: Any, **kw: Any) -> Any:  # the database is slow: the writer falls behind
        gate.wait(10)
        return write_many(batch, **kw)

    inner.record_exposures = slow
    with TestClient(app) as c:
        ids = [find(c, {"advertiser_id": f"adv-drain-{i}"}).json()["request_id"] for i in range(25)]
        assert rt.writer.queued > 0  # answered before their exposures were written
        threading.Timer(0.3, gate.set).start()
    with SQLAlchemyEventStore(s.event_store.url) as store:
        assert set(store.exposures(EXP_ID)["request_id"]) == set(ids)
    assert rt.store.stats()["lost"] == 0


def test_feedback_value_is_capped(ab: tuple[TestClient, Any]) -> None:
    """One hostile or broken event (revenue 1e308) must not overflow an arm's sums: 422, nothing written."""
    c, rt = ab
    rid = served(c, rt, 1, prefix="adv-cap")[0]
    before = outcome_ids(rt)
    huge = {"event_id": "ev-huge", "request_id": rid, "kind": "revenue", "value": 1e308}
    r = c.post("/feedback", json=huge)
    assert r.status_code == 422 and r.json()["field"].endswith("value")
    ok = c.post("/feedback", json={"event_id": "ev-ok", "request_id": rid, "kind": "revenue", "value": 1e6})
    assert ok.status_code == 200
    assert outcome_ids(rt) - before == {"ev-ok"}
