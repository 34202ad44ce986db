"""Fused EM map of the MTD fit (docs/math.md §7) on aggregated counts, for a batch of restarts.

One pass over the distinct (lag context, next token) tuples per parameter vector: the mixture
probability ``s_u = Σ_k lam_k θ[idx[k, u]]``, the log-likelihood ``Σ_u w_u log s_u``, the expected
component counts ``lam_k Σ_u θ[idx[k,u]] w_u / s_u`` and the gradient of every emission entry
``Σ_{(k,u) using it} lam_k w_u / s_u``; then the exact M-steps (lam and every seen row). Restarts run
in parallel and share the index arrays.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True, nogil=True)
def em_batch(x, idx, w, K, S, n_rest, freeze_pi, new, ll):  # pragma: no cover - compiled
    """x (b, d) parameter vectors, idx (K, U) positions in x, w (U,) weights; writes EM(x) into new
    (b, d) and the log-likelihoods into ll (b,); a row whose data are impossible (some s_u <= 0) is
    copied unchanged with ll = -inf."""
    b, d = x.shape
    U = idx.shape[1]
    for r in nb.prange(b):
        G = np.zeros(n_rest)
        e_lam = np.zeros(K)
        tot = 0.0
        bad = False
        for u in range(U):
            s = 0.0
            for k in range(K):
                s += x[r, k] * x[r, idx[k, u]]
            if not s > 0.0:
                bad = True
                break
            tot += w[u] * math.log(s)
            q = w[u] / s
            for k in range(K):
                e_lam[k] += x[r, idx[k, u]] * q
                G[idx[k, u] - K] += x[r, k] * q
        for j in range(d):
            new[r, j] = x[r, j]
        if bad:
            ll[r] = -np.inf
            continue
        ll[r] = tot
        z = 0.0
        for k in range(K):
            e_lam[k] *= x[r, k]
            z += e_lam[k]
        for k in range(K):
            new[r, k] = e_lam[k] / z
        if freeze_pi:
            continue
        for row in range(n_rest // S):
            base = K + row * S
            n_row = 0.0
            for c in range(S):
                n_row += x[r, base + c] * G[row * S + c]
            if n_row > 0.0:
                for c in range(S):
                    new[r, base + c] = x[r, base + c] * G[row * S + c] / n_row
