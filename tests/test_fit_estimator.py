"""The MTD estimator (scikit-learn / hmmlearn conventions) and the MTDModel parameter object.

Independent routes: log-likelihoods from the formula on the raw transitions (no aggregation), the core's
``mtdmath.predictive``, and manual per-fold refits for cross-validation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import mtdmath
from mtdmath.fitting import MTDModel, fit
from mtdmath.fitting.mtd import MTD


def make(S=3, lags=(1, 2), variant="shared", seed=0, independent=False):
    rng = np.random.default_rng(seed)
    k = len(lags)
    pi = rng.dirichlet(np.ones(S), size=(k, S) if variant == "lagwise" else S)
    w = rng.dirichlet(np.full(k + int(independent), 2.0))
    if independent:
        return MTDModel(pi, w[:k], lags=lags, lam_indep=w[k], p0=rng.dirichlet(np.ones(S)))
    return MTDModel(pi, w, lags=lags)


def direct_logprobs(model, y):
    """log P(y[t] | past) for t = M..T-1, straight from the formula (tests/test_fit.py's route)."""
    from test_fit import probs_direct

    return np.log(probs_direct(model, np.asarray(y)))


TRUE = make(3, (1, 2), seed=1)
SEQS = [TRUE.sample(400, rng=s) for s in range(6)]


def test_get_set_params_and_sklearn_clone():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone

    est = MTD(2, lags=None, variant="lagwise", restarts=3, random_state=5)
    params = est.get_params()
    assert params["order"] == 2 and params["variant"] == "lagwise" and params["restarts"] == 3
    assert set(params) == {"order", "lags", "n_symbols", "variant", "independent", "restarts", "tol", "max_iter",
                           "init", "burn_in", "random_state", "n_jobs", "missing", "pad"}
    c = clone(est)
    assert c is not est and c.get_params() == params and not hasattr(c, "model_")
    assert est.set_params(order=3, tol=1e-8) is est and est.order == 3 and est.tol == 1e-8
    with pytest.raises(ValueError, match="unknown parameter 'ordr'"):
        est.set_params(ordr=2)
    assert "variant='lagwise'" in repr(clone(est)) and sklearn.__version__


def test_fit_layouts_agree_and_match_fit_function():
    """list of sequences == 2-D rows == hmmlearn concatenation + lengths == mtdmath.fitting.fit."""
    a = MTD(2, restarts=2, random_state=0).fit(SEQS)
    b = MTD(2, restarts=2, random_state=0).fit(np.stack(SEQS))
    c = MTD(2, restarts=2, random_state=0).fit(np.concatenate(SEQS)[:, None], lengths=[400] * 6)
    f = fit(SEQS, 2, restarts=2, rng=0)
    for e in (a, b, c):
        assert e.loglik_ == pytest.approx(f.loglik_, rel=1e-12)
        np.testing.assert_allclose(e.lam_, f.lam_, rtol=1e-8)
        assert e.converged_ and e.n_iter_ > 0 and e.monitor_.reason in ("kkt", "flat")
        assert isinstance(e.model_, MTDModel) and isinstance(f, MTD)
    # fitted log-likelihood == formula on the raw transitions at the fitted parameters
    assert a.loglik_ == pytest.approx(sum(direct_logprobs(a.model_, y).sum() for y in SEQS), rel=1e-12)


def test_design_matrix_input_is_the_transition_likelihood():
    """mtdlearn layout: x[:, c] = seq[c:c+n] (column c is lag m - c), y = seq[m:]."""
    y = np.concatenate(SEQS)
    m, n = 2, y.shape[0] - 2
    x = np.stack([y[c : c + n] for c in range(m)], axis=1)
    e = MTD(restarts=2, random_state=0).fit(x, y[m:])  # order = number of columns
    f = fit(y, 2, restarts=2, rng=0)  # the same transitions as one chain
    assert e.lags_ == (1, 2) and e.loglik_ == pytest.approx(f.loglik_, rel=1e-9)
    # per-row scores are log P(y_i | x_i) by the formula
    rows = np.concatenate([x, y[m:, None]], axis=1)
    want = np.array([direct_logprobs(e.model_, r)[0] for r in rows[:50]])
    np.testing.assert_allclose(e.score_samples(x[:50], y[m : m + 50]), want, rtol=1e-12)
    # a wider design matrix with order set: only the last `order` columns are used
    x3 = np.stack([y[c : c + n - 1] for c in range(3)], axis=1)
    e3 = MTD(2, restarts=1).fit(x3, y[3:])
    assert e3.lags_ == (1, 2) and e3.loglik_ == pytest.approx(
        fit(y[1:], 2, restarts=1).loglik_, rel=1e-9)


def test_score_score_samples_aic_bic():
    e = MTD(2, restarts=2, random_state=0).fit(SEQS[:4])
    held = SEQS[4:]
    want = [direct_logprobs(e.model_, y).sum() for y in held]
    np.testing.assert_allclose(e.score_samples(held), want, rtol=1e-12)
    assert e.score(held) == pytest.approx(sum(want), rel=1e-12)
    k = e.model_.n_params
    assert e.aic(held) == pytest.approx(-2 * sum(want) + 2 * k)
    assert e.bic(held) == pytest.approx(-2 * sum(want) + math.log(2 * 398) * k)
    assert e.aic(SEQS[:4]) == pytest.approx(e.aic()) and e.bic(SEQS[:4]) == pytest.approx(e.bic())
    # ragged sequences take the per-sequence route
    rag = [SEQS[4][:100], SEQS[5]]
    np.testing.assert_allclose(e.score_samples(rag), [direct_logprobs(e.model_, y).sum() for y in rag],
                               rtol=1e-12)


def test_predict_proba_predict_sample():
    e = MTD(2, restarts=2, random_state=0).fit(SEQS)
    ctx = np.array([[0, 1], [2, 2], [1, 0]])
    lam_full = e.lam_  # lags 1, 2
    core = mtdmath.predictive(lam_full, ctx, e.pi_)
    np.testing.assert_allclose(e.predict_proba(ctx), core, rtol=1e-14)
    np.testing.assert_array_equal(e.predict(ctx), np.argmax(core, axis=1))
    s1, s2 = e.sample(300, random_state=3), e.sample(300, random_state=3)
    np.testing.assert_array_equal(s1, s2)
    assert s1.shape == (300,) and s1.max() < 3
    # lag-wise and independent models use the generic formula; it agrees with the direct one
    lw = make(3, (1, 3), "lagwise", seed=4, independent=True)
    y = lw.sample(50, rng=1)
    got = np.log(lw.predict_proba(np.stack([y[t - 3 : t] for t in range(3, 50)]))[np.arange(47), y[3:]])
    np.testing.assert_allclose(got, direct_logprobs(lw, y), rtol=1e-13)


def test_sample_with_prefix_keeps_the_start():
    y = TRUE.sample(20, rng=0, prefix=[2, 1, 0])
    assert list(y[:3]) == [2, 1, 0]
    with pytest.raises(ValueError, match="prefix"):
        TRUE.sample(20, prefix=[1])


def test_gridsearch_over_order_with_sequence_splitter():
    """GridSearchCV over order with KFold on rows (= whole sequences) and burn_in = the largest order; the CV
    score of each order equals the mean held-out log-likelihood of manual per-fold refits, and the true
    order 2 wins."""
    pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV, KFold

    true = MTDModel(TRUE.pi, [0.3, 0.7])
    X = np.stack([true.sample(1000, rng=10 + s) for s in range(8)])
    cv = KFold(4)
    base = MTD(restarts=2, random_state=0, n_symbols=3, burn_in=3)
    gs = GridSearchCV(base, {"order": [1, 2, 3]}, cv=cv).fit(X)
    assert gs.best_params_ == {"order": 2}
    for i, order in enumerate([1, 2, 3]):
        manual = [MTD(order, restarts=2, random_state=0, n_symbols=3, burn_in=3).fit(X[tr]).score(X[te])
                  for tr, te in cv.split(X)]
        assert gs.cv_results_["mean_test_score"][i] == pytest.approx(np.mean(manual), rel=1e-10)


def test_burn_in_scores_every_order_on_the_same_transitions():
    """Without burn_in an order-1 model scores one more transition per sequence than an order-2 model;
    with burn_in = 2 both score transitions 2..T-1 (checked against the formula)."""
    e1 = MTD(1, restarts=1, burn_in=2).fit(SEQS)
    want = sum(direct_logprobs(e1.model_, y)[1:].sum() for y in SEQS)  # order-1 terms from t = 1: drop t = 1
    assert e1.score(SEQS) == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(e1.score_samples(SEQS), [direct_logprobs(e1.model_, y)[1:].sum() for y in SEQS],
                               rtol=1e-12)
    assert e1.n_obs_ == 6 * 398 and MTD(1, restarts=1).fit(SEQS).n_obs_ == 6 * 399
    assert e1.bic(SEQS) == pytest.approx(-2 * want + math.log(6 * 398) * e1.model_.n_params)


def test_model_validation_and_bad_input():
    with pytest.raises(ValueError, match="lags"):
        MTDModel(np.eye(2), [0.5, 0.5], lags=[1, 1])
    with pytest.raises(ValueError, match="lam_indep and p0"):
        MTDModel(np.eye(2), [1.0], lam_indep=0.0)
    with pytest.raises(ValueError, match=r"pi must have shape \(k=2"):
        MTDModel(np.ones((3, 2, 2)) / 2, [0.5, 0.5])
    with pytest.raises(ValueError, match="not fitted"):
        MTD(2).score(SEQS)
    with pytest.raises(ValueError, match="order"):
        MTD().fit(SEQS)
    with pytest.raises(ValueError, match="lengths must sum"):
        MTD(2).fit(np.concatenate(SEQS), lengths=[10, 10])
    with pytest.raises(ValueError, match="y must be 1-D"):
        MTD().fit(np.zeros((5, 2), dtype=int), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="either y"):
        MTD().fit(np.zeros((5, 2), dtype=int), np.zeros(5, dtype=int), lengths=[5])
    with pytest.raises(ValueError, match="lag columns"):
        MTD(3).fit(np.zeros((5, 2), dtype=int), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="variant"):
        MTD(2, variant="mixed").fit(SEQS)
    e = MTD(2, restarts=1).fit(SEQS)
    with pytest.raises(ValueError, match="level"):
        e.confidence_intervals(1.5)
    with pytest.raises(ValueError, match="method"):
        e.confidence_intervals(method="jackknife")
    with pytest.raises(ValueError, match="X must lie in"):
        e.predict_proba_interval(np.array([[0, 7]]))


def test_other_backends_convert_once_at_the_entry_points():
    torch = pytest.importorskip("torch")
    y = torch.as_tensor(np.concatenate(SEQS))
    ref = fit(np.concatenate(SEQS), 2, restarts=1)
    assert fit(y, 2, restarts=1).loglik_ == pytest.approx(ref.loglik_, rel=1e-13)
    e = MTD(2, restarts=1).fit(torch.as_tensor(np.stack(SEQS)))
    assert e.loglik_ == pytest.approx(MTD(2, restarts=1).fit(np.stack(SEQS)).loglik_, rel=1e-13)
    law = MTDModel(torch.as_tensor(TRUE.pi.copy()), torch.as_tensor(TRUE.lam.copy()))  # laws are read-only
    ctx = np.array([[0, 1], [2, 2]])
    np.testing.assert_allclose(law.predict_proba(torch.as_tensor(ctx)), TRUE.predict_proba(ctx), rtol=1e-15)
    xps = pytest.importorskip("array_api_strict")
    assert fit(xps.asarray(np.concatenate(SEQS)), 2, restarts=1).loglik_ == pytest.approx(ref.loglik_, rel=1e-13)


def test_mtdmath_fit_is_the_function_and_no_submodule_shadows_it():
    """The callable-module hack is gone: no file mtdmath/fit.py; mtdmath.fitting.fit is the fitting function of
    mtdmath/fitting/mtd.py, and the top level keeps no alias of it."""
    from pathlib import Path

    import mtdmath
    from mtdmath.fitting import mtd

    assert not (Path(mtdmath.__file__).parent / "fit.py").exists()
    assert mtdmath.fitting.fit is mtd.fit and not hasattr(mtdmath, "fit")
    y = np.array([0, 1, 2, 1, 0, 2, 1, 0, 1, 2] * 3)
    assert isinstance(mtdmath.fitting.fit(y, 1, restarts=1, rng=0), MTD)


def test_summary_of_a_one_lag_fit_says_there_is_no_variant_test():
    """With one lag the shared and lag-wise variants have the same parameters (df 0): the summary says so
    instead of failing on a chi-square with 0 degrees of freedom."""
    rng = np.random.default_rng(0)
    text = MTD(1, random_state=0).fit(rng.integers(0, 3, 300)).summary()
    assert "with one lag the two variants are the same model" in text
