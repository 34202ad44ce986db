"""Missing tokens in the data layer (march's convention): a transition whose target or window holds a missing
token is dropped, the number dropped is reported, and without a missing symbol None/NaN raise."""
from __future__ import annotations

import numpy as np
import pytest

from mtdmath.fitting import MTD, MTDModel, TransitionCounts, fit

PI = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])


def runs(y, missing):
    """The runs of present tokens between the missing ones, cut by hand (a plain loop)."""
    out, cur = [], []
    for v in y:
        if v == missing:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(v)
    if cur:
        out.append(cur)
    return [np.array(r) for r in out]


def with_holes(seed, n=3000, rate=0.03):
    y = MTDModel(PI, [0.6, 0.4]).sample(n, rng=seed)
    hole = np.random.default_rng(seed + 10).random(n) < rate
    return np.where(hole, -1, y)


def test_fit_with_missing_equals_fit_on_hand_cut_runs():
    y = with_holes(0)
    est = MTD(2, missing=-1, random_state=0, restarts=3).fit(y)
    pieces = runs(y.tolist(), -1)
    ref = MTD(2, n_symbols=3, random_state=0, restarts=3).fit([p for p in pieces if p.shape[0] > 2])
    # both fits see the same transition tuples (checked exactly), so EM from the same starts agrees to its tol
    assert est.n_obs_ == ref.n_obs_
    assert est.loglik_ == pytest.approx(ref.loglik_, rel=1e-9)
    np.testing.assert_allclose(est.pi_, ref.pi_, atol=1e-6)  # EM stops at tol 1e-9 on the loglik: ~1e-6 in pi
    # dropped = transitions of the whole chain minus those of the runs, counted by hand
    full = y.shape[0] - 2
    kept = sum(max(p.shape[0] - 2, 0) for p in pieces)
    assert est.n_dropped_ == full - kept > 0
    # a fit that wrongly glued the runs together (missing tokens deleted) sees other transitions
    glued = MTD(2, random_state=0, restarts=3).fit(y[y >= 0])
    assert glued.n_obs_ != est.n_obs_


def test_every_layout_agrees_and_the_count_is_exact():
    y = [0, 1, 2, None, 1, 1, 0, 2, None, None, 2, 0, 1]
    by_hand = TransitionCounts.from_sequences([[0, 1, 2], [1, 1, 0, 2], [2, 0, 1]], lags=(1, 2))
    nan = TransitionCounts.from_sequences(y, lags=(1, 2), missing=float("nan"))
    floats = TransitionCounts.from_sequences(np.array([np.nan if v is None else v for v in y]), lags=(1, 2),
                                             missing=float("nan"))
    codes = TransitionCounts.from_sequences([-1 if v is None else v for v in y], lags=(1, 2), missing=-1)
    for c in (nan, floats, codes):
        assert c.ctx.tolist() == by_hand.ctx.tolist() and c.nxt.tolist() == by_hand.nxt.tolist()
        # 11 transitions of the 13-token chain at max lag 2, minus the 1 + 2 + 1 of the runs
        assert c.n_dropped == 11 - 4
    # hmmlearn's concatenation: the cut runs stay inside their own sequence
    cat = TransitionCounts.from_sequences(np.array([0, 1, 2, -1, 1, 1, 0, 2]), lengths=[5, 3], lags=(1,),
                                          missing=-1)
    ref = TransitionCounts.from_sequences([[0, 1, 2], [1], [1, 0, 2]], lags=(1,))
    assert cat.ctx.tolist() == ref.ctx.tolist() and cat.w.tolist() == ref.w.tolist()
    assert cat.n_dropped == (4 + 2) - (2 + 0 + 2)
    # merged counts add their dropped transitions
    assert (nan + codes).n_dropped == 14


def test_labels_and_design_matrix():
    lab = TransitionCounts.from_sequences(["a", "b", "NA", "b", "a", "b"], lags=(1,), missing="NA")
    assert lab.classes.tolist() == ["a", "b"] and lab.n_dropped == 2 and lab.n_obs == 3
    X = np.array([[0, 1], [1, -1], [2, 2], [1, 0]])
    yv = np.array([1, 0, -1, 2])
    est = MTD(2, missing=-1, restarts=1, random_state=0).fit(X, yv)
    assert est.n_dropped_ == 2 and est.n_obs_ == 2


def test_default_refuses_missing_values_naming_X():
    with pytest.raises(ValueError, match=r"X holds a missing value.*missing="):
        MTD(1).fit([0, 1, None, 1])
    with pytest.raises(ValueError, match=r"X must hold integer tokens.*NaN.*missing="):
        MTD(1).fit(np.array([0.0, 1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="sequences holds a missing value"):
        fit([0, 1, None, 1, 0], 1)
    with pytest.raises(ValueError, match="only missing"):
        MTD(1, missing=-1).fit([-1, -1, -1])
    # without missing tokens the option changes nothing
    y = MTDModel(PI, [1.0]).sample(400, rng=3)
    a, b = MTD(1, missing=-1, random_state=0).fit(y), MTD(1, random_state=0).fit(y)
    assert a.loglik_ == b.loglik_ and a.n_dropped_ == 0


# -- left-padding with a null state (mtdlearn's convention) ---------------------------------------------------
def test_left_padding_equals_the_fit_on_hand_padded_sequences():
    rng = np.random.default_rng(5)
    seqs = [MTDModel(PI, [0.6, 0.4]).sample(int(T), rng=i) for i, T in enumerate(rng.integers(1, 12, size=60))]
    est = MTD(2, pad=3, random_state=0, restarts=3).fit(seqs)
    hand = [np.concatenate([[3, 3], s]) for s in seqs]  # two null tokens before each sequence, by hand
    ref = MTD(2, n_symbols=4, random_state=0, restarts=3).fit(hand)
    # every token is a target, short sequences included: n_obs is the total length
    assert est.n_obs_ == sum(s.shape[0] for s in seqs) == ref.n_obs_
    assert est.loglik_ == pytest.approx(ref.loglik_, rel=1e-9)  # same tuples, same starts
    assert np.all(est.pi_[:, 3] == 0)  # the null state is never a target
    # without padding the short sequences contribute less (the check can fail)
    plain = MTD(2, n_symbols=3, random_state=0, restarts=1).fit([s for s in seqs if s.shape[0] > 2])
    assert plain.n_obs_ < est.n_obs_
    # scoring pads the same way
    assert est.score(seqs) == pytest.approx(est.loglik_, rel=1e-12)


def test_left_padding_with_labels_and_bad_input():
    c = TransitionCounts.from_sequences([["a", "b"], ["b", "a", "b"]], lags=(1, 2), pad="<null>")
    assert c.classes.tolist() == ["a", "b", "<null>"] and c.n_obs == 5
    with pytest.raises(ValueError, match="pad = 1 is a token"):
        MTD(1, pad=1).fit([0, 1, 0])
    with pytest.raises(ValueError, match="pad and missing"):
        MTD(1, pad=2, missing=-1).fit([0, 1, 0])
    with pytest.raises(ValueError, match="pad does not apply to a design matrix"):
        MTD(1, pad=2).fit(np.array([[0], [1]]), np.array([1, 0]))
    with pytest.raises(ValueError, match="pad must be a non-negative integer"):
        MTD(1, pad="null").fit([0, 1, 0])


def test_score_samples_pads_and_refuses_missing_tokens():
    seqs = [MTDModel(PI, [0.6, 0.4]).sample(int(T), rng=i) for i, T in enumerate([1, 3, 7, 9])]
    est = MTD(2, pad=3, random_state=0, restarts=1).fit(seqs)
    per = est.score_samples(seqs)
    # per sequence, by hand: the null state twice, then every token scored from its window
    for s, got in zip(seqs, per):
        full = np.concatenate([[3, 3], s])
        want = sum(np.log(est.predict_proba([full[t - 2:t]])[0, full[t]]) for t in range(2, full.shape[0]))
        assert got == pytest.approx(want, rel=1e-12)
    assert per.sum() == pytest.approx(est.score(seqs), rel=1e-12)
    m = MTD(1, missing=-1, restarts=1).fit([0, 1, -1, 1, 0, 1])
    assert m.score_samples([[0, 1, 1], [1, 0, 0]]).shape == (2,)
    with pytest.raises(ValueError, match="missing tokens"):
        m.score_samples([[0, 1, -1, 1]])
