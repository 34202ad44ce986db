"""The backend contract of the one core (mtdmath/_xp.py), the all-prefix MD predictive on every
backend, the backend fast paths against their generic routes, long contexts and narrow dtypes.

Independent routes: the per-prefix loop of tests/prefix_reference.py (lag_factors, k_step_md and
predictive on each prefix of a NumPy sequence: no cumulative sum, no bincount, no embedding_bag),
mpmath, torch.autograd.gradcheck (finite differences), and plain NumPy formulas.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mtdmath
from mtdmath import _xp
from backends import ALL, CUDA64, FLOAT64, NUMPY, STRICT, TORCH32, TORCH64, given_backends, params
from prefix_reference import numpy_prefix_md, numpy_prefix_well_conditioned
from strategies import icl_batches

torch = pytest.importorskip("torch")
xs = pytest.importorskip("array_api_strict")
torch.set_num_threads(1)  # small tensors on a shared 2-core machine


def _ref_pi(bk, pi):
    """The float64 reference pi for a backend: its rounded values, renormalised (a float32 pi's
    rows sum to 1 ± S·eps32, outside the float64 check). Renormalising moves each entry by at
    most S·eps relative, which :func:`_one_step_bound` includes."""
    r = bk.round_trip(pi)
    return r / r.sum(axis=1, keepdims=True)


def _one_step_bound(tokens, pi, alpha, eta, eps):
    """Error bound of the all-prefix one-step predictive against the per-prefix reference.

    Both routes compute the exponent ``log μ + η Σ_{i<r} C[i]/s_i(μ)``, one by a cumulative sum,
    one by a fresh sum per prefix: the exponent differs by at most (n + m)·eps·(1 + κ) with
    ``κ = η·max_r max_g ∇ℓ_r(μ)`` (a sum of n + m nonnegative rounded terms), and softmax plus
    the final mixture of m rows turn an exponent error δ into a probability error <= 2δ + m·eps.
    Factor 4 for the remaining roundings.
    """
    m = len(alpha)
    C = mtdmath.lag_factors(tokens, pi, m)
    mu = alpha / alpha.sum()
    n = C.shape[-2]
    kappa = eta * float((C / (C @ mu)[..., None]).sum(-2).max()) if n else 0.0
    S = pi.shape[0]
    return 4 * ((n + m + S) * eps * (2 + 2 * kappa) + m * eps)


# ----------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("bk", params(ALL))
def test_results_in_the_namespace_device_and_dtype_of_the_data(bk):
    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(4, rng=rng).astype(bk.float_dtype)
    alpha = np.array([1.0, 2.0])
    y = mtdmath.sample_icl(pi, alpha, 12, 3, rng=rng)[0]
    Y, P = bk.asarray(y), bk.asarray(pi)
    C = mtdmath.lag_factors(Y, P, 2)
    bk.check(C)
    lam = [0.3, 0.7]  # a Python list: converted to C's space
    for out in (mtdmath.log_likelihood(lam, C), mtdmath.gradient(lam, C), mtdmath.hessian(lam, C), mtdmath.responsibilities(lam, C),
                mtdmath.kkt_gap(lam, C), mtdmath.mirror_descent(C, eta=0.3), mtdmath.em(C), mtdmath.mle(C), mtdmath.one_step_md(C, alpha),
                mtdmath.k_step_md(C, alpha, 2), mtdmath.posterior_mean(C, alpha), mtdmath.log_evidence(C, alpha),
                *mtdmath.posterior_mean_mc(C, alpha, samples=64, rng=0), mtdmath.predictive(lam, Y, P),
                mtdmath.md_predictive_all_prefixes(Y, P, alpha), mtdmath.md_predictive_all_prefixes(Y, P, alpha, steps=2),
                mtdmath.kl(mtdmath.predictive(lam, Y, P), mtdmath.predictive([0.5, 0.5], Y, P))):
        bk.check(out)
    tokens = mtdmath.sample(P, [0.5, 0.5], 9, rng=1)
    bk.check(tokens, integer=True)
    tok2, lam2 = mtdmath.sample_icl(P, alpha, 9, 2, rng=1)
    bk.check(tok2, integer=True)
    bk.check(lam2)
    # the samplers draw with the NumPy Generator: the same seed gives the same tokens everywhere
    np.testing.assert_array_equal(bk.to_numpy(tokens), mtdmath.sample(pi, [0.5, 0.5], 9, rng=1))


def test_mixed_inputs_follow_the_data_argument():
    rng = np.random.default_rng(1)
    C = rng.uniform(0.1, 1, size=(3, 8, 2))
    lam = np.array([0.4, 0.6])
    want = np.log(C @ lam).sum(-1)
    # NumPy lam with a torch C: torch out; torch lam with NumPy C: NumPy out
    got = mtdmath.log_likelihood(lam, torch.as_tensor(C))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14)
    got = mtdmath.log_likelihood(torch.as_tensor(lam), C)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, want, rtol=1e-14)
    # a torch float32 C with a float64 lam: float32 out (the data's dtype)
    assert mtdmath.log_likelihood(lam, torch.as_tensor(C, dtype=torch.float32)).dtype == torch.float32
    # an array-api-strict lam with a torch C, and a list C: the non-NumPy array wins over a list
    got = mtdmath.log_likelihood(xs.asarray(lam), torch.as_tensor(C))
    assert isinstance(got, torch.Tensor)
    assert isinstance(mtdmath.log_likelihood(lam, C.tolist()), np.ndarray)
    # tokens as a torch tensor with a NumPy pi: torch out (the non-NumPy data argument wins)
    pi = mtdmath.random_transition_matrix(3, rng=rng)
    y = rng.integers(0, 3, size=(2, 7))
    Ct = mtdmath.lag_factors(torch.as_tensor(y), pi, 2)
    assert isinstance(Ct, torch.Tensor) and Ct.dtype == torch.float64
    np.testing.assert_array_equal(Ct.numpy(), mtdmath.lag_factors(y, pi, 2))
    # integer data give float64
    assert mtdmath.log_likelihood([0.5, 0.5], np.ones((3, 2), dtype=np.int32)).dtype == np.float64


def test_tensors_that_require_grad():
    rng = np.random.default_rng(2)
    C = rng.uniform(0.1, 1, size=(10, 3))
    lam = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64, requires_grad=True)
    # NumPy data, a tensor that requires grad as the other argument: detached, NumPy out (no crash)
    np.testing.assert_allclose(mtdmath.log_likelihood(lam, C), np.log(C @ lam.detach().numpy()).sum(), rtol=1e-14)
    # torch data: the same namespace, so autograd flows through lam; d ℓ / d lam = ∇ℓ
    ll = mtdmath.log_likelihood(lam, torch.as_tensor(C))
    (g,) = torch.autograd.grad(ll, lam)
    np.testing.assert_allclose(g.numpy(), (C / (C @ lam.detach().numpy())[:, None]).sum(0), rtol=1e-13)
    # and a C that requires grad
    Ct = torch.as_tensor(C).requires_grad_(True)
    out = mtdmath.mirror_descent(Ct, eta=0.1, steps=2)
    out[0].backward()
    assert Ct.grad is not None and torch.isfinite(Ct.grad).all()


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_all_prefix_predictive_is_differentiable_in_pi(steps):
    """Autograd through a torch pi (no in-place op on the graph) matches central finite
    differences (torch.autograd.gradcheck, float64)."""
    rng = np.random.default_rng(3)
    y = torch.as_tensor(rng.integers(0, 4, size=(2, 9)))
    pi = torch.as_tensor(mtdmath.random_transition_matrix(4, rng=rng)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: mtdmath.md_predictive_all_prefixes(y, p / p.sum(1, keepdim=True), [1.0, 2.0, 0.5], steps=steps),
        (pi,), eps=1e-6, atol=1e-7)


def _long_sequence(seed, S, concentration, floor, alpha):
    """One sequence of n = 100 000 transitions of the in-context task, pi floored at ``floor``."""
    rng = np.random.default_rng(seed)
    pi = mtdmath.random_transition_matrix(S, concentration=concentration, rng=rng)
    pi = np.maximum(pi, floor)
    pi /= pi.sum(1, keepdims=True)
    return pi, mtdmath.sample_icl(pi, alpha, 100_003, 1, rng=rng)[0]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_computed_and_returned_in_float32(dtype):
    alpha = np.array([1.0, 2.0, 0.5])
    pi, y = _long_sequence(4, 5, 0.5, 1e-3, alpha)
    Ph = torch.as_tensor(pi).to(getattr(torch, dtype))
    P32 = Ph.to(torch.float32)  # what the core computes with
    C = mtdmath.lag_factors(y, Ph, 3)  # tokens NumPy, pi torch: torch out
    assert C.dtype == torch.float32
    mu = alpha / alpha.sum()
    ll = mtdmath.log_likelihood(mu, C)
    # n = 100 000: ℓ ~ -1.6e5, beyond float16's range (65 504); float32 holds it to
    # n·eps32·|mean log s| relative at worst (≈ 1e-2 absolute per 1e5 terms is far inside 1e-3 relative)
    P64 = P32.double().numpy()
    n = y.shape[-1] - 3
    C64 = np.stack([P64[y[..., 3 - g: 3 - g + n], y[..., 3:]] for g in (1, 2, 3)], axis=-1)  # plain indexing
    want = np.log(C64 @ mu).sum(-1)
    assert ll.dtype == torch.float32 and torch.isfinite(ll).all()
    np.testing.assert_allclose(ll.double().numpy(), want, rtol=1e-3)
    lam = mtdmath.mirror_descent(C, eta=1e-4, steps=3)
    em = mtdmath.em(C, steps=3)
    for out in (lam, em):
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert abs(float(out.sum()) - 1) < 1e-5  # on the simplex
    # the all-prefix predictive at n = 20 000: finite and close to float64 (float16 was off by 0.5)
    y2 = y[:, :20_003]
    p = mtdmath.md_predictive_all_prefixes(y2, Ph, alpha)
    assert p.dtype == torch.float32 and torch.isfinite(p).all()
    ref = mtdmath.md_predictive_all_prefixes(y2, P64 / P64.sum(1, keepdims=True), alpha)
    # float32 cumulative sums of 2e4 terms of size <= 1/μ_min: relative 2e4·eps32 = 2.4e-3 on
    # η·G/μ ≈ η·n, i.e. an exponent error of ≈ 2.4e-3·η*·n/μ ≈ 0.5 in the worst row would be
    # visible; the measured error is far smaller because the sums are compensated by rounding to
    # nearest. 1e-2 absolute on probabilities is the stated float32 accuracy at n = 2e4.
    assert np.abs(p.double().numpy() - ref).max() < 1e-2


@pytest.mark.parametrize("bk", params((NUMPY, STRICT, TORCH64, TORCH32, CUDA64)))
def test_n_100000_no_overflow_or_underflow(bk):
    alpha = np.array([0.1, 0.5, 2.0])
    pi, y = _long_sequence(5, 6, 0.3, 1e-12, alpha)
    pib = bk.round_trip(pi)
    C = mtdmath.lag_factors(bk.asarray(y), bk.asarray(pi), 3)
    n = y.shape[-1] - 3
    C64 = np.stack([pib[y[..., 3 - g: 3 - g + n], y[..., 3:]] for g in (1, 2, 3)], axis=-1)  # plain indexing
    mu = alpha / alpha.sum()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ll = bk.check(mtdmath.log_likelihood(mu, C))
        assert np.all(np.isfinite(ll)) and ll.max() < -1e4
        # ℓ: float64 rounding of 1e5 logs summed (≈ 1e-16·sqrt(n) relative); float32 ≈ n·eps32
        np.testing.assert_allclose(ll, np.log(C64 @ mu).sum(-1), rtol=2e-3 if bk.float32 else 1e-12)
        for eta in (1e-3, 1.0, 100.0):  # η∇ℓ ~ 1e5: exp would overflow outside log space
            lam = bk.check(mtdmath.mirror_descent(C, eta=eta, steps=3))
            assert np.all(np.isfinite(lam)) and abs(lam.sum() - 1) < 8 * bk.eps
        lam = bk.check(mtdmath.em(C, steps=20))
        assert np.all(np.isfinite(lam)) and abs(lam.sum() - 1) < 8 * bk.eps
        assert np.all(np.isfinite(bk.check(mtdmath.one_step_md(C, alpha))))


# ----------------------------------------------------------------------------- all prefixes
@given_backends(icl_batches(max_T=40), st.sampled_from([0, 1, 1, 2, 3]), backends=FLOAT64)
def test_all_prefixes_match_the_core_prefix_by_prefix(bk, case, steps):
    tokens, pi, alpha = case
    got = bk.check(mtdmath.md_predictive_all_prefixes(bk.asarray(tokens), bk.asarray(pi), alpha, steps=steps))
    # everywhere: probability vectors (large steps collapse weights; no NaN, no overflow)
    assert np.all(got >= 0)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)
    _, ref = numpy_prefix_md(tokens, pi, alpha, steps=steps)
    assert got.shape == ref.shape
    if steps <= 1:
        bound = _one_step_bound(tokens, pi, alpha, mtdmath.eta_bayes(alpha), bk.eps)
        assert np.abs(got - ref).max() <= bound
    else:
        # for k >= 2 a step η∇ℓ = κ turns a relative rounding error ε of ∇ℓ into ~κε in log lam
        # (prefix_reference.md_well_conditioned), so two correct float64 routes agree to 1e-9
        # only where κ <= 1e5
        ok = numpy_prefix_well_conditioned(tokens, pi, alpha, steps=steps)
        np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-9, atol=1e-11)


@given_backends(icl_batches(max_T=30), st.floats(0.0, 3.0))
def test_all_prefixes_explicit_step_size(bk, case, eta):
    tokens, pi, alpha = case
    if bk.float32:  # the float32 cumulative sum is amplified by η/μ: keep η·n/μ_min <= 100
        mu = alpha / alpha.sum()
        eta = min(eta, 100 * mu.min() / max(1, tokens.shape[-1]))
    pi_ref = _ref_pi(bk, pi)
    _, ref = numpy_prefix_md(tokens, pi_ref, alpha, eta=eta, steps=1)
    got = bk.check(mtdmath.md_predictive_all_prefixes(bk.asarray(tokens), bk.asarray(pi), alpha, eta=eta))
    pi = pi_ref
    assert np.abs(got - ref).max() <= _one_step_bound(tokens, pi, alpha, eta, bk.eps)


def test_a_wrong_prefix_offset_is_caught():
    # the check above can fail: the rows shifted by one prefix are off by far more than the bound
    rng = np.random.default_rng(6)
    pi = mtdmath.random_transition_matrix(5, rng=rng)
    alpha = np.array([0.5, 2.0, 1.0])
    y = mtdmath.sample_icl(pi, alpha, 30, 2, rng=rng)[0]
    got = mtdmath.md_predictive_all_prefixes(y, pi, alpha)
    _, ref = numpy_prefix_md(y, pi, alpha)
    assert np.abs(got[:, 1:] - ref[:, :-1]).max() > 1e3 * _one_step_bound(y, pi, alpha, mtdmath.eta_bayes(alpha), 2.2e-16)


@pytest.mark.parametrize("bk", params(ALL))
def test_all_prefixes_chunking_matches_unchunked(bk, monkeypatch):
    # the k >= 2 path processes prefixes in chunks; force tiny chunks and compare with one chunk
    import mtdmath.estimators as E

    rng = np.random.default_rng(7)
    pi = mtdmath.random_transition_matrix(5, rng=rng)
    tokens = bk.asarray(mtdmath.sample_icl(pi, [0.4, 1.0, 3.0], 50, 3, rng=rng)[0])
    P = bk.asarray(pi)
    whole = bk.check(mtdmath.md_predictive_all_prefixes(tokens, P, [0.4, 1.0, 3.0], steps=3))
    monkeypatch.setattr(E, "_CHUNK_ELEMENTS", 1)
    chunked = bk.check(mtdmath.md_predictive_all_prefixes(tokens, P, [0.4, 1.0, 3.0], steps=3))
    # only the lengths of the masked reductions differ (a chunk sums over i < b-1 with -inf
    # padding): pairwise summation regroups the same terms, a few eps per step, amplified by
    # κ = η∇ℓ (about 10 here) at each of the 3 steps: 500 eps (1.1e-13 in float64; 2.9e-14 seen)
    np.testing.assert_allclose(chunked, whole, rtol=500 * bk.eps, atol=0)


@pytest.mark.parametrize("bk", params(ALL))
def test_all_prefixes_edges(bk):
    rng = np.random.default_rng(8)
    pi = mtdmath.random_transition_matrix(4, rng=rng)
    P = bk.asarray(pi)
    pi = bk.round_trip(pi)
    mu = np.array([0.2, 0.3, 0.5])
    y = np.array([[1, 2, 0]])  # T = m: one row, the prior predictive
    p = bk.check(mtdmath.md_predictive_all_prefixes(bk.asarray(y), P, [2.0, 3.0, 5.0], steps=2))
    np.testing.assert_allclose(p[0, 0], mu @ pi[[0, 2, 1]], rtol=8 * bk.eps)
    # m = 1: the weight is 1 whatever the data; the predictive is pi[y[t]]
    y = rng.integers(0, 4, size=(2, 9))
    for k in (0, 1, 3):
        got = bk.check(mtdmath.md_predictive_all_prefixes(bk.asarray(y), P, [0.7], steps=k))
        np.testing.assert_allclose(got, pi[y], rtol=4 * bk.eps)
    # batch shapes
    y = rng.integers(0, 4, size=(2, 3, 9))
    p = bk.check(mtdmath.md_predictive_all_prefixes(bk.asarray(y), P, [1.0, 3.0]))
    assert p.shape == (2, 3, 8, 4)
    np.testing.assert_allclose(p[1, 2], bk.check(mtdmath.md_predictive_all_prefixes(bk.asarray(y[1, 2]), P, [1.0, 3.0])),
                               rtol=4 * bk.eps)


@pytest.mark.parametrize("steps", [1, 2])
def test_all_prefixes_long_context_matches_the_core(steps):
    rng = np.random.default_rng(11)
    pi = mtdmath.random_transition_matrix(6, concentration=0.3, rng=rng)
    pi = np.maximum(pi, 1e-12)
    pi /= pi.sum(axis=1, keepdims=True)
    alpha = np.array([0.1, 0.5, 2.0])
    tokens = mtdmath.sample_icl(pi, alpha, 5003, 1 if steps == 2 else 2, rng=rng)[0]  # k >= 2 is O(T²)
    for bk in (NUMPY, TORCH64):
        p = bk.check(mtdmath.md_predictive_all_prefixes(bk.asarray(tokens), bk.asarray(pi), alpha, steps=steps))
        assert p.shape == (tokens.shape[0], 5001, 6) and np.all(np.isfinite(p))
        np.testing.assert_allclose(p.sum(-1), 1.0, rtol=0, atol=1e-12)
        for r in (0, 1, 37, 2500, 5000):  # row r: the prefix of length m + r
            y = tokens[:, : 3 + r]
            lam = mtdmath.k_step_md(mtdmath.lag_factors(y, pi, 3), alpha, steps)
            # κ = η∇ℓ reaches ~2e3 here: two float64 routes agree to ~κ·n·eps ≈ 1e-9
            np.testing.assert_allclose(p[:, r], mtdmath.predictive(lam, y, pi), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- fast paths
@pytest.mark.parametrize("bk", params((NUMPY, TORCH64, TORCH32, CUDA64)))
def test_fast_paths_equal_their_generic_routes(bk):
    rng = np.random.default_rng(9)
    xp = _xp.data_space(bk.asarray(np.zeros(1))).xp
    x = bk.asarray(rng.random((3, 4, 50)))
    for axis in (0, 1, 2):
        fast = bk.to_numpy(_xp.exclusive_cumsum(x, axis, xp))
        generic = bk.to_numpy(_xp.exclusive_cumsum(x, axis, xp, generic=True))
        np.testing.assert_array_equal(fast, generic)  # the same sums in the same order
    z = bk.asarray(rng.normal(size=(3, 4, 50)))
    shift = bk.asarray(rng.normal(size=3))
    generic = bk.to_numpy(_xp.softmax_first_axis(z, 0.7, shift, xp, generic=True))
    fast = bk.to_numpy(_xp.softmax_first_axis(z, 0.7, shift, xp))  # in place on z: after generic
    np.testing.assert_allclose(fast, generic, rtol=4 * bk.eps, atol=0)  # same operations, in place
    S, m, R = 7, 3, 200
    table = bk.asarray(rng.dirichlet(np.ones(S), size=S))
    src = bk.asarray(rng.integers(0, S, size=(m, R)))
    src_np = bk.to_numpy(src).astype(np.int64)
    src_np[1, :50] = src_np[0, :50]  # two lags on the same token: the weights must add
    src = bk.asarray(src_np)
    w = bk.asarray(rng.dirichlet(np.ones(m), size=R).T.copy())
    fast = bk.to_numpy(_xp.weighted_rows(src, w, table, xp))
    generic = bk.to_numpy(_xp.weighted_rows(src, w, table, xp, generic=True))
    # both sum m <= 3 products per entry (bincount first adds the weights of equal tokens):
    # they differ by a few roundings, 4·m·eps relative
    np.testing.assert_allclose(fast, generic, rtol=4 * m * bk.eps, atol=4 * m * bk.eps)
    # and a plain loop agrees
    T, W = bk.to_numpy(table), bk.to_numpy(w)
    loop = np.stack([sum(W[j, r] * T[src_np[j, r]] for j in range(m)) for r in range(R)])
    np.testing.assert_allclose(fast, loop, rtol=4 * m * bk.eps, atol=4 * m * bk.eps)


# ----------------------------------------------------------------------------- overflow, every backend
@pytest.mark.parametrize("bk", params(FLOAT64))
def test_md_step_overflow_is_exact_on_every_backend(bk):
    # after 3 steps lam_0 ~ exp(-59643): the 4th gradient ~exp(1.9e6670) overflows any float.
    # Independent route: 60-digit mpmath (unbounded exponents). Step 4 is one-hot on lag 0.
    mp = pytest.importorskip("mpmath")
    lam0 = np.array([0.39235556, 0.58003382, 0.02761062])
    C = np.array([[1.2256551e-01, 5.23540829e-01, 4.05770728e-01],
                  [9.69183948e-01, 0.0, 1.15081313e-01],
                  [4.53619381e-13, 9.12531651e-01, 6.77722817e-01]])
    with mp.workdps(60):
        Cm = [[mp.mpf(float(x)) for x in row] for row in C]
        lam = [mp.mpf(float(x)) for x in lam0]
        for k in range(1, 5):
            s = [mp.fsum(c * u for c, u in zip(row, lam)) for row in Cm]
            z = [mp.log(lam[g]) + 4 * mp.fsum(row[g] / si for row, si in zip(Cm, s)) for g in range(3)]
            e = [mp.exp(zg - max(z)) for zg in z]
            lam = [x / mp.fsum(e) for x in e]
            got = bk.check(mtdmath.mirror_descent(bk.asarray(C), eta=4.0, steps=k, lam0=lam0))
            np.testing.assert_allclose(got, [float(x) for x in lam], rtol=1e-10, atol=0)
    assert got.tolist() == [1.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- validation on every backend
GOOD_C = np.array([[0.5, 0.2], [0.1, 0.3]])
PI = np.array([[0.5, 0.5], [0.2, 0.8]])
BAD = [
    # (function name, kwargs, argument named in the error)
    ("log_likelihood", dict(lam=[0.5, 0.5], C=[[0.5, -0.2]]), "C"),
    ("log_likelihood", dict(lam=[0.5, 0.5], C=[[0.5, np.nan]]), "C"),
    ("log_likelihood", dict(lam=[0.5, 0.5], C=[0.5, 0.2]), "C"),
    ("log_likelihood", dict(lam=[0.5, 0.6], C=GOOD_C), "lam"),
    ("log_likelihood", dict(lam=[1.5, -0.5], C=GOOD_C), "lam"),
    ("gradient", dict(lam=[0.2, 0.3, 0.5], C=GOOD_C), "lam"),
    ("gradient", dict(lam=[0.5, 0.5], C=[[0.5, 0.2], [0.0, 0.0]]), "C"),
    ("mirror_descent", dict(C=GOOD_C, eta=-1.0), "eta"),
    ("mirror_descent", dict(C=GOOD_C, eta=np.inf), "eta"),
    ("mirror_descent", dict(C=GOOD_C, eta="0.5"), "eta"),
    ("mirror_descent", dict(C=GOOD_C, eta=0.1, steps=-1), "steps"),
    ("mirror_descent", dict(C=GOOD_C, eta=0.1, steps=1.5), "steps"),
    ("mirror_descent", dict(C=GOOD_C, eta=0.1, lam0=[0.3, 0.3]), "lam0"),
    ("mirror_descent", dict(C=[[0.5, 0.0]], eta=0.1, lam0=[0.0, 1.0]), "lam0"),
    ("em", dict(C=GOOD_C, steps=-2), "steps"),
    ("em", dict(C=GOOD_C, lam0=[0.5]), "lam0"),
    ("mle", dict(C=GOOD_C, tol=0.0), "tol"),
    ("kkt_gap", dict(lam=[0.5], C=GOOD_C), "lam"),
    ("one_step_md", dict(C=GOOD_C, alpha=[1.0, -1.0]), "alpha"),
    ("one_step_md", dict(C=GOOD_C, alpha=[1.0, 1.0, 1.0]), "alpha"),
    ("lag_factors", dict(tokens=[0, 1, 2], pi=PI, m=1), "tokens"),
    ("lag_factors", dict(tokens=[0.0, 1.0], pi=PI, m=1), "tokens"),
    ("lag_factors", dict(tokens=[0, 1], pi=PI, m=3), "tokens"),
    ("lag_factors", dict(tokens=[0, 1], pi=PI, m=0), "m"),
    ("lag_factors", dict(tokens=[0, 1], pi=[[0.5, 0.6], [0.2, 0.8]], m=1), "pi"),
    ("lag_factors", dict(tokens=[0, 1], pi=[[0.5, 0.5]], m=1), "pi"),
    ("md_predictive_all_prefixes", dict(tokens=[[0, 1, 2]], pi=PI, alpha=[1.0, 2.0]), "tokens"),
    ("md_predictive_all_prefixes", dict(tokens=[[0]], pi=PI, alpha=[1.0, 2.0]), "tokens"),
    ("md_predictive_all_prefixes", dict(tokens=[[0, 1, 1]], pi=PI, alpha=[1.0, 0.0]), "alpha"),
    ("md_predictive_all_prefixes", dict(tokens=[[0, 1, 1]], pi=PI, alpha=[1.0, 2.0], eta=np.nan), "eta"),
    ("md_predictive_all_prefixes", dict(tokens=[[0, 1, 1]], pi=PI, alpha=[1.0, 2.0], steps=-1), "steps"),
    ("md_predictive_all_prefixes", dict(tokens=[[0, 0, 1]], pi=np.eye(2), alpha=[1.0, 2.0]), "tokens"),
]


@pytest.mark.parametrize("bk", params((NUMPY, STRICT, TORCH64, TORCH32)))
@pytest.mark.parametrize("fname, kwargs, name", BAD, ids=[f"{b[0]}-{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs_raise_value_error_naming_the_argument(bk, fname, kwargs, name):
    """The same messages whatever the backend of the array arguments (converted with bk)."""
    converted = {}
    for k, v in kwargs.items():
        if isinstance(v, (list, np.ndarray)) and k != "alpha":
            a = np.asarray(v)
            converted[k] = bk.asarray(a, dtype="int64" if a.dtype.kind == "i" else
                                      ("float64" if a.dtype.kind == "f" and not bk.float32 else None))
        else:
            converted[k] = v
    with pytest.raises(ValueError, match=name):
        getattr(mtdmath, fname)(**converted)


def test_complex_and_string_inputs_are_refused():
    with pytest.raises(ValueError, match="C must be real"):
        mtdmath.log_likelihood([0.5, 0.5], GOOD_C + 0j)
    with pytest.raises(ValueError, match="C must be real"):
        mtdmath.log_likelihood([0.5, 0.5], torch.as_tensor(GOOD_C + 0j))
    with pytest.raises(ValueError, match="lam must be an array of real numbers"):
        mtdmath.log_likelihood(["0.5", "0.5"], GOOD_C)


@pytest.mark.parametrize("bk", params((CUDA64,)))
def test_cuda_parity_with_the_cpu(bk):
    rng = np.random.default_rng(12)
    pi = mtdmath.random_transition_matrix(7, rng=rng)
    alpha = np.array([0.2, 1.0, 4.0])
    tokens = mtdmath.sample_icl(pi, alpha, 300, 3, rng=rng)[0]
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        pc = torch.tensor(pi, dtype=dtype)
        pg = pc.cuda()
        for k in (1, 2):
            a = mtdmath.md_predictive_all_prefixes(torch.as_tensor(tokens), pc, alpha, steps=k)
            b = mtdmath.md_predictive_all_prefixes(torch.as_tensor(tokens).cuda(), pg, alpha, steps=k)
            assert b.device.type == "cuda" and b.dtype == dtype
            np.testing.assert_allclose(b.cpu().double().numpy(), a.double().numpy(), rtol=rtol, atol=rtol)
        C, Cg = mtdmath.lag_factors(tokens, pc, 3), mtdmath.lag_factors(torch.as_tensor(tokens).cuda(), pg, 3)
        assert torch.equal(C, Cg.cpu())
        lam = alpha / alpha.sum()
        for f in (lambda c: mtdmath.log_likelihood(lam, c), lambda c: mtdmath.gradient(lam, c), lambda c: mtdmath.hessian(lam, c),
                  lambda c: mtdmath.mirror_descent(c, eta=0.1, steps=3), lambda c: mtdmath.em(c, steps=3),
                  lambda c: mtdmath.mle(c), lambda c: mtdmath.one_step_md(c, alpha), lambda c: mtdmath.posterior_mean(c, alpha)):
            a, b = f(C), f(Cg)
            assert b.device.type == "cuda"
            np.testing.assert_allclose(b.cpu().double().numpy(), a.double().numpy(), rtol=rtol * 100, atol=rtol)


def test_import_mtdmath_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, mtdmath; print('torch' in sys.modules, 'array_api_strict' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@given_backends(icl_batches(max_T=25), st.lists(st.floats(0.0, 2.0), min_size=2, max_size=3), backends=FLOAT64)
def test_all_prefixes_with_a_schedule(bk, case, etas):
    tokens, pi, alpha = case
    got = bk.check(mtdmath.md_predictive_all_prefixes(bk.asarray(tokens), bk.asarray(pi), alpha, eta=etas,
                                                steps=len(etas)))
    _, ref = numpy_prefix_md(tokens, pi, alpha, eta=etas, steps=len(etas))
    ok = numpy_prefix_well_conditioned(tokens, pi, alpha, eta=max(etas), steps=len(etas))
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-9, atol=1e-11)


@given_backends(icl_batches(max_T=30), st.floats(0.05, 5.0), st.floats(0.0, 5.0), st.sampled_from([1, 1, 2]),
                st.booleans())
def test_all_prefixes_with_a_per_prefix_step(bk, case, c, a, steps, as_array):
    # the step of the softmax-sink transformer, η(n) = c/(n + m + a) (docs/math.md §5.6), given as
    # a function of n or as the (steps, T-m+1) array; the reference runs k_step_md prefix by prefix
    # with the scalar η(n) of that prefix
    tokens, pi, alpha = case
    m, T = len(alpha), tokens.shape[-1]
    if bk.float32:  # as in the explicit-step test: keep η·n/μ_min <= 100 for the float32 cumsum;
        # k >= 2 in float32 has no derived bound here (the schedule test is float64 only too)
        c, steps = min(c, 100 * float((alpha / alpha.sum()).min())), 1
    step = lambda n: c / (n + m + a)  # noqa: E731
    eta = np.tile(step(np.arange(T - m + 1)), (steps, 1)) if as_array else step
    pi_ref = _ref_pi(bk, pi)
    got = bk.check(mtdmath.md_predictive_all_prefixes(bk.asarray(tokens), bk.asarray(pi), alpha, eta=eta, steps=steps))
    _, ref = numpy_prefix_md(tokens, pi_ref, alpha, eta=step, steps=steps)
    if steps == 1:
        # the bound at the largest step, η(0) = c/(m + a), bounds every prefix's
        assert np.abs(got - ref).max() <= _one_step_bound(tokens, pi_ref, alpha, step(0), bk.eps)
    else:  # as for schedules: two float64 routes agree to 1e-9 where the steps are well conditioned
        ok = numpy_prefix_well_conditioned(tokens, pi_ref, alpha, eta=step(0), steps=steps)
        np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-9, atol=1e-11)


def test_a_wrong_per_prefix_step_is_caught():
    # the check above can fail: the step c/(n + a) (the sink without the m lags) is far off c/(n + m + a)
    rng = np.random.default_rng(8)
    pi = mtdmath.random_transition_matrix(5, rng=rng)
    alpha = np.array([0.5, 2.0, 1.0])
    y = mtdmath.sample_icl(pi, alpha, 30, 2, rng=rng)[0]
    c, a, m = 2.0, 1.0, 3
    _, ref = numpy_prefix_md(y, pi, alpha, eta=lambda n: c / (n + m + a))
    wrong = mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=lambda n: c / (n + a))
    assert np.abs(wrong - ref).max() > 1e6 * _one_step_bound(y, pi, alpha, c / a, 2.2e-16)
    # a constant step is the scalar route exactly: the per-prefix route adds no rounding of its own
    np.testing.assert_array_equal(mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=lambda n: np.full(n.shape, 0.3)),
                                  mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=0.3))


@pytest.mark.parametrize("eta, match", [
    (lambda n: -1.0 * n, r"eta\(n\) must be finite and >= 0"),
    (lambda n: np.where(n > 3, np.inf, 0.1), r"eta\(n\) must be finite and >= 0"),
    (lambda n: np.ones(3), r"eta\(n\) must have shape \(T-m\+1,\) = \(9,\)"),
    (lambda n: "x", r"eta\(n\) must be real numbers"),
    (np.ones((2, 9)), r"eta must have shape \(steps, T-m\+1\) = \(1, 9\)"),
    (np.full((1, 9), -0.5), r"eta must be finite and >= 0 at every prefix"),
    ([[0.1], [0.2, 0.3]], r"eta must be .*ragged"),
])
def test_per_prefix_step_validation(eta, match):
    pi = mtdmath.random_transition_matrix(3, rng=0)
    y = np.array([0, 1, 2, 0, 1, 2, 2, 1, 0, 0])  # T = 10, m = 2: 9 prefix rows
    with pytest.raises(ValueError, match=match):
        mtdmath.md_predictive_all_prefixes(y, pi, [1.0, 1.0], eta=eta)


def test_numpy_float32_data_give_float32_results(monkeypatch):
    rng = np.random.default_rng(13)
    pi = mtdmath.random_transition_matrix(4, rng=rng).astype(np.float32)
    y = mtdmath.sample_icl(pi, [1.0, 2.0], 12, 2, rng=rng)[0]
    C = mtdmath.lag_factors(y, pi, 2)
    assert C.dtype == np.float32
    for out in (mtdmath.log_likelihood([0.5, 0.5], C), mtdmath.gradient([0.5, 0.5], C), mtdmath.mirror_descent(C, eta=0.1),
                mtdmath.em(C), mtdmath.one_step_md(C, [1.0, 2.0]), mtdmath.posterior_mean(C, [1.0, 2.0]),
                mtdmath.md_predictive_all_prefixes(y, pi, [1.0, 2.0], steps=2)):
        assert out.dtype == np.float32
    for disable in ("0", "1"):  # the compiled kernel and the generic route
        monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", disable)
        assert mtdmath.md_predictive_all_prefixes(y, pi, [1.0, 2.0]).dtype == np.float32


@pytest.mark.parametrize("bk", params((TORCH64, TORCH32)))
def test_torch_lag_factors_fast_path_equals_the_generic_gather(bk):
    import mtdmath.model as Mm

    rng = np.random.default_rng(14)
    pi = mtdmath.random_transition_matrix(7, rng=rng)
    y = torch.as_tensor(rng.integers(0, 7, size=(3, 2, 20)))
    P = bk.asarray(pi)
    fast = Mm._lag_factors(y, P, 4, _xp.data_space(P).xp)
    # the generic route on the same values (NumPy); both are exact gathers
    generic = Mm._lag_factors(y.numpy(), bk.to_numpy(P), 4, _xp.numpy_namespace())
    np.testing.assert_array_equal(bk.to_numpy(fast), generic)
