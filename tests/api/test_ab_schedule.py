"""The experiment is analysed on a schedule, not only when someone reads GET /experiments: the SRM and
decision gauges that the alert rules read are set without any report request."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

import appsim.api.ab_wiring as ab_wiring
from real_catalogue import EXPERIMENT

HALF_HALF = [
    {"name": "control", "model_version": "v1", "weight": 0.5},
    {"name": "treatment", "model_version": "v2", "weight": 0.5},
]


def test_scheduled_report_sets_the_alerting_gauges(
    settings_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appsim.app import create_app

    monkeypatch.setattr(ab_wiring, "WEIGHTS_SYNC_S", 0.05)
    monkeypatch.setattr(ab_wiring, "REPORT_INTERVAL_S", 0.0)
    exp = {**EXPERIMENT, "id": "sched-exp", "seed": "sched", "variants": HALF_HALF}
    app = create_app(settings_factory(experiments=[exp]), load_in_background=False)
    with TestClient(app) as c:
        for i in range(20):
            r = c.post("/find-similar", json={"app_id": "284882215", "top_k": 2, "advertiser_id": f"a{i}"})
            assert r.status_code == 200
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            text = c.get("/metrics").text
            if 'appsim_experiment_decision{decision="keep_running",experiment="sched-exp"} 1.0' in text:
                break
            time.sleep(0.1)
        assert 'appsim_experiment_srm_pvalue{experiment="sched-exp"}' in text
        assert 'appsim_experiment_decision{decision="keep_running",experiment="sched-exp"} 1.0' in text
