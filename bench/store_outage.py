"""Event-store outage under load: PostgreSQL stopped mid-run, searches keep being answered, exposures are
buffered and written when the database returns (or counted as lost), never a crash or a hang.

    .venv/bin/python bench/store_outage.py [--before 10] [--outage 20] [--after 15] [--rate 50]

1. Starts a throwaway PostgreSQL (the same ``PgServer`` as ``tests/integration/conftest.py``: ``initdb`` in a
   fresh ``/tmp/appsim-pg-*`` folder, 127.0.0.1, free port; as root ``pg_ctl`` runs as the ``postgres``
   user) and creates a database.
2. Starts ``appsim serve`` (subprocess, 127.0.0.1) on the real catalogue with that database as its event
   store (``event_store.url``; ``event_store.buffer_size`` = ``--buffer-size``, default 10,000) and one
   running experiment (packaged v1-vs-v2 when v2 is built, else an A/A test on v1), so that every
   ``/find-similar`` request carrying an ``advertiser_id`` is an exposure.
3. Sends A/B-routed find-similar requests at ``--rate``/s (open loop) for ``before + outage + after``
   seconds; at ``t = before`` the database is stopped (``pg_ctl stop -m fast``), at ``t = before + outage``
   started again. ``/metrics`` is scraped every second (``appsim_event_store_buffered``,
   ``appsim_event_store_lost_total``, ``appsim_experiment_exposures_total``).
4. After the load, waits (<= 60 s) until the exposures table stops growing, then counts its rows.

Printed and stored in ``bench/results/<--result-name>.json`` (default ``store_outage``): requests by
status (non-200 must be 0), latency before / during / after the outage (ms; a hang would show as a
multi-second max), the buffered gauge over time and its peak, lost, exposures counted by the server, rows
in the table, the identity ``rows == exposures - lost`` (every exposure is written or counted as lost), and
whether the buffered gauge reads 0 again once everything is written. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from _common import ROOT, machine, summary_ms, verdict, write_result
from soak import open_loop, scrape, write_config

from appsim.testing.server import ServerProcess

GAUGE = "appsim_event_store_buffered{}"


def start_postgres() -> Any:
    """A started throwaway ``PgServer`` (tests/integration/conftest.py); raises if no pg_ctl exists."""
    from conftest import PgServer, find_pg_ctl  # the integration tests' helper (pytest-postgresql)

    pg_ctl = find_pg_ctl()
    if pg_ctl is None:
        raise SystemExit("no pg_ctl found: install the PostgreSQL server (apt-get install postgresql)")
    server = PgServer(pg_ctl)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


def metric_sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def count_rows(url: str) -> int:
    engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM exposures")).scalar_one())
    finally:
        engine.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=float, default=10.0, help="seconds of load before the outage")
    ap.add_argument("--outage", type=float, default=20.0, help="seconds the database is down")
    ap.add_argument("--after", type=float, default=15.0, help="seconds of load after it returns")
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second")
    ap.add_argument("--buffer-size", type=int, default=10_000,
                    help="event_store.buffer_size: exposures held in memory in an outage (default 10,000)")
    ap.add_argument("--catalogue-dir", type=Path, default=ROOT / "artifacts" / "real")
    ap.add_argument("--result-name", default="store_outage", help="bench/results/<name>.json")
    ap.add_argument("--seed", type=int, default=20261129)
    args = ap.parse_args()
    duration = args.before + args.outage + args.after
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="appsim-outage-"))
    pg = start_postgres()
    server: ServerProcess | None = None
    events: list[tuple[float, str]] = []
    gauge: list[tuple[float, float, float, float]] = []  # (t, buffered, lost, exposures)
    try:
        db_url = pg.url(pg.create_database())
        config, versions = write_config(tmp / "config.yaml", args.catalogue_dir, db_url,
                                        event_store={"url": db_url, "buffer_size": args.buffer_size})
        server = ServerProcess(config=config, log=tmp / "server.log", cwd=ROOT, log_level="warning").start()
        print(f"postgres {pg.host}:{pg.port}; server {server.url}; versions {versions}; "
              f"{args.rate:g} req/s for {duration:g} s, outage from {args.before:g} s for {args.outage:g} s",
              flush=True)
        rng = random.Random(args.seed)
        ids = [str(a) for a in np.load(args.catalogue_dir / versions[0] / "ids.npy", allow_pickle=False)]
        n = int(duration * args.rate)
        bodies = [
            ("ab", {"app_id": rng.choice(ids), "advertiser_id": f"adv-{rng.randrange(500)}", "top_k": 10})
            for _ in range(n)
        ]
        stop_scraper = threading.Event()
        t0_holder: dict[str, float] = {}

        def scraper() -> None:
            while not stop_scraper.wait(1.0):
                with contextlib.suppress(httpx.HTTPError):
                    m = scrape(server.url)
                    t = time.perf_counter() - t0_holder.get("t0", time.perf_counter())
                    gauge.append((t, m.get(GAUGE, float("nan")),
                                  metric_sum(m, "appsim_event_store_lost_total"),
                                  metric_sum(m, "appsim_experiment_exposures_total")))

        def db_action(what: str, t: float) -> None:
            t_a = time.perf_counter()
            (pg.stop if what == "stop" else pg.start)()
            events.append((t, f"postgres {what} ({time.perf_counter() - t_a:.2f} s)"))
            print(f"  t={t:5.1f} s  postgres {what} done in {time.perf_counter() - t_a:.2f} s", flush=True)

        actions = {"stop": args.before, "start": args.before + args.outage}
        background: list[threading.Thread] = []

        async def tick(elapsed: float) -> None:
            for what, at in list(actions.items()):
                if elapsed >= at:
                    del actions[what]
                    th = threading.Thread(target=db_action, args=(what, elapsed), daemon=True)
                    th.start()
                    background.append(th)

        th_scr = threading.Thread(target=scraper, daemon=True)
        t0_holder["t0"] = time.perf_counter()
        th_scr.start()
        res = asyncio.run(open_loop(server.url, bodies, args.rate, 64, tick))
        for th in background:
            th.join(timeout=120)
        if not pg.running():  # the load ended before the restart was due
            db_action("start", time.perf_counter() - t0_holder["t0"])
        # drain: wait until the table stops growing (the buffer flushes every ~1 s once the store is back)
        last, stable_since, rows = -1, time.monotonic(), 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                rows = count_rows(db_url)
            if rows != last:
                last, stable_since = rows, time.monotonic()
            elif time.monotonic() - stable_since > 5:
                break
            time.sleep(1.0)
        stop_scraper.set()
        th_scr.join(timeout=15)
        final = scrape(server.url)
        health = httpx.get(server.url + "/health", timeout=5).status_code
        alive = server.proc is not None and server.proc.poll() is None
    finally:
        code = server.terminate() if server is not None else None
        if server is not None:
            server.kill()
        pg.close()
        shutil.rmtree(tmp, ignore_errors=True)

    rows_all = res["rows"]
    statuses: dict[str, int] = {}
    for _, _, st, _ in rows_all:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    non200 = len(rows_all) - statuses.get("200", 0)
    phases = {"before": (0.0, args.before), "outage": (args.before, args.before + args.outage),
              "after": (args.before + args.outage, duration)}
    lat = {name: summary_ms([r[3] for r in rows_all if lo <= r[0] < hi] or [0.0])
           for name, (lo, hi) in phases.items()}
    exposures = metric_sum(final, "appsim_experiment_exposures_total")
    lost = metric_sum(final, "appsim_event_store_lost_total")
    peak = max((g[1] for g in gauge if g[1] == g[1]), default=0.0)
    during = [g for g in gauge if phases["outage"][0] <= g[0] < phases["outage"][1] + 2]
    result = {
        "command": "python bench/store_outage.py " + " ".join(sys.argv[1:]),
        "machine": info,
        "config": {"rate": args.rate, "before_s": args.before, "outage_s": args.outage, "after_s": args.after,
                   "buffer_size": args.buffer_size, "versions": versions},
        "sent": len(rows_all), "skipped": res["skipped"], "statuses": statuses, "non_200": non200,
        "errors_sample": res["errors"][:10], "latency_ms_by_phase": lat,
        "events": events,
        "buffered_gauge": [[round(t, 1), b, lo] for t, b, lo, _ in gauge],
        "buffered_peak": peak, "buffered_rose_during_outage": any(g[1] > 0 for g in during),
        "buffered_final_gauge": final.get(GAUGE), "lost": lost, "exposures_counted_by_server": exposures,
        "rows_in_store": rows, "rows_equal_exposures_minus_lost": rows == exposures - lost,
        "health_after": health, "server_alive_after": alive, "exit_status_after_sigterm": code,
    }
    lines = [
        f"sent {len(rows_all)} (skipped {res['skipped']}), statuses {statuses}, non-200 {non200}",
        "latency ms by phase (p50/p99/max): " + ", ".join(
            f"{k} {v['p50_ms']}/{v['p99_ms']}/{v['max_ms']}" for k, v in lat.items()),
        "events: " + "; ".join(f"t={t:.1f} s {e}" for t, e in events),
        "buffered gauge (t s: value): " + " ".join(f"{t:.0f}:{b:.0f}" for t, b, _, _ in gauge),
        f"buffered peak {peak:.0f}; final gauge {final.get(GAUGE)}; lost {lost:.0f}; exposures counted "
        f"{exposures:.0f}; rows in store {rows}; rows == exposures - lost: {rows == exposures - lost}",
        f"after: /health {health}, server alive {alive}, exit status after SIGTERM {code}",
        verdict("outage: searches answered", non200 == 0 and res["skipped"] == 0, f"{non200} non-200"),
        verdict("outage: exposures buffered", result["buffered_rose_during_outage"], f"peak {peak:.0f}"),
        verdict("outage: every exposure written or counted lost", rows == exposures - lost,
                f"rows {rows}, exposures {exposures:.0f}, lost {lost:.0f}"),
        verdict("outage: no hang", lat["outage"]["max_ms"] < 2000 and alive,
                f"max latency during outage {lat['outage']['max_ms']} ms"),
        verdict("outage: buffered gauge back to 0 once drained", final.get(GAUGE) == 0.0,
                f"final gauge {final.get(GAUGE)} with {rows} rows written"),
    ]
    result["verdicts"] = lines[-5:]
    for line in lines:
        print(line)
    print(f"wrote {write_result(args.result_name, result)}")
    return 0 if all(": MET" in v for v in lines[-5:]) else 1


if __name__ == "__main__":
    sys.exit(main())
