"""Benchmark the numpy MiniLM encoder (``appsim.backends.minilm``). Prints; asserts nothing.

    .venv/bin/python bench/bench_minilm.py [--repeats 100] [--n-batch 1000] [--batch-size 32]

Prints: BLAS build/threads and the machine's load average (the box is shared: a busy second core makes
2-thread numbers much worse, so process CPU time is printed next to wall time); model load time; single-text
latency p50/p99 for a real ~1,000-char App Store text with 1 and with 2 BLAS threads (threadpoolctl); batch
throughput over ``--n-batch`` real App Store texts with ``--batch-threads`` threads; and an estimate for
encoding the whole App Store catalogue, scaled by token count (attention's quadratic term is small at
<= 256 tokens).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_info, threadpool_limits

from appsim.backends.minilm import MiniLMEncoder
from appsim.data.text import app_text
from appsim.domain import AppMetadata

T = TypeVar("T")
RAW = Path(__file__).resolve().parents[1] / "data" / "raw" / "apple-appstore"


def load_texts() -> list[str]:
    """``app_text`` of every App Store app (AppleStore.csv joined with the 4 description parts), id order."""
    meta = pd.read_csv(RAW / "AppleStore.csv", dtype={"id": str})[["id", "track_name", "prime_genre"]]
    desc = pd.concat(
        [pd.read_csv(p, dtype={"id": str}) for p in sorted(RAW.glob("appleStore_description*.csv"))],
        ignore_index=True,
    )[["id", "app_desc"]].drop_duplicates("id")
    apps = meta.merge(desc, on="id", how="left").sort_values("id", kind="stable")
    return [
        app_text(
            AppMetadata(
                name=str(r.track_name),
                category=str(r.prime_genre),
                description=r.app_desc if isinstance(r.app_desc, str) else None,
            )
        )
        for r in apps.itertuples(index=False)
    ]


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float, float]:
    """``(result, wall seconds, process CPU seconds)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=100, help="single-text runs per thread setting")
    ap.add_argument("--n-batch", type=int, default=1000, help="texts in the throughput run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batch-threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    for i in blas:
        print(
            f"BLAS: {i.get('internal_api')} {i.get('version')} arch={i.get('architecture')} "
            f"threads={i.get('num_threads')} ({Path(i['filepath']).name})"
        )
    env = {k: os.environ[k] for k in sorted(os.environ) if "BLAS" in k or k.endswith("NUM_THREADS")}
    print(f"cpus={os.cpu_count()} env={env} loadavg={os.getloadavg()}")

    _, wall, _ = timed(MiniLMEncoder)
    enc, wall2, cpu2 = timed(MiniLMEncoder)
    print(f"model load: first {wall * 1e3:.0f} ms, again {wall2 * 1e3:.0f} ms wall ({cpu2 * 1e3:.0f} ms CPU)")
    print(f"fingerprint: {enc.fingerprint()}")

    texts = load_texts()
    lengths = enc.token_counts(texts)
    probe = min((t for t in texts if 950 <= len(t) <= 1050), key=lambda t: abs(len(t) - 1000))
    n_probe = int(enc.token_counts([probe])[0])
    print(f"single text: {len(probe)} chars, {n_probe} tokens: {probe[:70]!r}...")
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            for _ in range(3):
                enc.encode_texts([probe])
            walls, cpus = [], []
            for _ in range(args.repeats):
                _, w, c = timed(enc.encode_texts, [probe])
                walls.append(w)
                cpus.append(c)
        ms = np.array(walls) * 1e3
        print(
            f"  {threads} BLAS thread(s): p50 {np.percentile(ms, 50):.1f} ms, "
            f"p99 {np.percentile(ms, 99):.1f} ms, "
            f"min {ms.min():.1f} ms wall; CPU p50 {np.median(cpus) * 1e3:.1f} ms  (n={args.repeats}, "
            f"loadavg={os.getloadavg()[0]:.2f})"
        )

    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(texts), size=min(args.n_batch, len(texts)), replace=False)
    batch = [texts[i] for i in pick]
    with threadpool_limits(args.batch_threads, user_api="blas"):
        _, w, c = timed(enc.encode_texts, batch, batch_size=args.batch_size)
    n_tok = int(lengths[pick].sum())
    rate = len(batch) / w
    print(
        f"batch: {len(batch)} texts ({n_tok} tokens, mean {n_tok / len(batch):.0f}), "
        f"batch_size={args.batch_size}, "
        f"{args.batch_threads} BLAS threads: {w:.1f} s wall, {c:.1f} s CPU -> {rate:.1f} texts/s, "
        f"{n_tok / w:.0f} tokens/s (loadavg={os.getloadavg()[0]:.2f})"
    )
    total_tok = int(lengths.sum())
    est = w * total_tok / n_tok
    print(
        f"estimate, all {len(texts)} App Store apps ({total_tok} tokens after truncation to "
        f"{enc.max_seq_length}): {est:.0f} s = {est / 60:.1f} min at this rate "
        f"(by text count: {len(texts) / rate:.0f} s)"
    )


if __name__ == "__main__":
    main()
