"""The real catalogue (``artifacts/real``) as the API and integration tests use it: the built model versions
and their dimensions, a config of our own over them, and the v1-vs-v2 experiment."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "artifacts" / "real"
VERSIONS = [v for v in ("v1", "v2") if (REAL / v / "manifest.json").is_file()]
DIMS = {v: int(json.loads((REAL / v / "manifest.json").read_text())["dim"]) for v in VERSIONS}
HAS_V2 = "v2" in VERSIONS
TREATMENT_VERSION = "v2" if HAS_V2 else "v1"  # v2 (MiniLM) once built; the arms still differ by variant
EXP_ID = "v1-vs-v2"
EXPERIMENT: dict[str, Any] = {
    "id": EXP_ID,
    "unit": "advertiser_id",
    "variants": [
        {"name": "control", "model_version": "v1", "weight": 0.7},
        {"name": "treatment", "model_version": TREATMENT_VERSION, "weight": 0.3},
    ],
    "seed": "exp-v1-vs-v2-2026",
    "primary_metric": "install_rate",
    "enabled": True,
}


def write_config(tmp: Path, *, catalogue: Path = REAL, versions: list[str] | None = None) -> Path:
    """``tmp/config.yaml`` of our own (JSON is YAML) over ``catalogue`` with only ``versions`` (default: the
    built ones), no experiment and a SQLite event store in ``tmp``: the packaged config also lists v2 and
    its experiment."""
    vs = versions or VERSIONS
    cfg = {
        "catalogue_dir": str(catalogue),
        "default_model_version": vs[0],
        "model_versions": {v: {"path": v} for v in vs},
        "experiments": [],
        "logging": {"level": "WARNING", "json": True},
        "event_store": {"url": f"sqlite:///{tmp / 'events.sqlite'}"},
    }
    path = tmp / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


def settings_for(
    tmp: Path, *, catalogue: Path = REAL, versions: list[str] | None = None, **overrides: Any
) -> Any:
    """``load_settings(**overrides)`` over :func:`write_config`'s file (``APPSIM_CONFIG`` set meanwhile)."""
    from appsim.config.settings import load_settings

    path = write_config(tmp, catalogue=catalogue, versions=versions)
    old = os.environ.get("APPSIM_CONFIG")
    os.environ["APPSIM_CONFIG"] = str(path)
    try:
        return load_settings(**overrides)
    finally:
        if old is None:
            os.environ.pop("APPSIM_CONFIG", None)
        else:
            os.environ["APPSIM_CONFIG"] = old
