"""Prometheus metrics aggregate across worker processes (``appsim serve --workers 2``).

The server runs as a subprocess on 127.0.0.1 with ``PROMETHEUS_MULTIPROC_DIR`` set to a fresh, empty temp
dir (what the Dockerfile and ``appsim serve`` guarantee) and the real catalogue (v1, and v2 when built).
Once BOTH workers have loaded (two "model versions loaded" log lines), the test

1. sends N find-similar requests over fresh connections from 4 threads (so both workers answer) while a
   scraper reads ``/metrics`` every ~0.2 s, then scrapes several more times: every scrape after the
   last answer shows ``sum(appsim_requests_total{endpoint="/find-similar"}) == N`` whichever worker
   answered it, and no counter sample (``*_total``, histogram ``_count`` / ``_bucket`` / ``_sum``) ever
   goes down or disappears between two scrapes;
2. SIGKILLs one worker (uvicorn's supervisor starts a new one): the counts of the killed worker are kept
   (totals do not go down), its live-gauge file is pruned at the next scrape, ``appsim_models_loaded``
   still reads the catalogue size, and M more requests bring the sum to exactly N + M.

Bounded: < 60 s on a loaded 2-core machine; the server's process group is killed on exit.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from appsim.testing.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "artifacts" / "real"
PACKAGED_CONFIG = ROOT / "src" / "appsim" / "config" / "config.yaml"
ENDPOINT = "/find-similar"
N_FIRST = 200
N_SECOND = 60
SENDERS = 4

pytestmark = pytest.mark.slow

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def write_config(path: Path, versions: list[str], events: Path) -> Path:
    cfg = yaml.safe_load(PACKAGED_CONFIG.read_text())
    cfg.update(
        catalogue_dir=str(REAL),
        model_versions={v: {"path": v, "index": {"backend": "exact"}} for v in versions},
        default_model_version=versions[-1], experiments=[], event_store={"url": f"sqlite:///{events}"},
        logging={"level": "INFO", "json": True},  # "model versions loaded": one line per worker start
    )
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    return path


def pids_with(mpdir: Path, pattern: str) -> set[int]:
    """Worker pids owning a multiprocess file that matches ``pattern`` (e.g. ``gauge_livemostrecent``)."""
    out = set()
    for f in glob.glob(str(mpdir / f"{pattern}_*.db")):
        m = re.search(r"_(\d+)\.db$", f)
        if m:
            out.add(int(m.group(1)))
    return out


def scrape(url: str) -> dict[SampleKey, float]:
    """One ``/metrics`` scrape over a fresh connection: ``{(sample name, sorted labels): value}``."""
    r = httpx.get(url + "/metrics", timeout=10.0, headers={"Connection": "close"})
    assert r.status_code == 200, r.text
    out: dict[SampleKey, float] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def requests_sum(m: dict[SampleKey, float], endpoint: str = ENDPOINT) -> float:
    return sum(v for (name, labels), v in m.items()
               if name == "appsim_requests_total" and dict(labels).get("endpoint") == endpoint)


def monotonic(name: str) -> bool:
    return name.endswith(("_total", "_count", "_bucket", "_sum"))


def check_never_down(scrapes: list[dict[SampleKey, float]]) -> None:
    for i, (a, b) in enumerate(itertools.pairwise(scrapes)):
        for key, va in a.items():
            if not monotonic(key[0]):
                continue
            assert key in b, f"scrape {i + 1}: counter sample {key} disappeared"
            assert b[key] >= va - 1e-9, f"scrape {i + 1}: {key} went down {va} -> {b[key]}"


class Senders:
    """``SENDERS`` threads sending ``n`` find-similar requests in total, a fresh connection each."""

    def __init__(self, url: str, ids: list[str], n: int, version: str) -> None:
        self.url, self.ids, self.n, self.version = url, ids, n, version
        self.statuses: list[int | str] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        per = [self.n // SENDERS + (1 if i < self.n % SENDERS else 0) for i in range(SENDERS)]
        threads = [threading.Thread(target=self._send, args=(i, k)) for i, k in enumerate(per)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

    def _send(self, tid: int, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0,
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:
            for j in range(k):
                body = {"app_id": self.ids[(tid * 97 + j) % len(self.ids)], "model_version": self.version}
                try:
                    st: int | str = c.post(ENDPOINT, json=body).status_code
                except httpx.HTTPError as e:
                    st = f"{type(e).__name__}: {e}"
                with self._lock:
                    self.statuses.append(st)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not (REAL / "v1" / "manifest.json").is_file():
        pytest.fail("artifacts/real is missing: run `make data` (appsim data build)")
    versions = [v for v in ("v1", "v2") if (REAL / v / "manifest.json").is_file()]
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    config = write_config(tmp_path / "config.yaml", versions, tmp_path / "events.sqlite")
    server = ServerProcess(config=config, log=tmp_path / "server.log", workers=2, cwd=ROOT,
                           env={"PROMETHEUS_MULTIPROC_DIR": str(mpdir)})  # fmt: skip
    proc = server.launch()  # the test waits for the workers itself (wait_workers_loaded)
    info = {"url": server.url, "proc": proc, "mpdir": mpdir, "log": server.log, "versions": versions}
    try:
        yield info
    finally:
        server.stop()


def wait_workers_loaded(info: dict[str, Any], loads: int, timeout: float) -> set[int]:
    """Wait until the log shows ``loads`` completed model loads in total (one per worker start), the
    supervisor has 2 live workers and ``/health/ready`` answers 200; returns the worker pids."""
    deadline = time.monotonic() + timeout
    proc: subprocess.Popen[bytes] = info["proc"]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{info['log'].read_text()[-3000:]}")
        done = info["log"].read_text(errors="replace").count('"event": "model versions loaded"')
        children = set()
        for c in psutil.Process(proc.pid).children():  # workers, not multiprocessing's resource tracker
            with contextlib.suppress(psutil.Error):
                if c.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(c.cmdline()):
                    children.add(c.pid)
        if done >= loads and len(children) >= 2:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(info["url"] + "/health/ready", timeout=2.0).status_code == 200:
                    return children
        time.sleep(0.25)
    raise AssertionError(f"{loads} loads not seen within {timeout} s:\n{info['log'].read_text()[-3000:]}")


def test_request_counts_aggregate_across_two_workers(server: dict[str, Any]) -> None:
    url, mpdir = server["url"], server["mpdir"]
    workers = wait_workers_loaded(server, 2, timeout=45)
    version = server["versions"][0]
    ids = [str(a) for a in np.load(REAL / version / "ids.npy", allow_pickle=False)[:500]]
    base = requests_sum(scrape(url))
    assert base == 0, f"the multiprocess dir was not fresh: {base} find-similar requests before any was sent"

    scrapes: list[dict[SampleKey, float]] = []
    done = threading.Event()

    scrape_errors: list[str] = []

    def scraper() -> None:
        while not done.is_set():
            try:
                scrapes.append(scrape(url))
            except httpx.HTTPError as e:  # a slow scrape on the loaded machine is not a metrics error
                scrape_errors.append(f"{type(e).__name__}: {e}")
            except AssertionError as e:  # a non-200 scrape is
                scrape_errors.append(f"non-200 scrape: {e}")
                return
            time.sleep(0.2)

    t = threading.Thread(target=scraper)
    t.start()
    try:
        senders = Senders(url, ids, N_FIRST, version)
        senders.run()
    finally:
        done.set()
        t.join(timeout=30)
    assert senders.statuses.count(200) == N_FIRST, f"non-200 answers: {set(senders.statuses) - {200}}"
    assert not [e for e in scrape_errors if e.startswith("non-200")], scrape_errors
    answered = pids_with(mpdir, "counter") & workers
    assert len(answered) == 2, f"only workers {answered} of {workers} answered requests"

    after = [scrape(url) for _ in range(6)]  # any worker may answer each scrape
    assert [requests_sum(m) for m in after] == [N_FIRST] * 6
    scrapes += after
    check_never_down(scrapes)
    assert len(scrapes) >= 8

    # a worker dies without running its exit handlers: its counts stay, its live gauges go
    victim = sorted(answered)[0]
    os.kill(victim, signal.SIGKILL)
    assert victim not in wait_workers_loaded(server, 3, timeout=45)
    m = scrape(url)
    for live in ("gauge_livemostrecent", "gauge_livesum"):
        assert victim not in pids_with(mpdir, live), f"the dead worker's {live} file was not pruned"
    assert victim in pids_with(mpdir, "counter"), "the dead worker's counts must stay"
    assert requests_sum(m) == N_FIRST
    rows = int(np.load(REAL / version / "ids.npy", allow_pickle=False).shape[0])
    assert m[("appsim_models_loaded", (("model_version", version),))] == rows
    senders = Senders(url, ids, N_SECOND, version)
    senders.run()
    assert senders.statuses.count(200) == N_SECOND, f"non-200 answers: {set(senders.statuses) - {200}}"
    final = [scrape(url) for _ in range(4)]
    assert [requests_sum(x) for x in final] == [N_FIRST + N_SECOND] * 4
    check_never_down([*scrapes, m, *final])
    print(f"\n{len(scrapes) + 5} scrapes ({len(scrape_errors)} transport errors), workers {sorted(workers)} "
          f"(killed {victim}); find-similar total {N_FIRST + N_SECOND} in every final scrape")
