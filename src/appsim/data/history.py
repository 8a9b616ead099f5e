"""SIMULATED campaign history for a real app catalogue.

Real campaign history does not exist publicly, so appsim simulates one for the real App Store catalogue
(``data/raw/apple-appstore``) in the company's ``historical_performance.csv`` format. **Everything this
module writes is simulated**: the file is ``history_simulated.csv`` and its manifest says
``"simulated": true``. It exists to exercise and evaluate the prediction service (whose targets, the
per-app true rates, are known here, see :func:`true_rates`), never to describe real apps.

Output format (one row per campaign-day x segment cell that was served)::

    app_id                    str    the catalogue's app id
    date                      str    ISO day "YYYY-MM-DD"
    country                   str    US GB DE FR JP BR IN CA
    platform                  str    the app's platform (``apps.platform``, "ios" for the App Store)
    age_group                 str    18-24 25-34 35-44 45-54 55+
    gender                    str    female male unknown
    impressions               int    >= 1
    clicks                    int    <= impressions
    event_count               int    installs, <= clicks
    mmp_offer_default_revenue float  USD, >= 0, 0 when event_count == 0, 4 decimals

Generative model (all parameters in :class:`SimulationParams`, defaults in brackets)
-------------------------------------------------------------------------------------
Per app ``i`` with genre ``g``, rating count ``R``, user rating ``r`` (an unrated app, ``R == 0``, gets the
neutral ``r = 3.5``), ``paid = [price > 0]``::

    logit ctr_i  = a0 [-4.9] + genre_ctr[g] + b1 [0.06] log1p(R) + b2 [0.05] (r - 3.5) + b3 [-0.30] paid
                   + u_i,            u_i ~ N(0, s_ctr [0.35])
    logit ir_i   = c0 [-1.3] + genre_install[g] + c1 [0.04] log1p(R) + c2 [0.10] (r - 3.5)
                   + c3 [-1.0] paid + v_i,   v_i ~ N(0, s_install [0.30])    (paid apps convert less)
    log m_i      = d0 [log 0.8] + genre_revenue[g] + d1 [0.35] log1p(price) + w_i,
                   w_i ~ N(0, s_revenue [0.35])
    mu_imp_i     = log(600) + e1 [0.08] log1p(R) + z_i,  z_i ~ N(0, s_scale [0.5])

``ctr_i`` is the click-through rate per impression, ``ir_i`` the install rate per click and ``m_i`` the mean
revenue per install in USD, all before segment effects. A segment cell ``c = (country, age_group, gender)``
multiplies them: ``ctr_ic = min(ctr_i * M_ctr[c] * I_ctr[g, c], 0.5)``, ``ir_ic = min(ir_i * M_ins[c] *
I_ins[g, c], 0.95)``, ``m_ic = m_i * M_rev[c] * I_rev[g, c]`` where ``M[c]`` is the product of the
country, age and gender multipliers and ``I[g, c]`` the planted genre x segment interactions (Games x 18-24
CTR x1.5, Games x 55+ CTR x0.7, Health & Fitness x female CTR x1.3, Sports x male CTR x1.3, Finance x
35-44/45-54 installs x1.3, Social Networking x 18-24 installs x1.25, Shopping x female installs x1.2,
Games x JP revenue x1.5).

Campaign: one flight of ``D ~ U{14..42}`` days starting ``U{0..545}`` days after 2023-01-01. On each day
each of the 8 x 5 x 3 = 120 cells is served independently with probability ``lam [2.2] * pi_c`` where
``pi_c`` is the product of the country/age/gender shares (so about 2.2 rows per day, ~62 rows per app).
Per served cell::

    impressions ~ max(1, round(LogNormal(mu_imp_i, s_row [0.9])))
    clicks      ~ Binomial(impressions, ctr_ic)
    installs    ~ Binomial(clicks, ir_ic)                       (event_count)
    revenue     = installs * m_ic * exp(s_k eps - s_k^2 / 2),   eps ~ N(0, 1),
                  s_k^2 = log(1 + (exp(s_inst^2) - 1) / installs),  s_inst [0.8]

i.e. each install's revenue is LogNormal with mean ``m_ic`` and log-sd ``s_inst``; the row's average of
``installs`` of them is drawn by the Fenton-Wilkinson approximation (a lognormal with the exact mean and
variance of the average; Fenton 1960, IRE Trans. Commun. Syst. 8(1):57-67).

Which apps have history: ``sha256(selection_salt + ":" + app_id)``'s first 8 bytes, big-endian, / 2**64
``< share_with_history`` (default 0.35): stable across processes and seeds and independent of the other
apps (never Python ``hash()``).

Determinism: every random draw of app ``i`` comes from ``Generator(PCG64([seed, k_i, stream]))`` where
``k_i`` is the first 8 bytes of ``sha256("appsim-app:" + app_id)`` (stream 0: the latent factors
``u, v, w, z`` as standard normals; stream 1: the campaign). So the same ``seed`` gives the same bytes, and
an app's history depends only on ``(seed, app id, its metadata, params)``: adding or removing other apps
changes nothing for it. With the defaults, the 7,197-app catalogue gives ~2,500 apps with history and
~155k rows (~10 MB of CSV).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from appsim.errors import DataError, ValidationError

HISTORY_FILE = "history_simulated.csv"
HISTORY_MANIFEST_FILE = "history_simulated.manifest.json"
MODEL_NAME = "appsim-simulated-history/v1 (logit-binomial rates, lognormal revenue, segment multipliers)"
HISTORY_COLUMNS = [
    "app_id",
    "date",
    "country",
    "platform",
    "age_group",
    "gender",
    "impressions",
    "clicks",
    "event_count",
    "mmp_offer_default_revenue",
]
REQUIRED_APP_COLUMNS = ("app_id", "category", "price", "user_rating", "rating_count")
_APP_KEY_SALT = "appsim-app:"
_LATENT_STREAM = 0
_CAMPAIGN_STREAM = 1
_START_DATE = "2023-01-01"


def _default_genre_ctr() -> dict[str, float]:
    return {
        "Games": 0.30, "Entertainment": 0.15, "Social Networking": 0.25, "Photo & Video": 0.10,
        "Music": 0.05, "Sports": 0.10, "Shopping": 0.20, "Lifestyle": 0.05, "Education": -0.10,
        "Utilities": -0.05, "Productivity": -0.10, "Finance": -0.20, "Business": -0.30,
        "Reference": -0.25, "Book": -0.10, "News": 0.05, "Weather": 0.05, "Food & Drink": 0.10,
        "Navigation": -0.10, "Medical": -0.35, "Catalogs": -0.30,
    }  # fmt: skip


def _default_genre_install() -> dict[str, float]:
    return {
        "Games": 0.10, "Utilities": 0.20, "Photo & Video": 0.15, "Social Networking": 0.10,
        "Entertainment": 0.05, "Education": -0.05, "Finance": -0.30, "Business": -0.20,
        "Medical": -0.30, "Productivity": 0.05, "Weather": 0.15, "Book": -0.10, "Catalogs": -0.20,
    }  # fmt: skip


def _default_genre_revenue() -> dict[str, float]:
    return {
        "Games": 0.40, "Finance": 0.90, "Shopping": 0.50, "Business": 0.60, "Travel": 0.50,
        "Health & Fitness": 0.30, "Utilities": -0.30, "Entertainment": 0.10, "Photo & Video": -0.10,
        "Social Networking": 0.20, "Medical": 0.40, "Productivity": 0.30, "Weather": -0.20,
    }  # fmt: skip


def _default_countries() -> dict[str, tuple[float, float, float, float]]:
    # value: (impression share, ctr multiplier, install multiplier, revenue multiplier)
    return {
        "US": (0.30, 1.00, 1.00, 1.00), "GB": (0.08, 1.00, 1.00, 0.90), "DE": (0.08, 0.90, 0.95, 0.85),
        "FR": (0.07, 0.90, 0.95, 0.80), "JP": (0.10, 0.85, 0.90, 1.10), "BR": (0.12, 1.25, 0.90, 0.35),
        "IN": (0.18, 1.40, 0.80, 0.20), "CA": (0.07, 1.00, 1.00, 0.95),
    }  # fmt: skip


def _default_ages() -> dict[str, tuple[float, float, float, float]]:
    return {
        "18-24": (0.22, 1.15, 1.05, 0.70), "25-34": (0.30, 1.05, 1.05, 1.00),
        "35-44": (0.22, 1.00, 1.00, 1.15), "45-54": (0.15, 0.90, 0.95, 1.20), "55+": (0.11, 0.80, 0.90, 1.10),
    }  # fmt: skip


def _default_genders() -> dict[str, tuple[float, float, float, float]]:
    return {
        "female": (0.46, 1.00, 1.00, 1.00),
        "male": (0.46, 1.00, 1.00, 1.00),
        "unknown": (0.08, 0.90, 1.00, 0.90),
    }


def _default_interactions() -> list[tuple[str, str, str, str, float]]:
    # (genre, segment column, segment value, metric in {"ctr", "install", "revenue"}, multiplier)
    return [
        ("Games", "age_group", "18-24", "ctr", 1.5),
        ("Games", "age_group", "55+", "ctr", 0.7),
        ("Health & Fitness", "gender", "female", "ctr", 1.3),
        ("Sports", "gender", "male", "ctr", 1.3),
        ("Finance", "age_group", "35-44", "install", 1.3),
        ("Finance", "age_group", "45-54", "install", 1.3),
        ("Social Networking", "age_group", "18-24", "install", 1.25),
        ("Shopping", "gender", "female", "install", 1.2),
        ("Games", "country", "JP", "revenue", 1.5),
    ]


@dataclass(frozen=True)
class SimulationParams:
    """Every parameter of the generative model (see the module docstring for the equations).

    Rates are per impression (CTR) and per click (install rate); revenue is in USD; genre effects of the
    rates are on the logit scale, of revenue on the log scale; genres not listed get 0. Segment tables map
    a value to ``(share, ctr multiplier, install multiplier, revenue multiplier)``; the shares of a table
    must sum to 1. ``raises ValidationError`` (from :meth:`validate`) on inconsistent values.
    """

    ctr_intercept: float = -4.9
    ctr_log_rating_count: float = 0.06
    ctr_user_rating: float = 0.05
    ctr_paid: float = -0.30
    ctr_latent_sd: float = 0.35
    genre_ctr: dict[str, float] = field(default_factory=_default_genre_ctr)
    install_intercept: float = -1.3
    install_log_rating_count: float = 0.04
    install_user_rating: float = 0.10
    install_paid: float = -1.0
    install_latent_sd: float = 0.30
    genre_install: dict[str, float] = field(default_factory=_default_genre_install)
    revenue_log_intercept: float = math.log(0.8)
    revenue_log1p_price: float = 0.35
    revenue_latent_sd: float = 0.35
    revenue_per_install_log_sd: float = 0.8
    genre_revenue: dict[str, float] = field(default_factory=_default_genre_revenue)
    neutral_user_rating: float = 3.5
    impressions_log_median: float = math.log(600.0)
    impressions_log_rating_count: float = 0.08
    impressions_app_sd: float = 0.5
    impressions_row_sd: float = 0.9
    countries: dict[str, tuple[float, float, float, float]] = field(default_factory=_default_countries)
    age_groups: dict[str, tuple[float, float, float, float]] = field(default_factory=_default_ages)
    genders: dict[str, tuple[float, float, float, float]] = field(default_factory=_default_genders)
    interactions: list[tuple[str, str, str, str, float]] = field(default_factory=_default_interactions)
    cells_per_day: float = 2.2
    min_days: int = 14
    max_days: int = 42
    start_window_days: int = 546
    max_ctr: float = 0.5
    max_install_rate: float = 0.95
    selection_salt: str = "appsim-history-v1"

    def validate(self) -> None:
        """Raise ``ValidationError`` when a parameter is out of its domain."""
        for name in ("countries", "age_groups", "genders"):
            table = getattr(self, name)
            if not table:
                raise ValidationError(f"{name} must not be empty", field=name)
            share = sum(v[0] for v in table.values())
            if abs(share - 1.0) > 1e-6 or any(len(v) != 4 or min(v) < 0 for v in table.values()):
                raise ValidationError(f"{name}: shares must sum to 1 and values be >= 0", field=name)
        for name in ("ctr_latent_sd", "install_latent_sd", "revenue_latent_sd", "revenue_per_install_log_sd",
                     "impressions_app_sd", "impressions_row_sd"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValidationError(f"{name} must be >= 0", field=name)
        if not 1 <= self.min_days <= self.max_days or self.start_window_days < 1 or self.cells_per_day <= 0:
            raise ValidationError("need 1 <= min_days <= max_days, start_window_days >= 1, cells_per_day > 0")
        if not (0 < self.max_ctr <= 1 and 0 < self.max_install_rate <= 1):
            raise ValidationError("max_ctr and max_install_rate must be in (0, 1]")
        columns = {"country": self.countries, "age_group": self.age_groups, "gender": self.genders}
        for genre, col, value, metric, mult in self.interactions:
            if col not in columns or value not in columns[col] or metric not in ("ctr", "install", "revenue"):
                raise ValidationError(
                    f"bad interaction {(genre, col, value, metric, mult)!r}", field="interactions"
                )
            if mult < 0:
                raise ValidationError("interaction multipliers must be >= 0", field="interactions")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters (tuples become lists)."""
        out: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return out


# ----------------------------------------------------------------------------------------------- helpers


def _sha_u64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def history_selected(
    app_id: str, share_with_history: float, salt: str = SimulationParams.selection_salt
) -> bool:
    """Whether ``app_id`` has simulated history: ``sha256(salt + ":" + app_id)[:8] / 2**64 < share``."""
    return _sha_u64(f"{salt}:{app_id}") / 2.0**64 < share_with_history


def _check_inputs(apps: pd.DataFrame, seed: int, share: float, params: SimulationParams) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValidationError(f"seed must be a non-negative integer, got {seed!r}", field="seed")
    if not 0.0 <= share <= 1.0:
        raise ValidationError(
            f"share_with_history must be in [0, 1], got {share!r}", field="share_with_history"
        )
    params.validate()
    missing = [c for c in REQUIRED_APP_COLUMNS if c not in apps.columns]
    if missing:
        raise DataError(f"apps frame lacks columns {missing}", check="columns", missing=missing)
    ids = apps["app_id"].astype(str)
    if ids.duplicated().any():
        dup = ids[ids.duplicated()].iloc[0]
        raise DataError(f"duplicate app_id {dup!r} in apps frame", check="unique-ids")


@dataclass
class _Grid:
    """The 120 segment cells: labels, shares ``pi`` and per-genre multipliers (cached)."""

    countries: np.ndarray
    ages: np.ndarray
    genders: np.ndarray
    pi: np.ndarray
    base: dict[str, np.ndarray]
    params: SimulationParams
    _cache: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def build(cls, params: SimulationParams) -> _Grid:
        tables = (params.countries, params.age_groups, params.genders)
        keys = [list(t) for t in tables]
        vals = [np.asarray([t[k] for k in ks], dtype=np.float64) for t, ks in zip(tables, keys, strict=True)]
        ci, ai, gi = (a.ravel() for a in np.meshgrid(*(np.arange(len(k)) for k in keys), indexing="ij"))
        pi = vals[0][ci, 0] * vals[1][ai, 0] * vals[2][gi, 0]
        base = {
            metric: vals[0][ci, j] * vals[1][ai, j] * vals[2][gi, j]
            for j, metric in ((1, "ctr"), (2, "install"), (3, "revenue"))
        }
        labels = [np.asarray(k, dtype=object) for k in keys]
        return cls(labels[0][ci], labels[1][ai], labels[2][gi], pi, base, params)

    def multipliers(self, genre: str) -> dict[str, np.ndarray]:
        if genre not in self._cache:
            mult = {k: v.copy() for k, v in self.base.items()}
            cols = {"country": self.countries, "age_group": self.ages, "gender": self.genders}
            for g, col, value, metric, m in self.params.interactions:
                if g == genre:
                    mult[metric][cols[col] == value] *= m
            self._cache[genre] = mult
        return self._cache[genre]


@dataclass
class _AppModel:
    """Per-app quantities of the model, arrays aligned with ``app_id`` (sorted by app id)."""

    app_id: np.ndarray
    category: np.ndarray
    platform: np.ndarray
    price: np.ndarray
    has_history: np.ndarray
    latent: np.ndarray  # (n, 4) standard normals: ctr, install, revenue, impression scale
    ctr: np.ndarray
    install_rate: np.ndarray
    revenue_per_install: np.ndarray
    imp_mu: np.ndarray


def _logistic(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def _app_model(apps: pd.DataFrame, seed: int, share: float, params: SimulationParams) -> _AppModel:
    frame = apps.assign(app_id=apps["app_id"].astype(str)).sort_values("app_id", kind="mergesort")
    app_id = frame["app_id"].to_numpy(dtype=object)
    category = frame["category"].fillna("").astype(str).to_numpy(dtype=object)
    platform = (
        frame["platform"].fillna("ios").astype(str).to_numpy(dtype=object)
        if "platform" in frame
        else np.full(len(frame), "ios", dtype=object)
    )
    price = pd.to_numeric(frame["price"], errors="coerce").fillna(0.0).clip(lower=0).to_numpy(np.float64)
    count = (
        pd.to_numeric(frame["rating_count"], errors="coerce").fillna(0.0).clip(lower=0).to_numpy(np.float64)
    )
    rating = pd.to_numeric(frame["user_rating"], errors="coerce").fillna(0.0).to_numpy(np.float64)
    rating = np.where(count > 0, rating, params.neutral_user_rating) - params.neutral_user_rating
    paid = (price > 0).astype(np.float64)
    log_count = np.log1p(count)

    latent = np.empty((len(app_id), 4), dtype=np.float64)
    for i, a in enumerate(app_id):
        key = _sha_u64(_APP_KEY_SALT + a)
        latent[i] = np.random.Generator(np.random.PCG64([seed, key, _LATENT_STREAM])).standard_normal(4)

    p = params
    g_ctr = np.asarray([p.genre_ctr.get(g, 0.0) for g in category], dtype=np.float64)
    g_ins = np.asarray([p.genre_install.get(g, 0.0) for g in category], dtype=np.float64)
    g_rev = np.asarray([p.genre_revenue.get(g, 0.0) for g in category], dtype=np.float64)
    ctr = _logistic(
        p.ctr_intercept + g_ctr + p.ctr_log_rating_count * log_count + p.ctr_user_rating * rating
        + p.ctr_paid * paid + p.ctr_latent_sd * latent[:, 0]
    )  # fmt: skip
    ir = _logistic(
        p.install_intercept + g_ins + p.install_log_rating_count * log_count + p.install_user_rating * rating
        + p.install_paid * paid + p.install_latent_sd * latent[:, 1]
    )  # fmt: skip
    rpi = np.exp(p.revenue_log_intercept + g_rev + p.revenue_log1p_price * np.log1p(price)
                 + p.revenue_latent_sd * latent[:, 2])  # fmt: skip
    imp_mu = (
        p.impressions_log_median
        + p.impressions_log_rating_count * log_count
        + p.impressions_app_sd * latent[:, 3]
    )
    has = np.asarray([history_selected(a, share, p.selection_salt) for a in app_id], dtype=bool)
    return _AppModel(app_id, category, platform, price, has, latent, ctr, ir, rpi, imp_mu)


# ------------------------------------------------------------------------------------------------ public


def simulate_history(
    apps: pd.DataFrame,
    seed: int,
    share_with_history: float = 0.35,
    params: SimulationParams | None = None,
) -> pd.DataFrame:
    """SIMULATED campaign history of ``apps`` in the ``historical_performance.csv`` format.

    ``apps``: the catalogue, one row per app, columns ``app_id, category, price, user_rating,
    rating_count`` (``platform``, ``name``, ``content_rating`` optional; platform defaults to "ios").
    Returns ``HISTORY_COLUMNS`` (see the module docstring), sorted by ``app_id`` then date then cell;
    only the apps selected by :func:`history_selected` (about ``share_with_history`` of them) have rows.
    Deterministic for ``seed``. Raises ``ValidationError`` for a bad seed/share/params, ``DataError``
    for missing columns or duplicate app ids.
    """
    params = params or SimulationParams()
    _check_inputs(apps, seed, share_with_history, params)
    model = _app_model(apps, seed, share_with_history, params)
    grid = _Grid.build(params)
    q = np.minimum(1.0, params.cells_per_day * grid.pi)
    s_inst2 = math.expm1(params.revenue_per_install_log_sd**2)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("app", "day", "cell", "imp", "clk", "ins", "rev")}
    for i in np.flatnonzero(model.has_history):
        mult = grid.multipliers(model.category[i])
        key = _sha_u64(_APP_KEY_SALT + model.app_id[i])
        rng = np.random.Generator(np.random.PCG64([seed, key, _CAMPAIGN_STREAM]))
        days = int(rng.integers(params.min_days, params.max_days + 1))
        start = int(rng.integers(0, params.start_window_days))
        day, cell = np.nonzero(rng.random((days, len(q))) < q)
        k = len(day)
        imp = np.maximum(1, np.rint(np.exp(rng.normal(model.imp_mu[i], params.impressions_row_sd, k))))
        imp = imp.astype(np.int64)
        clk = rng.binomial(imp, np.minimum(model.ctr[i] * mult["ctr"][cell], params.max_ctr))
        ins = rng.binomial(
            clk, np.minimum(model.install_rate[i] * mult["install"][cell], params.max_install_rate)
        )
        eps = rng.standard_normal(k)
        sk2 = np.log1p(s_inst2 / np.maximum(ins, 1))
        rev = (
            ins * model.revenue_per_install[i] * mult["revenue"][cell] * np.exp(np.sqrt(sk2) * eps - sk2 / 2)
        )
        parts["app"].append(np.full(k, i, dtype=np.int64))
        parts["day"].append(start + day)
        parts["cell"].append(cell)
        parts["imp"].append(imp)
        parts["clk"].append(clk.astype(np.int64))
        parts["ins"].append(ins.astype(np.int64))
        parts["rev"].append(np.where(ins > 0, np.round(rev, 4), 0.0))
    cat = {k: (np.concatenate(v) if v else np.zeros(0, dtype=np.int64)) for k, v in parts.items()}
    app_idx, cell = cat["app"].astype(np.int64), cat["cell"].astype(np.int64)
    dates = np.datetime_as_string(np.datetime64(_START_DATE) + cat["day"].astype("timedelta64[D]"), unit="D")
    return pd.DataFrame(
        {
            "app_id": model.app_id[app_idx].astype(str),
            "date": dates.astype(str),
            "country": grid.countries[cell].astype(str),
            "platform": model.platform[app_idx].astype(str),
            "age_group": grid.ages[cell].astype(str),
            "gender": grid.genders[cell].astype(str),
            "impressions": cat["imp"].astype(np.int64),
            "clicks": cat["clk"].astype(np.int64),
            "event_count": cat["ins"].astype(np.int64),
            "mmp_offer_default_revenue": cat["rev"].astype(np.float64),
        },
        columns=HISTORY_COLUMNS,
    )


def true_rates(
    apps: pd.DataFrame,
    seed: int,
    share_with_history: float = 0.35,
    params: SimulationParams | None = None,
) -> pd.DataFrame:
    """The per-app TRUE rates behind :func:`simulate_history` (same arguments), for evaluation.

    One row per app (all apps, with or without history), sorted by ``app_id``. Columns::

        app_id, category, has_history
        latent_ctr, latent_install, latent_revenue       the app's latent factors u, v, w (logit/log scale)
        base_ctr                 ctr_i, clicks per impression before segment effects
        base_install_rate        ir_i, installs per click before segment effects
        base_revenue_per_install m_i, USD per install before segment effects
        ctr                      expected clicks / impressions under the simulated segment mix pi
        install_rate             expected installs / clicks under the mix
        installs_per_impression  expected installs / impressions under the mix
        revenue_per_install      expected revenue / installs under the mix, USD
        rpm                      expected revenue per 1,000 impressions under the mix, USD

    The "under the mix" rates are the ratios of expectations over the cells weighted by ``pi`` (the
    impressions' lognormal does not depend on the cell); they are what the aggregate of a long history
    converges to, i.e. the targets a prediction should be compared with.
    """
    params = params or SimulationParams()
    _check_inputs(apps, seed, share_with_history, params)
    model = _app_model(apps, seed, share_with_history, params)
    grid = _Grid.build(params)
    n = len(model.app_id)
    ctr_m, ipi_m, rpm_m = np.zeros(n), np.zeros(n), np.zeros(n)
    for genre in np.unique(model.category) if n else []:
        rows = np.flatnonzero(model.category == genre)
        mult = grid.multipliers(genre)
        ctr_c = np.minimum(model.ctr[rows, None] * mult["ctr"][None, :], params.max_ctr)
        ir_c = np.minimum(model.install_rate[rows, None] * mult["install"][None, :], params.max_install_rate)
        ipi_c = ctr_c * ir_c
        ctr_m[rows] = ctr_c @ grid.pi
        ipi_m[rows] = ipi_c @ grid.pi
        rpm_m[rows] = (
            1000.0 * (ipi_c * model.revenue_per_install[rows, None] * mult["revenue"][None, :]) @ grid.pi
        )
    return pd.DataFrame(
        {
            "app_id": model.app_id.astype(str),
            "category": model.category.astype(str),
            "has_history": model.has_history,
            "latent_ctr": params.ctr_latent_sd * model.latent[:, 0],
            "latent_install": params.install_latent_sd * model.latent[:, 1],
            "latent_revenue": params.revenue_latent_sd * model.latent[:, 2],
            "base_ctr": model.ctr,
            "base_install_rate": model.install_rate,
            "base_revenue_per_install": model.revenue_per_install,
            "ctr": ctr_m,
            "install_rate": ipi_m / ctr_m if n else ipi_m,
            "installs_per_impression": ipi_m,
            "revenue_per_install": rpm_m / 1000.0 / ipi_m if n else rpm_m,
            "rpm": rpm_m,
        }
    )


def history_manifest(
    seed: int,
    share_with_history: float = 0.35,
    params: SimulationParams | None = None,
    history: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The JSON-serialisable manifest written next to ``history_simulated.csv``.

    ``{"simulated": true, "model": MODEL_NAME, "seed", "share_with_history", "params": {...}, "file",
    "columns", "notice"}`` plus, when ``history`` is given, ``rows``, ``apps_with_history``, ``date_min``,
    ``date_max`` and the totals (impressions, clicks, event_count, revenue in USD).
    """
    params = params or SimulationParams()
    manifest: dict[str, Any] = {
        "simulated": True,
        "notice": "SIMULATED campaign history for the public App Store catalogue; not real performance data.",
        "model": MODEL_NAME,
        "seed": int(seed),
        "share_with_history": float(share_with_history),
        "params": params.to_dict(),
        "file": HISTORY_FILE,
        "columns": list(HISTORY_COLUMNS),
    }
    if history is not None:
        manifest.update(
            rows=len(history),
            apps_with_history=int(history["app_id"].nunique()),
            date_min=str(history["date"].min()) if len(history) else None,
            date_max=str(history["date"].max()) if len(history) else None,
            totals={
                "impressions": int(history["impressions"].sum()),
                "clicks": int(history["clicks"].sum()),
                "event_count": int(history["event_count"].sum()),
                "mmp_offer_default_revenue": round(float(history["mmp_offer_default_revenue"].sum()), 4),
            },
        )
    return manifest


def write_simulated_history(
    out_dir: str | Path,
    apps: pd.DataFrame,
    seed: int,
    share_with_history: float = 0.35,
    params: SimulationParams | None = None,
) -> dict[str, Any]:
    """Write ``HISTORY_FILE`` and ``HISTORY_MANIFEST_FILE`` into ``out_dir``; returns the manifest.

    The manifest also records the CSV's sha256 (``sha256``). Same inputs give the same bytes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history = simulate_history(apps, seed, share_with_history, params)
    path = out / HISTORY_FILE
    history.to_csv(path, index=False, lineterminator="\n")
    manifest = history_manifest(seed, share_with_history, params, history)
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / HISTORY_MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
