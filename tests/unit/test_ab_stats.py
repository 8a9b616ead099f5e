"""A/B statistics: known answers (tests/cases/ab_cases.json), each also recomputed by hand here."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from appsim.services import ab_stats as S

CASES = json.loads((Path(__file__).resolve().parents[1] / "cases" / "ab_cases.json").read_text())
PHI = NormalDist()


def _ids(cases: list[dict]) -> list[str]:
    return [c["id"] for c in cases]


# ------------------------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("case", CASES["ztest"], ids=_ids(CASES["ztest"]))
def test_pooled_ztest_known_answer(case: dict) -> None:
    xa, na, xb, nb = case["x_a"], case["n_a"], case["x_b"], case["n_b"]
    # by hand: pooled rate, pooled standard error, two-sided normal tail (stdlib, not scipy)
    p = (xa + xb) / (na + nb)
    z_hand = (xb / nb - xa / na) / math.sqrt(p * (1 - p) * (1 / na + 1 / nb))
    p_hand = math.erfc(abs(z_hand) / math.sqrt(2))
    assert z_hand == pytest.approx(case["z"], abs=case["tol"])
    assert p_hand == pytest.approx(case["p_value"], abs=case["tol"])
    res = S.two_proportion_ztest(xa, na, xb, nb)
    assert res.z == pytest.approx(case["z"], abs=case["tol"])
    assert res.p_value == pytest.approx(case["p_value"], abs=case["tol"])
    # symmetric: swapping the arms flips the sign only
    swapped = S.two_proportion_ztest(xb, nb, xa, na)
    assert swapped.z == pytest.approx(-case["z"], abs=case["tol"])


@pytest.mark.parametrize("case", CASES["srm"], ids=_ids(CASES["srm"]))
def test_srm_known_answer(case: dict) -> None:
    obs, w = case["observed"], case["weights"]
    total = sum(obs.values())
    chi2_hand = sum((obs[k] - total * w[k]) ** 2 / (total * w[k]) for k in obs)
    p_hand = math.erfc(math.sqrt(chi2_hand / 2))  # chi-square survival with 1 degree of freedom
    assert chi2_hand == pytest.approx(case["chi2"], abs=case["tol"])
    assert p_hand == pytest.approx(case["p_value"], abs=case["tol"])
    res = S.srm_test(obs, w, alpha=0.001)
    assert res.chi2 == pytest.approx(case["chi2"], abs=case["tol"])
    assert res.p_value == pytest.approx(case["p_value"], abs=case["tol"])
    assert res.srm is case["srm"]
    assert res.df == 1
    # weights or expected counts give the same answer
    assert S.srm_test(obs, {k: total * v for k, v in w.items()}).p_value == pytest.approx(res.p_value)


@pytest.mark.parametrize("case", CASES["bayes"], ids=_ids(CASES["bayes"]))
def test_beta_binomial_known_answer(case: dict) -> None:
    a0, b0 = case["prior"]
    xa, na, xb, nb = case["x_a"], case["n_a"], case["x_b"], case["n_b"]
    # by hand: Beta densities from log-gamma on a fine grid, P(B > A) = int f_B(t) F_A(t) dt (trapezoid)
    t = np.linspace(0.06, 0.15, 90_001)

    def log_pdf(a: float, b: float) -> np.ndarray:
        return (
            (a - 1) * np.log(t)
            + (b - 1) * np.log1p(-t)
            - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
        )

    f_a = np.exp(log_pdf(a0 + xa, b0 + na - xa))
    f_b = np.exp(log_pdf(a0 + xb, b0 + nb - xb))
    dt = t[1] - t[0]
    cdf_a = np.concatenate([[0.0], np.cumsum((f_a[1:] + f_a[:-1]) / 2) * dt])
    g = f_b * cdf_a
    p_hand = float(np.sum((g[1:] + g[:-1]) / 2) * dt)
    assert p_hand == pytest.approx(case["prob_b_beats_a"], abs=case["tol"])
    res = S.beta_binomial(xa, na, xb, nb, prior=(a0, b0))
    assert res.prob_b_beats_a == pytest.approx(case["prob_b_beats_a"], abs=case["tol"])

    # expected loss by hand on the same grid: E[max(A - B, 0)] = int f_B(b) int_b^1 (a - b) f_A(a) da db
    def tail(f: np.ndarray) -> np.ndarray:  # int_t^end f, trapezoid, as a function of t
        seg = (f[1:] + f[:-1]) / 2 * dt
        return np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])

    inner = tail(t * f_a) - t * tail(f_a)
    h = f_b * inner
    loss_b_hand = float(np.sum((h[1:] + h[:-1]) / 2) * dt)
    assert res.expected_loss_choose_b == pytest.approx(loss_b_hand, abs=2e-6)
    # E[max(B - A, 0)] - E[max(A - B, 0)] = E[B] - E[A]
    mean_a, mean_b = (a0 + xa) / (a0 + b0 + na), (a0 + xb) / (a0 + b0 + nb)
    assert res.expected_loss_choose_a - res.expected_loss_choose_b == pytest.approx(mean_b - mean_a, abs=1e-9)


@pytest.mark.parametrize("case", CASES["power"], ids=_ids(CASES["power"]))
def test_sample_size_known_answer(case: dict) -> None:
    h = 2 * math.asin(math.sqrt(case["target"])) - 2 * math.asin(math.sqrt(case["baseline"]))
    z = PHI.inv_cdf(1 - case["alpha"] / 2) + PHI.inv_cdf(case["power"])
    n_hand = math.ceil(z**2 * (1 + 1 / case["ratio"]) / h**2)
    assert n_hand == case["n_per_variant"]
    n_a, n_b = S.sample_size_per_variant(
        case["baseline"], case["target"], alpha=case["alpha"], power=case["power"], ratio=case["ratio"]
    )
    assert n_a == n_b == case["n_per_variant"]


# ------------------------------------------------------------------------------------------------ others


def test_sample_size_unequal_split_and_cohens_h() -> None:
    assert S.cohens_h(0.11, 0.10) == pytest.approx(0.0326294, abs=1e-6)
    n_a, n_b = S.sample_size_per_variant(0.10, 0.11, ratio=3 / 7)
    h = abs(S.cohens_h(0.11, 0.10))
    z = PHI.inv_cdf(0.975) + PHI.inv_cdf(0.8)
    assert n_a == math.ceil(z**2 * (1 + 7 / 3) / h**2)
    assert n_b == math.ceil(n_a * 3 / 7 - 1e-9) or n_b == math.ceil(z**2 * (1 + 7 / 3) / h**2 * 3 / 7)
    with pytest.raises(ValueError):
        S.sample_size_per_variant(0.1, 0.1)


def test_eta_days() -> None:
    assert S.eta_days({"v1": 100, "v2": 50}, {"v1": 100, "v2": 50}, {"v1": 0.0}) == 0.0
    assert S.eta_days({"v1": 1000, "v2": 500}, {"v1": 300, "v2": 100}, {"v1": 70.0, "v2": 40.0}) == 10.0
    assert S.eta_days({"v1": 1000}, {"v1": 0}, {"v1": 0.0}) is None


def test_holm_by_hand() -> None:
    reject, adjusted = S.holm([0.01, 0.04, 0.03, None], alpha=0.05)
    # sorted: 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert adjusted[3] is None
    assert reject == [True, False, False, False]
    assert S.holm([0.04]) == ([True], [0.04])


def test_wilson_interval_by_hand() -> None:
    x, n, z = 1100, 10_000, PHI.inv_cdf(0.975)
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = S.wilson_interval(x, n)
    assert lo == pytest.approx(centre - half, abs=1e-12)
    assert hi == pytest.approx(centre + half, abs=1e-12)
    assert S.wilson_interval(0, 0) == (None, None)
    lo0, hi0 = S.wilson_interval(0, 50)
    assert lo0 == pytest.approx(0.0, abs=1e-12) and 0 < hi0 < 0.1  # type: ignore[operator]


def test_msprt_matches_the_papers_balanced_formula() -> None:
    # Johari et al. (2022): n paired observations per arm, variance s each, mixing N(0, tau^2)
    n, s, tau, diff = 5000, 0.09, 0.01, 0.012
    paper = 0.5 * math.log(2 * s / (2 * s + n * tau**2)) + n**2 * tau**2 * diff**2 / (
        4 * s * (2 * s + n * tau**2)
    )
    assert float(S.msprt_log_lr(diff, 2 * s / n, tau)) == pytest.approx(paper, rel=1e-12)
    assert float(S.msprt_pvalue(diff, 2 * s / n, tau)) == pytest.approx(min(1.0, math.exp(-paper)), rel=1e-12)
    # the confidence sequence is exactly where Lambda(theta0) = 1/alpha
    lo, hi = S.msprt_confidence_sequence(diff, 2 * s / n, tau, 0.05)
    for bound in (float(lo), float(hi)):
        assert float(S.msprt_log_lr(diff, 2 * s / n, tau, theta0=bound)) == pytest.approx(
            math.log(20), rel=1e-9
        )
    # no variance -> no evidence
    assert float(S.msprt_pvalue(0.1, 0.0, tau)) == 1.0
    assert S.running_min([0.5, 0.7, 0.2, 0.4]).tolist() == [0.5, 0.5, 0.2, 0.2]


def test_msprt_result_on_the_known_counts() -> None:
    res = S.msprt_two_proportions(1000, 10_000, 1100, 10_000, tau=0.01)
    # fixed-horizon p = 0.021 but the always-valid p-value is much larger at this sample size
    assert 0.05 < res.p_value <= 1.0
    assert res.cs_low is not None and res.cs_high is not None and res.cs_low < 0.01 < res.cs_high


def test_design_effect() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(20_000) < 0.1).astype(float)
    assert S.design_effect(y, np.arange(y.size)) == pytest.approx(1.0)
    # 2,000 clusters of 10 identical rows: Kish's deff = 1 + (m - 1) rho = 10
    per_cluster = (rng.random(2000) < 0.1).astype(float)
    deff = S.design_effect(np.repeat(per_cluster, 10), np.repeat(np.arange(2000), 10))
    assert deff == pytest.approx(10.0, rel=0.02)
    # independent rows grouped into clusters stay ~1 (clipped below at 1)
    assert S.design_effect(y, np.repeat(np.arange(2000), 10)) < 1.15


def test_quantile_standard_error_matches_asymptotics() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal(20_000)
    q, se = S.quantile_se(x, 0.95)  # type: ignore[misc]
    z95 = NormalDist().inv_cdf(0.95)
    se_theory = math.sqrt(0.95 * 0.05 / x.size) / NormalDist().pdf(z95)
    assert q == pytest.approx(z95, abs=4 * se_theory)
    assert se == pytest.approx(se_theory, rel=0.15)
    assert S.quantile_se(x[:100], 0.95) is None


def test_latency_guardrail() -> None:
    rng = np.random.default_rng(5)
    a = rng.lognormal(math.log(60), 0.35, 20_000)
    same = S.noninferiority_latency_quantile(
        a, rng.lognormal(math.log(60), 0.35, 9_000), relative_margin=0.10
    )
    assert same.status == "pass" and same.cs_high is not None and same.cs_high < math.log1p(0.10)
    worse = S.noninferiority_latency_quantile(a, rng.lognormal(math.log(60), 0.35, 9_000) + 30)
    assert worse.status == "fail" and worse.relative is not None and worse.relative > 0.2
    assert S.noninferiority_latency_quantile(a, a[:50]).status == "insufficient_data"
    assert worse.to_dict()["value_b"] > worse.to_dict()["value_a"]


def test_error_rate_guardrail() -> None:
    ok = S.noninferiority_rate(100, 20_000, 45, 9_000, margin=0.005)
    assert ok.status == "pass"
    bad = S.noninferiority_rate(100, 20_000, 200, 9_000, margin=0.005)  # 0.5% -> 2.2%
    assert bad.status == "fail"
    assert S.noninferiority_rate(0, 50, 0, 50, margin=0.005).status == "insufficient_data"
    # fixed-horizon non-inferiority p-value by hand: Phi((d - margin) / se)
    pa, pb = 100 / 20_000, 45 / 9_000
    se = math.sqrt(pa * (1 - pa) / 20_000 + pb * (1 - pb) / 9_000)
    assert ok.p_value == pytest.approx(PHI.cdf((pb - pa - 0.005) / se), rel=1e-9)


def test_latency_percentiles() -> None:
    v = np.arange(1, 101, dtype=float)
    out = S.latency_percentiles(v)
    assert out == {"p50": pytest.approx(50.5), "p95": pytest.approx(95.05), "p99": pytest.approx(99.01)}
    assert S.latency_percentiles(np.array([])) == {"p50": None, "p95": None, "p99": None}


def test_srm_edge_cases() -> None:
    # a variant at weight 0 that still receives units is a certain mismatch
    res = S.srm_test({"v1": 100, "v2": 3}, {"v1": 1.0, "v2": 0.0})
    assert res.srm and res.p_value == 0.0 and res.chi2 is None
    assert not S.srm_test({"v1": 0, "v2": 0}, {"v1": 0.5, "v2": 0.5}).srm
