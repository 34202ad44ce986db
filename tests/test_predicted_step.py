"""The predicted step law (docs/math.md, "The predicted step law"): ``predicted_step`` and ``limit_gradient``.

Every number is compared with an independent route: the stationary law by a dense solve
(``MTDModel.stationary_distribution``), the gradient limit by long simulated chains, c∞ by the minimiser of a
Monte Carlo estimate of the risk of one-step MD (``md_predictive_all_prefixes``) at large n, the small-n
counterexample by exact enumeration checked against ``task_kl``, and B against the slopes fitted to measured
optimal steps in docs/figures/stepsize.json. ``MTDMATH_STEP_LAW_SLOW=1`` also runs the five settings of that
file (predicted B and the KL gap of the law to the fitted per-L optimum on held-out sequences).
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

import mtdmath
from mtdmath.fitting import MTDModel
from mtdmath.stepsize import limit_gradient, predicted_step, task_kl

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures" / "stepsize.json"
SLOW = os.environ.get("MTDMATH_STEP_LAW_SLOW") == "1"


def _task(S=3, m=2, seed=5, concentration=2.0):
    return mtdmath.random_transition_matrix(S, concentration=concentration, rng=seed)


# ------------------------------------------------------------------------------ the gradient limit ḡ
def test_limit_gradient_against_an_explicit_sum_over_a_dense_stationary_law():
    """eq-step-law-gbar written out window by window, with the stationary law from a dense LU solve."""
    pi, m = _task(S=3), 3
    alpha = np.array([2.0, 1.0, 0.5])
    mu = alpha / alpha.sum()
    lams = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    got = limit_gradient(pi, alpha, lams)
    for lam, gbar in zip(lams, got):
        rho, _ = MTDModel(pi, lam).stationary_distribution()
        want = np.zeros(m)
        for idx, w in enumerate(itertools.product(range(3), repeat=m)):  # oldest token first, like rho
            lag = [w[m - g] for g in range(1, m + 1)]  # token at lag g
            for b in range(3):
                p = sum(lam[h] * pi[lag[h], b] for h in range(m))
                s = sum(mu[h] * pi[lag[h], b] for h in range(m))
                want += rho[idx] * p * np.array([pi[lag[g], b] for g in range(m)]) / s
        # power iteration stops at an L1 change of 1e-13; its error is that over the spectral gap (here > 0.1)
        np.testing.assert_allclose(gbar, want, rtol=1e-10)
        assert abs(mu @ gbar - 1) < 1e-12  # μ·ḡ = 1 (eq-euler-identity / n)
        assert lam @ gbar >= 1 - 1e-12  # λ·ḡ >= 1 (Cauchy–Schwarz)


def test_limit_gradient_against_long_chain_averages():
    """∇ℓ_n(μ)/n along simulated chains converges to ḡ (the ergodic theorem): 16 chains, 4 standard errors."""
    pi, alpha = _task(S=3), np.array([1.0, 1.0])
    lam = np.array([0.7, 0.3])
    n = 20_000
    y = mtdmath.sample(pi, np.tile(lam, (16, 1)), n + 2, rng=0)
    avg = mtdmath.gradient(alpha / alpha.sum(), mtdmath.lag_factors(y, pi, 2)) / n  # (16, 2)
    exact = limit_gradient(pi, alpha, lam)
    se = avg.std(axis=0, ddof=1) / 4
    assert np.all(se < 5e-3)  # the comparison has power: ḡ − 1 is O(0.1) here
    assert np.all(np.abs(avg.mean(axis=0) - exact) <= 4 * se), (avg.mean(axis=0), exact, se)
    assert np.abs(exact - 1).max() > 20 * se.max()  # ḡ is not the trivial all-ones vector
    # the simulated-chain route (used above max_states) agrees within one chain's standard deviation x 4
    sim = limit_gradient(pi, alpha, lam, max_states=1, chain_length=n, rng=1)
    assert np.all(np.abs(sim - exact) <= 4 * 4 * se)


# ------------------------------------------------------------------------------ c∞ against Monte Carlo
def test_c_inf_against_the_minimiser_of_a_monte_carlo_risk():
    """c∞ (eq-step-law-cinf) against the loss-minimising c of one-step MD at η = c/n on simulated sequences.

    The Monte Carlo risk is the mean KL over the prefixes of two bands of n (every 8th prefix, paired
    over the grid of c by using the same sequences). Since 1/(n η_opt(n)) = B + A∞/n + o(1/n)
    (docs/math.md, math-step-law-exactness), 1/c_band is extrapolated linearly in mean(1/n) to 1/n = 0.
    The minimiser of each band is the vertex of a parabola in log c through the three points of a fine
    grid around the minimum of a coarse one (a wide parabola is biased: the risk is skewed in log c).
    Its standard error is a bootstrap over sequences.
    """
    pi, alpha = _task(S=3, seed=11, concentration=0.5), np.array([2.0, 1.0])
    r = predicted_step(pi, alpha, n_samples=1000, rng=1)
    assert r.exact_windows
    K, N = 800, 1600
    y, lam = mtdmath.sample_icl(pi, alpha, N + 3, K, rng=4)
    src = np.stack([y[:, 2 - g: y.shape[1] + 1 - g] for g in (1, 2)])
    p_true = np.einsum("gkt,gkts->kts", np.broadcast_to(lam.T[:, :, None], src.shape), pi[src])
    bands = [(400, 800), (800, 1600)]
    sel = {b: np.arange(b[0], b[1] + 1, 8) for b in bands}
    x = {b: float(np.mean(1.0 / sel[b])) for b in bands}

    def per_seq(grid):
        out = {b: [] for b in bands}
        for c in grid:
            p = mtdmath.md_predictive_all_prefixes(y, pi, alpha,
                                             eta=lambda n, c=c: np.where(n > 0, c / np.maximum(n, 1), 0.0))
            for b in bands:
                out[b].append(mtdmath.kl(p_true[:, sel[b]], p[:, sel[b]]).mean(axis=1))
        return {b: np.array(v).T for b, v in out.items()}  # (K, grid)

    coarse = np.exp(np.linspace(np.log(0.5), np.log(60.0), 9))  # wide, not centred on the prediction
    j = int(np.argmin(per_seq(coarse)[bands[1]].mean(axis=0)))
    assert 0 < j < len(coarse) - 1
    fine = np.exp(np.linspace(np.log(coarse[j - 1]), np.log(coarse[j + 1]), 9))
    per = per_seq(fine)

    def argmin(V):
        mean = V.mean(axis=0)
        i = min(max(int(np.argmin(mean)), 1), len(fine) - 2)
        a2, a1, _ = np.polyfit(np.log(fine[i - 1:i + 2]), mean[i - 1:i + 2], 2)
        return float(np.exp(-a1 / (2 * a2)))

    def extrapolate(idx):
        (b1, b2) = bands
        i1, i2 = 1 / argmin(per[b1][idx]), 1 / argmin(per[b2][idx])
        return 1 / (i2 - x[b2] * (i1 - i2) / (x[b1] - x[b2]))

    est = extrapolate(np.arange(K))
    rng = np.random.default_rng(3)
    se = float(np.std([extrapolate(rng.integers(0, K, K)) for _ in range(40)], ddof=1))
    # two independent estimates; 3 combined standard errors
    assert abs(est - r.c_inf) <= 3 * np.hypot(se, r.c_inf_se), (est, se, r.c_inf, r.c_inf_se)
    assert se < 0.1 * r.c_inf  # the comparison has power (c = 1, or η* at every n, are far outside it)


# ------------------------------------------------------------------------------ the law
def test_law_starts_at_eta_star_and_is_a_per_prefix_step():
    pi, alpha = _task(S=3), np.array([3.0, 1.0, 0.5])
    r = predicted_step(pi, alpha, n_samples=32, rng=0)
    assert r.A == 1 + alpha.sum() and r.B == 1 / r.c_inf
    assert abs(r.eta(0) - mtdmath.eta_bayes(alpha)) <= 1e-15  # one division
    n = np.arange(50)
    np.testing.assert_allclose(r.eta(n), 1 / (r.A + r.B * n), rtol=1e-15)
    y, _ = mtdmath.sample_icl(pi, alpha, 40, 3, rng=1)
    got = mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=r.eta)
    want = mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=(1 / (r.A + r.B * np.arange(38)))[None, :])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="n must be finite and >= 0"):
        r.eta(-1)


def _exact_risk_n1(pi, alpha, eta):
    """Risk of one-step MD at n = 1 (m = 2, L = 3) up to an η-free constant: the cross-entropy
    E[−log p̂(y[3])], by enumerating the S^3 contexts (uniform first tokens) with the Dirichlet moments
    (P(y[2] | λ)·p*(b) is quadratic in λ). The η-free entropy of p* drops out of every difference."""
    S = pi.shape[0]
    a0 = alpha.sum()
    mu = alpha / a0
    E2 = (np.outer(alpha, alpha) + np.diag(alpha)) / (a0 * (a0 + 1))  # E[λ_g λ_h]
    out = 0.0
    for y0, y1, y2 in itertools.product(range(S), repeat=3):
        C = np.array([pi[y1, y2], pi[y0, y2]])  # lag factors of the transition into y[2]
        lam1 = mu * np.exp(eta * C / (C @ mu))
        lam1 /= lam1.sum()
        rows = np.array([pi[y2], pi[y1]])  # the next token's rows at lags 1, 2
        phat = lam1 @ rows
        out -= sum((C @ E2 @ rows[:, b]) * np.log(phat[b]) for b in range(S)) / S**2
    return out


def test_small_n_optimal_step_is_not_eta_star_except_in_the_weak_evidence_limit():
    """docs/math.md, math-step-law-exactness: at n = 1 the loss-optimal step of a fixed pi is not η*."""
    from scipy import optimize

    alpha = np.ones(2)
    pi = np.array([[0.9, 0.1], [0.2, 0.8]])
    # the enumeration against Monte Carlo (task_kl on sampled sequences): the risk difference between two steps
    y, lam = mtdmath.sample_icl(pi, alpha, 4, 200_000, rng=0)
    d_mc = task_kl(y, lam, pi, alpha, 0.9, L=3) - task_kl(y, lam, pi, alpha, 0.1, L=3)
    d_ex = _exact_risk_n1(pi, alpha, 0.9) - _exact_risk_n1(pi, alpha, 0.1)
    assert abs(d_mc.mean() - d_ex) <= 4 * d_mc.std(ddof=1) / np.sqrt(d_mc.size)
    eta_star = mtdmath.eta_bayes(alpha)

    def opt(p):
        return optimize.minimize_scalar(lambda e: _exact_risk_n1(p, alpha, e), bounds=(0.01, 3.0), method="bounded",
                                        options={"xatol": 1e-10}).x

    e1 = opt(pi)
    assert abs(e1 - 0.33995) < 5e-5 and abs(e1 - eta_star) > 5e-3
    gaps = [abs(opt(np.array([[0.5 + e, 0.5 - e], [0.5 - e, 0.5 + e]])) - eta_star) for e in (0.3, 0.1, 0.03)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4  # → η* as the rows of pi merge


# ------------------------------------------------------------------------------ against the measured slopes
def _fitted_slope(setting):
    """WLS slope of 1/η_opt on n and its standard error (σ of 1/η_opt = σ_η/η², as the experiment weights)."""
    rows = setting["rows"]
    n = np.array([r["n"] for r in rows], float)
    eta = np.array([r["eta_opt"] for r in rows])
    sy = np.array([r["eta_opt_se"] for r in rows]) / eta**2
    D = np.stack([np.ones_like(n), n], axis=1) / sy[:, None]
    cov = np.linalg.inv(D.T @ D)
    beta = cov @ D.T @ ((1 / eta) / sy)
    return float(beta[1]), float(np.sqrt(cov[1, 1]))


def _settings(names=None):
    res = json.loads(FIGURES.read_text())["results"]
    return {k: v for k, v in res.items() if names is None or k in names}


@pytest.mark.parametrize("name", ["m=2", "m=2 pi2 (beta=2)"])
def test_predicted_slope_against_the_fitted_slope(name):
    s = _settings([name])[name]
    pi, alpha = np.asarray(s["pi"]), np.asarray(s["alpha"])
    r = predicted_step(pi, alpha, n_samples=256, rng=0)
    B_fit, B_fit_se = _fitted_slope(s)
    # the fit's own B is what the experiment reports; our WLS reproduces it (same weights)
    assert abs(B_fit - s["fit"]["A+B*n"]["params"]["B"]) < 1e-9
    assert abs(r.B - B_fit) <= 3 * np.hypot(r.B_se, B_fit_se), (r.B, r.B_se, B_fit, B_fit_se)


@pytest.mark.skipif(not SLOW, reason="set MTDMATH_STEP_LAW_SLOW=1 (minutes: m = 3 and 5, held-out KL)")
def test_five_settings_slopes_and_kl_gap_to_the_fitted_optimum(capsys):
    lines, bad = [], []
    for i, (name, s) in enumerate(_settings().items()):
        pi, alpha = np.asarray(s["pi"]), np.asarray(s["alpha"])
        m = len(alpha)
        r = predicted_step(pi, alpha, n_samples=256, rng=0)
        B_fit, B_fit_se = _fitted_slope(s)
        gaps = []
        for row in s["rows"]:
            L = row["L"]
            y, lam = mtdmath.sample_icl(pi, alpha, L + 1, 2048, rng=np.random.default_rng([7, i, L]))
            d = task_kl(y, lam, pi, alpha, r.eta(L - m), L=L) - task_kl(y, lam, pi, alpha, row["eta_opt"], L=L)
            gaps.append((L, d.mean(), d.std(ddof=1) / np.sqrt(d.size)))
        lines.append(f"{name}: B = {r.B:.4f} ± {r.B_se:.4f} (c∞ = {r.c_inf:.3f} ± {r.c_inf_se:.3f}), fitted "
                     f"{B_fit:.4f} ± {B_fit_se:.4f}; KL(law) − KL(η_opt(L)) [nats]: "
                     + ", ".join(f"L={L}: {g:+.5f} ± {e:.5f}" for L, g, e in gaps))
        if abs(r.B - B_fit) > 3 * np.hypot(r.B_se, B_fit_se):
            bad.append(f"{name}: slope")
        if max(g for _, g, _ in gaps) > 5e-4:  # the target for the law against the per-L optimum
            bad.append(f"{name}: KL gap")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not bad, bad


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw, name", [
    (dict(n_samples=1), "n_samples"), (dict(n_windows=0), "n_windows"), (dict(max_states=0), "max_states"),
    (dict(chain_length=0), "chain_length"), (dict(rng=-1), "rng"), (dict(n_samples=2.5), "n_samples"),
])
def test_bad_arguments_are_named(kw, name):
    with pytest.raises(ValueError, match=name):
        predicted_step(_task(S=3), np.ones(2), **kw)


def test_bad_task_is_named():
    with pytest.raises(ValueError, match="alpha"):
        predicted_step(_task(S=3), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="pi"):
        predicted_step(np.ones((3, 3)), np.ones(2))
    with pytest.raises(ValueError, match="lam"):
        limit_gradient(_task(S=3), np.ones(2), np.array([0.5, 0.6]))


def test_the_softmax_sink_transformer_with_c_inf_implements_the_law():
    """docs/math.md eq-sink-consistent: c = c∞ and the default a = c∞(1+α₀) − m give exactly η(n) = 1/(A + n/c∞)."""
    torch = pytest.importorskip("torch")
    from mtdmath.nn import MDTransformer

    pi, alpha = _task(S=4, seed=3, concentration=1.0), np.array([2.0, 1.0, 0.5])
    r = predicted_step(pi, alpha, n_samples=16, rng=0)
    assert r.c_inf * (1 + alpha.sum()) - len(alpha) >= 0  # a >= 0: the law is a sink model
    model = MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=r.c_inf, dtype=torch.float64)
    y, _ = mtdmath.sample_icl(pi, alpha, 30, 3, rng=1)
    with torch.no_grad():
        got = torch.softmax(model(torch.as_tensor(y)), dim=-1).numpy()  # forward returns logits
    want = mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=r.eta)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)  # the construction's tolerance (BRIEF: 1e-10)


# ------------------------------------------------------------------------------ the limits of the law (eq-step-law-regimes)
@pytest.mark.parametrize("pi, alpha", [
    (_task(S=3), np.array([0.7])),  # one lag: λ = 1
    (np.tile(np.array([0.2, 0.5, 0.3]), (3, 1)), np.array([1.0, 2.0])),  # identical rows: no evidence
    (np.ones((1, 1)), np.array([1.0, 1.0, 3.0])),  # S = 1
    (_task(S=3), np.array([1e300, 1e300])),  # λ* = μ to float64 resolution
])
def test_no_evidence_gives_the_flat_law(pi, alpha):
    """Every step gives the same predictor: the law is η ≡ η* (c∞ = inf, B = 0), not an error or NaN."""
    r = predicted_step(pi, alpha, n_samples=16, rng=0)
    assert r.regime == "flat" and r.c_inf == np.inf and r.B == 0 and r.c_inf_se == 0 and r.B_se == 0
    np.testing.assert_array_equal(r.eta(np.array([0.0, 10.0, 1e6])), mtdmath.eta_bayes(alpha))
    # independent route: one MD step from μ on sampled contexts, at steps from tiny to huge, stays at μ
    # (the gradient is proportional to 1 = μ·∇ℓ/n wherever the lag factors agree across lags)
    if np.all(alpha < 1e10):
        y, _ = mtdmath.sample_icl(pi, alpha, 40, 8, rng=1)
        C = mtdmath.lag_factors(y, pi, alpha.shape[0])
        for eta in (1e-3, 1.0, 1e3):
            np.testing.assert_allclose(mtdmath.one_step_md(C, alpha, eta=eta), np.broadcast_to(alpha / alpha.sum(), (8, len(alpha))),
                                       rtol=8 * max(eta, 1.0) * 40 * np.finfo(float).eps)
            # equal shifts of the softmax up to the gradient's rounding: n = 39 terms, relative eps each, times η


def test_c_inf_tends_to_a_finite_limit_as_the_evidence_weakens():
    """α = t·1 with t -> inf: λ* − μ = O(t^{-1/2}), R∞ is a quadratic form in it to leading order, so its
    minimiser converges to a finite limit. The risk change is formed with log1p/expm1: as a difference of two
    KLs (each of size log S) a change of size 1/t = 1e-20 is below their rounding, and the minimum wanders."""
    pi = _task(S=3)
    c = [predicted_step(pi, np.full(2, t), n_samples=64, rng=0) for t in (1e8, 1e20)]
    assert all(r.regime == "interior" for r in c)
    # the same seed draws the same normal variates behind both gamma draws, so the directions of λ* − μ
    # agree; the leading-order correction at t = 1e8 is O(t^{-1/2}) = 1e-4
    assert abs(c[0].c_inf / c[1].c_inf - 1) < 1e-3, (c[0].c_inf, c[1].c_inf)
    assert c[1].c_inf_se >= 0 and not np.isnan(c[1].c_inf_se)


def test_lag_weights_at_the_vertices_give_the_unbounded_law():
    """α -> 0: λ* is a vertex e_j, ḡ(e_j) is largest at lag j, so λ^c -> λ* as c -> inf and the risk's
    infimum is at c = inf: η ≡ η* (B = 0). Independently, one-step MD at η = c/n on long sampled sequences
    gets better as c grows."""
    pi, alpha = _task(S=3), np.full(2, 1e-300)
    r = predicted_step(pi, alpha, n_samples=16, rng=0)
    assert r.regime == "unbounded" and r.c_inf == np.inf and r.B == 0 and r.eta(1e6) == r.eta_star
    for j in range(2):
        assert np.argmax(limit_gradient(pi, alpha, np.eye(2)[j])) == j
    y, lam = mtdmath.sample_icl(pi, alpha, 2001, 32, rng=2)
    n = 2000 - 2
    risks = [task_kl(y, lam, pi, alpha, c / n, L=2000).mean() for c in (1.0, 10.0, 100.0, 1000.0)]
    assert np.all(np.diff(risks) < 0), risks


def test_a_prior_mean_that_underflows_is_refused_naming_alpha():
    with pytest.raises(ValueError, match="alpha: the prior mean"):
        predicted_step(_task(S=3), np.array([1e-300, 1e300]))


def test_float32_pi_and_a_slowly_mixing_chain():
    """A float32 pi sums to 1 only within float32 rounding (renormalised in float64, else the power
    iteration's mass drifts and never settles); a chain with a transition probability of 7e-8 mixes in ~1e7
    steps (the stationary law then comes from a direct solve): ḡ against the dense solve of MTDModel."""
    pi = np.array([[1 - 7e-5, 7e-5], [7e-8, 1 - 7e-8]])
    alpha, lam = np.array([1.0, 2.0]), np.array([0.4, 0.6])
    mu = alpha / alpha.sum()
    rho, _ = MTDModel(pi, lam).stationary_distribution()
    want = np.zeros(2)
    for idx, w in enumerate(itertools.product(range(2), repeat=2)):  # oldest token first, like rho
        lag = [w[1], w[0]]
        for b in range(2):
            p = sum(lam[h] * pi[lag[h], b] for h in range(2))
            s = sum(mu[h] * pi[lag[h], b] for h in range(2))
            want += rho[idx] * p * np.array([pi[lag[g], b] for g in range(2)]) / s
    # two LU solves of a chain with condition ~1/gap = 1e7: agreement to ~1e7·eps
    np.testing.assert_allclose(limit_gradient(pi, alpha, lam), want, rtol=1e-8)
    pi32 = _task(S=3, concentration=0.3).astype(np.float32)
    r32 = predicted_step(pi32, alpha, n_samples=16, rng=0)
    pi64 = pi32.astype(np.float64)
    r64 = predicted_step(pi64 / pi64.sum(axis=1, keepdims=True), alpha, n_samples=16, rng=0)
    assert r32.regime == r64.regime == "interior"
    # the same float64 matrix up to one more rounding of each row; the minimiser's tolerance is 1e-7 in log c
    assert abs(r32.c_inf / r64.c_inf - 1) < 1e-6


# ------------------------------------------------------------------------------ the named step "predicted"
def _one_step_by_prefix(y, pi, alpha, eta_of_n):
    """One MD step from μ at each prefix, prefix by prefix (k_step_md on that prefix's lag factors, then
    ``predictive``): a route independent of the cumulative-sum kernel and of the transformer."""
    m = len(alpha)
    rows = []
    for r in range(y.shape[1] - m + 1):
        pre = y[:, :m + r]
        lam = mtdmath.k_step_md(mtdmath.lag_factors(pre, pi, m), alpha, 1, eta=float(eta_of_n(r)))
        rows.append(mtdmath.predictive(lam, pre, pi))
    return np.stack(rows, axis=1)


def test_named_predicted_step_is_the_seeded_law_in_the_estimator_and_the_construction():
    """``eta="predicted"`` = ``predicted_step(pi, alpha, rng=0)``: the all-prefix estimator and the softmax-sink
    construction both equal one MD step at the law's η(n), computed prefix by prefix."""
    torch = pytest.importorskip("torch")
    from mtdmath.nn import MDTransformer

    pi, alpha = _task(S=3, seed=4, concentration=1.0), np.array([1.5, 1.0])
    law = predicted_step(pi, alpha, rng=0)
    assert law.regime == "interior" and law.c_inf * (1 + alpha.sum()) - 2 > 0
    y, _ = mtdmath.sample_icl(pi, alpha, 40, 4, rng=2)
    want = _one_step_by_prefix(y, pi, alpha, lambda n: 1.0 / ((1 + alpha.sum()) + n / law.c_inf))
    # the kernel accumulates in float64 against a per-prefix recomputation: exact paths, 1e-12 relative
    np.testing.assert_allclose(mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta="predicted"), want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=law), want, rtol=1e-12, atol=0)
    for eta in ("predicted", law):
        model = MDTransformer.construct(pi, alpha, eta=eta)
        assert model.aggregation == "softmax_sink"
        with torch.no_grad():
            got = torch.softmax(model(torch.as_tensor(y)), dim=-1).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)  # the construction's tolerance (BRIEF: 1e-10)
    # a different seed gives a different law: the name is the seed-0 law, not any law
    other = predicted_step(pi, alpha, rng=1)
    assert other.c_inf != law.c_inf
    assert np.abs(mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=other) - want).max() > 1e-8


def test_named_predicted_step_outside_the_interior_regime_and_bad_names():
    torch = pytest.importorskip("torch")
    from mtdmath.nn import MDTransformer
    from mtdmath.stepsize import PredictedStep

    # identical rows: the flat law η ≡ η*, built as the "sum" model at η*
    pi, alpha = np.tile(np.array([0.2, 0.5, 0.3]), (3, 1)), np.array([1.0, 2.0])
    model = MDTransformer.construct(pi, alpha, eta="predicted")
    assert model.aggregation == "sum"
    y, _ = mtdmath.sample_icl(_task(S=3), alpha, 20, 2, rng=0)
    with torch.no_grad():
        got = torch.softmax(model(torch.as_tensor(y)), dim=-1).numpy()
    np.testing.assert_allclose(got, _one_step_by_prefix(y, pi, alpha, lambda n: 1 / (1 + alpha.sum())), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="aggregation='softmax_sink'.*aggregation='sum'"):
        MDTransformer.construct(pi, alpha, eta="predicted", aggregation="softmax_sink")
    # a law whose sink weight would be negative: c∞ = 0.1 < m/(1+α₀) = 0.5
    low = PredictedStep(c_inf=0.1, c_inf_se=0.0, A=4.0, B=10.0, B_se=0.0, eta_star=0.25, n_samples=2,
                        exact_windows=True)
    with pytest.raises(ValueError, match="eta: the step law has c_inf"):
        MDTransformer.construct(_task(S=3), alpha, eta=low)
    with pytest.raises(ValueError, match="sets c and a"):
        MDTransformer.construct(_task(S=3), alpha, eta="predicted", c=1.0)
    with pytest.raises(ValueError, match="aggregation='sum'.*softmax_sink"):
        MDTransformer.construct(_task(S=3), alpha, eta="predicted", aggregation="sum")
    for bad in ("optimal", "Predicted"):
        with pytest.raises(ValueError, match="eta must be"):
            mtdmath.md_predictive_all_prefixes(y, _task(S=3), alpha, eta=bad)
        with pytest.raises(ValueError, match="eta must be"):
            MDTransformer.construct(_task(S=3), alpha, eta=bad)
