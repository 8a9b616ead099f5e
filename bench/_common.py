"""Shared helpers of the appsim benchmarks: machine description, percentiles, memory bandwidth, JSON output.

Benchmarks print their figures and write ``bench/results/<name>.json``; they assert nothing and are never
part of the test run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    """nproc, CPU model (/proc/cpuinfo), RAM (GiB), load average, python/numpy/faiss versions, date (UTC)."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    import faiss

    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(ram, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "note": "shared machine: other engineers run tests concurrently; figures are noisy",
    }


def pct(samples_s: list[float] | np.ndarray, q: float) -> float:
    """Percentile ``q`` (0..100) of durations given in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(samples_s, dtype=np.float64), q) * 1000.0)


def summary_ms(samples_s: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p95/p99/mean/max in ms (rounded to µs) of durations in seconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p95_ms": round(float(np.percentile(a, 95)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
        "mean_ms": round(float(a.mean()), 4),
        "max_ms": round(float(a.max()), 4),
    }


def time_calls(fn: Callable[[int], Any], n: int, warmup: int = 10) -> list[float]:
    """Durations (s) of ``fn(i)`` for i in 0..n-1, after ``warmup`` untimed calls."""
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def time_calls_cpu(fn: Callable[[int], Any], n: int, warmup: int = 10) -> tuple[list[float], list[float]]:
    """``(wall, cpu)`` durations (s) of ``fn(i)``: wall clock and the calling thread's CPU time
    (``time.thread_time``). On a shared box the wall tail includes time spent preempted; the CPU tail does
    not (work done in other threads, e.g. OpenMP workers, is not counted)."""
    for i in range(warmup):
        fn(i)
    wall, cpu = [], []
    for i in range(n):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn(i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return wall, cpu


def memory_bandwidth_gbs(gib: float = 1.0, repeats: int = 3) -> dict[str, float]:
    """Single-thread read bandwidth in GB/s (1e9 B/s), best of ``repeats``, over a ``gib`` GiB float32 array:
    ``sum`` (``np.sum``: pairwise summation, can be compute-bound), ``sgemv`` (the array as a (rows, 256)
    matrix times a vector with 1 BLAS thread: the exact-search kernel, each byte read once) and ``best``
    (the larger of the two: the streaming read rate the exact scan is compared with)."""
    a = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    m = a.reshape(-1, 256)
    v = np.ones(256, dtype=np.float32)
    out: dict[str, float] = {}
    for name, fn in (("sum", a.sum), ("sgemv", lambda: m @ v)):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = round(a.nbytes / best / 1e9, 2)
    out["best"] = max(out["sum"], out["sgemv"])
    return out


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (pretty, sorted keys) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def verdict(label: str, ok: bool, detail: str) -> str:
    """One line ``VERDICT <label>: MET|MISSED (<detail>)`` (printed and stored)."""
    return f"VERDICT {label}: {'MET' if ok else 'MISSED'} ({detail})"
