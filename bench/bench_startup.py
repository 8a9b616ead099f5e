"""Start-up time and resident memory of ``appsim serve`` on the real catalogue.

    .venv/bin/python bench/bench_startup.py [--runs 3] [--catalogue-dir artifacts/real]

Each run starts ``appsim serve`` (1 worker, packaged config) on a free loopback port and polls every 10 ms:
time to the first ``GET /health`` 200 (process start, imports, app built, socket listening) and to the first
``GET /health/ready`` 200 (model versions loaded, index built: the number the goal is about); then the
server's RSS (psutil, the process and any children) idle after ready and after 200 find-similar requests;
then the wall and CPU time of each start-up phase measured in a fresh interpreter (imports, create_app,
loading the model versions, each ``on_loaded`` hook).
Goal: ready <= 3 s. Writes ``bench/results/startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, verdict, write_result
from bench_http import free_port, stop


def rss_mb(pid: int) -> float:
    p = psutil.Process(pid)
    return (p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))) / 2**20


def one_run(cat: Path, tmp: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "APPSIM_CATALOGUE_DIR": str(cat),
        "APPSIM_EVENT_STORE__URL": f"sqlite:///{tmp / 'events.sqlite'}",
    }
    cmd = [str(Path(sys.executable).with_name("appsim")), "serve", "--host", "127.0.0.1", "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    live = ready = None
    try:
        with httpx.Client(timeout=1.0) as c:
            while time.perf_counter() - t0 < 120:
                if proc.poll() is not None:
                    raise RuntimeError(f"appsim serve exited with {proc.returncode}")
                try:
                    if live is None and c.get(base + "/health").status_code == 200:
                        live = time.perf_counter() - t0
                    if live is not None and c.get(base + "/health/ready").status_code == 200:
                        ready = time.perf_counter() - t0
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
            if ready is None:
                raise RuntimeError("not ready within 120 s")
            rss_ready = rss_mb(proc.pid)
            ids = np.load(cat / "v2" / "ids.npy").astype(str)[:100]
            for v in ("v1", "v2"):
                for a in ids:
                    c.post(base + "/find-similar", json={"app_id": str(a), "model_version": v})
            rss_after = rss_mb(proc.pid)
    finally:
        stop(proc)
    return {
        "live_s": round(live or -1, 3),
        "ready_s": round(ready, 3),
        "rss_ready_mb": round(rss_ready, 1),
        "rss_after_200_requests_mb": round(rss_after, 1),
    }


PHASES = r"""
import json, sys, time
t0 = time.perf_counter(); c0 = time.process_time()
out = {}
def mark(name):
    global t0, c0
    out[name] = {"wall_s": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3)}
    t0 = time.perf_counter(); c0 = time.process_time()
import fastapi, numpy, pandas, scipy.stats  # noqa: F401
mark("import numpy/pandas/scipy.stats/fastapi")
import appsim.app
mark("import appsim.app (rest)")
from appsim.config.settings import load_settings
s = load_settings(catalogue_dir=sys.argv[1], event_store={"url": "sqlite:///" + sys.argv[2]},
                  logging={"level": "WARNING"})
app = appsim.app.create_app(s)
mark("create_app (no loading)")
c = app.state.container
versions = {n: appsim.app.load_version(s, n) for n in s.model_versions}
mark("load model versions (artifacts, encoders, indexes)")
hooks = c.extras.get("on_loaded", [])
from appsim.services.similarity import SimilarityService
c.similarity = SimilarityService(versions)
for h in hooks:
    h(c)
    mark("on_loaded hook " + getattr(h, "__qualname__", str(h)))
print("PHASES " + json.dumps(out))
"""


def phases(cat: Path, tmp: Path) -> dict[str, Any]:
    """Wall and CPU seconds of each start-up phase, in a fresh interpreter (the server does the same work)."""
    out = subprocess.run(
        [sys.executable, "-c", PHASES, str(cat), str(tmp / "phases.sqlite")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("PHASES "))
    return dict(json.loads(line[len("PHASES ") :]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--catalogue-dir", default=str(ROOT / "artifacts" / "real"))
    ap.add_argument("--out", default="startup")
    args = ap.parse_args()
    res: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": []}
    print(f"machine: {res['machine']}", flush=True)
    cat = Path(args.catalogue_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="appsim-bench-startup-") as tmp:
        for i in range(args.runs):
            r = one_run(cat, Path(tmp))
            res["runs"].append(r)
            print(
                f"  run {i + 1}: listening after {r['live_s']:.2f} s, ready after {r['ready_s']:.2f} s; RSS "
                f"{r['rss_ready_mb']:.0f} MiB ready, "
                f"{r['rss_after_200_requests_mb']:.0f} MiB after 200 requests",
                flush=True,
            )
        res["phases"] = phases(cat, Path(tmp))
        for name, v in res["phases"].items():
            print(f"  phase {name:<60} wall {v['wall_s']:6.3f} s  CPU {v['cpu_s']:6.3f} s", flush=True)
    readies = [r["ready_s"] for r in res["runs"]]
    res["ready_s_median"] = float(np.median(readies))
    res["rss_mb_median"] = float(np.median([r["rss_after_200_requests_mb"] for r in res["runs"]]))
    res["verdicts"] = [
        verdict(
            "start-up to /health/ready <= 3 s",
            res["ready_s_median"] <= 3.0,
            f"median {res['ready_s_median']:.2f} s over {args.runs} runs "
            f"(min {min(readies):.2f}, max {max(readies):.2f}); "
            f"RSS {res['rss_mb_median']:.0f} MiB",
        )
    ]
    for line in res["verdicts"]:
        print(line)
    print(f"wrote {write_result(args.out, res)}")


if __name__ == "__main__":
    main()
