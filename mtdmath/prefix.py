"""The k-step MD predictive law after every prefix of a batch of sequences, vectorised in NumPy.

The NumPy twin of :func:`mtdmath.torch_core.md_predictive_all_prefixes` (same arguments, same
rows), built from the formulas of MATH.md §3 and §5:

- row r (r = 0..T-m) is the prefix ``y[:m+r]`` (position ``t = m-1+r``), whose transitions are
  ``i = 0..r-1``; its lag weights are k MD steps from the prior mean μ on ``C[:r]``;
- the one-step weights need only the *cumulative* responsibilities under μ,
  ``lam¹_r = softmax(log μ + η G_r/μ)`` with ``G_r = Σ_{i<r} γ_i`` (the aggregation layer of §5):
  ``η G_r/μ = η Σ_{i<r} C[i]/s_i(μ)``, an exclusive cumulative sum — O(B·T·m) for all prefixes;
- the predictive is ``p_r = Σ_g lam_r[g-1] · pi[y[t+1-g], :]``. It is formed as the product of a
  sparse (rows x S) matrix holding the weight of each source token (``np.bincount``) with pi, so
  the (rows, m, S) array of gathered rows of pi is never built.

For k >= 2 every prefix carries its own iterate, so each step costs O(B·T²·m) (prefixes are
processed in chunks that bound the memory).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _validate as V
from .estimators import _eg_update, _log, _logsumexp, _normalise_log, eta_bayes

__all__ = ["md_predictive_all_prefixes"]

#: upper bound on the elements of the (batch, prefixes, n, m) work array of a k >= 2 step
_CHUNK_ELEMENTS = 1 << 22


def md_predictive_all_prefixes(tokens: Any, pi: Any, alpha: Any, eta: float | None = None,
                               steps: int = 1) -> np.ndarray:
    """The k-step MD predictive law of the next token after every prefix (NumPy, float64).

    Parameters
    ----------
    tokens : array_like of int, shape (..., T), T >= m
    pi : array_like, shape (S, S)
        Row-stochastic transition matrix.
    alpha : array_like, shape (m,)
        Dirichlet prior of lam; ``m = len(alpha)``, ``μ = alpha / α₀``.
    eta : float, optional
        Step size ``>= 0``; default ``η* = 1/(1+α₀)`` (:func:`mtdmath.eta_bayes`).
    steps : int
        Number of MD steps ``k >= 0`` from μ (0: the prior predictive at every prefix).

    Returns
    -------
    p : ndarray, shape (..., T-m+1, S)
        Row r is the law of ``y[m+r]`` given ``y[:m+r]`` (the last row predicts beyond the
        sequence); equal to ``predictive(k_step_md(lag_factors(y[:m+r], pi, m), alpha, k), y[:m+r], pi)``.

    Raises
    ------
    ValueError
        For bad arguments, or if a transition of ``tokens`` has probability 0 under every lag.
    """
    alpha = V.check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    eta = eta_bayes(alpha) if eta is None else V.check_float(eta, "eta", nonnegative=True)
    steps = V.check_int(steps, "steps", minimum=0)
    pi = V.check_pi(pi, "pi")
    S = pi.shape[0]
    y = V.check_tokens(tokens, S, m, "tokens")
    batch, T = y.shape[:-1], y.shape[-1]
    n = T - m
    y = y.reshape((-1, T))
    B = y.shape[0]
    mu = alpha / alpha.sum()

    # lag factors, one (B, n) plane per lag: C_g[:, i] = pi[y[m+i-g], y[m+i]] (MATH.md §2)
    flat = pi.ravel()
    tgt = y[:, m:]
    C = np.stack([flat[y[:, m - g: T - g] * S + tgt] for g in range(1, m + 1)])  # (m, B, n)
    s = np.tensordot(mu, C, axes=1)  # (B, n): s_i(μ) = C[i]·μ
    if n and np.any(s == 0):
        raise ValueError("tokens contain a transition with probability 0 under every lag of pi: "
                         "the data are impossible under pi")

    if steps == 0:
        lam = np.broadcast_to(mu[:, None, None], (m, B, n + 1))
    elif steps == 1:
        # η G_r/μ = η Σ_{i<r} C[i]/s_i(μ) = η ∇ℓ(μ) on the prefix: an exclusive cumulative sum
        z = np.empty((m, B, n + 1))
        z[:, :, 0] = 0.0
        np.cumsum(C / s, axis=2, out=z[:, :, 1:])
        z *= eta
        z += np.log(mu)[:, None, None]
        lam = _softmax0(z)  # (m, B, n+1)
    else:
        lam = np.exp(_all_prefix_md(_log(np.moveaxis(C, 0, -1)), np.log(mu), eta, steps))  # (B, n+1, m)
        lam = np.moveaxis(lam, -1, 0)

    # p_r = Σ_g lam_r[g-1] pi[y[m-1+r+1-g]]: the weights of the source tokens (rows x S, at most
    # m nonzeros per row, summed where two lags see the same token), times pi
    rows = np.arange(B * (n + 1)).reshape(B, n + 1) * S
    idx = np.stack([rows + y[:, m - g: T + 1 - g] for g in range(1, m + 1)])  # (m, B, n+1)
    weights = np.bincount(idx.ravel(), weights=np.ascontiguousarray(lam).ravel(), minlength=B * (n + 1) * S)
    p = weights.reshape(B * (n + 1), S) @ pi
    return p.reshape(batch + (n + 1, S))


def _softmax0(z: np.ndarray) -> np.ndarray:
    """Softmax over the first axis (the lags), in place on z."""
    z -= z.max(axis=0)
    np.exp(z, out=z)
    z /= z.sum(axis=0)
    return z


def _all_prefix_md(logC: np.ndarray, log_mu: np.ndarray, eta: float, steps: int) -> np.ndarray:
    """k >= 2 MD steps from μ for every prefix r = 0..n of logC (B, n, m); returns log lam (B, n+1, m).

    Per step and chunk of prefixes [a, b): ``log s[r, i] = logsumexp_g(log C[i,g] + log lam_r[g])``
    for i < b-1, then ``log ∇ℓ_r = logsumexp_{i<r}(log C[i] - log s[r, i])`` (terms i >= r are
    -inf), and the step ``log lam_r⁺ = log_softmax(log lam_r + η ∇ℓ_r)`` (MATH.md §3).
    """
    B, n, m = logC.shape
    loglam = np.broadcast_to(log_mu, (B, n + 1, m)).copy()  # row 0 stays μ (n = 0 convention)
    if n == 0:
        return loglam
    chunk = max(1, _CHUNK_ELEMENTS // max(1, B * n * m))
    for _ in range(steps):
        new = loglam.copy()
        for a in range(1, n + 1, chunk):
            b = min(n + 1, a + chunk)
            lC = logC[:, None, : b - 1, :]  # (B, 1, b-1, m)
            ll = loglam[:, a:b, None, :]  # (B, R, 1, m)
            log_s = _logsumexp(lC + ll, axis=-1)  # (B, R, b-1)
            used = np.arange(b - 1)[None, :] < np.arange(a, b)[:, None]  # (R, b-1): i < r
            with np.errstate(invalid="ignore"):
                terms = np.where(used[None, :, :, None], lC - log_s[..., None], -np.inf)  # (B, R, b-1, m)
            new[:, a:b, :] = _eg_step(loglam[:, a:b, :], _logsumexp(terms, axis=-2), eta)
        loglam = new
    return loglam


def _eg_step(loglam: np.ndarray, log_grad: np.ndarray, eta: float) -> np.ndarray:
    """``log_softmax(log lam + η exp(log_grad))`` (MATH.md §3), exact when the step overflows
    (see :func:`mtdmath.estimators._eg_update`)."""
    if eta == 0:
        return _normalise_log(loglam)
    return _eg_update(loglam, np.log(eta) + log_grad)
