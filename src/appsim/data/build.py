"""``appsim data build``: build every catalogue the service and the evaluation need, idempotently.

Real App Store catalogue (``artifacts/real``):
  apps.csv / holdout.csv          catalogue (90%) and held-out "new apps" (10%, stable sha256 split)
  v1/                             TF-IDF + SVD-64 (LSA) vectors + encoder files
  v2/                             all-MiniLM-L6-v2 vectors (384-d); the encoder is the installed package
  <v>/holdout_*.npy               the held-out apps encoded by the same encoders (evaluation queries)
  eval/<v>-nocat/                 the same without the category in the text (evaluation only)
  history_simulated.csv           SIMULATED campaign history (no public one exists), + its manifest
Mock company catalogue (``artifacts/mock``): the company's five-file format generated with planted
structure (``data/mock-company``), then imported through the same safe loader as real company files.

Each step records the sha256 of its inputs; a step whose inputs are unchanged is skipped, so a second run
changes no byte. ``force=True`` rebuilds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from appsim.data.artifacts import MANIFEST, sha256_file, write_version_artifact
from appsim.data.real_apps import load_apple_catalogue, raw_files, split_holdout
from appsim.data.text import app_text
from appsim.domain import AppMetadata

BUILDER_VERSION = "1"
V1_DIM = 64
SEED = 20261129
Log = Callable[[str], None]


def _texts(df: pd.DataFrame, include_category: bool) -> list[str]:
    return [
        app_text(AppMetadata(n, c, p, d), include_category=include_category)
        for n, c, p, d in zip(df["name"], df["category"], df["platform"], df["description"], strict=True)
    ]


def _encode_chunk(args: tuple[list[str], bool]) -> np.ndarray:
    from threadpoolctl import threadpool_limits

    from appsim.backends.minilm import MiniLMEncoder

    texts, include_category = args
    with threadpool_limits(limits=1):
        return MiniLMEncoder(include_category=include_category).encode_texts(texts)


def encode_parallel(
    texts: list[str],
    *,
    include_category: bool,
    progress: bool = True,
    log: Log = print,
    processes: int | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """MiniLM-encode ``texts`` in ``processes`` worker processes (default: one per core), one BLAS thread
    each: on a shared 2-core machine two single-threaded processes beat one 2-thread process several
    times over (OpenBLAS' thread sync; docs/benchmarks.md). Returns ``(len(texts), 384) float32`` in
    input order, byte-identical to ``MiniLMEncoder.encode_texts(texts)`` with one thread: the texts are
    ordered longest first exactly as ``encode_texts`` orders them and cut into chunks of whole batches
    (``chunk`` a multiple of 32), so every batch, and so every float sum, is the same."""
    import os
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tqdm import tqdm

    from appsim.backends.minilm import MiniLMEncoder

    if chunk % 32:
        raise ValueError("chunk must be a multiple of the encoder's batch size (32)")
    n = processes or max(1, os.cpu_count() or 1)
    lengths = MiniLMEncoder(include_category=include_category).token_counts(texts)
    order = np.argsort(-lengths, kind="stable")
    pieces = [order[i : i + chunk] for i in range(0, len(texts), chunk)]
    log(f"encoding {len(texts)} texts with MiniLM in {n} processes")
    out = np.zeros((len(texts), 384), dtype=np.float32)
    with ProcessPoolExecutor(max_workers=n, mp_context=get_context("spawn")) as pool:
        it = pool.map(_encode_chunk, [([texts[i] for i in p], include_category) for p in pieces])
        for rows, arr in tqdm(
            zip(pieces, it, strict=True), total=len(pieces), unit="chunk", disable=not progress
        ):
            out[rows] = arr
    return out


def _up_to_date(out: Path, inputs: dict[str, str]) -> bool:
    m = out / MANIFEST
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text()).get("inputs") == inputs
    except ValueError:
        return False


def _fill_empty_rows(vecs: np.ndarray, categories: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows with no known term (zero vectors, e.g. a CJK-only name with no description) take the centroid
    of their category, as cold start does for such an app; returns the vectors and how many were filled."""
    from appsim.data.artifacts import l2_normalise

    empty = np.linalg.norm(vecs, axis=1) < 1e-6
    out = vecs.copy()
    for cat in np.unique(categories[empty]):
        members = (categories == cat) & ~empty
        src = vecs[members] if members.any() else vecs[~empty]
        out[empty & (categories == cat)] = src.mean(axis=0)
    return l2_normalise(out), int(empty.sum())


def _save_holdout(out: Path, ids: list[str], vectors: np.ndarray) -> None:
    from appsim.data.artifacts import l2_normalise

    np.save(out / "holdout_vectors.npy", l2_normalise(vectors), allow_pickle=False)
    np.save(out / "holdout_ids.npy", np.asarray(ids), allow_pickle=False)


def build_real(
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    log: Log = print,
    versions: tuple[str, ...] = ("v1", "v2"),
    evaluation: bool = True,
    history: bool = True,
    serving: bool = True,
) -> dict[str, Any]:
    """Build ``artifacts/real`` from the raw App Store files. Returns a summary dict."""
    raw, out = Path(raw_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw_hashes = {f.name: sha256_file(f) for f in raw_files(raw)}
    apps, report = load_apple_catalogue(raw)
    catalogue, holdout = split_holdout(apps)
    catalogue.to_csv(out / "apps.csv", index=False, lineterminator="\n")
    holdout.to_csv(out / "holdout.csv", index=False, lineterminator="\n")
    summary: dict[str, Any] = {"catalogue": len(catalogue), "holdout": len(holdout), "report": report}
    base_inputs = {**raw_hashes, "builder_version": BUILDER_VERSION}

    variants = (((True, ""),) if serving else ()) + (((False, "eval/"),) if evaluation else ())
    for include_category, sub in variants:
        tag = "" if include_category else "-nocat"
        # v1: LSA fitted on the catalogue texts only (the held-out apps are unseen, as new apps are)
        v1_out = out / f"{sub}v1{tag}"
        from appsim.backends.tfidf_svd import DEFAULT_VECTORIZER

        v1_inputs = {
            **base_inputs,
            "encoder": f"tfidf_svd-{V1_DIM}-seed{SEED}-cat{int(include_category)}-"
            + json.dumps(DEFAULT_VECTORIZER, sort_keys=True),
        }
        if "v1" not in versions:
            pass
        elif force or not _up_to_date(v1_out, v1_inputs):
            t0 = time.perf_counter()
            from threadpoolctl import threadpool_limits

            from appsim.backends.tfidf_svd import TfidfSvdEncoder

            # one BLAS thread: the randomized SVD's float sums then do not depend on the caller's thread
            # count, so a rebuild reproduces the committed bytes
            with threadpool_limits(limits=1):
                enc = TfidfSvdEncoder.fit(
                    _texts(catalogue, include_category),
                    dim=V1_DIM,
                    seed=SEED,
                    include_category=include_category,
                )
                vecs, n_fallback = _fill_empty_rows(
                    enc.encode_texts(_texts(catalogue, include_category)), catalogue["category"].to_numpy()
                )
                holdout_vecs = enc.encode_texts(_texts(holdout, include_category))
            enc.save(v1_out / "encoder")
            _save_holdout(v1_out, holdout["app_id"].tolist(), holdout_vecs)
            write_version_artifact(
                v1_out,
                "v1",
                catalogue["app_id"].tolist(),
                vecs,
                encoder=enc.fingerprint(),
                inputs=v1_inputs,
                report={**report, "text_without_known_terms_category_centroid": n_fallback},
            )
            log(f"built {v1_out} in {time.perf_counter() - t0:.1f}s")
        else:
            log(f"{v1_out} up to date")

        # v2: all-MiniLM-L6-v2 (numpy forward pass over the package's weights)
        if "v2" not in versions:
            continue
        from appsim.backends.minilm import MiniLMEncoder

        enc2 = MiniLMEncoder(include_category=include_category)
        fp = enc2.fingerprint()
        v2_out = out / f"{sub}v2{tag}"
        v2_inputs = {
            **base_inputs,
            "encoder": f"minilm-{fp['safetensors_sha256']}-cat{int(include_category)}",
        }
        if force or not _up_to_date(v2_out, v2_inputs):
            t0 = time.perf_counter()
            texts = _texts(catalogue, include_category) + _texts(holdout, include_category)
            allv = encode_parallel(texts, include_category=include_category, progress=progress, log=log)
            n = len(catalogue)
            (v2_out / "encoder").mkdir(parents=True, exist_ok=True)
            (v2_out / "encoder" / "fingerprint.json").write_text(
                json.dumps(fp, indent=2, sort_keys=True) + "\n"
            )
            _save_holdout(v2_out, holdout["app_id"].tolist(), allv[n:])
            write_version_artifact(
                v2_out,
                "v2",
                catalogue["app_id"].tolist(),
                allv[:n],
                encoder={**fp, "kind": "minilm", "include_category": include_category},
                inputs=v2_inputs,
                report=report,
            )
            log(f"built {v2_out} in {time.perf_counter() - t0:.1f}s")
        else:
            log(f"{v2_out} up to date")

    # simulated campaign history (no public campaign data exists; labelled SIMULATED everywhere)
    hist_path = out / "history_simulated.csv"
    hist_manifest_path = out / "history_simulated.manifest.json"
    hist_inputs = {**base_inputs, "history_seed": str(SEED)}
    prev = json.loads(hist_manifest_path.read_text()) if hist_manifest_path.is_file() else {}
    if not history:
        pass
    elif force or prev.get("inputs") != hist_inputs or not hist_path.is_file():
        from appsim.data.history import history_manifest, simulate_history

        t0 = time.perf_counter()
        hist = simulate_history(apps, seed=SEED)
        hist.to_csv(hist_path, index=False, lineterminator="\n")
        manifest = history_manifest(seed=SEED)
        manifest.update({"inputs": hist_inputs, "rows": len(hist), "sha256": sha256_file(hist_path)})
        hist_manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        log(f"built {hist_path} ({len(hist)} rows, SIMULATED) in {time.perf_counter() - t0:.1f}s")
    else:
        log(f"{hist_path} up to date")
    return summary


def build_mock(out_dir: str | Path, *, n_apps: int = 2000, seed: int = 7, log: Log = print) -> dict[str, Any]:
    """Generate the company-format mock files (``<out>/source``) and import them (``<out>``)."""
    from appsim.data.company import import_company
    from appsim.data.mock import generate_mock

    out = Path(out_dir)
    src = out / "source"
    generate_mock(n_apps, seed, src)
    report = import_company(src, out)
    log(f"built mock company catalogue {out} ({n_apps} apps, seed {seed})")
    return report
