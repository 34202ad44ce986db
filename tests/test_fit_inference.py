"""Standard errors and confidence intervals of MTD fits.

- the exact Hessian against torch autograd on the raw transitions (independent route);
- the rank of the observed information against the identifiable parameter count;
- coverage of the 95 % intervals over 200 simulated data sets per setting (binomial test), with a
  deliberately wrong variant (standard errors halved) that the same test rejects;
- the parametric bootstrap against the observed-information intervals.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from mtdmath.fitting import MTDModel
from mtdmath.fitting import _coverage as COV
from mtdmath.fitting import TransitionCounts
from mtdmath.fitting._em import EM as _EM, Layout, init_random as _init_random
from mtdmath.fitting.mtd import MTD
from mtdmath.fitting.inference import hessian
from mtdmath.fitting.laws import mtd_n_params as _n_params


def torch_loglik(theta, y, lay, lags):
    """log-likelihood from the raw transitions in torch (no aggregation), theta in the layout of em.py."""
    K, S, k = lay.K, lay.S, lay.k
    M = max(lags)
    t = torch.arange(M, len(y))
    yt = torch.as_tensor(y)
    rows = theta[K:].reshape(-1, S)
    p = torch.zeros(len(t), dtype=theta.dtype)
    for j, l in enumerate(lags):
        base = j * S if lay.variant == "lagwise" else 0
        p = p + theta[j] * rows[base + yt[t - l], yt[t]]
    if lay.independent:
        p = p + theta[k] * rows[-1, yt[t]]
    return torch.log(p).sum()


@pytest.mark.parametrize("variant,independent", [("shared", False), ("lagwise", False), ("shared", True),
                                                 ("lagwise", True)])
def test_hessian_equals_autograd(variant, independent):
    lags = (1, 3)
    rng = np.random.default_rng(4)
    true = MTDModel(rng.dirichlet(np.ones(3), size=3), [0.7, 0.3], lags=lags)
    y = true.sample(400, rng=5)
    data = TransitionCounts.from_sequences(y, lags=lags, n_symbols=3)
    lay = Layout(3, 2, variant, independent)
    em = _EM(data, lay)
    theta = _init_random(lay, rng)
    H = hessian(em, theta)
    Ht = torch.autograd.functional.hessian(lambda th: torch_loglik(th, y, lay, lags),
                                           torch.as_tensor(theta)).numpy()
    # both are sums of ~400 terms of size up to 1/min(s)^2: agreement to 1e-10 relative is rounding
    np.testing.assert_allclose(H, Ht, rtol=1e-10, atol=1e-10 * np.abs(Ht).max())


@pytest.mark.parametrize("variant", ["shared", "lagwise"])
def test_information_rank_is_the_identifiable_count(variant):
    """rank(I) = generic identifiable count (_n_params, itself checked against a Jacobian rank in test_fit);
    a lag-wise model's single lam_j is not estimable (se = inf) while its next-token law is."""
    st = dict(COV.SETTINGS[variant])
    true = COV.true_model(st)
    y = true.sample(3002, rng=1)
    est = MTD(lags=st["lags"], variant=variant, restarts=3, random_state=0).fit(y)
    inf, lay, theta = est._inference()
    assert inf.rank == _n_params(3, 2, variant, False)
    se = est.standard_errors()
    if variant == "shared":
        assert inf.identified and np.all(np.isfinite(se["lam"])) and np.all(np.isfinite(se["pi"]))
    else:
        assert not inf.identified and np.all(np.isinf(se["lam"]))
        lo, hi = est.confidence_intervals()["lam"]
        np.testing.assert_array_equal(lo, 0.0)
        np.testing.assert_array_equal(hi, 1.0)
    p, lo, hi = est.predict_proba_interval(COV.CONTEXTS)
    assert np.all(lo < p) and np.all(p < hi) and np.all(hi - lo < 0.2)


def test_lagwise_nonidentified_direction_is_flat():
    """The reason a lag-wise lam_j has infinite se: moving along lam_j pi_j -> lam_j pi_j + 1 c^T (and the
    opposite for another lag) changes lam but not one conditional probability."""
    rng = np.random.default_rng(0)
    pi = rng.dirichlet(np.full(3, 4.0), size=(2, 3))
    lam = np.array([0.6, 0.4])
    c = np.array([0.02, 0.01, 0.03])
    prod = lam[:, None, None] * pi
    prod[0] += c
    prod[1] -= c
    lam2 = prod.sum(axis=2)[:, 0]
    m1, m2 = MTDModel(pi, lam), MTDModel(prod / lam2[:, None, None], lam2)
    ctx = np.array([[a, b] for a in range(3) for b in range(3)])
    np.testing.assert_allclose(m1.predict_proba(ctx), m2.predict_proba(ctx), rtol=1e-13)
    assert abs(lam2[0] - lam[0]) > 0.05


def _binom_ok(covered, n, level, n_targets):
    # Bonferroni over the targets of a setting: each binomial test at 0.01 / n_targets
    return all(binomtest(int(h), n, level).pvalue > 0.01 / n_targets for h in covered)


@pytest.mark.parametrize("setting", ["shared", "lagwise"])
def test_coverage_200_data_sets(setting):
    """95 % Wald intervals cover at a rate consistent with 95 % (per-target binomial test, p > 0.01
    Bonferroni-corrected over the ~10 targets of a setting). 200 data sets of n = 3000: ~2 s."""
    r = COV.run(setting, 200, seed=0)
    assert _binom_ok(r["covered"], 200, 0.95, len(r["covered"])), r["coverage"]


def test_coverage_check_rejects_halved_standard_errors(monkeypatch):
    """The deliberately wrong case: with every standard error halved the intervals cover ~68 %, and the
    same binomial check fails."""
    import mtdmath.fitting.inference as INF

    orig = INF.Inference.se_sparse
    monkeypatch.setattr(INF.Inference, "se_sparse", lambda self, i, v: 0.5 * orig(self, i, v))
    r = COV.run("shared", 200, seed=0)
    assert not _binom_ok(r["covered"], 200, 0.95, len(r["covered"]))


def test_bootstrap_intervals_agree_with_observed_information():
    """Percentile bootstrap (100 refits) vs Wald widths: the bootstrap sd estimate has ~7 % relative error
    at 100 draws (1/sqrt(2*100)), the percentile interval another few %; ratios must lie in [0.7, 1.4]."""
    st = COV.SETTINGS["shared"]
    y = COV.true_model(st).sample(3002, rng=3)
    est = MTD(lags=st["lags"], restarts=2, random_state=0).fit(y)
    obs = est.confidence_intervals()
    boot = est.confidence_intervals(method="bootstrap", n_boot=100, random_state=1)
    for key in ("lam", "pi"):
        w_obs = obs[key][1] - obs[key][0]
        w_boot = boot[key][1] - boot[key][0]
        ratio = w_boot / w_obs
        assert np.all((ratio > 0.7) & (ratio < 1.4)), (key, ratio)
        assert np.all(boot[key][0] <= getattr(est, key + "_")) and np.all(getattr(est, key + "_") <= boot[key][1])
