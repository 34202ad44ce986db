"""Fused level step of the exact count-state recursion (docs/math.md §4), on a ragged layout.

The rows q of the padded layout of :mod:`mtdmath.bayes` (a prefix (k_0, ..., k_{m-3}) with sum
ps_q) are kept, but row q stores only its ``n - ps_q + 1`` cells (the columns it can ever use), one
row after another: a level then takes exactly ``binom(n+m-1, m-1)`` floats, the number of count
states of the last level, with no padding. Every move of the recursion stays O(1): lag m-1 is the
same cell, lag m-2 the previous cell, a lag g < m-2 the same column of the parent row. Each level
is one pass over its live cells, all m moves and the rescaling folded in.

Two entry points with the same arithmetic: :func:`forward` runs serially (a parallel region per
level costs a thread barrier, which dominates small levels and degrades badly on a loaded
machine), :func:`forward_parallel` splits each level's rows over the threads, for large problems.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, inline="always")
def _rows(W, Wn, c, alpha, pk, ps, par, row_start, L, q0, q1):  # pragma: no cover - compiled
    """Level L of rows q0..q1-1 from level L-1 in W into Wn; returns their maximum.

    Per row, the prefix lags' parent offsets and factors are fixed (hoisted out of the cell
    loop); the first and last cells, where a move is absent, are done apart from the interior.
    """
    m = alpha.shape[0]
    P = m - 2
    best = 0.0
    pbase = np.empty(max(P, 1), dtype=np.int64)
    pfac = np.empty(max(P, 1))
    a_last, a_col = alpha[m - 1], alpha[m - 2]
    c_last, c_col = c[m - 1], c[m - 2]
    for q in range(q0, q1):
        top = L - ps[q]
        base = row_start[q]
        npar = 0
        for g in range(P):  # lags g < m-2: parent row q - e_g, factor alpha_g + q_g - 1
            kg = pk[q, g]
            if kg >= 1:
                pbase[npar] = row_start[par[g, q]]
                pfac[npar] = c[g] * (alpha[g] + (kg - 1))
                npar += 1
        for col in range(top + 1):
            klast = top - col  # the child's implicit last count
            v = 0.0
            if klast >= 1:  # lag m-1: parent in place, factor alpha + k_{m-1} - 1
                v += W[base + col] * c_last * (a_last + (klast - 1))
            if col >= 1:  # lag m-2: parent column col-1, factor alpha + col - 1
                v += W[base + col - 1] * c_col * (a_col + (col - 1))
            for j in range(npar):
                v += W[pbase[j] + col] * pfac[j]
            Wn[base + col] = v
            if v > best:
                best = v
    return best


@nb.njit(cache=True, nogil=True, inline="always")
def _moments(W, pk, ps, row_start, n, m, q0, q1, acc):  # pragma: no cover - compiled
    """Σ_k W_n[k] (acc[m]) and Σ_k W_n[k] k_g (acc[g]) over the rows q0..q1-1, added to acc."""
    P = m - 2
    for q in range(q0, q1):
        top = n - ps[q]
        base = row_start[q]
        for col in range(top + 1):
            v = W[base + col]
            acc[m] += v
            for g in range(P):
                acc[g] += v * pk[q, g]
            acc[m - 2] += v * col
            acc[m - 1] += v * (top - col)


@nb.njit(cache=True, nogil=True)
def _rescale(W, ps, row_start, group_start, i, mx):  # pragma: no cover - compiled
    for q in range(group_start[i + 1]):
        for col in range(i + 1 - ps[q]):
            W[row_start[q] + col] /= mx


@nb.njit(cache=True, nogil=True, inline="always")
def _start_level(W, ps, row_start, group_start, Cn, b, i, mx, ls, a0, c):  # pragma: no cover - compiled
    """Before level i+1: the log scale of the stored level (max mx) and this step's coefficients
    ``c_g = C[i,g] / (mx (α₀ + i))``; a stored level with max below 1e-150 is first brought back
    to max 1 (rather than fold a huge 1/mx into c). Returns the updated log scale."""
    if mx < 1e-150:
        _rescale(W, ps, row_start, group_start, i, mx)
        ls += math.log(mx)
        mx = 1.0
    ls += math.log(mx)
    inv = 1.0 / (mx * (a0 + i))
    for g in range(c.shape[0]):
        c[g] = Cn[b, i, g] * inv
    return ls


@nb.njit(cache=True, nogil=True, inline="always")
def _finish(acc, alpha, a0, n, ls, b, post, log_scale):  # pragma: no cover - compiled
    m = alpha.shape[0]
    tot = acc[m]
    for g in range(m):
        post[b, g] = (alpha[g] * tot + acc[g]) / ((a0 + n) * tot)
    log_scale[b] += ls + math.log(tot)


@nb.njit(cache=True, nogil=True)
def forward(Cn, alpha, pk, ps, par, group_start, row_start, post, log_scale):  # pragma: no cover - compiled
    """Run the recursion on row-normalised lag factors Cn (B, n, m), m >= 2, serially.

    ``row_start`` (R+1,): offset of row q's cells (row q holds n - ps_q + 1 of them). Writes the
    posterior mean into post (B, m) and adds the log of the level rescalings and of Σ_k W_n[k]
    to log_scale (B,) (which holds Σ_i log max_g C[i,g] on entry): log_scale is then the log
    evidence. Same arithmetic, cell by cell, as the NumPy route of ``bayes._forward``.
    """
    B, n, m = Cn.shape
    R = ps.shape[0]
    a0 = alpha.sum()
    W = np.zeros(row_start[R])
    Wn = np.zeros(row_start[R])
    c = np.empty(m)
    for b in range(B):
        # level 0: the single state k = 0. Every level writes all its live cells and reads only
        # live cells of the level before, so no clearing is needed.
        W[0] = 1.0
        mx, ls = 1.0, 0.0
        for i in range(n):
            ls = _start_level(W, ps, row_start, group_start, Cn, b, i, mx, ls, a0, c)
            mx = _rows(W, Wn, c, alpha, pk, ps, par, row_start, i + 1, 0, group_start[i + 2])
            W, Wn = Wn, W
        acc = np.zeros(m + 1)
        _moments(W, pk, ps, row_start, n, m, 0, R, acc)
        _finish(acc, alpha, a0, n, ls, b, post, log_scale)


@nb.njit(parallel=True, cache=True, nogil=True)
def forward_parallel(Cn, alpha, pk, ps, par, group_start, row_start, post, log_scale, nch):  # pragma: no cover
    """:func:`forward` with each level's rows split into ``nch`` chunks over the threads."""
    B, n, m = Cn.shape
    R = ps.shape[0]
    a0 = alpha.sum()
    W = np.zeros(row_start[R])
    Wn = np.zeros(row_start[R])
    c = np.empty(m)
    best = np.zeros(nch)
    accs = np.zeros((nch, m + 1))
    for b in range(B):
        W[0] = 1.0
        mx, ls = 1.0, 0.0
        for i in range(n):
            ls = _start_level(W, ps, row_start, group_start, Cn, b, i, mx, ls, a0, c)
            rows = group_start[i + 2]
            for j in nb.prange(nch):
                best[j] = _rows(W, Wn, c, alpha, pk, ps, par, row_start, i + 1, j * rows // nch,
                                (j + 1) * rows // nch)
            mx = best.max()
            W, Wn = Wn, W
        for j in nb.prange(nch):
            accs[j, :] = 0.0
            _moments(W, pk, ps, row_start, n, m, j * R // nch, (j + 1) * R // nch, accs[j])
        acc = np.zeros(m + 1)
        for j in range(nch):
            acc += accs[j]
        _finish(acc, alpha, a0, n, ls, b, post, log_scale)
