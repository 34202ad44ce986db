"""The hdMTD and march tools as methods of the laws and estimators: exact stationary draws
(MTDModel.perfect_sample), oscillations, select_lags(method="cut" | "fs" | "fsc"), simultaneous intervals
(MTD.transition_intervals) and AIC/BIC with boundary="drop" (docs/math.md §10, eq-boundary-criteria)."""
from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from mtdmath.fitting import MTD, MarkovChain, MTDModel, select_lags
from mtdmath.fitting import mtd, laws, selection

PI3 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])


# -- exact stationary draws ---------------------------------------------------------------------------------
def stationary_by_eigenvector(law):
    """Stationary law of the M-windows (index sum_i w[i] S^(M-1-i)), from a transition matrix built here by
    enumeration of the windows and predict_proba's formula written out (not the library's solver)."""
    S, M = law.n_symbols, law.order
    pis = law.pi if law.pi.ndim == 3 else np.broadcast_to(law.pi, (len(law.lags),) + law.pi.shape)
    windows = list(itertools.product(range(S), repeat=M))
    A = np.zeros((len(windows), len(windows)))
    for i, w in enumerate(windows):
        nxt = (law.lam_indep * law.p0) if law.independent else np.zeros(S)
        for j, l in enumerate(law.lags):
            nxt = nxt + law.lam[j] * pis[j][w[-l]]
        for b in range(S):
            A[i, windows.index(w[1:] + (b,))] += nxt[b]
    vals, vecs = np.linalg.eig(A.T)
    v = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    return v / v.sum()


@pytest.mark.parametrize("law", [
    MTDModel(np.array([[0.95, 0.05], [0.1, 0.9]]), [0.7, 0.3]),
    MTDModel(np.array([[[0.1, 0.1, 0.8], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]],
                       [[0.05, 0.2, 0.75], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]]), [0.35, 0.6], lags=(1, 3),
             lam_indep=0.05, p0=[0.2, 0.3, 0.5]),
], ids=["shared", "lagwise_lam_indep"])
def test_perfect_sample_matches_the_stationary_law_by_chi_square(law):
    S, M = law.n_symbols, law.order
    p = stationary_by_eigenvector(law)
    # the library's own solver agrees with the eigenvector (exact linear algebra: 1e-12)
    np.testing.assert_allclose(law.stationary_distribution()[0], p, atol=1e-12)
    x = law.perfect_sample(20_000, rng=1)
    idx = (x * S ** np.arange(M - 1, -1, -1)).sum(axis=1)
    obs = np.bincount(idx, minlength=S ** M)
    # a seeded test at level 1e-3: fails by chance once in a thousand seeds, fails for a wrong law
    assert stats.chisquare(obs, p * x.shape[0]).pvalue > 1e-3
    # the check can fail: the same number of windows from a short forward run (started uniform) is rejected
    short = np.stack([law.sample(M + 1, rng=np.random.default_rng(i))[-M:] for i in range(20_000)])
    bad = np.bincount((short * S ** np.arange(M - 1, -1, -1)).sum(axis=1), minlength=S ** M)
    assert stats.chisquare(bad, p * short.shape[0]).pvalue < 1e-6


def test_perfect_sample_long_rows_are_stationary_stretches():
    law = MTDModel(np.array([[0.95, 0.05], [0.1, 0.9]]), [0.7, 0.3])
    x = law.perfect_sample(5000, rng=2, length=6)
    marg = law.stationary_distribution()[1]
    for t in (0, 5):  # every position has the stationary one-token law
        assert stats.chisquare(np.bincount(x[:, t], minlength=2), marg * 5000).pvalue > 1e-3
    with pytest.raises(ValueError, match="max_steps"):  # a periodic law never coalesces
        MTDModel(np.array([[0.0, 1.0], [1.0, 0.0]]), [1.0]).perfect_sample(3, rng=0, max_steps=64)


# -- oscillations -------------------------------------------------------------------------------------------
def test_oscillations_are_the_largest_change_over_pasts_by_brute_force():
    rng = np.random.default_rng(0)
    law = MTDModel(rng.dirichlet(np.ones(3), size=(2, 3)), [0.55, 0.35], lags=(1, 3), lam_indep=0.1,
                   p0=[0.2, 0.3, 0.5])
    got = law.oscillations()
    for j, l in enumerate(law.lags):
        best = 0.0
        for past in itertools.product(range(3), repeat=3):
            for c in range(3):
                other = list(past)
                other[-l] = c
                d = 0.5 * np.abs(law.predict_proba([list(past)]) - law.predict_proba([other])).sum()
                best = max(best, d)
        assert got[j] == pytest.approx(best, abs=1e-12)  # one max over exact float sums


# -- select_lags with hdMTD's methods ------------------------------------------------------------------------
def threshold(N, p, alpha=0.05, mu=1.0, xi=0.5, S=2):
    """CUT's threshold t(x) of docs/math.md eq-cut-threshold, written out for one context (scalars)."""
    c = mu / (2 * mu - math.exp(mu) + 1)
    return (math.sqrt(alpha * (1 + xi) / (2 * N)) * sum(math.sqrt((q + alpha / N) * c) for q in p)
            + alpha * S / (6 * N))


def test_cut_on_a_hand_made_chain_matches_the_formula():
    """hdMTD's description: lag j is kept when two laws that differ only at j are further apart (in total
    variation) than the sum of their thresholds. y[t] = 1 - y[t-2]: lag 2 decides everything, lag 1 nothing."""
    y = np.tile([0, 0, 1, 1], 100)
    best, table = select_lags(y, 2, method="cut", rng=0)
    assert best.lags_ == (2,)
    rows = {r["lags"][0]: r["cut"] for r in table}
    # by hand: the transitions t = 2..399 and the counts of each full context (lag 1, lag 2)
    ctx = {}
    for t in range(2, y.shape[0]):
        ctx.setdefault((y[t - 1], y[t - 2]), []).append(y[t])
    # lag 2, other lag 1 = a: contexts (a, 0) and (a, 1), next is a point mass on 1 - lag 2 (TV = 1)
    want2 = max(1.0 - threshold(len(ctx[(a, 0)]), [0.0, 1.0]) - threshold(len(ctx[(a, 1)]), [1.0, 0.0])
                for a in (0, 1))
    assert rows[2] == pytest.approx(want2, rel=1e-12)
    # lag 1, other lag 2 = b: both contexts give the same point mass (TV = 0)
    want1 = max(0.0 - threshold(len(ctx[(0, b)]), [1.0 - b, b]) - threshold(len(ctx[(1, b)]), [1.0 - b, b])
                for b in (0, 1))
    assert rows[1] == pytest.approx(want1, rel=1e-12) and rows[1] < 0 < rows[2]


def test_cut_drops_a_lag_whose_contexts_are_too_thin():
    """The same chain with only 12 tokens: the thresholds (~ sqrt(alpha / N(x))) exceed the distance 1."""
    y = np.tile([0, 0, 1, 1], 3)
    with pytest.raises(ValueError, match="cut_constants: CUT kept no lag"):
        select_lags(y, 2, method="cut", cut_constants={"alpha": 2.0})
    assert select_lags(np.tile([0, 0, 1, 1], 100), 2, method="cut", rng=0)[0].lags_ == (2,)


def test_fs_and_fsc_find_a_sparse_lag_set():
    y = MTDModel(PI3, [0.6, 0.4], lags=(1, 4)).sample(8000, rng=0)
    fs, table = select_lags(y, 8, method="fs", rng=0)
    assert fs.lags_ == (1, 4) and [r["step"] for r in table][:2] == ["fs step 1", "fs step 2"]
    assert select_lags(y, 8, method="fs", max_size=3, rng=0)[0].lags_ != (1, 4)  # three steps keep three lags
    # FS proposes three lags on the first half; CUT at alpha = 0.25 on the second half drops the spurious one
    fsc, table = select_lags(y, 8, method="fsc", max_size=3, cut_constants={"alpha": 0.25}, rng=0)
    assert len([r for r in table if r["step"] == "cut"]) == 3 and fsc.lags_ == (1, 4)
    # the chosen set is fitted on the same transitions as every other method (conditioned on max_lag tokens)
    assert fsc.n_obs_ == y.shape[0] - 8 == select_lags(y, 8, rng=0)[0].n_obs_


def test_select_lags_hdmtd_bad_input():
    y = np.tile([0, 0, 1, 1], 50)
    with pytest.raises(ValueError, match="cut_constants"):
        select_lags(y, 2, method="cut", cut_constants={"beta": 1})
    with pytest.raises(ValueError, match="cut_constants.*mu"):
        select_lags(y, 2, method="cut", cut_constants={"mu": 3.0})
    with pytest.raises(ValueError, match="weights"):
        select_lags(y, 2, method="fs", weights=np.ones(1))


# -- simultaneous intervals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,family", [("bonferroni", "row"), ("bonferroni", "all"), ("thompson", "row"),
                                           ("bailey", "row")])
def test_transition_intervals_cover_the_true_law(method, family):
    law = MTDModel(PI3, [0.6, 0.4])
    reps, hit_all, hit_rows, rows = 150, 0, 0, 0
    for r in range(reps):
        y = law.sample(1500, rng=100 + r)
        band = MTD(2, n_symbols=3, restarts=1, random_state=0).fit(y).transition_intervals(
            0.9, method=method, family=family)
        full = np.zeros((band["contexts"].shape[0], 2), dtype=np.int64)
        full[:, -1], full[:, -2] = band["contexts"][:, 0], band["contexts"][:, 1]
        true = law.predict_proba(full)
        inside = (band["lower"] <= true) & (true <= band["upper"])
        hit_all += inside.all()
        hit_rows += inside.all(axis=1).sum()
        rows += inside.shape[0]
    if family == "all":
        # every cell of every context at once: >= 0.9 minus three binomial standard errors
        assert hit_all / reps >= 0.9 - 3 * math.sqrt(0.09 / reps)
    else:
        assert hit_rows / rows >= 0.9 - 3 * math.sqrt(0.09 / rows)


def test_per_cell_intervals_fail_the_same_coverage_check():
    """The check can fail: unadjusted 90 % Wald intervals per cell do not hold together over 9 contexts."""
    law = MTDModel(PI3, [0.6, 0.4])
    hits = 0
    for r in range(150):
        band = MTD(2, n_symbols=3, restarts=1, random_state=0).fit(law.sample(1500, rng=100 + r))
        b = band.transition_intervals(0.9)
        n = b["n"][:, None]
        c = band.transition_counts_
        contexts, row = np.unique(c.ctx, axis=0, return_inverse=True)
        counts = np.zeros((contexts.shape[0], 3))
        np.add.at(counts, (row.reshape(-1), c.nxt), c.w)
        p = counts / n
        half = 1.645 * np.sqrt(p * (1 - p) / n)
        full = np.zeros((contexts.shape[0], 2), dtype=np.int64)
        full[:, -1], full[:, -2] = contexts[:, 0], contexts[:, 1]
        true = law.predict_proba(full)
        hits += np.all((p - half <= true) & (true <= p + half))
    assert hits / 150 < 0.9 - 3 * math.sqrt(0.09 / 150)


def test_transition_intervals_bad_input():
    est = MTD(1, restarts=1).fit(np.tile([0, 1, 1], 20))
    with pytest.raises(ValueError, match="method"):
        est.transition_intervals(method="wald")
    with pytest.raises(ValueError, match="family"):
        est.transition_intervals(method="thompson", family="all")
    with pytest.raises(ValueError, match="level"):
        est.transition_intervals(1.5)
    with pytest.raises(ValueError, match="sample_weight"):
        MTD(1, restarts=1).fit(np.tile([0, 1, 1], 20), sample_weight=[0.5]).transition_intervals()


# -- AIC/BIC on the boundary ---------------------------------------------------------------------------------
def test_boundary_drop_does_not_count_parameters_estimated_at_zero():
    pi = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.3, 0.0, 0.7]])  # three transitions never happen
    f = MTD(2, random_state=0).fit(MTDModel(pi, [0.7, 0.3]).sample(3000, rng=1))
    # EM shrinks these entries geometrically (to 1e-10 and below here, under ZERO_PARAM_TOL = 1e-8) and keeps
    # the others far above: the zeros of the fit are exactly those of the true law; each row keeps S - 1 = 2
    assert np.array_equal(f.pi_ <= laws.ZERO_PARAM_TOL, pi == 0) and f.model_.n_params_at_zero() == 3
    assert f.aic(boundary="drop") == pytest.approx(-2 * f.loglik_ + 2 * (f.n_params - 3), rel=1e-15)
    assert f.bic(boundary="drop") == pytest.approx(-2 * f.loglik_ + math.log(f.n_obs_) * (f.n_params - 3),
                                                   rel=1e-15)
    assert f.aic() == pytest.approx(-2 * f.loglik_ + 2 * f.n_params, rel=1e-15)
    # an interior fit: the two conventions agree (the count is not a constant)
    g = MTD(2, random_state=0).fit(MTDModel(PI3, [0.7, 0.3]).sample(3000, rng=1))
    assert g.model_.n_params_at_zero() == 0 and g.aic(boundary="drop") == g.aic()
    # a saturated chain on S = 3: rows 0 and 2 always go to 1 (2 zeros each), row 1 goes to 0 or 2 (1 zero)
    c = MarkovChain(1).fit([0, 1, 0, 1, 2, 1, 0, 1])
    assert c.model_.n_params_at_zero() == 5
    with pytest.raises(ValueError, match="boundary"):
        f.aic(boundary="zero")


def test_docstring_examples_run():
    for mod in (laws, mtd, selection):
        assert doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
