"""Per-sequence lam of the paper's model: ``ICLFit.posterior_lam`` (exact posterior mean and credible intervals,
Monte Carlo fallback) against brute force over every lag assignment, and ``MTD.per_sequence_lam`` (bayes, md,
mle) against the core functions applied by hand and against scipy.optimize (docs/math.md §4, §7.4.3)."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import gammaln

import mtdmath
from mtdmath.bayes import levels_bytes
from mtdmath.fitting import ICLFit, MTD, MTDModel, fit_icl

PI = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.1, 0.6]])


def icl_at(pi, alpha) -> ICLFit:
    """An ICLFit holding a chosen (pi, alpha), as fit_icl would return it."""
    z = np.zeros(0)
    return ICLFit(pi=np.asarray(pi, float), alpha=np.asarray(alpha, float), objective=0.0, history=z, n_iter=0,
                  converged=True, se_pi=np.zeros_like(pi), se_alpha=np.zeros(len(alpha)), n_sequences=0)


def brute_posterior(C: np.ndarray, alpha: np.ndarray):
    """The posterior of lam by enumerating all m**n lag assignments z: weight of z is Π_i C[i, z_i] times the
    Dirichlet integral B(alpha + k(z)) / B(alpha) (k(z): the lag counts), and given z, lam ~ Dirichlet(alpha + k).
    Returns the count vectors, their normalised weights and the posterior mean."""
    n, m = C.shape
    logB = lambda a: gammaln(a).sum() - gammaln(a.sum())  # noqa: E731
    by_k: dict = {}
    for z in itertools.product(range(m), repeat=n):
        k = np.bincount(np.asarray(z, dtype=int), minlength=m)
        lw = np.log(C[np.arange(n), list(z)]).sum() + logB(alpha + k) - logB(alpha)
        by_k[tuple(k)] = np.logaddexp(by_k.get(tuple(k), -np.inf), lw)
    ks = np.array(list(by_k))
    lw = np.array(list(by_k.values()))
    w = np.exp(lw - lw.max())
    w /= w.sum()
    mean = (w[:, None] * (alpha + ks)).sum(0) / (alpha.sum() + n)
    return ks, w, mean


def brute_cdf(ks, w, alpha, n, g, x):
    a0 = alpha.sum()
    return float((w * stats.beta.cdf(x, alpha[g] + ks[:, g], a0 + n - alpha[g] - ks[:, g])).sum())


def brute_quantile(ks, w, alpha, n, g, p):
    return optimize.brentq(lambda x: brute_cdf(ks, w, alpha, n, g, x) - p, 0.0, 1.0, xtol=1e-14)


def short_sequences(m, seed=0):
    """Sequences of several lengths (one of exactly m tokens: no transition) drawn from the paper's model."""
    rng = np.random.default_rng(seed)
    out = []
    for T in (m, m + 3, m + 6, m + 7, m + 7):
        lam = rng.dirichlet(np.ones(m))
        out.append(MTDModel(PI, lam).sample(T, rng=rng))
    return out


@pytest.mark.parametrize("m, alpha", [(2, [0.7, 1.6]), (3, [0.5, 1.0, 2.0]), (4, [1.2, 0.4, 0.9, 1.5])])
def test_posterior_lam_is_the_brute_force_posterior(m, alpha):
    alpha = np.asarray(alpha)
    seqs = short_sequences(m, seed=m)
    if m == 4:  # 4**7 assignments per sequence: keep them short
        seqs = [s[: m + 5] for s in seqs]
    post = icl_at(PI, alpha).posterior_lam(seqs, level=0.9)
    assert post.method.tolist() == ["exact"] * len(seqs)
    np.testing.assert_array_equal(post.stderr, 0.0)
    for b, s in enumerate(seqs):
        C = mtdmath.lag_factors(s, PI, m)  # the core's lag factors, an independent route to C
        n = C.shape[0]
        assert post.n_transitions[b] == n
        if n == 0:  # no transition: the prior
            np.testing.assert_allclose(post.mean[b], alpha / alpha.sum(), rtol=1e-12)
            continue
        ks, w, mean = brute_posterior(C, alpha)
        # exact float64 routes (a recursion over counts vs an enumeration of assignments): 1e-12 relative
        np.testing.assert_allclose(post.mean[b], mean, rtol=1e-12)
        for g in range(m):
            # bisection to 2**-60 against brentq to 1e-14: both far below 1e-10
            assert post.lower[b, g] == pytest.approx(brute_quantile(ks, w, alpha, n, g, 0.05), abs=1e-10)
            assert post.upper[b, g] == pytest.approx(brute_quantile(ks, w, alpha, n, g, 0.95), abs=1e-10)
    # the library's other entry point to the same recursion
    long = [s for s in seqs if s.shape[0] == seqs[-1].shape[0]]
    np.testing.assert_allclose(post.mean[-len(long):],
                               mtdmath.posterior_mean(mtdmath.lag_factors(np.stack(long), PI, m), alpha), rtol=1e-12)


def test_the_brute_force_check_can_fail():
    """A deliberately wrong posterior (the prior's alpha reversed) is caught by the same comparison."""
    alpha = np.array([0.5, 1.0, 2.0])
    s = short_sequences(3, seed=3)[3]
    post = icl_at(PI, alpha[::-1]).posterior_lam([s])
    _, _, mean = brute_posterior(mtdmath.lag_factors(s, PI, 3), alpha)
    assert not np.allclose(post.mean[0], mean, rtol=1e-6)


def test_credible_intervals_cover_exact_posterior_draws():
    """Second route for the intervals: draw lam from the exact posterior (an assignment's counts k by their
    weight, then Dirichlet(alpha + k)); the fraction below each bound is its tail probability."""
    alpha = np.array([0.8, 1.0, 1.3])
    s = short_sequences(3, seed=11)[4]
    C = mtdmath.lag_factors(s, PI, 3)
    ks, w, _ = brute_posterior(C, alpha)
    rng = np.random.default_rng(0)
    K = 200_000
    pick = rng.choice(len(w), size=K, p=w)
    draws = np.stack([rng.dirichlet(alpha + ks[i]) for i in np.unique(pick) for _ in range(int((pick == i).sum()))])
    post = icl_at(PI, alpha).posterior_lam([s], level=0.8)
    se = np.sqrt(0.1 * 0.9 / K)  # binomial standard error of a tail fraction of 0.1
    for g in range(3):
        assert (draws[:, g] < post.lower[0, g]).mean() == pytest.approx(0.1, abs=5 * se)
        assert (draws[:, g] > post.upper[0, g]).mean() == pytest.approx(0.1, abs=5 * se)


def test_monte_carlo_fallback_when_the_budget_says_so():
    alpha = np.array([0.9, 1.1, 1.4])
    seqs = [s for s in short_sequences(3, seed=5) if s.shape[0] == 10]  # n = 7 transitions each
    fit = icl_at(PI, alpha)
    budget = levels_bytes(1, 7, 3) - 1  # one sequence's exact recursion no longer fits
    mc = fit.posterior_lam(seqs, level=0.9, max_bytes=budget, samples=100_000, rng=0)
    exact = fit.posterior_lam(seqs, level=0.9)
    assert mc.method.tolist() == ["mc"] * len(seqs) and exact.method.tolist() == ["exact"] * len(seqs)
    assert np.all(mc.stderr > 0)
    # importance sampling's delta-method standard error: 5 of them
    assert np.all(np.abs(mc.mean - exact.mean) <= 5 * mc.stderr)
    for b, s in enumerate(seqs):
        ks, w, _ = brute_posterior(mtdmath.lag_factors(s, PI, 3), alpha)
        for g in range(3):
            # 20 000 prior draws on 7 transitions keep thousands of effective draws: the exact CDF at a
            # weighted-quantile estimate is within about sqrt(0.05 * 0.95 / 2000) = 0.005 of its level
            assert brute_cdf(ks, w, alpha, 7, g, mc.lower[b, g]) == pytest.approx(0.05, abs=0.02)
            assert brute_cdf(ks, w, alpha, 7, g, mc.upper[b, g]) == pytest.approx(0.95, abs=0.02)


def test_posterior_lam_on_a_fitted_model():
    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(3, rng=rng)
    Y, lam = mtdmath.sample_icl(pi, np.array([1.0, 1.0]), 50, 40, rng=1)
    f = fit_icl(Y, 2)
    post = f.posterior_lam(Y)
    assert np.all((post.lower <= post.mean) & (post.mean <= post.upper))
    np.testing.assert_allclose(post.mean.sum(axis=1), 1.0, rtol=1e-12)
    # the posterior tracks each sequence's own lam: the mean's error is below the prior mean's
    assert np.abs(post.mean - lam).mean() < np.abs(0.5 - lam).mean()


def test_posterior_lam_bad_input():
    fit = icl_at(PI, [1.0, 1.0])
    with pytest.raises(ValueError, match="level"):
        fit.posterior_lam([[0, 1, 2]], level=1.0)
    with pytest.raises(ValueError, match="max_bytes"):
        fit.posterior_lam([[0, 1, 2]], max_bytes=0)
    with pytest.raises(ValueError, match=r"sequences\[0\]"):
        fit.posterior_lam([[0]])
    with pytest.raises(ValueError, match="outside"):
        fit.posterior_lam([[0, 1, 3]])
    zero = icl_at(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), [1.0, 1.0])
    with pytest.raises(ValueError, match="impossible"):
        zero.posterior_lam([[0, 1, 2]])


# ------------------------------------------------------------------------------------------ MTD.per_sequence_lam
@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(4)
    Y, _ = mtdmath.sample_icl(PI, np.array([1.0, 2.0, 1.0]), 40, 30, rng=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        est = MTD(3, n_symbols=3, random_state=0, restarts=2).fit(Y)
    return est, Y


def test_per_sequence_md_is_the_core_one_step_md(fitted):
    est, Y = fitted
    alpha = np.array([0.5, 1.5, 1.0])
    got = est.per_sequence_lam(Y, "md", prior=alpha)
    by_hand = np.stack([mtdmath.one_step_md(mtdmath.lag_factors(y, est.pi_, 3), alpha) for y in Y])
    np.testing.assert_allclose(got, by_hand, rtol=1e-12)  # the same float64 arithmetic
    got_eta = est.per_sequence_lam(list(Y[:4]), "md", prior=alpha, eta=0.3)
    np.testing.assert_allclose(got_eta, [mtdmath.one_step_md(mtdmath.lag_factors(y, est.pi_, 3), alpha, eta=0.3)
                                         for y in Y[:4]], rtol=1e-12)


def test_per_sequence_bayes_is_the_brute_force_posterior_mean(fitted):
    est, Y = fitted
    alpha = np.array([0.5, 1.5, 1.0])
    short = [y[:10] for y in Y[:3]]
    got = est.per_sequence_lam(short, "bayes", prior=alpha)
    for b, y in enumerate(short):
        np.testing.assert_allclose(got[b], brute_posterior(mtdmath.lag_factors(y, est.pi_, 3), alpha)[2],
                                   rtol=1e-12)
    # a fitted prior: the alpha of a fit_icl result
    prior = icl_at(PI, alpha * 2)
    np.testing.assert_allclose(est.per_sequence_lam(short, "bayes", prior=prior),
                               est.per_sequence_lam(short, "bayes", prior=alpha * 2), rtol=1e-12)


def test_per_sequence_mle_maximises_each_likelihood(fitted):
    est, Y = fitted
    got = est.per_sequence_lam(Y[:6], "mle")
    for b, y in enumerate(Y[:6]):
        C = mtdmath.lag_factors(y, est.pi_, 3)

        def nll(lam, C=C):
            return -np.log(C @ lam).sum()

        res = optimize.minimize(nll, np.ones(3) / 3, method="SLSQP", bounds=[(0.0, 1.0)] * 3,
                                constraints=[{"type": "eq", "fun": lambda lam: lam.sum() - 1.0}],
                                options={"ftol": 1e-14, "maxiter": 1000})
        # ours is a maximiser certified by its KKT gap (1e-12 n): never worse than SLSQP's beyond rounding
        assert -nll(got[b]) >= -res.fun - 1e-9 * abs(res.fun)
        # the likelihood is strictly concave here (C has full column rank): the maximisers agree to SLSQP's
        # accuracy on lam, about sqrt(ftol) = 1e-7 times the curvature's conditioning
        np.testing.assert_allclose(got[b], res.x, atol=1e-4)


def test_per_sequence_sparse_lags_and_burn_in():
    law = MTDModel(PI, [0.6, 0.4], lags=(1, 3))
    Y = [law.sample(30, rng=i) for i in range(3)]
    est = MTD(lags=(1, 3), n_symbols=3, burn_in=5, random_state=0, restarts=2).fit(Y)
    got = est.per_sequence_lam(Y, "mle")
    for b, y in enumerate(Y):
        C = np.array([[est.pi_[y[t - 1], y[t]], est.pi_[y[t - 3], y[t]]] for t in range(5, len(y))])  # by hand
        np.testing.assert_allclose(got[b], mtdmath.mle(C), rtol=1e-12)


def test_per_sequence_lam_bad_input(fitted):
    est, Y = fitted
    with pytest.raises(ValueError, match="method"):
        est.per_sequence_lam(Y, "map")
    with pytest.raises(ValueError, match="prior"):
        est.per_sequence_lam(Y, "bayes")
    with pytest.raises(ValueError, match="prior"):
        est.per_sequence_lam(Y, "md", prior=[1.0, 1.0])
    with pytest.raises(ValueError, match="prior"):
        est.per_sequence_lam(Y, "mle", prior=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="eta"):
        est.per_sequence_lam(Y, "bayes", prior=[1.0, 1.0, 1.0], eta=0.2)
    with pytest.raises(ValueError, match=r"X\[0\]"):
        est.per_sequence_lam([Y[0][:3]], "mle")
    lagwise = MTD(2, variant="lagwise", random_state=0, restarts=1).fit(Y)
    with pytest.raises(ValueError, match="shared"):
        lagwise.per_sequence_lam(Y, "mle")


@pytest.mark.parametrize("m", [2, 3, 4])
def test_count_marginals_are_the_brute_force_lag_count_laws(m):
    """PolyaLevels.count_marginals: P(k_g = j | y) at every level, against the enumeration of assignments."""
    from mtdmath.bayes import PolyaLevels

    rng = np.random.default_rng(m)
    alpha = rng.uniform(0.3, 2.0, m)
    C = rng.uniform(0.05, 1.0, (2, 6, m))
    levels = PolyaLevels(C, alpha, 2**30)
    for L in levels:
        got = levels.count_marginals()
        assert got.shape == (2, m, L + 1)
        for b in range(2):
            ks, w, _ = brute_posterior(C[b, :L], alpha) if L else (np.zeros((1, m), int), np.ones(1), None)
            want = np.zeros((m, L + 1))
            for g in range(m):
                np.add.at(want[g], ks[:, g], w)
            np.testing.assert_allclose(got[b], want, rtol=1e-12, atol=1e-15)  # exact float64 routes


def test_monte_carlo_bounds_do_not_depend_on_the_block_size(monkeypatch):
    """The fallback's likelihood products run in blocks of draws; a block of 5 draws gives the bounds of one block
    (the same draws, each draw's product computed alike)."""
    from mtdmath.fitting import _posterior

    alpha = np.array([0.9, 1.1, 1.4])
    seqs = [s for s in short_sequences(3, seed=5) if s.shape[0] == 10]
    fit = icl_at(PI, alpha)
    budget = levels_bytes(1, 7, 3) - 1
    one = fit.posterior_lam(seqs, max_bytes=budget, samples=3000, rng=0)
    monkeypatch.setattr(_posterior, "MC_WORK_FLOATS", 35)  # 5 draws of 7 transitions at a time
    blocks = fit.posterior_lam(seqs, max_bytes=budget, samples=3000, rng=0)
    np.testing.assert_allclose(blocks.lower, one.lower, rtol=1e-12)
    np.testing.assert_allclose(blocks.upper, one.upper, rtol=1e-12)
    np.testing.assert_allclose(blocks.mean, one.mean, rtol=1e-12)
