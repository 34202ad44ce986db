"""NumPy reference for every-prefix predictors (used by the torch tests).

The independent route for the all-prefix predictive on every backend and for :mod:`mtdmath.nn`: the NumPy
core applied one prefix at a time, with a Python loop over prefixes (nothing shared
with the vectorised all-prefix code).
"""
from __future__ import annotations

import numpy as np

import mtdmath


def numpy_prefix_md(tokens, pi, alpha, *, eta=None, steps=1):
    """k-step MD from the prior mean after every prefix, by the NumPy core.

    For each t = m-1 … T-1 (batched over b): ``C = lag_factors(y[:, :t+1], pi, m)``,
    ``lam = k_step_md(C, alpha, steps, eta=eta)``, ``p = predictive(lam, y[:, :t+1], pi)``.
    A callable ``eta`` is a per-prefix step: prefix t (with n = t+1-m transitions) uses the
    scalar or schedule ``eta(n)``.

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
        e = eta(t + 1 - m) if callable(eta) else eta
        lam[:, t - m + 1] = mtdmath.k_step_md(mtdmath.lag_factors(y, pi, m), alpha, steps, eta=e)
        probs[:, t - m + 1] = mtdmath.predictive(lam[:, t - m + 1], y, pi)
    return lam, probs


def md_well_conditioned(C, eta, steps, lam0=None, kappa=1e5):
    """Whether ``steps`` MD steps on C are well conditioned in float64, per batch element.

    True when every iterate before the last (as the NumPy core computes it) gives each
    transition a probability ``C[i]·lam > 0`` and has ``κ = η·max_g ∇ℓ_g <= kappa``. κ is the
    condition number of the step ``log lam⁺ = log lam + η∇ℓ - log Z``: a relative rounding
    error ε of ∇ℓ moves log lam⁺ by ~κε, so two correct float64 implementations agree to
    ~κ·1e-15 relative, and 1e-10 needs κ <= 1e5. Far beyond, mirror descent with a step far
    above 1/L collapses a weight to ``exp(-huge)`` and the next gradient ~ 1/lam overflows: the
    exact iterate is not representable (nor checkable with 60-digit mpmath). Returns a bool
    array of shape ``C.shape[:-2]`` (broadcast with lam0).
    """
    C = np.asarray(C, dtype=np.float64)
    m = C.shape[-1]
    lam0 = np.full(m, 1.0 / m) if lam0 is None else np.asarray(lam0, dtype=np.float64)
    ok = np.ones(np.broadcast_shapes(C.shape[:-2], lam0.shape[:-1]), dtype=bool)
    if C.shape[-2] == 0:
        return ok
    for k in range(steps):
        lam = mtdmath.mirror_descent(C, eta=eta, steps=k, lam0=lam0)  # (..., m)
        s = (C @ lam[..., :, None])[..., 0]  # (..., n)
        pos = np.all(s > 0, axis=-1)
        grad = (C / np.where(s > 0, s, 1.0)[..., None]).sum(axis=-2)
        ok &= pos & (eta * grad.max(axis=-1) <= kappa)
    return ok


def numpy_prefix_well_conditioned(tokens, pi, alpha, *, eta=None, steps=1, kappa=1e5):
    """:func:`md_well_conditioned` for every prefix of every sequence, shape (B, T-m+1)."""
    tokens = np.asarray(tokens)
    alpha = np.asarray(alpha, dtype=np.float64)
    m, (B, T) = alpha.shape[0], tokens.shape
    eta = mtdmath.eta_bayes(alpha) if eta is None else eta
    C = mtdmath.lag_factors(tokens, pi, m)  # (B, n, m); prefix r uses C[:, :r]
    mu = alpha / alpha.sum()
    return np.stack([md_well_conditioned(C[:, :r], eta, steps, mu, kappa) for r in range(T - m + 1)], axis=1)
