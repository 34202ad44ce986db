"""Sampling and data helpers of the MTD model (docs/math.md §1)."""
import numpy as np
import pytest
from scipy import stats

import mtdmath


def test_random_transition_matrix_is_stochastic_and_seeded():
    pi = mtdmath.random_transition_matrix(7, concentration=0.5, rng=3)
    assert pi.shape == (7, 7)
    np.testing.assert_allclose(pi.sum(1), 1.0, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(pi, mtdmath.random_transition_matrix(7, concentration=0.5, rng=3))
    assert not np.array_equal(pi, mtdmath.random_transition_matrix(7, concentration=0.5, rng=4))


def test_sample_transition_frequencies_chi_square():
    # Under the MTD law, the pair (y[t-1..t-m], y[t]) counts given the context follow
    # P(b | ctx) = Σ_g lam_g pi[y[t-g], b]; pool contexts by their predicted law and test.
    rng = np.random.default_rng(12345)
    S, m = 3, 2
    pi = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]])
    lam = np.array([0.65, 0.35])
    y = mtdmath.sample(pi, lam, 60_000, rng=rng)
    obs = np.zeros((S, S, S))  # (y[t-1], y[t-2], y[t])
    np.add.at(obs, (y[1:-1], y[:-2], y[2:]), 1)
    pvals = []
    for a in range(S):
        for b in range(S):
            expected_law = lam[0] * pi[a] + lam[1] * pi[b]
            tot = obs[a, b].sum()
            pvals.append(stats.chisquare(obs[a, b], tot * expected_law).pvalue)
    # 9 independent tests at a fixed seed: Bonferroni at 1e-3 overall
    assert min(pvals) > 1e-3 / 9
    # a deliberately wrong law (lag weights swapped) must be rejected
    wrong = []
    for a in range(S):
        for b in range(S):
            law = lam[1] * pi[a] + lam[0] * pi[b]
            wrong.append(stats.chisquare(obs[a, b], obs[a, b].sum() * law).pvalue)
    assert min(wrong) < 1e-6


def test_sample_init_and_batch_and_seed():
    pi = mtdmath.random_transition_matrix(4, rng=0)
    lam = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    init = np.array([0.0, 0.0, 1.0, 0.0])
    y = mtdmath.sample(pi, lam, 50, rng=1, init=init)
    assert y.shape == (3, 50) and y.dtype == np.int64
    assert np.all(y[:, :2] == 2)
    np.testing.assert_array_equal(y, mtdmath.sample(pi, lam, 50, rng=1, init=init))
    gen = np.random.default_rng(5)
    y1 = mtdmath.sample(pi, lam[0], 20, rng=gen)
    assert y1.shape == (20,)


def test_sample_never_draws_zero_probability_transitions():
    # a deterministic cycle 0 -> 1 -> 2 -> 0 with lag 1 only: every step is forced
    pi = np.roll(np.eye(3), 1, axis=1)
    y = mtdmath.sample(pi, np.array([1.0]), 200, rng=0)
    assert np.all(y[1:] == (y[:-1] + 1) % 3)


def test_sample_icl_lam_distribution():
    pi = mtdmath.random_transition_matrix(3, rng=0)
    alpha = np.array([3.0, 1.0, 0.5])
    tokens, lam = mtdmath.sample_icl(pi, alpha, 10, 4000, rng=7)
    assert tokens.shape == (4000, 10) and lam.shape == (4000, 3)
    # sample mean of Dirichlet draws within 5 standard errors of alpha/α₀
    mu = alpha / alpha.sum()
    var = mu * (1 - mu) / (alpha.sum() + 1)
    assert np.all(np.abs(lam.mean(0) - mu) < 5 * np.sqrt(var / 4000))


def test_lag_factors_shape_and_integer_dtypes():
    pi = mtdmath.random_transition_matrix(5, rng=0)
    for dt in (np.int8, np.uint8, np.int32, np.int64):
        y = np.array([[0, 1, 2, 3, 4, 0]], dtype=dt)
        C = mtdmath.lag_factors(y, pi, 3)
        assert C.shape == (1, 3, 3)
        assert C[0, 0, 0] == pi[2, 3] and C[0, 0, 2] == pi[0, 3]
    assert mtdmath.lag_factors(np.array([1, 2]), pi, 2).shape == (0, 2)


def test_predictive_broadcast():
    pi = mtdmath.random_transition_matrix(4, rng=0)
    y = np.array([[0, 1, 2], [3, 3, 1]])
    p = mtdmath.predictive(np.array([0.2, 0.8]), y, pi)
    np.testing.assert_allclose(p[1], 0.2 * pi[1] + 0.8 * pi[3])
    np.testing.assert_allclose(p.sum(-1), 1.0)


@pytest.mark.parametrize("rng", [None, 0, np.random.default_rng(1), np.random.SeedSequence(3)])
def test_rng_kinds_accepted(rng):
    assert mtdmath.random_transition_matrix(3, rng=rng).shape == (3, 3)
