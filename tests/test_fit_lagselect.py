"""hdMTD's lag selection (CUT, FS, FSC) and oscillations (docs/math.md §10.2-§10.4): every statistic against a
brute-force computation by loops over the transitions, and CUT on hand-made chains from hdMTD's description."""
from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import numpy as np
import pytest

from mtdmath.fitting import MTDModel
from mtdmath.fitting._lagselect import (cut, cut_statistics, cut_statistics_from_counts, estimate_oscillations,
                                        forward_stepwise, fs_nu_from_counts, fsc, lag_design,
                                        oscillation_estimates_from_counts, oscillations)

# hdMTD's documented example law (its testChains): lag-wise matrices, lam_indep = 0.05; here at lags 1 and 4
DOC_PJ = np.array([[[0.1, 0.1, 0.8], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]],
                   [[0.05, 0.2, 0.75], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]]])


def doc_chain(n, seed, lam=(0.35, 0.6)):
    model = MTDModel(DOC_PJ, list(lam), lags=(1, 4), lam_indep=1 - sum(lam), p0=np.full(3, 1 / 3))
    return model.sample(n, rng=seed)


# -- brute force: counts by loops over the transitions ------------------------------------------------------
def transitions(y, d):
    """(next, {lag: symbol}) for t = d..T-1."""
    return [(int(y[t]), {l: int(y[t - l]) for l in range(1, d + 1)}) for t in range(d, len(y))]


def cond(trans, fixed):
    """Counter of the next symbol over the transitions whose lags hold the symbols of ``fixed``."""
    return Counter(a for a, past in trans if all(past[l] == s for l, s in fixed.items()))


def tv(c1, c2, S):
    n1, n2 = sum(c1.values()), sum(c2.values())
    return 0.5 * sum(abs(c1[a] / n1 - c2[a] / n2) for a in range(S))


def brute_cut(y, S, d, L, alpha, mu, xi):
    trans = transitions(y, d)
    c = mu / (2 * mu - np.exp(mu) + 1)

    def thr(cnt):
        n = sum(cnt.values())
        return (np.sqrt(alpha * (1 + xi) / (2 * n)) * sum(np.sqrt((cnt[a] / n + alpha / n) * c) for a in range(S))
                + alpha * S / (6 * n))

    out = []
    for j in L:
        Z = [l for l in L if l != j]
        # next-symbol counters by (context of the other lags, symbol at j): only contexts the data show appear,
        # the others having infinite thresholds
        groups = defaultdict(lambda: defaultdict(Counter))
        for a, past in trans:
            groups[tuple(past[l] for l in Z)][past[j]][a] += 1
        best = -np.inf
        for by_b in groups.values():
            for b, cc in itertools.permutations(by_b, 2):
                best = max(best, tv(by_b[b], by_b[cc], S) - thr(by_b[b]) - thr(by_b[cc]))
        out.append(best)
    return np.array(out)


def brute_oscillation_estimate(y, S, L):
    d = max(L)
    trans = transitions(y, d)
    n = len(trans)
    out = []
    for j in L:
        Z = [l for l in L if l != j]
        best = 0.0
        for b, cc in itertools.combinations(range(S), 2):
            total = 0.0
            for xz in itertools.product(range(S), repeat=len(Z)):
                nz = sum(cond(trans, dict(zip(Z, xz))).values())
                cb = cond(trans, {**dict(zip(Z, xz)), j: b})
                ccc = cond(trans, {**dict(zip(Z, xz)), j: cc})
                if sum(cb.values()) and sum(ccc.values()):
                    total += nz * tv(cb, ccc, S)
            best = max(best, total / n)
        out.append(best)
    return np.array(out)


def brute_nu(ys, S, d, chosen, j):
    """nu of lag j given the chosen lags, on the transitions of the sequences ``ys`` together."""
    trans = [tr for y in ys for tr in transitions(y, d)]
    n = len(trans)
    nu = 0.0
    for xc in itertools.product(range(S), repeat=len(chosen)):
        pc = sum(cond(trans, dict(zip(chosen, xc))).values()) / n
        if pc == 0:
            continue
        for b, cc in itertools.combinations(range(S), 2):
            cb = cond(trans, {**dict(zip(chosen, xc)), j: b})
            ccc = cond(trans, {**dict(zip(chosen, xc)), j: cc})
            nb, nc = sum(cb.values()), sum(ccc.values())
            if nb and nc:
                nu += (nb / n) * (nc / n) * tv(cb, ccc, S) / pc
    return nu


def small_chain(seed, n=1500):
    rng = np.random.default_rng(seed)
    return MTDModel(rng.dirichlet(np.ones(3), size=3), [0.6, 0.4], lags=(1, 3)).sample(n, rng=seed)


# -- the statistics against brute force ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_cut_statistics_match_brute_force(seed):
    y = small_chain(seed, n=800)
    L, stat = cut_statistics(y, 3, 4, lags=(1, 3, 4), alpha=0.3, mu=0.8, xi=0.4)
    assert L == (1, 3, 4)
    # the same float64 sums in another order: round-off only
    np.testing.assert_allclose(stat, brute_cut(y, 3, 4, (1, 3, 4), 0.3, 0.8, 0.4), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d,T", [(6, 206), (41, 600)])
def test_cut_statistics_on_long_windows_match_brute_force(d, T):
    """More contexts than transitions (S^(d-1) > N): only the observed contexts are tabulated, by an int64 key
    (d = 6) or, when S^(d-1) overflows it, by the rows themselves (d = 41). Mostly zeros with rare other
    symbols, so that long contexts recur with different symbols at one lag (finite statistics)."""
    rng = np.random.default_rng(d)
    y = np.where(rng.random(T) < 0.03, rng.integers(1, 3, T), 0) if d > 6 else small_chain(5, n=T)
    L, stat = cut_statistics(y, 3, d, alpha=0.1)
    assert np.isfinite(stat).sum() >= len(L) // 2  # the comparison is not one of infinities
    np.testing.assert_allclose(stat, brute_cut(y, 3, d, L, 0.1, 1.0, 0.5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_oscillation_estimates_match_brute_force(seed):
    y = small_chain(seed)
    np.testing.assert_allclose(estimate_oscillations(y, 3, [3, 1]), brute_oscillation_estimate(y, 3, (1, 3)),
                               rtol=1e-12, atol=1e-12)


def test_forward_stepwise_nu_matches_brute_force():
    y = small_chain(2, n=1200)
    lags, nu = forward_stepwise(y, 3, 4, 2)
    first = {j: brute_nu([y], 3, 4, [], j) for j in range(1, 5)}
    assert lags[0] == max(first, key=first.get)
    assert nu[0] == pytest.approx(first[lags[0]], rel=1e-12)
    second = {j: brute_nu([y], 3, 4, [lags[0]], j) for j in range(1, 5) if j != lags[0]}
    assert lags[1] == max(second, key=second.get)
    assert nu[1] == pytest.approx(second[lags[1]], rel=1e-12)


def test_lag_design_rows():
    X = lag_design([np.array([0, 1, 2, 0, 1]), np.array([2, 2])], 3, 2)
    # the second sequence is too short to give a transition; the first gives t = 2, 3, 4
    np.testing.assert_array_equal(X, [[2, 1, 0], [0, 2, 1], [1, 0, 2]])


def count_table(y, S, d, lags):
    """N[x_lags..., a] from the design rows by np.add.at (not the module's bincount)."""
    X = lag_design(y, S, d)
    N = np.zeros((S,) * (len(lags) + 1))
    np.add.at(N, tuple(X[:, l] for l in lags) + (X[:, 0],), 1)
    return N


def test_count_level_statistics_merge_over_shards():
    """The statistics are functions of counts, and counts of shards add: two shards' tables summed give the
    statistics of the two sequences together."""
    a, b = small_chain(3, n=700), small_chain(4, n=900)
    L = (1, 2, 3)
    N = count_table(a, 3, 3, L) + count_table(b, 3, 3, L)
    np.testing.assert_allclose(cut_statistics_from_counts(N, alpha=0.2), cut_statistics([a, b], 3, 3, alpha=0.2)[1],
                               rtol=1e-12)
    np.testing.assert_allclose(oscillation_estimates_from_counts(N), estimate_oscillations([a, b], 3, L),
                               rtol=1e-12)
    # nu of lag 3 given C = (1,): axes (x_1, b_3, a)
    nu = fs_nu_from_counts(count_table(a, 3, 3, (1, 3)) + count_table(b, 3, 3, (1, 3)))
    assert nu == pytest.approx(brute_nu([a, b], 3, 3, [1], 3), rel=1e-12)
    with pytest.raises(ValueError, match="N"):
        cut_statistics_from_counts(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="N"):
        fs_nu_from_counts(np.ones((3, 2)))


# -- oscillations of a law against brute force over every past ---------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oscillations_are_the_largest_change_of_one_lag(seed):
    rng = np.random.default_rng(seed)
    S, lags = 3, (1, 2, 4)
    pis = rng.dirichlet(np.full(S, 0.5), size=(3, S))
    lam, lam_indep, p0 = np.array([0.5, 0.2, 0.2]), 0.1, rng.dirichlet(np.ones(S))

    def law(window):  # window[-l] is the symbol at lag l
        return lam_indep * p0 + sum(lam[j] * pis[j][window[-l]] for j, l in enumerate(lags))

    brute = np.zeros(3)
    for w in itertools.product(range(S), repeat=4):
        for j, l in enumerate(lags):
            for c in range(S):
                w2 = list(w)
                w2[-l] = c
                brute[j] = max(brute[j], 0.5 * np.abs(law(w) - law(tuple(w2))).sum())
    np.testing.assert_allclose(oscillations(pis, lam), brute, rtol=1e-12)
    # a shared matrix is broadcast over the lags
    np.testing.assert_allclose(oscillations(pis[0], lam), lam * oscillations(pis[0], [1.0])[0], rtol=1e-15)


def test_oscillation_estimate_is_consistent():
    """On a long chain the estimate on a lag set containing the true lags approaches the law's oscillations, and
    a lag the law does not use gets about 0."""
    y = doc_chain(200_000, 5)
    est = estimate_oscillations(y, 3, [1, 2, 4])
    true = oscillations(DOC_PJ, [0.35, 0.6])
    # each conditional frequency rests on >= ~2000 transitions (27 contexts of (x_Z, b)), standard error <~ 0.01,
    # and the maximum over 3 pairs adds a small upward bias: 0.02 is several standard errors
    assert abs(est[0] - true[0]) < 0.02 and abs(est[2] - true[1]) < 0.02
    assert est[1] < 0.02


# -- CUT on hand-made chains (hdMTD's description: a law on lags {1, 4}, a weak lag below the threshold) -------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cut_keeps_exactly_the_lags_the_law_uses(seed):
    y = doc_chain(20_000, seed)
    assert cut(y, 3, 6, lags=(1, 4, 6), alpha=1.0) == (1, 4)
    # on a full window of 6 lags hdMTD's default alpha = 0.05 is too small (CUT is meant after FS): it keeps
    # lags the law does not use, which this check detects
    assert set(cut(y, 3, 6, alpha=0.05)) > {1, 4}


@pytest.mark.parametrize("seed", [0, 1])
def test_cut_drops_a_weak_lag_that_more_data_reveal(seed):
    lam = (0.85, 0.1)  # oscillation of lag 4: 0.1 * 0.45 = 0.045
    L, stat = cut_statistics(doc_chain(20_000, seed, lam), 3, 6, lags=(1, 4, 6), alpha=1.0)
    assert stat[1] < 0 < stat[0]  # the weak lag's largest distance is below its threshold
    assert cut(doc_chain(20_000, seed, lam), 3, 6, lags=(1, 4, 6), alpha=1.0) == (1,)
    assert cut(doc_chain(300_000, seed, lam), 3, 6, lags=(1, 4, 6), alpha=1.0) == (1, 4)


def test_forward_stepwise_and_fsc_find_the_lags():
    y = doc_chain(40_000, 3)
    lags, nu = forward_stepwise(y, 3, 6, 3)
    assert lags[:2] == (4, 1)  # the stronger lag first (oscillation 0.33 against 0.21)
    assert nu[0] >= nu[1] >= nu[2]
    assert fsc(y, 3, 6, 3, alpha=1.0) == (1, 4)
    # the elbow rule keeps the lags chosen before the step of the smallest nu
    kept, nu4 = forward_stepwise(y, 3, 6, 4, elbow=True)
    full, _ = forward_stepwise(y, 3, 6, 4)
    stop = max(int(np.flatnonzero(nu4 == nu4.min())[-1]), 1)
    assert kept == full[:stop]


def test_bad_input_names_the_argument():
    y = small_chain(0, n=200)
    with pytest.raises(ValueError, match="alpha"):
        cut(y, 3, 4, alpha=0.0)
    with pytest.raises(ValueError, match="mu"):
        cut(y, 3, 4, mu=2.0)
    with pytest.raises(ValueError, match="lags"):
        cut(y, 3, 4, lags=(1, 5))
    with pytest.raises(ValueError, match="lags"):
        cut(y, 3, 4, lags=(1, 1))
    with pytest.raises(ValueError, match="max_lag"):
        cut(y, 3, 0)
    with pytest.raises(ValueError, match="max_lag"):
        cut(y[:3], 3, 4)
    with pytest.raises(ValueError, match="n_lags"):
        forward_stepwise(y, 3, 4, 5)
    with pytest.raises(ValueError, match=r"sequences\[0\]"):
        cut(y, 2, 4)  # tokens outside 0..n_symbols-1
    with pytest.raises(ValueError, match="sequences"):
        cut("abc", 3, 2)
    with pytest.raises(ValueError, match="n_symbols"):
        estimate_oscillations(y, 1, [1])
    with pytest.raises(ValueError, match="pi"):
        oscillations(np.ones((2, 2)), [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="lam"):
        oscillations(np.eye(2), [-0.5])


def test_docstring_examples_run():
    import doctest

    from mtdmath.fitting import _lagselect

    result = doctest.testmod(_lagselect, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
