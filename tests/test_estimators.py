"""Mirror descent, EM and the MLE (MATH.md §3), against independent routes."""
import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import optimize
from scipy.special import softmax

import mtdmath as M
from strategies import alphas, batch_shapes, lag_factor_arrays, orders, simplex_points


@st.composite
def md_problems(draw):
    m = draw(orders)
    batch = draw(batch_shapes)
    C = draw(lag_factor_arrays(m=m, batch=batch))
    lam0 = draw(simplex_points(m, interior=0.05))
    eta = draw(st.sampled_from([0.0, 1e-3, 0.05, 0.3, 1.0]))
    return C, lam0, eta


@given(md_problems())
def test_md_step_equals_closed_form_softmax(p):
    # direct (linear-space) route: softmax(log lam + η ∇ℓ(lam)) with scipy's softmax
    C, lam0, eta = p
    lam1 = M.mirror_descent(C, eta=eta, lam0=lam0)
    want = softmax(np.log(lam0) + eta * M.gradient(lam0, C), axis=-1)
    np.testing.assert_allclose(lam1, want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(lam1.sum(-1), 1.0, atol=1e-13)
    assert np.all(lam1 >= 0)


@given(md_problems(), st.integers(2, 4))
def test_md_k_steps_compose(p, k):
    C, lam0, eta = p
    lam = lam0
    for _ in range(k):
        # the linear-space reference is only defined while no weight underflows to 0
        assume(np.all(lam > 1e-250))
        lam = softmax(np.log(lam) + eta * M.gradient(lam, C), axis=-1)
    np.testing.assert_allclose(M.mirror_descent(C, eta=eta, steps=k, lam0=lam0), lam, rtol=1e-9, atol=1e-13)


@given(md_problems())
def test_md_step_is_argmax_of_kl_regularised_objective(p):
    # lam⁺ = argmax_{λ∈Δ} η⟨∇ℓ(lam), λ⟩ - KL(λ ‖ lam): solve numerically with SLSQP
    C, lam0, eta = p
    C = C[(0,) * (C.ndim - 2)]  # first batch element
    g = M.gradient(lam0, C)
    m = len(lam0)

    def neg_obj(x):
        x = np.clip(x, 1e-300, None)
        return -(eta * g @ x - np.sum(x * np.log(x / lam0)))

    res = optimize.minimize(
        neg_obj, np.full(m, 1 / m), method="SLSQP", bounds=[(0, 1)] * m,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}], options={"ftol": 1e-14, "maxiter": 500},
    )
    lam1 = M.mirror_descent(C, eta=eta, lam0=lam0)
    # the closed form is optimal: its objective is at least the numerical optimum's
    assert -neg_obj(lam1) >= -res.fun - 1e-9 * max(1, abs(res.fun))
    if eta * np.ptp(g) < 20:  # well-conditioned: the optimiser locates the point itself
        np.testing.assert_allclose(res.x, lam1, atol=2e-5)


@given(md_problems(), st.integers(1, 20))
def test_em_monotone_and_closed_form(p, steps):
    C, lam0, _ = p
    n = C.shape[-2]
    lam = np.broadcast_to(lam0, C.shape[:-2] + lam0.shape[-1:])
    prev = M.log_likelihood(lam, C)
    for _ in range(steps):
        nxt = M.em(C, steps=1, lam0=lam)
        if n:
            # closed form lam_g ∇ℓ_g / n = mean responsibilities
            np.testing.assert_allclose(nxt, M.responsibilities(lam, C).mean(-2), rtol=1e-9, atol=1e-14)
        ll = M.log_likelihood(nxt, C)
        assert np.all(ll >= prev - 1e-9 * np.maximum(1, np.abs(prev)))
        lam, prev = nxt, ll
    np.testing.assert_allclose(M.em(C, steps=steps, lam0=lam0), lam, rtol=1e-8, atol=1e-13)


@given(lag_factor_arrays(batch=(), n=st.integers(1, 60)))
def test_mle_satisfies_kkt_and_beats_scipy(C):
    n, m = C.shape
    lam = M.mle(C)
    np.testing.assert_allclose(lam.sum(), 1.0, atol=1e-13)
    g = M.gradient(lam, C)
    # KKT: ∇ℓ_g <= n everywhere, = n where lam_g > 0 (tolerance: the documented tol 1e-12
    # bounds max ∇ℓ/n - 1; the support is taken as lam_g > 1e-6, where complementary
    # slackness must already be tight to the same order)
    assert np.all(g / n - 1 <= 1e-11)
    support = lam > 1e-6
    np.testing.assert_allclose(g[support] / n, 1.0, atol=1e-7)
    # an independent optimiser never finds a strictly higher likelihood
    res = optimize.minimize(
        lambda x: -np.sum(np.log(np.clip(C @ x, 1e-300, None))), np.full(m, 1 / m), method="SLSQP",
        bounds=[(0, 1)] * m, constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert M.log_likelihood(lam, C) >= -res.fun - 1e-8 * max(1, abs(res.fun))


def test_mle_batched_and_limits():
    rng = np.random.default_rng(0)
    C = rng.uniform(0.01, 1, size=(5, 40, 3))
    lam = M.mle(C)
    assert lam.shape == (5, 3)
    assert np.all(M.kkt_gap(lam, C) < 1e-12)
    np.testing.assert_allclose(lam[2], M.mle(C[2]), atol=1e-12)
    with pytest.warns(RuntimeWarning, match="max_steps"):
        M.mle(C, max_steps=1)


def test_mle_interior_optimum_vs_newton_kkt_solve():
    # a different algorithm: Newton's method on the KKT system ∇ℓ(lam) = ν·1, Σ lam = 1
    # (valid because this optimum is interior), with derivatives from torch autograd
    import torch

    rng = np.random.default_rng(1)
    lam_true = np.array([0.5, 0.3, 0.2])
    pi = M.random_transition_matrix(6, rng=rng)
    y = M.sample(pi, lam_true, 3000, rng=rng)
    C = M.lag_factors(y, pi, 3)
    Ct = torch.tensor(C)
    f = lambda x: torch.log(Ct @ x).sum()  # noqa: E731
    x = np.full(3, 1 / 3)
    for _ in range(50):
        xt = torch.tensor(x, requires_grad=True)
        g = torch.autograd.grad(f(xt), xt)[0].numpy()
        H = torch.autograd.functional.hessian(f, torch.tensor(x)).numpy()
        K = np.block([[H, -np.ones((3, 1))], [np.ones((1, 3)), np.zeros((1, 1))]])
        rhs = np.concatenate([-(g - g.mean()), [0.0]])
        dx = np.linalg.solve(K, rhs)[:3]
        x = x + dx
        if np.abs(dx).max() < 1e-15:
            break
    assert np.all(x > 0.01)  # interior, as assumed
    np.testing.assert_allclose(M.mle(C), x, atol=1e-9)


def test_long_context_no_overflow():
    rng = np.random.default_rng(2)
    pi = M.random_transition_matrix(8, concentration=0.3, rng=rng)
    y = M.sample(pi, np.array([0.6, 0.3, 0.1]), 5003, rng=rng)
    C = M.lag_factors(y, pi, 3)
    assert C.shape == (5000, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings either
        for eta in (1e-3, 1.0, 100.0):
            lam = M.mirror_descent(C, eta=eta, steps=5)
            assert np.all(np.isfinite(lam)) and abs(lam.sum() - 1) < 1e-12
        lam = M.em(C, steps=50)
        assert np.all(np.isfinite(lam))
        assert np.all(np.isfinite(M.one_step_md(C, [1.0, 2.0, 0.5])))
        assert np.all(np.isfinite(M.mle(C)))


def test_edges_n0_steps0_m1():
    C0 = np.zeros((0, 3))
    lam0 = np.array([0.2, 0.3, 0.5])
    np.testing.assert_array_equal(M.mirror_descent(C0, eta=1.0, lam0=lam0), lam0)
    np.testing.assert_array_equal(M.em(C0, steps=3, lam0=lam0), lam0)
    np.testing.assert_array_equal(M.mle(C0), np.full(3, 1 / 3))
    C = np.random.default_rng(0).uniform(0.1, 1, (7, 3))
    np.testing.assert_array_equal(M.mirror_descent(C, eta=1.0, steps=0, lam0=lam0), lam0)
    np.testing.assert_array_equal(M.em(C, steps=0, lam0=lam0), lam0)
    C1 = np.random.default_rng(0).uniform(0.1, 1, (7, 1))
    for out in (M.mirror_descent(C1, eta=0.5), M.em(C1), M.mle(C1), M.one_step_md(C1, [2.0])):
        np.testing.assert_allclose(out, [1.0])


def test_md_from_boundary_start_keeps_support():
    C = np.array([[0.5, 0.1, 0.0], [0.2, 0.9, 0.3]])
    lam = M.mirror_descent(C, eta=1.0, steps=3, lam0=[0.5, 0.5, 0.0])
    assert lam[2] == 0.0 and abs(lam.sum() - 1) < 1e-14
    with pytest.raises(ValueError, match="lam0"):
        M.mirror_descent(C, eta=1.0, lam0=[0.0, 0.0, 1.0])  # first transition impossible


@given(alphas(), st.integers(0, 2**32 - 1))
def test_one_step_md_uniform_and_general_forms(alpha, seed):
    # lam¹ = softmax(log μ + η* G/μ), G = Σ_i γ_i under μ (MATH.md §3): an independent route
    m = len(alpha)
    C = np.random.default_rng(seed).uniform(0.01, 1, size=(2, 15, m))
    mu = alpha / alpha.sum()
    G = M.responsibilities(mu, C).sum(-2)
    want = softmax(np.log(mu) + M.eta_bayes(alpha) * G / mu, axis=-1)
    np.testing.assert_allclose(M.one_step_md(C, alpha), want, rtol=1e-10, atol=1e-14)
    u = np.ones(m)
    np.testing.assert_allclose(
        M.one_step_md(C, u), softmax(M.eta_bayes(u) * m * M.responsibilities(u / m, C).sum(-2), axis=-1),
        rtol=1e-10, atol=1e-14,
    )


def test_eta_bayes_is_python_float():
    e = M.eta_bayes(np.array([1.0, 2.0]))
    assert type(e) is float and e == 0.25


def _mp_mirror_descent(C, lam0, eta, steps, dps=80):
    """Mirror descent in mpmath (arbitrary exponent range, 80 digits): the exact reference."""
    import mpmath as mp

    mp.mp.dps = dps
    lam = [mp.mpf(x) for x in lam0]
    for _ in range(steps):
        s = [mp.fsum(mp.mpf(C[i, g]) * lam[g] for g in range(len(lam))) for i in range(C.shape[0])]
        grad = [mp.fsum(mp.mpf(C[i, g]) / s[i] for i in range(C.shape[0])) for g in range(len(lam))]
        w = [lam[g] * mp.exp(eta * grad[g]) if lam[g] > 0 else mp.mpf(0) for g in range(len(lam))]
        tot = mp.fsum(w)
        lam = [x / tot for x in w]
    return np.array([float(x) for x in lam])


@pytest.mark.parametrize("eta, steps", [(4.0, 1), (4.0, 2), (4.0, 3), (4.0, 4), (50.0, 3)])
def test_md_with_collapsing_weights_matches_mpmath(eta, steps):
    # large steps collapse a weight so the next gradient overflows float64: the update must
    # return the exact limit (on the simplex, no false ties), as mpmath says
    lam0 = np.array([0.39235556, 0.58003382, 0.02761062])
    C = np.array([
        [1.2256551e-01, 5.23540829e-01, 4.05770728e-01],
        [9.69183948e-01, 0.0, 1.15081313e-01],
        [4.53619381e-13, 9.12531651e-01, 6.77722817e-01],
    ])
    got = M.mirror_descent(C, eta=eta, steps=steps, lam0=lam0)
    want = _mp_mirror_descent(C, lam0, eta, steps)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    assert abs(got.sum() - 1) < 1e-15


def test_one_step_md_long_context_matches_mpmath():
    rng = np.random.default_rng(8)
    pi = M.random_transition_matrix(5, rng=rng)
    alpha = np.array([1.0, 2.0, 0.5])
    y, _ = M.sample_icl(pi, alpha, 5003, 1, rng=rng)
    C = M.lag_factors(y[0], pi, 3)
    want = _mp_mirror_descent(C, alpha / alpha.sum(), M.eta_bayes(alpha), 1, dps=40)
    # float64 sums of 5000 terms: relative error ~1e-13 in the step, far inside 1e-10
    np.testing.assert_allclose(M.one_step_md(C, alpha), want, rtol=1e-10, atol=0)
