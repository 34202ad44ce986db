"""The fitting object model: one data layer (TransitionCounts), frozen laws (MTDModel, ChainModel), one
estimator base (NotFittedError, labels, weights, scores), guards on sizes and shapes, scikit-learn's checks.

Each regression test names the defect it pins; the old code (before the object model) failed each of them.
"""
from __future__ import annotations

import itertools
import tracemalloc
import warnings
from collections import Counter

import numpy as np
import pytest

import mtdmath
from mtdmath.fitting import (MTD, ChainModel, MarkovChain, MTDModel, NotFittedError, TransitionCounts, fit,
                             lr_test, select_order)

PI3 = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]])


def hand_counts(seqs, lags):
    """Counter of (context tuple, next) over t = max(lags)..T-1 of every sequence, by a Python loop."""
    c = Counter()
    M = max(lags)
    for y in seqs:
        for t in range(M, len(y)):
            c[(tuple(int(y[t - l]) for l in lags), int(y[t]))] += 1.0
    return c


def as_counter(counts):
    return Counter({(tuple(int(v) for v in ctx), int(b)): float(w)
                    for ctx, b, w in zip(counts.ctx, counts.nxt, counts.w)})


# --------------------------------------------------------------------------------------------------------
# the data layer
# --------------------------------------------------------------------------------------------------------
def test_transition_counts_are_the_hand_counts_and_merge_associatively():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 4, size=n) for n in (50, 7, 120)]
    lags = (1, 3)
    parts = [TransitionCounts.from_sequences(s, lags=lags, n_symbols=4) for s in seqs]
    assert as_counter(parts[0]) == hand_counts(seqs[:1], lags)
    left, right = (parts[0] + parts[1]) + parts[2], parts[0] + (parts[1] + parts[2])
    whole = TransitionCounts.from_sequences(seqs, lags=lags, n_symbols=4)
    # counts are sums of 1.0: exact in floating point, whatever the order of the sums
    assert as_counter(left) == as_counter(right) == as_counter(whole) == hand_counts(seqs, lags)
    assert (parts[2] + parts[0]).n_obs == whole.n_obs - parts[1].n_obs
    # an estimator fitted on merged counts is the estimator fitted on the sequences
    est = MTD(lags=lags, restarts=2, random_state=0, n_symbols=4).fit_counts(left)
    ref = MTD(lags=lags, restarts=2, random_state=0, n_symbols=4).fit(seqs)
    assert est.loglik_ == ref.loglik_ and np.array_equal(est.pi_, ref.pi_)
    with pytest.raises(ValueError, match="not this estimator's lags"):
        MTD(2).fit_counts(left)
    with pytest.raises(ValueError, match="lags"):
        parts[0] + TransitionCounts.from_sequences(seqs[0], lags=(1,), n_symbols=4)
    with pytest.raises(ValueError, match="n_symbols"):
        parts[0] + TransitionCounts.from_sequences(seqs[0], lags=lags, n_symbols=5)


def test_a_declared_unused_state_changes_nothing_but_its_own_entries():
    """Defect: a state no transition uses changed the fit (other random restart draws and a smoothed start
    with mass on it): lam differed by 3e-8 between n_symbols = 3 and 4. Now EM runs on the used states."""
    y = MTDModel(PI3, [0.5, 0.5]).sample(400, rng=1)
    a = MTD(2, n_symbols=3, random_state=0).fit(y)
    b = MTD(2, n_symbols=4, random_state=0).fit(y)
    assert a.loglik_ == b.loglik_ and np.array_equal(a.lam_, b.lam_) and np.array_equal(a.pi_, b.pi_[:3, :3])
    assert np.all(b.pi_[:3, 3] == 0) and np.all(b.pi_[3] == 0.25)  # its column is 0, its row uniform
    assert np.array_equal(a.restart_logliks_, b.restart_logliks_)
    pd = pytest.importorskip("pandas")
    labels = np.array(["a", "b", "c"])[y]
    cat = pd.Categorical(labels, categories=["a", "b", "c", "unused"])
    c = MTD(2, random_state=0).fit(cat)
    assert c.loglik_ == a.loglik_ and np.array_equal(c.pi_, b.pi_) and list(c.classes_)[-1] == "unused"


def test_a_string_is_refused_with_a_hint_and_messages_name_the_public_argument():
    with pytest.raises(ValueError, match=r"sequences is one string .*pass list\(sequences\)"):
        fit("abcab", 2)
    with pytest.raises(ValueError, match=r"X is one string .*pass list\(X\)"):
        MTD(1).fit("abcab")
    assert fit(list("abcabcabca"), 1, restarts=1).classes_.tolist() == ["a", "b", "c"]
    y = MTDModel(PI3, [1.0]).sample(30, rng=0)
    with pytest.raises(ValueError, match=r"^X\[1\] has length 1"):  # the old message said sequences[1]
        MTD(2).fit([y, y[:1]])
    with pytest.raises(ValueError, match=r"^sequences\[1\] has length 1"):
        fit([y, y[:1]], 2)


def test_design_matrix_refuses_a_two_column_sample_weight():
    """Defect: with one lag column a (n, 2) sample_weight matched the per-token layout of the (n, 2) rows and
    was accepted silently."""
    y = MTDModel(PI3, [1.0]).sample(200, rng=2)
    x, nxt = y[:-1, None], y[1:]
    for est in (MTD(1, restarts=1), MarkovChain(1)):
        with pytest.raises(ValueError, match=r"sample_weight must have one weight per row of the design matrix X"):
            est.fit(x, nxt, sample_weight=np.ones((nxt.shape[0], 2)))
        est.fit(x, nxt, sample_weight=np.ones(nxt.shape[0]))  # one weight per row is the layout


# --------------------------------------------------------------------------------------------------------
# laws
# --------------------------------------------------------------------------------------------------------
def test_laws_copy_their_inputs_and_are_frozen():
    """Defect: MTDModel kept a reference to the caller's arrays; editing p put NaN into a validated law."""
    p, lam = PI3.copy(), np.array([0.6, 0.4])
    law = MTDModel(p, lam)
    p[0, 0], lam[0] = np.nan, 5.0
    np.testing.assert_array_equal(law.pi, PI3)
    np.testing.assert_array_equal(law.lam, [0.6, 0.4])
    with pytest.raises(ValueError, match="read-only"):
        law.pi[0, 0] = 0.0
    with pytest.raises(AttributeError, match="frozen"):
        law.lam = np.array([1.0, 0.0])
    P = np.full((3, 3), 1 / 3)
    chain = ChainModel(P, 1)
    P[0] = [1.0, 0.0, 0.0]
    np.testing.assert_array_equal(chain.transition, np.full((3, 3), 1 / 3))
    # a fitted estimator's parameters are views of its law, not copies
    est = MTD(1, restarts=1).fit(MTDModel(PI3, [1.0]).sample(300, rng=0))
    assert est.pi_ is est.model_.pi and not est.pi_.flags.writeable


def test_stationary_distribution_refuses_a_huge_state_space_before_allocating():
    """Defect: a large max_states let S^order states through to np.arange / the expanded matrix (10^12
    states here: a MemoryError or a swap storm); now the memory budget is checked first, allocating nothing."""
    law = MTDModel(np.full((10, 10), 0.1), [0.5, 0.5], lags=(1, 12))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"max_states: .* GiB, above the budget"):
            law.stationary_distribution(max_states=10**15)
        with pytest.raises(ValueError, match=r"max_states = 200000"):
            law.stationary_distribution()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing of the state space's size was allocated


def test_the_one_chain_sampler_draws_the_chain_law():
    """ChainModel.sample (the sampler MarkovChain.sample and the tests use): empirical next-token frequencies
    after each context within 5 binomial standard errors of the law."""
    rng = np.random.default_rng(3)
    P = rng.dirichlet(np.ones(3), size=9)
    law = ChainModel(P, 2)
    y = law.sample(60_000, rng=4)
    for a, b in itertools.product(range(3), repeat=2):
        idx = np.flatnonzero((y[:-2] == a) & (y[1:-1] == b)) + 2
        p = P[b * 3 + a]  # context code: lag 1 (b) most significant
        freq = np.bincount(y[idx], minlength=3) / idx.size
        assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / idx.size) + 1e-12), (a, b)
    chain = MarkovChain(2).fit(y)
    np.testing.assert_array_equal(chain.sample(50, random_state=7), chain.model_.sample(50, rng=7))


# --------------------------------------------------------------------------------------------------------
# the estimator base
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("est", [MTD(1), MarkovChain(1)])
def test_not_fitted_error_is_sklearns(est):
    sklearn_exc = pytest.importorskip("sklearn.exceptions")
    assert NotFittedError is sklearn_exc.NotFittedError
    for call in (lambda: est.score([0, 1, 0]), lambda: est.predict_proba([[0]]), lambda: est.sample(3),
                 lambda: est.n_params, lambda: est.aic()):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call()
    assert not hasattr(est, "model_")
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)


def test_order_and_restarts_too_large_are_refused_before_any_work():
    """Defects: MTD(order=2**70) raised OverflowError; MTD(restarts=2**70) hung."""
    y = MTDModel(PI3, [1.0]).sample(100, rng=0)
    with pytest.raises(ValueError, match=r"^order = 1180591620717411303424 leaves no transition"):
        MTD(order=2**70).fit(y)
    with pytest.raises(ValueError, match=r"^lags: the max lag 1180591620717411303424"):
        MTD(lags=[1, 2**70]).fit(y)
    with pytest.raises(ValueError, match=r"^restarts: .* GiB, above the budget"):
        MTD(1, restarts=2**70).fit(y)
    with pytest.raises(ValueError, match=r"^restarts: .* GiB"):
        fit(y, 1, restarts=2**70)
    with pytest.raises(ValueError, match=r"^X has 1 lag columns, fewer than the order"):
        MTD(order=2**70).fit(y[:-1, None], y[1:])


@pytest.mark.parametrize("est", [MTD(2, restarts=1), MarkovChain(2)])
def test_predict_proba_takes_2d_contexts_only(est):
    """Defect: MTD.predict_proba accepted 1-D and 3-D X although the docs say (n, L)."""
    est.fit(MTDModel(PI3, [0.5, 0.5]).sample(200, rng=0))
    assert est.predict_proba(np.array([[0, 1], [2, 2]])).shape == (2, 3)
    for bad in (np.array([0, 1]), np.zeros((2, 2, 2), dtype=int)):
        with pytest.raises(ValueError, match=r"^X must be 2-D \(n, L\)"):
            est.predict_proba(bad)


# --------------------------------------------------------------------------------------------------------
# summary, select_order
# --------------------------------------------------------------------------------------------------------
def test_summary_shows_errors_intervals_and_the_variant_test():
    rng = np.random.default_rng(5)
    lagwise = MTDModel(rng.dirichlet(np.ones(3), size=(2, 3)), [0.5, 0.5])
    y = lagwise.sample(3000, rng=6)
    est = MTD(2, restarts=3, random_state=0).fit(y)
    text = est.summary()
    se = est.standard_errors()["lam"][0]
    lo, hi = est.confidence_intervals()["lam"]
    assert "std err" in text and "95 % interval" in text
    assert f"lam[lag 1]        {est.lam_[0]:.4f} {se:>9.4f}  [{lo[0]:>8.4f}, {hi[0]:>8.4f}]" in text
    # the verdict agrees with the library's LR test run independently on the same data
    t = lr_test(MTD(2, restarts=3, random_state=0), MTD(2, variant="lagwise", restarts=3, random_state=0), y)
    assert t.pvalue < 0.05 and "the lag-wise variant fits significantly better" in text
    shared = MTD(2, restarts=3, random_state=0).fit(MTDModel(PI3, [0.5, 0.5]).sample(3000, rng=7))
    assert "shared pi is not rejected" in shared.summary()


def test_select_order_loglik_is_monotone_in_the_order():
    """Defect: select_order's log-likelihoods were local optima of independent fits, not monotone in the
    order. On this shared chain (S = 30, m = 6, n = 2000, 2 restarts) order 4 was 12.6 nats below order 3.
    Order m + 1 contains order m; with warm starts from the previous order (and the nested fallback) the
    table never decreases, up to rounding of the likelihood sums (1e-12 relative; EM is monotone)."""
    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(30, concentration=1.0, rng=rng)
    y = MTDModel(pi, rng.dirichlet(np.ones(6))).sample(2006, rng=0)
    _, table = select_order(y, 5, restarts=2, rng=0)
    ll = np.array([r["loglik"] for r in table])
    assert np.all(np.diff(ll) >= -1e-12 * np.abs(ll[1:])), ll


# --------------------------------------------------------------------------------------------------------
# scikit-learn's estimator checks
# --------------------------------------------------------------------------------------------------------
#: checks that do not apply to sequence data, with the reason. Every other check must pass.
_FLOAT_FEATURES = ("feeds a float feature matrix: the estimators fit integer token sequences or labels, and a "
                   "float array is refused with a ValueError naming X")
EXPECTED_FAILED_CHECKS = {
    name: _FLOAT_FEATURES for name in (
        "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
        "check_estimators_dtypes", "check_sample_weights_list", "check_sample_weights_not_overwritten",
        "check_sample_weight_equivalence_on_dense_data", "check_pipeline_consistency", "check_estimators_pickle",
        "check_f_contiguous_array_estimator", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_dict_unchanged", "check_fit_idempotent",
        "check_fit_check_is_fitted", "check_n_features_in", "check_fit2d_predict1d",
        "check_all_zero_sample_weights_error", "check_estimators_nan_inf")}
EXPECTED_FAILED_CHECKS.update({
    "check_positive_only_tag_during_fit": "feeds negative floats; tokens are non-negative integer codes",
    "check_sample_weights_not_an_array": "feeds a float feature matrix with an array-like that refuses np.ndim; "
                                         "weights may be ragged per-token lists, so their layout is read with ndim",
    "check_dtype_object": "an object array of mixed dicts, floats and ints is not a set of sortable labels",
    "check_estimators_empty_data_messages": "expects the message of a (n, 0) feature matrix; an empty sequence is "
                                            "refused as 'X is empty' or 'no transitions'",
    "check_fit2d_1sample": "expects a message about one sample of a float feature matrix",
    "check_fit2d_1feature": "expects a message about one feature of a float feature matrix",
})


def _sklearn_checks():
    try:
        from sklearn.utils.estimator_checks import parametrize_with_checks
    except ImportError:  # pragma: no cover - scikit-learn is a development dependency
        return pytest.mark.skip(reason="needs scikit-learn")
    return parametrize_with_checks([MTD(1, restarts=1), MarkovChain(1)],
                                   expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)


@_sklearn_checks()
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check(estimator)


def test_mtdmath_exports_the_fitting_names_without_the_removed_ones():
    assert not hasattr(mtdmath, "MTDFit") and not hasattr(mtdmath.fitting, "MTDFit")
    assert mtdmath.fitting.fit is fit and mtdmath.fitting.MTD is MTD
    assert not hasattr(mtdmath, "fit") and not hasattr(mtdmath, "MTD")  # no alias at the top level
