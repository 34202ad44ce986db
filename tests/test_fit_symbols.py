"""Labelled symbols in the fitting API: strings, object labels, pandas Series / Categoricals.

Independent route: the labels are mapped to codes by hand (``np.unique``, or the Categorical's category list)
and the integer-code fit, which the rest of the suite checks, must give bit-identical results; the label
outputs are checked against decoding the integer outputs by hand.
"""
from __future__ import annotations

import numpy as np
import pytest

import mtdmath
from mtdmath.fitting import MTD, MTDModel, fit, select_lags, select_order

TRUE = MTDModel(mtdmath.random_transition_matrix(3, concentration=3.0, rng=0), [0.6, 0.4])
CODES = TRUE.sample(600, rng=1)
NAMES = np.array(["low", "mid", "high"])  # sorted order: high, low, mid
LABELS = NAMES[CODES]


def by_hand(labels):
    """Sorted-label codes by hand: np.unique's sorted classes and inverse."""
    classes, inv = np.unique(np.asarray(labels), return_inverse=True)
    return classes, inv.reshape(np.shape(labels)).astype(np.int64)


def test_string_fit_equals_the_fit_of_sorted_codes():
    classes, codes = by_hand(LABELS)
    f = fit(LABELS, 2, restarts=3, rng=0)
    g = fit(codes, 2, restarts=3, rng=0)
    assert list(f.classes_) == list(classes) == ["high", "low", "mid"]
    assert f.loglik_ == g.loglik_  # same codes, same starts: bit-identical
    np.testing.assert_array_equal(f.pi_, g.pi_)
    np.testing.assert_array_equal(f.lam_, g.lam_)
    assert g.transition_counts_.classes is None and g.classes_.tolist() == [0, 1, 2]  # codes carry no labels


def test_list_of_python_strings_and_object_array_are_labels():
    ref = fit(LABELS, 2, restarts=2, rng=0)
    for data in (LABELS.tolist(), LABELS.astype(object), [LABELS[:300], LABELS[300:].tolist()]):
        f = fit(data, 2, restarts=2, rng=0)
        assert list(f.classes_) == ["high", "low", "mid"]
    two = fit([LABELS[:300], LABELS[300:]], 2, restarts=2, rng=0)
    _, codes = by_hand(LABELS)
    assert two.loglik_ == fit([codes[:300], codes[300:]], 2, restarts=2, rng=0).loglik_
    assert ref.n_obs_ == 598 and two.n_obs_ == 596  # each sequence conditioned on its own first 2 symbols


def test_categorical_keeps_its_own_category_order_and_unused_categories():
    pd = pytest.importorskip("pandas")
    order = ["mid", "low", "high", "storm"]  # "storm" never occurs: still a state
    cat = pd.Categorical(LABELS, categories=order)
    codes = np.array([order.index(v) for v in LABELS])  # by hand, from the category list
    for data in (cat, pd.Series(cat)):
        e = MTD(2, restarts=2, random_state=0).fit(data)
        g = MTD(2, restarts=2, random_state=0, n_symbols=4).fit(codes)
        assert list(e.classes_) == order and e.n_symbols_ == 4
        assert e.loglik_ == g.loglik_
        np.testing.assert_array_equal(e.pi_, g.pi_)
    # a plain Series of strings is sorted like an array
    s = MTD(2, restarts=2, random_state=0).fit(pd.Series(LABELS))
    assert list(s.classes_) == ["high", "low", "mid"]


def test_predict_proba_columns_predict_and_sample_use_the_labels():
    classes, codes = by_hand(LABELS)
    e = MTD(2, restarts=2, random_state=0).fit(LABELS)
    g = MTD(2, restarts=2, random_state=0).fit(codes)
    ctx_lab = np.array([["low", "high"], ["mid", "mid"], ["high", "low"]])
    ctx_codes = np.array([[list(classes).index(v) for v in row] for row in ctx_lab])
    np.testing.assert_array_equal(e.predict_proba(ctx_lab), g.predict_proba(ctx_codes))
    np.testing.assert_array_equal(e.predict(ctx_lab), classes[g.predict(ctx_codes)])
    np.testing.assert_array_equal(e.sample(50, random_state=3), classes[g.sample(50, random_state=3)])
    assert e.sample(5, random_state=3).dtype.kind == "U"
    assert e.score(LABELS) == g.score(codes)
    np.testing.assert_array_equal(e.score_samples([LABELS[:300], LABELS[300:]]),
                                  g.score_samples([codes[:300], codes[300:]]))
    # the estimator of the function API takes and returns labels the same way; its law works on codes
    f = fit(LABELS, 2, restarts=2, rng=0)
    np.testing.assert_array_equal(f.predict_proba(ctx_lab), f.model_.predict_proba(ctx_codes))
    assert f.score(LABELS) == pytest.approx(f.loglik_, rel=1e-12)
    assert f.model_.log_likelihood(codes) == pytest.approx(f.loglik_, rel=1e-12)
    assert set(f.sample(30, random_state=0).tolist()) <= set(classes.tolist())
    assert f.model_.stationary_distribution()[1].shape == (3,)


def test_unseen_label_at_predict_time_is_named():
    e = MTD(2, restarts=1, random_state=0).fit(LABELS)
    with pytest.raises(ValueError, match=r"labels not seen in fit: 'storm'"):
        e.predict_proba([["low", "storm"]])
    with pytest.raises(ValueError, match=r"'fog'.*'storm'"):
        e.score(np.array(["low", "storm", "fog", "mid"]))
    with pytest.raises(ValueError, match=r"X holds labels not seen in fit: 'snow'"):
        fit(LABELS, 2, restarts=1).predict_proba([["snow", "low"]])
    # a model fitted on codes does not accept labels
    g = MTD(2, restarts=1, random_state=0).fit(CODES)
    with pytest.raises(ValueError, match=r"\bX\b|contexts"):
        g.predict_proba([["low", "mid"]])


def test_lengths_design_matrix_and_lists_with_labels():
    classes, codes = by_hand(LABELS)
    a = MTD(2, restarts=2, random_state=0).fit(LABELS, lengths=[250, 350])
    b = MTD(2, restarts=2, random_state=0).fit(codes, lengths=[250, 350])
    c = MTD(2, restarts=2, random_state=0).fit([LABELS[:250], LABELS[250:]])
    assert a.loglik_ == b.loglik_ == c.loglik_
    n, m = LABELS.shape[0] - 2, 2
    x = np.stack([LABELS[i : i + n] for i in range(m)], axis=1)
    d = MTD(restarts=2, random_state=0).fit(x, LABELS[m:])  # design matrix of labels, y of labels
    xc = np.stack([codes[i : i + n] for i in range(m)], axis=1)
    e = MTD(restarts=2, random_state=0).fit(xc, codes[m:])
    assert list(d.classes_) == list(classes) and d.loglik_ == e.loglik_
    assert d.score(x, LABELS[m:]) == e.score(xc, codes[m:])


def test_select_order_and_select_lags_with_labels():
    _, codes = by_hand(LABELS)
    bl, tl = select_order(LABELS, 3, restarts=2, rng=0)
    bc, tc = select_order(codes, 3, restarts=2, rng=0)
    assert [r["loglik"] for r in tl] == [r["loglik"] for r in tc] and bl.model_.order == bc.model_.order
    assert list(bl.classes_) == ["high", "low", "mid"]
    sl, _ = select_lags(LABELS, 3, rng=0)
    sc, _ = select_lags(codes, 3, rng=0)
    assert sl.lags_ == sc.lags_ and sl.loglik_ == sc.loglik_ and list(sl.classes_) == ["high", "low", "mid"]


def test_integer_codes_are_untouched():
    g = MTD(2, restarts=1, random_state=0).fit(CODES)
    np.testing.assert_array_equal(g.classes_, np.arange(3))
    assert g.sample(5, random_state=0).dtype == np.int64 and g.predict(CODES[None, :2]).dtype == np.int64
    from mtdmath.fitting.symbols import encode

    out, classes = encode(CODES)
    assert out is CODES and classes is None  # no copy, no mapping


@pytest.mark.parametrize("data, match", [
    (np.array(["a", 1, "b", 2] * 5, dtype=object), r"sequences: labels must be mutually sortable"),
    (np.array(["a", None, "b", "a"] * 5, dtype=object), r"sequences holds a missing value"),
    (np.array(["a", float("nan"), "b", "a"] * 5, dtype=object), r"sequences holds a missing value"),
    ([object()] * 10, r"sequences: labels must be mutually sortable"),
])
def test_bad_labels_raise_naming_sequences(data, match):
    with pytest.raises(ValueError, match=match):
        fit(data, 1, restarts=1)


def test_bad_labels_for_the_estimator_name_x_and_n_symbols():
    with pytest.raises(ValueError, match=r"n_symbols = 5 disagrees with the 3 labels"):
        MTD(2, n_symbols=5).fit(LABELS)
    with pytest.raises(ValueError, match=r"\bX\b: labels must be mutually sortable"):
        MTD(1).fit(np.array(["a", 1, "b"] * 4, dtype=object))
    pd = pytest.importorskip("pandas")
    with pytest.raises(ValueError, match=r"\bX\b: the Categoricals have different categories"):
        MTD(1).fit([pd.Categorical(["a", "b"] * 5), pd.Categorical(["a", "c"] * 5)])
    with pytest.raises(ValueError, match=r"X\[0\] holds a missing value"):
        MTD(1).fit(pd.Categorical(["a", None, "b"] * 5))
    with pytest.raises(ValueError, match=r"\bX\b must hold integer"):
        MTD(1).fit(np.array([0.5, 1.5, 0.5]))  # floats are neither codes nor labels


@pytest.mark.parametrize("variant, words", [("shared", "shared pi"), ("lagwise", "lag-wise")])
def test_every_summary_names_the_variant_and_the_peer_model(variant, words):
    e = MTD(2, variant=variant, restarts=1, random_state=0).fit(LABELS)
    text = e.summary()
    assert f"variant={variant!r}" in text.replace(" = ", "=") and words in text
    assert f"variant={variant!r}" in repr(e)  # the estimator's repr shows the variant even at its default
    assert "mtdlearn's MTD is the lag-wise model" in text
    assert "'high', 'low', 'mid'" in text
