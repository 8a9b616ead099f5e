"""Prediction core on a five-app fixture; expected numbers are written from the formulas of
docs/prediction.md, with exact fractions where the arithmetic allows, independently of the implementation.

Fixture (segment columns country and gender only; platform and age_group are missing on purpose)::

    app  category  impressions clicks installs revenue   per-row split (country/gender)
    A    Games         1000      20      5      10       US/female 600/15/4/6   GB/male   400/5/1/4
    B    Games         2000      60     12      36       US/male 1200/45/9/27   GB/female 800/15/3/9
    C    Games         1000      40      4       4       US/female 500/25/3/3   GB/female 500/15/1/1
    D    Finance       4000      40      8      80       US/male 3000/30/6/60   GB/male 1000/10/2/20
    E    Finance       2000      30      3      45       US/female 2000/30/3/45
    F    Games (catalogue only, no history), G Weather (catalogue only)
"""

from __future__ import annotations

import json
import math
from fractions import Fraction as Fr
from typing import TypeVar

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from appsim.errors import DataError, ValidationError
from appsim.services.prediction import (
    HistoryStats,
    PredictionConfig,
    PredictionService,
    fit_beta_prior,
    neighbour_weights,
    predict,
)

ROWS = [
    ("A", "2024-01-01", "US", "female", 600, 15, 4, 6.0),
    ("A", "2024-01-02", "GB", "male", 400, 5, 1, 4.0),
    ("B", "2024-01-01", "US", "male", 1200, 45, 9, 27.0),
    ("B", "2024-01-02", "GB", "female", 800, 15, 3, 9.0),
    ("C", "2024-01-01", "US", "female", 500, 25, 3, 3.0),
    ("C", "2024-01-02", "GB", "female", 500, 15, 1, 1.0),
    ("D", "2024-01-01", "US", "male", 3000, 30, 6, 60.0),
    ("D", "2024-01-02", "GB", "male", 1000, 10, 2, 20.0),
    ("E", "2024-01-01", "US", "female", 2000, 30, 3, 45.0),
]
COLUMNS = [
    "app_id",
    "date",
    "country",
    "gender",
    "impressions",
    "clicks",
    "event_count",
    "mmp_offer_default_revenue",
]
CATEGORIES = {
    "A": "Games",
    "B": "Games",
    "C": "Games",
    "D": "Finance",
    "E": "Finance",
    "F": "Games",
    "G": "Weather",
}
TOTALS = {"A": (1000, 20, 5, 10), "B": (2000, 60, 12, 36), "C": (1000, 40, 4, 4)}  # Games apps
P10, P90 = 0.1, 0.9
T = TypeVar("T")
Z90 = stats.norm.ppf(0.9)


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    frame = pd.DataFrame(ROWS, columns=COLUMNS)
    frame["campaign_id"] = "c1"  # an extra column: ignored
    return frame


@pytest.fixture(scope="module")
def hs(history: pd.DataFrame) -> HistoryStats:
    return HistoryStats.from_frame(history, CATEGORIES, min_prior_apps=3)


def val(x: T | None) -> T:
    assert x is not None
    return x


def as_json(pred: object) -> dict:
    d = pred.to_dict()  # type: ignore[attr-defined]
    json.dumps(d, allow_nan=False)  # raises on NaN / inf
    return d


# ------------------------------------------------------------------ independent reference formulas


def mom(pairs: list[tuple[int, int]]) -> tuple[Fr, Fr]:
    """(m, kappa) of the method-of-moments Beta prior, exact: pairs are (successes, trials); kappa = 1e7
    when the between-app variance tau2 <= 0, else clipped to [2, 1e7]."""
    r = [Fr(x, n) for x, n in pairs]
    k = len(r)
    m = Fr(sum(r)) / k
    s2 = sum((ri - m) ** 2 for ri in r) / (k - 1)
    h = sum(Fr(1, n) for _, n in pairs) / k
    tau2 = (s2 - m * (1 - m) * h) / (1 - h)
    if tau2 <= 0:
        return m, Fr(10**7)
    kappa = Fr(m * (1 - m) / tau2 - 1)
    return m, Fr(2) if kappa < 2 else Fr(10**7) if kappa > 10**7 else kappa


def games(i: int) -> list[tuple[int, int]]:
    """(successes, trials) of the Games apps for rate i: 0 CTR, 1 install rate, 2 installs/impression."""
    sx, sn = [(1, 0), (2, 1), (2, 0)][i]
    return [(TOTALS[a][sx], TOTALS[a][sn]) for a in "ABC"]


def beta_posterior(pairs_e: list[tuple[float, int, int]], m: float, kappa: float, rho: float) -> tuple:
    """(A, B) of the neighbourhood-mean posterior; pairs_e: (e_j, x_j, n_j)."""
    kappa_mu = (kappa + 1) / rho - 1
    c = math.inf if rho == 1 else (kappa + 1) / (1 - rho)
    big_n = big_x = 0.0
    for e, x, n in pairs_e:
        t = n if math.isinf(c) else n * c / (n + c)
        big_n += e * t
        big_x += e * x * t / n
    return m * kappa_mu + big_x, (1 - m) * kappa_mu + big_n - big_x


def predictive(a_: float, b_: float, m: float, kappa: float, rho: float) -> tuple[float, float]:
    point = a_ / (a_ + b_)
    var = a_ * b_ / ((a_ + b_) ** 2 * (a_ + b_ + 1)) + (1 - rho) * m * (1 - m) / (kappa + 1)
    k2 = point * (1 - point) / var - 1
    return point * k2, (1 - point) * k2


# ---------------------------------------------------------------------------------------- the tests


def test_mom_prior_matches_hand_computation(hs: HistoryStats) -> None:
    # CTR of Games: rates 1/50, 3/100, 1/25; m = 3/100, s2 = 1/10000, h = 1/1200
    m, kappa = mom(games(0))
    assert (m, kappa) == (Fr(3, 100), Fr(116000, 303))  # by hand: 97 * 1199 / 303 - 1
    prior = hs.beta_prior("ctr", "Games")
    assert prior is not None and prior.level == "category" and prior.apps == 3
    assert prior.a == pytest.approx(float(m * kappa), rel=1e-12)
    assert prior.b == pytest.approx(float((1 - m) * kappa), rel=1e-12)
    direct = fit_beta_prior(np.array([20, 60, 40]), np.array([1000, 2000, 1000]), level="x", category=None)
    assert direct is not None and direct.kappa == pytest.approx(float(kappa), rel=1e-12)
    # Finance has only 2 apps (< min_prior_apps = 3): the global prior over the 5 apps is used
    fin = hs.beta_prior("ctr", "Finance")
    assert fin is not None and fin.level == "global" and fin.apps == 5


def test_weights_power_one_and_two(hs: HistoryStats) -> None:
    nbrs = [("A", 0.8), ("B", 0.4), ("F", 0.9), ("ghost", 0.5), ("C", -0.2)]
    w = neighbour_weights(nbrs, hs, 1.0)
    by_id = {n.app_id: n for n in w.listed}
    assert [n.app_id for n in w.listed] == ["A", "B", "F", "ghost", "C"]
    assert by_id["A"].weight == pytest.approx(2 / 3) and by_id["B"].weight == pytest.approx(1 / 3)
    assert by_id["F"].weight == by_id["ghost"].weight == by_id["C"].weight == 0.0
    assert w.ess == pytest.approx(1.2**2 / (0.8**2 + 0.4**2))  # = 1.8
    assert by_id["A"].evidence_multiplier == pytest.approx(1.2)
    assert by_id["B"].evidence_multiplier == pytest.approx(0.6)
    assert by_id["F"].note == "no campaign history" and by_id["C"].note == "similarity score <= 0"
    assert by_id["ghost"].note == "not in the catalogue" and not by_id["ghost"].in_catalogue
    assert (by_id["A"].impressions, by_id["A"].clicks, by_id["A"].installs) == (1000, 20, 5)
    w2 = neighbour_weights(nbrs, hs, 2.0)  # s = 0.64, 0.16
    assert w2.weight.tolist() == pytest.approx([0.8, 0.2])
    assert w2.ess == pytest.approx(25 / 17)
    assert w2.evidence.tolist() == pytest.approx([20 / 17, 5 / 17])


def test_rates_rho_one_is_the_plain_beta_binomial(hs: HistoryStats) -> None:
    pred = predict([("A", 0.8), ("B", 0.4)], "games", hs, PredictionConfig(explained_share=1.0))
    assert pred.basis == "neighbours" and pred.category == "Games" and pred.prior_level == "category"
    # CTR: N = 1.2*1000 + 0.6*2000 = 2400, X = 1.2*20 + 0.6*60 = 60
    m, kappa = mom(games(0))
    a, b = m * kappa, (1 - m) * kappa
    ctr = pred.rates["ctr"]
    assert ctr.point == pytest.approx(float((a + 60) / (a + b + 2400)), rel=1e-12)
    lo, hi = stats.beta.ppf([P10, P90], float(a + 60), float(b + 2340))
    assert (ctr.low, ctr.high) == pytest.approx((lo, hi), rel=1e-9)
    assert (ctr.mean_low, ctr.mean_high) == pytest.approx((lo, hi), rel=1e-9)
    assert ctr.evidence["effective_trials"] == pytest.approx(2400)
    assert ctr.evidence["effective_successes"] == pytest.approx(60)
    assert ctr.evidence["credibility"] == pytest.approx(float(2400 / (kappa + 2400)))
    # install rate per click: N = 1.2*20 + 0.6*60 = 60 clicks, X = 1.2*5 + 0.6*12 = 13.2 installs
    m2, k2 = mom(games(1))
    ir = pred.rates["install_rate"]
    assert ir.point == pytest.approx((float(m2 * k2) + 13.2) / (float(k2) + 60), rel=1e-12)


def test_rates_with_explained_share(hs: HistoryStats) -> None:
    rho = 0.5
    pred = predict([("A", 0.8), ("B", 0.4)], "Games", hs, PredictionConfig(explained_share=rho))
    m, kappa = (float(v) for v in mom(games(0)))
    a_, b_ = beta_posterior([(1.2, 20, 1000), (0.6, 60, 2000)], m, kappa, rho)
    ctr = pred.rates["ctr"]
    assert ctr.point == pytest.approx(a_ / (a_ + b_), rel=1e-12)
    assert (ctr.mean_low, ctr.mean_high) == pytest.approx(tuple(stats.beta.ppf([P10, P90], a_, b_)), rel=1e-9)
    pa, pb = predictive(a_, b_, m, kappa, rho)
    assert (ctr.low, ctr.high) == pytest.approx(tuple(stats.beta.ppf([P10, P90], pa, pb)), rel=1e-9)
    assert val(ctr.low) < val(ctr.mean_low) < val(ctr.point) < val(ctr.mean_high) < val(ctr.high)
    # shrinkage: strictly between the prior mean 3% and the neighbours' pooled 2.5%
    assert 0.025 < val(ctr.point) < 0.03
    assert ctr.evidence["credibility"] == pytest.approx(ctr.evidence["effective_trials"] / (
        ctr.evidence["effective_trials"] + (kappa + 1) / rho - 1))  # fmt: skip


def test_revenue_per_install_and_rpm(hs: HistoryStats) -> None:
    rho = 0.5
    pred = predict([("A", 0.8), ("B", 0.4)], "Games", hs, PredictionConfig(explained_share=rho))
    # within-app variance: only A's rows differ (6/4 = 1.5 and 4/1 = 4 USD per install); dof = 9 rows - 5 apps
    ybar = (4 * math.log(1.5) + math.log(4)) / 5
    sigma_w2 = (4 * (math.log(1.5) - ybar) ** 2 + (math.log(4) - ybar) ** 2) / 4
    assert hs.within_log_var == pytest.approx(sigma_w2, rel=1e-12)
    y = [math.log(2), math.log(3), 0.0]  # Games apps' log revenue per install
    mu0 = sum(y) / 3
    s2 = sum((v - mu0) ** 2 for v in y) / 2
    tau2 = s2 - sigma_w2 * (1 / 5 + 1 / 12 + 1 / 4) / 3
    c = sigma_w2 / tau2
    u_a, u_b = 1.2 / ((1 - rho) + c / 5), 0.6 / ((1 - rho) + c / 12)
    mu = (mu0 / rho + u_a * math.log(2) + u_b * math.log(3)) / (1 / rho + u_a + u_b)
    var = tau2 / (1 / rho + u_a + u_b)
    rpi = pred.rates["revenue_per_install"]
    assert rpi.prior is not None and rpi.prior["tau2"] == pytest.approx(tau2, rel=1e-12)
    assert rpi.point == pytest.approx(math.exp(mu), rel=1e-12)
    assert (rpi.mean_low, rpi.mean_high) == pytest.approx(
        (math.exp(mu - Z90 * var**0.5), math.exp(mu + Z90 * var**0.5)), rel=1e-9
    )
    pvar = var + (1 - rho) * tau2
    assert (rpi.low, rpi.high) == pytest.approx(
        (math.exp(mu - Z90 * pvar**0.5), math.exp(mu + Z90 * pvar**0.5))
    )
    # RPM = 1000 x installs/impression x revenue/install; interval from the log-Beta moments.
    # Installs per impression 0.5%, 0.6%, 0.4% vary less than binomial noise would: tau2 < 0, kappa = 1e7
    m, kappa = (float(v) for v in mom(games(2)))
    assert kappa == 1e7 and val(pred.rates["installs_per_impression"].prior)["kappa"] == pytest.approx(1e7)
    a_, b_ = beta_posterior([(1.2, 5, 1000), (0.6, 12, 2000)], m, kappa, rho)
    ipi = pred.rates["installs_per_impression"]
    assert ipi.point == pytest.approx(a_ / (a_ + b_), rel=1e-12)
    rpm = pred.rates["rpm"]
    assert rpm.point == pytest.approx(1000 * val(ipi.point) * val(rpi.point), rel=1e-12)
    lm = math.log(1000) + special.digamma(a_) - special.digamma(a_ + b_) + mu
    lv = special.polygamma(1, a_) - special.polygamma(1, a_ + b_) + var
    assert (rpm.mean_low, rpm.mean_high) == pytest.approx(
        (math.exp(lm - Z90 * lv**0.5), math.exp(lm + Z90 * lv**0.5)), rel=1e-9
    )
    assert val(rpm.low) < val(rpm.mean_low) < val(rpm.point) < val(rpm.mean_high) < val(rpm.high)
    # score: mid-rank percentile among the Games apps' RPMs 10, 18, 4 USD
    below = sum(v < val(rpm.point) for v in (10.0, 18.0, 4.0))
    assert pred.performance_score == pytest.approx(100 * below / 3)
    assert pred.performance_score_detail["distribution"] == "category"


def test_prior_only_prediction_by_hand(hs: HistoryStats) -> None:
    pred = predict([], "Games", hs)
    assert pred.basis == "category_prior" and "no neighbour was given" in pred.basis_explanation.lower()
    assert pred.rates["ctr"].point == pytest.approx(0.03)  # the prior mean
    assert pred.rates["installs_per_impression"].point == pytest.approx(0.005)
    assert pred.rates["revenue_per_install"].point == pytest.approx(
        6 ** (1 / 3)
    )  # exp(mean(log 2, log 3, 0))
    # RPM 1000 * 0.005 * 6^(1/3) = 9.09 USD: above 4, below 10 and 18
    assert pred.rates["rpm"].point == pytest.approx(5 * 6 ** (1 / 3))
    assert pred.performance_score == pytest.approx(100 / 3)
    # with no evidence the predictive interval is the category prior's own Beta quantiles
    prior = pred.rates["ctr"].prior
    assert prior is not None
    lo, hi = stats.beta.ppf([P10, P90], prior["a"], prior["b"])
    assert (pred.rates["ctr"].low, pred.rates["ctr"].high) == pytest.approx((lo, hi), rel=1e-9)


def test_segment_lifts_by_hand(hs: HistoryStats) -> None:
    pred = predict([("A", 0.8), ("B", 0.4)], "Games", hs, PredictionConfig(segment_prior_successes=20))
    assert set(pred.segments) == {"country", "gender"}
    us, gb = pred.segments["country"]  # ranked by installs-per-impression lift
    assert (us.value, gb.value) == ("US", "GB")
    # CTR: X_US = 1.2*15 + 0.6*45 = 45, N_US = 1.2*600 + 0.6*1200 = 1440, R = 60/2400 = 1/40
    assert us.ctr_lift == pytest.approx(65 / 56)  # (20 + 45) / (20 + 1440/40)
    assert gb.ctr_lift == pytest.approx(35 / 44)  # (20 + 15) / (20 + 960/40)
    lo, hi = stats.beta.ppf([P10, P90], 65, 20 * 40 - 20 + 1440 - 45)
    assert (us.ctr_lift_low, us.ctr_lift_high) == pytest.approx((40 * lo, 40 * hi), rel=1e-9)
    # install rate: X_US = 1.2*4 + 0.6*9 = 10.2 over 45 clicks, R = 13.2/60 = 0.22
    assert us.install_rate_lift == pytest.approx(30.2 / (20 + 0.22 * 45))
    assert gb.install_rate_lift == pytest.approx(23 / (20 + 0.22 * 15))
    # installs per impression: R = 13.2/2400 = 0.0055
    assert us.installs_per_impression_lift == pytest.approx(30.2 / (20 + 0.0055 * 1440))
    assert us.support == {"impressions": 1800.0, "clicks": 60.0, "installs": 13.0, "apps": 2}
    assert us.expected_ctr == pytest.approx(val(pred.rates["ctr"].point) * 65 / 56)
    female = next(s for s in pred.segments["gender"] if s.value == "female")
    male = next(s for s in pred.segments["gender"] if s.value == "male")
    assert (female.ctr_lift, male.ctr_lift) == pytest.approx((47 / 50, 53 / 50))  # X 27 | 33 over N 1200
    assert pred.top_segments[0].value == "US"
    assert pred.segments_not_claimed == {"country": 0, "gender": 0}


def test_segments_with_too_little_support_are_not_claimed(hs: HistoryStats) -> None:
    cfg = PredictionConfig(min_segment_impressions=1500)  # GB has 1200, female 1400 impressions
    pred = predict([("A", 0.8), ("B", 0.4)], "Games", hs, cfg)
    assert [s.value for s in pred.segments["country"]] == ["US"]
    assert [s.value for s in pred.segments["gender"]] == ["male"]
    assert pred.segments_not_claimed == {"country": 1, "gender": 1}
    one_app = predict([("A", 0.8)], "Games", hs)  # min_segment_apps = 2
    assert one_app.segments == {"country": [], "gender": []} and one_app.top_segments == []


def test_missing_segment_columns_are_skipped(hs: HistoryStats) -> None:
    assert hs.segment_columns == ("country", "gender")
    assert hs.missing_segment_columns == ("platform", "age_group")
    d = as_json(predict([("A", 0.8), ("B", 0.4)], "Games", hs))
    assert d["segment_columns_missing"] == ["platform", "age_group"]
    assert set(d["segments"]) == {"country", "gender"}


def test_no_history_anywhere_is_a_clear_answer() -> None:
    empty = pd.DataFrame(columns=COLUMNS)
    hs = HistoryStats.from_frame(empty, CATEGORIES)
    pred = predict([("A", 0.9), ("B", 0.5)], "Games", hs)
    d = as_json(pred)
    assert d["basis"] == "none" and "no campaign history" in d["basis_explanation"]
    assert all(r["point"] is None and r["low"] is None for r in d["rates"].values())
    assert d["performance_score"] is None and d["segments"] == {"country": [], "gender": []}
    assert [n["weight"] for n in d["neighbours"]] == [0.0, 0.0]


def test_unseen_category_uses_the_global_prior(hs: HistoryStats) -> None:
    pred = predict([], "Astrology", hs)
    assert pred.basis == "global_prior" and not pred.category_known and pred.prior_level == "global"
    assert "'Astrology' is not in the catalogue" in pred.basis_explanation
    prior = pred.rates["ctr"].prior
    assert prior is not None and prior["level"] == "global" and prior["apps"] == 5
    # global CTR prior mean = mean of 2%, 3%, 4%, 1%, 1.5%
    assert pred.rates["ctr"].point == pytest.approx(0.023)
    assert pred.performance_score_detail["distribution"] == "global"
    with_nbrs = predict([("A", 0.8)], None, hs)
    assert with_nbrs.basis == "neighbours" and with_nbrs.prior_level == "global"
    thin = predict([], "weather", hs)  # in the catalogue, no history
    assert thin.basis == "global_prior" and thin.category_known and "needs 3" in thin.basis_explanation
    as_json(pred)


def test_all_zero_scores_fall_back_to_the_category_prior(hs: HistoryStats) -> None:
    pred = predict([("A", 0.0), ("B", 0.0)], "Games", hs)
    assert pred.basis == "category_prior" and pred.effective_sample_size == 0.0
    assert "positive similarity" in pred.basis_explanation
    assert [n.weight for n in pred.neighbours] == [0.0, 0.0]
    assert pred.rates["ctr"].point == pytest.approx(0.03)
    as_json(pred)


def test_neighbour_absent_from_the_catalogue(hs: HistoryStats) -> None:
    pred = predict([("ghost", 0.9), ("A", 0.5), ("A", 0.4)], "Games", hs)
    ghost, a = pred.neighbours
    assert (ghost.in_catalogue, ghost.has_history, ghost.weight, ghost.category) == (False, False, 0.0, None)
    assert a.weight == 1.0 and pred.neighbours_with_history == 1
    assert any("ghost" in w for w in pred.warnings) and any("listed twice" in w for w in pred.warnings)
    as_json(pred)


def test_invalid_inputs_raise_domain_errors(history: pd.DataFrame, hs: HistoryStats) -> None:
    with pytest.raises(ValidationError):
        predict([("A", float("nan"))], "Games", hs)
    with pytest.raises(ValidationError):
        predict([("A", 0.5)], "Games", hs, PredictionConfig(explained_share=0.0))
    with pytest.raises(DataError) as err:
        HistoryStats.from_frame(history.drop(columns=["clicks"]), CATEGORIES)
    assert err.value.check == "columns"
    bad = history.copy()
    bad.loc[0, "impressions"] = -1
    with pytest.raises(DataError):
        HistoryStats.from_frame(bad, CATEGORIES)


def test_to_dict_is_json_ready_and_service_wrapper(history: pd.DataFrame) -> None:
    service = PredictionService.from_frame(history, CATEGORIES, config=PredictionConfig(interval=0.8))
    d = as_json(service.predict([("A", 0.8), ("B", 0.4), ("F", 0.7)], "Games"))
    assert d["rates"]["ctr"]["interval"] == 0.8 and d["config"]["weight_power"] == 1.0
    assert {n["app_id"] for n in d["neighbours"]} == {"A", "B", "F"}
    json.dumps(service.stats.summary(), allow_nan=False)


def test_segment_sums_match_groupby_on_a_random_frame() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    frame = pd.DataFrame(
        {
            "app_id": rng.integers(0, 300, n).astype(str),
            "country": rng.choice(np.array(["US", "DE", "IN", None], dtype=object), n),
            "impressions": rng.integers(1, 1000, n),
            "clicks": rng.integers(0, 10, n),
            "event_count": rng.integers(0, 3, n),
            "mmp_offer_default_revenue": rng.random(n),
        }
    )
    hs = HistoryStats.from_frame(frame, {str(i): "Games" for i in range(300)}, ("country",))
    expected = frame.dropna(subset=["country"]).groupby(["app_id", "country"])["impressions"].sum()
    table = hs.segments["country"]
    got = {}
    for app, i in hs.app_index.items():
        for j in range(table.offsets[i], table.offsets[i + 1]):
            got[(app, table.values[table.value_codes[j]])] = table.sums[j, 0]
    assert got == expected.astype(float).to_dict()
    assert hs.totals[:, 0].sum() == frame["impressions"].sum()
