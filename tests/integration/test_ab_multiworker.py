"""Exposures through a REAL multi-worker server: ``appsim serve --workers 2`` in a subprocess on 127.0.0.1.

* Every served experiment request is recorded exactly once, whatever worker served it, including the
  exposures still queued in a worker's background writer when SIGTERM arrives (graceful shutdown drains
  them): N requests -> exactly N rows, read back with ``SQLAlchemyEventStore`` (SQLite file; the same
  against a real throwaway PostgreSQL).
* Restart: after a weight ramp made through the admin API on ONE worker (the other picks it up from the
  audit log) and a restart, every advertiser keeps its variant and no committed exposure or outcome is
  lost or changed.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from appsim.backends.event_store import SQLAlchemyEventStore
from appsim.testing.server import ServerProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from real_catalogue import EXP_ID, EXPERIMENT, REAL, VERSIONS

KEY = "multiworker-admin-key-0b6f2d"
N = 200
CONNECTIONS = 4

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def serve(tmp: Path, store_url: str, workers: int = 2) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``appsim serve --workers N`` with its own config and ``APPSIM_EVENT_STORE__URL``; yields the base URL
    once ``/health/ready`` answered 200 on several fresh connections (so that every worker is up). The
    caller stops it with :func:`stop`; its process group is stopped if still running at exit."""
    if not REAL.joinpath("v1", "manifest.json").is_file():
        pytest.fail("artifacts/real is missing: run `make data` (appsim data build)")
    cfg = {
        "catalogue_dir": str(REAL),
        "default_model_version": "v1",
        "model_versions": {v: {"path": v} for v in VERSIONS},
        "experiments": [EXPERIMENT],
        "logging": {"level": "WARNING", "json": True},
        "search": {"cache_size": 0},
    }
    config = tmp / "config.yaml"
    config.write_text(json.dumps(cfg))  # JSON is YAML
    (tmp / "prom").mkdir(exist_ok=True)
    env = {"APPSIM_EVENT_STORE__URL": store_url, "APPSIM_ADMIN_API_KEY": KEY,
           "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom")}  # fmt: skip
    server = ServerProcess(config=config, log=tmp / "server.log", workers=workers, env=env, cwd=tmp,
                           log_level="warning")  # fmt: skip
    # 10 answers in a row on fresh connections: the kernel spreads them over the workers
    with server.start(180, streak=10):
        assert server.proc is not None
        yield server.url, server.proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Graceful shutdown (SIGTERM, as from an orchestrator); the server must exit cleanly."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0


def send(url: str, advertisers: list[str], prefix: str) -> dict[str, dict[str, Any]]:
    """One /find-similar per advertiser over ``CONNECTIONS`` keep-alive connections; request id ->
    ``{advertiser, variant, model_version}``. A 503 (a worker still loading) is retried under a new id:
    it is not an exposure."""
    chunks = [list(enumerate(advertisers))[i::CONNECTIONS] for i in range(CONNECTIONS)]

    def run(chunk: list[tuple[int, str]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with httpx.Client(base_url=url, timeout=30) as client:
            for i, adv in chunk:
                for attempt in range(50):
                    rid = f"{prefix}-{i:04d}-{attempt}"
                    body = {"app_id": "284882215", "top_k": 3, "advertiser_id": adv}
                    r = client.post("/find-similar", json=body, headers={"X-Request-ID": rid})
                    if r.status_code != 503:
                        break
                    time.sleep(0.2)
                assert r.status_code == 200, r.text
                body = r.json()
                out[rid] = {"advertiser": adv, "variant": body["experiment"]["variant"],
                            "model_version": body["model_version"]}  # fmt: skip
        return out

    with cf.ThreadPoolExecutor(CONNECTIONS) as pool:
        results: dict[str, dict[str, Any]] = {}
        for part in pool.map(run, chunks):
            results.update(part)
    assert len(results) == len(advertisers)
    return results


def read(url: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    with SQLAlchemyEventStore(url) as store:
        return store.exposures(EXP_ID), store.outcomes(EXP_ID)


def _exactly_n_exposures(tmp: Path, store_url: str) -> None:
    with serve(tmp, store_url) as (url, proc):
        sent = send(url, [f"adv-{i % 60}" for i in range(N)], "mw")
        stop(proc)
    exposures, _ = read(store_url)
    assert len(exposures) == N, f"{len(exposures)} exposures for {N} requests"
    assert set(exposures["request_id"]) == set(sent)
    assert exposures["request_id"].is_unique
    rows = exposures.set_index("request_id")
    for rid, s in sent.items():
        assert rows.loc[rid, "variant"] == s["variant"] and rows.loc[rid, "unit_id"] == s["advertiser"]
        assert rows.loc[rid, "model_version"] == s["model_version"]
    assert (
        (rows["latency_ms"] > 0).all()
        and rows["error"].isna().all()
        and (rows["endpoint"] == "find-similar").all()
    )
    # sticky across the two workers: one variant per advertiser
    assert (rows.groupby("unit_id")["variant"].nunique() == 1).all()


def test_multiworker_records_exactly_one_exposure_per_request_sqlite(tmp_path: Path) -> None:
    _exactly_n_exposures(tmp_path, f"sqlite:///{tmp_path / 'events.sqlite'}")


@pytest.mark.postgres
def test_multiworker_records_exactly_one_exposure_per_request_postgres(tmp_path: Path, pg_url: str) -> None:
    _exactly_n_exposures(tmp_path, pg_url)


def test_restart_keeps_assignments_weights_and_committed_events(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    advertisers = [f"adv-r-{i}" for i in range(60)]
    with serve(tmp_path, store_url) as (url, proc):
        send(url, advertisers, "before")
        # ramp the treatment 30% -> 50% on whichever worker answers; the other follows the audit log
        r = httpx.put(url + f"/experiments/{EXP_ID}/weights", headers={"X-API-Key": KEY},
                      json={"weights": {"control": 0.5, "treatment": 0.5}, "actor": "ramp-test"})  # fmt: skip
        assert r.status_code == 200, r.text
        time.sleep(3.0)  # > WEIGHTS_SYNC_S
        ramped = send(url, advertisers * 2, "ramped")
        by_adv: dict[str, set[str]] = {}
        for s in ramped.values():
            by_adv.setdefault(s["advertiser"], set()).add(s["variant"])
        assert all(len(v) == 1 for v in by_adv.values()), "both workers must use the ramped weights"
        before = {a: next(iter(v)) for a, v in by_adv.items()}
        events = [{"event_id": f"ev-{rid}", "request_id": rid, "kind": "click"} for rid in list(ramped)[:30]]
        fb = httpx.post(url + "/feedback", json={"events": events})
        assert fb.status_code == 200 and fb.json()["accepted"] == 30, fb.text
        stop(proc)
    exp_1, out_1 = read(store_url)
    assert len(exp_1) == 60 + 120 and len(out_1) == 30

    with serve(tmp_path, store_url) as (url, proc):
        listing = httpx.get(url + "/experiments").json()["experiments"][0]
        assert listing["weights"] == {"control": 0.5, "treatment": 0.5}  # restored from the audit log
        after = send(url, advertisers, "after")
        stop(proc)
    assert {s["advertiser"]: s["variant"] for s in after.values()} == before
    exp_2, out_2 = read(store_url)
    assert len(exp_2) == len(exp_1) + len(advertisers)
    kept = exp_2[exp_2["request_id"].isin(exp_1["request_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, exp_1.reset_index(drop=True))
    pd.testing.assert_frame_equal(out_2.reset_index(drop=True), out_1.reset_index(drop=True))


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_outcome_batches_are_all_or_nothing(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """``record_outcomes`` (the /feedback path): one transaction, repeats flagged, unknown request: none."""
    from datetime import UTC, datetime

    from appsim.errors import NotFoundError
    from appsim.services.ab_events import Exposure, Outcome

    url = f"sqlite:///{tmp_path / 'e.sqlite'}" if dialect == "sqlite" else request.getfixturevalue("pg_url")
    now = datetime.now(UTC)
    with SQLAlchemyEventStore(url) as store:
        store.record_exposure(
            Exposure("r1", EXP_ID, "u1", "control", "v1", "find-similar", 3.0, None, False, now)
        )
        store.record_exposure(
            Exposure("r2", EXP_ID, "u2", "treatment", "v2", "predict", 4.0, None, False, now)
        )
        assert store.record_outcomes([Outcome("e1", "r1", "click", 1.0, now)]) == [True]
        batch = [
            Outcome("e1", "r1", "click", 1.0, now),  # already recorded
            Outcome("e2", "r2", "install", 1.0, now),
            Outcome("e2", "r2", "install", 1.0, now),  # repeated in the batch
            Outcome("e3", "r2", "revenue", 2.5, now),
        ]
        assert store.record_outcomes(batch) == [False, True, False, True]
        with pytest.raises(NotFoundError) as err:
            store.record_outcomes(
                [Outcome("e4", "r1", "click", 1.0, now), Outcome("e5", "nope", "click", 1.0, now)]
            )
        assert err.value.extra["index"] == 1 and err.value.extra["request_ids"] == ["nope"]
        out = store.outcomes(EXP_ID)
        assert sorted(out["event_id"]) == ["e1", "e2", "e3"]  # e4 was not written
