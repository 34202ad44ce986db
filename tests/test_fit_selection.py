"""Lag-set search (select_lags) and order selection on simulated chains with known lags."""
from __future__ import annotations

import os

import numpy as np
import pytest

from mtdmath.fitting import MTDModel, select_lags
from mtdmath.fitting import MTD

slow = pytest.mark.skipif(os.environ.get("MTDMATH_SLOW") != "1", reason="slow: set MTDMATH_SLOW=1")
TRUE_LAGS = (1, 7, 24)


def chain(seed, n=100_000, W=30, S=3):
    rng = np.random.default_rng(100 + seed)
    pi = rng.dirichlet(np.full(S, 0.5), size=S)
    return MTDModel(pi, [0.4, 0.3, 0.3], lags=TRUE_LAGS).sample(n + W, rng=seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_forward_recovers_1_7_24_of_30(seed):
    best, table = select_lags(chain(seed), 30, rng=0)
    assert best.lags_ == TRUE_LAGS
    # the criterion of the chosen set is the smallest over every candidate fitted (independent of the path)
    assert best.bic() <= min(r["bic"] for r in table) + 1e-6 * abs(best.bic())
    # comparable likelihoods: every candidate fitted on the same transitions
    assert {r["n_obs"] for r in table} == {100_000.0} and best.n_obs_ == 100_000


def test_bic_method_recovers_and_table_is_consistent():
    best, table = select_lags(chain(2), 30, method="bic", rng=0)
    assert best.lags_ == TRUE_LAGS
    row = next(r for r in table if r["lags"] == TRUE_LAGS)
    # the table's entry was a screening fit (tol 1e-7); the refit agrees to that tolerance
    assert row["loglik"] == pytest.approx(best.loglik_, rel=1e-6)
    # BIC recomputed from its definition
    assert row["bic"] == pytest.approx(-2 * row["loglik"] + np.log(best.n_obs_) * row["n_params"])


def test_forward_stops_when_bic_does_not_improve():
    """An order-1 chain: forward search keeps a single lag, the true one."""
    rng = np.random.default_rng(0)
    y = MTDModel(rng.dirichlet(np.full(3, 0.5), size=3), [1.0]).sample(20_010, rng=1)
    best, table = select_lags(y, 10, rng=0)
    assert best.lags_ == (1,)
    # a wrong candidate set fitted directly has a larger BIC (the check can fail)
    wrong = MTD(lags=(1, 2), burn_in=10, restarts=2, random_state=0).fit(y)
    assert wrong.bic() > best.bic()


def test_select_lags_bad_input():
    y = chain(0, n=500, W=5)
    with pytest.raises(ValueError, match="method"):
        select_lags(y, 5, method="lasso")
    with pytest.raises(ValueError, match="max_lag"):
        select_lags(y, 0)
    with pytest.raises(ValueError, match="criterion"):
        select_lags(y, 5, criterion="hqic")


@slow
@pytest.mark.parametrize("method", ["forward", "bic"])
def test_recovery_every_seed_slow(method):
    for seed in range(10):
        assert select_lags(chain(seed), 30, method=method, rng=0)[0].lags_ == TRUE_LAGS, seed
