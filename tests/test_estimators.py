"""Mirror descent, EM and the MLE (docs/math.md §3), against independent routes, on every backend.

References are plain NumPy/SciPy formulas written here (``_grad``: ∇ℓ by broadcasting;
scipy's softmax; SLSQP; Newton on the KKT system; mpmath), evaluated on the very values each
backend received (tests/backends.py).
"""
import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import optimize
from scipy.special import softmax

import mtdmath
from backends import ALL, FLOAT64, NUMPY, given_backends, params
from strategies import alphas, batch_shapes, lag_factor_arrays, orders, simplex_points


def _grad(lam, C):
    """∇ℓ by plain broadcasting (the reference; the library uses batched matrix products)."""
    return (C / (C @ lam[..., :, None])).sum(axis=-2)


def _md_tol(bk, C, lam, eta):
    """Absolute tolerance on one MD step's weights.

    float64: the comparison's own 1e-10 relative. float32: the exponent log lam + η∇ℓ carries
    the rounding of ∇ℓ, a sum of n + m nonnegative terms: absolute error <= (n + m)·eps·η·max∇ℓ,
    plus eps·|log lam|; softmax turns an exponent error δ into a weight error <= 2δ (times the
    weight). Factor 4 for the last roundings of the softmax itself.
    """
    if not bk.float32:
        return None
    n, m = C.shape[-2:]
    g = _grad(lam, C) if n else np.zeros(m)
    return 8 * (n + m) * bk.eps * (1 + eta * float(np.max(g, initial=0.0)) + float(np.max(np.abs(np.log(lam)))))


@st.composite
def md_problems(draw):
    m = draw(orders)
    batch = draw(batch_shapes)
    C = draw(lag_factor_arrays(m=m, batch=batch))
    lam0 = draw(simplex_points(m, interior=0.05))
    eta = draw(st.sampled_from([0.0, 1e-3, 0.05, 0.3, 1.0]))
    return C, lam0, eta


@given_backends(md_problems())
def test_md_step_equals_closed_form_softmax(bk, p):
    # direct (linear-space) route: softmax(log lam + η ∇ℓ(lam)) with scipy's softmax
    C, lam0, eta = p
    C, lam0 = bk.round_trip(C), bk.round_trip(lam0)
    lam1 = bk.check(mtdmath.mirror_descent(bk.asarray(C), eta=eta, lam0=bk.asarray(lam0)))
    want = softmax(np.log(lam0) + eta * _grad(lam0, C), axis=-1)
    atol = _md_tol(bk, C, lam0, eta)
    if atol is None:
        np.testing.assert_allclose(lam1, want, rtol=1e-10, atol=1e-14)
    else:
        np.testing.assert_allclose(lam1, want, rtol=0, atol=atol)
    np.testing.assert_allclose(lam1.sum(-1), 1.0, atol=1e-13 if atol is None else 8 * C.shape[-1] * bk.eps)
    assert np.all(lam1 >= 0)


@given_backends(md_problems(), st.integers(2, 4), backends=FLOAT64)
def test_md_k_steps_compose(bk, p, k):
    C, lam0, eta = p
    lam = lam0
    for _ in range(k):
        # the linear-space reference is only defined while no weight underflows to 0
        assume(np.all(lam > 1e-250))
        lam = softmax(np.log(lam) + eta * _grad(lam, C), axis=-1)
    got = bk.check(mtdmath.mirror_descent(bk.asarray(C), eta=eta, steps=k, lam0=bk.asarray(lam0)))
    np.testing.assert_allclose(got, lam, rtol=1e-9, atol=1e-13)


@given(md_problems())
def test_md_step_is_argmax_of_kl_regularised_objective(p):
    # lam⁺ = argmax_{λ∈Δ} η⟨∇ℓ(lam), λ⟩ - KL(λ ‖ lam): solve numerically with SLSQP
    C, lam0, eta = p
    C = C[(0,) * (C.ndim - 2)]  # first batch element
    g = mtdmath.gradient(lam0, C)
    m = len(lam0)

    def neg_obj(x):
        x = np.clip(x, 1e-300, None)
        return -(eta * g @ x - np.sum(x * np.log(x / lam0)))

    res = optimize.minimize(
        neg_obj, np.full(m, 1 / m), method="SLSQP", bounds=[(0, 1)] * m,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}], options={"ftol": 1e-14, "maxiter": 500},
    )
    lam1 = mtdmath.mirror_descent(C, eta=eta, lam0=lam0)
    # the closed form is optimal: its objective is at least the numerical optimum's
    assert -neg_obj(lam1) >= -res.fun - 1e-9 * max(1, abs(res.fun))
    if eta * np.ptp(g) < 20:  # well-conditioned: the optimiser locates the point itself
        np.testing.assert_allclose(res.x, lam1, atol=2e-5)


@given_backends(md_problems(), st.integers(1, 20), backends=FLOAT64)
def test_em_monotone_and_closed_form(bk, p, steps):
    C, lam0, _ = p
    n = C.shape[-2]
    lam = np.broadcast_to(lam0, C.shape[:-2] + lam0.shape[-1:])
    Cb = bk.asarray(C)
    prev = np.log(C @ lam[..., :, None])[..., 0].sum(-1)
    for _ in range(steps):
        nxt = bk.check(mtdmath.em(Cb, steps=1, lam0=bk.asarray(lam)))
        if n:
            # closed form lam_g ∇ℓ_g / n = mean responsibilities (Bayes rule, by broadcasting)
            resp = lam[..., None, :] * C / (C @ lam[..., :, None])
            # 1e-9: a ratio of sums of <= 65 terms, rounded ~1e-14, but weights ~1e-12 of C
            # make lam_g tiny after a few steps and the relative comparison looser
            np.testing.assert_allclose(nxt, resp.mean(-2), rtol=1e-9, atol=1e-14)
        with np.errstate(divide="ignore"):
            ll = np.log(C @ nxt[..., :, None])[..., 0].sum(-1)
        assert np.all(ll >= prev - 1e-9 * np.maximum(1, np.abs(prev)))
        lam, prev = nxt, ll
    # k steps at once = k single steps: the same arithmetic, except that single steps leave log
    # space (exp, then log at the next call): ~2 eps per step and a renormalisation (m eps),
    # over <= 20 steps ≈ 1.6e-14; 1e-12 leaves room for steps that amplify (3.6e-15 measured)
    np.testing.assert_allclose(bk.check(mtdmath.em(Cb, steps=steps, lam0=bk.asarray(lam0))), lam, rtol=1e-12, atol=1e-13)


@given_backends(lag_factor_arrays(batch=(), n=st.integers(1, 60)), backends=FLOAT64)
def test_mle_satisfies_kkt_and_beats_scipy(bk, C):
    n, m = C.shape
    lam = bk.check(mtdmath.mle(bk.asarray(C)))
    np.testing.assert_allclose(lam.sum(), 1.0, atol=1e-13)
    g = _grad(lam, C)
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
    assert np.log(C @ lam).sum() >= -res.fun - 1e-8 * max(1, abs(res.fun))


@pytest.mark.parametrize("bk", params(FLOAT64))
def test_mle_batched_and_limits(bk):
    rng = np.random.default_rng(0)
    C = rng.uniform(0.01, 1, size=(5, 40, 3))
    lam = bk.check(mtdmath.mle(bk.asarray(C)))
    assert lam.shape == (5, 3)
    assert np.all(_grad(lam, C).max(-1) / 40 - 1 < 1e-12)
    assert np.all(bk.check(mtdmath.kkt_gap(bk.asarray(lam), bk.asarray(C))) < 1e-12)
    # a batch element alone reaches the same maximiser: the KKT stop at 1e-12 bounds the
    # difference (strictly concave here: C has full column rank)
    np.testing.assert_allclose(lam[2], bk.check(mtdmath.mle(bk.asarray(C[2]))), atol=1e-12)
    with pytest.warns(RuntimeWarning, match="max_steps"):
        mtdmath.mle(bk.asarray(C), max_steps=1)


def test_mle_interior_optimum_vs_newton_kkt_solve():
    # a different algorithm: Newton's method on the KKT system ∇ℓ(lam) = ν·1, Σ lam = 1
    # (valid because this optimum is interior), with derivatives from torch autograd
    import torch

    rng = np.random.default_rng(1)
    lam_true = np.array([0.5, 0.3, 0.2])
    pi = mtdmath.random_transition_matrix(6, rng=rng)
    y = mtdmath.sample(pi, lam_true, 3000, rng=rng)
    C = mtdmath.lag_factors(y, pi, 3)
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
    np.testing.assert_allclose(mtdmath.mle(C), x, atol=1e-9)


def test_long_context_no_overflow():
    # (every backend at n = 100 000: tests/test_backends.py)
    rng = np.random.default_rng(2)
    pi = mtdmath.random_transition_matrix(8, concentration=0.3, rng=rng)
    y = mtdmath.sample(pi, np.array([0.6, 0.3, 0.1]), 5003, rng=rng)
    C = mtdmath.lag_factors(y, pi, 3)
    assert C.shape == (5000, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings either
        for eta in (1e-3, 1.0, 100.0):
            lam = mtdmath.mirror_descent(C, eta=eta, steps=5)
            assert np.all(np.isfinite(lam)) and abs(lam.sum() - 1) < 1e-12
        lam = mtdmath.em(C, steps=50)
        assert np.all(np.isfinite(lam))
        assert np.all(np.isfinite(mtdmath.one_step_md(C, [1.0, 2.0, 0.5])))
        assert np.all(np.isfinite(mtdmath.mle(C)))


@pytest.mark.parametrize("bk", params(ALL))
def test_edges_n0_steps0_m1(bk):
    C0 = bk.asarray(np.zeros((0, 3)))
    lam0 = bk.round_trip([0.2, 0.3, 0.5])
    L0 = bk.asarray(lam0)
    np.testing.assert_array_equal(bk.check(mtdmath.mirror_descent(C0, eta=1.0, lam0=L0)), lam0)
    np.testing.assert_array_equal(bk.check(mtdmath.em(C0, steps=3, lam0=L0)), lam0)
    np.testing.assert_array_equal(bk.check(mtdmath.mle(C0)), bk.round_trip(np.full(3, 1 / 3)))
    C = bk.asarray(np.random.default_rng(0).uniform(0.1, 1, (7, 3)))
    np.testing.assert_array_equal(bk.check(mtdmath.mirror_descent(C, eta=1.0, steps=0, lam0=L0)), lam0)
    np.testing.assert_array_equal(bk.check(mtdmath.em(C, steps=0, lam0=L0)), lam0)
    C1 = bk.asarray(np.random.default_rng(0).uniform(0.1, 1, (7, 1)))
    for out in (mtdmath.mirror_descent(C1, eta=0.5), mtdmath.em(C1), mtdmath.mle(C1), mtdmath.one_step_md(C1, [2.0])):
        np.testing.assert_allclose(bk.check(out), [1.0])


@pytest.mark.parametrize("bk", params(ALL))
def test_md_from_boundary_start_keeps_support(bk):
    C = bk.asarray(np.array([[0.5, 0.1, 0.0], [0.2, 0.9, 0.3]]))
    lam = bk.check(mtdmath.mirror_descent(C, eta=1.0, steps=3, lam0=[0.5, 0.5, 0.0]))
    assert lam[2] == 0.0 and abs(lam.sum() - 1) < 4 * bk.eps
    with pytest.raises(ValueError, match="lam0"):
        mtdmath.mirror_descent(C, eta=1.0, lam0=[0.0, 0.0, 1.0])  # first transition impossible


@given_backends(alphas(), st.integers(0, 2**32 - 1))
def test_one_step_md_uniform_and_general_forms(bk, alpha, seed):
    # lam¹ = softmax(log μ + η* G/μ), G = Σ_i γ_i under μ (docs/math.md §3): an independent route
    m = len(alpha)
    C = bk.round_trip(np.random.default_rng(seed).uniform(0.01, 1, size=(2, 15, m)))
    mu = alpha / alpha.sum()
    resp = lambda w: (w * C / (C @ w)[..., None]).sum(-2)  # noqa: E731  G = Σ_i γ_i by Bayes rule
    G = resp(mu)
    want = softmax(np.log(mu) + mtdmath.eta_bayes(alpha) * G / mu, axis=-1)
    atol = _md_tol(bk, C, mu, mtdmath.eta_bayes(alpha))
    kw = dict(rtol=1e-10, atol=1e-14) if atol is None else dict(rtol=0, atol=atol)
    np.testing.assert_allclose(bk.check(mtdmath.one_step_md(bk.asarray(C), alpha)), want, **kw)
    u = np.ones(m)
    np.testing.assert_allclose(
        bk.check(mtdmath.one_step_md(bk.asarray(C), u)), softmax(mtdmath.eta_bayes(u) * m * resp(u / m), axis=-1), **kw)


def test_eta_bayes_is_python_float():
    e = mtdmath.eta_bayes(np.array([1.0, 2.0]))
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


@pytest.mark.parametrize("bk", params(FLOAT64))
@pytest.mark.parametrize("eta, steps", [(4.0, 1), (4.0, 2), (4.0, 3), (4.0, 4), (50.0, 3)])
def test_md_with_collapsing_weights_matches_mpmath(bk, eta, steps):
    # large steps collapse a weight so the next gradient overflows float64: the update must
    # return the exact limit (on the simplex, no false ties), as mpmath says
    lam0 = np.array([0.39235556, 0.58003382, 0.02761062])
    C = np.array([
        [1.2256551e-01, 5.23540829e-01, 4.05770728e-01],
        [9.69183948e-01, 0.0, 1.15081313e-01],
        [4.53619381e-13, 9.12531651e-01, 6.77722817e-01],
    ])
    got = bk.check(mtdmath.mirror_descent(bk.asarray(C), eta=eta, steps=steps, lam0=lam0))
    want = _mp_mirror_descent(C, lam0, eta, steps)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    assert abs(got.sum() - 1) < 1e-15


@pytest.mark.parametrize("bk", params(FLOAT64))
def test_one_step_md_long_context_matches_mpmath(bk):
    rng = np.random.default_rng(8)
    pi = mtdmath.random_transition_matrix(5, rng=rng)
    alpha = np.array([1.0, 2.0, 0.5])
    y, _ = mtdmath.sample_icl(pi, alpha, 5003, 1, rng=rng)
    C = mtdmath.lag_factors(y[0], pi, 3)
    want = _mp_mirror_descent(C, alpha / alpha.sum(), mtdmath.eta_bayes(alpha), 1, dps=40)
    # float64 sums of 5000 terms: relative error ~1e-13 in the step, far inside 1e-10
    np.testing.assert_allclose(bk.check(mtdmath.one_step_md(bk.asarray(C), alpha)), want, rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------- step schedules
@given_backends(md_problems(), st.lists(st.sampled_from([0.0, 1e-3, 0.05, 0.3, 1.0]), min_size=1, max_size=4),
                backends=FLOAT64)
def test_md_schedule_equals_steps_of_each_size(bk, p, etas):
    # a schedule (η₁, ..., η_k) is k steps, step j of size η_j: the linear-space closed form, step by step
    C, lam0, _ = p
    lam = lam0
    for e in etas:
        assume(np.all(lam > 1e-250))
        lam = softmax(np.log(lam) + e * _grad(lam, C), axis=-1)
    got = bk.check(mtdmath.mirror_descent(bk.asarray(C), eta=etas, lam0=bk.asarray(lam0)))
    np.testing.assert_allclose(got, lam, rtol=1e-9, atol=1e-13)
    got = bk.check(mtdmath.mirror_descent(bk.asarray(C), eta=np.array(etas), steps=len(etas), lam0=bk.asarray(lam0)))
    np.testing.assert_allclose(got, lam, rtol=1e-9, atol=1e-13)


def test_k_step_md_and_one_step_md_take_schedules():
    rng = np.random.default_rng(3)
    C = rng.uniform(0.05, 1, size=(4, 30, 3))
    alpha = np.array([2.0, 1.0, 0.5])
    mu = alpha / alpha.sum()
    lam = mu
    for e in (0.1, 0.02):
        lam = softmax(np.log(lam) + e * _grad(lam, C), axis=-1)
    np.testing.assert_allclose(mtdmath.k_step_md(C, alpha, 2, eta=[0.1, 0.02]), lam, rtol=1e-12)
    # a scalar is the same every step; the default is η* every step (not first-order consistent for k >= 2)
    np.testing.assert_array_equal(mtdmath.k_step_md(C, alpha, 2, eta=0.1), mtdmath.k_step_md(C, alpha, 2, eta=[0.1, 0.1]))
    e = mtdmath.eta_bayes(alpha)
    np.testing.assert_array_equal(mtdmath.k_step_md(C, alpha, 3), mtdmath.k_step_md(C, alpha, 3, eta=[e, e, e]))
    np.testing.assert_allclose(mtdmath.one_step_md(C, alpha, eta=0.3),
                               softmax(np.log(mu) + 0.3 * _grad(mu, C), axis=-1), rtol=1e-12)
    with pytest.raises(ValueError, match="eta has 2 steps but k = 3"):
        mtdmath.k_step_md(C, alpha, 3, eta=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"eta\[1\] must be >= 0"):
        mtdmath.mirror_descent(C, eta=[0.1, -0.2])
    with pytest.raises(ValueError, match="eta has 2 steps but steps = 1"):
        mtdmath.mirror_descent(C, eta=[0.1, 0.2], steps=1)
    with pytest.raises(ValueError, match="eta has 1 steps but steps = 2"):
        mtdmath.md_predictive_all_prefixes(np.array([0, 1, 2, 0]), mtdmath.random_transition_matrix(3, rng=0), alpha[:2],
                                     eta=[0.1], steps=2)
