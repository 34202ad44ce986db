"""Group ``bayes``: the exact posterior mean (docs/math.md §4) over n, and Monte Carlo at equal accuracy.

One sequence (B = 1) of the in-context task, S = 16. The exact recursion costs O(m · binom(n+m, m))
(``posterior_mean``); ``posterior_mean_mc`` (self-normalised importance sampling from the prior)
is timed at the sample count K that reaches 1e-4 absolute accuracy on every coordinate: K is set
from a pilot run (2^16 draws, its stderr, and the K^(-1/2) law) so that the reported stderr is at
most 5e-5 (two standard errors within 1e-4); the timed run's actual error against the exact
posterior is recorded in extra_info (``abs_error``).
"""
import math
from functools import lru_cache

import numpy as np
import pytest

import _common as C
import mtdmath

S = 16
ALPHAS = {2: np.array([2.0, 1.0]), 3: np.array([2.0, 1.0, 0.5]), 5: np.array([2.0, 1.0, 0.5, 1.5, 0.8])}
SIZES = [(2, 256), (2, 1024), (2, 4096), (3, 64), (3, 128), (3, 256), (3, 512), (5, 16), (5, 32), (5, 64)]
MC_SIZE = (3, 64)
MC_TARGET = 1e-4


@lru_cache(maxsize=None)
def lag_factors(m, n):
    rng = np.random.default_rng(100 * m + n)
    pi = mtdmath.random_transition_matrix(S, rng=rng)
    tokens, _ = mtdmath.sample_icl(pi, ALPHAS[m], n + m, 1, rng=rng)
    return mtdmath.lag_factors(tokens, pi, m)[0]  # (n, m)


@pytest.mark.benchmark(group="bayes")
@pytest.mark.parametrize("m,n", SIZES, ids=[f"numpy-float64-m{m}-n{n}" for m, n in SIZES])
def test_posterior_mean(benchmark, m, n):
    C_ = lag_factors(m, n)
    rounds = 3 if mtdmath.n_count_states(n, m) * n > 2e6 else 10
    post = C.run(benchmark, lambda: mtdmath.posterior_mean(C_, ALPHAS[m]), backend="numpy", rounds=rounds)
    assert abs(post.sum() - 1) < 1e-12
    C.record(benchmark, ("bayes", "posterior_mean", "numpy", "float64", f"m{m}-n{n}"), backend="numpy",
             min_bytes=C.nbytes(C_) + 8 * m, states=mtdmath.n_count_states(n, m))


@pytest.mark.benchmark(group="bayes")
@pytest.mark.parametrize("m,n", [(3000, 1)], ids=["numpy-float64-layout-m3000-n1"])
def test_posterior_mean_many_lags(benchmark, m, n):
    # target: under a second, layout included (it is rebuilt every round: the cache is cleared)
    from mtdmath import bayes as Bm

    C_ = np.random.default_rng(7).uniform(0.1, 1.0, (n, m))

    def fn():
        Bm._layout.cache_clear()
        return mtdmath.posterior_mean(C_, np.ones(m))

    post = C.run(benchmark, fn, backend="numpy", rounds=3)
    assert abs(post.sum() - 1) < 1e-12
    C.record(benchmark, ("bayes", "posterior_mean_layout", "numpy", "float64", f"m{m}-n{n}"), backend="numpy",
             min_bytes=C.nbytes(C_) + 8 * m, states=mtdmath.n_count_states(n, m))


@lru_cache(maxsize=1)
def mc_sample_count():
    """K with stderr <= MC_TARGET/2 on every coordinate, from a pilot of 2^16 draws (stderr ∝ K^(-1/2))."""
    m, n = MC_SIZE
    k0 = 2**16
    _, se = mtdmath.posterior_mean_mc(lag_factors(m, n), ALPHAS[m], samples=k0, rng=1)
    k = k0 * (se.max() / (MC_TARGET / 2)) ** 2
    return int(math.ceil(k / 4096) * 4096)


@pytest.mark.benchmark(group="bayes")
@pytest.mark.parametrize("m,n", [MC_SIZE], ids=[f"numpy-float64-mc-m{MC_SIZE[0]}-n{MC_SIZE[1]}"])
def test_posterior_mean_mc(benchmark, m, n):
    C_ = lag_factors(m, n)
    K = mc_sample_count()
    exact = mtdmath.posterior_mean(C_, ALPHAS[m])
    mean, se = C.run(benchmark, lambda: mtdmath.posterior_mean_mc(C_, ALPHAS[m], samples=K, rng=2),
                     backend="numpy", rounds=1, warmup=0)
    err = float(np.abs(mean - exact).max())
    C.record(benchmark, ("bayes", "posterior_mean_mc", "numpy", "float64", f"m{m}-n{n}-K{K}"), backend="numpy",
             min_bytes=C.nbytes(C_) + 16 * m, samples=K, stderr=float(se.max()), abs_error=err,
             reaches_target=err <= MC_TARGET)
