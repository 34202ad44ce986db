"""Simultaneous intervals for multinomial rows (docs/math.md §10.5): simultaneous coverage by simulation
(>= nominal within a binomial bound), each formula against an independent route, and an unadjusted interval
that the same coverage check rejects."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from mtdmath.fitting._simultaneous import bailey_intervals, bonferroni_intervals, thompson_intervals

REPS = 4000
P = np.array([0.5, 0.3, 0.15, 0.05])


def simultaneous_coverage(interval, p, n, reps=REPS, seed=0, **kw):
    counts = np.random.default_rng(seed).multinomial(n, p, size=reps)
    lo, hi = interval(counts, 0.05, **kw)
    return float(np.mean(np.all((lo <= p) & (p <= hi), axis=-1)))


def lower_bound(nominal, reps=REPS):
    # three binomial standard errors below the nominal level: a method at its level passes with
    # probability about 0.999, and the seeds are fixed
    return nominal - 3 * np.sqrt(nominal * (1 - nominal) / reps)


@pytest.mark.parametrize("method,kw,n", [
    (bonferroni_intervals, {}, 40),  # exact per cell: guaranteed for every n
    (bonferroni_intervals, {}, 300),
    (bonferroni_intervals, {"method": "wilson"}, 300),
    (thompson_intervals, {}, 300),
    (bailey_intervals, {}, 100),
    (bailey_intervals, {}, 300),
])
def test_simultaneous_coverage_is_at_least_nominal(method, kw, n):
    assert simultaneous_coverage(method, P, n, **kw) >= lower_bound(0.95)


def test_unadjusted_intervals_fail_the_same_check():
    """Per-cell 95 % Wald intervals are not simultaneous: the check above must reject them."""
    def wald(counts, alpha):
        n = counts.sum(-1, keepdims=True)
        p = counts / n
        h = stats.norm.ppf(1 - alpha / 2) * np.sqrt(p * (1 - p) / n)
        return p - h, p + h

    assert simultaneous_coverage(wald, P, 300) < lower_bound(0.95)


def test_family_all_covers_a_whole_transition_law():
    """Transition counts of simulated first-order chains: every entry of the transition matrix at once."""
    pi = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    reps, T = 600, 1500
    rng = np.random.default_rng(1)
    cum = np.cumsum(pi, axis=1)
    y = np.zeros((reps, T), dtype=np.int64)
    for t in range(1, T):  # all replicates at once, sequential in time
        y[:, t] = np.minimum((cum[y[:, t - 1]] <= rng.random(reps)[:, None]).sum(axis=1), 2)
    counts = np.zeros((reps, 3, 3))
    np.add.at(counts, (np.repeat(np.arange(reps), T - 1), y[:, :-1].ravel(), y[:, 1:].ravel()), 1)
    hits = []
    for c in counts:
        lo, hi = bonferroni_intervals(c, 0.05, family="all")
        hits.append(bool(np.all((lo <= pi) & (pi <= hi))))
    assert np.mean(hits) >= lower_bound(0.95, reps)
    # per-row families do not cover the whole matrix at 95 %: "all" is what makes the difference
    lo, hi = bonferroni_intervals(counts, 0.05)  # (reps, 3, 3): rows of every replicate, batched
    assert np.mean(np.all((lo <= pi) & (pi <= hi), axis=(1, 2))) < np.mean(hits)


@pytest.mark.parametrize("method,sm_method", [("clopper-pearson", "beta"), ("wilson", "wilson")])
def test_bonferroni_is_the_binomial_interval_at_alpha_over_m(method, sm_method):
    """Against statsmodels' proportion_confint at level alpha / m (another implementation)."""
    from statsmodels.stats.proportion import proportion_confint

    counts = np.array([[12, 0, 3, 5], [0, 0, 0, 0], [0, 0, 7, 0]])
    lo, hi = bonferroni_intervals(counts, 0.1, method=method)
    for row in (0, 2):
        ref_lo, ref_hi = proportion_confint(counts[row], counts[row].sum(), alpha=0.1 / 4, method=sm_method)
        np.testing.assert_allclose(lo[row], np.clip(ref_lo, 0, 1), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(hi[row], np.clip(ref_hi, 0, 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(lo[1], 0.0)
    np.testing.assert_array_equal(hi[1], 1.0)
    # family "all": m counts the cells of the observed rows only (2 rows x 4 cells here)
    lo_all, _ = bonferroni_intervals(counts, 0.1, method=method, family="all")
    ref_lo, _ = proportion_confint(counts[0], 20, alpha=0.1 / 8, method=sm_method)
    np.testing.assert_allclose(lo_all[0], np.clip(ref_lo, 0, 1), rtol=1e-10, atol=1e-12)


def test_thompson_half_width_matches_his_table():
    """d^2 n from Thompson (1987, Table 1): 1.27359 at alpha = 0.05 (m = 3), 1.96986 at alpha = 0.01 (m = 2),
    0.44129 at alpha = 0.5 (m = 4); many cells so that every m of the table is allowed."""
    counts = np.full(10, 100)  # n = 1000, p_hat = 0.1: no clipping
    for alpha, d2n in [(0.05, 1.27359), (0.01, 1.96986), (0.5, 0.44129)]:
        lo, hi = thompson_intervals(counts, alpha)
        assert ((hi - lo) / 2) ** 2 * 1000 == pytest.approx(d2n, abs=2e-5)  # the table's 5 decimals


def test_bailey_ends_solve_the_square_root_equation():
    """Bailey's ends are the roots of (sqrt(p) - sqrt(p_tilde))^2 = C (1 - p): found here by bracketing."""
    counts = np.array([55, 30, 10, 5])
    lo, hi = bailey_intervals(counts, 0.05)
    n = counts.sum()
    C = stats.chi2.ppf(1 - 0.05 / 4, 1) / (4 * n)
    for i, x in enumerate(counts):
        pm, pp = (x - 1 / 8) / (n + 1 / 8), (x + 7 / 8) / (n + 1 / 8)
        f_lo = lambda p: (np.sqrt(p) - np.sqrt(pm)) ** 2 - C * (1 - p)  # noqa: E731
        f_hi = lambda p: (np.sqrt(p) - np.sqrt(pp)) ** 2 - C * (1 - p)  # noqa: E731
        assert lo[i] == pytest.approx(optimize.brentq(f_lo, 0.0, pm), abs=1e-12)
        assert hi[i] == pytest.approx(optimize.brentq(f_hi, pp, 1.0), abs=1e-12)
    lo0, hi0 = bailey_intervals([0, 10], 0.05)
    assert lo0[0] == 0.0 and 0 < hi0[0] < 1


def test_bad_input_names_the_argument():
    for f in (bonferroni_intervals, thompson_intervals, bailey_intervals):
        with pytest.raises(ValueError, match="counts"):
            f([1.5, 2])
        with pytest.raises(ValueError, match="counts"):
            f([-1, 2])
        with pytest.raises(ValueError, match="counts"):
            f([3])
        with pytest.raises(ValueError, match="alpha"):
            f([1, 2], 1.0)
        with pytest.raises(ValueError, match="alpha"):
            f([1, 2], 0.0)
    with pytest.raises(ValueError, match="method"):
        bonferroni_intervals([1, 2], method="wald")
    with pytest.raises(ValueError, match="family"):
        bonferroni_intervals([1, 2], family="each")


def test_docstring_examples_run():
    import doctest

    from mtdmath.fitting import _simultaneous

    result = doctest.testmod(_simultaneous, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
