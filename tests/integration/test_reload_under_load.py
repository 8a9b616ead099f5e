"""Hot reload (``POST /admin/reload/{model_version}``) on a REAL server under concurrent load.

``appsim serve`` runs as a subprocess on 127.0.0.1 (free port, 1 worker, the packaged config with the
model versions present under a COPY of ``artifacts/real``, admin key set, similarity cache on). While 8
client threads send find-similar requests (by app id and cold start, v1 and v2 when v2 is built) for a
fixed pool of queries whose answers were recorded first, the test

* reloads v1 several times, alternating two VALID artifacts with different ``vectors_sha256`` (the real
  one and the same rows in another order: same answers, another file) and v2 when present: every reload
  answers 200 with the expected sha / count / dim, and every request during the run answers 200 with the
  recorded neighbours (same ids, scores within 1e-5);
* tries reloads of corrupted copies (vectors byte flipped, manifest not JSON, rows not normalised with a
  matching sha, ids missing, encoder file truncated): each answers a 409 problem naming the file and the
  check, the old version keeps serving (answers unchanged; the next valid reload reports it as previous);
* checks the admin key: 401 without / with a wrong ``X-API-Key``, 503 when none is configured, and the key
  never appears in the server's log.

Bounded: ~10 s of load per phase, each test well under 60 s; the server's process group is killed on exit.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from appsim.testing.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "artifacts" / "real"
PACKAGED_CONFIG = ROOT / "src" / "appsim" / "config" / "config.yaml"
KEY = "reload-test-key-5b1f0e"  # a test-only key; the test greps the server log for it
CLIENTS = 8
SCORE_TOL = 1e-5
ARTIFACT_FILES = ("vectors.npy", "ids.npy", "manifest.json")

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------- helpers


def built_versions(catalogue: Path) -> list[str]:
    """v1 (always) and v2 when its artifact is built."""
    return [v for v in ("v1", "v2") if (catalogue / v / "manifest.json").is_file()]


def write_config(path: Path, catalogue: Path, versions: list[str], events: Path, **extra: Any) -> Path:
    """The packaged config.yaml with the given catalogue, versions, SQLite event store and no experiment."""
    cfg = yaml.safe_load(PACKAGED_CONFIG.read_text())
    cfg.update(
        catalogue_dir=str(catalogue),
        model_versions={v: {"path": v, "index": {"backend": "exact"}} for v in versions},
        default_model_version=versions[-1],
        experiments=[],
        event_store={"url": f"sqlite:///{events}"},
        logging={"level": "INFO", "json": True},
    )
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    return path


def neighbours(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(r["app_id"], float(r["score"])) for r in body["results"]]


def min_gap(result: list[tuple[str, float]]) -> float:
    """Smallest non-zero gap between consecutive scores (exact ties are ordered by app id, stable)."""
    gaps = [abs(a[1] - b[1]) for a, b in itertools.pairwise(result) if a[1] != b[1]]
    return min(gaps, default=1.0)


class Load:
    """``CLIENTS`` threads sending the pool's queries round-robin until ``stop()``; every answer is checked
    against the recorded baseline. ``failures`` lists every non-200 or differing answer."""

    def __init__(self, url: str, pool: list[tuple[dict[str, Any], list[tuple[str, float]]]]) -> None:
        self.url, self.pool = url, pool
        self.failures: list[str] = []
        self.count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=40)

    def _run(self, tid: int) -> None:
        i = tid
        with httpx.Client(base_url=self.url, timeout=30.0) as c:
            while not self._stop.is_set():
                body, expected = self.pool[i % len(self.pool)]
                i += CLIENTS
                problem: str | None = None
                try:
                    r = c.post("/find-similar", json=body)
                    if r.status_code != 200:
                        problem = f"{r.status_code} {r.text[:300]}"
                    else:
                        got = neighbours(r.json())
                        if [a for a, _ in got] != [a for a, _ in expected] or max(
                            abs(s - e) for (_, s), (_, e) in zip(got, expected, strict=True)
                        ) > SCORE_TOL:
                            problem = f"changed answer for {body}: {got[:3]} != {expected[:3]}"
                except httpx.HTTPError as e:
                    problem = f"{type(e).__name__}: {e}"
                with self._lock:
                    self.count += 1
                    if problem is not None:
                        self.failures.append(problem)


def install(src: Path, dst: Path) -> None:
    """Copy an artifact's three files into ``dst`` (each by an atomic rename)."""
    for name in ARTIFACT_FILES:
        tmp = dst / f".{name}.tmp"
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, dst / name)


def write_permuted(src: Path, dst: Path, seed: int = 7) -> str:
    """A valid artifact with the rows of ``src`` in another order (same bytes per row, same answers, another
    vectors_sha256). Returns its vectors_sha256."""
    from appsim.data.artifacts import sha256_file

    dst.mkdir(parents=True, exist_ok=True)
    vectors = np.load(src / "vectors.npy", allow_pickle=False)
    ids = np.load(src / "ids.npy", allow_pickle=False)
    perm = np.random.default_rng(seed).permutation(len(ids))
    np.save(dst / "vectors.npy", np.ascontiguousarray(vectors[perm]), allow_pickle=False)
    np.save(dst / "ids.npy", ids[perm], allow_pickle=False)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["vectors_sha256"] = sha256_file(dst / "vectors.npy")
    manifest["ids_sha256"] = sha256_file(dst / "ids.npy")
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return str(manifest["vectors_sha256"])


def reload(url: str, version: str, key: str | None = KEY) -> httpx.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    return httpx.post(f"{url}/admin/reload/{version}", headers=headers, timeout=60.0)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not (REAL / "v1" / "manifest.json").is_file():
        pytest.fail("artifacts/real is missing: run `make data` (appsim data build)")
    tmp = tmp_path_factory.mktemp("reload")
    catalogue = tmp / "catalogue"
    catalogue.mkdir()
    shutil.copyfile(REAL / "apps.csv", catalogue / "apps.csv")
    versions = built_versions(REAL)
    for v in versions:
        shutil.copytree(REAL / v, catalogue / v, ignore=shutil.ignore_patterns("holdout_*"))
    orig = tmp / "v1-orig"
    orig.mkdir()
    for name in ARTIFACT_FILES:
        shutil.copyfile(REAL / "v1" / name, orig / name)
    perm_sha = write_permuted(orig, tmp / "v1-perm")
    orig_sha = json.loads((orig / "manifest.json").read_text())["vectors_sha256"]
    config = write_config(tmp / "config.yaml", catalogue, versions, tmp / "events.sqlite", admin_api_key=KEY)
    server = ServerProcess(config=config, log=tmp / "server.log", cwd=ROOT)
    try:
        server.start(50.0)
        pool = baseline_pool(server.url, versions)
        yield {"server": server, "catalogue": catalogue, "versions": versions, "pool": pool, "tmp": tmp,
               "artifacts": {"orig": (orig, orig_sha), "perm": (tmp / "v1-perm", perm_sha)}}
    finally:
        server.stop()


def baseline_pool(url: str, versions: list[str]) -> list[tuple[dict[str, Any], list[tuple[str, float]]]]:
    """Fixed queries (app ids and held-out real apps as cold start) with their answers before any reload;
    only queries without near-ties (< 1e-5) in their top-10 are kept, so a re-ordered matrix cannot flip
    the ranking through float rounding."""
    ids = np.load(REAL / "v1" / "ids.npy", allow_pickle=False)
    holdout = pd.read_csv(REAL / "holdout.csv", dtype={"app_id": str}, keep_default_na=False).head(12)
    bodies: list[dict[str, Any]] = []
    for v in versions:
        step = max(1, len(ids) // 10)
        bodies += [{"app_id": str(a), "model_version": v, "top_k": 10} for a in ids[::step][:10]]
        bodies += [
            {"app": {"name": r.name, "category": r.category, "platform": r.platform,
                     "description": str(r.description)[:1500]}, "model_version": v, "top_k": 10}
            for r in holdout.itertuples()
        ]
    pool = []
    with httpx.Client(base_url=url, timeout=60.0) as c:
        for body in bodies:
            r = c.post("/find-similar", json=body)
            assert r.status_code == 200, r.text
            res = neighbours(r.json())
            if len(res) == 10 and min_gap(res) > SCORE_TOL:
                pool.append((body, res))
    assert len(pool) >= 8, f"only {len(pool)} usable queries"
    return pool


# ---------------------------------------------------------------------------------------------- tests


def test_reloads_under_load_zero_failures(env: dict[str, Any]) -> None:
    server: ServerProcess = env["server"]
    v1_dir = env["catalogue"] / "v1"
    arts = env["artifacts"]
    plan = ["perm", "orig", "perm", "orig", "perm", "orig"]
    answers: list[dict[str, Any]] = []
    v2_seconds: list[float] = []
    t0 = time.monotonic()
    with Load(server.url, env["pool"]) as load:
        time.sleep(1.5)
        served = arts["orig"][1]
        for i, which in enumerate(plan):
            src, sha = arts[which]
            install(src, v1_dir)
            r = reload(server.url, "v1")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["manifest"]["vectors_sha256"] == sha
            assert body["previous"]["vectors_sha256"] == served
            assert body["changed"] is True
            assert (body["manifest"]["count"], body["manifest"]["dim"]) == (6463, 64)
            assert body["load_seconds"] > 0
            served = sha
            answers.append(body)
            if "v2" in env["versions"] and i in (1, 4):  # same artifact: not changed, still a full reload
                r2 = reload(server.url, "v2")
                assert r2.status_code == 200, r2.text
                assert r2.json()["changed"] is False
                v2_seconds.append(r2.json()["load_seconds"])
            time.sleep(0.7)
        time.sleep(1.5)
        load.stop()
    elapsed = time.monotonic() - t0
    assert not load.failures, f"{len(load.failures)} of {load.count} requests failed: {load.failures[:5]}"
    assert load.count >= 50, f"only {load.count} requests in {elapsed:.1f} s"
    # the cache was invalidated for the reloaded version (its entries existed under load)
    assert sum(a["cache_entries_dropped"] for a in answers) > 0
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'appsim_models_loaded{model_version="v1"} 6463.0' in metrics
    print(f"\n{load.count} requests in {elapsed:.1f} s with {len(plan)} v1 reloads; 0 failed; "
          f"v1 load_seconds {[a['load_seconds'] for a in answers]}; v2 reloads {v2_seconds}")


def _corrupt_flip(d: Path) -> None:
    b = bytearray((d / "vectors.npy").read_bytes())
    b[-7] ^= 0x40
    (d / "vectors.npy").write_bytes(bytes(b))


def _corrupt_manifest(d: Path) -> None:
    (d / "manifest.json").write_text((d / "manifest.json").read_text()[:200])


def _corrupt_norm(d: Path) -> None:
    """Rows scaled by 2 with a MATCHING sha: passes the sha check, fails the norm check (would double
    every score if it were served)."""
    from appsim.data.artifacts import sha256_file

    v = np.load(d / "vectors.npy", allow_pickle=False) * np.float32(2.0)
    np.save(d / "vectors.npy", v, allow_pickle=False)
    m = json.loads((d / "manifest.json").read_text())
    m["vectors_sha256"] = sha256_file(d / "vectors.npy")
    (d / "manifest.json").write_text(json.dumps(m))


def _corrupt_ids_missing(d: Path) -> None:
    (d / "ids.npy").unlink()


def _corrupt_encoder(d: Path) -> None:
    p = d / "encoder" / "components.npy"
    p.write_bytes(p.read_bytes()[:1000])


CORRUPTIONS = [
    (_corrupt_flip, "v1/vectors.npy", "sha256"),
    (_corrupt_manifest, "v1/manifest.json", "json"),
    (_corrupt_norm, "v1/vectors.npy", "norm"),
    (_corrupt_ids_missing, "v1/ids.npy", "exists"),
    (_corrupt_encoder, "v1", None),  # a damaged encoder file: rejected while loading (check "load")
]


def test_corrupted_reload_keeps_serving_the_old_version(env: dict[str, Any]) -> None:
    server: ServerProcess = env["server"]
    v1_dir: Path = env["catalogue"] / "v1"
    arts = env["artifacts"]
    encoder_backup = env["tmp"] / "encoder-backup"
    shutil.copytree(v1_dir / "encoder", encoder_backup, dirs_exist_ok=True)
    # start from the permuted artifact, so the version served is identifiable by its sha
    install(arts["perm"][0], v1_dir)
    r = reload(server.url, "v1")
    assert r.status_code == 200, r.text
    served = arts["perm"][1]
    with Load(server.url, env["pool"]) as load:
        time.sleep(1.0)
        for corrupt, file, check in CORRUPTIONS:
            install(arts["orig"][0], v1_dir)
            corrupt(v1_dir)
            r = reload(server.url, "v1")
            assert r.status_code == 409, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            p = r.json()
            assert p["type"].endswith("/conflict") and p["model_version"] == "v1"
            assert p["file"] == file or (check is None and p["file"].startswith(file)), p
            if check is not None:
                assert p["check"] == check, p
            assert p["serving_vectors_sha256"] == served
            assert "keeps serving" in p["detail"] and str(env["tmp"]) not in p["detail"]
            shutil.copytree(encoder_backup, v1_dir / "encoder", dirs_exist_ok=True)
            time.sleep(0.5)
        # a good artifact again: it reloads, and the version it replaces is the one served all along
        install(arts["orig"][0], v1_dir)
        r = reload(server.url, "v1")
        assert r.status_code == 200, r.text
        assert r.json()["previous"]["vectors_sha256"] == served
        assert r.json()["manifest"]["vectors_sha256"] == arts["orig"][1]
        time.sleep(1.0)
        load.stop()
    assert not load.failures, f"{len(load.failures)} of {load.count} requests failed: {load.failures[:5]}"
    assert load.count >= 30
    print(f"\n{load.count} requests during {len(CORRUPTIONS)} rejected reloads; 0 failed")


def test_admin_key_checks_on_the_live_server(env: dict[str, Any]) -> None:
    server: ServerProcess = env["server"]
    for key, status in ((None, 401), ("wrong-key", 401), ("", 401), (KEY + "x", 401)):
        r = reload(server.url, "v1", key=key)
        assert r.status_code == status, r.text
        assert r.json()["type"].endswith("/unauthorized") and r.json()["field"] == "X-API-Key"
    r = reload(server.url, "v9")
    assert r.status_code == 422 and r.json()["type"].endswith("/unknown-model-version")
    time.sleep(0.3)  # let the server flush its log lines
    log = server.log.read_text(errors="replace")
    assert "admin request refused" in log and "model version reloaded" in log
    assert KEY not in log, "the admin key leaked into the server log"


def test_admin_routes_answer_503_without_a_configured_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi.testclient import TestClient

    from appsim.app import create_app
    from appsim.config.settings import load_settings

    config = write_config(tmp_path / "c.yaml", REAL, ["v1"], tmp_path / "e.sqlite", admin_api_key=None)
    monkeypatch.setenv("APPSIM_CONFIG", str(config))
    monkeypatch.delenv("APPSIM_ADMIN_API_KEY", raising=False)
    app = create_app(load_settings(), load_in_background=False)
    with TestClient(app) as c:
        for headers in ({}, {"X-API-Key": "anything"}):
            r = c.post("/admin/reload/v1", headers=headers)
            assert r.status_code == 503, r.text
            assert r.json()["type"].endswith("/unavailable")
            assert "APPSIM_ADMIN_API_KEY" in r.json()["detail"]
        assert "X-API-Key" in str(app.openapi()["components"]["securitySchemes"])
    assert "anything" not in capsys.readouterr().out
