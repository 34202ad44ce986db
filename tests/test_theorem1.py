"""Theorem 1 numerically (docs/math.md §3): the gap between the exact posterior mean and one-step MD
vanishes to first order in ε along C = b (1 + ε d) exactly when η = η* = 1/(1+α₀).

The slope of log‖gap‖ against log ε is fitted over ε in [1e-5, 1e-4] (slopes 2 and 1), small
enough that the leading term dominates even when the ε² coefficient of a random (b, d) happens
to be small next to the ε³ one (at ε ~ 1e-2 such draws give fitted slopes of 2.3-2.8), and over
[3e-4, 3e-3] for slope 3, where the O(ε³) gap (~1e-11) stays far above float64 rounding (~1e-16).
The ±0.1 tolerance is the test plan's; the ranges were chosen from the asymptotics, never to pass.
"""
import numpy as np
import pytest

import mtdmath


def gap_slope(m, alpha, eta_factor, eps, seed, n=6):
    rng = np.random.default_rng(seed)
    b = rng.uniform(0.2, 1.0, size=n)
    d = rng.normal(size=(n, m))
    alpha = np.asarray(alpha, dtype=float)
    eta = eta_factor * mtdmath.eta_bayes(alpha)
    mu = alpha / alpha.sum()
    gaps = []
    for e in eps:
        C = b[:, None] * (1 + e * d)
        exact = mtdmath.posterior_mean(C, alpha)
        md = mtdmath.mirror_descent(C, eta=eta, lam0=mu)
        gaps.append(np.linalg.norm(exact - md))
    return np.polyfit(np.log(eps), np.log(gaps), 1)[0]


SMALL = np.geomspace(1e-5, 1e-4, 6)
LARGE = np.geomspace(3e-4, 3e-3, 6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("m", [3, 4, 5])
def test_slope_two_at_eta_bayes_m_ge_3(m, seed):
    alpha = np.random.default_rng(100 + seed).uniform(0.3, 5.0, size=m)
    assert abs(gap_slope(m, alpha, 1.0, SMALL, seed) - 2) < 0.1


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [[2.0, 1.0], [0.5, 3.0], [6.0, 0.4]])
def test_slope_two_m2_asymmetric(alpha, seed):
    assert abs(gap_slope(2, alpha, 1.0, SMALL, seed) - 2) < 0.1


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("a", [0.5, 1.0, 3.0])
def test_slope_three_m2_symmetric(a, seed):
    # the ε² terms coincide when α₁ = α₂ (factor 1 - 2μ in docs/math.md §3)
    assert abs(gap_slope(2, [a, a], 1.0, LARGE, seed) - 3) < 0.1


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("m, alpha", [(2, [2.0, 1.0]), (2, [1.0, 1.0]), (3, [1.0, 2.0, 0.5]), (5, [1.0] * 5)])
def test_wrong_eta_gives_slope_one(m, alpha, seed):
    # a deliberately wrong step size (2 η*) leaves a first-order gap: the check can fail
    assert abs(gap_slope(m, alpha, 2.0, SMALL, seed) - 1) < 0.1
