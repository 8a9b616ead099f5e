"""Shared fixtures: the real catalogue (committed artifacts) served through the real app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "artifacts" / "real"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not (REAL / "v1" / "manifest.json").is_file():
        pytest.fail("artifacts/real is missing: run `make data` (appsim data build)")
    return REAL


@pytest.fixture(scope="session")
def settings_factory(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from appsim.config.settings import load_settings

    def make(**overrides):  # type: ignore[no-untyped-def]
        db = tmp_path_factory.mktemp("events") / "events.sqlite"
        base = {
            "catalogue_dir": REAL,
            "event_store": {"url": f"sqlite:///{db}"},
            "logging": {"level": "WARNING", "json": True},
        }
        base.update(overrides)
        return load_settings(**base)

    return make


@pytest.fixture(scope="session")
def client(real_dir: Path, settings_factory) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from appsim.app import create_app

    app = create_app(settings_factory(), load_in_background=False)
    with TestClient(app) as c:
        yield c
