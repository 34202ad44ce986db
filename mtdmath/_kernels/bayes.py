"""Fused level step of the exact count-state recursion (MATH.md §4) on the padded layout of
:mod:`mtdmath.bayes`: one pass over the live cells of each level, all m moves and the rescaling
folded in, no temporaries; two levels per sequence in memory; sequences in parallel.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True, nogil=True)
def forward(Cn, alpha, pk, ps, par, group_start, post, log_scale):  # pragma: no cover - compiled
    """Run the recursion on row-normalised lag factors Cn (B, n, m), m >= 2.

    Writes the posterior mean into post (B, m) and adds the log of the level rescalings and of
    Σ_k W_n[k] to log_scale (B,) (which holds Σ_i log max_g C[i,g] on entry), so that log_scale is
    then the log evidence. Same arithmetic as the NumPy route of ``bayes._forward``.
    """
    B, n, m = Cn.shape
    R = ps.shape[0]
    P = m - 2
    a0 = 0.0
    for g in range(m):
        a0 += alpha[g]
    for b in nb.prange(B):
        W = np.zeros((R + 1, n + 1))
        Wn = np.zeros((R + 1, n + 1))
        W[0, 0] = 1.0
        mx = 1.0
        ls = 0.0
        c = np.empty(m)
        for i in range(n):
            L = i + 1
            if mx < 1e-150:  # bring the stored level back to max 1 rather than fold a huge 1/mx
                for q in range(group_start[i + 1]):
                    for col in range(i + 1 - ps[q]):
                        W[q, col] /= mx
                ls += math.log(mx)
                mx = 1.0
            ls += math.log(mx)
            inv = 1.0 / (mx * (a0 + i))
            for g in range(m):
                c[g] = Cn[b, i, g] * inv
            new_mx = 0.0
            for q in range(group_start[L + 1]):  # the rows with prefix sum <= L
                top = L - ps[q]
                for col in range(top + 1):
                    klast = top - col  # the child's implicit last count
                    v = 0.0
                    if klast >= 1:  # lag m-1: parent in place, factor alpha + k_{m-1} - 1
                        v += W[q, col] * c[m - 1] * (alpha[m - 1] + (klast - 1))
                    if col >= 1:  # lag m-2: parent column col-1, factor alpha + col - 1
                        v += W[q, col - 1] * c[m - 2] * (alpha[m - 2] + (col - 1))
                    for g in range(P):  # lags g < m-2: parent row q - e_g, factor alpha_g + q_g - 1
                        kg = pk[q, g]
                        if kg >= 1:
                            v += W[par[g, q], col] * c[g] * (alpha[g] + (kg - 1))
                    Wn[q, col] = v
                    if v > new_mx:
                        new_mx = v
            mx = new_mx
            W, Wn = Wn, W
        tot = 0.0
        num = np.zeros(m)
        for q in range(R):
            top = n - ps[q]
            for col in range(top + 1):
                v = W[q, col]
                tot += v
                for g in range(P):
                    num[g] += v * pk[q, g]
                num[m - 2] += v * col
                num[m - 1] += v * (top - col)
        for g in range(m):
            post[b, g] = (alpha[g] * tot + num[g]) / ((a0 + n) * tot)
        log_scale[b] += ls + math.log(tot)
