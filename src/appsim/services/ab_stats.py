"""Statistics of the A/B experiments: pure functions of counts / samples (numpy, scipy, statsmodels).

Conventions: arm ``a`` is the control, arm ``b`` the treatment, differences are ``b - a``; rates are
proportions in [0, 1]; latency is in milliseconds. Every function is deterministic (Monte Carlo is not
used). Functions that accept arrays say so and broadcast elementwise.

Sources
-------
* Two-proportion z-test, Wald / Wilson intervals: Agresti, *Categorical Data Analysis* (3rd ed., 2013),
  §1.4 and §2.1; Wilson, JASA 22 (1927) 209-212.
* SRM: Fabijan et al., "Diagnosing Sample Ratio Mismatch in Online Controlled Experiments", KDD 2019.
* mSPRT: Johari, Koomen, Pekelis, Walsh, "Peeking at A/B Tests", KDD 2017, and "Always Valid Inference:
  Continuous Monitoring of A/B Tests", Operations Research 70(3) 2022; asymptotic (plug-in variance)
  version: Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas, "Time-uniform central limit theory and asymptotic
  confidence sequences", Ann. Statist. 2024.
* Beta-Binomial decision quantities: Stucchio, "Bayesian A/B Testing at VWO" (2015); Miller, "Formulas for
  Bayesian A/B Testing" (2015).
* Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6 (1979).
* Power: Cohen, *Statistical Power Analysis for the Behavioral Sciences* (2nd ed., 1988), ch. 6.
* Quantile standard errors from order statistics: Conover, *Practical Nonparametric Statistics* (3rd ed.,
  1999) §3.2; used for quantile differences in Schultzberg & Ankargren, "Resampling-free bootstrap
  inference for quantiles" (2023).
* Non-inferiority (guardrail) testing: Schultzberg, Ankargren, Frånberg, "Risk-aware product decisions in
  A/B tests with multiple metrics" (Spotify, 2024).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import integrate, special, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_confint

SRM_ALPHA = 0.001

GuardrailStatus = Literal["pass", "fail", "inconclusive", "insufficient_data"]


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------------------------- z-test


@dataclass(frozen=True)
class ZTestResult:
    """Fixed-horizon two-sample test of ``b - a``: rates/means, difference, its standard error, z, p."""

    value_a: float
    value_b: float
    diff: float
    se: float
    z: float | None
    p_value: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def two_proportion_ztest(x_a: int, n_a: int, x_b: int, n_b: int) -> ZTestResult:
    """Pooled two-proportion z-test (two-sided) of H0: p_b = p_a.

    ``z = (p_b - p_a) / sqrt(p (1 - p) (1/n_a + 1/n_b))`` with the pooled ``p = (x_a + x_b) / (n_a + n_b)``,
    ``p = 2 (1 - Phi(|z|))`` (Agresti 2013, §2.1.2). Valid for a single, pre-planned look only: reading it
    repeatedly inflates the false-positive rate (see :func:`msprt_pvalue`). ``z``/``p`` are ``None`` when
    an arm is empty or the pooled rate is 0 or 1. a = 1000/10000, b = 1100/10000 -> z = 2.3066, p = 0.02108.
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both arms need at least one observation")
    p_a, p_b = x_a / n_a, x_b / n_b
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0.0:
        return ZTestResult(p_a, p_b, p_b - p_a, 0.0, None, None)
    z = (p_b - p_a) / se
    return ZTestResult(p_a, p_b, p_b - p_a, se, z, float(2 * stats.norm.sf(abs(z))))


def two_mean_ztest(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int
) -> ZTestResult:
    """Welch-type large-sample z-test of H0: mu_b = mu_a with ``se = sqrt(s_a^2/n_a + s_b^2/n_b)``.

    ``var_*`` are sample variances (ddof=1). Large-sample normal approximation (CLT), two-sided.
    """
    if n_a <= 1 or n_b <= 1:
        raise ValueError("both arms need at least two observations")
    se = math.sqrt(var_a / n_a + var_b / n_b)
    diff = mean_b - mean_a
    if se == 0.0:
        return ZTestResult(mean_a, mean_b, diff, 0.0, None, None)
    z = diff / se
    return ZTestResult(mean_a, mean_b, diff, se, z, float(2 * stats.norm.sf(abs(z))))


# ------------------------------------------------------------------------------------------------ SRM


@dataclass(frozen=True)
class SRMResult:
    """Chi-square goodness of fit of observed counts per variant vs expected counts (``srm`` = p < alpha)."""

    chi2: float | None
    df: int
    p_value: float
    alpha: float
    srm: bool
    observed: dict[str, int]
    expected: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def srm_test(
    observed: Mapping[str, int],
    expected: Mapping[str, float],
    *,
    alpha: float = SRM_ALPHA,
) -> SRMResult:
    """Sample-ratio-mismatch test: Pearson chi-square of ``observed`` vs ``expected`` (Fabijan et al. 2019).

    ``expected`` holds weights or expected counts per variant (rescaled to the observed total).
    ``chi2 = sum (O - E)^2 / E`` with ``k - 1`` degrees of freedom over the cells with ``E > 0``; a cell
    with ``E = 0`` and ``O > 0`` is a certain mismatch (``chi2 = None``, ``p = 0``). The conventional
    ``alpha = 0.001`` keeps false alarms rare when the check runs at every look.
    7100/2900 vs 70/30 -> chi2 = 4.762, p = 0.0291 (no SRM); 5200/4800 vs 50/50 -> p = 6.3e-5 (SRM).
    """
    names = list(observed)
    obs = np.array([float(observed[k]) for k in names])
    exp_w = np.array([float(expected.get(k, 0.0)) for k in names])
    total = obs.sum()
    if total <= 0 or exp_w.sum() <= 0:
        return SRMResult(None, 0, 1.0, alpha, False, dict(observed), {k: 0.0 for k in names})
    exp = exp_w / exp_w.sum() * total
    expected_out = {k: float(e) for k, e in zip(names, exp, strict=True)}
    positive = exp > 0
    if np.any(obs[~positive] > 0):
        return SRMResult(None, int(positive.sum()) - 1, 0.0, alpha, True, dict(observed), expected_out)
    df = int(positive.sum()) - 1
    if df < 1:
        return SRMResult(0.0, 0, 1.0, alpha, False, dict(observed), expected_out)
    chi2 = float(np.sum((obs[positive] - exp[positive]) ** 2 / exp[positive]))
    p = float(stats.chi2.sf(chi2, df))
    return SRMResult(chi2, df, p, alpha, p < alpha, {k: int(observed[k]) for k in names}, expected_out)


# ---------------------------------------------------------------------------------------------- mSPRT


def msprt_log_lr(diff: Any, var: Any, tau: float, theta0: float = 0.0) -> np.ndarray:
    """Log of the normal-mixture likelihood ratio of the mSPRT (arrays broadcast).

    For an estimate ``diff`` of ``theta`` that is ~ N(theta, V) with ``V = var`` and the mixing
    distribution ``theta ~ N(theta0, tau^2)`` (Johari et al. 2022, §4, two-stream normal case)::

        Lambda = sqrt(V / (V + tau^2)) * exp( tau^2 (diff - theta0)^2 / (2 V (V + tau^2)) )

    With ``n`` paired observations per arm and common variance ``sigma^2``, ``V = 2 sigma^2 / n`` and this is
    exactly the paper's ``sqrt(2s/(2s + n tau^2)) exp(n^2 tau^2 (Y - X - theta0)^2 / (4 s (2s + n tau^2)))``
    with ``s = sigma^2``; for unequal arms ``V = s_a/n_a + s_b/n_b`` (asymptotic version, Waudby-Smith et
    al. 2024). Positions with ``V <= 0`` or non-finite inputs give ``log Lambda = 0`` (no evidence).
    """
    d = np.asarray(diff, dtype=float) - theta0
    v = np.asarray(var, dtype=float)
    t2 = float(tau) ** 2
    if not t2 > 0:
        raise ValueError("tau must be positive")
    ok = np.isfinite(d) & np.isfinite(v) & (v > 0)
    v_safe = np.where(ok, v, 1.0)
    d_safe = np.where(ok, d, 0.0)
    out = 0.5 * np.log(v_safe / (v_safe + t2)) + t2 * d_safe**2 / (2 * v_safe * (v_safe + t2))
    return np.where(ok, out, 0.0)


def msprt_pvalue(diff: Any, var: Any, tau: float) -> np.ndarray:
    """mSPRT p-value ``min(1, 1 / Lambda)`` at one time (arrays broadcast).

    By Ville's inequality ``P(sup_n Lambda_n >= 1/alpha) <= alpha`` under H0, so stopping the first time
    this is ``<= alpha`` keeps the type-I error at ``alpha`` however often it is read. The always-valid
    p-value of Johari et al. is its running minimum over the observation sequence
    (:func:`running_min`).
    """
    return np.minimum(1.0, np.exp(-msprt_log_lr(diff, var, tau)))


def running_min(p: Any) -> np.ndarray:
    """Running minimum ``p*_n = min_{m <= n} p_m`` (the always-valid p-value sequence)."""
    return np.minimum.accumulate(np.asarray(p, dtype=float))


def msprt_confidence_sequence(diff: Any, var: Any, tau: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Always-valid (1 - alpha) confidence sequence ``{theta0 : Lambda(theta0) < 1/alpha}``.

    ``diff -/+ r`` with ``r^2 = 2 V (V + tau^2) / tau^2 * (log(1/alpha) + 0.5 log((V + tau^2) / V))``
    (inverting :func:`msprt_log_lr`; Johari et al. 2022, §5). Positions with ``V <= 0`` give ``(-inf, inf)``.
    """
    d = np.asarray(diff, dtype=float)
    v = np.asarray(var, dtype=float)
    t2 = float(tau) ** 2
    ok = np.isfinite(d) & np.isfinite(v) & (v > 0)
    v_safe = np.where(ok, v, 1.0)
    r = np.sqrt(
        2 * v_safe * (v_safe + t2) / t2 * (math.log(1 / alpha) + 0.5 * np.log((v_safe + t2) / v_safe))
    )
    r = np.where(ok, r, np.inf)
    return d - r, d + r


def proportion_diff_var(
    x_a: Any, n_a: Any, x_b: Any, n_b: Any, *, pooled: bool, deff: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Variance of ``p_b - p_a``: pooled under H0 (``p(1-p)(d_a/n_a + d_b/n_b)``) or unpooled (Wald,
    ``d_a p_a(1-p_a)/n_a + d_b p_b(1-p_b)/n_b``); ``deff = (d_a, d_b)`` are design effects
    (:func:`design_effect`, 1 for independent rows)."""
    x_a, n_a, x_b, n_b = (np.asarray(x, dtype=float) for x in (x_a, n_a, x_b, n_b))
    d_a, d_b = deff
    with np.errstate(divide="ignore", invalid="ignore"):
        if pooled:
            p = (x_a + x_b) / (n_a + n_b)
            return p * (1 - p) * (d_a / n_a + d_b / n_b)
        pa, pb = x_a / n_a, x_b / n_b
        return d_a * pa * (1 - pa) / n_a + d_b * pb * (1 - pb) / n_b


def design_effect(y: Any, clusters: Any) -> float:
    """Design effect of the per-row mean of ``y`` when rows are clustered (e.g. exposures of one unit).

    The per-row mean is the ratio ``R = sum_u X_u / sum_u N_u`` of per-cluster sums ``X_u`` and sizes
    ``N_u``; its delta-method variance is ``Var(X_u - R N_u) / (n N_bar^2)`` over the ``n`` clusters (Deng,
    Knoblich, Lu, "Applying the Delta Method in Metric Analytics", KDD 2018). Returned as the ratio to the
    independent-rows variance ``Var(y) / len(y)`` (Kish's design effect), at least 1 (never
    anti-conservative). 1.0 when there are fewer than two clusters or no variance.
    """
    y = np.asarray(y, dtype=float)
    if y.size < 2:
        return 1.0
    codes, uniques = pd.factorize(np.asarray(clusters))
    n = len(uniques)
    var_iid = y.var(ddof=1) / y.size
    if n < 2 or not var_iid > 0:
        return 1.0
    x = np.bincount(codes, weights=y, minlength=n)
    size = np.bincount(codes, minlength=n).astype(float)
    r = x.sum() / size.sum()
    var_delta = (x - r * size).var(ddof=1) / (n * size.mean() ** 2)
    return max(1.0, float(var_delta / var_iid))


@dataclass(frozen=True)
class MSPRTResult:
    """mSPRT summary at the current time: ``p_value`` always valid (running min), ``cs_*`` always valid."""

    diff: float
    tau: float
    p_value: float
    p_value_now: float
    cs_low: float | None
    cs_high: float | None
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def msprt_two_proportions(
    x_a: int,
    n_a: int,
    x_b: int,
    n_b: int,
    *,
    tau: float,
    alpha: float = 0.05,
    p_history: float = 1.0,
    deff: tuple[float, float] = (1.0, 1.0),
) -> MSPRTResult:
    """mSPRT for ``p_b - p_a`` at the current counts (normal mixture ``N(0, tau^2)``, tau absolute).

    The p-value uses the pooled (null) variance, the confidence sequence the unpooled one, both scaled
    by the arms' design effects ``deff``. ``p_history`` is the running minimum of earlier p-values, if
    known (1.0 otherwise).
    """
    diff = x_b / n_b - x_a / n_a
    p_now = float(msprt_pvalue(diff, proportion_diff_var(x_a, n_a, x_b, n_b, pooled=True, deff=deff), tau))
    lo, hi = msprt_confidence_sequence(
        diff, proportion_diff_var(x_a, n_a, x_b, n_b, pooled=False, deff=deff), tau, alpha
    )
    return MSPRTResult(diff, tau, min(p_now, p_history), p_now, _finite(float(lo)), _finite(float(hi)), alpha)


def msprt_two_means(
    mean_a: float,
    var_a: float,
    n_a: int,
    mean_b: float,
    var_b: float,
    n_b: int,
    *,
    tau: float,
    alpha: float = 0.05,
    p_history: float = 1.0,
) -> MSPRTResult:
    """mSPRT for ``mu_b - mu_a`` with ``V = s_a^2/n_a + s_b^2/n_b`` (tau in the metric's units)."""
    diff = mean_b - mean_a
    v = var_a / n_a + var_b / n_b
    p_now = float(msprt_pvalue(diff, v, tau))
    lo, hi = msprt_confidence_sequence(diff, v, tau, alpha)
    return MSPRTResult(diff, tau, min(p_now, p_history), p_now, _finite(float(lo)), _finite(float(hi)), alpha)


def sequential_proportion_pvalues(
    y: np.ndarray,
    is_b: np.ndarray,
    *,
    tau: float,
    burn_in: int = 100,
    deff: tuple[float, float] = (1.0, 1.0),
    running: bool = True,
) -> np.ndarray:
    """Always-valid mSPRT p-value after every observation of a time-ordered stream (vectorised).

    ``y`` (n,) 0/1 outcomes, ``is_b`` (n,) bool arm flags, in arrival order. Returns the running minimum of
    ``1/Lambda_m`` over the prefixes ``m`` in which both arms have at least ``burn_in`` observations (1.0
    before that): the always-valid p-value ``p*_n`` of Johari et al. (2022), Def. 2. Skipping early
    prefixes only makes it larger (conservative); it avoids the poor normal approximation of tiny arms.
    ``deff`` scales the arms' variances (clustered rows, :func:`design_effect`). ``running=False``
    returns the per-prefix ``min(1, 1/Lambda_m)`` instead of its running minimum.
    """
    y = np.asarray(y, dtype=float)
    b = np.asarray(is_b, dtype=bool)
    n_b = np.cumsum(b)
    n_a = np.arange(1, len(y) + 1) - n_b
    x_b = np.cumsum(y * b)
    x_a = np.cumsum(y * ~b)
    ready = (n_a >= burn_in) & (n_b >= burn_in)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.where(ready, x_b / np.maximum(n_b, 1) - x_a / np.maximum(n_a, 1), 0.0)
        var = np.where(
            ready,
            proportion_diff_var(x_a, np.maximum(n_a, 1), x_b, np.maximum(n_b, 1), pooled=True, deff=deff),
            0,
        )
    p = msprt_pvalue(diff, var, tau)
    return running_min(p) if running else p


def sequential_mean_pvalues(
    y: np.ndarray,
    is_b: np.ndarray,
    *,
    tau: float,
    burn_in: int = 100,
    deff: tuple[float, float] = (1.0, 1.0),
    running: bool = True,
) -> np.ndarray:
    """Like :func:`sequential_proportion_pvalues` for a real-valued metric (Welch variance per prefix)."""
    y = np.asarray(y, dtype=float)
    b = np.asarray(is_b, dtype=bool)
    n_b = np.cumsum(b).astype(float)
    n_a = np.arange(1, len(y) + 1) - n_b
    s_b, s_a = np.cumsum(y * b), np.cumsum(y * ~b)
    q_b, q_a = np.cumsum(y * y * b), np.cumsum(y * y * ~b)
    ready = (n_a >= max(burn_in, 2)) & (n_b >= max(burn_in, 2))
    na, nb = np.maximum(n_a, 2), np.maximum(n_b, 2)
    m_a, m_b = s_a / na, s_b / nb
    v_a = np.maximum(q_a - na * m_a**2, 0.0) / (na - 1)
    v_b = np.maximum(q_b - nb * m_b**2, 0.0) / (nb - 1)
    diff = np.where(ready, m_b - m_a, 0.0)
    var = np.where(ready, deff[0] * v_a / na + deff[1] * v_b / nb, 0.0)
    p = msprt_pvalue(diff, var, tau)
    return running_min(p) if running else p


# ------------------------------------------------------------------------------------------- Bayesian


@dataclass(frozen=True)
class BayesResult:
    """Beta-Binomial posterior comparison: P(p_b > p_a) and the expected losses (absolute rate units)."""

    prob_b_beats_a: float
    expected_loss_choose_b: float
    expected_loss_choose_a: float
    prior: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prior"] = list(self.prior)
        return d


def _window(a1: float, b1: float, a2: float, b2: float) -> tuple[float, float]:
    lo, hi = 1.0, 0.0
    for a, b in ((a1, b1), (a2, b2)):
        m = a / (a + b)
        sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        lo, hi = min(lo, m - 14 * sd), max(hi, m + 14 * sd)
    return max(0.0, lo), min(1.0, hi)


def beta_binomial(
    x_a: int, n_a: int, x_b: int, n_b: int, *, prior: tuple[float, float] = (1.0, 1.0)
) -> BayesResult:
    """P(p_b > p_a) and expected losses under independent ``Beta(prior)`` priors (exact, 1-D quadrature).

    Posteriors ``A ~ Beta(a0 + x_a, b0 + n_a - x_a)``, ``B ~ Beta(a0 + x_b, b0 + n_b - x_b)``.

    * ``P(B > A) = integral f_B(t) F_A(t) dt``
    * expected loss of choosing B ``= E[max(A - B, 0)] = integral f_B(t) (m_A S_{A+}(t) - t S_A(t)) dt``,
      where ``S_A`` is the survival function of A, ``S_{A+}`` that of ``Beta(a_A + 1, b_A)`` and ``m_A`` the
      mean of A (``E[A 1{A > t}] = m_A S_{A+}(t)``); the loss of choosing A follows from
      ``E[max(B - A, 0)] - E[max(A - B, 0)] = m_B - m_A`` (Stucchio 2015; Miller 2015).

    The integrals run over the posteriors' +/-14 sd window with adaptive quadrature (absolute error
    < 1e-9). 1100/10000 (B) vs 1000/10000 (A), Beta(1, 1) -> P(B > A) = 0.98946.
    """
    a0, b0 = prior
    aa, ba = a0 + x_a, b0 + n_a - x_a
    ab, bb = a0 + x_b, b0 + n_b - x_b
    if min(aa, ba, ab, bb) <= 0:
        raise ValueError("invalid counts or prior")
    log_norm_b = special.betaln(ab, bb)

    def pdf_b(t: float) -> float:
        return math.exp((ab - 1) * math.log(t) + (bb - 1) * math.log1p(-t) - log_norm_b) if 0 < t < 1 else 0.0

    m_a, m_b = aa / (aa + ba), ab / (ab + bb)
    lo, hi = _window(aa, ba, ab, bb)
    pts = [p for p in (m_a, m_b) if lo < p < hi]
    opts: dict[str, Any] = {"points": pts or None, "limit": 500, "epsabs": 1e-12, "epsrel": 1e-10}
    p_b, _ = integrate.quad(lambda t: pdf_b(t) * special.betainc(aa, ba, t), lo, hi, **opts)
    loss_b, _ = integrate.quad(
        lambda t: pdf_b(t) * (m_a * special.betaincc(aa + 1, ba, t) - t * special.betaincc(aa, ba, t)),
        lo,
        hi,
        **opts,
    )
    loss_b = max(loss_b, 0.0)
    loss_a = max(loss_b + m_b - m_a, 0.0)
    return BayesResult(min(max(p_b, 0.0), 1.0), loss_b, loss_a, (float(a0), float(b0)))


# ------------------------------------------------------------------------------------------------ Holm


def holm(p_values: Sequence[float | None], alpha: float = 0.05) -> tuple[list[bool], list[float | None]]:
    """Holm step-down adjustment (Holm 1979, via ``statsmodels.stats.multitest.multipletests``).

    Controls the family-wise error rate at ``alpha`` for any dependence. ``None`` entries (no test) stay
    ``None`` / not rejected and do not count in the family. Returns ``(reject, adjusted p-values)``.
    """
    idx = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    reject: list[bool] = [False] * len(p_values)
    adjusted: list[float | None] = [None] * len(p_values)
    if len(idx) == 1:  # a family of one: Holm is the identity
        reject[idx[0]], adjusted[idx[0]] = bool(p_values[idx[0]] <= alpha), float(p_values[idx[0]])  # type: ignore[operator,arg-type]
    elif idx:
        rej, adj, _, _ = multipletests([p_values[i] for i in idx], alpha=alpha, method="holm")
        for i, r, a in zip(idx, rej, adj, strict=True):
            reject[i], adjusted[i] = bool(r), float(a)
    return reject, adjusted


# ----------------------------------------------------------------------------------------------- power


def cohens_h(p1: float, p2: float) -> float:
    """Cohen's effect size for proportions ``h = 2 asin(sqrt(p1)) - 2 asin(sqrt(p2))`` (Cohen 1988, §6.2)."""
    return 2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2))


def sample_size_per_variant(
    baseline: float,
    target: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> tuple[int, int]:
    """Fixed-horizon sample size to detect ``baseline -> target`` with a two-sided test.

    ``n_a = (z_{1-alpha/2} + z_{power})^2 (1 + 1/ratio) / h^2`` with Cohen's h (solved by statsmodels
    ``NormalIndPower``), ``n_b = ratio * n_a``, both rounded up. ``ratio = n_b / n_a`` (the weight ratio of
    the split). 0.10 -> 0.11, alpha 0.05, power 0.8, ratio 1 -> (14745, 14745). This is a planning number:
    the always-valid mSPRT needs more observations than this at exactly the planned effect and fewer for
    larger effects.
    """
    if not (0 < baseline < 1 and 0 < target < 1) or baseline == target:
        raise ValueError("baseline and target must be distinct rates in (0, 1)")
    if ratio <= 0:
        raise ValueError("ratio must be positive")
    h = abs(cohens_h(target, baseline))
    n_a = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=ratio)
    n_a = float(np.asarray(n_a).item())
    return math.ceil(n_a - 1e-9), math.ceil(n_a * ratio - 1e-9)


def eta_days(
    required: Mapping[str, int], current: Mapping[str, int], per_day: Mapping[str, float]
) -> float | None:
    """Days until every variant reaches ``required`` at ``per_day`` exposures/day (0 if already there).

    ``None`` when a variant that still needs observations gets no traffic.
    """
    days = 0.0
    for k, need in required.items():
        missing = max(0, need - current.get(k, 0))
        if missing == 0:
            continue
        rate = per_day.get(k, 0.0)
        if rate <= 0:
            return None
        days = max(days, missing / rate)
    return days


# ---------------------------------------------------------------------------------------- intervals


def wilson_interval(x: int, n: int, alpha: float = 0.05) -> tuple[float | None, float | None]:
    """Wilson score interval for a proportion (Wilson 1927), via ``statsmodels`` ``proportion_confint``.

    ``(None, None)`` when ``n == 0``.
    """
    if n <= 0:
        return None, None
    lo, hi = proportion_confint(x, n, alpha=alpha, method="wilson")
    return float(lo), float(hi)


def mean_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float | None, float | None]:
    """Normal-approximation (CLT) interval for a mean: ``mean -/+ z_{1-alpha/2} s / sqrt(n)``."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return None, None
    half = stats.norm.ppf(1 - alpha / 2) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def latency_percentiles(
    latency_ms: np.ndarray, qs: Sequence[float] = (50, 95, 99)
) -> dict[str, float | None]:
    """Latency percentiles in ms (``numpy.percentile``, linear interpolation), keys ``p50``, ``p95``...

    Non-finite values are dropped; ``None`` for an empty sample.
    """
    v = np.asarray(latency_ms, dtype=float)
    v = v[np.isfinite(v)]
    keys = [f"p{q:g}" for q in qs]
    if v.size == 0:
        return dict.fromkeys(keys)
    return {k: float(x) for k, x in zip(keys, np.percentile(v, list(qs)), strict=True)}


def quantile_se(values: np.ndarray, q: float, *, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Sample ``q``-quantile and its standard error from order statistics (distribution free).

    The ranks ``n q -/+ z sqrt(n q (1 - q))`` bracket the true quantile with probability ~``1 - alpha``
    (binomial argument, Conover 1999 §3.2); ``se = (x_(hi) - x_(lo)) / (2 z)``. ``None`` when fewer than
    10 observations lie above the quantile (too few for the normal approximation).
    """
    v = np.sort(np.asarray(values, dtype=float))
    n = v.size
    if n == 0 or n * (1 - q) < 10 or n * q < 10:
        return None
    half = z * math.sqrt(n * q * (1 - q))
    lo = int(max(0, math.floor(n * q - half) - 1))
    hi = int(min(n - 1, math.ceil(n * q + half) - 1))
    return float(np.quantile(v, q)), float((v[hi] - v[lo]) / (2 * z))


# -------------------------------------------------------------------------------- non-inferiority


@dataclass(frozen=True)
class GuardrailResult:
    """Non-inferiority check of a guardrail metric (treatment b vs control a); "worse" = larger.

    ``estimate`` is the difference on the test scale (absolute for rates, ``log(q_b / q_a)`` for latency
    quantiles; ``relative`` gives ``q_b / q_a - 1``), ``margin`` the tolerated worsening on that scale.
    ``status``: ``pass`` (always-valid upper bound < margin: non-inferior), ``fail`` (always-valid lower
    bound > margin: worse than tolerated), ``inconclusive`` or ``insufficient_data``. ``p_value`` is the
    fixed-horizon one-sided non-inferiority p-value (H0: worsening >= margin), for information.
    """

    metric: str
    value_a: float | None
    value_b: float | None
    estimate: float | None
    relative: float | None
    margin: float
    cs_low: float | None
    cs_high: float | None
    p_value: float | None
    status: GuardrailStatus
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _guardrail(
    metric: str,
    value_a: float | None,
    value_b: float | None,
    est: float,
    var: float,
    margin: float,
    tau: float,
    alpha: float,
    relative: float | None,
) -> GuardrailResult:
    if not (math.isfinite(var) and var > 0):
        status: GuardrailStatus = "pass" if est < margin else "fail"
        return GuardrailResult(metric, value_a, value_b, est, relative, margin, est, est, None, status, alpha)
    lo, hi = msprt_confidence_sequence(est, var, tau, alpha)
    lo_f, hi_f = float(lo), float(hi)
    p = float(stats.norm.cdf((est - margin) / math.sqrt(var)))
    status = "pass" if hi_f < margin else "fail" if lo_f > margin else "inconclusive"
    return GuardrailResult(metric, value_a, value_b, est, relative, margin, lo_f, hi_f, p, status, alpha)


def noninferiority_rate(
    x_a: int,
    n_a: int,
    x_b: int,
    n_b: int,
    *,
    margin: float,
    alpha: float = 0.05,
    tau: float | None = None,
    metric: str = "error_rate",
    min_n: int = 100,
) -> GuardrailResult:
    """Non-inferiority of a "lower is better" rate (e.g. error rate) with an absolute ``margin``.

    ``d = p_b - p_a`` with unpooled variance ``p_a(1-p_a)/n_a + p_b(1-p_b)/n_b`` (Wald); the always-valid
    confidence sequence (:func:`msprt_confidence_sequence`, mixing ``tau``, default ``margin``) decides
    pass / fail so the check can run at every look; fixed-horizon p-value ``Phi((d - margin) / se)``.
    """
    if n_a < min_n or n_b < min_n:
        return GuardrailResult(
            metric, None, None, None, None, margin, None, None, None, "insufficient_data", alpha
        )
    p_a, p_b = x_a / n_a, x_b / n_b
    var = p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b
    if var == 0:  # no event in either arm yet: fall back to a one-event-per-arm variance (conservative)
        var = (1 / n_a) * (1 - 1 / n_a) / n_a + (1 / n_b) * (1 - 1 / n_b) / n_b
    return _guardrail(metric, p_a, p_b, p_b - p_a, var, margin, tau or margin, alpha, None)


def noninferiority_latency_quantile(
    latency_a_ms: np.ndarray,
    latency_b_ms: np.ndarray,
    *,
    q: float = 0.95,
    relative_margin: float = 0.10,
    alpha: float = 0.05,
    tau: float | None = None,
    metric: str = "latency_p95",
) -> GuardrailResult:
    """Non-inferiority of a latency quantile with a relative margin: H0 ``q_b >= (1 + m) q_a``.

    Works on the log scale: ``d = log q_b - log q_a`` (the quantile of log-latency is the log of the
    quantile), ``se^2 = se_a^2 + se_b^2`` with each ``se`` from order statistics (:func:`quantile_se`,
    the resampling-free bootstrap of Schultzberg & Ankargren 2023); the margin is ``log(1 + m)``.
    Decided on the always-valid confidence sequence (mixing ``tau``, default ``log(1 + m)``). Latencies in
    ms, must be > 0 (non-positive values are clipped to 1e-3 ms).
    """
    a = np.log(np.maximum(np.asarray(latency_a_ms, dtype=float), 1e-3))
    b = np.log(np.maximum(np.asarray(latency_b_ms, dtype=float), 1e-3))
    margin = math.log1p(relative_margin)
    qa, qb = quantile_se(a, q), quantile_se(b, q)
    if qa is None or qb is None:
        return GuardrailResult(
            metric, None, None, None, None, margin, None, None, None, "insufficient_data", alpha
        )
    est = qb[0] - qa[0]
    var = qa[1] ** 2 + qb[1] ** 2
    return _guardrail(
        metric, math.exp(qa[0]), math.exp(qb[0]), est, var, margin, tau or margin, alpha, math.expm1(est)
    )
