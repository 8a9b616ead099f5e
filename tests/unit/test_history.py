"""SIMULATED campaign history (appsim.data.history) on a slice of the real App Store catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from appsim.data.history import (
    HISTORY_COLUMNS,
    HISTORY_FILE,
    HISTORY_MANIFEST_FILE,
    SimulationParams,
    history_manifest,
    history_selected,
    simulate_history,
    true_rates,
    write_simulated_history,
)
from appsim.errors import DataError, ValidationError

RAW = Path(__file__).resolve().parents[2] / "data" / "raw" / "apple-appstore" / "AppleStore.csv"
N_APPS = 1500


@pytest.fixture(scope="module")
def apps() -> pd.DataFrame:
    raw = pd.read_csv(RAW, nrows=N_APPS)
    return pd.DataFrame(
        {
            "app_id": raw["id"].astype(str),
            "name": raw["track_name"],
            "category": raw["prime_genre"],
            "platform": "ios",
            "price": raw["price"],
            "content_rating": raw["cont_rating"],
            "user_rating": raw["user_rating"],
            "rating_count": raw["rating_count_tot"],
        }
    )


@pytest.fixture(scope="module")
def history(apps: pd.DataFrame) -> pd.DataFrame:
    return simulate_history(apps, seed=11)


def test_same_seed_same_bytes_other_seed_other_bytes(apps: pd.DataFrame, history: pd.DataFrame) -> None:
    again = simulate_history(apps.sample(frac=1.0, random_state=1), seed=11)  # input order does not matter
    assert history.to_csv(index=False).encode() == again.to_csv(index=False).encode()
    other = simulate_history(apps, seed=12)
    assert history.to_csv(index=False) != other.to_csv(index=False)
    # which apps have history does not depend on the seed
    assert set(other["app_id"]) == set(history["app_id"])


def test_an_apps_history_does_not_depend_on_the_other_apps(apps: pd.DataFrame, history: pd.DataFrame) -> None:
    part = simulate_history(apps.iloc[:400], seed=11)
    mine = history[history["app_id"].isin(set(apps["app_id"].iloc[:400]))].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, mine)


def test_only_a_minority_has_history(apps: pd.DataFrame, history: pd.DataFrame) -> None:
    with_history = set(history["app_id"])
    share = len(with_history) / len(apps)
    assert 0.30 < share < 0.40
    expected = {a for a in apps["app_id"] if history_selected(a, 0.35)}
    assert with_history == expected
    truth = true_rates(apps, seed=11)
    assert set(truth.loc[truth["has_history"], "app_id"]) == with_history
    assert len(simulate_history(apps.iloc[:200], seed=11, share_with_history=0.0)) == 0


def test_format_and_rates_in_range(history: pd.DataFrame) -> None:
    assert list(history.columns) == HISTORY_COLUMNS
    assert (history["impressions"] >= 1).all()
    assert (history["clicks"] <= history["impressions"]).all() and (history["clicks"] >= 0).all()
    assert (history["event_count"] <= history["clicks"]).all() and (history["event_count"] >= 0).all()
    assert (history["mmp_offer_default_revenue"] >= 0).all()
    assert (history.loc[history["event_count"] == 0, "mmp_offer_default_revenue"] == 0).all()
    assert set(history["platform"]) == {"ios"}
    assert pd.to_datetime(history["date"], format="%Y-%m-%d").notna().all()
    assert not history.duplicated(["app_id", "date", "country", "age_group", "gender"]).any()
    rows_per_app = history.groupby("app_id").size()
    assert 30 < rows_per_app.mean() < 100
    ctr = history["clicks"].sum() / history["impressions"].sum()
    ir = history["event_count"].sum() / history["clicks"].sum()
    assert 0.005 < ctr < 0.05 and 0.1 < ir < 0.4


def test_planted_effects_are_recoverable(history: pd.DataFrame, apps: pd.DataFrame) -> None:
    cat = dict(zip(apps["app_id"], apps["category"], strict=True))
    h = history.assign(category=history["app_id"].map(cat), paid=history["app_id"].map(
        dict(zip(apps["app_id"], apps["price"] > 0, strict=True))))  # fmt: skip

    def ctr(frame: pd.DataFrame) -> float:
        return float(frame["clicks"].sum() / frame["impressions"].sum())

    games, others = h[h["category"] == "Games"], h[h["category"] != "Games"]
    games_lift = ctr(games[games["age_group"] == "18-24"]) / ctr(games)
    others_lift = ctr(others[others["age_group"] == "18-24"]) / ctr(others)
    assert games_lift > 1.3  # planted Games x 18-24 CTR x1.5 on top of the 18-24 x1.15
    assert games_lift > others_lift + 0.2
    assert ctr(h[h["country"] == "IN"]) > ctr(h[h["country"] == "DE"])  # IN x1.4 vs DE x0.9
    free, paid = h[~h["paid"]], h[h["paid"]]
    assert (
        paid["event_count"].sum() / paid["clicks"].sum()
        < 0.7 * free["event_count"].sum() / free["clicks"].sum()
    )


def test_true_rates_match_the_aggregates(apps: pd.DataFrame, history: pd.DataFrame) -> None:
    truth = true_rates(apps, seed=11).set_index("app_id")
    for col in ("base_ctr", "base_install_rate", "ctr", "install_rate", "installs_per_impression"):
        assert truth[col].between(0, 1, inclusive="neither").all()
    assert (truth["revenue_per_install"] > 0).all() and (truth["rpm"] > 0).all()
    agg = history.groupby("app_id")[
        ["impressions", "clicks", "event_count", "mmp_offer_default_revenue"]
    ].sum()
    t = truth.loc[agg.index]
    observed = {
        "ctr": agg["clicks"] / agg["impressions"],
        "rpm": 1000 * agg["mmp_offer_default_revenue"] / agg["impressions"],
    }
    for col, obs in observed.items():
        assert np.corrcoef(np.log(t[col]), np.log(obs))[0, 1] > 0.9
        assert 0.9 < float(np.median(obs / t[col])) < 1.1  # unbiased on the median
    assert len(truth) == len(apps) and truth.index.is_monotonic_increasing


def test_manifest_and_files(tmp_path: Path, apps: pd.DataFrame) -> None:
    manifest = write_simulated_history(tmp_path, apps.iloc[:300], seed=5)
    assert manifest["simulated"] is True and manifest["seed"] == 5 and manifest["file"] == HISTORY_FILE
    assert "SIMULATED" in manifest["notice"]
    on_disk = json.loads((tmp_path / HISTORY_MANIFEST_FILE).read_text())
    assert on_disk == manifest
    written = pd.read_csv(tmp_path / HISTORY_FILE, dtype={"app_id": str})
    assert len(written) == manifest["rows"] and list(written.columns) == HISTORY_COLUMNS
    plain = history_manifest(5)
    json.dumps(plain, allow_nan=False)
    assert plain["params"]["interactions"][0] == ["Games", "age_group", "18-24", "ctr", 1.5]


def test_bad_inputs(apps: pd.DataFrame) -> None:
    with pytest.raises(ValidationError):
        simulate_history(apps.iloc[:5], seed=-1)
    with pytest.raises(ValidationError):
        simulate_history(apps.iloc[:5], seed=1, share_with_history=1.5)
    with pytest.raises(DataError):
        simulate_history(apps.iloc[:5].drop(columns=["price"]), seed=1)
    with pytest.raises(DataError):
        simulate_history(pd.concat([apps.iloc[:3], apps.iloc[:1]]), seed=1)
    with pytest.raises(ValidationError):
        simulate_history(apps.iloc[:5], seed=1, params=SimulationParams(countries={"US": (0.5, 1, 1, 1)}))


@pytest.mark.slow
def test_full_catalogue_size() -> None:
    raw = pd.read_csv(RAW)
    apps = raw.rename(columns={"prime_genre": "category", "rating_count_tot": "rating_count"})
    apps = apps.assign(app_id=raw["id"].astype(str), platform="ios")
    history = simulate_history(apps, seed=0)
    assert 100_000 <= len(history) <= 200_000
    assert len(history.to_csv(index=False).encode()) < 15_000_000
    assert 0.33 < history["app_id"].nunique() / len(apps) < 0.37
