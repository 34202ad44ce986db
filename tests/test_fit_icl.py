"""fit_icl: the paper's model (shared pi, lam ~ Dirichlet(alpha) per sequence) by exact marginal likelihood.

Independent routes: the torch recursion against the core's NumPy ``mtdmath.log_evidence``; recovery errors
against standard errors derived from the observed information; the alpha -> infinity limit against the
shared-pi ``fit`` with a bound on the gap derived from the expansion of the evidence.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import mtdmath
from mtdmath.fitting import fit
from mtdmath.fitting.icl import fit_icl, log_evidence_torch

slow = pytest.mark.skipif(os.environ.get("MTDMATH_SLOW") != "1", reason="slow: set MTDMATH_SLOW=1")


@pytest.mark.parametrize("m", [1, 2, 3])
def test_torch_recursion_equals_core_log_evidence(m):
    rng = np.random.default_rng(m)
    pi = mtdmath.random_transition_matrix(4, rng=1)
    alpha = rng.uniform(0.3, 3.0, size=m)
    y, _ = mtdmath.sample_icl(pi, alpha, 25, 6, rng=2)
    got = log_evidence_torch(torch.as_tensor(y), torch.as_tensor(pi), torch.as_tensor(alpha), m).numpy()
    want = mtdmath.log_evidence(mtdmath.lag_factors(y, pi, m), alpha)
    # two float64 recursions of 22 rescaled steps: rounding is ~1e-15 per step
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # and the gradient matches central finite differences of the core value
    x = torch.tensor(alpha, requires_grad=True)
    log_evidence_torch(torch.as_tensor(y), torch.as_tensor(pi), x, m).sum().backward()
    h = 1e-6
    fd = [(mtdmath.log_evidence(mtdmath.lag_factors(y, pi, m), alpha + h * e).sum()
           - mtdmath.log_evidence(mtdmath.lag_factors(y, pi, m), alpha - h * e).sum()) / (2 * h) for e in np.eye(m)]
    # central differences: truncation O(h^2 f''') ~ 1e-11, rounding ~ 1e-16 |f| / h ~ 1e-9
    np.testing.assert_allclose(x.grad.numpy(), fd, rtol=1e-6, atol=1e-7)


def _data(B, seed=4):
    # rows ~ Dirichlet(3): no entry near 0, where the MLE sits on the boundary and the Wald error is not
    # the right yardstick
    pi = mtdmath.random_transition_matrix(5, concentration=3.0, rng=3)
    alpha = np.array([2.0, 1.0])
    y, _ = mtdmath.sample_icl(pi, alpha, 64, B, rng=seed)
    return pi, alpha, y


@pytest.fixture(scope="module")
def fit300():
    pi, alpha, y = _data(300)
    # one torch thread: the recursion's tensors are small, and on the shared 2-core CI machine two threads
    # made this fit 1.5-3x slower
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # 1 GiB: the Hessian one direction at a time, so the CI machine's memory is not the limit
        f = fit_icl(y, 2, max_bytes=2**30)
    finally:
        torch.set_num_threads(n_threads)
    return pi, alpha, y, f


def test_objective_never_decreases_and_recovers_within_derived_errors(fit300):
    """300 sequences (CI size; the 2000-sequence version is the slow test below)."""
    pi, alpha, y, f = fit300
    assert f.converged
    h = f.history
    assert np.all(np.diff(h) >= -1e-12 * np.abs(h[1:]))  # nondecreasing up to rounding of the sum
    # the objective is the core's log_evidence summed at the estimate (independent evaluation)
    core = mtdmath.log_evidence(mtdmath.lag_factors(y, f.pi, 2), f.alpha).sum()
    assert f.objective == pytest.approx(core, rel=1e-12)
    _check_recovery(f, pi, alpha)


def _check_recovery(f, pi, alpha):
    # errors derived from the observed information: each estimate within 4 standard errors of the truth
    # (27 quantities; a normal |z| > 4 has probability 6e-5, so the family fails by chance < 0.2 %)
    z_pi = np.abs(f.pi - pi) / f.se_pi
    z_alpha = np.abs(f.alpha - alpha) / f.se_alpha
    assert np.all(np.isfinite(f.se_pi)) and np.all(f.se_pi > 0)
    assert z_pi.max() < 4 and z_alpha.max() < 4, (z_pi.max(), z_alpha)


def test_recovery_check_can_fail(fit300):
    """The same check against wrong truths fails: alpha three times too concentrated (se_alpha ~ 0.4 at
    300 sequences), or pi from another draw."""
    pi, alpha, y, f = fit300
    with pytest.raises(AssertionError):
        _check_recovery(f, pi, 3 * alpha)
    with pytest.raises(AssertionError):
        _check_recovery(f, mtdmath.random_transition_matrix(5, concentration=3.0, rng=99), alpha)


def test_alpha_to_infinity_agrees_with_shared_pi_fit():
    """With alpha = c * lam (c -> inf) every sequence has lam, and the objective is the shared-pi
    log-likelihood at (pi, lam). Gap bound: E[prod_i (1 + d_i)] - 1 with d_i = (s_i(L) - s_i(lam)) / s_i(lam),
    Var(L_g) <= 1/c, is at most sum_{i<j} |E d_i d_j| + ... <= n^2 r^2 / c per sequence, r = max C / min s."""
    pi = mtdmath.random_transition_matrix(4, concentration=3.0, rng=5)
    y, _ = mtdmath.sample_icl(pi, np.array([7.0, 3.0]) * 1e3, 40, 150, rng=6)  # nearly one lam for all
    shared = fit(y, 2, restarts=3, rng=0, tol=1e-12)
    f_shared = shared.model_
    c = 1e10
    # started far away (uniform rows): it must climb to the shared-pi maximiser on its own
    f = fit_icl(y, 2, alpha=c * f_shared.lam, init_pi=np.full((4, 4), 0.25))
    C = mtdmath.lag_factors(y, f_shared.pi, 2)
    s = C @ f_shared.lam
    r = C.max() / s.min()
    bound = y.shape[0] * (y.shape[1] - 2) ** 2 * r**2 / c
    at_fit = mtdmath.log_evidence(C, c * f_shared.lam).sum()
    assert abs(at_fit - shared.loglik_) <= bound
    assert f.objective >= at_fit - 1e-9 * abs(at_fit)  # reaches the maximum
    assert f.objective - shared.loglik_ <= bound + 1e-9 * abs(shared.loglik_)  # no better than the max
    # pi stays at the shared-pi maximiser: within 1 % of its standard error (optimiser tolerance)
    assert np.all(np.abs(f.pi - f_shared.pi) <= 0.01 * f.se_pi)


def test_fit_icl_bad_input():
    y = np.zeros((3, 10), dtype=int)
    with pytest.raises(ValueError, match="m must be"):
        fit_icl(y, 0)
    with pytest.raises(ValueError, match="max_bytes"):
        fit_icl(np.ones((5, 300), dtype=int), 3, max_bytes=1000)
    with pytest.raises(ValueError, match="alpha"):
        fit_icl(np.eye(3, 10, dtype=int), 2, alpha=[1.0, -1.0])


@slow
def test_recovery_2000_sequences_slow():
    pi, alpha, y = _data(2000)
    f = fit_icl(y, 2)
    _check_recovery(f, pi, alpha)
    print("fit_icl 2000 x 64: max |pi err|", np.abs(f.pi - pi).max(), "alpha", f.alpha, "+-", f.se_alpha)
