"""Graceful shutdown: SIGTERM drains the requests in flight, then the server exits.

``appsim serve`` (which passes ``timeout_graceful_shutdown=30`` to uvicorn) runs as a subprocess on
127.0.0.1 with the real catalogue (v1, and v2 when built). The test sends several slow-ish requests at once
(4 concurrent ``/find-similar/batch`` calls of cold-start held-out real apps with their long descriptions,
on v2 when built, else v1; the batch size is chosen from a measured 16-item probe so that each call costs
~0.8 s of CPU alone), sends SIGTERM to the server while they are in flight, and checks:

* every request in flight completes with 200 and every item answered, and at least one of them completed
  AFTER the signal (so the signal really landed mid-flight);
* the server process exits within the 30 s graceful timeout (+ margin) through uvicorn's shutdown path
  ("Finished server process" logged; no "Cancel ... running task(s)" line), with status 0, or -SIGTERM for
  one worker: uvicorn >= 0.29 re-raises the captured signal after a graceful single-process shutdown.

Both one worker and ``--workers 2`` (the master forwards SIGTERM to the workers) are covered.
Bounded: each case < 60 s; the server's process group is killed on exit, whatever happens.
"""

from __future__ import annotations

import math
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from appsim.testing.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "artifacts" / "real"
PACKAGED_CONFIG = ROOT / "src" / "appsim" / "config" / "config.yaml"
GRACE_S = 30.0  # appsim serve: timeout_graceful_shutdown=30
PROBE = 16
CONCURRENT = 4
TARGET_CALL_S = 0.8
LOADED = '"event": "model versions loaded"'  # one log line per worker

pytestmark = pytest.mark.slow


def built_versions(catalogue: Path) -> list[str]:
    return [v for v in ("v1", "v2") if (catalogue / v / "manifest.json").is_file()]


def write_config(path: Path, catalogue: Path, versions: list[str], events: Path) -> Path:
    cfg = yaml.safe_load(PACKAGED_CONFIG.read_text())
    cfg.update(
        catalogue_dir=str(catalogue),
        model_versions={v: {"path": v, "index": {"backend": "exact"}} for v in versions},
        default_model_version=versions[-1], experiments=[], event_store={"url": f"sqlite:///{events}"},
        logging={"level": "INFO", "json": True},  # "model versions loaded": one line per worker
    )
    cfg["search"]["cache_size"] = 0  # every batch computes
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    return path


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[ServerProcess] = []

    def make(workers: int) -> ServerProcess:
        if not (REAL / "v1" / "manifest.json").is_file():
            pytest.fail("artifacts/real is missing: run `make data` (appsim data build)")
        config = write_config(tmp_path / "config.yaml", REAL, built_versions(REAL), tmp_path / "ev.sqlite")
        server = ServerProcess(config=config, log=tmp_path / "server.log", workers=workers, cwd=ROOT)
        servers.append(server)
        # every worker has loaded (a request may reach any of them) and the service is ready
        return server.start(50.0, ready=lambda s: s.log_count(LOADED) >= s.workers)

    yield make
    for s in servers:
        s.kill()


def batch_body(version: str, size: int) -> dict[str, Any]:
    """``size`` held-out real App Store apps (the longest descriptions) as cold-start queries."""
    holdout = pd.read_csv(REAL / "holdout.csv", dtype={"app_id": str}, keep_default_na=False)
    holdout = holdout.sort_values("description", key=lambda s: s.str.len(), ascending=False).head(size)
    queries = [{"app": {"name": r.name[:200], "category": r.category, "platform": r.platform,
                        "description": str(r.description)[:4000]}} for r in holdout.itertuples()]
    return {"queries": queries, "model_version": version, "top_k": 10}


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_requests_in_flight(make_server: Any, workers: int) -> None:
    server: ServerProcess = make_server(workers)
    assert server.proc is not None
    version = built_versions(REAL)[-1]
    t = time.perf_counter()
    probe = httpx.post(server.url + "/find-similar/batch", json=batch_body(version, PROBE), timeout=60.0)
    per_item = (time.perf_counter() - t) / PROBE
    assert probe.status_code == 200, probe.text
    size = max(4, min(256, math.ceil(TARGET_CALL_S / per_item)))
    body = batch_body(version, size)
    n = CONCURRENT

    results: list[tuple[int, int, float] | str] = []
    lock = threading.Lock()
    sent = threading.Barrier(n + 1)

    def client() -> None:
        with httpx.Client(timeout=GRACE_S + 20) as c:  # one connection per request
            sent.wait()
            try:
                r = c.post(server.url + "/find-similar/batch", json=body)
                done = time.monotonic()
                ok = sum(1 for it in r.json().get("items", []) if it.get("ok")) if r.status_code == 200 else 0
                out: tuple[int, int, float] | str = (r.status_code, ok, done)
            except httpx.HTTPError as e:
                out = f"{type(e).__name__}: {e}"
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    for th in threads:
        th.start()
    sent.wait()
    time.sleep(0.3)  # the requests reach the server and start computing
    t_sig = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)  # the serving process (the master with --workers 2)
    for th in threads:
        th.join(timeout=GRACE_S + 25)
    try:
        code = server.proc.wait(timeout=GRACE_S + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server did not exit within {GRACE_S + 10} s of SIGTERM:\n{server.log_tail()}")
    t_exit = time.monotonic()

    errors = [r for r in results if isinstance(r, str) or r[0] != 200 or r[1] != size]
    assert len(results) == n and not errors, f"{len(errors)} of {n} in-flight requests failed: {errors[:3]}"
    after = [r for r in results if not isinstance(r, str) and r[2] > t_sig]
    assert after, f"all finished before SIGTERM ({size} items at {per_item:.3f} s): nothing was in flight"
    log = server.log.read_text(errors="replace")
    assert "Finished server process" in log, server.log_tail()
    assert "Cancel" not in log, f"requests were cancelled (graceful timeout exceeded):\n{server.log_tail()}"
    allowed = (0,) if workers > 1 else (0, -signal.SIGTERM)
    assert code in allowed, f"exit status {code}:\n{server.log_tail()}"
    print(f"\nworkers={workers}: {n} batches of {size} ({version}, {per_item * size:.2f} s each alone); "
          f"{len(after)} finished after SIGTERM, last {max(r[2] for r in after) - t_sig:.2f} s after it; "
          f"exit {code} {t_exit - t_sig:.2f} s after SIGTERM")
