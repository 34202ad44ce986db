"""In-place fused level update of the exact count-state recursion (docs/math.md §4), ragged layout.

The rows q of the padded layout of :mod:`mtdmath.bayes` (a prefix (k_0, ..., k_{m-3}) with sum
ps_q) are kept, but row q stores only its ``n - ps_q + 1`` cells (the columns it can ever use), one
row after another: a level takes exactly ``binom(n+m-1, m-1)`` floats, the number of count states
of the last level, with no padding. Every move of the recursion stays O(1): lag m-1 is the same
cell, lag m-2 the previous cell, a lag g < m-2 the same column of the parent row q - e_g.

**One buffer, updated in place.** The cell (q, col) of level L depends on the cells (q, col),
(q, col-1) and (q - e_g, col) of level L-1. A parent row has a smaller prefix sum, so it comes
earlier in the graded row order; processing the rows from last to first, every cell a row reads
still holds level L-1 when it is read. A row's new values go to an L1-resident row buffer (each
move a separate, vectorisable pass, added in the same order as the moves of the Array-API route)
and are copied back once. Memory: one level instead of two, and each cell is read and written
once per level.

**Threads.** :func:`forward_batch` runs the sequences of a batch in parallel, each on its own
buffer (small levels: a thread barrier per level would cost more than the level).
:func:`forward_rows` splits each level of one sequence into chunks of whole prefix-sum groups
(large levels): a chunk reads the group just below it, which the neighbouring chunk overwrites,
so that group's level L-1 is copied aside first. Either way every cell gets the same arithmetic
whatever the thread count, the level maxima are exact, and the final moments are summed by one
thread in row order: the results are bit-identical at any number of threads.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True, fastmath={"nnan", "ninf", "nsz"})
def _level(W, tmp, c, alpha, pk, ps, par, row_start, L, q0, q1, low, low_off, ALR, AC):  # pragma: no cover
    """Level L of rows q0..q1-1 (level L-1 in W, overwritten in place, last row first); returns
    their maximum. ``low`` >= 0: the parents in rows below q0 are read from a copy of the rows
    from ``low`` on, made at ``low_off`` (see forward_rows); ``low`` = -1: every parent in place.

    A row's new cells go to tmp, then are copied back. Per cell ``W[col]·c_last·(a_last + klast
    - 1) + W[col-1]·c_col·(a_col + col - 1) + Σ_j W[parent_j + col]·pfac_j`` (klast = top - col),
    added in that order, the absent moves of the first and last cell left out. Written for the
    vectoriser: the integer-plus-alpha factors come from the tables ALR (reversed, so that a row
    reads them forwards) and AC; the common parent counts have a loop each; indices are unsigned
    (a signed index gets a negative-index test that blocks vectorising); and no helper is called
    per row and no array view is made per row (each would cost atomic reference-count updates,
    which took most of the time when they were there). fastmath only drops NaN/inf/signed-zero
    handling (all values are finite and >= 0): no reassociation, no contraction.
    """
    m = alpha.shape[0]
    P = m - 2
    best = 0.0
    pbase = np.empty(max(P, 1), dtype=np.uint64)
    pfac = np.empty(max(P, 1))
    c_last, c_col = c[m - 1], c[m - 2]
    one = np.uint64(1)
    for q in range(q1 - 1, q0 - 1, -1):
        top = L - ps[q]
        base = row_start[q]
        npar = 0
        for g in range(P):  # lags g < m-2: parent row q - e_g, factor alpha_g + q_g - 1
            kg = pk[q, g]
            if kg >= 1:
                p = par[g, q]
                pbase[npar] = row_start[p] if p >= q0 or low < 0 else low_off + row_start[p] - row_start[low]
                pfac[npar] = c[g] * (alpha[g] + (kg - 1))
                npar += 1
        if top == 0:  # a single new cell (klast = 0, col = 0): only the parents
            v = 0.0
            for j in range(npar):
                v += W[pbase[j]] * pfac[j]
            W[base] = v
            best = max(best, v)
            continue
        b, t = np.uint64(base), np.uint64(top)
        o = np.uint64(ALR.shape[0] - top)  # ALR[o + col] = a_last + (top - col - 1)
        tmp[0] = W[b] * c_last * ALR[o]
        if npar == 0:
            for col in range(one, t):
                tmp[col] = W[b + col] * c_last * ALR[o + col] + W[b + col - one] * c_col * AC[col]
        elif npar == 1:
            p0, f0 = pbase[0], pfac[0]
            tmp[0] += W[p0] * f0
            for col in range(one, t):
                tmp[col] = W[b + col] * c_last * ALR[o + col] + W[b + col - one] * c_col * AC[col] + W[p0 + col] * f0
        elif npar == 2:
            p0, f0, p1, f1 = pbase[0], pfac[0], pbase[1], pfac[1]
            tmp[0] = tmp[0] + W[p0] * f0 + W[p1] * f1
            for col in range(one, t):
                tmp[col] = W[b + col] * c_last * ALR[o + col] + W[b + col - one] * c_col * AC[col] + \
                    W[p0 + col] * f0 + W[p1 + col] * f1
        elif npar == 3:
            p0, f0, p1, f1, p2, f2 = pbase[0], pfac[0], pbase[1], pfac[1], pbase[2], pfac[2]
            tmp[0] = tmp[0] + W[p0] * f0 + W[p1] * f1 + W[p2] * f2
            for col in range(one, t):
                tmp[col] = W[b + col] * c_last * ALR[o + col] + W[b + col - one] * c_col * AC[col] + \
                    W[p0 + col] * f0 + W[p1 + col] * f1 + W[p2 + col] * f2
        else:  # many lags: the parents one pass each
            for col in range(one, t):
                tmp[col] = W[b + col] * c_last * ALR[o + col] + W[b + col - one] * c_col * AC[col]
            for j in range(npar):
                pj, fj = pbase[j], pfac[j]
                for col in range(t):
                    tmp[col] += W[pj + col] * fj
        v = W[b + t - one] * c_col * AC[t]  # the last cell: klast = 0
        for j in range(npar):
            v += W[pbase[j] + t] * pfac[j]
        tmp[t] = v
        for col in range(t + one):  # copy the row back
            v = tmp[col]
            W[b + col] = v
            best = max(best, v)
    return best


@nb.njit(cache=True, nogil=True)
def _factor_tables(alpha, n):  # pragma: no cover - compiled
    """ALR[j] = alpha_{m-1} + (n - 1 - j) and AC[col] = alpha_{m-2} + (col - 1): the Pólya factors
    of the in-place and the column move, the integer added to alpha (no cancellation)."""
    m = alpha.shape[0]
    ALR = np.empty(n)
    AC = np.empty(n + 1)
    for j in range(n):
        ALR[j] = alpha[m - 1] + (n - 1 - j)
    for col in range(n + 1):
        AC[col] = alpha[m - 2] + (col - 1)
    return ALR, AC


@nb.njit(cache=True, nogil=True)
def _total(x):  # pragma: no cover - compiled
    """Σ x in index order, as a serial kernel sums (one rounding order at any thread count)."""
    t = 0.0
    for v in x:
        t += v
    return t


@nb.njit(cache=True, nogil=True)
def _rescale(W, ps, row_start, group_start, i, mx):  # pragma: no cover - compiled
    for q in range(group_start[i + 1]):
        for col in range(i + 1 - ps[q]):
            W[row_start[q] + col] /= mx


@nb.njit(cache=True, nogil=True)
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


@nb.njit(cache=True, nogil=True)
def _finish(W, alpha, pk, ps, row_start, n, ls, b, post, log_scale):  # pragma: no cover - compiled
    """Posterior mean and log evidence of sequence b from its last level, summed in row order."""
    m = alpha.shape[0]
    P = m - 2
    R = ps.shape[0]
    acc = np.zeros(m + 1)  # Σ_k W_n[k] k_g (g < m), Σ_k W_n[k] (m)
    for q in range(R):
        top = n - ps[q]
        base = row_start[q]
        for col in range(top + 1):
            v = W[base + col]
            acc[m] += v
            for g in range(P):
                acc[g] += v * pk[q, g]
            acc[m - 2] += v * col
            acc[m - 1] += v * (top - col)
    a0 = _total(alpha)
    tot = acc[m]
    for g in range(m):
        post[b, g] = (alpha[g] * tot + acc[g]) / ((a0 + n) * tot)
    log_scale[b] += ls + math.log(tot)


@nb.njit(cache=True, nogil=True)
def _one(Cn, alpha, pk, ps, par, group_start, row_start, post, log_scale, b, W):  # pragma: no cover - compiled
    """The whole recursion of sequence b on the buffer W (row_start[R] floats), one thread."""
    n, m = Cn.shape[1], Cn.shape[2]
    a0 = _total(alpha)
    c = np.empty(m)
    tmp = np.empty(n + 1)
    ALR, AC = _factor_tables(alpha, n)
    # level 0: the single state k = 0. A level writes all its live cells and reads only live cells
    # of the level before (a new cell's in-place term has klast = 0 and is skipped), so no clearing.
    W[0] = 1.0
    mx, ls = 1.0, 0.0
    for i in range(n):
        ls = _start_level(W, ps, row_start, group_start, Cn, b, i, mx, ls, a0, c)
        mx = _level(W, tmp, c, alpha, pk, ps, par, row_start, i + 1, 0, group_start[i + 2], -1, 0, ALR, AC)
    _finish(W, alpha, pk, ps, row_start, n, ls, b, post, log_scale)


@nb.njit(cache=True, nogil=True)
def forward(Cn, alpha, pk, ps, par, group_start, row_start, post, log_scale):  # pragma: no cover - compiled
    """Run the recursion on row-normalised lag factors Cn (B, n, m), m >= 2, one sequence after
    another on one buffer.

    ``row_start`` (R+1,): offset of row q's cells (row q holds n - ps_q + 1 of them). Writes the
    posterior mean into post (B, m) and adds the log of the level rescalings and of Σ_k W_n[k]
    to log_scale (B,) (which holds Σ_i log max_g C[i,g] on entry): log_scale is then the log
    evidence.
    """
    W = np.empty(row_start[ps.shape[0]])
    for b in range(Cn.shape[0]):
        _one(Cn, alpha, pk, ps, par, group_start, row_start, post, log_scale, b, W)


@nb.njit(parallel=True, cache=True, nogil=True)
def forward_batch(Cn, alpha, pk, ps, par, group_start, row_start, post, log_scale):  # pragma: no cover
    """:func:`forward` with the sequences spread over the threads, one buffer per sequence in flight."""
    cells = row_start[ps.shape[0]]
    for b in nb.prange(Cn.shape[0]):
        W = np.empty(cells)
        _one(Cn, alpha, pk, ps, par, group_start, row_start, post, log_scale, b, W)


@nb.njit(parallel=True, cache=True, nogil=True)
def forward_rows(Cn, alpha, pk, ps, par, group_start, row_start, post, log_scale, nch, spare):  # pragma: no cover
    """:func:`forward` with each level split into ``nch`` chunks of whole prefix-sum groups.

    The chunk starting at group s reads group s-1 at level L-1, which the chunk below overwrites
    concurrently: before the level, group s-1 is copied into the ``spare`` cells after the level
    (``spare`` >= the stored cells of the nch-1 largest groups), and the chunk reads it there.
    Chunks are balanced by the live cells of the level, so their number and bounds do not depend
    on the thread count.
    """
    B, n, m = Cn.shape
    R = ps.shape[0]
    cells = row_start[R]
    a0 = _total(alpha)  # not alpha.sum(): in a parallel function that is a threaded reduction,
    # whose rounding depends on the thread count
    W = np.empty(cells + spare)
    c = np.empty(m)
    best = np.zeros(nch)
    lo = np.zeros(nch + 1, dtype=np.int64)  # group bounds of the chunks
    off = np.zeros(nch, dtype=np.int64)  # where each chunk's copy of the group below starts
    tmps = np.empty((nch, n + 1))
    ALR, AC = _factor_tables(alpha, n)
    for b in range(B):
        W[0] = 1.0
        mx, ls = 1.0, 0.0
        for i in range(n):
            L = i + 1
            ls = _start_level(W, ps, row_start, group_start, Cn, b, i, mx, ls, a0, c)
            # group s has group_start[s+1]-group_start[s] rows of L-s+1 live cells at level L
            live = 0
            for s in range(L + 1):
                live += (group_start[s + 1] - group_start[s]) * (L - s + 1)
            k, acc = 1, 0
            lo[0] = 0
            for s in range(L + 1):
                acc += (group_start[s + 1] - group_start[s]) * (L - s + 1)
                if k < nch and acc * nch >= live * k and s + 1 <= L:
                    lo[k] = s + 1
                    k += 1
            for j in range(k, nch + 1):
                lo[j] = L + 1
            pos = cells
            for j in range(1, nch):  # copy aside the group below each chunk (level L-1)
                s = lo[j]
                off[j] = pos
                if s <= L and s > lo[j - 1]:
                    r0, r1 = row_start[group_start[s - 1]], row_start[group_start[s]]
                    W[pos:pos + r1 - r0] = W[r0:r1]
                    pos += r1 - r0
            for j in nb.prange(nch):
                best[j] = 0.0
                if lo[j + 1] > lo[j]:
                    low = group_start[lo[j] - 1] if j > 0 else -1
                    best[j] = _level(W, tmps[j], c, alpha, pk, ps, par, row_start, L, group_start[lo[j]],
                                     group_start[lo[j + 1]], low, off[j], ALR, AC)
            mx = best.max()
        _finish(W, alpha, pk, ps, row_start, n, ls, b, post, log_scale)
