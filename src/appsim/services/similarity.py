"""SimilarityService: top-k most similar catalogue apps by cosine similarity, per model version.

Pure logic over two small interfaces (``IndexBackend``, ``Encoder`` in ``appsim.domain``); no HTTP here.
Queries: a known ``app_id`` (the app itself is excluded), a raw ``vector`` (its dimension must match the
version), or a NEW app's metadata (encoded by that version's encoder: cold start). Filters are applied as a
mask *before* ranking. Results are ordered by score descending, then app_id ascending, and carry app ids
and metadata, never row numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appsim.domain import AppMetadata, Encoder, IndexBackend
from appsim.errors import (
    AppsimError,
    DimensionMismatchError,
    InvalidVectorError,
    NotFoundError,
    UnknownModelVersionError,
    ValidationError,
)


@dataclass
class ModelVersion:
    """One loaded model version: ``vectors`` (n, dim) float32 L2-normalised (memory-mapped); row i is
    ``ids[i]``.

    ``categories`` / ``platforms`` / ``names`` are (n,) object arrays aligned with the rows.
    """

    name: str
    ids: np.ndarray
    vectors: np.ndarray
    names: np.ndarray
    categories: np.ndarray
    platforms: np.ndarray
    index: IndexBackend
    encoder: Encoder | None
    manifest: dict[str, Any] = field(default_factory=dict)
    id_to_row: dict[str, int] = field(init=False)
    tiebreak: np.ndarray = field(init=False)
    _masks: dict[tuple[str, str], np.ndarray] = field(init=False, default_factory=dict)
    _category_centroids: dict[str, np.ndarray] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.id_to_row = {str(a): i for i, a in enumerate(self.ids.tolist())}
        order = np.argsort(self.ids.astype(str), kind="stable")
        self.tiebreak = np.empty(len(order), dtype=np.int64)
        self.tiebreak[order] = np.arange(len(order))
        self._values = {
            "category": {str(v).lower(): str(v) for v in set(self.categories.tolist())},
            "platform": {str(v).lower(): str(v) for v in set(self.platforms.tolist())},
        }
        self._lower = {
            "category": np.char.lower(self.categories.astype(str)),
            "platform": np.char.lower(self.platforms.astype(str)),
        }

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])

    def known_values(self, field_name: str) -> list[str]:
        return sorted(self._values[field_name].values())

    def mask(self, field_name: str, values: Sequence[str]) -> np.ndarray:
        """(n,) bool mask of rows whose ``field_name`` (category/platform) is one of ``values``
        (case-insensitive). raises ValidationError naming ``filters.<field>`` for an unknown value."""
        out = np.zeros(self.size, dtype=bool)
        for v in values:
            key = str(v).lower()
            if key not in self._values[field_name]:
                raise ValidationError(
                    f"unknown {field_name} {v!r} in model version {self.name!r}; known: "
                    + ", ".join(self.known_values(field_name)),
                    field=f"filters.{field_name}",
                )
            cached = self._masks.get((field_name, key))
            if cached is None:
                cached = self._lower[field_name] == key
                self._masks[(field_name, key)] = cached
            out |= cached
        return out

    def category_centroid(self, category: str) -> np.ndarray | None:
        key = category.lower()
        if key not in self._values["category"]:
            return None
        if key not in self._category_centroids:
            v = np.asarray(self.vectors[self._lower["category"] == key], dtype=np.float64).mean(axis=0)
            self._category_centroids[key] = (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)
        return self._category_centroids[key]


@dataclass(frozen=True)
class Filters:
    """Catalogue filters applied before ranking; ``None`` means no constraint."""

    category: tuple[str, ...] | None = None
    platform: tuple[str, ...] | None = None

    def key(self) -> tuple[Any, ...]:
        return (
            tuple(sorted(c.lower() for c in self.category)) if self.category else None,
            tuple(sorted(p.lower() for p in self.platform)) if self.platform else None,
        )


@dataclass(frozen=True)
class Query:
    """Exactly one of ``app_id``, ``vector`` ((d,) floats) or ``app`` (a new app's metadata)."""

    app_id: str | None = None
    vector: Sequence[float] | np.ndarray | None = None
    app: AppMetadata | None = None

    @property
    def kind(self) -> str:
        given = [k for k in ("app_id", "vector", "app") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValidationError(
                "give exactly one of app_id, vector or app (metadata); got "
                + (", ".join(given) if given else "none"),
                field="query",
            )
        return given[0]


@dataclass
class Neighbour:
    app_id: str
    name: str
    category: str
    platform: str
    score: float
    rank: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "app_id": self.app_id,
            "name": self.name,
            "category": self.category,
            "platform": self.platform,
            "score": self.score,
        }


@dataclass
class SimilarityResult:
    model_version: str
    query_kind: str
    top_k: int
    neighbours: list[Neighbour]
    candidates: int  # catalogue rows eligible after filters (and self-exclusion)
    encoding: str | None = None  # how a metadata query was encoded ("text", "category_centroid")
    query_vector: np.ndarray | None = None


class SimilarityService:
    """Top-k similar apps over several model versions (each with its own dimension).

    ``default_top_k`` 10; ``top_k`` allowed in ``1..max_top_k``; a ``top_k`` larger than the filtered
    catalogue returns all of it.
    """

    def __init__(
        self, versions: Mapping[str, ModelVersion], *, default_top_k: int = 10, max_top_k: int = 100
    ) -> None:
        self._versions = dict(versions)
        self.default_top_k = default_top_k
        self.max_top_k = max_top_k

    @property
    def versions(self) -> dict[str, ModelVersion]:
        return dict(self._versions)

    def replace_version(self, mv: ModelVersion) -> None:
        """Atomically swap in a (re)loaded model version (a single dict assignment)."""
        new = dict(self._versions)
        new[mv.name] = mv
        self._versions = new

    def version(self, name: str) -> ModelVersion:
        try:
            return self._versions[name]
        except KeyError:
            raise UnknownModelVersionError(name, sorted(self._versions)) from None

    def check_top_k(self, top_k: int | None) -> int:
        k = self.default_top_k if top_k is None else top_k
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= int(k) <= self.max_top_k:
            raise ValidationError(
                f"top_k must be an integer in 1..{self.max_top_k}, got {top_k!r}", field="top_k"
            )
        return int(k)

    def encode_query(self, mv: ModelVersion, query: Query) -> tuple[np.ndarray, int | None, str | None]:
        """``(vector (dim,) float32 L2-normalised, row to exclude or None, encoding)``.

        raises NotFoundError (unknown app_id), DimensionMismatchError, InvalidVectorError (NaN/inf/zero),
        ValidationError (metadata that no encoder can place)."""
        kind = query.kind
        if kind == "app_id":
            row = mv.id_to_row.get(str(query.app_id))
            if row is None:
                raise NotFoundError(
                    f"app_id {query.app_id!r} is not in the catalogue of model version {mv.name!r}",
                    field="app_id",
                )
            return np.asarray(mv.vectors[row], dtype=np.float32), row, None
        if kind == "vector":
            v = np.asarray(query.vector, dtype=np.float64)
            if v.ndim != 1:
                raise InvalidVectorError("vector must be a flat list of numbers", field="vector")
            if v.shape[0] != mv.dim:
                raise DimensionMismatchError(mv.dim, int(v.shape[0]), model_version=mv.name)
            if not np.isfinite(v).all():
                raise InvalidVectorError("vector contains NaN or Infinity", field="vector")
            scale = float(np.abs(v).max(initial=0.0))
            if scale == 0.0:
                raise InvalidVectorError(
                    "vector is all zeros: cosine similarity is undefined", field="vector"
                )
            v = v / scale  # components up to 1e308 or down to 1e-308 would over/underflow the norm
            return (v / np.linalg.norm(v)).astype(np.float32), None, None
        app = query.app
        assert app is not None
        if mv.encoder is None:
            raise ValidationError(
                f"model version {mv.name!r} has no encoder for new-app metadata", field="app"
            )
        vec = np.asarray(mv.encoder.encode([app])[0], dtype=np.float32)
        encoding = str(getattr(mv.encoder, "kind", "encoder"))
        if not np.isfinite(vec).all() or float(np.linalg.norm(vec)) < 1e-6:
            centroid = mv.category_centroid(app.category) if app.category else None
            if centroid is None:
                raise ValidationError(
                    f"model version {mv.name!r} cannot place this app: its text has no known term and its "
                    "category is not in the catalogue; add a description",
                    field="app.description",
                )
            return centroid, None, "category_centroid"
        return vec, None, encoding

    def allowed_mask(
        self, mv: ModelVersion, filters: Filters | None, exclude: int | None
    ) -> np.ndarray | None:
        mask: np.ndarray | None = None
        if filters is not None:
            if filters.category:
                mask = mv.mask("category", filters.category)
            if filters.platform:
                pm = mv.mask("platform", filters.platform)
                mask = pm if mask is None else mask & pm
        if exclude is not None:
            mask = np.ones(mv.size, dtype=bool) if mask is None else mask.copy()
            mask[exclude] = False
        return mask

    def find_similar(
        self,
        version: str,
        query: Query,
        top_k: int | None = None,
        filters: Filters | None = None,
    ) -> SimilarityResult:
        """Top-k neighbours of one query. Errors: see ``encode_query``; UnknownModelVersionError;
        ValidationError for ``top_k`` or an unknown filter value."""
        mv = self.version(version)
        k = self.check_top_k(top_k)
        vec, exclude, encoding = self.encode_query(mv, query)
        allowed = self.allowed_mask(mv, filters, exclude)
        scores, rows = mv.index.search(vec[None, :], k, allowed)
        candidates = mv.size if allowed is None else int(allowed.sum())
        return self._result(mv, query.kind, k, scores[0], rows[0], candidates, encoding, vec)

    def find_similar_batch(
        self,
        version: str,
        queries: Sequence[Query],
        top_k: int | None = None,
        filters: Filters | None = None,
    ) -> list[SimilarityResult | AppsimError]:
        """Many queries against one version as ONE matrix product when no per-query exclusion applies;
        an item's error is returned in its slot and does not fail the batch."""
        mv = self.version(version)
        k = self.check_top_k(top_k)
        base = self.allowed_mask(mv, filters, None)
        out: list[SimilarityResult | AppsimError] = [ValidationError("unprocessed")] * len(queries)
        vecs: list[np.ndarray] = []
        slots: list[tuple[int, int | None, str | None]] = []
        for i, q in enumerate(queries):
            try:
                v, excl, enc = self.encode_query(mv, q)
            except AppsimError as e:
                out[i] = e
                continue
            vecs.append(v)
            slots.append((i, excl, enc))
        if not vecs:
            return out
        # one extra candidate per query covers the excluded self-match of app_id queries
        kk = k + 1
        scores, rows = mv.index.search(np.stack(vecs), kk, base)
        for j, (i, excl, enc) in enumerate(slots):
            r, s = rows[j], scores[j]
            if excl is not None:
                keep = r != excl
                r, s = r[keep], s[keep]
            r, s = r[:k], s[:k]
            candidates = (mv.size if base is None else int(base.sum())) - (
                1 if excl is not None and (base is None or base[excl]) else 0
            )
            out[i] = self._result(mv, queries[i].kind, k, s, r, candidates, enc, vecs[j])
        return out

    @staticmethod
    def _result(
        mv: ModelVersion,
        kind: str,
        k: int,
        scores: np.ndarray,
        rows: np.ndarray,
        candidates: int,
        encoding: str | None,
        vec: np.ndarray,
    ) -> SimilarityResult:
        neighbours = [
            Neighbour(
                app_id=str(mv.ids[r]),
                name=str(mv.names[r]),
                category=str(mv.categories[r]),
                platform=str(mv.platforms[r]),
                score=float(np.clip(s, -1.0, 1.0)),
                rank=i + 1,
            )
            for i, (s, r) in enumerate(zip(scores.tolist(), rows.tolist(), strict=True))
        ]
        return SimilarityResult(
            model_version=mv.name,
            query_kind=kind,
            top_k=k,
            neighbours=neighbours,
            candidates=candidates,
            encoding=encoding,
            query_vector=vec,
        )
