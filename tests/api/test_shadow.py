"""Shadow mode: the non-served variant answers the same queries off the response path; overlap@k is
recorded. Known answers for overlap@k; a planted case through the real app."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from appsim.api.shadow import overlap_at_k
from real_catalogue import EXPERIMENT

HALF_HALF = [
    {"name": "control", "model_version": "v1", "weight": 0.5},
    {"name": "treatment", "model_version": "v2", "weight": 0.5},
]


def test_overlap_at_k_known_answers() -> None:
    assert overlap_at_k(["a", "b", "c", "d"], ["d", "x", "a", "y"]) == 0.5
    assert overlap_at_k(["a"], ["a"]) == 1.0
    assert overlap_at_k(["a", "b"], ["c", "d"]) == 0.0
    assert overlap_at_k([], ["a"]) == 0.0


def test_shadow_records_overlap_of_the_other_version(settings_factory: Any) -> None:
    from appsim.app import create_app

    exp = {**EXPERIMENT, "id": "shadow-exp", "seed": "shadow", "shadow": True, "variants": HALF_HALF}
    app = create_app(settings_factory(experiments=[exp]), load_in_background=False)
    with TestClient(app) as c:
        served = []
        for i in range(12):
            r = c.post("/find-similar", json={"app_id": "284882215", "top_k": 10, "advertiser_id": f"s{i}"})
            assert r.status_code == 200
            served.append(r.json()["model_version"])
        assert app.state.container.extras["shadow"].drain()
        text = c.get("/metrics").text
    assert set(served) == {"v1", "v2"}  # both variants served, so both directions were shadowed
    counts = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("appsim_shadow_overlap_at_k_count")
    }
    assert sum(counts.values()) == 12
    sums = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("appsim_shadow_overlap_at_k_sum")
    )
    assert 0.0 <= sums <= 12.0
