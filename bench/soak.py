"""Soak: sustained open-loop load at a fixed rate against ``appsim serve`` on loopback; memory over time.

    .venv/bin/python bench/soak.py [--duration 300] [--rate 100] [--workers 1] [--png docs/soak-rss.png]

Starts ``appsim serve`` (subprocess, 127.0.0.1, free port) on the real catalogue (every built version:
v1, and v2 when ``artifacts/real/v2`` exists) with a throwaway SQLite event store and one running
experiment (the packaged v1-vs-v2 one when v2 is built, else an A/A test on v1), waits for
``/health/ready``, then sends requests at a FIXED arrival rate (open loop: request i is sent at
``t0 + i / rate`` whatever the previous answers; at most ``--max-in-flight`` outstanding, a request that
would exceed it is counted as ``skipped``) for ``--duration`` seconds. The mix (seeded):

* ``--cold-start-share`` (5 %) cold start: a held-out real App Store app (name, category, its description
  cut at a random length of 80..``--max-description`` characters) on an explicit version, versions
  alternating (v2's MiniLM costs ~50-160 ms of CPU per text here: this share sets the CPU load);
* 20 % A/B-routed: ``app_id`` + one of 500 ``advertiser_id`` units (an exposure written to the store);
* the rest ``/find-similar`` by a random catalogue ``app_id`` (explicit ``model_version``, alternating).

Every ``--sample-every`` (5) seconds the resident memory (RSS, psutil) of the server's process tree is
sampled. At the end the server gets SIGTERM (graceful drain). Printed and stored in
``bench/results/soak.json``: requests by status, errors (non-200 + transport errors), achieved rate,
latency percentiles (ms) overall and per minute, the RSS curve (MiB), its max - min growth and, after a
60 s warm-up, the growth and least-squares slope (MiB/min). The RSS curve is drawn in ``--png``.

Loopback only; the load generator shares the machine's cores with the server (noisy figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, summary_ms, verdict, write_result

from appsim.testing.server import ServerProcess

PACKAGED_CONFIG = ROOT / "src" / "appsim" / "config" / "config.yaml"
AA_EXPERIMENT = {
    "id": "soak-aa", "unit": "advertiser_id", "seed": "soak-aa-2026", "primary_metric": "install_rate",
    "enabled": True,
    "variants": [{"name": "control", "model_version": "v1", "weight": 0.5},
                 {"name": "treatment", "model_version": "v1", "weight": 0.5}],
}
WARMUP_S = 60.0


# ------------------------------------------------------------------------------------- server helpers


def built_versions(catalogue: Path) -> list[str]:
    return [v for v in ("v1", "v2") if (catalogue / v / "manifest.json").is_file()]


def write_config(path: Path, catalogue: Path, event_store_url: str, **extra: Any) -> tuple[Path, list[str]]:
    """The packaged config with ``catalogue``'s built versions, the given event store and an experiment
    (packaged v1-vs-v2 when both are built, else an A/A test on v1). Returns (path, versions)."""
    versions = built_versions(catalogue)
    cfg = yaml.safe_load(PACKAGED_CONFIG.read_text())
    cfg.update(
        catalogue_dir=str(catalogue.resolve()),
        model_versions={v: {"path": v, "index": {"backend": "exact"}} for v in versions},
        default_model_version=versions[-1],
        event_store={"url": event_store_url, "buffer_size": 10_000},
        logging={"level": "WARNING", "json": True},
    )
    if versions != ["v1", "v2"]:
        cfg["experiments"] = [AA_EXPERIMENT]
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))
    return path, versions


def rss_bytes(server: ServerProcess) -> int:
    """Resident memory of the server process and all its children (bytes)."""
    assert server.proc is not None
    total = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(server.proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    return total


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` as ``{sample line key: value}`` (key = name + labels as printed)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    text = httpx.get(url + "/metrics", timeout=10.0).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = float(s.value)
    return out


# ------------------------------------------------------------------------------------------ workload


def request_mix(catalogue: Path, versions: list[str], n: int, seed: int, cold_share: float = 0.05,
                max_description: int = 1000) -> list[tuple[str, dict[str, Any]]]:
    """``n`` (kind, body) pairs: ``cold_share`` cold start, 20 % A/B-routed, the rest app_id (module doc)."""
    rng = random.Random(seed)
    ids = [str(a) for a in np.load(catalogue / versions[0] / "ids.npy", allow_pickle=False)]
    holdout = pd.read_csv(catalogue / "holdout.csv", dtype={"app_id": str}, keep_default_na=False)
    apps = [(r.name[:200], r.category, r.platform, str(r.description)) for r in holdout.itertuples()]
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        u = rng.random()
        version = versions[i % len(versions)]
        if u >= cold_share + 0.20:
            out.append(("app_id", {"app_id": rng.choice(ids), "model_version": version, "top_k": 10}))
        elif u < cold_share:
            name, category, platform, desc = rng.choice(apps)
            cut = desc[: rng.randint(80, max(80, max_description))]
            out.append(("cold_start", {"app": {"name": name, "category": category, "platform": platform,
                                               "description": cut}, "model_version": version, "top_k": 10}))
        else:
            out.append(("ab", {"app_id": rng.choice(ids), "advertiser_id": f"adv-{rng.randrange(500)}",
                               "top_k": 10}))
    return out


async def open_loop(url: str, bodies: list[tuple[str, dict[str, Any]]], rate: float, max_in_flight: int,
                    on_tick: Any = None) -> dict[str, Any]:
    """Send ``bodies`` at ``rate``/s (open loop). Returns per-request (t_send, kind, status, latency_s)
    rows plus ``skipped`` and transport ``errors``. ``on_tick(elapsed_s)`` is awaited about once a second."""
    rows: list[tuple[float, str, int, float]] = []
    errors: list[str] = []
    skipped = 0
    in_flight = 0
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:

        async def one(kind: str, body: dict[str, Any], t_rel: float) -> None:
            nonlocal in_flight
            t = time.perf_counter()
            try:
                r = await client.post("/find-similar", json=body)
                rows.append((t_rel, kind, r.status_code, time.perf_counter() - t))
                if r.status_code != 200 and len(errors) < 50:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as e:
                rows.append((t_rel, kind, 0, time.perf_counter() - t))
                if len(errors) < 50:
                    errors.append(f"{type(e).__name__}: {e}")
            finally:
                in_flight -= 1

        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        next_tick = 1.0
        for i, (kind, body) in enumerate(bodies):
            target = i / rate
            delay = target - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if on_tick is not None and target >= next_tick:
                next_tick += 1.0
                await on_tick(target)
            if in_flight >= max_in_flight:
                skipped += 1
                continue
            in_flight += 1
            task = asyncio.create_task(one(kind, body, target))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        wall = time.perf_counter() - t0
    return {"rows": rows, "errors": errors, "skipped": skipped, "wall_s": wall}


def plot_rss(
    samples: list[tuple[float, float]], p99: list[tuple[float, float]], path: Path, title: str
) -> None:
    """RSS (MiB) over time, with the per-10-s p99 latency (ms, log scale) underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in samples]
    m = [s[1] for s in samples]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 5.2), dpi=110, sharex=True,
                                  gridspec_kw={"height_ratios": [2, 1]})
    ax.plot(t, m, marker="o", markersize=2.5, linewidth=1.2)
    ax.axvline(WARMUP_S, color="grey", linestyle=":", linewidth=1)
    ax.text(WARMUP_S, min(m), " warm-up end", color="grey", fontsize=8, va="bottom")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax2.plot([x[0] for x in p99], [x[1] for x in p99], color="tab:red", linewidth=1)
    ax2.set_yscale("log")
    ax2.set_ylabel("p99 per 10 s (ms)")
    ax2.set_xlabel("time since load start (s)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second (default 100)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sample-every", type=float, default=5.0, help="RSS sampling period (s)")
    ap.add_argument("--max-in-flight", type=int, default=256,
                    help="outstanding requests at most; one more is counted as skipped (not sent)")
    ap.add_argument("--cold-start-share", type=float, default=0.05, help="share of cold-start requests")
    ap.add_argument("--max-description", type=int, default=1000, help="longest cold-start text (chars)")
    ap.add_argument("--catalogue-dir", type=Path, default=ROOT / "artifacts" / "real")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "soak-rss.png")
    ap.add_argument("--seed", type=int, default=20261129)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="appsim-soak-"))
    store_url = f"sqlite:///{tmp / 'events.sqlite'}"
    config, versions = write_config(tmp / "config.yaml", args.catalogue_dir, store_url)
    n = int(args.duration * args.rate)
    bodies = request_mix(args.catalogue_dir, versions, n, args.seed, args.cold_start_share,
                         args.max_description)
    server = ServerProcess(config=config, log=tmp / "server.log", workers=args.workers, cwd=ROOT,
                           log_level="warning")  # fmt: skip
    info = machine()
    t_start = time.perf_counter()
    server.start()
    ready_s = time.perf_counter() - t_start
    print(f"server ready in {ready_s:.1f} s ({server.url}, versions {versions}, {args.workers} worker(s)); "
          f"{n} requests at {args.rate:g}/s for {args.duration:g} s", flush=True)
    samples: list[tuple[float, float]] = [(0.0, rss_bytes(server) / 2**20)]
    loadavg: list[tuple[float, float]] = [(0.0, os.getloadavg()[0])]
    next_sample = args.sample_every

    async def tick(elapsed: float) -> None:
        nonlocal next_sample
        if elapsed >= next_sample:
            next_sample += args.sample_every
            samples.append((elapsed, rss_bytes(server) / 2**20))
            loadavg.append((elapsed, os.getloadavg()[0]))
            if int(elapsed) % 30 == 0:
                rss_now, load_now = samples[-1][1], loadavg[-1][1]
                print(f"  t={elapsed:5.0f} s  rss={rss_now:.1f} MiB  load1={load_now:.2f}", flush=True)

    status_code: int | None = None
    try:
        res = asyncio.run(open_loop(server.url, bodies, args.rate, args.max_in_flight, tick))
        samples.append((res["wall_s"], rss_bytes(server) / 2**20))
        metrics = scrape(server.url)
    finally:
        status_code = server.terminate()
        server.kill()
    rows = res["rows"]
    statuses: dict[str, int] = {}
    for _, _, st, _ in rows:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    ok = statuses.get("200", 0)
    failed = len(rows) - ok
    lat = [r[3] for r in rows if r[2] == 200]
    by_kind = {k: summary_ms([r[3] for r in rows if r[1] == k and r[2] == 200] or [0.0])
               for k in ("app_id", "cold_start", "ab")}
    per_minute = []
    for m0 in range(0, int(args.duration), 60):
        sel = [r[3] for r in rows if m0 <= r[0] < m0 + 60 and r[2] == 200]
        if sel:
            s = summary_ms(sel)
            per_minute.append(
                {"minute": m0 // 60 + 1, "n": s["n"], "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"]}
            )
    rss = np.array([s[1] for s in samples])
    t = np.array([s[0] for s in samples])
    late = t >= WARMUP_S
    slope = float(np.polyfit(t[late], rss[late], 1)[0] * 60.0) if late.sum() >= 3 else float("nan")
    growth_after = float(rss[late].max() - rss[late].min()) if late.any() else float("nan")
    exposures = sum(v for k, v in metrics.items() if k.startswith("appsim_experiment_exposures_total"))
    result = {
        "command": "python bench/soak.py " + " ".join(sys.argv[1:]),
        "machine": info,
        "config": {"duration_s": args.duration, "rate": args.rate, "workers": args.workers,
                   "versions": versions, "max_in_flight": args.max_in_flight,
                   "cold_start_share": args.cold_start_share, "max_description": args.max_description,
                   "sample_every_s": args.sample_every},
        "ready_s": round(ready_s, 2),
        "sent": len(rows), "skipped": res["skipped"], "statuses": statuses, "failed": failed,
        "errors_sample": res["errors"][:10],
        "achieved_rate": round(len(rows) / res["wall_s"], 2),
        "latency_ms": summary_ms(lat or [0.0]), "latency_by_kind_ms": by_kind, "per_minute": per_minute,
        "exposures_recorded": exposures,
        "rss_mib": [[round(a, 1), round(b, 2)] for a, b in samples],
        "rss_start_mib": round(float(rss[0]), 2), "rss_end_mib": round(float(rss[-1]), 2),
        "rss_growth_max_minus_min_mib": round(float(rss.max() - rss.min()), 2),
        "rss_growth_after_warmup_mib": round(growth_after, 2),
        "rss_slope_after_warmup_mib_per_min": round(slope, 3),
        "exit_status_after_sigterm": status_code,
    }
    title = (f"appsim soak: {args.rate:g} req/s for {args.duration:g} s, {args.workers} worker(s), "
             f"{'/'.join(versions)}; max-min {result['rss_growth_max_minus_min_mib']} MiB, "
             f"after warm-up {result['rss_growth_after_warmup_mib']} MiB")
    p99_10s = []
    for s0 in range(0, int(args.duration), 10):
        sel = [r[3] for r in rows if s0 <= r[0] < s0 + 10 and r[2] == 200]
        if sel:
            p99_10s.append((s0 + 5.0, float(np.percentile(sel, 99) * 1000.0)))
    result["p99_ms_per_10s"] = [[a, round(b, 1)] for a, b in p99_10s]
    result["loadavg_1min"] = [[round(a, 1), round(b, 2)] for a, b in loadavg]
    plot_rss(samples, p99_10s, args.png, title)
    lines = [
        f"sent {len(rows)} (skipped {res['skipped']}), statuses {statuses}, failed {failed}, "
        f"achieved {result['achieved_rate']} req/s",
        f"latency ms (200s): {result['latency_ms']}",
        "by kind p50/p99 ms: " + ", ".join(f"{k} {v['p50_ms']}/{v['p99_ms']}" for k, v in by_kind.items()),
        f"exposures recorded: {exposures:.0f}",
        "RSS MiB every ~5 s: " + " ".join(f"{b:.0f}" for _, b in samples),
        "machine load (1-min average) every ~5 s: " + " ".join(f"{b:.1f}" for _, b in loadavg),
        "p99 ms per 10 s: " + " ".join(f"{b:.0f}" for _, b in p99_10s),
        f"RSS start {result['rss_start_mib']} MiB, end {result['rss_end_mib']} MiB, max-min "
        f"{result['rss_growth_max_minus_min_mib']} MiB; after {WARMUP_S:.0f} s warm-up: max-min "
        f"{result['rss_growth_after_warmup_mib']} MiB, "
        f"slope {result['rss_slope_after_warmup_mib_per_min']} MiB/min",
        f"server exit status after SIGTERM: {status_code}",
        verdict("soak no errors", failed == 0 and res["skipped"] == 0,
                f"{failed} failed, {res['skipped']} skipped"),
        verdict("soak memory stable", abs(slope) < 1.0,
                f"slope after warm-up {result['rss_slope_after_warmup_mib_per_min']} MiB/min (< 1 MiB/min)"),
    ]
    result["verdicts"] = lines[-2:]
    for line in lines:
        print(line)
    path = write_result("soak", result)
    print(f"wrote {path} and {args.png}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
