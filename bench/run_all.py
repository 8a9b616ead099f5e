"""Run every appsim benchmark (``make bench``): index, HTTP, start-up; then print all verdict lines.

    .venv/bin/python bench/run_all.py [--quick]

Each benchmark prints its figures and writes ``bench/results/<name>.json``; docs/benchmarks.md records a
run. Never part of the test run. ``--quick`` passes ``--quick`` to the index and HTTP benchmarks (no 1M
catalogue, 5 s per load level) and runs the start-up benchmark once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    quick = ["--quick"] if args.quick else []
    runs = [
        ("index", ["bench_index.py", *quick]),
        ("http", ["bench_http.py", *quick]),
        ("startup", ["bench_startup.py", *(["--runs", "1"] if args.quick else [])]),
    ]
    failed = []
    t0 = time.perf_counter()
    for name, cmd in runs:
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]], cwd=HERE.parent)
        if rc != 0:
            failed.append(f"{name} (exit {rc})")
    print(f"\n== verdicts ({time.perf_counter() - t0:.0f} s)")
    for name, _ in runs:
        path = HERE / "results" / f"{name}.json"
        if path.is_file():
            for line in json.loads(path.read_text()).get("verdicts", []):
                print(f"[{name}] {line}")
    if failed:
        print("benchmarks that failed to run: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
