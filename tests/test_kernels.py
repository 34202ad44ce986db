"""Compiled kernels (mtdmath/_kernels) against the generic Array-API routes they stand in for.

The generic route is selected with ``MTDMATH_DISABLE_KERNELS=1``. float64: the same sums in the
same order except the final mixture of m rows (a matrix product in the generic NumPy route), so
agreement to 1e-12 relative is required (2.5e-14 seen). float32: the kernel runs the recursion
and the softmax in float64 and only the final mixture of m rows of pi in float32; the generic
float32 route rounds every partial sum, so both are compared with the float64 generic route, the
kernel to 2e-6 (a few float32 roundings of the output) and better than the generic float32 route.
"""
import numpy as np
import pytest
from hypothesis import strategies as st

import mtdmath
from backends import NUMPY, TORCH32, TORCH64, given_backends
from strategies import icl_batches

pytest.importorskip("numba")


def _generic(monkeypatch, fn):
    with monkeypatch.context() as mp:
        mp.setenv("MTDMATH_DISABLE_KERNELS", "1")
        return fn()


_PER_PREFIX = st.tuples(st.floats(0.05, 5.0), st.floats(0.0, 5.0)).map(
    lambda ca: (lambda n: ca[0] / (n + 2 + ca[1])))  # a per-prefix step η(n) = c/(n + 2 + a)


@given_backends(icl_batches(max_T=40), st.one_of(st.none(), st.floats(0.0, 3.0), _PER_PREFIX),
                backends=(NUMPY, TORCH64))
def test_all_prefix_kernel_equals_the_generic_route_float64(bk, case, eta):
    import os

    tokens, pi, alpha = case
    y, P = bk.asarray(tokens), bk.asarray(pi)
    fast = bk.check(mtdmath.md_predictive_all_prefixes(y, P, alpha, eta=eta))
    os.environ["MTDMATH_DISABLE_KERNELS"] = "1"
    try:
        generic = bk.check(mtdmath.md_predictive_all_prefixes(y, P, alpha, eta=eta))
    finally:
        del os.environ["MTDMATH_DISABLE_KERNELS"]
    np.testing.assert_allclose(fast, generic, rtol=1e-12, atol=1e-300)


def test_all_prefix_kernel_float32_keeps_the_recursion_in_float64(monkeypatch):
    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(8, concentration=0.5, rng=rng)
    alpha = np.array([0.5, 1.0, 2.0])
    y = mtdmath.sample_icl(pi, alpha, 400, 4, rng=rng)[0]
    pi32 = pi.astype(np.float32)
    p64 = pi32.astype(np.float64)
    p64 /= p64.sum(1, keepdims=True)  # float32 rows sum to 1 ± 5e-7, outside the float64 check; moves pi by ~5e-7
    ref = _generic(monkeypatch, lambda: mtdmath.md_predictive_all_prefixes(y, p64, alpha))
    fast = mtdmath.md_predictive_all_prefixes(y, pi32, alpha)
    slow = _generic(monkeypatch, lambda: mtdmath.md_predictive_all_prefixes(y, pi32, alpha))
    assert fast.dtype == np.float32 and slow.dtype == np.float32
    err_fast = np.abs(fast - ref).max()
    # the recursion and the softmax run in float64; lam rounded to float32 and a float32 mixture of m = 3
    # rows: a few float32 roundings (6e-8 each), plus the 5e-7 renormalisation of the reference
    assert err_fast < 2e-6
    assert err_fast <= np.abs(slow - ref).max()


def test_out_buffer_is_written_and_returned(monkeypatch):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    pi = mtdmath.random_transition_matrix(5, rng=rng)
    alpha = np.array([1.0, 2.0])
    y = mtdmath.sample_icl(pi, alpha, 20, 3, rng=rng)[0]
    want = mtdmath.md_predictive_all_prefixes(y, pi, alpha)
    out = np.full(want.shape, np.nan)
    assert mtdmath.md_predictive_all_prefixes(y, pi, alpha, out=out) is out
    np.testing.assert_array_equal(out, want)
    strided = np.full((want.shape[0], want.shape[1], 2 * want.shape[2]), np.nan)[..., ::2]  # not contiguous
    mtdmath.md_predictive_all_prefixes(y, pi, alpha, out=strided)
    np.testing.assert_array_equal(strided, want)
    tout = torch.empty(want.shape, dtype=torch.float64)
    assert mtdmath.md_predictive_all_prefixes(torch.as_tensor(y), torch.as_tensor(pi), alpha, out=tout) is tout
    np.testing.assert_array_equal(tout.numpy(), want)
    gen = np.full(want.shape, np.nan)  # the generic route (steps = 2) fills out too
    got = mtdmath.md_predictive_all_prefixes(y, pi, alpha, steps=2, out=gen)
    np.testing.assert_array_equal(got, mtdmath.md_predictive_all_prefixes(y, pi, alpha, steps=2))
    for bad, msg in ((np.empty((1, 2)), "shape"), (np.empty(want.shape, np.float32), "dtype"),
                     (torch.empty(want.shape, dtype=torch.float64), "namespace")):
        with pytest.raises(ValueError, match=f"out must .*{msg}|out must be an array of the result's {msg}"):
            mtdmath.md_predictive_all_prefixes(y, pi, alpha, out=bad)


def test_kernel_reports_impossible_data():
    with pytest.raises(ValueError, match="impossible"):
        mtdmath.md_predictive_all_prefixes(np.array([[0, 1, 0, 0]]), np.array([[0.0, 1.0], [1.0, 0.0]]), [1.0])


def test_import_compiles_nothing():
    import subprocess
    import sys

    code = "import sys, mtdmath; mtdmath.md_predictive_all_prefixes; print('numba' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@given_backends(st.integers(2, 6), st.integers(0, 25), st.integers(1, 3), st.integers(0, 2**32 - 1),
                st.sampled_from([1e-8, 0.3, 1.0, 5.0, 1e8]), backends=(NUMPY,))
def test_posterior_kernel_equals_the_generic_route(bk, m, n, B, seed, scale):
    import os

    rng = np.random.default_rng(seed)
    C = rng.uniform(0.0, 1.0, (B, n, m)) * (rng.random((B, n, m)) < 0.8)
    C[..., 0] += 1e-3  # every row possible
    alpha = scale * rng.uniform(0.3, 3.0, m)
    fast = mtdmath.posterior_mean(C, alpha), mtdmath.log_evidence(C, alpha)
    os.environ["MTDMATH_DISABLE_KERNELS"] = "1"
    try:
        slow = mtdmath.posterior_mean(C, alpha), mtdmath.log_evidence(C, alpha)
    finally:
        del os.environ["MTDMATH_DISABLE_KERNELS"]
    # the same products cell by cell; the final sums run in another order: 1e-12 relative
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant, independent, freeze", [("shared", False, False), ("lagwise", False, False),
                                                          ("shared", True, False), ("shared", False, True)])
def test_fit_em_kernel_equals_the_generic_em_map(variant, independent, freeze, monkeypatch):
    from mtdmath.fitting import TransitionCounts
    from mtdmath.fitting._em import EM as _EM, Layout

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=3000)
    data = TransitionCounts.from_sequences([y], lags=(1, 2, 3))
    lay = Layout(4, 3, variant, independent)
    em = _EM(data, lay, freeze_pi=freeze)
    x = np.stack([lay.normalise(rng.random(lay.size)) for _ in range(5)])  # 5 random restarts
    x[2, lay.K:lay.K + 4] = 0.0  # a whole row of pi set to 0: the data become impossible under x[2]
    fast = em.batch(x.copy())
    monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", "1")
    slow = em.batch(x.copy())
    # the same sums in another order (one pass over the tuples against einsum): 1e-12 relative
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-12)
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-11, atol=1e-15)


def test_fit_with_the_kernel_reaches_the_same_maximum(monkeypatch):
    from mtdmath.fitting import MTDModel

    rng = np.random.default_rng(0)
    true = MTDModel(mtdmath.random_transition_matrix(6, concentration=0.5, rng=rng), rng.dirichlet(np.ones(3)))
    y = true.sample(20_000, rng=1)
    fast = mtdmath.fitting.fit(y, 3, restarts=4, rng=0)
    monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", "1")
    slow = mtdmath.fitting.fit(y, 3, restarts=4, rng=0)
    # the same EM path up to rounding, stopped by the same rule: the log-likelihood to 1e-9 relative
    # (the requirement; 1e-14 seen) and the same fixed point
    assert abs(fast.loglik_ - slow.loglik_) <= 1e-9 * abs(slow.loglik_)
    np.testing.assert_allclose(fast.lam_, slow.lam_, atol=1e-6)
