"""Readiness while loading, configuration errors naming the key, structured request logs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appsim.app import create_app
from appsim.config.settings import ConfigError, load_settings


def test_ready_is_503_while_loading_then_200(settings_factory) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    app = create_app(settings_factory(), load_in_background=True)
    app.state.container.extras.setdefault("on_loaded", []).append(lambda c: gate.wait(30))
    with TestClient(app) as c:
        h = c.get("/health")
        assert h.status_code == 200 and h.json()["ready"] is False and h.json()["status"] == "loading"
        r = c.get("/health/ready")
        assert r.status_code == 503
        busy = c.post("/find-similar", json={"app_id": "1", "model_version": "v1"})
        assert busy.status_code == 503 and busy.json()["type"].endswith("/unavailable")
        gate.set()
        for _ in range(300):
            if c.get("/health/ready").status_code == 200:
                break
            threading.Event().wait(0.05)
        ready = c.get("/health/ready").json()
        assert ready["ready"] is True and {v["model_version"] for v in ready["versions"]} == {"v1", "v2"}


def test_missing_catalogue_is_reported_not_served(settings_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(settings_factory(catalogue_dir=tmp_path / "nowhere"), load_in_background=False)
    with TestClient(app) as c:
        r = c.get("/health/ready")
        assert r.status_code == 503
        assert "apps.csv" in r.json()["detail"]


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"APPSIM_SEARCH__MAX_TOP_K": "lots"}, "search.max_top_k"),
        ({"APPSIM_DEFAULT_MODEL_VERSION": "v9"}, "default_model_version"),
        ({"APPSIM_LOGGING__LEVEL": "LOUD"}, "logging.level"),
        ({"APPSIM_THREADS__BLAS": "0"}, "threads.blas"),
        ({"APPSIM_PREDICTION__NEIGHBOURS": "50"}, "prediction"),
    ],
)
def test_bad_configuration_names_the_key(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], key: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert key in str(e.value) or "default_model_version" in str(e.value)


def test_env_overrides_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPSIM_SEARCH__MAX_TOP_K", "42")
    monkeypatch.setenv("APPSIM_ADMIN_API_KEY", "s3cret")
    s = load_settings()
    assert s.search.max_top_k == 42 and s.search.default_top_k == 10  # the rest stays from config.yaml
    assert s.admin_api_key is not None and "s3cret" not in repr(s)


def test_serve_refuses_bad_config_with_message() -> None:
    env = {"APPSIM_SEARCH__DEFAULT_TOP_K": "500", "PATH": "/usr/bin:/bin"}
    p = subprocess.run(
        [sys.executable, "-m", "appsim.cli", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 2
    assert "default_top_k" in (p.stdout + p.stderr)


def test_one_json_log_line_per_request(settings_factory, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    client = TestClient(
        create_app(settings_factory(logging={"level": "INFO", "json": True}), load_in_background=False)
    )
    capsys.readouterr()
    client.post(
        "/find-similar",
        json={"vector": [0.3] * 64, "model_version": "v1", "top_k": 2},
        headers={"X-Request-ID": "log-test-1"},
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    mine = [x for x in lines if x.get("request_id") == "log-test-1" and x.get("event") == "request"]
    assert len(mine) == 1
    rec = mine[0]
    assert rec["route"] == "/find-similar" and rec["status"] == 200 and rec["model_version"] == "v1"
    assert isinstance(rec["latency_ms"], float) and rec["latency_ms"] > 0
    assert "0.3" not in json.dumps(rec)  # the raw vector is never logged
