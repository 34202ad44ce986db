"""The padded, chunked layout of the exact posterior recursion (mtdmath.bayes) against a plain dict recursion.

tests/test_bayes.py checks the posterior against quadrature (m = 2) and brute-force enumeration
(m^n lag assignments, so n <= 6). The fast recursion of mtdmath.bayes stores the count states in
a padded 2-D layout processed in chunks, with row gathers for m >= 4 and a row shift for m = 3;
those code paths only engage at larger n. Here the reference is the Pólya-urn recursion of
docs/math.md §4 written the obvious way — a Python dict from count tuples to weights, pushing each
state to its m children — which shares no code or indexing with the library, at n up to 60.
The chunking is also forced down to single groups (``_CHUNK_MIN_CELLS = 1``) so that every
chunk boundary case runs.

Tolerance: both sides sum the same nonnegative terms in a different order and with a different
rescaling, so they agree to a few ulps per step; rtol 1e-11 leaves room for n <= 60 steps of
rounding (~60 · 1e-16 · small constants) while any indexing error (a wrong parent, a factor
off by one) changes the result at the percent level.
"""
from collections import defaultdict
from math import log

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mtdmath
import mtdmath.bayes as BY
from strategies import alphas, lag_factor_arrays


def dict_recursion(C, alpha):
    """Posterior mean and log evidence by a dict over count tuples (docs/math.md §4, pushed forward)."""
    n, m = C.shape
    a0 = float(np.sum(alpha))
    W = {(0,) * m: 1.0}
    log_scale = 0.0
    for i in range(n):
        new = defaultdict(float)
        for k, w in W.items():
            for g in range(m):
                if C[i, g] > 0:
                    child = k[:g] + (k[g] + 1,) + k[g + 1:]
                    # the child's (alpha_g + k_g - 1) is the parent's alpha_g + k_g
                    new[child] += w * C[i, g] * (alpha[g] + k[g])
        top = max(new.values())
        log_scale += log(top) - log(a0 + i)
        W = {k: v / top for k, v in new.items()}
    tot = sum(W.values())
    mean = np.zeros(m)
    for k, w in W.items():
        mean += w * (alpha + np.array(k))
    return mean / ((a0 + n) * tot), log(tot) + log_scale


CASES = [(2, 60), (3, 60), (3, 9), (4, 30), (5, 18), (6, 10)]


@pytest.mark.parametrize("min_cells", [1, BY._CHUNK_MIN_CELLS])
@pytest.mark.parametrize("m,n", CASES)
def test_layout_matches_dict_recursion(m, n, min_cells, monkeypatch):
    monkeypatch.setattr(BY, "_CHUNK_MIN_CELLS", min_cells)
    BY._layout.cache_clear()  # plans are cached with the layout
    try:
        rng = np.random.default_rng(100 * m + n)
        C = rng.random((2, n, m))
        C = np.where(rng.random(C.shape) < 0.2, 1e-12 * rng.random(C.shape), C)  # near-zero factors
        C = np.where(rng.random(C.shape) < 0.15, 0.0, C)  # impossible lags
        C[..., rng.integers(0, m)] += 1e-3  # every transition stays possible
        alpha = np.exp(rng.uniform(np.log(0.1), np.log(20.0), size=m))
        post, le = mtdmath.posterior_mean(C, alpha), mtdmath.log_evidence(C, alpha)
        for b in range(2):
            ref_mean, ref_le = dict_recursion(C[b], alpha)
            np.testing.assert_allclose(post[b], ref_mean, rtol=1e-11)
            np.testing.assert_allclose(le[b], ref_le, rtol=1e-11)
    finally:
        BY._layout.cache_clear()


@settings(max_examples=25)
@given(
    st.integers(2, 6).flatmap(
        lambda m: st.tuples(
            lag_factor_arrays(m=m, batch=(), n=st.integers(0, {2: 40, 3: 30, 4: 16, 5: 10, 6: 8}[m])),
            alphas(m=m),
        )
    )
)
def test_layout_matches_dict_recursion_property(case):
    C, alpha = case
    ref_mean, ref_le = dict_recursion(C, alpha)
    np.testing.assert_allclose(mtdmath.posterior_mean(C, alpha), ref_mean, rtol=1e-11)
    np.testing.assert_allclose(mtdmath.log_evidence(C, alpha), ref_le, rtol=1e-11, atol=1e-12)


def test_chunk_plans_cover_every_state_once():
    """The chunks of each level are disjoint row ranges that cover every state of the level."""
    for m, n in [(3, 40), (4, 25), (5, 12)]:
        lay = BY._layout(n, m)
        for L in range(1, n + 1):
            covered = np.zeros((lay.R, n + 1), dtype=int)
            for r0, r1, w in lay.plan(L):
                covered[r0:r1, :w] += 1
            # states of level L: rows with prefix sum ps <= L and column c <= L - ps
            is_state = np.arange(n + 1)[None, :] <= (L - lay.ps)[:, None]
            assert covered.max() <= 1
            assert np.all(covered[is_state] == 1)
            assert is_state.sum() == mtdmath.n_count_states(L, m)
