"""Load a built catalogue (``apps.csv`` + one artifact per model version) into ``ModelVersion`` objects.

Loading never unpickles: vectors are memory-mapped ``.npy`` files and metadata is CSV. Any failed check
raises ArtifactError naming the file and the check, so a half-loaded version is never served.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from appsim.backends.encoders import load_encoder
from appsim.backends.index import ExactIndex
from appsim.data.artifacts import load_version_artifact
from appsim.domain import IndexBackend
from appsim.errors import ArtifactError
from appsim.services.similarity import ModelVersion

APPS_FILE = "apps.csv"


def read_apps(catalogue_dir: str | Path, name: str = APPS_FILE) -> pd.DataFrame:
    """Catalogue metadata: app_id (str), name, category, platform (+ any other columns)."""
    path = Path(catalogue_dir) / name
    if not path.is_file():
        raise ArtifactError(f"missing catalogue metadata {path}", path=str(path), check="exists")
    try:
        apps = pd.read_csv(path, dtype={"app_id": str}, keep_default_na=False, encoding="utf-8")
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot parse {path}: {e}", path=str(path), check="csv") from e
    missing = {"app_id", "name", "category", "platform"} - set(apps.columns)
    if missing:
        raise ArtifactError(f"{path} lacks columns {sorted(missing)}", path=str(path), check="columns")
    return apps


def load_model_version(
    catalogue_dir: str | Path,
    version: str,
    *,
    apps: pd.DataFrame | None = None,
    index_factory: type[IndexBackend] | None = None,
    verify: bool = True,
    subdir: str | None = None,
) -> ModelVersion:
    """Load ``<catalogue_dir>/<subdir or version>/`` with its encoder and an index over its vectors."""
    root = Path(catalogue_dir)
    art = load_version_artifact(root / (subdir or version), verify=verify)
    meta = read_apps(root) if apps is None else apps
    meta = meta.drop_duplicates("app_id", keep="last").set_index("app_id")
    ids = art.ids.astype(str)
    missing = np.setdiff1d(ids, meta.index.to_numpy(dtype=str))
    if missing.size:
        raise ArtifactError(
            f"{missing.size} ids in {art.path} have no row in {root / APPS_FILE} (e.g. {missing[0]!r})",
            path=str(art.path),
            check="ids-in-metadata",
        )
    aligned = meta.loc[ids]
    encoder = load_encoder(art.manifest, art.encoder_dir)
    mv = ModelVersion(
        name=version,
        ids=ids.astype(object),
        vectors=art.vectors,
        names=aligned["name"].astype(str).to_numpy(dtype=object),
        categories=aligned["category"].astype(str).to_numpy(dtype=object),
        platforms=aligned["platform"].astype(str).to_numpy(dtype=object),
        index=ExactIndex(art.vectors),  # replaced below with the id tiebreak
        encoder=encoder,
        manifest=art.manifest,
    )
    factory = index_factory or ExactIndex
    mv.index = factory(art.vectors, mv.tiebreak)  # type: ignore[call-arg]
    return mv
