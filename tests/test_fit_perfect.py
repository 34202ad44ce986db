"""Exact stationary draws (coupling from the past, docs/math.md §10.1) against the stationary law computed
independently by linear algebra on the S^M windows."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from mtdmath.fitting import MTDModel
from mtdmath.fitting._perfect import minorised_components, perfect_sample


def next_law(pis, lam, lags, lam_indep, p0, window):
    """P(next | window) from the formula of docs/math.md §1.2, window oldest first."""
    out = lam_indep * np.asarray(p0, dtype=float)
    for j, l in enumerate(lags):
        out = out + lam[j] * pis[j][window[-l]]
    return out


def stationary_by_linalg(pis, lam, lags, lam_indep=0.0, p0=None):
    """Stationary law of the windows (index sum_i w[i] S^(M-1-i)): left eigenvector of eigenvalue 1 of the
    expanded matrix, built here by enumeration (not by the library)."""
    S, M = pis.shape[-1], max(lags)
    p0 = np.zeros(S) if p0 is None else p0
    windows = list(itertools.product(range(S), repeat=M))
    index = {w: i for i, w in enumerate(windows)}
    A = np.zeros((len(windows), len(windows)))
    for w in windows:
        law = next_law(pis, lam, lags, lam_indep, p0, w)
        for b in range(S):
            A[index[w], index[w[1:] + (b,)]] += law[b]
    vals, vecs = np.linalg.eig(A.T)
    v = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
    return v / v.sum()


def window_index(x, S):
    M = x.shape[1]
    return (x * S ** np.arange(M - 1, -1, -1)).sum(axis=1)


STICKY = np.array([[0.95, 0.05], [0.1, 0.9]])
CASES = {
    # shared pi, lags 1..2, no order-0 component: coalescence through the column minima of pi alone
    "shared": dict(pi=STICKY, lam=np.array([0.7, 0.3]), lags=(1, 2), lam_indep=None, p0=None),
    # lag-wise pi, sparse lags, an order-0 component (hdMTD's setting)
    "lagwise_lam_indep": dict(pi=np.array([[[0.1, 0.1, 0.8], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]],
                                      [[0.05, 0.2, 0.75], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]]),
                         lam=np.array([0.35, 0.6]), lags=(1, 3), lam_indep=0.05, p0=np.array([0.2, 0.3, 0.5])),
    # every column minimum 0 and no order-0 component: only the set tracking makes the draws coalesce
    "no_floor": dict(pi=np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]),
                     lam=np.array([0.5, 0.5]), lags=(1, 3), lam_indep=None, p0=None),
}


def law_of(case):
    k = len(case["lam"])
    pis = case["pi"] if case["pi"].ndim == 3 else np.broadcast_to(case["pi"], (k,) + case["pi"].shape)
    lam_indep = 0.0 if case["lam_indep"] is None else case["lam_indep"]
    return pis, case["lam"], case["lags"], lam_indep, case["p0"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_windows_match_the_stationary_law(name):
    case = CASES[name]
    pis, lam, lags, lam_indep, p0 = law_of(case)
    S = pis.shape[-1]
    target = stationary_by_linalg(pis, lam, lags, lam_indep, p0)
    # the library's own solver agrees with the enumeration (both exact dense solves: float64 round-off)
    model = MTDModel(case["pi"], lam, lags=lags, lam_indep=case["lam_indep"], p0=case["p0"])
    np.testing.assert_allclose(model.stationary_distribution()[0], target, atol=1e-12)
    x = perfect_sample(case["pi"], lam, 6000, lags=lags, lam_indep=case["lam_indep"], p0=case["p0"], rng=1)
    assert x.shape == (6000, max(lags)) and x.dtype == np.int64
    counts = np.bincount(window_index(x, S), minlength=S ** max(lags))
    # every cell has expected count >= 5 at n = 6000 for these laws, so the chi-square approximation holds;
    # a level of 1e-3 keeps the false-alarm rate of the fixed seeds negligible
    assert (6000 * target).min() >= 5
    assert stats.chisquare(counts, 6000 * target).pvalue > 1e-3


def test_the_chi_square_rejects_a_short_forward_run():
    """The deliberately wrong sampler: 3 steps forward from the window (0, 0). The same test must fail."""
    case = CASES["shared"]
    pis, lam, lags, lam_indep, p0 = law_of(case)
    target = stationary_by_linalg(pis, lam, lags)
    model = MTDModel(case["pi"], lam, lags=lags)
    rng = np.random.default_rng(2)
    x = np.stack([model.sample(5, rng, prefix=[0, 0])[-2:] for _ in range(6000)])
    counts = np.bincount(window_index(x, 2), minlength=4)
    assert stats.chisquare(counts, 6000 * target).pvalue < 1e-6


def test_longer_draws_stay_stationary():
    """length > M: the chain runs forwards from the exact window; its last window is stationary too, and the
    first M tokens are the window that coupling from the past returns for the same seed."""
    case = CASES["lagwise_lam_indep"]
    pis, lam, lags, lam_indep, p0 = law_of(case)
    target = stationary_by_linalg(pis, lam, lags, lam_indep, p0)
    kw = dict(lags=lags, lam_indep=lam_indep, p0=p0)
    x = perfect_sample(case["pi"], lam, 6000, length=9, rng=3, **kw)
    assert x.shape == (6000, 9)
    np.testing.assert_array_equal(x[:, :3], perfect_sample(case["pi"], lam, 6000, rng=3, **kw))
    counts = np.bincount(window_index(x[:, -3:], 3), minlength=27)
    assert stats.chisquare(counts, 6000 * target).pvalue > 1e-3
    # length < M: the last tokens of the window
    np.testing.assert_array_equal(perfect_sample(case["pi"], lam, 50, length=1, rng=4, **kw),
                                  perfect_sample(case["pi"], lam, 50, rng=4, **kw)[:, -1:])


def test_seeded():
    case = CASES["no_floor"]
    kw = dict(lags=case["lags"])
    a = perfect_sample(case["pi"], case["lam"], 300, rng=7, **kw)
    np.testing.assert_array_equal(a, perfect_sample(case["pi"], case["lam"], 300, rng=np.random.default_rng(7), **kw))
    assert not np.array_equal(a, perfect_sample(case["pi"], case["lam"], 300, rng=8, **kw))
    assert perfect_sample(case["pi"], case["lam"], 0, rng=7, **kw).shape == (0, 3)


@pytest.mark.parametrize("pi", [np.array([[0.0, 1.0], [1.0, 0.0]]),  # periodic
                                np.eye(2)])  # reducible
def test_refuses_a_chain_that_never_coalesces(pi):
    with pytest.raises(ValueError, match="max_steps"):
        perfect_sample(pi, [1.0], 20, rng=0, max_steps=500)


def test_minorised_components_leave_the_law_unchanged():
    rng = np.random.default_rng(0)
    S, lags = 4, (1, 2, 5)
    pis = rng.dirichlet(np.full(S, 0.7), size=(3, S))
    lam, lam_indep, p0 = np.array([0.3, 0.25, 0.35]), 0.1, rng.dirichlet(np.ones(S))
    w0, q0, w, R = minorised_components(pis, lam, lags=lags, lam_indep=lam_indep, p0=p0)
    assert w0 + w.sum() == pytest.approx(1.0, abs=1e-14)
    assert (R >= 0).all()
    np.testing.assert_allclose(R.sum(axis=-1), 1.0, atol=1e-12)  # rows of a difference divided by its sum
    for window in itertools.product(range(S), repeat=5):
        mixed = w0 * q0 + sum(w[j] * R[j][window[-l]] for j, l in enumerate(lags))
        np.testing.assert_allclose(mixed, next_law(pis, lam, lags, lam_indep, p0, window), atol=1e-14)
    # the floor moved mass into the order-0 component
    assert w0 > lam_indep


def test_bad_input_names_the_argument():
    pi, lam = STICKY, [0.5, 0.5]
    with pytest.raises(ValueError, match="size"):
        perfect_sample(pi, lam, -1)
    with pytest.raises(ValueError, match="lam"):
        perfect_sample(pi, [0.5, 0.6], 3)
    with pytest.raises(ValueError, match="lags"):
        perfect_sample(pi, lam, 3, lags=(2, 1))
    with pytest.raises(ValueError, match="lags"):
        perfect_sample(pi, lam, 3, lags=(1,))
    with pytest.raises(ValueError, match="lam_indep and p0"):
        perfect_sample(pi, lam, 3, lam_indep=0.1)
    with pytest.raises(ValueError, match="pi"):
        perfect_sample(np.array([[0.5, 0.6], [0.5, 0.5]]), lam, 3)
    with pytest.raises(ValueError, match="pi"):
        perfect_sample(np.ones((3, 2, 2)) / 2, lam, 3)
    with pytest.raises(ValueError, match="max_steps"):
        perfect_sample(pi, lam, 3, max_steps=0)
    with pytest.raises(ValueError, match="length"):
        perfect_sample(pi, lam, 3, length=0)
    with pytest.raises(ValueError, match="rng"):
        perfect_sample(pi, lam, 3, rng="seed")


def test_docstring_examples_run():
    import doctest

    from mtdmath.fitting import _perfect

    result = doctest.testmod(_perfect, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
