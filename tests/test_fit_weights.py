"""Per-transition weights (``sample_weight`` / ``weights`` one per token).

Independent routes: the data with every (context, next) tuple repeated by its integer weight, fitted
unweighted as a design matrix (one row per repeated transition); truncated sequences for zero weights; the
weighted log-likelihood by the formula on the raw transitions.
"""
from __future__ import annotations

import numpy as np
import pytest

import mtdmath
from mtdmath.fitting import MTD, MarkovChain, MTDModel, fit

TRUE = MTDModel(mtdmath.random_transition_matrix(3, concentration=2.0, rng=4), [0.5, 0.5])
Y = TRUE.sample(400, rng=5)
RNG = np.random.default_rng(6)
W = RNG.integers(0, 4, size=Y.shape[0]).astype(float)  # integer weights, some 0


def duplicated_design(y, w, m):
    """Design matrix with transition t (context y[t-m..t-1], next y[t]) repeated w[t] times, t >= m."""
    rows = [np.append(y[t - m : t], y[t]) for t in range(m, y.shape[0]) for _ in range(int(w[t]))]
    R = np.array(rows)
    return R[:, :m], R[:, m]


@pytest.mark.parametrize("variant", ["shared", "lagwise"])
def test_integer_weights_equal_duplicated_transitions(variant):
    x, nxt = duplicated_design(Y, W, 2)
    dup = MTD(2, variant=variant, restarts=4, random_state=0).fit(x, nxt)
    wtd = MTD(2, variant=variant, restarts=4, random_state=0).fit(Y, sample_weight=W)
    # the aggregated (context, next) tuples and their counts are equal, so EM runs the same arithmetic
    assert wtd.loglik_ == dup.loglik_
    np.testing.assert_array_equal(wtd.lam_, dup.lam_)
    np.testing.assert_array_equal(wtd.pi_, dup.pi_)
    assert wtd.n_obs_ == W[2:].sum()
    # the weighted log-likelihood by the formula on the raw transitions
    P = wtd.model_.predict_proba(np.stack([Y[t - 2 : t] for t in range(2, Y.shape[0])]))
    direct = float(np.sum(W[2:] * np.log(P[np.arange(P.shape[0]), Y[2:]])))
    assert wtd.loglik_ == pytest.approx(direct, rel=1e-12)  # summation order only
    assert wtd.score(Y, sample_weight=W) == pytest.approx(direct, rel=1e-12)


def test_zero_weights_equal_truncation_and_constant_weights_equal_sequence_weights():
    w = np.ones(Y.shape[0])
    w[300:] = 0.0
    a = fit(Y, 2, restarts=3, rng=0, weights=w)
    b = fit(Y[:300], 2, restarts=3, rng=0)
    assert a.loglik_ == b.loglik_ and a.n_obs_ == 298
    seqs = [Y[:200], Y[200:]]
    c = fit(seqs, 2, restarts=3, rng=0, weights=[np.full(200, 2.0), np.full(200, 0.5)])
    d = fit(seqs, 2, restarts=3, rng=0, weights=[2.0, 0.5])
    assert c.loglik_ == pytest.approx(d.loglik_, rel=1e-12) and c.n_obs_ == d.n_obs_ == 2 * 198 + 0.5 * 198
    # the weights of the first max-lag positions condition nothing
    w2 = W.copy()
    w2[:2] = 100.0
    assert fit(Y, 2, restarts=2, rng=0, weights=w2).loglik_ == fit(Y, 2, restarts=2, rng=0, weights=W).loglik_


def test_token_weights_in_every_layout():
    ref = MTD(2, restarts=2, random_state=0).fit([Y[:150], Y[150:]], sample_weight=[W[:150], W[150:]])
    flat = MTD(2, restarts=2, random_state=0).fit(Y, lengths=[150, 250], sample_weight=W)
    assert flat.loglik_ == ref.loglik_
    rows = np.stack([Y[:200], Y[200:]])
    wrows = np.stack([W[:200], W[200:]])
    r = MTD(2, restarts=2, random_state=0).fit(rows, sample_weight=wrows)
    s = MTD(2, restarts=2, random_state=0).fit([Y[:200], Y[200:]], sample_weight=[W[:200], W[200:]])
    assert r.loglik_ == s.loglik_
    # per-sequence weights with lengths keep their old meaning
    q = MTD(2, restarts=2, random_state=0).fit(Y, lengths=[150, 250], sample_weight=[1.0, 3.0])
    t = MTD(2, restarts=2, random_state=0).fit([Y[:150], Y[150:]], sample_weight=[np.ones(150), np.full(250, 3.0)])
    assert q.loglik_ == pytest.approx(t.loglik_, rel=1e-12)
    # the Wald intervals and the bootstrap use the weighted data
    assert np.isfinite(flat.standard_errors()["lam"]).all()


def test_chain_counts_are_weighted():
    c = MarkovChain(1).fit(Y, sample_weight=W)
    N = np.zeros((3, 3))
    for t in range(1, Y.shape[0]):  # brute-force weighted counting
        N[Y[t - 1], Y[t]] += W[t]
    np.testing.assert_array_equal(c.counts_, N[c.contexts_[:, -1]])
    assert c.n_obs_ == W[1:].sum()


@pytest.mark.parametrize("bad, match", [
    (-W, r"sample_weight must be finite and non-negative"),
    (np.where(W > 2, np.nan, W), r"sample_weight must be finite and non-negative"),
    (np.where(W > 2, np.inf, W), r"sample_weight must be finite and non-negative"),
    (W[:-1], r"sample_weight must have one entry per sequence \(1\) or one per token"),
    (np.zeros_like(W), r"sample_weight gives every transition weight 0"),
    (np.ones((2, 3)), r"sample_weight must have one entry per sequence"),
    (np.array(["a"] * 400), r"sample_weight must be an array of real numbers"),
])
def test_bad_sample_weight_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        MTD(2, restarts=1).fit(Y, sample_weight=bad)
    with pytest.raises(ValueError, match=match):
        MarkovChain(2).fit(Y, sample_weight=bad)


def test_bad_weights_of_a_list_and_of_lengths():
    with pytest.raises(ValueError, match=r"sample_weight\[1\] must have one weight per token of sequence 1"):
        MTD(2, restarts=1).fit([Y[:100], Y[100:]], sample_weight=[W[:100], W[100:-1]])
    with pytest.raises(ValueError, match=r"sample_weight must have one entry per sequence \(2\) or one per token"):
        MTD(2, restarts=1).fit(Y, lengths=[100, 300], sample_weight=W[:-3])
    with pytest.raises(ValueError, match=r"\bweights must be finite"):
        fit(Y, 2, restarts=1, weights=-W)
