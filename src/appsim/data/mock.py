"""A synthetic stand-in for the company's file set, with planted, documented structure.

:func:`generate_mock` writes the five files of the company format (see :mod:`appsim.data.company`)::

    mock_embeddings_v1.pkl      dict app_id -> ndarray (64,) float64          (layout "dict of vectors")
    mock_embeddings_v2.pkl      DataFrame: app_id + 128 float64 columns e0..e127  (layout "numeric columns")
    sample_apps.csv             app_id, app_name, super_category, app_platform
    historical_performance.csv  app_id, date, country, platform, age_group, gender, impressions, clicks,
                                event_count, mmp_offer_default_revenue
    README.md                   what the files are and what is planted

Everything is drawn from ``numpy.random.Generator(PCG64(seed))`` in a fixed order (never Python
``hash()``), so the same ``(n_apps, seed)`` gives byte-identical files under the same numpy / pandas
versions (a DataFrame pickle's bytes depend on the pandas version that wrote it).

Planted structure (:func:`simulate_mock` returns it as a :class:`MockWorld`)
----------------------------------------------------------------------------
* 7 super-categories x 4 sub-clusters. App ``i`` in sub-cluster ``s`` of category ``c`` has a latent
  ``z_i = C_c + S_s + A_i`` in R^16 with ``C_c ~ N(0, 1.5^2 I)``, ``S_s ~ N(0, 1.0^2 I)`` and
  ``A_i ~ N(0, 1.2^2 I)``.
* v2 (128-d) = ``z_i @ W2 + N(0, 1.0^2)`` with ``W2 ~ N(0, 1/16)``: centred, clean.
* v1 (64-d) = ``U[0, 1) + 0.12 * (z_i @ W1 + N(0, 1.5^2))`` with ``W1 ~ N(0, 1/16)``: un-normalised, shifted
  positive (mean pairwise cosine ~0.6) and noisier, so v2's neighbours share the category and sub-cluster
  more often than v1's.
* ``sample_apps.csv`` (rows shuffled): ~1% of ids appear twice (the later row has `` (old)`` removed from
  the name, i.e. the LAST row is the right one); ~1% of apps each have a blank app_name, super_category or
  app_platform; platform is written ``iOS`` / ``Android``. 3 ids are listed without any vector
  ("delisted") and 2 vector ids (in both pickles) have no CSV row ("orphans").
* History for ~30% of the apps (chosen at random), 5 + Poisson(35) rows each over 90 days from 2024-01-01:
  ``impressions = ceil(LogNormal(6.5, 1))``, ``clicks ~ Binomial(impressions, ctr)``,
  ``event_count ~ Binomial(clicks, cvr)``, revenue = ``event_count * arpu * country_mult * Gamma(4, 1/4)``.
  ``logit ctr = -3.6 + cat_ctr[c] (N(0, 0.3)) + sub_ctr[s] (N(0, 0.6)) + app (N(0, 0.2)) + segment``,
  ``logit cvr = -2.2 + sub_cvr[s] (N(0, 0.5)) + app (N(0, 0.2)) + segment``,
  ``arpu = exp(N(0.5, 0.4) per sub-cluster + N(0, 0.15) per app)`` USD.
  Segment effects (logit): Games & Betting x 18-24 CTR +0.5; Games & Betting x 55+ CTR -0.4;
  Finance & Shopping x 45-54 CVR +0.4; country IN CTR +0.2 / JP CTR -0.2; revenue multipliers US 1.0,
  GB 0.9, DE 0.9, JP 1.2, BR 0.5, IN 0.3. Gender has NO effect (a null for segment tests).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CATEGORIES: dict[str, tuple[str, ...]] = {
    "Games & Betting": ("Puzzle", "Casino", "Action", "Casual"),
    "Utilities & Productivity": ("Notes", "VPN", "Scanner", "Calendar"),
    "Education & Reference": ("Languages", "Kids", "Dictionary", "Exam Prep"),
    "Social & Communication": ("Messaging", "Dating", "Forums", "Video Chat"),
    "Health & Fitness": ("Workout", "Meditation", "Diet", "Running"),
    "Finance & Shopping": ("Banking", "Crypto", "Marketplace", "Coupons"),
    "Entertainment & Media": ("Streaming", "Music", "News", "Podcasts"),
}
PLATFORMS = ("iOS", "Android")
COUNTRIES = ("US", "GB", "DE", "JP", "BR", "IN")
COUNTRY_P = (0.30, 0.12, 0.12, 0.10, 0.16, 0.20)
COUNTRY_REVENUE = {"US": 1.0, "GB": 0.9, "DE": 0.9, "JP": 1.2, "BR": 0.5, "IN": 0.3}
COUNTRY_CTR = {"IN": 0.2, "JP": -0.2}
AGE_GROUPS = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_P = (0.22, 0.28, 0.22, 0.16, 0.12)
GENDERS = ("female", "male", "unknown")
GENDER_P = (0.46, 0.46, 0.08)
#: (category, column, value) -> logit lift on (ctr | cvr)
SEGMENT_LIFTS: dict[tuple[str, str, str], tuple[str, float]] = {
    ("Games & Betting", "age_group", "18-24"): ("ctr", 0.5),
    ("Games & Betting", "age_group", "55+"): ("ctr", -0.4),
    ("Finance & Shopping", "age_group", "45-54"): ("cvr", 0.4),
}
LATENT = 16
DIM_V1, DIM_V2 = 64, 128
HISTORY_SHARE = 0.30
START = np.datetime64("2024-01-01")
DAYS = 90
FILES = (
    "mock_embeddings_v1.pkl",
    "mock_embeddings_v2.pkl",
    "sample_apps.csv",
    "historical_performance.csv",
    "README.md",
)
PICKLE_PROTOCOL = 4


@dataclass
class MockWorld:
    """The ground truth behind one mock data set (``n`` = apps with vectors, orphans included).

    ``ids`` (n,) str; ``category`` (n,) str; ``subcluster`` (n,) int in [0, 28) (``category index * 4 +
    sub``); ``platform`` (n,) str; ``v1`` (n, 64) / ``v2`` (n, 128) float64 raw vectors; ``ctr_logit``,
    ``cvr_logit`` (n,) base logits and ``arpu`` (n,) USD per event, before segment effects;
    ``has_history`` (n,) bool; ``orphans`` ids with vectors but no CSV row; ``delisted`` ids in the CSV
    without vectors.
    """

    ids: list[str]
    category: np.ndarray
    subcluster: np.ndarray
    platform: np.ndarray
    v1: np.ndarray
    v2: np.ndarray
    ctr_logit: np.ndarray
    cvr_logit: np.ndarray
    arpu: np.ndarray
    has_history: np.ndarray
    orphans: list[str]
    delisted: list[str]


def _ids(rng: np.random.Generator, n: int) -> list[str]:
    width = max(5, len(str(2 * n)))
    low = 10 ** (width - 1)
    nums = rng.choice(9 * low, size=n, replace=False) + low
    return [f"APP_{int(x)}" for x in nums]


def simulate_mock(n_apps: int, seed: int) -> MockWorld:
    """Draw the ground truth for ``n_apps`` apps (>= 30; 2 of them are orphans without a CSV row) and
    ``seed``. Deterministic. raises ValueError for ``n_apps < 30``."""
    if n_apps < 30:
        raise ValueError("n_apps must be >= 30")
    rng = np.random.Generator(np.random.PCG64(seed))
    cats = list(CATEGORIES)
    n_sub = sum(len(v) for v in CATEGORIES.values())
    per_cat = len(next(iter(CATEGORIES.values())))
    ids_all = _ids(rng, n_apps + 3)
    ids, delisted = ids_all[:n_apps], ids_all[n_apps:]
    sub = rng.integers(0, n_sub, size=n_apps)
    cat_idx = sub // per_cat
    category = np.array([cats[i] for i in cat_idx], dtype=object)
    platform = np.array(PLATFORMS, dtype=object)[rng.integers(0, 2, size=n_apps)]
    c_centres = rng.normal(0, 1.5, size=(len(cats), LATENT))
    s_offsets = rng.normal(0, 1.0, size=(n_sub, LATENT))
    z = c_centres[cat_idx] + s_offsets[sub] + rng.normal(0, 1.2, size=(n_apps, LATENT))
    w2 = rng.normal(0, 1 / np.sqrt(LATENT), size=(LATENT, DIM_V2))
    w1 = rng.normal(0, 1 / np.sqrt(LATENT), size=(LATENT, DIM_V1))
    v2 = z @ w2 + rng.normal(0, 1.0, size=(n_apps, DIM_V2))
    v1 = rng.random((n_apps, DIM_V1)) + 0.12 * (z @ w1 + rng.normal(0, 1.5, size=(n_apps, DIM_V1)))
    cat_ctr = rng.normal(0, 0.3, size=len(cats))
    sub_ctr = rng.normal(0, 0.6, size=n_sub)
    sub_cvr = rng.normal(0, 0.5, size=n_sub)
    sub_arpu = rng.normal(0.5, 0.4, size=n_sub)
    ctr_logit = -3.6 + cat_ctr[cat_idx] + sub_ctr[sub] + rng.normal(0, 0.2, size=n_apps)
    cvr_logit = -2.2 + sub_cvr[sub] + rng.normal(0, 0.2, size=n_apps)
    arpu = np.exp(sub_arpu[sub] + rng.normal(0, 0.15, size=n_apps))
    has_history = rng.random(n_apps) < HISTORY_SHARE
    orphan_rows = rng.choice(n_apps, size=2, replace=False)
    has_history[orphan_rows] = False
    return MockWorld(
        ids=ids,
        category=category,
        subcluster=sub.astype(np.int64),
        platform=platform,
        v1=v1,
        v2=v2,
        ctr_logit=ctr_logit,
        cvr_logit=cvr_logit,
        arpu=arpu,
        has_history=has_history,
        orphans=[ids[i] for i in sorted(orphan_rows.tolist())],
        delisted=delisted,
    )


def _sample_apps(world: MockWorld, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, Any]]:
    orphans = set(world.orphans)
    rows = [i for i, a in enumerate(world.ids) if a not in orphans]
    names = [f"App {hashlib.sha256(f'name:{world.ids[i]}'.encode()).hexdigest()[:8]}" for i in rows]
    df = pd.DataFrame(
        {
            "app_id": [world.ids[i] for i in rows],
            "app_name": names,
            "super_category": [world.category[i] for i in rows],
            "app_platform": [world.platform[i] for i in rows],
        },
        dtype=object,
    )
    delisted = pd.DataFrame(
        {
            "app_id": world.delisted,
            "app_name": [f"Delisted {k}" for k in range(len(world.delisted))],
            "super_category": [list(CATEGORIES)[k % len(CATEGORIES)] for k in range(len(world.delisted))],
            "app_platform": ["iOS"] * len(world.delisted),
        },
        dtype=object,
    )
    df = pd.concat([df, delisted], ignore_index=True)
    df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
    k = max(2, len(rows) // 100)
    picks = rng.choice(len(df), size=4 * k, replace=False)
    dup, miss_name, miss_cat, miss_plat = (picks[j * k : (j + 1) * k] for j in range(4))
    # duplicates: the earlier row carries a stale name; the later (kept) row is the right one
    stale = df.iloc[np.sort(dup)].copy()
    stale["app_name"] = stale["app_name"] + " (old)"
    df.loc[miss_name, "app_name"] = None
    df.loc[miss_cat, "super_category"] = None
    df.loc[miss_plat, "app_platform"] = None
    # each stale copy goes right before its original (sort key 2 * position, originals 2 * position + 1)
    merged = pd.concat([df, stale], ignore_index=True)
    key = np.concatenate([np.arange(len(df)) * 2 + 1, np.sort(dup) * 2])
    merged = merged.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)
    planted = {
        "duplicate_ids": int(k),
        "duplicate_examples": sorted(df["app_id"].iloc[dup].tolist())[:5],
        "missing_app_name": int(k),
        "missing_super_category": int(k),
        "missing_app_platform": int(k),
        "delisted_ids_without_vectors": list(world.delisted),
        "orphan_ids_without_metadata": list(world.orphans),
    }
    return merged, planted


def _history(world: MockWorld, rng: np.random.Generator) -> pd.DataFrame:
    idx = np.flatnonzero(world.has_history)
    counts = 5 + rng.poisson(35, size=idx.size)
    app = np.repeat(idx, counts)
    m = app.size
    day = rng.integers(0, DAYS, size=m)
    country = rng.choice(len(COUNTRIES), size=m, p=COUNTRY_P)
    age = rng.choice(len(AGE_GROUPS), size=m, p=AGE_P)
    gender = rng.choice(len(GENDERS), size=m, p=GENDER_P)
    ctr = world.ctr_logit[app].copy()
    cvr = world.cvr_logit[app].copy()
    for c, lift in COUNTRY_CTR.items():
        ctr[country == COUNTRIES.index(c)] += lift
    cats = world.category[app]
    columns = {"age_group": (age, AGE_GROUPS), "country": (country, COUNTRIES), "gender": (gender, GENDERS)}
    for (cat, col, val), (target, lift) in SEGMENT_LIFTS.items():
        codes, labels = columns[col]
        mask = (cats == cat) & (codes == labels.index(val))
        (ctr if target == "ctr" else cvr)[mask] += lift
    p_ctr = 1 / (1 + np.exp(-ctr))
    p_cvr = 1 / (1 + np.exp(-cvr))
    impressions = np.ceil(rng.lognormal(6.5, 1.0, size=m)).astype(np.int64)
    clicks = rng.binomial(impressions, p_ctr)
    events = rng.binomial(clicks, p_cvr)
    cmult = np.array([COUNTRY_REVENUE[c] for c in COUNTRIES])[country]
    revenue = events * world.arpu[app] * cmult * rng.gamma(4.0, 0.25, size=m)
    order = np.lexsort((gender, age, country, day, app))
    dates = (START + day.astype("timedelta64[D]")).astype(str)
    df = pd.DataFrame(
        {
            "app_id": np.array(world.ids, dtype=object)[app],
            "date": dates,
            "country": np.array(COUNTRIES, dtype=object)[country],
            "platform": [str(p).lower() for p in world.platform[app]],
            "age_group": np.array(AGE_GROUPS, dtype=object)[age],
            "gender": np.array(GENDERS, dtype=object)[gender],
            "impressions": impressions,
            "clicks": clicks,
            "event_count": events,
            "mmp_offer_default_revenue": np.round(revenue, 4),
        }
    )
    return df.iloc[order].reset_index(drop=True)


def _readme(n_apps: int, seed: int, summary: dict[str, Any]) -> str:
    p = summary["planted"]
    cats = "\n".join(f"  - {c}: {', '.join(s)}" for c, s in CATEGORIES.items())
    return f"""# Mock company data (synthetic)

Generated by `appsim.data.mock.generate_mock(n_apps={n_apps}, seed={seed})`. **All data is synthetic.**

## Files

- `mock_embeddings_v1.pkl`: dict `app_id -> numpy.ndarray (64,) float64`. Un-normalised, shifted positive
  (uniform noise in [0, 1) plus a weak signal): pairwise cosines are high (mean ~0.6).
- `mock_embeddings_v2.pkl`: pandas DataFrame, column `app_id` plus 128 float64 columns `e0` .. `e127`.
  Centred and cleaner than v1.
- `sample_apps.csv`: `app_id, app_name, super_category, app_platform` (platform `iOS` / `Android`).
- `historical_performance.csv`: one row per app x day x segment cell served: `app_id, date, country,
  platform, age_group, gender, impressions, clicks, event_count, mmp_offer_default_revenue` (USD).
- `README.md`: this file.

## Planted structure

- {len(CATEGORIES)} super-categories, 4 sub-clusters each:
{cats}
- Embeddings come from a latent position category centre + sub-cluster offset + app noise; v2 separates
  categories and sub-clusters better than v1.
- Campaign rates depend on the sub-cluster (CTR, conversion rate, revenue per event), so an app's
  nearest neighbours carry signal about its performance; v2's neighbours more than v1's.
- Segment lifts (logit): Games & Betting x 18-24 CTR +0.5, Games & Betting x 55+ CTR -0.4,
  Finance & Shopping x 45-54 conversion +0.4, IN CTR +0.2, JP CTR -0.2. Revenue per event by country:
  US 1.0, GB 0.9, DE 0.9, JP 1.2, BR 0.5, IN 0.3. Gender has no effect.
- History exists for {summary["history_apps"]} of {n_apps} apps ({summary["history_rows"]} rows).

## Deliberate data problems

- {p["duplicate_ids"]} duplicated app ids in `sample_apps.csv` (the earlier row has a stale name ending
  in " (old)"; keep the last row).
- {p["missing_app_name"]} blank `app_name`, {p["missing_super_category"]} blank `super_category`,
  {p["missing_app_platform"]} blank `app_platform`.
- Ids in `sample_apps.csv` without vectors: {", ".join(p["delisted_ids_without_vectors"])}.
- Ids with vectors but no `sample_apps.csv` row: {", ".join(p["orphan_ids_without_metadata"])}.
"""


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def generate_mock(n_apps: int, seed: int, out_dir: str | Path) -> dict[str, Any]:
    """Write the five mock files into ``out_dir`` (created) for ``n_apps`` apps (>= 30) and ``seed``.

    Returns a summary: ``n_apps, seed, out_dir, files`` (name -> sha256), ``categories``,
    ``n_subclusters``, ``history_apps``, ``history_rows``, ``planted`` (the deliberate problems). Same
    arguments -> byte-identical files. raises ValueError for ``n_apps < 30``.
    """
    world = simulate_mock(n_apps, seed)
    rng = np.random.Generator(np.random.PCG64([seed, 1]))  # a second stream: files, not the world
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    apps, planted = _sample_apps(world, rng)
    hist = _history(world, rng)

    v1 = {a: np.ascontiguousarray(world.v1[i]) for i, a in enumerate(world.ids)}
    perm = rng.permutation(len(world.ids))
    v2 = pd.concat(
        [
            pd.DataFrame({"app_id": np.array(world.ids, dtype=object)[perm]}, dtype=object),
            pd.DataFrame(world.v2[perm], columns=[f"e{j}" for j in range(DIM_V2)]),
        ],
        axis=1,
    )
    blobs: dict[str, bytes] = {
        "mock_embeddings_v1.pkl": pickle.dumps(v1, protocol=PICKLE_PROTOCOL),
        "mock_embeddings_v2.pkl": pickle.dumps(v2, protocol=PICKLE_PROTOCOL),
    }
    buf = io.StringIO()
    apps.to_csv(buf, index=False, lineterminator="\n")
    blobs["sample_apps.csv"] = buf.getvalue().encode("utf-8")
    buf = io.StringIO()
    hist.to_csv(buf, index=False, lineterminator="\n")
    blobs["historical_performance.csv"] = buf.getvalue().encode("utf-8")
    summary: dict[str, Any] = {
        "n_apps": n_apps,
        "seed": seed,
        "out_dir": str(out),
        "categories": list(CATEGORIES),
        "n_subclusters": sum(len(v) for v in CATEGORIES.values()),
        "history_apps": int(world.has_history.sum()),
        "history_rows": len(hist),
        "planted": planted,
    }
    blobs["README.md"] = _readme(n_apps, seed, summary).encode("utf-8")
    for name in FILES:
        (out / name).write_bytes(blobs[name])
    summary["files"] = {name: _sha(blobs[name]) for name in FILES}
    return summary
