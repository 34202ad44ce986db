"""Standard errors and intervals on the identified face (docs/math.md §12).

- a declared but unused state changes nothing (integer codes and a pandas Categorical), and costs nothing;
- the dense work is refused before allocation above the budget;
- the sparse delta method against a dense gradient from torch autograd (independent route), also chunked;
- lag-wise sparse fits get finite intervals that cover the truth;
- the boundary case lam = (0.9, 0.1), Dirichlet(0.5) rows reaches 95 % coverage within two standard errors.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mtdmath import _validate
from mtdmath.fitting import MTDModel
from mtdmath.fitting import _coverage as COV
from mtdmath.fitting import inference as INF
from mtdmath.fitting.mtd import MTD

P3 = np.array([[.7, .2, .1], [.1, .6, .3], [.25, .25, .5]])


@pytest.fixture(scope="module")
def chain():
    return MTDModel(P3, [1.]).sample(400, rng=1)


def test_unused_state_changes_nothing(chain):
    se3 = MTD(1, n_symbols=3).fit(chain).standard_errors()["pi"]
    est4 = MTD(1, n_symbols=4).fit(chain)
    se4 = est4.standard_errors()["pi"]
    # an order-1 chain's MLE is the row frequencies (EM's first step), the same floats for S = 3 and 4; the
    # Hessians sum the same terms: agreement to rounding
    np.testing.assert_allclose(se4[:3, :3], se3, rtol=1e-12)
    assert se3[0, 0] == pytest.approx(0.0445, abs=5e-5)  # multinomial sqrt(p (1 - p) / n_a), p = 74/119
    np.testing.assert_array_equal(se4[:3, 3], 0.0)  # never observed: held at 0 on the boundary
    assert np.all(np.isinf(se4[3]))  # a row no transition uses is not identified
    lo, hi = est4.confidence_intervals()["pi"]
    assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))
    # the unobserved next state's upper end: Wilson at 0 with the row count n_a, z^2 / (n_a + z^2) > 0
    n_a = np.bincount(chain[:-1], minlength=4)[:3]
    np.testing.assert_allclose(hi[:3, 3], 1.959963984540054**2 / (n_a + 1.959963984540054**2), rtol=1e-12)
    np.testing.assert_array_equal(lo[3], 0.0)
    np.testing.assert_array_equal(hi[3], 1.0)
    # through a pandas Categorical with an unused category: the same numbers
    lab = pd.Series(pd.Categorical(np.array(list("abc"))[chain], categories=list("abcd")))
    se_cat = MTD(1).fit(lab).standard_errors()["pi"]
    np.testing.assert_allclose(se_cat, se4, rtol=1e-12)


def test_multinomial_standard_error_is_exact(chain):
    """Independent route: for a first-order chain the observed information is the multinomial one, so the
    standard error of pi[a, b] is sqrt(p (1 - p) / n_a) with p the row frequency; the old tangent through an
    unused state gave sqrt(p^2 / n_ab) (1 / (1 - p) too much variance) — the deliberately wrong candidate."""
    est = MTD(1, n_symbols=5).fit(chain)
    C = np.zeros((3, 3))
    np.add.at(C, (chain[:-1], chain[1:]), 1.0)
    n_a = C.sum(axis=1, keepdims=True)
    p = C / n_a
    want = np.sqrt(p * (1 - p) / n_a)
    got = est.standard_errors()["pi"][:3, :3]
    np.testing.assert_allclose(got, want, rtol=1e-10)  # exact formula; rounding of a 3x3 eigensolve
    assert not np.allclose(got, np.sqrt(p * p / C), rtol=1e-2)


def test_many_declared_states_cost_only_the_used_ones(chain, monkeypatch):
    est = MTD(1, n_symbols=400).fit(chain)
    inf, _, _ = est._inference()
    assert inf.cov.shape == (10, 10)  # lam (1) + the 3 used rows x 3 observed next states
    se = est.standard_errors()["pi"]
    np.testing.assert_allclose(se[:3, :3], MTD(1, n_symbols=3).fit(chain).standard_errors()["pi"], rtol=1e-12)
    # refused before the dense allocation, naming the public method and the GiB
    est2 = MTD(1, n_symbols=6).fit(chain)
    # 4000 bytes: enough for the fit's own (S, S) check (8 x 36 x 8 = 2304 bytes), not for the 8 dense
    # (10, 10) float64 arrays of the information (6400 bytes)
    monkeypatch.setattr(_validate, "MAX_ALLOC_BYTES", 4000)
    with pytest.raises(ValueError, match="standard_errors: the observed information .* GiB"):
        est2.standard_errors()


def _dense_se(inf, est, ctx):
    """se of P(b | ctx) through a dense gradient from torch autograd of the model's formula."""
    lay, theta = inf.lay, inf.theta
    th = torch.tensor(theta, requires_grad=True)
    K, S = lay.K, lay.S
    out = np.empty(S)
    for b in range(S):
        p = 0.0
        for j, l in enumerate(est.lags_):
            off = K + (j * S * S if lay.variant == "lagwise" else 0)
            p = p + th[j] * th[off + int(ctx[-l]) * S + b]
        (g,) = torch.autograd.grad(p, th)
        out[b] = inf.se_of(g.numpy())
    return out


@pytest.mark.parametrize("variant", ["shared", "lagwise"])
def test_predictive_se_matches_dense_autograd_gradient_and_chunks(variant, monkeypatch):
    st = COV.SETTINGS["sparse_lagwise"]
    y = COV.true_model(dict(st, variant=variant)).sample(3002, rng=2)
    est = MTD(lags=(1, 2), variant=variant, restarts=2, random_state=0, n_symbols=3).fit(y)
    inf, _, _ = est._inference()
    ctx = np.array([[a, b] for a in range(3) for b in range(3)])
    p, lo, hi = est.predict_proba_interval(ctx)
    z = 1.959963984540054
    for i, c in enumerate(ctx):
        se = _dense_se(inf, est, c)
        pos = se > 0
        # the same quadratic form through a dense gradient: rounding only
        np.testing.assert_allclose(hi[i][pos], np.minimum(p[i][pos] + z * se[pos], 1.0), rtol=1e-9)
    # chunked into single contexts: the same numbers
    monkeypatch.setattr(INF, "CHUNK_BYTES", 1)
    _, lo1, hi1 = est.predict_proba_interval(ctx)
    np.testing.assert_array_equal(lo1, lo)
    np.testing.assert_array_equal(hi1, hi)


def test_lagwise_sparse_intervals_are_finite_and_cover():
    """Rows ~ Dirichlet(0.2): each of the 9 next-token probabilities of the coverage setting is covered at a
    rate consistent with 95 % (binomial p > 0.01 / 9, Bonferroni), 200 fits; and on 8 random sparse truths
    (S = 4) every interval at a context of visited states is finite (not [0, 1]). Before the boundary
    entries were held at 0, 12 % of them were (measured on 20 such truths)."""
    r = COV.run("sparse_lagwise", 200, seed=0)
    from scipy.stats import binomtest

    assert all(binomtest(h, 200, 0.95).pvalue > 0.01 / len(r["covered"]) for h in r["covered"]), r["coverage"]
    rng = np.random.default_rng(0)
    S = 4
    for _ in range(8):
        true = MTDModel(rng.dirichlet(np.full(S, 0.2), size=(2, S)), [0.6, 0.4])
        y = true.sample(3002, rng=rng)
        est = MTD(2, variant="lagwise", restarts=2, random_state=0, n_symbols=S).fit(y)
        seen = np.unique(y[:-2])  # states that occur as a context at both lags
        ctx = np.array([[a, b] for a in seen for b in seen])
        _, lo, hi = est.predict_proba_interval(ctx)
        assert np.all(hi - lo < 1.0) and np.all(np.isfinite(lo + hi))


def test_boundary_lag_weight_coverage_within_two_standard_errors():
    """lam = (0.9, 0.1), S = 5, rows ~ Dirichlet(0.5) (some entries ~1e-4): 400 fits (about 10 s). The 95 %
    intervals of lam[0] must cover within two binomial standard errors of 0.95, 2 sqrt(0.95 0.05 / 400) =
    0.022, the criterion of a calibrated interval at this replicate count (seeded: the test is deterministic).
    Before the boundary entries were held at 0 the coverage was 0.978 (measured, same seed): outside."""
    n = 400
    r = COV.run("boundary", n, seed=0)
    c = r["coverage"][0]
    assert abs(c - 0.95) <= 2 * np.sqrt(0.95 * 0.05 / n), c


def test_predict_proba_interval_many_contexts_is_chunked():
    """2e5 contexts x S = 30: the dense (n, S, d) gradient used to need 40+ GiB; the chunked sparse route
    holds at most CHUNK_BYTES of gathered covariance at a time."""
    rng = np.random.default_rng(0)
    S = 30
    y = MTDModel(rng.dirichlet(np.ones(S), size=(2, S)), [0.6, 0.4]).sample(20_000, rng=1)
    est = MTD(2, variant="lagwise", restarts=1, random_state=0, n_symbols=S).fit(y)
    X = rng.integers(0, S, size=(200_000, 2))
    p, lo, hi = est.predict_proba_interval(X)
    assert p.shape == lo.shape == hi.shape == (200_000, S)
    assert np.all((lo <= p) & (p <= hi)) and np.all(np.isfinite(lo + hi))
