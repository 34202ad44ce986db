"""Fused EM map of the MTD fit (docs/math.md §7) on aggregated counts, for a batch of restarts.

One pass over the distinct (lag context, next token) tuples per parameter vector: the mixture
probability ``s_u = Σ_k lam_k θ[idx[k, u]]``, the log-likelihood ``Σ_u w_u log s_u``, the expected
component counts ``lam_k Σ_u θ[idx[k,u]] w_u / s_u`` and the gradient of every emission entry
``Σ_{(k,u) using it} lam_k w_u / s_u``; then the exact M-steps (lam and every seen row).

Threads pay or are not used: below :data:`SERIAL_CELLS` (restart x component x tuple) cells per
call the batch runs on the calling thread, in a kernel compiled without ``parallel`` (no pool is
woken, nothing spins); above it the restarts are spread over the threads, the pool started by
:func:`mtdmath._kernels.start_threads` (workers that sleep while they wait), and handed out one
restart at a time so that a thread slowed by a competing process takes fewer. Each restart's
arithmetic is the same on both routes and at any thread count: the results are bit-identical.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

#: cells (restarts x components x distinct tuples) below which a call runs serially. A parallel
#: launch is cheap on idle cores, but next to a busy process every launch waits for a descheduled
#: worker, which a call of the S = 10, m = 4, n = 1e5 fit's size cannot absorb (bench/test_bench_busy.py
#: and docs/guide/performance.md measure it). Threads are used only where one call is long enough
SERIAL_CELLS = 20_000_000


@nb.njit(cache=True, nogil=True)
def _em_block(x, idx, w, K, S, n_rest, freeze_pi, new, ll, r0, r1):  # pragma: no cover - compiled
    """EM(x[r]) into new[r] and the log-likelihood into ll[r] for the restarts r0..r1-1 (where the
    data are impossible under x[r]: x[r] itself and -inf).

    The restarts of the block are the innermost loop, over a (d, restarts) copy of their
    parameters: for each tuple the same few rows are read for every restart, contiguously, and
    the products, quotients and gradient updates vectorise across restarts. Per restart the sums
    run over the tuples in order, as a restart-at-a-time loop would add them.
    """
    d = x.shape[1]
    U = idx.shape[1]
    nr = r1 - r0
    xb = np.empty((d, nr))  # the block's parameters, one restart per column
    for j in range(nr):
        for i in range(d):
            xb[i, j] = x[r0 + j, i]
    G = np.zeros((n_rest, nr))
    e_lam = np.zeros((K, nr))
    tot = np.zeros(nr)
    s = np.empty(nr)
    q = np.empty(nr)
    ok = np.ones(nr, dtype=np.bool_)
    for u in range(U):
        wu = w[u]
        for j in range(nr):
            s[j] = 0.0
        for k in range(K):  # 2-D indexing, no row views: a view costs two atomic reference counts
            ik = idx[k, u]
            for j in range(nr):
                s[j] += xb[k, j] * xb[ik, j]
        for j in range(nr):
            sj = s[j]
            if not sj > 0.0:  # the data are impossible under this restart: its sums are dropped
                ok[j] = False
                sj = 1.0
            tot[j] += wu * math.log(sj)
            q[j] = wu / sj
        for k in range(K):
            ik = idx[k, u]
            for j in range(nr):
                e_lam[k, j] += xb[ik, j] * q[j]
                G[ik - K, j] += xb[k, j] * q[j]
    for j in range(nr):
        r = r0 + j
        for i in range(d):
            new[r, i] = x[r, i]
        if not ok[j]:
            ll[r] = -np.inf
            continue
        ll[r] = tot[j]
        z = 0.0
        for k in range(K):
            e_lam[k, j] *= xb[k, j]
            z += e_lam[k, j]
        for k in range(K):
            new[r, k] = e_lam[k, j] / z
        if freeze_pi:
            continue
        for row in range(n_rest // S):
            base = K + row * S
            n_row = 0.0
            for c in range(S):
                n_row += xb[base + c, j] * G[row * S + c, j]
            if n_row > 0.0:
                for c in range(S):
                    new[r, base + c] = xb[base + c, j] * G[row * S + c, j] / n_row


@nb.njit(cache=True, nogil=True)
def _em_serial(x, idx, w, K, S, n_rest, freeze_pi, new, ll):  # pragma: no cover - compiled
    _em_block(x, idx, w, K, S, n_rest, freeze_pi, new, ll, 0, x.shape[0])


@nb.njit(parallel=True, cache=True, nogil=True)
def _em_parallel(x, idx, w, K, S, n_rest, freeze_pi, new, ll, block):  # pragma: no cover - compiled
    b = x.shape[0]
    nblocks = (b + block - 1) // block
    for i in nb.prange(nblocks):  # the caller sets the chunk size to one block (see em_batch)
        _em_block(x, idx, w, K, S, n_rest, freeze_pi, new, ll, i * block, min(b, (i + 1) * block))


def threads_for(cells: int, batch: int, n_jobs: int | None = None) -> int:
    """Threads the EM map uses for ``batch`` restarts and ``cells`` cells in all.

    ``n_jobs`` follows scikit-learn: None means numba's current thread count, -1 all of numba's
    threads, a positive number at most that many. 1 below :data:`SERIAL_CELLS` or for one restart;
    above it, no more than there are idle cores for (:func:`mtdmath._kernels.cores.usable_threads`).
    """
    import numba

    avail = numba.get_num_threads()
    if n_jobs is None or n_jobs == -1:
        want = avail
    elif n_jobs < -1:  # joblib's convention: -2 is all but one
        want = max(1, numba.config.NUMBA_NUM_THREADS + 1 + n_jobs)
    else:
        want = n_jobs
    want = min(want, numba.config.NUMBA_NUM_THREADS, batch)
    if cells < SERIAL_CELLS:
        return 1
    from .cores import usable_threads

    return usable_threads(want)


def em_batch(x, idx, w, K, S, n_rest, freeze_pi, new, ll, *, n_jobs: int | None = None) -> None:
    """x (b, d) parameter vectors, idx (K, U) positions in x, w (U,) weights; writes EM(x) into new
    (b, d) and the log-likelihoods into ll (b,); a row whose data are impossible (some s_u <= 0) is
    copied unchanged with ll = -inf. ``n_jobs``: see :func:`threads_for`."""
    threads = threads_for(x.shape[0] * idx.size, x.shape[0], n_jobs)
    if threads <= 1:
        _em_serial(x, idx, w, K, S, n_rest, freeze_pi, new, ll)
        return
    import numba

    from . import start_threads

    start_threads()
    prev = numba.get_num_threads()
    numba.set_num_threads(threads)
    # blocks handed out one at a time: a thread slowed by another process takes fewer (set from
    # Python: a parallel_chunksize block inside the kernel cannot be cached by numba)
    prev_chunk = numba.set_parallel_chunksize(1)
    try:
        # blocks of restarts: at least 4 (a vector of float64) and about two per thread
        block = max(4, -(-x.shape[0] // (2 * threads)))
        _em_parallel(x, idx, w, K, S, n_rest, freeze_pi, new, ll, block)
    finally:
        numba.set_parallel_chunksize(prev_chunk)
        numba.set_num_threads(prev)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def predicted_gain(theta, idx, w, nxt, row_of, shared_rows, K, S, n_rest, freeze_pi):  # pragma: no cover - compiled
    """The fit's predicted gain at theta (d,): Σ over simplex blocks of gap² / (2 c), in one E-step
    pass and one curvature pass over the tuples (the quantity of the NumPy ``_EM.predicted_gain``:
    the gain of the best Frank-Wolfe line step per block under the quadratic model, docs/math.md §2).

    ``nxt`` (U,): the next token of each tuple; ``row_of`` (K, U): the emission row that component k
    uses at tuple u (``(idx - K) // S``, precomputed once per fit). Components that use the same
    emission row at one tuple (a shared pi with equal context tokens) are summed before squaring;
    ``shared_rows`` says whether that happens at any tuple (never with a lag-wise pi): if not, each
    component's term is added alone, which adds the same terms without the grouping's branches. Returns inf where some tuple has probability 0 under
    theta. The curvatures of the lam block and of every row are accumulated in the same pass, each
    in tuple order (the error model "numpy" only lets the divisions vectorise: no value is 0 there).
    """
    U = idx.shape[1]
    h = np.empty(U)  # w_u / s_u², the weight of each tuple in every curvature
    s = np.empty(U)
    g_lam = np.zeros(K)
    G = np.zeros(n_rest)
    for u in range(U):
        su = 0.0
        for k in range(K):
            su += theta[k] * theta[idx[k, u]]
        if not su > 0.0:
            return np.inf
        s[u] = su
        q = w[u] / su
        h[u] = q / su
        for k in range(K):
            g_lam[k] += theta[idx[k, u]] * q
            G[idx[k, u] - K] += theta[k] * q
    jstar, best, dot = 0, -np.inf, 0.0
    for k in range(K):
        dot += theta[k] * g_lam[k]
        if theta[k] > 0.0 and g_lam[k] > best:
            jstar, best = k, g_lam[k]
    gap = best - dot
    n_rows = n_rest // S
    bstar = np.zeros(n_rows, dtype=np.int64)
    gaps = np.empty(n_rows)
    if not freeze_pi:
        for row in range(n_rows):
            top, n_row = -np.inf, 0.0
            for col in range(S):
                t, g = theta[K + row * S + col], G[row * S + col]
                n_row += t * g
                if t > 0.0 and g > top:
                    bstar[row], top = col, g
            gaps[row] = top - n_row
    c = 0.0
    c_rows = np.zeros(n_rows)
    ak = np.empty(K)
    for u in range(U):
        hu = h[u]
        d = theta[idx[jstar, u]] - s[u]  # direction e_{j*} - lam: ds_u = P_{j*}(u) - s_u
        c += hu * d * d
        if freeze_pi:
            continue
        for k in range(K):  # ds_u along d_r for the row r of component k: lam_k ([nxt_u = b*_r] - theta_r[nxt_u])
            ak[k] = theta[k] * ((1.0 if nxt[u] == bstar[row_of[k, u]] else 0.0) - theta[idx[k, u]])
        if not shared_rows:
            for k in range(K):
                a = ak[k]
                c_rows[row_of[k, u]] += hu * a * a
            continue
        for k in range(K):
            rk = row_of[k, u]
            first = True
            for j in range(k):
                if row_of[j, u] == rk:
                    first = False
            if first:
                a = 0.0
                for j in range(k, K):
                    if row_of[j, u] == rk:
                        a += ak[j]
                c_rows[rk] += hu * a * a
    total = gap * gap / (2.0 * c) if gap > 0.0 and c > 0.0 else 0.0
    if freeze_pi:
        return total
    for row in range(n_rows):
        if gaps[row] > 0.0 and c_rows[row] > 0.0:
            total += gaps[row] * gaps[row] / (2.0 * c_rows[row])
    return total
