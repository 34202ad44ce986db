"""The exact Bayes posterior (docs/math.md §4) against quadrature, brute-force enumeration and Monte Carlo."""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate
from scipy.special import gammaln

import mtdmath
from strategies import alphas, lag_factor_arrays


def quad_m2(C, alpha):
    """Posterior mean of lam_1 and log evidence for m = 2 by adaptive quadrature on x = lam_1.

    The integrand is rescaled by its maximum on a grid (log space) so long products stay finite.
    """
    a1, a2 = alpha
    logB = gammaln(a1) + gammaln(a2) - gammaln(a1 + a2)

    def logf(x):
        return np.sum(np.log(C[:, 0] * x + C[:, 1] * (1 - x))) + (a1 - 1) * np.log(x) + (a2 - 1) * np.log1p(-x) - logB

    grid = np.linspace(1e-6, 1 - 1e-6, 2001)
    top = max(logf(x) for x in grid)
    pts = sorted(set([grid[np.argmax([logf(x) for x in grid])]]))
    f = lambda x: np.exp(logf(x) - top)  # noqa: E731
    kw = dict(epsabs=0, epsrel=1e-13, limit=500, points=pts)
    Z = integrate.quad(f, 0, 1, **kw)[0]
    Z1 = integrate.quad(lambda x: x * f(x), 0, 1, **kw)[0]
    return Z1 / Z, np.log(Z) + top


@given(lag_factor_arrays(m=2, batch=(), n=st.integers(0, 60)), alphas(m=2, low=1.0, high=20.0))
def test_m2_matches_quadrature(C, alpha):
    # alpha >= 1 keeps the integrand bounded at the end points, where quad is reliable to 1e-13;
    # alpha < 1 is covered by the brute-force enumeration test below.
    mean1, logZ = quad_m2(C, alpha)
    post = mtdmath.posterior_mean(C, alpha)
    np.testing.assert_allclose(post[0], mean1, rtol=1e-9)
    np.testing.assert_allclose(mtdmath.log_evidence(C, alpha), logZ, rtol=1e-9, atol=1e-9)


def brute_force(C, alpha):
    """Expand Π_i C[i]·lam over all m^n lag assignments; Dirichlet moments via log-gamma."""
    n, m = C.shape
    a0 = alpha.sum()
    Z, Zg = 0.0, np.zeros(m)
    for assign in itertools.product(range(m), repeat=n):
        k = np.bincount(np.array(assign, dtype=int), minlength=m) if n else np.zeros(m, int)
        coef = np.prod([C[i, g] for i, g in enumerate(assign)]) if n else 1.0
        mom = np.exp(np.sum(gammaln(alpha + k) - gammaln(alpha)) + gammaln(a0) - gammaln(a0 + n))
        Z += coef * mom
        Zg += coef * mom * (alpha + k) / (a0 + n)
    return Zg / Z, np.log(Z)


@given(
    st.integers(1, 4).flatmap(
        lambda m: st.tuples(lag_factor_arrays(m=m, batch=(), n=st.integers(0, max(1, 7 - m))), alphas(m=m))
    )
)
def test_matches_brute_force_enumeration(case):
    C, alpha = case
    mean, logZ = brute_force(C, alpha)
    np.testing.assert_allclose(mtdmath.posterior_mean(C, alpha), mean, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(mtdmath.log_evidence(C, alpha), logZ, rtol=1e-10, atol=1e-10)


def test_m3_exact_vs_importance_sampling_within_5_stderr():
    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(5, rng=rng)
    alpha = np.array([2.0, 0.7, 1.3])
    y, _ = mtdmath.sample_icl(pi, alpha, 23, 6, rng=rng)
    C = mtdmath.lag_factors(y, pi, 3)
    exact = mtdmath.posterior_mean(C, alpha)
    mc, se = mtdmath.posterior_mean_mc(C, alpha, samples=200_000, rng=1)
    assert np.all(np.abs(mc - exact) <= 5 * se)
    assert np.all(se < 0.02)  # the check has teeth: the errors bars are not huge
    # and a wrong reference (the prior mean) is rejected by the same test
    assert np.any(np.abs(mc - alpha / alpha.sum()) > 5 * se)


def test_mc_stderr_is_honest_and_shrinks_like_root_K():
    rng = np.random.default_rng(3)
    C = rng.uniform(0.05, 1, size=(12, 3))
    alpha = np.array([1.5, 0.8, 2.0])
    exact = mtdmath.posterior_mean(C, alpha)
    K = 2000
    reps = [mtdmath.posterior_mean_mc(C, alpha, samples=K, rng=s) for s in range(60)]
    means = np.array([r[0] for r in reps])
    ses = np.array([r[1] for r in reps])
    # the reported stderr matches the spread over independent replicates (ratio near 1)
    ratio = ses.mean(0) / means.std(0, ddof=1)
    assert np.all((ratio > 0.75) & (ratio < 1.33)), ratio
    # and the replicates centre on the exact value
    assert np.all(np.abs(means.mean(0) - exact) < 5 * means.std(0, ddof=1) / np.sqrt(60))
    # K -> 16 K divides the stderr by about 4
    _, se_big = mtdmath.posterior_mean_mc(C, alpha, samples=16 * K, rng=99)
    r = ses.mean(0) / se_big
    assert np.all((r > 3.2) & (r < 5.0)), r


def test_n_zero_is_prior():
    alpha = np.array([0.5, 2.0, 1.5])
    C = np.zeros((4, 0, 3))
    np.testing.assert_allclose(mtdmath.posterior_mean(C, alpha), np.broadcast_to(alpha / 4.0, (4, 3)))
    np.testing.assert_array_equal(mtdmath.log_evidence(C, alpha), np.zeros(4))


def test_impossible_data():
    alpha = np.ones(2)
    C = np.array([[[0.5, 0.5], [0.0, 0.0]], [[0.5, 0.5], [0.2, 0.1]]])
    le = mtdmath.log_evidence(C, alpha)
    assert le[0] == -np.inf and np.isfinite(le[1])
    with pytest.raises(ValueError, match="C"):
        mtdmath.posterior_mean(C, alpha)
    with pytest.raises(ValueError, match="C"):
        mtdmath.posterior_mean_mc(C, alpha, samples=10)


def test_memory_budget_refuses_before_allocating():
    C = np.full((400, 6), 0.5)
    with pytest.raises(ValueError, match="posterior_mean_mc"):
        mtdmath.posterior_mean(C, np.ones(6), max_bytes=2**20)


def test_long_context_m2_no_overflow_and_concentrates():
    rng = np.random.default_rng(4)
    pi = mtdmath.random_transition_matrix(6, concentration=0.3, rng=rng)
    lam = np.array([0.8, 0.2])
    y = mtdmath.sample(pi, lam, 5002, rng=rng)
    C = mtdmath.lag_factors(y, pi, 2)
    post = mtdmath.posterior_mean(C, np.array([1.0, 1.0]))
    assert np.all(np.isfinite(post)) and np.isfinite(mtdmath.log_evidence(C, np.ones(2)))
    # with n = 5000 the posterior mean sits within a few 1/sqrt(n) of the MLE
    assert np.abs(post - mtdmath.mle(C)).max() < 0.02


def test_batched_matches_single():
    rng = np.random.default_rng(5)
    C = rng.uniform(0, 1, size=(2, 3, 9, 3))
    alpha = np.array([0.3, 1.0, 4.0])
    full = mtdmath.posterior_mean(C, alpha)
    assert full.shape == (2, 3, 3)
    np.testing.assert_allclose(full[1, 2], mtdmath.posterior_mean(C[1, 2], alpha), rtol=1e-13)
    assert mtdmath.log_evidence(C, alpha).shape == (2, 3)


def _mp_brute_posterior(C, alpha, dps=60):
    """Posterior mean and log evidence by enumerating all m^n lag assignments in mpmath:
    weight Π_i C[i, z_i] (alpha_{z_i} + k_{z_i}) / (α₀ + i), the Pólya urn (docs/math.md §4)."""
    import itertools

    import mpmath as mp

    with mp.workdps(dps):
        n, m = C.shape
        al = [mp.mpf(float(a)) for a in alpha]
        a0 = mp.fsum(al)
        tot, num = mp.mpf(0), [mp.mpf(0)] * m
        for z in itertools.product(range(m), repeat=n):
            k, w = [0] * m, mp.mpf(1)
            for i, g in enumerate(z):
                w *= mp.mpf(float(C[i, g])) * (al[g] + k[g]) / (a0 + i)
                k[g] += 1
            tot += w
            for g in range(m):
                num[g] += w * (al[g] + k[g]) / (a0 + n)
        return np.array([float(x / tot) for x in num]), float(mp.log(tot))


@pytest.mark.parametrize("m, n", [(2, 7), (3, 6)])
@pytest.mark.parametrize("a", [1e-300, 1e-200, 1e-17, 1e-8, 1.0, 1e8, 1e154, 1e300])
def test_extreme_alpha_matches_mpmath(m, n, a):
    # the Pólya factors (alpha_g + j)/(α₀ + i) lie in [0, 1] for every alpha, and alpha_g + j is
    # formed without alpha_g - 1: finite and exact to rounding from 1e-300 to 1e300 (measured
    # worst 1.2e-13 relative over these cases; rtol 1e-11 is the n·m rounding steps with margin)
    rng = np.random.default_rng(m * 100 + n)
    C = rng.uniform(0.05, 1, size=(n, m))
    C[1, 0] = 1e-13
    for alpha in (np.full(m, a), a * np.arange(1, m + 1) / m, np.r_[a, np.ones(m - 1)]):
        pm, le = mtdmath.posterior_mean(C, alpha), mtdmath.log_evidence(C, alpha)
        want_pm, want_le = _mp_brute_posterior(C, alpha)
        assert np.all(np.isfinite(pm)) and np.isfinite(le)
        np.testing.assert_allclose(pm, want_pm, rtol=1e-11, atol=0)
        np.testing.assert_allclose(le, want_le, rtol=1e-12, atol=1e-12)


def test_mc_without_effective_samples_raises_and_points_to_the_exact_method():
    # alpha = 1e-8: every prior draw is (numerically) one-hot, and each lag alone is impossible
    C = np.random.default_rng(0).uniform(0.1, 1, (20, 2))
    C[3, 0] = C[5, 1] = 0.0
    with pytest.raises(ValueError, match="no effective sample.*posterior_mean"):
        mtdmath.posterior_mean_mc(C, [1e-8, 1e-8], samples=1000, rng=0)
    with pytest.raises(ValueError, match="alpha"):
        mtdmath.posterior_mean_mc(C, [1e308, 1e308], samples=10, rng=0)  # α₀ overflows
    # the exact method has no such problem
    assert np.all(np.isfinite(mtdmath.posterior_mean(C, [1e-8, 1e-8])))


def test_mc_chunk_adapts_to_the_budget_and_results_do_not_depend_on_it():
    rng = np.random.default_rng(1)
    C = rng.uniform(0.1, 1, (3, 50, 2))
    a = mtdmath.posterior_mean_mc(C, [1.0, 2.0], samples=300, rng=5, chunk=7)
    # a budget of 16·B·n·7 bytes lowers the default chunk to 7: the same draws, the same sums
    b = mtdmath.posterior_mean_mc(C, [1.0, 2.0], samples=300, rng=5, max_bytes=16 * 3 * 50 * 7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    empty = mtdmath.posterior_mean_mc(np.zeros((0, 5, 2)) + 0.5, [1.0, 1.0], samples=10)
    assert empty[0].shape == (0, 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0, 0.0, "1e9"])
def test_budgets_are_validated(bad):
    C = np.full((4, 2), 0.5)
    for f in (mtdmath.posterior_mean, mtdmath.log_evidence):
        with pytest.raises(ValueError, match="max_bytes"):
            f(C, [1.0, 1.0], max_bytes=bad)
    with pytest.raises(ValueError, match="max_bytes"):
        mtdmath.posterior_mean_mc(C, [1.0, 1.0], samples=4, max_bytes=bad)


@pytest.mark.parametrize("n, m, name", [(-1, 3, "n"), (2.0, 3, "n"), ("2", 3, "n"), (None, 3, "n"), (2, 0, "m")])
def test_n_count_states_validates(n, m, name):
    with pytest.raises(ValueError, match=name):
        mtdmath.n_count_states(n, m)


@pytest.mark.parametrize("B, n, m", [(1, 40, 2), (4, 40, 2), (1, 64, 3), (8, 64, 3), (1, 24, 4), (3, 24, 4),
                                     (1, 16, 5), (2, 16, 5), (1, 3, 30), (1, 1, 3000), (2, 40, 5)])
def test_budget_estimate_bounds_the_measured_peak(B, n, m, monkeypatch):
    # the budget check must refuse before allocating, so its estimate must bound the real peak.
    # The NumPy route is measured with tracemalloc (the compiled route allocates outside
    # Python's allocator: test_compiled_route_peak_rss_is_bounded measures it)
    import tracemalloc

    from mtdmath import bayes as Bm

    monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", "1")

    C = np.random.default_rng(0).uniform(0.1, 1, (B, n, m))
    Bm._layout.cache_clear()  # the layout is part of the peak
    tracemalloc.start()
    try:
        mtdmath.posterior_mean(C, np.ones(m))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= Bm._bytes_needed(B, n, m)
    with pytest.raises(ValueError, match="max_bytes"):  # one byte short of the estimate: refused
        mtdmath.posterior_mean(C, np.ones(m), max_bytes=Bm._bytes_needed(B, n, m) - 1)


def test_many_lags_few_transitions():
    # m = 3000, n = 1: the layout is built in O(m · rows) (bench/test_bench_bayes.py times it)
    post = mtdmath.posterior_mean(np.ones((1, 3000)), np.ones(3000))
    np.testing.assert_allclose(post, 1 / 3000, rtol=1e-12)
    C = np.random.default_rng(3).uniform(0.1, 1, (1, 3000))
    alpha = np.random.default_rng(4).uniform(0.5, 2, 3000)
    # one transition: E[lam_g | y] = (alpha_g + C_g alpha_g / (C·alpha)) / (α₀ + 1), by Bayes on one draw
    want = (alpha + C[0] * alpha / (C[0] @ alpha)) / (alpha.sum() + 1)
    np.testing.assert_allclose(mtdmath.posterior_mean(C, alpha), want, rtol=1e-12)


def test_compiled_route_peak_rss_is_bounded():
    # the compiled recursion keeps two ragged levels: the peak resident memory it adds in a fresh
    # process (VmHWM after resetting it, minus VmRSS before) must stay below the guarding estimate
    pytest.importorskip("numba")
    import subprocess
    import sys

    code = """
import numpy as np, mtdmath
from mtdmath import bayes as Bm
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
C = np.random.default_rng(0).uniform(0.1, 1, (1, 64, 5))
mtdmath.posterior_mean(C[:, :3], np.ones(5))  # load numba and the compiled kernel first
open("/proc/self/clear_refs", "w").write("5")
base = rss("VmRSS")
mtdmath.posterior_mean(C, np.ones(5))
print(rss("VmHWM") - base, Bm._bytes_needed(1, 64, 5, kernel=True))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    grew, bound = int(out[0]), int(out[1])
    assert 0 < grew <= bound, (grew, bound)


@pytest.mark.parametrize("m, n, B", [(1, 5, 2), (2, 30, 3), (3, 20, 2), (4, 12, 2), (5, 8, 2), (3, 0, 2)])
def test_device_route_equals_the_host_route(m, n, B, monkeypatch):
    # the Array-API recursion on the padded layout (what a CUDA batch runs) on CPU torch tensors,
    # against a different implementation: the compiled kernel on the ragged layout (for n = 0 and
    # m = 1, the closed forms alpha/α₀ and 1). Float64 sums of the same terms in other orders: 1e-13
    torch = pytest.importorskip("torch")
    pytest.importorskip("numba")
    from mtdmath import bayes as Bm

    rng = np.random.default_rng(10 * m + n)
    C = rng.uniform(0.05, 1, (B, n, m))
    C[0, :1, 0] = 1e-13
    alpha = rng.uniform(0.3, 3, m)
    want_pm, want_le = mtdmath.posterior_mean(C, alpha), mtdmath.log_evidence(C, alpha)
    if n == 0 or m == 1:
        want_pm = np.broadcast_to(alpha / alpha.sum(), (B, m))
        want_le = np.log(C[..., 0]).sum(-1) if m == 1 else np.zeros(B)
    monkeypatch.setattr(Bm, "_on_device", lambda space: space.is_torch)  # force the device route on the CPU
    Ct = torch.as_tensor(C)
    pm, le = mtdmath.posterior_mean(Ct, alpha), mtdmath.log_evidence(Ct, alpha)
    assert isinstance(pm, torch.Tensor) and pm.dtype == torch.float64
    np.testing.assert_allclose(pm.numpy(), want_pm, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(le.numpy(), want_le, rtol=1e-13, atol=1e-13)
    Ci = Ct.clone()
    if n:
        Ci[1, 0, :] = 0  # an impossible transition: -inf for that element only
        le_i = mtdmath.log_evidence(Ci, alpha).numpy()
        assert le_i[1] == -np.inf and np.isfinite(le_i[0])
