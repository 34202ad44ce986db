"""Fused one-step MD predictive after every prefix (docs/math.md §3, §5), one pass per sequence.

For sequence b and prefix row r (position t = m-1+r): ``lam_r = softmax(log μ + η_r G_r)`` with the
running ``G_r = Σ_{i<r} C[i]/s_i(μ)``, then ``p_r = Σ_g lam_r[g-1] pi[y[t+1-g], :]``, then the
transition i = r is folded into G. Everything a row needs lives in m-long buffers (L1), the
output row is written once, and the sums accumulate in float64 whatever pi's dtype.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True, nogil=True)
def one_step_all_prefixes(y, pi, log_mu, mu, eta, out):  # pragma: no cover - compiled
    """y (B, T) int64, pi (S, S), log_mu/mu (m,) float64, eta (T-m+1,) float64 (the step of each
    prefix row), out (B, T-m+1, S) of pi's dtype.

    Returns the number of sequences with an impossible transition (s_i(μ) = 0); the caller
    raises. Rows after such a transition are left unspecified.
    """
    B, T = y.shape
    m = mu.shape[0]
    S = pi.shape[1]
    n = T - m
    bad = 0
    for b in nb.prange(B):
        G = np.zeros(m)
        z = np.empty(m)
        c = np.empty(m)
        acc = np.empty(S)  # the output row, accumulated in float64
        for r in range(n + 1):
            top = -np.inf
            for g in range(m):
                z[g] = log_mu[g] + eta[r] * G[g]
                if z[g] > top:
                    top = z[g]
            tot = 0.0
            for g in range(m):
                z[g] = math.exp(z[g] - top)
                tot += z[g]
            # p_r = Σ_g lam_r[g] pi[y[m+r-1-g], :] (lag g+1 of position t = m-1+r looks at t-g)
            for s in range(S):
                acc[s] = 0.0
            for g in range(m):
                zg = z[g] / tot
                src = y[b, m + r - 1 - g]
                for s in range(S):
                    acc[s] += zg * pi[src, s]
            for s in range(S):
                out[b, r, s] = acc[s]
            if r < n:  # fold transition i = r (into position m+r) into G
                tgt = y[b, m + r]
                sv = 0.0
                for g in range(m):
                    c[g] = pi[y[b, m + r - 1 - g], tgt]
                    sv += mu[g] * c[g]
                if sv == 0.0:
                    bad += 1
                    break
                inv = 1.0 / sv
                for g in range(m):
                    G[g] += c[g] * inv
    return bad
