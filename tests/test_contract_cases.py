"""Regression tests of the core contract: the valid inputs at the edges that once hung, crashed or
allocated without a budget, each checked against an independent route.

The property test over the whole public API is ``tests/test_contract.py``; these are the
hand-made cases it generalises, kept as plain tests so each failure names its case.
"""
from __future__ import annotations

import math
import tracemalloc
import warnings

import numpy as np
import pytest

import mtdmath
from mtdmath.estimators import _kkt_floor
from mtdmath.experiments import posterior_mean_all_prefixes

from backends import ALL, params

torch = pytest.importorskip("torch")


def _ll(lam: np.ndarray, C: np.ndarray) -> float:
    """ℓ(lam) in float64, written out (no library code)."""
    return float(np.log(C @ lam).sum())


@pytest.mark.parametrize("make", [lambda X: torch.as_tensor(X, dtype=torch.float32), lambda X: X.astype(np.float32)],
                         ids=["torch-f32", "numpy-f32"])
def test_mle_float32_stops_at_the_dtype_tolerance(make):
    X = np.random.default_rng(1).uniform(0.05, 1, (2000, 4))
    with warnings.catch_warnings():
        # the default tol 1e-12 is below what float32 can certify: with a tolerance that ignores
        # the dtype the iteration runs to max_steps and warns
        warnings.simplefilter("error", RuntimeWarning)
        lam32 = np.asarray(mtdmath._xp.to_numpy(mtdmath.mle(make(X), max_steps=500)), dtype=np.float64)
    lam64 = mtdmath.mle(X)
    n, m = X.shape
    floor = _kkt_floor(n, m, np.finfo(np.float32).eps)
    assert 1e-7 < floor < 1e-5  # the float32 tolerance: 4 (m + log2 n) eps32 = 7.1e-6 here
    # the documented guarantee, checked in float64 on the float32 answer: ℓ(MLE) - ℓ(lam) <= n · gap.
    # The gap of lam32 evaluated in float64 is at most the float32 tolerance plus the effect of
    # rounding lam to float32 (|δlam| <= eps32 per entry, ∇ℓ/n ~ 1: a few eps32); 2x floor holds both.
    lam32 /= lam32.sum()
    gap64 = float(mtdmath.kkt_gap(lam32, X))
    assert gap64 <= 2 * floor
    assert _ll(lam64, X) - _ll(lam32, X) <= n * 2 * floor
    # and the float64 MLE is held to 1e-12 as before (the floor is far below it in float64)
    assert float(mtdmath.kkt_gap(lam64, X)) < 1e-12
    assert _kkt_floor(10**9, 64, np.finfo(np.float64).eps) < 1e-12


def test_the_float32_tolerance_can_fail():
    """A deliberately unreachable iteration budget still warns: the stop did not become vacuous."""
    X = np.random.default_rng(1).uniform(0.05, 1, (2000, 4))
    with pytest.warns(RuntimeWarning, match="max_steps"):
        mtdmath.mle(torch.as_tensor(X, dtype=torch.float32), max_steps=1)


def _estimators(alpha: np.ndarray, lam: np.ndarray):
    return {
        "mle": lambda C: mtdmath.mle(C),
        "mirror_descent": lambda C: mtdmath.mirror_descent(C, eta=0.5, steps=2),
        "em": lambda C: mtdmath.em(C, steps=2),
        "one_step_md": lambda C: mtdmath.one_step_md(C, alpha),
        "k_step_md": lambda C: mtdmath.k_step_md(C, alpha, 3),
        "corrected_one_step_md": lambda C: mtdmath.corrected_one_step_md(C, alpha),
        "posterior_mean": lambda C: mtdmath.posterior_mean(C, alpha),
        "posterior_mean_mc": lambda C: mtdmath.posterior_mean_mc(C, alpha, samples=8, rng=0)[0],
        "kkt_gap": lambda C: mtdmath.kkt_gap(lam, C),
        "log_evidence": lambda C: mtdmath.log_evidence(C, alpha),
        "log_likelihood": lambda C: mtdmath.log_likelihood(lam, C),
        "responsibilities": lambda C: mtdmath.responsibilities(lam, C),
    }


@pytest.mark.parametrize("bk", params(ALL))
@pytest.mark.parametrize("name", list(_estimators(np.ones(3), np.ones(3) / 3)))
@pytest.mark.parametrize("shape", [(0, 5, 3), (2, 0, 5, 3), (0, 0, 3)])
def test_every_estimator_accepts_an_empty_batch(bk, name, shape):
    alpha, lam = np.array([1.0, 2.0, 0.5]), bk.asarray(np.array([0.2, 0.3, 0.5]))
    out = _estimators(alpha, lam)[name](bk.asarray(np.zeros(shape)))
    got = bk.check(out)
    batch = shape[:-2]
    want = {"kkt_gap": batch, "log_evidence": batch, "log_likelihood": batch,
            "responsibilities": shape}.get(name, batch + (3,))
    assert got.shape == want


def test_prefix_posterior_refuses_before_allocating():
    C = np.full((1, 20000, 4), 0.5)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"^C: .* GiB .* max_bytes"):
            posterior_mean_all_prefixes(C, np.ones(4))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # refused from the sizes alone: no state array, no layout (the layout of n = 20000, m = 4 is
    # 2e8 rows); the validation of C makes one pass with a few small temporaries
    assert peak < 4 * C.nbytes
    # the budget is the caller's: a small problem under a tiny budget is refused too, and a
    # budget that fits is accepted (the bound is levels_bytes plus the result)
    Cs = np.random.default_rng(0).uniform(0.1, 1, (2, 6, 3))
    with pytest.raises(ValueError, match="max_bytes"):
        posterior_mean_all_prefixes(Cs, np.ones(3), max_bytes=1000)
    post = posterior_mean_all_prefixes(Cs, np.ones(3))
    np.testing.assert_allclose(post[:, -1], mtdmath.posterior_mean(Cs, np.ones(3)), rtol=1e-12)


@pytest.mark.parametrize("make", [lambda p: p.astype(np.float16), lambda p: torch.as_tensor(p, dtype=torch.float16)],
                         ids=["numpy", "torch"])
def test_sample_icl_accepts_a_float16_pi(make):
    pi64 = mtdmath.random_transition_matrix(5, rng=3)
    pi16 = make(pi64)
    y, lam = mtdmath.sample_icl(pi16, np.ones(3), 40, 4, rng=7)
    y2, lam2 = mtdmath.sample_icl(pi16, np.ones(3), 40, 4, rng=7)
    y_np, lam_np = mtdmath._xp.to_numpy(y), mtdmath._xp.to_numpy(lam)
    assert y_np.dtype == np.int64 and lam_np.dtype == np.float32  # float16 computes as float32
    np.testing.assert_array_equal(y_np, mtdmath._xp.to_numpy(y2))
    np.testing.assert_array_equal(lam_np, mtdmath._xp.to_numpy(lam2))
    # the same draws as the float64 sampler given the float16 values renormalised (the sampler
    # divides each cumulative row by its total, so both routes see the same CDFs up to rounding)
    p = np.asarray(mtdmath._xp.to_numpy(pi16), dtype=np.float64)
    y64, lam64 = mtdmath.sample_icl(p / p.sum(1, keepdims=True), np.ones(3), 40, 4, rng=7)
    np.testing.assert_array_equal(y_np, y64)
    np.testing.assert_allclose(lam_np, lam64, rtol=1e-6)  # float32 rounding of the same draws


@pytest.mark.parametrize("value", ["no", "False", 1, 0, None, np.array([True])])
def test_optimal_step_schedule_is_a_strict_bool(value):
    pi = mtdmath.random_transition_matrix(3, rng=0)
    with pytest.raises(ValueError, match=r"^schedule must be True or False"):
        mtdmath.optimal_step(pi, np.ones(2), L=4, n_train=4, n_test=4, n_boot=0, schedule=value, rng=0)
    # numpy booleans are booleans
    mtdmath.optimal_step(pi, np.ones(2), L=4, n_train=4, n_test=4, n_boot=0, schedule=np.bool_(False), rng=0)


def test_optimal_step_budget_names_n_train():
    pi = mtdmath.random_transition_matrix(3, rng=0)
    with pytest.raises(ValueError, match=r"^n_train, L: .* GiB"):
        mtdmath.optimal_step(pi, np.ones(2), L=4, n_train=10**12, n_test=4, rng=0)
    with pytest.raises(ValueError, match=r"^n_test, T: .* GiB"):
        mtdmath.optimal_step(pi, np.ones(2), T=1000, n_train=4, n_test=10**10, rng=0)


def test_prefix_posterior_evidence_matches_log_evidence_per_prefix():
    """The level iterator's log scale is kept per level: the evidence of every prefix is exact."""
    from mtdmath.bayes import PolyaLevels

    rng = np.random.default_rng(5)
    C = rng.uniform(1e-3, 1, (2, 9, 3))
    alpha = np.array([0.3, 2.0, 1e-3])
    rec = PolyaLevels(C, alpha, 2**30)
    for L in rec:
        post, le = rec.moments()
        np.testing.assert_allclose(le, mtdmath.log_evidence(C[:, :L], alpha), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(post, mtdmath.posterior_mean(C[:, :L], alpha), rtol=1e-11, atol=1e-15)
    # brute force for n = 2, m = 2: E[Π_i C[i]·lam] under Dirichlet(alpha) by exact moments
    C2, a = rng.uniform(0.1, 1, (1, 2, 2)), np.array([0.7, 1.9])
    a0 = a.sum()
    e1, e11, e12 = a[0] / a0, a[0] * (a[0] + 1) / (a0 * (a0 + 1)), a[0] * a[1] / (a0 * (a0 + 1))
    e22 = a[1] * (a[1] + 1) / (a0 * (a0 + 1))
    (c00, c01), (c10, c11) = C2[0]
    want = c00 * c10 * e11 + (c00 * c11 + c01 * c10) * e12 + c01 * c11 * e22
    rec = PolyaLevels(C2, a, 2**30)
    for L in rec:
        if L == 1:
            assert math.isclose(float(np.exp(rec.moments()[1][0])), c00 * e1 + c01 * (1 - e1), rel_tol=1e-13)
    assert math.isclose(float(np.exp(rec.moments()[1][0])), want, rel_tol=1e-13)


def test_huge_alpha_in_the_second_order_estimator():
    """α₀ = 2e300: (1+α₀)² overflows a float; the estimator is then the prior mean to all orders
    (every correction term carries 1/(1+α₀)), i.e. uniform here."""
    C = np.random.default_rng(2).uniform(0.1, 1, (5, 2))
    out = mtdmath.corrected_one_step_md(C, [1e300, 1e300])
    np.testing.assert_allclose(out, [0.5, 0.5], rtol=1e-15)
    out = mtdmath.corrected_one_step_md(C, [1e300, 3e300])
    np.testing.assert_allclose(out, [0.25, 0.75], rtol=1e-15)


def test_md_from_a_prior_mean_below_the_float_range():
    """alpha = (1e-290, 1e188): μ_1 = 1e-478 is 0 in float64, log μ is exact. One MD step of size
    η* = 1/(1+α₀) ~ 1e-188 from μ on a transition only lag 1 explains has ∇ℓ_1 = 1/μ_1 ~ 1e478:
    η*∇ℓ_1 ~ 1e290 dominates log μ_1 ~ -1100, so lam¹ puts all its weight on lag 1; without that
    transition the step is negligible and lam¹ stays μ = (0, 1) in float64."""
    alpha = np.array([1e-290, 1e188])
    C = np.array([[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_array_equal(mtdmath.one_step_md(C, alpha), [1.0, 0.0])
    np.testing.assert_array_equal(mtdmath.one_step_md(C[1:], alpha), [0.0, 1.0])
    np.testing.assert_array_equal(mtdmath.k_step_md(C, alpha, 3), [1.0, 0.0])
    # the estimators whose formula divides by μ refuse it, naming alpha
    with pytest.raises(ValueError, match=r"^alpha: the prior mean alpha / α₀ underflows for lags \[1\]"):
        mtdmath.corrected_one_step_md(C, alpha)
    with pytest.raises(ValueError, match=r"^alpha: the prior mean"):
        mtdmath.md_predictive_all_prefixes(np.array([0, 1, 0, 1]), np.full((2, 2), 0.5), alpha)


def test_optimal_step_accepts_a_float32_pi():
    pi64 = mtdmath.random_transition_matrix(3, rng=0)
    pi32 = torch.as_tensor(pi64, dtype=torch.float32)
    r32 = mtdmath.optimal_step(pi32, np.ones(2), L=5, n_train=4, n_test=4, n_boot=0, rng=1)
    # the same as the float64 route on the float32 values renormalised
    p = pi32.double().numpy()
    r64 = mtdmath.optimal_step(p / p.sum(1, keepdims=True), np.ones(2), L=5, n_train=4, n_test=4, n_boot=0, rng=1)
    assert r32.eta == r64.eta and r32.kl == r64.kl


def test_responsibilities_where_s_underflows():
    """s_0 = 6.6e-300 · 4.6e-300 underflows: C/s overflows for the lags lam gives 0 (0·inf = NaN
    before); the responsibility is 1 on the one lag that explains the transition, 0 elsewhere."""
    lam = np.array([1.0, 4.58e-300, 0.0, 0.0])
    C = np.array([[0.0, 6.6e-300, 0.19, 0.74], [0.0, 0.18, 0.0, 9.4e-300]])
    np.testing.assert_array_equal(mtdmath.responsibilities(lam, C), [[0, 1, 0, 0], [0, 1, 0, 0]])


def test_second_order_estimator_with_a_prior_mean_of_1e_minus_250():
    """alpha = (4e196, 3e-55): μ_2 = 8e-252 is representable but ũ ~ 1/μ_2 squares to inf. The
    estimator is log μ + g̃/(1+α₀) + ζ; every term is tiny next to log μ_1 - log μ_2 ~ 578 except
    where g̃/(1+α₀) ~ 1e54: compare with the same formula in exact rational arithmetic."""
    from fractions import Fraction as F

    C = np.array([[0.3, 0.9], [0.5, 0.1]])
    alpha = np.array([4.18365913e196, 3.30736268e-055])
    out = mtdmath.corrected_one_step_md(C, alpha)
    a = [F(x) for x in alpha]
    a0 = sum(a)
    mu = [x / a0 for x in a]
    u = [[F(c) / (F(r[0]) * mu[0] + F(r[1]) * mu[1]) - 1 for c in r] for r in C]
    g = [sum(row[j] for row in u) for j in range(2)]
    z = [g[j] / (1 + a0) + (g[j] ** 2 - sum(row[j] ** 2 for row in u)) / ((1 + a0) * (2 + a0))
         - g[j] ** 2 / (2 * (1 + a0) ** 2) for j in range(2)]
    # softmax(log μ + z): both z are huge and of the same sign, compare via their difference
    d = float(z[1] - z[0]) + math.log(float(mu[1] / mu[0]))
    want = np.array([1 / (1 + math.exp(d)), 1 / (1 + math.exp(-d))]) if d < 700 else np.array([0.0, 1.0])
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("fn", [lambda C, a: mtdmath.posterior_mean(C, a), lambda C, a: mtdmath.log_evidence(C, a),
                                lambda C, a: posterior_mean_all_prefixes(C, a)])
def test_exact_posterior_refuses_weights_below_the_float_range(fn):
    """alpha_2/α₀ ~ 1e-397: after a transition that lag 1 cannot explain every path of the level
    carries such a factor, the level underflows to 0 (NaN, or a ZeroDivisionError in the compiled
    route, before); refused naming alpha instead. Alpha entries closer together still work."""
    C = np.array([[[0.5, 0.2, 0.3, 0.1], [0.0, 0.5, 0.2, 0.7], [0.3, 0.3, 0.3, 0.3]]])
    with pytest.raises(ValueError, match=r"^alpha: the exact recursion's weights fall below the float64 range"):
        fn(C, np.array([7.43e232, 3.32e-165, 5.41e-226, 9.96e-128]))
    out = np.asarray(fn(C, np.array([1e150, 1e-140, 1e-100, 1.0])))
    assert np.all(np.isfinite(out))
