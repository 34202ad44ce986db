"""The MTD model (MATH.md §1): random transition matrices, sampling, lag factors, predictive law."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _validate as V


def random_transition_matrix(S: int, *, concentration: float = 1.0, rng: Any = None) -> np.ndarray:
    """A random row-stochastic matrix whose rows are i.i.d. Dirichlet(concentration · 1_S).

    Parameters
    ----------
    S : int
        Vocabulary size, ``S >= 1``.
    concentration : float
        Dirichlet concentration β > 0 of every row (MATH.md §1: rows ~ Dirichlet(β·1_S)).
    rng : Generator, int or None
        Seed or generator (``numpy.random.default_rng`` semantics).

    Returns
    -------
    pi : ndarray, shape (S, S)
        ``pi[a, b] = P(next = b | source token a)``; rows sum to 1.
    """
    S = V.check_int(S, "S", minimum=1)
    concentration = V.check_float(concentration, "concentration", positive=True)
    gen = V.as_rng(rng)
    pi = gen.dirichlet(np.full(S, concentration), size=S)
    # renormalise: Dirichlet draws sum to 1 only up to rounding
    return pi / pi.sum(axis=1, keepdims=True)


def sample(pi: Any, lam: Any, T: int, *, rng: Any = None, init: Any = None) -> np.ndarray:
    """Sample MTD sequences: ``P(y[t] = b | y[:t]) = Σ_g lam[g-1] · pi[y[t-g], b]`` for t >= m.

    The latent lag ``Z_t ~ Categorical(lam)`` is drawn, then ``y[t] ~ pi[y[t - Z_t], :]``.

    Parameters
    ----------
    pi : array_like, shape (S, S)
        Row-stochastic transition matrix.
    lam : array_like, shape (m,) or (B, m)
        Lag weights on the simplex (one per sequence when 2-D).
    T : int
        Sequence length, ``T >= m``.
    rng : Generator, int or None
    init : array_like, shape (S,), optional
        Law of each of the first m tokens (i.i.d.); default uniform.

    Returns
    -------
    tokens : ndarray of int64, shape ``lam.shape[:-1] + (T,)``
    """
    pi = V.check_pi(pi, "pi")
    S = pi.shape[0]
    lam = V.check_lam(lam, "lam")
    if lam.ndim > 2:
        raise ValueError(f"lam must have shape (m,) or (B, m) (got shape {lam.shape})")
    m = lam.shape[-1]
    T = V.check_int(T, "T", minimum=m)
    init = np.full(S, 1.0 / S) if init is None else V.check_prob_vector(init, "init", S)
    if init.ndim != 1:
        raise ValueError(f"init must be a length-S vector (got shape {init.shape})")
    gen = V.as_rng(rng)

    batch_shape = lam.shape[:-1]
    lam2 = lam.reshape(-1, m)  # (B, m)
    B = lam2.shape[0]
    y = np.empty((B, T), dtype=np.int64)
    # first m tokens i.i.d. from init (inverse-CDF draws)
    y[:, :m] = _inverse_cdf(np.cumsum(init)[None, :], gen.random((B, m)))
    lam_cdf = np.cumsum(lam2, axis=1)  # (B, m)
    pi_cdf = np.cumsum(pi, axis=1)  # (S, S)
    rows = np.arange(B)
    for t in range(m, T):  # sampling is sequential in time by nature; vectorised over the batch
        g = _inverse_cdf(lam_cdf, gen.random((B, 1)))[:, 0]  # latent lag index g-1, (B,)
        src = y[rows, t - 1 - g]  # the source token y[t - Z_t]
        y[:, t] = _inverse_cdf(pi_cdf[src], gen.random((B, 1)))[:, 0]
    return y.reshape(batch_shape + (T,))


def _inverse_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index of the first cdf entry exceeding u, per row; cdf (R, K), u (R, L) -> (R, L)."""
    # rounding can leave cdf[-1] slightly off 1: dividing by it makes every trailing
    # zero-mass category's cdf exactly 1 > u, so a zero-probability category is never drawn
    cdf = cdf / cdf[:, -1:]
    return (u[:, :, None] >= cdf[:, None, :]).sum(axis=-1)


def sample_icl(pi: Any, alpha: Any, T: int, batch: int, *, rng: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The in-context task (MATH.md §1): fixed pi, per-sequence ``lam ~ Dirichlet(alpha)``.

    Returns
    -------
    tokens : ndarray of int64, shape (batch, T)
    lam : ndarray, shape (batch, m)
        The latent lag weights of each sequence (never shown to a predictor).
    """
    pi = V.check_pi(pi, "pi")
    alpha = V.check_alpha(alpha, "alpha")
    batch = V.check_int(batch, "batch", minimum=1)
    T = V.check_int(T, "T", minimum=alpha.shape[0])
    gen = V.as_rng(rng)
    lam = gen.dirichlet(alpha, size=batch)
    lam = lam / lam.sum(axis=1, keepdims=True)
    return sample(pi, lam, T, rng=gen), lam


def lag_factors(tokens: Any, pi: Any, m: int) -> np.ndarray:
    """Lag factors ``C[..., i, g-1] = pi[y[m+i-g], y[m+i]]`` (MATH.md §2).

    Parameters
    ----------
    tokens : array_like of int, shape (..., T), T >= m
    pi : array_like, shape (S, S)
    m : int
        Order, ``m >= 1``.

    Returns
    -------
    C : ndarray, shape (..., T - m, m)
        Row i is transition i (into position m + i); column g-1 is lag g.
    """
    m = V.check_int(m, "m", minimum=1)
    pi = V.check_pi(pi, "pi")
    y = V.check_tokens(tokens, pi.shape[0], m, "tokens")
    T = y.shape[-1]
    n = T - m
    # source positions m+i-g for i < n, g = 1..m: shape (n, m)
    src_pos = m + np.arange(n)[:, None] - np.arange(1, m + 1)[None, :]
    src = y[..., src_pos]  # (..., n, m)
    tgt = y[..., m:, None]  # (..., n, 1)
    return pi[src, tgt]


def predictive(lam: Any, tokens: Any, pi: Any) -> np.ndarray:
    """Next-token law after ``tokens``: ``p[b] = Σ_g lam[g-1] · pi[y[T-g], b]``.

    Parameters
    ----------
    lam : array_like, shape (..., m)
        Lag weights; broadcasts against the batch shape of ``tokens``.
    tokens : array_like of int, shape (..., T), T >= m
    pi : array_like, shape (S, S)

    Returns
    -------
    p : ndarray, shape (broadcast batch..., S)
    """
    pi = V.check_pi(pi, "pi")
    lam = V.check_lam(lam, "lam")
    m = lam.shape[-1]
    y = V.check_tokens(tokens, pi.shape[0], m, "tokens")
    T = y.shape[-1]
    last = y[..., T - np.arange(1, m + 1)]  # (..., m): y[T-1], ..., y[T-m] = lag 1..m
    rows = pi[last]  # (..., m, S)
    return np.einsum("...g,...gs->...s", lam, rows)
