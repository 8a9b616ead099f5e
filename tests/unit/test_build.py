"""`appsim data build` is idempotent: on the committed catalogue it changes no byte, and a forced rebuild of
v1 reproduces the committed vectors (same sha256 in the manifest)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from appsim.data.build import build_real

ROOT = Path(__file__).resolve().parents[2]
RAW = ROOT / "data" / "raw" / "apple-appstore"


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def catalogue_copy(real_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("build") / "real"
    shutil.copytree(real_dir, dst)
    return dst


def test_second_build_changes_nothing(catalogue_copy: Path) -> None:
    before = _tree_hashes(catalogue_copy)
    logs: list[str] = []
    build_real(RAW, catalogue_copy, progress=False, log=logs.append)
    assert _tree_hashes(catalogue_copy) == before
    assert all("up to date" in line for line in logs), logs


def test_forced_v1_rebuild_reproduces_the_committed_vectors(catalogue_copy: Path, real_dir: Path) -> None:
    build_real(
        RAW,
        catalogue_copy,
        force=True,
        versions=("v1",),
        evaluation=False,
        history=False,
        progress=False,
        log=lambda _m: None,
    )
    for name in ("manifest.json", "vectors.npy", "ids.npy", "holdout_vectors.npy", "encoder/components.npy"):
        got = hashlib.sha256((catalogue_copy / "v1" / name).read_bytes()).hexdigest()
        want = hashlib.sha256((real_dir / "v1" / name).read_bytes()).hexdigest()
        assert got == want, name
