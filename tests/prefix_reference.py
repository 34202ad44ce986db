"""NumPy reference for every-prefix predictors (used by the torch tests).

The independent route for :mod:`mtdmath.torch_core` and :mod:`mtdmath.transformer`: the NumPy
core applied one prefix at a time, with a Python loop over prefixes (nothing shared
with the vectorised torch code).
"""
from __future__ import annotations

import numpy as np

import mtdmath as M


def numpy_prefix_md(tokens, pi, alpha, *, eta=None, steps=1):
    """k-step MD from the prior mean after every prefix, by the NumPy core.

    For each t = m-1 … T-1 (batched over b): ``C = lag_factors(y[:, :t+1], pi, m)``,
    ``lam = k_step_md(C, alpha, steps, eta=eta)``, ``p = predictive(lam, y[:, :t+1], pi)``.

    Returns
    -------
    lam : ndarray (B, T-m+1, m)
    probs : ndarray (B, T-m+1, S)
    """
    tokens = np.asarray(tokens)
    alpha = np.asarray(alpha, dtype=np.float64)
    m, (B, T), S = alpha.shape[0], tokens.shape, pi.shape[0]
    lam = np.empty((B, T - m + 1, m))
    probs = np.empty((B, T - m + 1, S))
    for t in range(m - 1, T):
        y = tokens[:, : t + 1]
        lam[:, t - m + 1] = M.k_step_md(M.lag_factors(y, pi, m), alpha, steps, eta=eta)
        probs[:, t - m + 1] = M.predictive(lam[:, t - m + 1], y, pi)
    return lam, probs
