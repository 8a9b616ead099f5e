"""Cold-start encoder for the company format: category / platform centroids of the catalogue.

The company's files carry no text, so a new app can only be placed by what its metadata says. The
embedding of a new app is the L2-normalised mean of the (L2-normalised) vectors of the catalogue apps that
share its metadata, taken at the most specific level that has members:

1. ``category+platform``  same category AND same platform
2. ``category``           same category (any platform)
3. ``platform``           same platform (any category)
4. ``global``             every catalogue app

Matching is on the stripped, case-folded value (``"Games & Betting"`` == ``" games & betting"``); a
missing / blank value never matches. A group with fewer than ``min_count`` apps, or whose mean is (almost)
the zero vector, is not stored, so its apps fall through to the next level. :meth:`encode_with_basis`
returns which level served each app and :attr:`CategoryCentroidEncoder.last_basis` keeps it for the last
call.

On disk (the version's ``encoder/`` directory; no pickle)::

    centroids.npy    (k, d) float32, L2-normalised rows
    centroids.json   {"format": 1, "kind": "category_centroid", "dim": d, "min_count": int,
                      "levels": [...], "entries": [{"level", "category", "platform", "count"}, ...]}

``entries[i]`` describes ``centroids[i]``; ``entries[0]`` is the global centroid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from appsim.domain import AppMetadata
from appsim.errors import ArtifactError, DataError

LEVELS: tuple[str, ...] = ("category+platform", "category", "platform", "global")
CENTROIDS_NPY = "centroids.npy"
CENTROIDS_JSON = "centroids.json"
FORMAT = 1
_EPS = 1e-12


def norm_key(value: object) -> str | None:
    """Matching key of a category / platform value: whitespace-collapsed, case-folded; None when missing."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        if pd.isna(value):  # pd.NA, NaT
            return None
    except (TypeError, ValueError):
        pass
    key = " ".join(str(value).split()).casefold()
    return key or None


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64, safe for very small / large magnitudes; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    scale = np.abs(x).max(axis=1, keepdims=True) if x.size else np.zeros((x.shape[0], 1))
    scale[scale == 0] = 1.0
    y = x / scale
    n = np.linalg.norm(y, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return np.asarray(y / n, dtype=np.float64)


class CategoryCentroidEncoder:
    """Encoder (``kind = "category_centroid"``) placing an app at its metadata group's centroid.

    ``centroids`` is ``(k, d)`` float32 L2-normalised; ``entries[i]`` (``level``, ``category``, ``platform``,
    ``count``) describes row ``i``. Build with :meth:`fit`, persist with :meth:`save` / :meth:`load`.
    """

    kind = "category_centroid"

    def __init__(self, centroids: np.ndarray, entries: list[dict[str, Any]], *, min_count: int = 1) -> None:
        c = np.asarray(centroids, dtype=np.float32)
        if c.ndim != 2 or c.shape[0] != len(entries) or c.shape[0] == 0:
            raise ArtifactError(
                f"centroids {c.shape} do not match {len(entries)} entries", check="centroid-shape"
            )
        if not entries or entries[0].get("level") != "global":
            raise ArtifactError("the first centroid entry must be the global one", check="centroid-global")
        self.centroids = c
        self.entries = entries
        self.min_count = int(min_count)
        self.dim = int(c.shape[1])
        self.last_basis: list[str] = []
        self._lookup: dict[tuple[str, str | None, str | None], int] = {}
        for row, e in enumerate(entries):
            if e.get("level") not in LEVELS:
                raise ArtifactError(f"unknown centroid level {e.get('level')!r}", check="centroid-level")
            self._lookup[(e["level"], e.get("category"), e.get("platform"))] = row

    # -- building ------------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls, apps_df: pd.DataFrame, ids: Sequence[str], vectors: np.ndarray, *, min_count: int = 1
    ) -> CategoryCentroidEncoder:
        """Centroids of the catalogue ``vectors`` ``(n, d)`` (any scale; rows are L2-normalised first),
        row ``i`` being app ``ids[i]``, grouped by ``apps_df``'s ``category`` / ``platform`` (joined on
        ``app_id``; the last row of a duplicated id wins; ids without a metadata row count only towards the
        global centroid).

        raises DataError (``check="centroid-input"``) on shape mismatch, missing columns, or no usable vector.
        """
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != len(ids) or x.shape[0] == 0:
            raise DataError(
                f"centroid fit needs (n, d) vectors for n ids; got {x.shape} for {len(ids)} ids",
                check="centroid-input",
            )
        missing = {"app_id", "category", "platform"} - set(apps_df.columns)
        if missing:
            raise DataError(f"apps frame lacks columns {sorted(missing)}", check="centroid-input")
        meta = apps_df.assign(app_id=apps_df["app_id"].astype(str)).drop_duplicates("app_id", keep="last")
        meta = meta.set_index("app_id")
        id_list = [str(i) for i in ids]
        cats = [norm_key(v) for v in meta["category"].reindex(id_list).tolist()]
        plats = [norm_key(v) for v in meta["platform"].reindex(id_list).tolist()]
        unit = _unit_rows(x)
        if not np.isfinite(unit).all():
            raise DataError("centroid fit got non-finite vectors", check="centroid-input")

        groups: dict[tuple[str, str | None, str | None], list[int]] = {}
        for i, (c, p) in enumerate(zip(cats, plats, strict=True)):
            if c is not None and p is not None:
                groups.setdefault(("category+platform", c, p), []).append(i)
            if c is not None:
                groups.setdefault(("category", c, None), []).append(i)
            if p is not None:
                groups.setdefault(("platform", None, p), []).append(i)

        def centroid(rows: np.ndarray | list[int]) -> np.ndarray | None:
            mean = unit[rows].sum(axis=0)
            n = float(np.linalg.norm(mean))
            return None if n < _EPS * max(1, len(rows)) else mean / n

        g = centroid(np.arange(unit.shape[0]))
        if g is None:
            raise DataError("the catalogue's mean vector is zero; no global centroid", check="centroid-input")
        rows_out = [g]
        entries: list[dict[str, Any]] = [
            {"level": "global", "category": None, "platform": None, "count": int(unit.shape[0])}
        ]
        order = {lvl: k for k, lvl in enumerate(LEVELS)}
        for key in sorted(groups, key=lambda k: (order[k[0]], k[1] or "", k[2] or "")):
            members = groups[key]
            if len(members) < min_count:
                continue
            vec = centroid(members)
            if vec is None:
                continue
            rows_out.append(vec)
            entries.append({"level": key[0], "category": key[1], "platform": key[2], "count": len(members)})
        cents = _unit_rows(np.stack(rows_out)).astype(np.float32)
        return cls(cents, entries, min_count=min_count)

    def describe(self) -> dict[str, Any]:
        """The manifest's ``encoder`` entry: kind, dim, files, fallback order, per-level centroid counts."""
        per_level = {lvl: sum(1 for e in self.entries if e["level"] == lvl) for lvl in LEVELS}
        return {
            "kind": self.kind,
            "dim": self.dim,
            "files": [CENTROIDS_NPY, CENTROIDS_JSON],
            "fallback": list(LEVELS),
            "min_count": self.min_count,
            "centroids": per_level,
        }

    # -- persistence -----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> list[Path]:
        """Write ``centroids.npy`` and ``centroids.json`` into ``directory`` (created); byte-deterministic.
        Returns the written paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / CENTROIDS_NPY, self.centroids, allow_pickle=False)
        doc = {
            "format": FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "min_count": self.min_count,
            "levels": list(LEVELS),
            "entries": self.entries,
        }
        (d / CENTROIDS_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return [d / CENTROIDS_NPY, d / CENTROIDS_JSON]

    @classmethod
    def load(cls, directory: str | Path) -> CategoryCentroidEncoder:
        """Read what :meth:`save` wrote. raises ArtifactError naming the file and the failed check
        (exists / json / npy / kind / shape / finite / norm)."""
        d = Path(directory)
        npy, js = d / CENTROIDS_NPY, d / CENTROIDS_JSON
        for f in (npy, js):
            if not f.is_file():
                raise ArtifactError(f"missing encoder file {f}", path=str(f), check="exists")
        try:
            doc = json.loads(js.read_text())
        except ValueError as e:
            raise ArtifactError(f"{js} is not valid JSON: {e}", path=str(js), check="json") from e
        if doc.get("kind") != cls.kind or doc.get("format") != FORMAT:
            raise ArtifactError(
                f"{js} is kind {doc.get('kind')!r} format {doc.get('format')!r}, "
                f"expected {cls.kind!r} {FORMAT}",
                path=str(js),
                check="kind",
            )
        try:
            cents = np.load(npy, allow_pickle=False)
        except ValueError as e:
            raise ArtifactError(f"cannot read {npy}: {e}", path=str(npy), check="npy") from e
        entries = doc.get("entries") or []
        if cents.ndim != 2 or cents.shape != (len(entries), doc.get("dim")):
            raise ArtifactError(
                f"{npy} shape {cents.shape} != ({len(entries)}, {doc.get('dim')})",
                path=str(npy),
                check="shape",
            )
        if not np.isfinite(cents).all():
            raise ArtifactError(f"{npy} contains NaN/inf", path=str(npy), check="finite")
        if np.abs(np.linalg.norm(cents, axis=1) - 1).max() > 1e-3:
            raise ArtifactError(f"{npy} rows are not L2-normalised", path=str(npy), check="norm")
        try:
            return cls(cents, entries, min_count=int(doc.get("min_count", 1)))
        except ArtifactError as e:
            raise ArtifactError(e.detail, path=str(js), check=e.check) from e

    # -- encoding --------------------------------------------------------------------------------------------
    def basis_row(self, category: object, platform: object) -> tuple[str, int]:
        """``(level, centroid row)`` that serves an app with this category / platform (fallback above)."""
        c, p = norm_key(category), norm_key(platform)
        candidates: list[tuple[str, str | None, str | None]] = []
        if c is not None and p is not None:
            candidates.append(("category+platform", c, p))
        if c is not None:
            candidates.append(("category", c, None))
        if p is not None:
            candidates.append(("platform", None, p))
        for key in candidates:
            row = self._lookup.get(key)
            if row is not None:
                return key[0], row
        return "global", 0

    def encode_with_basis(self, apps: Sequence[AppMetadata]) -> tuple[np.ndarray, list[str]]:
        """``(vectors (m, d) float32 L2-normalised, basis)`` where ``basis[i]`` is the level of
        :data:`LEVELS` that served ``apps[i]``."""
        levels: list[str] = []
        rows: list[int] = []
        for app in apps:
            level, row = self.basis_row(app.category, app.platform)
            levels.append(level)
            rows.append(row)
        out = (
            self.centroids[np.asarray(rows, dtype=np.int64)] if rows else np.zeros((0, self.dim), np.float32)
        )
        return np.array(out, dtype=np.float32), levels

    def encode(self, apps: Sequence[AppMetadata]) -> np.ndarray:
        """``(len(apps), dim)`` float32 L2-normalised rows; sets :attr:`last_basis`."""
        vecs, levels = self.encode_with_basis(apps)
        self.last_basis = levels
        return vecs
