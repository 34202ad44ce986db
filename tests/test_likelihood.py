"""ℓ, ∇ℓ, ∇²ℓ and responsibilities (docs/math.md §2), each against an independent route, on every backend.

Each property test runs once per backend (tests/backends.py): the inputs are converted to the
backend, the result is checked to be in the backend's namespace, device and dtype, and compared
in float64 with a reference computed in plain NumPy or Python (brute-force loops, complex step,
central differences, torch autograd) on the very values the backend received.

float32 tolerances: every quantity here is a sum of at most n + m <= 65 nonnegative rounded
terms, so its relative error is at most (n + m)·eps32 <= 65 · 1.2e-7 = 7.7e-6; rtol 1e-5.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import mtdmath
from backends import FLOAT64, TORCH32, given_backends
from strategies import lag_factor_arrays, orders, sequences, simplex_points

torch = pytest.importorskip("torch")

#: float32 relative tolerance of a sum of at most 65 nonnegative rounded terms (see above)
RTOL32 = 1e-5


def _rt(bk, rtol64):
    return RTOL32 if bk.float32 else rtol64


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


@given_backends(problems())
def test_gradient_matches_complex_step(bk, p):
    # complex-step differentiation of the brute-force ℓ: exact to rounding, no h trade-off
    lam, C = p
    lam, C = bk.round_trip(lam), bk.round_trip(C)
    h = 1e-30
    cs = np.array([brute_loglik(lam + 1j * h * e, C).imag / h for e in np.eye(len(lam))])
    g = bk.check(mtdmath.gradient(bk.asarray(lam), bk.asarray(C)))
    tol = _rt(bk, 1e-11)
    np.testing.assert_allclose(g, cs, rtol=tol, atol=tol * max(1.0, np.abs(cs).max()))


@given_backends(problems(well_conditioned=True, interior=0.2), backends=FLOAT64)
def test_gradient_and_hessian_match_central_differences(bk, p):
    # central differences of the brute-force ℓ (extended off the simplex through s_i = C[i]·x);
    # entries of C in [0.05, 1] and lam >= 0.04 keep the third derivative small, so h = 1e-5
    # gives truncation ~1e-8 relative and rounding ~1e-10 relative: rtol 1e-6 separates both.
    lam, C = p
    m, h = len(lam), 1e-5
    E = np.eye(m)
    fd_g = np.array([(brute_loglik(lam + h * e, C) - brute_loglik(lam - h * e, C)) / (2 * h) for e in E])
    scale = max(1.0, np.abs(fd_g).max())
    np.testing.assert_allclose(bk.check(mtdmath.gradient(bk.asarray(lam), bk.asarray(C))), fd_g, rtol=1e-6, atol=1e-6 * scale)
    fd_H = np.array([(brute_grad(lam + h * e, C) - brute_grad(lam - h * e, C)) / (2 * h) for e in E])
    H = bk.check(mtdmath.hessian(bk.asarray(lam), bk.asarray(C)))
    np.testing.assert_allclose(H, fd_H, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(fd_H).max()))


@given_backends(problems(), backends=FLOAT64)
def test_gradient_and_hessian_match_torch_autograd(bk, p):
    lam, C = p
    Ct = torch.tensor(C, dtype=torch.float64)

    def f(x):
        return torch.log(Ct @ x).sum()

    x = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    g_ad = torch.autograd.grad(f(x), x)[0].numpy()
    H_ad = torch.autograd.functional.hessian(f, x.detach()).numpy()
    lb, Cb = bk.asarray(lam), bk.asarray(C)
    np.testing.assert_allclose(bk.check(mtdmath.gradient(lb, Cb)), g_ad, rtol=1e-11, atol=1e-11 * max(1, np.abs(g_ad).max()))
    np.testing.assert_allclose(bk.check(mtdmath.hessian(lb, Cb)), H_ad, rtol=1e-10, atol=1e-10 * max(1, np.abs(H_ad).max()))


@given_backends(problems(interior=0.0), backends=FLOAT64)
def test_hessian_symmetric_nsd_and_euler_identity(bk, p):
    lam, C = p
    n = C.shape[0]
    assume(np.all(C @ lam > 0))  # lam on the boundary may not explain the data: ℓ = -inf there
    H = bk.check(mtdmath.hessian(bk.asarray(lam), bk.asarray(C)))
    scale = max(1.0, np.abs(H).max())
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-13 * scale)
    assert np.linalg.eigvalsh(H).max() <= 1e-12 * scale
    # lam·∇ℓ(lam) = n on the simplex (homogeneity of degree 0 of each C[i]/s_i)
    np.testing.assert_allclose(lam @ bk.check(mtdmath.gradient(bk.asarray(lam), bk.asarray(C))), n, rtol=1e-12, atol=1e-12)


@given_backends(problems(interior=0.0))
def test_responsibilities_match_bayes_rule_by_loop(bk, p):
    lam, C = p
    lam, C = bk.round_trip(lam), bk.round_trip(C)
    assume(np.all(C @ lam > 0))
    R = bk.check(mtdmath.responsibilities(bk.asarray(lam), bk.asarray(C)))
    # float32: a product and a quotient of rounded terms, m <= 5 summed: (m + 2)·eps32 < 1e-6
    tol, tiny = (1e-6, 1e-30) if bk.float32 else (1e-12, 1e-300)
    for i in range(C.shape[0]):
        joint = [lam[g] * C[i, g] for g in range(len(lam))]
        np.testing.assert_allclose(R[i], np.array(joint) / sum(joint), rtol=tol, atol=tiny)
    if C.shape[0]:
        np.testing.assert_allclose(R.sum(-1), 1.0, rtol=tol)
        # G = Σ_i γ_i equals lam ∘ ∇ℓ (docs/math.md §3); ∇ℓ by the brute-force loop
        np.testing.assert_allclose(R.sum(0), lam * brute_grad(lam, C), rtol=_rt(bk, 1e-10), atol=_rt(bk, 1e-12))


@given_backends(sequences())
def test_lag_factors_and_loglik_match_brute_force_loop(bk, data):
    tokens, pi, lam = data
    pi, lam = bk.round_trip(pi), bk.round_trip(lam)
    m = lam.shape[-1]
    C = bk.check(mtdmath.lag_factors(bk.asarray(tokens), bk.asarray(pi), m))
    y2 = tokens.reshape(-1, tokens.shape[-1])
    lam2 = np.broadcast_to(lam, tokens.shape[:-1] + (m,)).reshape(-1, m)
    C2 = C.reshape(y2.shape[:1] + C.shape[-2:])
    ll = np.atleast_1d(bk.check(mtdmath.log_likelihood(bk.asarray(lam), bk.asarray(C)))).reshape(-1)
    for b, y in enumerate(y2):
        T = len(y)
        brute = 0.0
        for t in range(m, T):
            for g in range(1, m + 1):
                assert C2[b, t - m, g - 1] == pi[y[t - g], y[t]]
            brute += np.log(sum(lam2[b, g - 1] * pi[y[t - g], y[t]] for g in range(1, m + 1)))
        np.testing.assert_allclose(ll[b], brute, rtol=_rt(bk, 1e-12), atol=_rt(bk, 1e-12))


@given_backends(sequences())
def test_predictive_matches_definition(bk, data):
    tokens, pi, lam = data
    pi, lam = bk.round_trip(pi), bk.round_trip(lam)
    m = lam.shape[-1]
    p = bk.check(mtdmath.predictive(bk.asarray(lam), bk.asarray(tokens), bk.asarray(pi)))
    y2 = tokens.reshape(-1, tokens.shape[-1])
    lam2 = np.broadcast_to(lam, tokens.shape[:-1] + (m,)).reshape(-1, m)
    for b, y in enumerate(y2):
        T = len(y)
        want = sum(lam2[b, g - 1] * pi[y[T - g]] for g in range(1, m + 1))
        # float32: m <= 5 products summed: 6·eps32 < 1e-6
        rtol, atol = (1e-6, 1e-7) if bk.float32 else (1e-13, 1e-15)
        np.testing.assert_allclose(p.reshape(-1, pi.shape[0])[b], want, rtol=rtol, atol=atol)


def test_broadcasting_lam_against_batched_C():
    rng = np.random.default_rng(0)
    C = rng.uniform(0.1, 1, size=(4, 3, 10, 2))
    lam = np.array([0.3, 0.7])
    ll = mtdmath.log_likelihood(lam, C)
    assert ll.shape == (4, 3)
    np.testing.assert_allclose(ll[2, 1], np.log(C[2, 1] @ lam).sum(), rtol=1e-14)
    assert mtdmath.gradient(lam, C).shape == (4, 3, 2)
    assert mtdmath.hessian(lam, C).shape == (4, 3, 2, 2)
    assert mtdmath.responsibilities(lam, C).shape == (4, 3, 10, 2)


def test_impossible_data():
    C = np.array([[0.5, 0.2], [0.0, 0.0]])
    lam = np.array([0.5, 0.5])
    assert mtdmath.log_likelihood(lam, C) == -np.inf
    for f in (mtdmath.gradient, mtdmath.hessian, mtdmath.responsibilities):
        with pytest.raises(ValueError, match="C"):
            f(lam, C)


def test_n_zero():
    C = np.zeros((0, 3))
    lam = np.full(3, 1 / 3)
    assert mtdmath.log_likelihood(lam, C) == 0.0
    np.testing.assert_array_equal(mtdmath.gradient(lam, C), 0.0)
    np.testing.assert_array_equal(mtdmath.hessian(lam, C), 0.0)


# --------------------------------------------------------------------------- kl
@given_backends(st.integers(1, 8), st.integers(0, 2**32 - 1), backends=FLOAT64)
def test_kl_matches_scipy_rel_entr(bk, S, seed):
    from scipy.special import rel_entr

    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(S, 0.3), size=(3,))
    q = rng.dirichlet(np.ones(S))
    want = rel_entr(p, q).sum(-1)
    got = bk.check(mtdmath.kl(bk.asarray(p), bk.asarray(q)))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert np.all(got >= -1e-15)
    np.testing.assert_allclose(bk.check(mtdmath.kl(bk.asarray(q), bk.asarray(q))), 0.0, atol=1e-15)


def test_log_likelihood_below_the_smallest_double_is_finite():
    # s = 1e-30 · 1e-300 = 1e-330 underflows in linear space; ℓ = log(1e-330) + log(.2·(1-1e-30))
    # (second row), by hand: -759.85... - 1.609... ; -inf is kept for impossible data only
    lam = [1e-30, 1 - 1e-30]
    C = np.array([[1e-300, 0.0], [0.2, 0.5]])
    want = np.log(1e-30) + np.log(1e-300) + np.log(0.2 * 1e-30 + 0.5 * (1 - 1e-30))
    np.testing.assert_allclose(mtdmath.log_likelihood(lam, C), want, rtol=1e-14)
    assert mtdmath.log_likelihood(lam, np.array([[0.0, 0.0], [0.2, 0.5]])) == -np.inf


def test_kl_zero_conventions():
    assert mtdmath.kl([0.5, 0.5, 0.0], [0.5, 0.25, 0.25]) == pytest.approx(0.5 * np.log(2))
    assert mtdmath.kl([0.5, 0.5], [1.0, 0.0]) == np.inf
    assert mtdmath.kl([1.0, 0.0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="p"):
        mtdmath.kl([0.5, 0.6], [0.5, 0.5])
    with pytest.raises(ValueError, match="q"):
        mtdmath.kl([0.5, 0.5], [-0.1, 1.1])


@given_backends(problems(interior=0.05), st.integers(0, 2**32 - 1), backends=FLOAT64)
def test_rows_scaled_down_to_1e_320_match_mpmath(bk, p, seed):
    # Rows of C scaled by 1e-300 .. 1e-320 (subnormal) give s_i below the smallest normal double:
    # still possible transitions. ℓ against 50-digit mpmath on the exact stored values; ∇ℓ,
    # γ and MD are invariant under scaling a row, so they must equal the unscaled results.
    import mpmath as mp

    lam, C = p
    assume(C.shape[0] > 0)
    rng = np.random.default_rng(seed)
    scale = np.where(rng.random(C.shape[0]) < 0.5, 10.0 ** -rng.integers(300, 321, C.shape[0]), 1.0)
    Cs = C * scale[:, None]
    assume(np.all((Cs > 0) == (C > 0)))  # subnormal scaling may flush an entry to 0: then not invariant
    with mp.workdps(50):
        want = float(mp.fsum(mp.log(mp.fsum(mp.mpf(float(c)) * mp.mpf(float(w)) for c, w in zip(row, lam)))
                             for row in Cs))
    ll = bk.check(mtdmath.log_likelihood(bk.asarray(lam), bk.asarray(Cs)))
    assert np.isfinite(ll)
    # a subnormal entry carries as few as 1 significant bit relative error 2^-(1074+log2 c):
    # the reference uses the same stored values, so only ℓ's own rounding remains (n terms)
    np.testing.assert_allclose(ll, want, rtol=1e-13)
    lb = bk.asarray(lam)
    # ∇ℓ: each term C[i,g]/s_i is scale-free, but a subnormal C[i,g] (1e-320 keeps ~11 bits) is
    # rounded relative to C, so the invariance is compared where the scaled row kept full precision
    full = (Cs >= np.finfo(float).tiny) | (Cs == 0)
    keep = np.all(full, axis=1)
    g = bk.check(mtdmath.gradient(lb, bk.asarray(Cs)))
    ref = (C[keep] / (C[keep] @ lam)[:, None]).sum(0)
    if keep.all():
        np.testing.assert_allclose(g, ref, rtol=1e-12)
    else:
        assert np.all(np.isfinite(g))
    R = bk.check(mtdmath.responsibilities(lb, bk.asarray(Cs)))
    np.testing.assert_allclose(R[keep], lam * C[keep] / (C[keep] @ lam)[:, None], rtol=1e-12, atol=1e-300)
    md = bk.check(mtdmath.mirror_descent(bk.asarray(Cs), eta=0.1, steps=2, lam0=lb))
    assert np.all(np.isfinite(md)) and abs(md.sum() - 1) < 1e-13
    if keep.all():
        np.testing.assert_allclose(md, bk.check(mtdmath.mirror_descent(bk.asarray(C), eta=0.1, steps=2, lam0=lb)),
                                   rtol=1e-10, atol=1e-14)
