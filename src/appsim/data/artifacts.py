"""The on-disk artifact of one model version of one catalogue, memory-mapped by the service.

Layout of ``<catalogue_dir>/<version>/``::

    vectors.npy     (n, d) float32, L2-normalised rows; row i is the app ids[i]
    ids.npy         (n,) unicode; app ids (strings), unique
    manifest.json   model_version, dim, count, normalisation, encoder, inputs (file -> sha256),
                    vectors_sha256, ids_sha256, created_at, report (validation summary)
    encoder/        the files the encoder needs at request time (kind given in manifest["encoder"])

Optional ``holdout_vectors.npy`` / ``holdout_ids.npy`` hold the held-out apps' embeddings (evaluation).
The catalogue's metadata lives one level up in ``<catalogue_dir>/apps.csv``.

Nothing here unpickles: ``np.load(..., allow_pickle=False)`` everywhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appsim.errors import ArtifactError

MANIFEST = "manifest.json"
VECTORS = "vectors.npy"
IDS = "ids.npy"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of ``(n, d)``; returns float32. Zero rows stay zero (callers reject them)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


@dataclass
class VersionArtifact:
    """A loaded model-version artifact. ``vectors`` is memory-mapped, read-only."""

    path: Path
    version: str
    ids: np.ndarray
    vectors: np.ndarray
    manifest: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def encoder_dir(self) -> Path:
        return self.path / "encoder"


def write_version_artifact(
    out_dir: str | Path,
    version: str,
    ids: np.ndarray | list[str],
    vectors: np.ndarray,
    *,
    encoder: dict[str, Any],
    inputs: dict[str, str],
    report: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``vectors`` (normalised here) and ``ids`` with a manifest. Returns the manifest.

    ``inputs`` maps an input name to its sha256. Idempotent: when the directory already holds the same
    vectors and ids, the old ``created_at`` is kept so that the manifest bytes do not change.
    raises ArtifactError on shape problems.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids_arr = np.asarray([str(i) for i in ids])
    vec = l2_normalise(vectors)
    if vec.ndim != 2 or vec.shape[0] != ids_arr.shape[0]:
        raise ArtifactError(
            f"vectors {vec.shape} do not match {ids_arr.shape[0]} ids", path=str(out), check="shape"
        )
    if len(set(ids_arr.tolist())) != len(ids_arr):
        raise ArtifactError("duplicate ids in artifact", path=str(out), check="unique-ids")
    np.save(out / VECTORS, vec, allow_pickle=False)
    np.save(out / IDS, ids_arr, allow_pickle=False)
    manifest: dict[str, Any] = {
        "model_version": version,
        "dim": int(vec.shape[1]),
        "count": int(vec.shape[0]),
        "dtype": "float32",
        "normalisation": "l2",
        "encoder": encoder,
        "inputs": dict(sorted(inputs.items())),
        "vectors_sha256": sha256_file(out / VECTORS),
        "ids_sha256": sha256_file(out / IDS),
        "report": report or {},
    }
    if extra:
        manifest.update(extra)
    old = out / MANIFEST
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    if old.exists():
        try:
            prev = json.loads(old.read_text())
            same = {k: v for k, v in prev.items() if k != "created_at"} == manifest
            if same:
                created = prev.get("created_at", created)
        except (OSError, ValueError):
            pass
    manifest["created_at"] = created
    old.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return manifest


def load_version_artifact(path: str | Path, *, verify: bool = True) -> VersionArtifact:
    """Memory-map one version's artifact and check it against its manifest.

    Checks, each failure raising ``ArtifactError`` naming the file and the check: files exist; manifest
    parses; sha256 of vectors/ids match (``verify``); shapes match ``dim``/``count``; float32; all finite;
    rows L2-normalised (|norm - 1| < 1e-3).
    """
    p = Path(path)
    mpath = p / MANIFEST
    for f in (mpath, p / VECTORS, p / IDS):
        if not f.is_file():
            raise ArtifactError(f"missing artifact file {f}", path=str(f), check="exists")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as e:
        raise ArtifactError(f"manifest {mpath} is not valid JSON: {e}", path=str(mpath), check="json") from e
    if verify:
        for name, key in ((VECTORS, "vectors_sha256"), (IDS, "ids_sha256")):
            got = sha256_file(p / name)
            if got != manifest.get(key):
                raise ArtifactError(
                    f"{p / name} sha256 {got[:12]}... does not match the manifest's "
                    f"{str(manifest.get(key))[:12]}...",
                    path=str(p / name),
                    check="sha256",
                )
    try:
        vectors = np.load(p / VECTORS, mmap_mode="r", allow_pickle=False)
        ids = np.load(p / IDS, allow_pickle=False)
    except ValueError as e:
        raise ArtifactError(f"cannot read {p}: {e}", path=str(p), check="npy") from e
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise ArtifactError(f"{p / VECTORS} must be 2-d float32", path=str(p / VECTORS), check="dtype")
    if vectors.shape != (manifest.get("count"), manifest.get("dim")) or ids.shape[0] != vectors.shape[0]:
        raise ArtifactError(
            f"{p / VECTORS} shape {vectors.shape} != manifest "
            f"({manifest.get('count')}, {manifest.get('dim')})",
            path=str(p / VECTORS),
            check="shape",
        )
    if verify:
        if not np.isfinite(vectors).all():
            raise ArtifactError(f"{p / VECTORS} contains NaN/inf", path=str(p / VECTORS), check="finite")
        norms = np.linalg.norm(vectors, axis=1)
        if vectors.shape[0] and np.abs(norms - 1).max() > 1e-3:
            raise ArtifactError(
                f"{p / VECTORS} rows are not L2-normalised", path=str(p / VECTORS), check="norm"
            )
    return VersionArtifact(
        path=p,
        version=str(manifest.get("model_version", p.name)),
        ids=ids,
        vectors=vectors,
        manifest=manifest,
    )
