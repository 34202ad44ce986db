"""Exact Bayes posterior mean of lam after *every* prefix of a sequence, in one forward pass.

The Pólya-urn forward recursion of docs/math.md §4 visits every prefix on its way to the end: after
step i its weights ``W_{i}[k]`` define the posterior given the first i transitions, a mixture of
Dirichlet(alpha + k) with weights ``W_i[k]``, so

    E[lam_g | first i transitions] = Σ_k W_i[k] (alpha_g + k_g) / ((α₀ + i) Σ_k W_i[k]).

Evaluating that at every level costs about as much as the recursion itself, so the whole
all-prefix curve of the evaluation protocol (docs/math.md §6) costs about one call of
:func:`mtdmath.posterior_mean` on the full sequence, instead of T of them.

The recursion runs on the padded count-state layout of :mod:`mtdmath.bayes` (``_layout``: row =
prefix (k_0 … k_{m-3}) in graded order, column = k_{m-2}, last count implicit); the moves
``k - e_g -> k`` are array slices and row gathers. It is checked against
:func:`mtdmath.posterior_mean` applied to each truncated prefix (and, for m = 2, against
quadrature) in ``tests/test_experiments.py``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _validate as V
from ..bayes import _layout

__all__ = ["posterior_mean_all_prefixes"]


def posterior_mean_all_prefixes(C: Any, alpha: Any, *, chunk: int = 8, progress: Any = None) -> np.ndarray:
    """Exact ``E[lam | first r transitions]`` for r = 0 … n, for a batch of sequences.

    Parameters
    ----------
    C : array_like, shape (B, n, m)
        Lag factors of the whole sequences (docs/math.md §2); no all-zero row.
    alpha : array_like, shape (m,)
        Dirichlet prior of lam.
    chunk : int
        Sequences processed together (the working memory is about
        ``3 · chunk · binom(n+m-2, m-2) · (n+1)`` float64 numbers).
    progress : callable, optional
        Called with the number of sequences finished after each chunk (e.g. ``tqdm.update``).

    Returns
    -------
    post : ndarray, shape (B, n+1, m)
        Row r is the posterior mean given transitions 0 … r-1 (row 0 is the prior mean μ), i.e.
        given the prefix ``y[:m+r]``.
    """
    C = V.check_C(C, "C")
    alpha = V.check_alpha(alpha, "alpha")
    V.check_same_m(C.shape[-1], alpha.shape[0], "alpha")
    chunk = V.check_int(chunk, "chunk", minimum=1)
    if C.ndim != 3:
        raise ValueError(f"C must have shape (B, n, m) (got shape {C.shape})")
    B = C.shape[0]
    out = np.empty((B, C.shape[1] + 1, C.shape[2]))
    for a in range(0, B, chunk):
        out[a : a + chunk] = _forward_all(C[a : a + chunk], alpha)
        if progress is not None:
            progress(min(chunk, B - a))
    return out


def _forward_all(C: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The recursion of ``mtdmath.bayes._forward`` with the posterior mean taken at every level."""
    B, n, m = C.shape
    a0 = float(alpha.sum())
    post = np.empty((B, n + 1, m))
    post[:, 0] = alpha / a0  # no transition: the prior mean (docs/math.md conventions)
    if n == 0:
        return post
    if m == 1:
        post[:] = 1.0
        return post
    # rescaling: rows of C by their max, each level by the previous level's max (all terms are
    # nonnegative, so the rescaling changes no ratio and nothing can overflow or cancel)
    Cn = C / C.max(axis=2, keepdims=True)
    lay = _layout(n, m)
    P, R = m - 2, lay.R
    W = np.zeros((B, R + 1, n + 1))  # row R is the sentinel parent of the rows with q_g = 0
    Wn = np.zeros_like(W)
    col = np.arange(n + 1, dtype=np.float64)
    ps_f = lay.ps.astype(np.float64)
    pk_f = lay.pk.astype(np.float64)
    W[:, 0, 0] = 1.0  # level 0: the single state k = 0
    mx = np.ones(B)
    for i in range(n):
        L = i + 1  # child level = number of transitions seen
        c = Cn[:, i, :] / mx[:, None]  # (B, m)
        new_mx = np.zeros(B)
        for r0, r1, w in lay.plan(L):
            src = W[:, r0:r1, :w]
            out = Wn[:, r0:r1, :w]
            # lag m-1 (implicit count k_{m-1} = L - ps - c stays in place): factor alpha + k_{m-1} - 1
            A = (i - ps_f[r0:r1])[:, None] - col[None, :w] + alpha[m - 1]
            np.multiply(src, A, out=out)
            out *= c[:, m - 1, None, None]
            # lag m-2 (the column): parent column c-1, factor alpha + c - 1
            if w > 1:
                colc = c[:, m - 2, None] * (alpha[m - 2] + col[: w - 1])  # (B, w-1)
                out[:, :, 1:] += W[:, r0:r1, : w - 1] * colc[:, None, :]
            # lags g < m-2 (the prefix): parent row q - e_g (sentinel row R gives 0)
            for g in range(P):
                rc = c[:, g, None] * (alpha[g] - 1.0 + pk_f[r0:r1, g])  # (B, nr)
                out += W[:, lay.par[g, r0:r1], :w] * rc[:, :, None]
            np.maximum(new_mx, out.max(axis=(1, 2)), out=new_mx)
        # posterior mean at level L from the rows in use (prefix sum <= L) and columns <= L;
        # non-states hold exactly 0 (they only ever receive 0), so the sums are over states
        nr = int(lay.group_start[min(L, int(lay.ps[-1])) + 1])
        Wf = Wn[:, :nr, : L + 1]
        rows = Wf.sum(axis=2)  # (B, nr)
        tot = rows.sum(axis=1)  # (B,)
        num = np.empty((B, m))
        if P:
            num[:, :P] = alpha[:P] * tot[:, None] + rows @ pk_f[:nr]
        num[:, m - 2] = alpha[m - 2] * tot + (Wf @ col[: L + 1]).sum(axis=1)
        k_last = np.maximum(L - ps_f[:nr, None] - col[None, : L + 1], 0.0)  # implicit count
        num[:, m - 1] = alpha[m - 1] * tot + np.einsum("brc,rc->b", Wf, k_last)
        post[:, L] = num / ((a0 + L) * tot[:, None])
        mx = new_mx
        W, Wn = Wn, W
    return post
