"""The exact Bayes posterior over lam (MATH.md §4) and its Monte Carlo fallback.

``Π_i (C[i]·lam)`` is a polynomial in lam whose monomials ``lam^k`` are indexed by count vectors
k with ``|k| = n``. Under a Dirichlet(alpha) prior the posterior is a finite mixture of
Dirichlet(alpha + k), computed by the Pólya-urn forward recursion over count states:

- ``W_0[0] = 1``; ``W_{i+1}[k] = Σ_g W_i[k - e_g] · C[i,g] · (alpha_g + k_g - 1)``
- ``E[lam_g | y] = Σ_k W_n[k] (alpha_g + k_g) / ((α₀ + n) Σ_k W_n[k])``
- ``log p(y | pi, alpha) = log Σ_k W_n[k] - log (α₀)^(n)`` (rising factorial)

All terms are nonnegative, so there is no cancellation; W is rescaled at every step and the
log scale is kept. The count states of level t (``binom(t+m-1, m-1)`` of them) are stored densely
in lexicographic order and addressed by a closed-form combinatorial rank.
"""
from __future__ import annotations

from functools import lru_cache
from math import comb
from typing import Any

import numpy as np

from . import _validate as V
from .estimators import _logsumexp

#: default memory budget (bytes) of the exact recursion; above it posterior_mean raises
DEFAULT_MAX_BYTES = 2 * 2**30


def n_states(n: int, m: int) -> int:
    """Number of count vectors k in N^m with |k| = n: ``binom(n+m-1, m-1)``."""
    return comb(n + m - 1, m - 1)


@lru_cache(maxsize=8)
def _binom_table(N: int, m: int) -> np.ndarray:
    """``B[a, r] = binom(a, r)`` for a <= N, r <= m, as int64."""
    B = np.zeros((N + 1, m + 1), dtype=np.int64)
    for a in range(N + 1):
        for r in range(min(a, m) + 1):
            B[a, r] = comb(a, r)
    return B


def _child_ranks(K: np.ndarray, level: int, Btab: np.ndarray) -> np.ndarray:
    """Lex ranks at level+1 of the children ``k + e_g`` of the level states K (N, m), sorted by rank.

    The lexicographic rank of k (|k| = L) is ``Σ_{j<m-1} [binom(s_j+r_j, r_j) - binom(s_j-k_j+r_j, r_j)]``
    with ``r_j = m-1-j`` and ``s_j = L - Σ_{h<j} k_h`` (states with a smaller k_j, hockey-stick
    identity). Adding e_g raises s_j by one for j <= g and k_g by one, so by Pascal's rule
    ``rank(k + e_g) = rank(k) + Σ_{j<g} T_j + [g < m-1] binom(s_g+r_g, r_g-1)`` with
    ``T_j = binom(s_j+r_j, r_j-1) - binom(s_j-k_j+r_j, r_j-1)``; and rank(k) is k's own row.

    Returns
    -------
    ranks : (m, N) int64
    """
    N, m = K.shape
    ranks = np.empty((m, N), dtype=np.int64)
    acc = np.arange(N, dtype=np.int64)  # rank(k) + Σ_{j<g} T_j
    s = np.full(N, level, dtype=np.int64)
    for g in range(m):
        r = m - 1 - g
        if r == 0:  # the last coordinate is implicit in the rank
            ranks[g] = acc
            break
        ranks[g] = acc + Btab[s + r, r - 1]
        kg = K[:, g]
        acc = acc + Btab[s + r, r - 1] - Btab[s - kg + r, r - 1]
        s = s - kg
    return ranks


def _check_budget(batch: int, n: int, m: int, max_bytes: int) -> None:
    N = n_states(n, m)
    # W of two levels for the batch, the state array, the parent ranks and temporaries
    need = 8 * N * (3 * batch + 2 * m + 4)
    if need > max_bytes:
        raise ValueError(
            f"C: the exact posterior needs about {need / 2**30:.2f} GiB for n = {n}, m = {m} "
            f"({N} count states x batch {batch}), above max_bytes = {max_bytes / 2**30:.2f} GiB; "
            "raise max_bytes or use posterior_mean_mc"
        )


def _forward(C: np.ndarray, alpha: np.ndarray, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Run the Pólya-urn recursion on C (B, n, m) with every row nonzero.

    Returns
    -------
    post_mean : (B, m)
    log_evidence : (B,)
    """
    B, n, m = C.shape
    _check_budget(B, n, m, max_bytes)
    a0 = alpha.sum()
    Btab = _binom_table(n + m, m)
    K = np.zeros((1, m), dtype=np.int64)  # count states of the current level, lex order
    W = np.ones((B, 1))
    log_scale = np.zeros(B)
    for i in range(n):
        ranks = _child_ranks(K, i, Btab)
        Nn = n_states(i + 1, m)
        Kn = np.empty((Nn, m), dtype=np.int64)
        Wn = np.zeros((B, Nn))
        for g in range(m):
            # push W_i[k] · C[i,g] · (alpha_g + k_g) to the child k + e_g; within one g the
            # children are distinct, so a fancy-index += is a correct scatter-add
            Wn[:, ranks[g]] += W * (C[:, i, g, None] * (alpha[g] + K[:, g]))
            Kn[ranks[g]] = K
            Kn[ranks[g], g] += 1
        # dividing by (α₀ + i) builds the rising factorial (α₀)^(n) into the scale as we go
        mx = Wn.max(axis=1)
        Wn /= mx[:, None]
        log_scale += np.log(mx) - np.log(a0 + i)
        K, W = Kn, Wn
    tot = W.sum(axis=1)
    post = (W @ (alpha[None, :] + K)) / ((a0 + n) * tot[:, None])
    return post, np.log(tot) + log_scale


def _prepare(C: Any, alpha: Any, allow_impossible: bool) -> tuple[np.ndarray, np.ndarray]:
    C = V.check_C(C, "C", allow_impossible=allow_impossible)
    alpha = V.check_alpha(alpha, "alpha")
    V.check_same_m(C.shape[-1], alpha.shape[0], "alpha")
    return C, alpha


def posterior_mean(C: Any, alpha: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Exact posterior mean ``E[lam | y]`` under a Dirichlet(alpha) prior (MATH.md §4).

    Parameters
    ----------
    C : array_like, shape (..., n, m)
        Lag factors; no all-zero row (impossible data raise ``ValueError``).
    alpha : array_like, shape (m,)
    max_bytes : int
        Memory budget of the recursion. The state count ``binom(n+m-1, m-1)`` is estimated
        before allocating; above the budget a ``ValueError`` points to :func:`posterior_mean_mc`.

    Returns
    -------
    ndarray, shape (..., m). For n = 0 the prior mean ``alpha / α₀``.
    """
    C, alpha = _prepare(C, alpha, allow_impossible=False)
    batch, (n, m) = C.shape[:-2], C.shape[-2:]
    post, _ = _forward(C.reshape((int(np.prod(batch)), n, m)), alpha, max_bytes)
    return post.reshape(batch + (m,))


def log_evidence(C: Any, alpha: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """``log E_{lam ~ Dir(alpha)} Π_i C[i]·lam``, exact; -inf for impossible data.

    This is ``log p(y[m:] | y[:m], pi, alpha)``; add the first-m-token term for ``log p(y)``.

    Returns
    -------
    ndarray, shape (...). 0 for n = 0.
    """
    C, alpha = _prepare(C, alpha, allow_impossible=True)
    batch, (n, m) = C.shape[:-2], C.shape[-2:]
    Cf = C.reshape((int(np.prod(batch)), n, m))
    impossible = np.any(np.all(Cf == 0, axis=-1), axis=-1)  # (B,)
    # run the impossible elements on a harmless stand-in and report -inf for them
    Cf = np.where(impossible[:, None, None], 1.0, Cf)
    _, le = _forward(Cf, alpha, max_bytes)
    le = np.where(impossible, -np.inf, le)
    return le.reshape(batch)


def posterior_mean_mc(
    C: Any, alpha: Any, *, samples: int, rng: Any = None, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo posterior mean: self-normalised importance sampling from the prior.

    Draws ``lam_k ~ Dirichlet(alpha)``, weights ``w_k ∝ Π_i C[i]·lam_k`` (in log space), and
    returns ``Σ w_k lam_k / Σ w_k`` with the delta-method standard error
    ``sqrt(Σ w_k² (lam_k - mean)²) / Σ w_k`` (Owen 2013, §9.2), which converges at rate K^(-1/2).

    Parameters
    ----------
    C : array_like, shape (..., n, m)
    alpha : array_like, shape (m,)
    samples : int
        Number of prior draws K >= 1 (shared by every batch element).
    rng : Generator, int or None
    chunk : int
        Draws processed at a time (bounds memory to about chunk·batch·n floats).

    Returns
    -------
    mean, stderr : ndarrays, shape (..., m)
    """
    C, alpha = _prepare(C, alpha, allow_impossible=False)
    samples = V.check_int(samples, "samples", minimum=1)
    chunk = V.check_int(chunk, "chunk", minimum=1)
    gen = V.as_rng(rng)
    batch, (n, m) = C.shape[:-2], C.shape[-2:]
    Cf = C.reshape((int(np.prod(batch)), n, m))
    Bn = Cf.shape[0]
    # running sums of w, w·lam, w²·lam, w²·lam², w², all relative to a running max log-weight
    top = np.full(Bn, -np.inf)
    s_w, s_w2 = np.zeros(Bn), np.zeros(Bn)
    s_wl, s_w2l, s_w2l2 = np.zeros((Bn, m)), np.zeros((Bn, m)), np.zeros((Bn, m))
    done = 0
    while done < samples:
        k = min(chunk, samples - done)
        lam = gen.dirichlet(alpha, size=k)  # (k, m)
        lam /= lam.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore"):
            logw = np.log(np.einsum("bnm,km->bkn", Cf, lam)).sum(axis=-1)  # (B, k)
        new_top = np.maximum(top, logw.max(axis=1))
        f = np.exp(top - new_top)  # rescale old sums to the new max (0 at the start)
        f = np.where(np.isfinite(top), f, 0.0)
        w = np.exp(logw - new_top[:, None])  # (B, k)
        s_w = s_w * f + w.sum(1)
        s_w2 = s_w2 * f**2 + (w**2).sum(1)
        s_wl = s_wl * f[:, None] + w @ lam
        s_w2l = s_w2l * f[:, None] ** 2 + (w**2) @ lam
        s_w2l2 = s_w2l2 * f[:, None] ** 2 + (w**2) @ lam**2
        top = new_top
        done += k
    mean = s_wl / s_w[:, None]
    var_num = s_w2l2 - 2 * mean * s_w2l + mean**2 * s_w2[:, None]
    stderr = np.sqrt(np.maximum(var_num, 0.0)) / s_w[:, None]
    return mean.reshape(batch + (m,)), stderr.reshape(batch + (m,))
