"""The real public App Store catalogue (``data/raw/apple-appstore``, see ``data/raw/SOURCE.txt``).

Maps Kaggle's "Mobile App Store (7200 apps)" files onto appsim's catalogue schema::

    app_id          str    the App Store track id (e.g. "281656475")
    name            str    track_name
    category        str    prime_genre (23 genres; Games is 54% of apps)
    platform        str    always "ios"
    description     str    app_desc, up to 4,000 chars (the source truncated at 4,000)
    price           float  USD
    content_rating  str    cont_rating ("4+", "9+", "12+", "17+")
    user_rating     float  0-5 stars; 0 means unrated (rating_count == 0)
    rating_count    int    rating_count_tot, the popularity proxy (no installs column exists)
    size_bytes      int

Quirks handled: the description file comes in four parts with one header each and embedded newlines
(parsed with a real CSV parser); two descriptions are Excel damage ``#NAME?`` (kept as an empty
description and counted); 44 groups of identical descriptions are kept (they give score ties, which the
search breaks by app id).

The held-out split (``is_holdout``) is a stable hash: the first 8 bytes of
``sha256("appsim-holdout:" + app_id)`` read as a big-endian integer / 2**64 < ``holdout_share``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from appsim.errors import DataError

APPLE_META = "AppleStore.csv"
APPLE_DESC_PARTS = (
    "appleStore_description.csv",
    "appleStore_description2.csv",
    "appleStore_description3.csv",
    "appleStore_description4.csv",
)
CATALOGUE_COLUMNS = [
    "app_id",
    "name",
    "category",
    "platform",
    "description",
    "price",
    "content_rating",
    "user_rating",
    "rating_count",
    "size_bytes",
]
HOLDOUT_SALT = "appsim-holdout:"


def stable_unit_interval(key: str) -> float:
    """Map a string to [0, 1) with sha256 (stable across processes, unlike ``hash()``)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_holdout(app_id: str, share: float = 0.10) -> bool:
    return stable_unit_interval(HOLDOUT_SALT + str(app_id)) < share


def raw_files(raw_dir: str | Path) -> list[Path]:
    root = Path(raw_dir)
    return [root / APPLE_META, *(root / p for p in APPLE_DESC_PARTS)]


def load_apple_catalogue(raw_dir: str | Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """Read the App Store files into the catalogue schema (one row per app, sorted by app_id).

    Returns ``(apps, report)`` where ``report`` counts the quirks met. raises DataError naming the file
    when a file is missing or lacks a required column.
    """
    root = Path(raw_dir)
    for f in raw_files(root):
        if not f.is_file():
            raise DataError(f"missing raw data file {f}", path=str(f), check="exists")
    meta = pd.read_csv(root / APPLE_META, encoding="utf-8", dtype={"id": str})
    required = {"id", "track_name", "prime_genre", "price", "cont_rating", "user_rating", "rating_count_tot"}
    missing = required - set(meta.columns)
    if missing:
        raise DataError(f"{root / APPLE_META} lacks columns {sorted(missing)}", path=str(root / APPLE_META))
    parts = [
        pd.read_csv(root / p, encoding="utf-8", dtype={"id": str}, keep_default_na=False)
        for p in APPLE_DESC_PARTS
    ]
    desc = pd.concat(parts, ignore_index=True)[["id", "app_desc"]]
    desc = desc.drop_duplicates("id", keep="last")
    damaged = desc["app_desc"].str.strip().isin(["#NAME?", ""])
    desc.loc[damaged, "app_desc"] = ""
    apps = meta.merge(desc, on="id", how="left")
    apps = pd.DataFrame(
        {
            "app_id": apps["id"].astype(str),
            "name": apps["track_name"].fillna("").astype(str),
            "category": apps["prime_genre"].fillna("Unknown").astype(str),
            "platform": "ios",
            "description": apps["app_desc"].fillna("").astype(str),
            "price": pd.to_numeric(apps["price"], errors="coerce").fillna(0.0).astype(float),
            "content_rating": apps["cont_rating"].fillna("").astype(str),
            "user_rating": pd.to_numeric(apps["user_rating"], errors="coerce").fillna(0.0).astype(float),
            "rating_count": pd.to_numeric(apps["rating_count_tot"], errors="coerce").fillna(0).astype(int),
            "size_bytes": pd.to_numeric(apps["size_bytes"], errors="coerce").fillna(0).astype(int),
        }
    )
    n_before = len(apps)
    apps = apps.drop_duplicates("app_id", keep="last").sort_values("app_id", kind="stable")
    report = {
        "apps": len(apps),
        "duplicate_ids_dropped": n_before - len(apps),
        "missing_description": int((apps["description"] == "").sum()),
        "damaged_description_name_error": int(damaged.sum()),
        "duplicate_description_groups": int(
            apps[apps["description"] != ""].groupby("description").size().gt(1).sum()
        ),
        "non_ascii_names": int(apps["name"].map(lambda s: not s.isascii()).sum()),
        "categories": int(apps["category"].nunique()),
    }
    return apps.reset_index(drop=True)[CATALOGUE_COLUMNS], report


def split_holdout(apps: pd.DataFrame, share: float = 0.10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(catalogue, holdout)`` by the stable hash of ``app_id`` (see module docstring)."""
    mask = apps["app_id"].map(lambda a: is_holdout(a, share)).to_numpy(dtype=bool)
    return apps[~mask].reset_index(drop=True), apps[mask].reset_index(drop=True)
