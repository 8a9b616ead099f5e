"""Import the company's file set into an appsim catalogue.

Input folder (names fixed by the company)::

    mock_embeddings_v1.pkl      v1 vectors (64-d), possibly un-normalised
    mock_embeddings_v2.pkl      v2 vectors (128-d)
    sample_apps.csv             app_id, app_name, super_category, app_platform (+ others)
    historical_performance.csv  app_id, impressions, clicks, event_count, mmp_offer_default_revenue (+ others)

Output folder (what the service loads, see :mod:`appsim.data.artifacts`)::

    apps.csv            app_id,name,category,platform (+ extra columns), one row per id that has a vector
                        in at least one version, sorted by app_id
    <version>/          vectors.npy, ids.npy, manifest.json (rows sorted by app_id) and encoder/ (the
                        :class:`~appsim.backends.centroid.CategoryCentroidEncoder`)
    history.csv         byte copy of historical_performance.csv, after its checks
    import_report.json  the report :func:`import_company` returns

Pickles are read with :mod:`appsim.data.safe_pickle` (allow-listed globals only).

Accepted pickle layouts (``n`` apps, ``d`` dimensions)
------------------------------------------------------
* ``dict`` app_id -> vector (list / tuple / 1-d ndarray); also ``collections.OrderedDict``, ``pd.Series``.
* dict of columns: an id key (``app_id``, ``app_ids``, ``id``, ``ids``, ``appid``, ``app``; case-insensitive)
  and a vector key (``embedding(s)``, ``vector(s)``, ``emb(s)``, ``embedding_vector``) holding a list of
  vectors or an ``(n, d)`` array. A dict with only a vector key is a wrapper: its value is parsed again.
* ``(n, d)`` ndarray (or list of vectors) whose rows follow ``sample_apps.csv``: row ``i`` is the ``i``-th
  CSV row, or, when ``n`` equals the number of *distinct* ids, the ``i``-th distinct id in first-seen order.
* ``DataFrame`` with an id column (names as above) or an id-named / string index, and either one column of
  vectors or ``d`` numeric columns (column order = dimension order; non-numeric columns are ignored and
  noted; vectors stored as JSON text ``"[0.1, ...]"`` are parsed; when ``expected_dim`` is given and more
  numeric columns exist, the ones named like ``7``, ``e7``, ``dim_7`` are used if there are exactly
  ``expected_dim`` of them).
* list of records (``[{"app_id": ..., "embedding": ...}, ...]``) or of ``(app_id, vector)`` pairs.

Validation policy
-----------------
Fatal (the import stops, nothing of that version is written):

* :class:`EmbeddingLayoutError` - unrecognised layout, bare matrix without a matching CSV order,
  non-numeric vector entries, id / vector lists of different lengths;
* :class:`MixedDimensionError` - vectors of different lengths within one version;
* :class:`WrongDimensionError` - the version's dimension is not the expected one (v1 64, v2 128);
* :class:`EmptyEmbeddingsError` - no vector left after dropping bad rows;
* :class:`MetadataError` - ``sample_apps.csv`` missing / without an id column;
* :class:`HistoryError` - history lacks a required column, or a required column has non-numeric cells,
  or negative impressions / clicks / event_count;
* :class:`~appsim.errors.UnsafePickleError` - the pickle names a non-allow-listed global.

Dropped and reported (``ValidationReport.counts``; ``examples`` keeps up to 5 ids per check):

* ``missing_ids``: rows whose id is missing / blank;  ``missing_vectors``: rows whose vector is None / NaN;
* ``non_finite_rows``: vectors with a NaN / inf entry;  ``zero_rows``: vectors whose entries are all 0;
* ``duplicate_ids``: rows dropped because a later row has the same id - **the LAST occurrence is kept**
  (for embeddings: the last *valid* one, bad rows are dropped first);
* ``ids_without_metadata``: vectors whose id is not in ``sample_apps.csv`` (dropped: the service needs a
  metadata row for every vector); ``metadata_without_vectors``: CSV apps without a vector in this version
  (kept out of that version; out of ``apps.csv`` when no version has them).

With ``strict=True`` the first row-level problem raises instead: :class:`NonFiniteVectorError`,
:class:`ZeroVectorError`, :class:`DuplicateIdError`, :class:`EmbeddingLayoutError` (missing id / vector).

``sample_apps.csv``: columns are mapped ``app_id`` <- app_id / id; ``name`` <- app_name / name / title;
``category`` <- super_category / category / genre / prime_genre; ``platform`` <- app_platform / platform /
os (first match wins; other columns are kept as extras). Values are whitespace-stripped, platform is
lower-cased. Missing id: row dropped (``missing_ids``); missing name: set to the app_id (``missing_name``);
missing category / platform: left empty (``missing_category`` / ``missing_platform``; the centroid
encoder falls back); duplicate ids: last row kept (``duplicate_ids``).

``historical_performance.csv`` reports (not fatal): ``missing_values`` (empty numeric cells),
``clicks_gt_impressions``, ``events_gt_clicks``, ``negative_revenue`` (refunds), ``missing_ids``,
``ids_not_in_catalogue`` plus ``info`` rows / apps / coverage.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from appsim.backends.centroid import CategoryCentroidEncoder
from appsim.data.artifacts import sha256_file, write_version_artifact
from appsim.data.safe_pickle import safe_load
from appsim.errors import DataError

SAMPLE_APPS = "sample_apps.csv"
HISTORY = "historical_performance.csv"
DEFAULT_VERSIONS: dict[str, str] = {"v1": "mock_embeddings_v1.pkl", "v2": "mock_embeddings_v2.pkl"}
EXPECTED_DIMS: dict[str, int] = {"v1": 64, "v2": 128}
HISTORY_REQUIRED = ("app_id", "impressions", "clicks", "event_count", "mmp_offer_default_revenue")
HISTORY_COUNTS = ("impressions", "clicks", "event_count")

ID_KEYS = ("app_id", "app_ids", "appid", "id", "ids", "app")
VECTOR_KEYS = ("embedding", "embeddings", "vector", "vectors", "emb", "embs", "embedding_vector")
NAME_COLUMNS = ("app_name", "name", "title")
CATEGORY_COLUMNS = ("super_category", "category", "genre", "prime_genre")
PLATFORM_COLUMNS = ("app_platform", "platform", "os")
MAX_EXAMPLES = 5
_DIM_NAME = re.compile(r"^[A-Za-z_]*?_?(\d+)$")


# --------------------------------------------------------------------------------------------------- errors
class EmbeddingLayoutError(DataError):
    """The pickle's structure is not one of the accepted layouts (or is inconsistent)."""

    code = "embedding-layout"


class MixedDimensionError(DataError):
    """Vectors of different dimensions within one version (fatal)."""

    code = "mixed-dimension"


class WrongDimensionError(DataError):
    """The version's vectors do not have the expected dimension (fatal)."""

    code = "wrong-dimension"


class EmptyEmbeddingsError(DataError):
    """No usable vector (fatal)."""

    code = "empty-embeddings"


class NonFiniteVectorError(DataError):
    """A vector has NaN / inf entries (raised only in strict mode; otherwise dropped and reported)."""

    code = "non-finite-vector"


class ZeroVectorError(DataError):
    """A vector is all zeros (raised only in strict mode; otherwise dropped and reported)."""

    code = "zero-vector"


class DuplicateIdError(DataError):
    """An id occurs more than once (raised only in strict mode; otherwise the last occurrence is kept)."""

    code = "duplicate-id"


class MetadataError(DataError):
    """``sample_apps.csv`` is missing or unusable (fatal)."""

    code = "metadata-error"


class HistoryError(DataError):
    """``historical_performance.csv`` failed a fatal check."""

    code = "history-error"


# --------------------------------------------------------------------------------------------------- report
@dataclass
class ValidationReport:
    """What one input file's checks found.

    ``counts[check]`` is the number of rows concerned (dropped, or flagged for history), ``examples[check]``
    up to 5 of their ids, ``info`` descriptive values (layout, dim, rows read / kept, statistics), ``notes``
    free-text remarks. Check names are listed in the module docstring.
    """

    kind: str
    source: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self, check: str, n: int, examples: Sequence[object] = ()) -> None:
        """Add ``n`` rows to ``counts[check]`` (the key is created, even for 0) with example ids."""
        self.counts[check] = self.counts.get(check, 0) + int(n)
        if n:
            ex = self.examples.setdefault(check, [])
            for e in examples:
                if len(ex) >= MAX_EXAMPLES:
                    break
                ex.append(str(e))

    def count(self, check: str) -> int:
        return self.counts.get(check, 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (keys sorted) with kind, source, counts, examples, info, notes."""
        return {
            "kind": self.kind,
            "source": self.source,
            "counts": dict(sorted(self.counts.items())),
            "examples": dict(sorted(self.examples.items())),
            "info": dict(sorted(self.info.items())),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------------- helpers
def _is_missing(v: object) -> bool:
    if v is None:
        return True
    if isinstance(v, (float, np.floating)) and np.isnan(v):
        return True
    if isinstance(v, (list, tuple, dict, np.ndarray, pd.Series, pd.Index)):
        return False
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _norm_id(v: object) -> str | None:
    """``str(v).strip()``; None for missing / blank. Integral floats (123.0) become ``"123"``."""
    if _is_missing(v):
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = int(v)
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    s = str(v).strip()
    return s or None


def _find_key(keys: Sequence[object], wanted: Sequence[str]) -> object | None:
    lowered: dict[str, object] = {}
    for k in keys:
        if isinstance(k, str):
            lowered.setdefault(k.strip().lower(), k)
    for w in wanted:
        if w in lowered:
            return lowered[w]
    return None


def _object_array(items: Sequence[Any]) -> np.ndarray:
    """A 1-d object array holding ``items`` as they are (no broadcasting of equal-length rows)."""
    arr = np.empty(len(items), dtype=object)
    for k, item in enumerate(items):
        arr[k] = item
    return arr


def _is_vector_like(v: object) -> bool:
    return isinstance(v, (list, tuple, np.ndarray, pd.Series)) and np.ndim(v) == 1


def _sha(path: Path) -> str:
    return sha256_file(path)


@dataclass
class _Raw:
    ids: list[object]
    rows: np.ndarray | list[object]  # (n, d) float array or n per-row vectors (any type)
    layout: str


def _raw_from_matrix(mat: object, apps_order: Sequence[object] | None, source: str, layout: str) -> _Raw:
    if isinstance(mat, np.ndarray):
        arr = mat
    else:
        try:
            arr = np.asarray(mat)
        except ValueError:  # ragged rows: keep them as objects; _stack reports the dimensions
            arr = _object_array(list(mat))  # type: ignore[call-overload]
    if arr.dtype == object or arr.ndim == 1:
        rows: np.ndarray | list[object] = list(arr)
        n = len(rows)
    elif arr.ndim == 2:
        rows, n = arr, arr.shape[0]
    else:
        raise EmbeddingLayoutError(
            f"{source}: a {arr.ndim}-d array is not an (n, d) matrix", path=source, check="layout"
        )
    if apps_order is None:
        raise EmbeddingLayoutError(
            f"{source}: a bare ({n}, d) matrix has no ids; it needs the sample_apps.csv row order",
            path=source,
            check="layout",
        )
    order = list(apps_order)
    if len(order) != n:
        distinct = list(dict.fromkeys(i for i in (_norm_id(x) for x in order) if i is not None))
        if len(distinct) != n:
            raise EmbeddingLayoutError(
                f"{source}: {n} rows, but sample_apps.csv has {len(order)} rows and "
                f"{len(distinct)} distinct ids",
                path=source,
                check="layout",
            )
        order = list(distinct)
    return _Raw(order, rows, layout)


def _raw_from_frame(
    df: pd.DataFrame,
    apps_order: Sequence[object] | None,
    expected_dim: int | None,
    source: str,
    report: ValidationReport,
) -> _Raw:
    cols = list(df.columns)
    id_col = _find_key(cols, ID_KEYS)
    if id_col is not None:
        ids = df[id_col].tolist()
        rest = df.drop(columns=[id_col])
        where = f"column {id_col!r}"
    elif (df.index.name and str(df.index.name).strip().lower() in ID_KEYS) or (
        not isinstance(df.index, pd.RangeIndex)
        and (pd.api.types.is_string_dtype(df.index.dtype) or df.index.dtype == object)
    ):
        ids = df.index.tolist()
        rest = df
        where = "the index"
    else:
        ids = None
        rest = df
        where = ""
    # one column of vectors?
    vec_col = _find_key(list(rest.columns), VECTOR_KEYS)
    if vec_col is None:
        obj_cols = [
            c
            for c in rest.columns
            if rest[c].dtype == object and any(_is_vector_like(v) for v in rest[c].head(20))
        ]
        vec_col = obj_cols[0] if len(obj_cols) == 1 else None
    if vec_col is not None and (
        rest[vec_col].dtype == object or not pd.api.types.is_numeric_dtype(rest[vec_col])
    ):
        cells: list[Any] = rest[vec_col].tolist()
        layout = f"dataframe[{where or 'row order'}, vector column {vec_col!r}]"
        if ids is None:
            return _raw_from_matrix(_object_array(cells), apps_order, source, layout)
        return _Raw(ids, cells, layout)
    numeric = [
        c
        for c in rest.columns
        if pd.api.types.is_numeric_dtype(rest[c]) and not pd.api.types.is_bool_dtype(rest[c])
    ]
    ignored = [c for c in rest.columns if c not in numeric]
    if expected_dim is not None and len(numeric) != expected_dim:
        dimlike = [c for c in numeric if isinstance(c, (int, np.integer)) or _DIM_NAME.match(str(c))]
        if len(dimlike) == expected_dim:
            ignored += [c for c in numeric if c not in dimlike]
            numeric = dimlike
    if not numeric:
        raise EmbeddingLayoutError(
            f"{source}: DataFrame has neither a vector column nor numeric columns ({cols[:8]})",
            path=source,
            check="layout",
        )
    if ignored:
        report.notes.append(f"ignored non-embedding columns: {[str(c) for c in ignored][:10]}")
    mat = rest[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
    layout = f"dataframe[{where or 'row order'}, {len(numeric)} numeric columns]"
    if ids is None:
        return _raw_from_matrix(mat, apps_order, source, layout)
    return _Raw(ids, mat, layout)


def _extract(
    obj: object,
    apps_order: Sequence[object] | None,
    expected_dim: int | None,
    source: str,
    report: ValidationReport,
    depth: int = 0,
) -> _Raw:
    if depth > 2:
        raise EmbeddingLayoutError(f"{source}: nesting too deep", path=source, check="layout")
    if isinstance(obj, pd.DataFrame):
        return _raw_from_frame(obj, apps_order, expected_dim, source, report)
    if isinstance(obj, pd.Series):
        return _Raw(obj.index.tolist(), obj.tolist(), "series[app_id -> vector]")
    if isinstance(obj, np.ndarray):
        return _raw_from_matrix(obj, apps_order, source, "ndarray[rows = sample_apps.csv order]")
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        vk = _find_key(keys, VECTOR_KEYS)
        ik = _find_key(keys, ID_KEYS)
        if vk is not None and len(keys) <= 10:
            vecs = obj[vk]
            if ik is None:
                if isinstance(vecs, (Mapping, pd.DataFrame, pd.Series)):
                    return _extract(vecs, apps_order, expected_dim, source, report, depth + 1)
                return _raw_from_matrix(vecs, apps_order, source, f"dict[{vk!r}: matrix in CSV order]")
            ids = list(obj[ik])
            rows: np.ndarray | list[object] = (
                vecs if isinstance(vecs, np.ndarray) and vecs.ndim == 2 else list(vecs)
            )
            if len(ids) != len(rows):
                raise EmbeddingLayoutError(
                    f"{source}: {len(ids)} ids under {ik!r} but {len(rows)} vectors under {vk!r}",
                    path=source,
                    check="layout",
                )
            return _Raw(ids, rows, f"dict-of-lists[{ik!r}, {vk!r}]")
        return _Raw(keys, list(obj.values()), "dict[app_id -> vector]")
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(r, Mapping) for r in obj):
            return _raw_from_frame(pd.DataFrame(list(obj)), apps_order, expected_dim, source, report)
        if obj and all(
            isinstance(r, (tuple, list))
            and len(r) == 2
            and (r[0] is None or isinstance(r[0], str))  # a None id is dropped and counted (missing_ids)
            and _is_vector_like(r[1])
            for r in obj
        ):
            return _Raw([r[0] for r in obj], [r[1] for r in obj], "list[(app_id, vector)]")
        try:
            matrix = _object_array(list(obj))
        except (TypeError, ValueError) as e:
            raise EmbeddingLayoutError(
                f"{source}: a list that is neither (app_id, vector) pairs, records, nor equal-length "
                f"vectors: {e}",
                path=source,
                check="layout",
            ) from e
        return _raw_from_matrix(matrix, apps_order, source, "list[vector in CSV order]")
    raise EmbeddingLayoutError(
        f"{source}: unsupported pickle content {type(obj).__module__}.{type(obj).__qualname__}",
        path=source,
        check="layout",
    )


def _parse_text_vector(r: Any) -> Any:
    """A vector stored as text (``"[0.1, 0.2]"``, e.g. a DataFrame read from CSV) becomes a list."""
    if isinstance(r, str) and r.strip().startswith("[") and r.strip().endswith("]"):
        try:
            v = json.loads(r)
        except ValueError:
            return r
        return v if isinstance(v, list) else r
    return r


def _stack(raw: _Raw, ids: list[str | None], source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix (n, d) float64, has_vector (n,) bool)``; rows without a vector are NaN."""
    if isinstance(raw.rows, np.ndarray) and raw.rows.ndim == 2 and raw.rows.dtype != object:
        try:
            mat = np.asarray(raw.rows, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise EmbeddingLayoutError(
                f"{source}: non-numeric vectors: {e}", path=source, check="numeric"
            ) from e
        return mat, np.ones(mat.shape[0], dtype=bool)
    rows = [_parse_text_vector(r) for r in raw.rows]
    has = np.array([not _is_missing(r) if np.ndim(r) == 0 else True for r in rows], dtype=bool)
    lengths: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if has[i]:
            if np.ndim(r) != 1:
                raise EmbeddingLayoutError(
                    f"{source}: the vector of {ids[i]!r} is not 1-d (shape {np.shape(r)})",
                    path=source,
                    check="layout",
                )
            lengths.setdefault(int(np.shape(r)[0]), []).append(i)
    if len(lengths) > 1:
        dims = {int(k): len(v) for k, v in sorted(lengths.items())}
        minority = sorted(lengths, key=lambda k: len(lengths[k]))[0]
        ex = [ids[i] for i in lengths[minority][:MAX_EXAMPLES]]
        raise MixedDimensionError(
            f"{source}: vectors of several dimensions {dims} (e.g. {minority}-d: {ex})",
            path=source,
            check="mixed-dimension",
            dimensions=dims,
            examples=ex,
        )
    if not lengths:
        raise EmptyEmbeddingsError(f"{source}: no vectors", path=source, check="empty")
    d = next(iter(lengths))
    mat = np.full((len(rows), d), np.nan, dtype=np.float64)
    for i, r in enumerate(rows):
        if has[i]:
            try:
                mat[i] = np.asarray(r, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise EmbeddingLayoutError(
                    f"{source}: non-numeric vector for {ids[i]!r}: {e}", path=source, check="numeric"
                ) from e
    return mat, has


def _unit(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of finite, non-zero float64 rows, safe for tiny / huge magnitudes."""
    scale = np.abs(x).max(axis=1, keepdims=True)
    y = x / scale
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def validate_embeddings(
    raw_ids: Sequence[object],
    rows: np.ndarray | Sequence[object],
    *,
    expected_dim: int | None = None,
    report: ValidationReport | None = None,
    strict: bool = False,
    source: str = "embeddings",
    layout: str = "given",
) -> tuple[list[str], np.ndarray]:
    """Apply the validation policy (module docstring) to ``n`` ids and their vectors.

    Returns ``(ids, vectors)``: unique ids in input order of their kept (last valid) occurrence and
    ``(len(ids), d)`` float64 vectors, finite and non-zero, *not* normalised. Fills ``report``.
    raises MixedDimensionError, WrongDimensionError, EmptyEmbeddingsError, EmbeddingLayoutError; in strict
    mode also NonFiniteVectorError, ZeroVectorError, DuplicateIdError.
    """
    rep = report if report is not None else ValidationReport("embeddings", source)
    raw = _Raw(list(raw_ids), rows if isinstance(rows, np.ndarray) else list(rows), layout)
    if len(raw.ids) != len(raw.rows):
        raise EmbeddingLayoutError(
            f"{source}: {len(raw.ids)} ids for {len(raw.rows)} vectors", path=source, check="layout"
        )
    ids = [_norm_id(i) for i in raw.ids]
    n = len(ids)
    rep.info["layout"] = raw.layout
    rep.info["rows_read"] = n
    if n == 0:
        raise EmptyEmbeddingsError(f"{source}: no vectors", path=source, check="empty")
    mat, has = _stack(raw, ids, source)
    d = int(mat.shape[1])
    rep.info["dim"] = d
    if expected_dim is not None and d != expected_dim:
        raise WrongDimensionError(
            f"{source}: vectors are {d}-d, expected {expected_dim}-d",
            path=source,
            check="dimension",
            expected_dimension=expected_dim,
            received_dimension=d,
        )
    if d == 0:
        raise EmptyEmbeddingsError(f"{source}: vectors are 0-d", path=source, check="empty")

    def flag(check: str, mask: np.ndarray, err: type[DataError], what: str) -> None:
        idx = np.flatnonzero(mask)
        ex = [ids[i] if ids[i] is not None else f"row {i}" for i in idx[:MAX_EXAMPLES]]
        if strict and idx.size:
            raise err(
                f"{source}: {idx.size} {what} (e.g. {ex})",
                path=source,
                check=check,
                count=int(idx.size),
                examples=ex,
            )
        rep.record(check, int(idx.size), ex)

    missing_id = np.array([i is None for i in ids], dtype=bool)
    flag("missing_ids", missing_id, EmbeddingLayoutError, "rows without an id")
    alive = ~missing_id
    flag("missing_vectors", alive & ~has, EmbeddingLayoutError, "ids without a vector")
    alive &= has
    finite = np.isfinite(mat).all(axis=1)
    flag("non_finite_rows", alive & ~finite, NonFiniteVectorError, "vectors with NaN/inf")
    alive &= finite
    with np.errstate(invalid="ignore"):
        zero = ~np.any(mat != 0, axis=1)
    flag("zero_rows", alive & zero, ZeroVectorError, "all-zero vectors")
    alive &= ~zero
    last: dict[str, int] = {}
    for i in np.flatnonzero(alive):
        last[ids[i]] = int(i)  # type: ignore[index]
    dup = alive.copy()
    dup[list(last.values())] = False
    flag("duplicate_ids", dup, DuplicateIdError, "rows whose id occurs again later")
    keep = np.array(sorted(last.values()), dtype=np.int64)
    if keep.size == 0:
        raise EmptyEmbeddingsError(
            f"{source}: no usable vector among {n} rows ({dict(rep.counts)})", path=source, check="empty"
        )
    out_ids = [str(ids[i]) for i in keep]
    vecs = mat[keep]
    rep.info["rows_kept"] = len(out_ids)
    norms = np.linalg.norm(vecs, axis=1)
    mean_unit = _unit(vecs).mean(axis=0)
    rep.info["norm_mean"] = round(float(norms.mean()), 6)
    rep.info["norm_min"] = round(float(norms.min()), 6)
    rep.info["norm_max"] = round(float(norms.max()), 6)
    # ||mean of unit vectors||^2 ~= the mean pairwise cosine: ~0 for centred embeddings, ~0.75 for U[0,1)
    rep.info["mean_pairwise_cosine"] = round(float(mean_unit @ mean_unit), 6)
    if float(mean_unit @ mean_unit) > 0.5:
        rep.notes.append(
            "vectors share a large common component (mean pairwise cosine > 0.5, e.g. un-centred "
            "positive values): cosine scores are compressed near 1; rankings still hold"
        )
    return out_ids, vecs


def load_embeddings_pickle(
    path: str | Path,
    expected_dim: int | None = None,
    apps_order: Sequence[object] | None = None,
    *,
    report: ValidationReport | None = None,
    strict: bool = False,
) -> tuple[list[str], np.ndarray]:
    """Load one version's embedding pickle in any accepted layout and validate it.

    ``apps_order`` is the ``sample_apps.csv`` id column (raw rows) for the bare-matrix layouts.
    Returns ``(ids, vectors)``: ``n`` unique app ids and ``(n, d)`` float64 vectors (raw scale, finite,
    non-zero) in the pickle's order of kept rows. ``report`` (optional) receives the counts.
    raises UnsafePickleError, DataError subclasses (see module docstring).
    """
    p = Path(path)
    source = p.name
    rep = report if report is not None else ValidationReport("embeddings", source)
    rep.source = rep.source or source
    obj = safe_load(p)
    raw = _extract(obj, apps_order, expected_dim, source, rep)
    return validate_embeddings(
        raw.ids,
        raw.rows,
        expected_dim=expected_dim,
        report=rep,
        strict=strict,
        source=source,
        layout=raw.layout,
    )


# --------------------------------------------------------------------------------------------------- metadata
def _read_sample_apps_raw(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MetadataError(f"missing {path}", path=str(path), check="exists")
    try:
        header = list(pd.read_csv(path, nrows=0, encoding="utf-8").columns)
    except (OSError, ValueError) as e:
        raise MetadataError(f"cannot parse {path}: {e}", path=str(path), check="csv") from e
    mapping: dict[str, str] = {}
    for target, aliases in (
        ("app_id", ("app_id", "id", "appid")),
        ("name", NAME_COLUMNS),
        ("category", CATEGORY_COLUMNS),
        ("platform", PLATFORM_COLUMNS),
    ):
        src = _find_key([c for c in header if c not in mapping], aliases)
        if src is not None:
            mapping[str(src)] = target
    if "app_id" not in mapping.values():
        raise MetadataError(
            f"{path} has no app_id column (columns: {header})", path=str(path), check="columns"
        )
    try:
        df = pd.read_csv(path, dtype={c: str for c in mapping}, encoding="utf-8")
    except (OSError, ValueError) as e:
        raise MetadataError(f"cannot parse {path}: {e}", path=str(path), check="csv") from e
    taken = set(mapping.values())
    extras = {c: (f"{c}_raw" if c in taken else c) for c in df.columns if c not in mapping}
    df = df.rename(columns={**mapping, **extras})
    for target in ("app_id", "name", "category", "platform"):
        if target not in df.columns:
            df[target] = pd.Series([None] * len(df), dtype=object)
    return df[["app_id", "name", "category", "platform", *extras.values()]]


def _clean_str(s: pd.Series) -> pd.Series:
    return pd.Series(
        [None if _is_missing(v) or not str(v).strip() else str(v).strip() for v in s],
        index=s.index,
        dtype=object,
    )


def _clean_sample_apps(raw: pd.DataFrame, report: ValidationReport) -> pd.DataFrame:
    df = raw.copy()
    df["app_id"] = pd.Series([_norm_id(v) for v in df["app_id"]], index=df.index, dtype=object)
    for c in ("name", "category", "platform"):
        df[c] = _clean_str(df[c])
    report.info["rows_read"] = len(df)
    miss = df["app_id"].isna().to_numpy()
    report.record("missing_ids", int(miss.sum()), [f"row {i + 2}" for i in np.flatnonzero(miss)])
    df = df[~miss]
    dup = df.duplicated("app_id", keep="last").to_numpy()
    report.record("duplicate_ids", int(dup.sum()), df["app_id"][dup].tolist())
    df = df[~dup]
    for c in ("name", "category", "platform"):
        m = df[c].isna().to_numpy()
        report.record(f"missing_{c}", int(m.sum()), df["app_id"][m].tolist())
    df.loc[df["name"].isna(), "name"] = df.loc[df["name"].isna(), "app_id"]
    df["platform"] = [None if v is None else v.lower() for v in df["platform"]]
    report.info["rows_kept"] = len(df)
    return df.reset_index(drop=True)


def load_sample_apps(path: str | Path, *, report: ValidationReport | None = None) -> pd.DataFrame:
    """Read ``sample_apps.csv`` into the catalogue schema: ``app_id, name, category, platform`` (object
    dtype; category / platform None when missing) + the file's other columns; one row per id (the last).

    raises MetadataError when the file is missing, unparsable or has no id column.
    """
    p = Path(path)
    rep = report if report is not None else ValidationReport("sample_apps", p.name)
    rep.source = rep.source or p.name
    return _clean_sample_apps(_read_sample_apps_raw(p), rep)


# --------------------------------------------------------------------------------------------------- history
def validate_history(
    path: str | Path,
    catalogue_ids: Sequence[str] | None = None,
    *,
    report: ValidationReport | None = None,
    chunksize: int = 250_000,
) -> ValidationReport:
    """Check ``historical_performance.csv`` (streamed in chunks; only the required columns are parsed).

    raises HistoryError (``check`` = ``exists`` / ``columns`` / ``numeric`` / ``non-negative``) on a fatal
    problem; returns the report (counts listed in the module docstring; ``info``: rows, apps,
    apps_in_catalogue, share_of_catalogue_with_history, extra_columns).
    """
    p = Path(path)
    rep = report if report is not None else ValidationReport("history", p.name)
    rep.source = rep.source or p.name
    if not p.is_file():
        raise HistoryError(f"missing {p}", path=str(p), check="exists")
    try:
        header = list(pd.read_csv(p, nrows=0, encoding="utf-8").columns)
    except (OSError, ValueError) as e:
        raise HistoryError(f"cannot parse {p}: {e}", path=str(p), check="csv") from e
    missing = [c for c in HISTORY_REQUIRED if c not in header]
    if missing:
        raise HistoryError(
            f"{p} lacks required columns {missing} (has {header})",
            path=str(p),
            check="columns",
            missing=missing,
        )
    rows = 0
    apps: set[str] = set()
    for name in (
        "missing_values",
        "clicks_gt_impressions",
        "events_gt_clicks",
        "negative_revenue",
        "missing_ids",
    ):
        rep.record(name, 0)
    reader = pd.read_csv(
        p, usecols=list(HISTORY_REQUIRED), dtype={"app_id": str}, chunksize=chunksize, encoding="utf-8"
    )
    for chunk in reader:
        ids = chunk["app_id"].fillna("").astype(str).str.strip()
        vals: dict[str, np.ndarray] = {}
        for c in HISTORY_REQUIRED[1:]:
            col = chunk[c]
            if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                num = col.to_numpy(dtype=np.float64, na_value=np.nan)
                blank = np.isnan(num)
            else:  # the parser found text: blanks are NaN, anything else that does not parse is fatal
                blank = col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
                num = pd.to_numeric(col.where(~blank, None), errors="coerce").to_numpy(dtype=np.float64)
                bad = np.isnan(num) & ~blank
                if bad.any():
                    i = np.flatnonzero(bad)
                    raise HistoryError(
                        f"{p}: {i.size} non-numeric {c!r} cells in rows {rows + 1}..{rows + len(chunk)} "
                        f"(e.g. {col.iloc[i[0]]!r} for app {ids.iloc[i[0]]!r})",
                        path=str(p),
                        check="numeric",
                        column=c,
                    )
            if np.isinf(num).any():
                raise HistoryError(f"{p}: infinite {c!r} values", path=str(p), check="numeric", column=c)
            if c in HISTORY_COUNTS and (num < 0).any():
                i = np.flatnonzero(num < 0)
                raise HistoryError(
                    f"{p}: {i.size} negative {c!r} values in rows {rows + 1}..{rows + len(chunk)} "
                    f"(e.g. app {ids.iloc[i[0]]!r})",
                    path=str(p),
                    check="non-negative",
                    column=c,
                )
            rep.record("missing_values", int(blank.sum()), ids[blank].tolist())
            vals[c] = num
        blank_id = (ids == "").to_numpy()
        rep.record(
            "missing_ids",
            int(blank_id.sum()),
            [f"data row {rows + int(i) + 1}" for i in np.flatnonzero(blank_id)],
        )
        gt = vals["clicks"] > vals["impressions"]
        rep.record("clicks_gt_impressions", int(gt.sum()), ids[gt].tolist())
        ge = vals["event_count"] > vals["clicks"]
        rep.record("events_gt_clicks", int(ge.sum()), ids[ge].tolist())
        neg = vals["mmp_offer_default_revenue"] < 0
        rep.record("negative_revenue", int(neg.sum()), ids[neg].tolist())
        apps.update(ids[~blank_id].unique().tolist())
        rows += len(chunk)
    rep.info["rows"] = rows
    rep.info["apps"] = len(apps)
    rep.info["extra_columns"] = [c for c in header if c not in HISTORY_REQUIRED]
    if catalogue_ids is not None:
        cat = set(catalogue_ids)
        outside = sorted(apps - cat)
        rep.record("ids_not_in_catalogue", len(outside), outside)
        rep.info["apps_in_catalogue"] = len(apps & cat)
        rep.info["share_of_catalogue_with_history"] = round(len(apps & cat) / max(1, len(cat)), 6)
    return rep


# --------------------------------------------------------------------------------------------------- import
def import_company(
    src_dir: str | Path,
    out_dir: str | Path,
    versions: Mapping[str, str] | None = None,
    *,
    expected_dims: Mapping[str, int] | None = None,
    strict: bool = False,
    min_count: int = 1,
) -> dict[str, Any]:
    """Convert the company's folder ``src_dir`` into a catalogue in ``out_dir`` (layout in the module
    docstring). ``versions`` maps a model version to its pickle's file name (default
    :data:`DEFAULT_VERSIONS`); ``expected_dims`` its dimension (default :data:`EXPECTED_DIMS`; a version
    not listed is not checked); ``min_count`` is the centroid encoder's smallest group.

    Idempotent: the same inputs give byte-identical outputs (manifests keep their ``created_at``).
    Returns the report ``{"out_dir", "inputs", "sample_apps", "versions": {v: {...}}, "catalogue",
    "history"}`` (also written to ``import_report.json``, without ``out_dir``).
    raises the fatal errors of the module docstring; nothing is written before every check passed.
    """
    src, out = Path(src_dir), Path(out_dir)
    vmap = dict(DEFAULT_VERSIONS if versions is None else versions)
    dims = dict(EXPECTED_DIMS if expected_dims is None else expected_dims)
    if not vmap:
        raise DataError("no model versions to import", path=str(src), check="versions")
    meta_path = src / SAMPLE_APPS
    apps_rep = ValidationReport("sample_apps", SAMPLE_APPS)
    raw_apps = _read_sample_apps_raw(meta_path)
    apps = _clean_sample_apps(raw_apps, apps_rep)
    raw_order = raw_apps["app_id"].tolist()
    meta_ids = set(apps["app_id"].tolist())
    inputs = {SAMPLE_APPS: _sha(meta_path)}

    loaded: dict[str, tuple[list[str], np.ndarray, ValidationReport, str]] = {}
    for version in sorted(vmap):
        fname = vmap[version]
        ppath = src / fname
        if not ppath.is_file():
            raise DataError(f"missing {ppath} (model version {version})", path=str(ppath), check="exists")
        rep = ValidationReport("embeddings", fname)
        ids, vecs = load_embeddings_pickle(ppath, dims.get(version), raw_order, report=rep, strict=strict)
        in_meta = np.array([i in meta_ids for i in ids], dtype=bool)
        rep.record(
            "ids_without_metadata",
            int((~in_meta).sum()),
            [i for i, m in zip(ids, in_meta, strict=True) if not m],
        )
        ids = [i for i, m in zip(ids, in_meta, strict=True) if m]
        vecs = vecs[in_meta]
        if not ids:
            raise EmptyEmbeddingsError(
                f"{fname}: none of its ids is in {SAMPLE_APPS}", path=str(ppath), check="ids-in-metadata"
            )
        have = set(ids)
        no_vec = sorted(meta_ids - have)
        rep.record("metadata_without_vectors", len(no_vec), no_vec)
        order = np.argsort(np.asarray(ids, dtype=str), kind="stable")
        ids = [ids[i] for i in order]
        vecs = _unit(vecs[order])
        rep.info["rows_in_artifact"] = len(ids)
        loaded[version] = (ids, vecs, rep, _sha(ppath))

    hist_path = src / HISTORY
    covered = sorted(set().union(*(set(v[0]) for v in loaded.values())))
    catalogue = apps[apps["app_id"].isin(covered)].sort_values("app_id", kind="stable").reset_index(drop=True)
    hist_rep: ValidationReport | None = None
    if hist_path.is_file():
        hist_rep = validate_history(hist_path, covered)
    # ---- every check passed: write
    out.mkdir(parents=True, exist_ok=True)
    catalogue.to_csv(out / "apps.csv", index=False, lineterminator="\n", encoding="utf-8")
    report: dict[str, Any] = {
        "inputs": {**inputs, **{vmap[v]: loaded[v][3] for v in loaded}},
        "sample_apps": apps_rep.to_dict(),
        "catalogue": {"apps": len(catalogue), "file": "apps.csv"},
        "versions": {},
    }
    for version, (ids, vecs, rep, sha) in loaded.items():
        enc = CategoryCentroidEncoder.fit(catalogue, ids, vecs, min_count=min_count)
        vdir = out / version
        manifest = write_version_artifact(
            vdir,
            version,
            ids,
            vecs,
            encoder=enc.describe(),
            inputs={vmap[version]: sha, SAMPLE_APPS: inputs[SAMPLE_APPS]},
            report=rep.to_dict(),
            extra={"source": "company"},
        )
        enc.save(vdir / "encoder")
        report["versions"][version] = {
            **rep.to_dict(),
            "dim": manifest["dim"],
            "count": manifest["count"],
            "vectors_sha256": manifest["vectors_sha256"],
            "ids_sha256": manifest["ids_sha256"],
        }
    if hist_rep is not None:
        target = out / "history.csv"
        if not target.is_file() or sha256_file(target) != sha256_file(hist_path):
            shutil.copyfile(hist_path, target)
        report["history"] = {**hist_rep.to_dict(), "file": "history.csv", "present": True}
        report["inputs"][HISTORY] = sha256_file(hist_path)
    else:
        report["history"] = {"present": False, "notes": [f"{HISTORY} not found; no history.csv written"]}
    report["inputs"] = dict(sorted(report["inputs"].items()))
    (out / "import_report.json").write_text(
        json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    )
    return {"out_dir": str(out), **report}
