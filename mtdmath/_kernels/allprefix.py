"""Fused one-step MD predictive after every prefix (docs/math.md §3, §5), one pass per sequence.

For sequence b and prefix row r (position t = m-1+r): ``lam_r = softmax(log μ + η_r G_r)`` with the
running ``G_r = Σ_{i<r} C[i]/s_i(μ)``, then ``p_r = Σ_g lam_r[g-1] pi[y[t+1-g], :]``, then the
transition i = r is folded into G.

Three passes per sequence, each written for the vectoriser, over per-thread scratch of
(T-m+1) x m numbers (L1/L2):

1. the recursion for G (sequential by nature, m numbers per row, float64) stores the shifted
   logits ``z_r - max z_r`` of every row;
2. their exponentials, all rows at once, with a branch-free exp (:func:`_exp_rows`) that LLVM
   vectorises (libm's exp is a scalar call);
3. per row the mixture of m rows of pi, in pi's dtype (float32 stays float32: m terms whose
   rounding is far inside the stated float32 accuracy), scaled by 1/Σ exp and written once.

Indices are unsigned (a signed index gets a negative-index test that blocks vectorising) and no
array view is made per row (each costs atomic reference-count updates).
"""
from __future__ import annotations

import numba as nb
import numpy as np

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split in two (Cody and Waite): k·hi is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10


@nb.njit(cache=True, nogil=True, fastmath={"nnan", "ninf", "nsz"})
def _exp_rows(x, e, bits):  # pragma: no cover - compiled
    """e = exp(x) for x <= 0 (flat float64 arrays), to about 1 ulp; 0 below -708 (where exp(x)
    relative to the row's largest term, exp(0) = 1, is below 1e-307: it changes no sum).

    exp(x) = 2^k exp(r), k = round(x / ln 2), |r| <= ln(2)/2, exp(r) by its Taylor series to
    degree 13 (remainder below 1e-17 relative), 2^k assembled in the exponent bits. Branch-free,
    so the loops vectorise.
    """
    kb = bits.view(np.float64)
    for i in range(x.shape[0]):
        xi = max(x[i], -708.0)
        k = np.floor(xi * _LOG2E + 0.5)
        r = (xi - k * _LN2_HI) - k * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        e[i] = p
        bits[i] = (np.int64(k) + 1023) << 52
    for i in range(x.shape[0]):
        e[i] = e[i] * kb[i] if x[i] > -708.0 else 0.0


@nb.njit(cache=True, nogil=True)
def _sequence(b, y, pi, pflat, log_mu, mu, eta, out, X, E, bits, acc, lam):  # pragma: no cover - compiled
    """All prefix rows of sequence b into out[b]; returns 1 if it has an impossible transition."""
    T = y.shape[1]
    m = mu.shape[0]
    S = pi.shape[1]
    n = T - m
    uS = np.uint64(S)
    G = np.zeros(m)
    c = np.empty(m)
    rows = n + 1
    bad = 0
    # pass 1: the recursion, and each row's logits shifted by their maximum
    for r in range(n + 1):
        top = -np.inf
        for g in range(m):
            z = log_mu[g] + eta[r] * G[g]
            X[r * m + g] = z
            top = max(top, z)
        for g in range(m):
            X[r * m + g] -= top
        if r < n:  # fold transition i = r (into position m+r) into G
            tgt = np.uint64(y[b, m + r])
            sv = 0.0
            for g in range(m):
                c[g] = pflat[np.uint64(y[b, m + r - 1 - g]) * uS + tgt]
                sv += mu[g] * c[g]
            if sv == 0.0:  # impossible: rows after r are left unspecified, the caller raises
                bad = 1
                rows = r + 1
                break
            inv = 1.0 / sv
            for g in range(m):
                G[g] += c[g] * inv
    # pass 2: the exponentials of every row at once
    _exp_rows(X[:rows * m], E, bits)
    # pass 3: p_r = Σ_g lam_r[g] pi[y[m+r-1-g], :], lam_r = exp(x_r) / Σ exp(x_r), in pi's dtype
    base = np.uint64(b) * np.uint64(n + 1) * uS
    for r in range(rows):
        tot = 0.0
        for g in range(m):
            tot += E[r * m + g]
        inv = 1.0 / tot
        for g in range(m):
            lam[g] = E[r * m + g] * inv  # rounded to pi's dtype on the store
        o = base + np.uint64(r) * uS
        # the common lag counts get one fused loop each (m loads, one store per entry); the sums
        # run over g in order, as the general loop adds them
        if m == 1:
            l0, s0 = lam[0], np.uint64(y[b, m + r - 1]) * uS
            for s in range(uS):
                out[o + s] = l0 * pflat[s0 + s]
        elif m == 2:
            l0, s0 = lam[0], np.uint64(y[b, m + r - 1]) * uS
            l1, s1 = lam[1], np.uint64(y[b, m + r - 2]) * uS
            for s in range(uS):
                out[o + s] = l0 * pflat[s0 + s] + l1 * pflat[s1 + s]
        elif m == 3:
            l0, s0 = lam[0], np.uint64(y[b, m + r - 1]) * uS
            l1, s1 = lam[1], np.uint64(y[b, m + r - 2]) * uS
            l2, s2 = lam[2], np.uint64(y[b, m + r - 3]) * uS
            for s in range(uS):
                out[o + s] = l0 * pflat[s0 + s] + l1 * pflat[s1 + s] + l2 * pflat[s2 + s]
        elif m == 4:
            l0, s0 = lam[0], np.uint64(y[b, m + r - 1]) * uS
            l1, s1 = lam[1], np.uint64(y[b, m + r - 2]) * uS
            l2, s2 = lam[2], np.uint64(y[b, m + r - 3]) * uS
            l3, s3 = lam[3], np.uint64(y[b, m + r - 4]) * uS
            for s in range(uS):
                out[o + s] = l0 * pflat[s0 + s] + l1 * pflat[s1 + s] + l2 * pflat[s2 + s] + l3 * pflat[s3 + s]
        else:
            for s in range(uS):
                acc[s] = 0.0
            for g in range(m):
                lg = lam[g]
                src = np.uint64(y[b, m + r - 1 - g]) * uS
                for s in range(uS):
                    acc[s] += lg * pflat[src + s]
            for s in range(uS):
                out[o + s] = acc[s]
    return bad


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
    pflat = pi.reshape(S * S)
    oflat = out.reshape(out.size)
    bad = 0
    for b in nb.prange(B):
        X = np.empty((n + 1) * m)
        E = np.empty((n + 1) * m)
        bits = np.empty((n + 1) * m, dtype=np.int64)
        acc = np.empty(S, dtype=pi.dtype)
        lam = np.empty(m, dtype=pi.dtype)
        bad += _sequence(b, y, pi, pflat, log_mu, mu, eta, oflat, X, E, bits, acc, lam)
    return bad
