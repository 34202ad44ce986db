"""ℓ, ∇ℓ, ∇²ℓ and responsibilities (MATH.md §2), each against an independent route."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mtdmath as M
from strategies import lag_factor_arrays, orders, sequences, simplex_points


def brute_loglik(lam, C):
    """ℓ by an explicit loop over transitions (works for real or complex lam)."""
    total = 0.0
    for i in range(C.shape[0]):
        s = 0.0
        for g in range(C.shape[1]):
            s = s + C[i, g] * lam[g]
        total = total + np.log(s)
    return total


def brute_grad(lam, C):
    return np.array([sum(C[i, g] / (C[i] @ lam) for i in range(C.shape[0])) for g in range(C.shape[1])])


@st.composite
def problems(draw, well_conditioned=False, interior=0.05):
    m = draw(orders)
    C = draw(lag_factor_arrays(m=m, batch=(), well_conditioned=well_conditioned))
    lam = draw(simplex_points(m, interior=interior))
    return lam, C


@given(problems())
def test_gradient_matches_complex_step(p):
    # complex-step differentiation of the brute-force ℓ: exact to rounding, no h trade-off
    lam, C = p
    h = 1e-30
    cs = np.array([brute_loglik(lam + 1j * h * e, C).imag / h for e in np.eye(len(lam))])
    g = M.gradient(lam, C)
    np.testing.assert_allclose(g, cs, rtol=1e-11, atol=1e-11 * max(1.0, np.abs(cs).max()))


@given(problems(well_conditioned=True, interior=0.2))
def test_gradient_and_hessian_match_central_differences(p):
    # central differences of the brute-force ℓ (extended off the simplex through s_i = C[i]·x);
    # entries of C in [0.05, 1] and lam >= 0.04 keep the third derivative small, so h = 1e-5
    # gives truncation ~1e-8 relative and rounding ~1e-10 relative: rtol 1e-6 separates both.
    lam, C = p
    m, h = len(lam), 1e-5
    E = np.eye(m)
    fd_g = np.array([(brute_loglik(lam + h * e, C) - brute_loglik(lam - h * e, C)) / (2 * h) for e in E])
    scale = max(1.0, np.abs(fd_g).max())
    np.testing.assert_allclose(M.gradient(lam, C), fd_g, rtol=1e-6, atol=1e-6 * scale)
    fd_H = np.array([(brute_grad(lam + h * e, C) - brute_grad(lam - h * e, C)) / (2 * h) for e in E])
    H = M.hessian(lam, C)
    np.testing.assert_allclose(H, fd_H, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(fd_H).max()))


@given(problems())
def test_gradient_and_hessian_match_torch_autograd(p):
    lam, C = p
    Ct = torch.tensor(C, dtype=torch.float64)

    def f(x):
        return torch.log(Ct @ x).sum()

    x = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    g_ad = torch.autograd.grad(f(x), x)[0].numpy()
    H_ad = torch.autograd.functional.hessian(f, x.detach()).numpy()
    np.testing.assert_allclose(M.gradient(lam, C), g_ad, rtol=1e-11, atol=1e-11 * max(1, np.abs(g_ad).max()))
    np.testing.assert_allclose(M.hessian(lam, C), H_ad, rtol=1e-10, atol=1e-10 * max(1, np.abs(H_ad).max()))


@given(problems(interior=0.0))
def test_hessian_symmetric_nsd_and_euler_identity(p):
    lam, C = p
    n = C.shape[0]
    if np.any(C @ lam <= 0):
        return  # lam on the boundary may not explain the data: ℓ = -inf there
    H = M.hessian(lam, C)
    scale = max(1.0, np.abs(H).max())
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-13 * scale)
    assert np.linalg.eigvalsh(H).max() <= 1e-12 * scale
    # lam·∇ℓ(lam) = n on the simplex (homogeneity of degree 0 of each C[i]/s_i)
    np.testing.assert_allclose(lam @ M.gradient(lam, C), n, rtol=1e-12, atol=1e-12)


@given(problems(interior=0.0))
def test_responsibilities_match_bayes_rule_by_loop(p):
    lam, C = p
    if np.any(C @ lam <= 0):
        return
    R = M.responsibilities(lam, C)
    for i in range(C.shape[0]):
        joint = [lam[g] * C[i, g] for g in range(len(lam))]
        np.testing.assert_allclose(R[i], np.array(joint) / sum(joint), rtol=1e-12, atol=1e-300)
    if C.shape[0]:
        np.testing.assert_allclose(R.sum(-1), 1.0, rtol=1e-12)
        # G = Σ_i γ_i equals lam ∘ ∇ℓ (MATH.md §3)
        np.testing.assert_allclose(R.sum(0), lam * M.gradient(lam, C), rtol=1e-10, atol=1e-12)


@given(sequences())
def test_lag_factors_and_loglik_match_brute_force_loop(data):
    tokens, pi, lam = data
    m = lam.shape[-1]
    C = M.lag_factors(tokens, pi, m)
    y2 = tokens.reshape(-1, tokens.shape[-1])
    lam2 = np.broadcast_to(lam, tokens.shape[:-1] + (m,)).reshape(-1, m)
    C2 = C.reshape(y2.shape[:1] + C.shape[-2:])
    ll = np.atleast_1d(M.log_likelihood(lam, C)).reshape(-1)
    for b, y in enumerate(y2):
        T = len(y)
        brute = 0.0
        for t in range(m, T):
            for g in range(1, m + 1):
                assert C2[b, t - m, g - 1] == pi[y[t - g], y[t]]
            brute += np.log(sum(lam2[b, g - 1] * pi[y[t - g], y[t]] for g in range(1, m + 1)))
        np.testing.assert_allclose(ll[b], brute, rtol=1e-12, atol=1e-12)


@given(sequences())
def test_predictive_matches_definition(data):
    tokens, pi, lam = data
    m = lam.shape[-1]
    p = M.predictive(lam, tokens, pi)
    y2 = tokens.reshape(-1, tokens.shape[-1])
    lam2 = np.broadcast_to(lam, tokens.shape[:-1] + (m,)).reshape(-1, m)
    for b, y in enumerate(y2):
        T = len(y)
        want = sum(lam2[b, g - 1] * pi[y[T - g]] for g in range(1, m + 1))
        np.testing.assert_allclose(p.reshape(-1, pi.shape[0])[b], want, rtol=1e-13, atol=1e-15)


def test_broadcasting_lam_against_batched_C():
    rng = np.random.default_rng(0)
    C = rng.uniform(0.1, 1, size=(4, 3, 10, 2))
    lam = np.array([0.3, 0.7])
    ll = M.log_likelihood(lam, C)
    assert ll.shape == (4, 3)
    np.testing.assert_allclose(ll[2, 1], np.log(C[2, 1] @ lam).sum(), rtol=1e-14)
    assert M.gradient(lam, C).shape == (4, 3, 2)
    assert M.hessian(lam, C).shape == (4, 3, 2, 2)
    assert M.responsibilities(lam, C).shape == (4, 3, 10, 2)


def test_impossible_data():
    C = np.array([[0.5, 0.2], [0.0, 0.0]])
    lam = np.array([0.5, 0.5])
    assert M.log_likelihood(lam, C) == -np.inf
    for f in (M.gradient, M.hessian, M.responsibilities):
        with pytest.raises(ValueError, match="C"):
            f(lam, C)


def test_n_zero():
    C = np.zeros((0, 3))
    lam = np.full(3, 1 / 3)
    assert M.log_likelihood(lam, C) == 0.0
    np.testing.assert_array_equal(M.gradient(lam, C), 0.0)
    np.testing.assert_array_equal(M.hessian(lam, C), 0.0)


# --------------------------------------------------------------------------- kl
@given(st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_kl_matches_scipy_rel_entr(S, seed):
    from scipy.special import rel_entr

    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(S, 0.3), size=(3,))
    q = rng.dirichlet(np.ones(S))
    want = rel_entr(p, q).sum(-1)
    np.testing.assert_allclose(M.kl(p, q), want, rtol=1e-12, atol=1e-15)
    assert np.all(M.kl(p, q) >= -1e-15)
    np.testing.assert_allclose(M.kl(q, q), 0.0, atol=1e-15)


def test_kl_zero_conventions():
    assert M.kl([0.5, 0.5, 0.0], [0.5, 0.25, 0.25]) == pytest.approx(0.5 * np.log(2))
    assert M.kl([0.5, 0.5], [1.0, 0.0]) == np.inf
    assert M.kl([1.0, 0.0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="p"):
        M.kl([0.5, 0.6], [0.5, 0.5])
    with pytest.raises(ValueError, match="q"):
        M.kl([0.5, 0.5], [-0.1, 1.1])
