"""The exact Bayes posterior over lam (docs/math.md §4) and its Monte Carlo fallback.

``Π_i (C[i]·lam)`` is a polynomial in lam whose monomials ``lam^k`` are indexed by count vectors
k with ``|k| = n``. Under a Dirichlet(alpha) prior the posterior is a finite mixture of
Dirichlet(alpha + k), computed by the Pólya-urn forward recursion over count states:

- ``W_0[0] = 1``; ``W_{i+1}[k] = Σ_g W_i[k - e_g] · C[i,g] · (alpha_g + k_g - 1)``
- ``E[lam_g | y] = Σ_k W_n[k] (alpha_g + k_g) / ((α₀ + n) Σ_k W_n[k])``
- ``log p(y | pi, alpha) = log Σ_k W_n[k] - log (α₀)^(n)`` (rising factorial)

All terms are nonnegative, so there is no cancellation; W is rescaled at every step and the
log scale is kept. The count states of level t (``binom(t+m-1, m-1)`` of them) are stored in a
padded 2-D layout (prefix rows x one count per column, described below) in which every move
``k - e_g -> k`` of the recursion is a slice, a column shift or a row gather: cost
O(m · binom(n+m, m)) floating-point operations, with about 10-20 % padding.
"""
from __future__ import annotations

from functools import lru_cache
import math
from math import comb
from typing import Any

import numpy as np

from . import _validate as validate
from . import _xp

#: default memory budget (bytes) of the exact recursion; above it posterior_mean raises
DEFAULT_MAX_BYTES = 2 * 2**30
#: the compiled recursion splits each level over threads when the last level has this many states:
#: every level ends in a barrier, and next to a busy process each barrier waits for a descheduled
#: worker, which only levels this large absorb (docs/guide/performance.md has the measurements)
_PARALLEL_STATES = 1 << 24
#: the batch-parallel route needs this many cell updates in all (one barrier per call must be absorbed)
_BATCH_WORK = 1 << 21


def n_count_states(n: int, m: int) -> int:
    """Number of count vectors k in N^m with |k| = n: ``binom(n+m-1, m-1)``.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> mtdmath.n_count_states(4, 3)  # binom(4 + 3 - 1, 3 - 1)
    15
    """
    n = validate.check_int(n, "n", minimum=0)
    m = validate.check_int(m, "m", minimum=1)
    return comb(n + m - 1, m - 1)


# ----------------------------------------------------------------------------- layout
# The count states k of level L (|k| = L) are stored in a padded 2-D array W[q, c]:
#
# - the row q is the *prefix* (k_0, ..., k_{m-3}) (m-2 coordinates), in graded order: rows are
#   sorted by the prefix sum ps_q, then lexicographically. All prefixes with ps <= n get a row
#   once and for all, so a row means the same prefix at every level, and the rows in use at
#   level L (ps <= L) are the first binom(L+m-2, m-2);
# - the column c is k_{m-2}; the last count is implicit, k_{m-1} = L - ps_q - c, and a cell
#   with c > L - ps_q is not a state: it holds 0.
#
# Then the three kinds of move k - e_g -> k of the recursion are array slices, not scatters:
# lag m-1 stays in place (W[q, c]), lag m-2 is a column shift (W[q, c-1]), and a lag g < m-2
# moves to the row of the prefix q - e_g (a row gather, one memcpy per row; a plain row shift
# when m = 3). Rows with the same prefix sum s form a group of width L+1-s at level L; a level is
# processed in a few chunks of consecutive groups, each padded to the width of its first group,
# so the padding wasted stays small. Non-states hold 0 and receive only 0 (a non-state's
# parents are non-states), so the padding never needs clearing.
#
# The layout depends on (n, m) only; it is cached (``_layout``, 8 entries): per prefix row its
# counts, its sum and its m-2 parent rows, 2m-3 integers, plus a few chunks per level: 3 MB for
# m = 5, n = 64 and 0.1 MB for m = 3, n = 512. The work arrays are not cached: W of two levels
# and a scratch array, each batch x (rows + 1) x (n + 1) floats, about m-1 times the number of
# states of level n (25 MB each for m = 5, n = 64; 2 MB for m = 3, n = 512).

#: a chunk of groups is closed when the next group is narrower than this fraction of the
#: chunk's width (bounds the padding to about 1/_CHUNK_RATIO - 1 of the useful cells) ...
_CHUNK_RATIO = 0.75
#: ... unless the chunk has fewer cells than this (small chunks: the call overhead dominates)
_CHUNK_MIN_CELLS = 8192


class _LevelLayout:
    """Data-independent structure of the padded recursion for (n, m), m >= 2 (see above)."""

    def __init__(self, n: int, m: int) -> None:
        P = m - 2  # prefix coordinates
        pre = _prefixes(P, n)  # (R, P), lexicographic
        ps = pre.sum(axis=1)
        order = np.argsort(ps, kind="stable")  # graded: by prefix sum, then lex
        self.pk = pre[order]  # (R, P) prefix counts
        self.ps = ps[order]  # (R,) prefix sums, nondecreasing
        R = self.ps.shape[0]
        self.R = R
        # group_start[s] = first row with prefix sum s (s = 0..n+1)
        self.group_start = np.searchsorted(self.ps, np.arange(n + 2), side="left")
        # par[g, q] = row of the prefix q - e_g, or the always-zero sentinel row R if q_g = 0
        self.par = np.full((P, R), R, dtype=np.intp)
        if P:
            keys, korder = _row_keys(self.pk, n)
            for g in range(P):
                ok = np.flatnonzero(self.pk[:, g] > 0)
                parent = self.pk[ok]  # a copy (fancy index): the prefixes q with q_g > 0 ...
                parent[:, g] -= 1  # ... and their parents q - e_g
                pkeys, _ = _row_keys(parent, n, sort=False)
                self.par[g, ok] = korder[np.searchsorted(keys, pkeys, sorter=korder)]
        self._plans: dict[int, list[tuple[int, int, int]]] = {}

    def plan(self, L: int) -> list[tuple[int, int, int]]:
        """Chunks (row start, row stop, width) covering the states of level L (1 <= L <= n)."""
        if L in self._plans:
            return self._plans[L]
        gs = self.group_start
        top = min(L, int(self.ps[-1]))  # the largest prefix sum in use at level L
        chunks = []
        a = 0
        while a <= top:
            w = L + 1 - a  # width of group a (the widest in its chunk)
            # groups a..b-1 have widths > _CHUNK_RATIO·w ...
            b = max(a + 1, L + 1 - int(_CHUNK_RATIO * w))
            # ... and at least _CHUNK_MIN_CELLS cells, if there are that many left
            b = max(b, int(np.searchsorted(gs, gs[a] - (-_CHUNK_MIN_CELLS // w), side="left")))
            b = min(b, top + 1)
            chunks.append((int(gs[a]), int(gs[b]), w))
            a = b
        self._plans[L] = chunks
        return chunks


def _row_keys(rows: np.ndarray, n: int, sort: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """A key per row of counts (each in 0..n) that is equal exactly for equal rows, and its sort order.

    Base-(n+1) integers where they fit in int64; otherwise (many lags, e.g. m = 3000) the rows'
    bytes, compared as opaque fixed-size records.
    """
    P = rows.shape[1]
    if P * math.log2(n + 1) < 62:
        w = (n + 1) ** np.arange(P - 1, -1, -1, dtype=np.int64)
        keys = rows @ w
    else:
        keys = np.ascontiguousarray(rows, dtype=np.int64).view(np.dtype((np.void, 8 * P))).ravel()
    return keys, (np.argsort(keys, kind="stable") if sort else None)


def _prefixes(P: int, n: int) -> np.ndarray:
    """All count vectors in N^P with sum <= n, in lexicographic order, shape (binom(n+P, P), P).

    Built one coordinate at a time (each row of stage j gets the values a = 0..n-sum), keeping
    only each stage's parent index and new value; the columns are read back at the end through
    the parent chain. Cost O(P · rows) time, so m = 3000 lags with n = 1 takes milliseconds.
    """
    s = np.zeros(1, dtype=np.int64)  # the sums of the rows of the current stage
    reps, vals = [], []
    for _ in range(P):  # append a coordinate a = 0..n-s to every row (innermost: lex order)
        cnt = n - s + 1
        rep = np.repeat(np.arange(s.shape[0]), cnt)
        a = np.arange(rep.shape[0]) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        s = s[rep] + a
        reps.append(rep)
        vals.append(a)
    pre = np.empty((s.shape[0], P), dtype=np.int64)
    idx = np.arange(s.shape[0])
    for j in range(P - 1, -1, -1):
        pre[:, j] = vals[j][idx]
        idx = reps[j][idx]
    return pre


@lru_cache(maxsize=8)
def _layout(n: int, m: int) -> _LevelLayout:
    return _LevelLayout(n, m)


def _layout_rows(n: int, m: int) -> int:
    """Rows of the padded layout: the prefixes with sum <= n, binom(n+m-2, m-2)."""
    return comb(n + m - 2, m - 2)


def _bytes_needed(batch: int, n: int, m: int, kernel: bool | None = None, threads: int | None = None) -> int:
    """An upper bound of the peak memory of the exact recursion (bytes), checked in the tests.

    Array-API route (tracemalloc): two padded levels W of (R+1)·(n+1) floats per sequence and the
    temporaries of a chunk's moves (products, the shifted column, the parent gather, their sums:
    up to about 6 more levels' worth per sequence, 7.5 measured), plus 4 levels for the layout's
    index arrays on the device and the final moments: ``8·batch + 4`` levels. Compiled route (peak
    RSS): one ragged level of exactly n_count_states(n, m) floats (no padding) per sequence in flight
    (``min(batch, threads)`` when the batch runs in parallel), the groups the row-split route
    copies aside, the row offsets and a row buffer per thread (``threads``: numba's thread count
    when None). Both: the layout (the
    prefixes with their build stages, their parents, keys, row offsets and the float copy of the
    counts the Array-API route uses: about 5(m-2) + 10 numbers per row), the copies of C (three), and a fixed 64 KiB of small arrays.
    """
    if m < 2 or n == 0:
        return 24 * batch * max(n, 1) * m + 2**16
    if kernel is None:
        from . import _kernels

        kernel = _kernels.enabled()
    R = _layout_rows(n, m)
    layout = 8 * R * (5 * (m - 2) + 10) + 24 * batch * n * m + 2**16
    if kernel:
        if threads is None:
            import numba

            threads = numba.get_num_threads()
        route, nch = _kernel_route(batch, n, m, threads)
        levels = min(batch, threads) if route == "batch" else 1
        spare = 0
        if route == "rows":  # nch-1 prefix-sum groups: binom(s+m-3, m-3) rows of n+1-s cells
            spare = (nch - 1) * max(comb(s + m - 3, m - 3) * (n + 1 - s) for s in range(n + 1))
        return 8 * (levels * n_count_states(n, m) + spare + R + 1 + threads * nch * (n + 1)) + layout
    return 8 * (R + 1) * (n + 1) * (8 * batch + 4) + layout


def _check_budget(batch: int, n: int, m: int, max_bytes: float, kernel: bool | None = None,
                  threads: int | None = None) -> None:
    need = _bytes_needed(batch, n, m, kernel, threads)
    if need > max_bytes:
        raise ValueError(
            f"C: the exact posterior needs about {need / 2**30:.2f} GiB for n = {n}, m = {m} "
            f"({n_count_states(n, m)} count states x batch {batch}), above max_bytes = {max_bytes / 2**30:.2f} GiB; "
            "raise max_bytes or use posterior_mean_mc"
        )


def _forward(C: np.ndarray, alpha: np.ndarray, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Run the Pólya-urn recursion (docs/math.md §4) on C (B, n, m) with every row nonzero.

    ``W_{i+1}[k] = Σ_g W_i[k - e_g] · C[i,g] · (alpha_g + k_g - 1) / (α₀ + i)``: the compiled
    kernel on the ragged layout when numba is there, else the Array-API route :func:`_forward_xp`
    on the padded layout described above. The Pólya factor ``(alpha_g + j) / (α₀ + i)`` (j = k_g - 1 >= 0, an
    integer added to alpha_g, never ``alpha_g - 1`` first: no cancellation for tiny alpha) lies in
    [0, 1] for every alpha, so no product overflows whatever alpha is (1e-300 to 1e300 tested).
    Rescaling (all terms are nonnegative): each row C[i] is divided by its maximum, and each level
    by the maximum of the level before (folded into the next coefficients, or applied to the
    level when that maximum is below 1e-150, so a coefficient never overflows); the logs of both
    go to the log scale. Then ``Σ_k W_n[k]`` times the scale is the evidence itself.

    Returns
    -------
    post_mean : (B, m)
    log_evidence : (B,)
    """
    B, n, m = C.shape
    from . import _kernels

    if not _kernels.enabled() or n == 0 or m == 1:
        return _forward_xp(C, alpha, max_bytes)
    import numba

    from ._kernels.bayes import forward, forward_batch, forward_rows

    from ._kernels.cores import usable_threads

    route, nch = _kernel_route(B, n, m, numba.get_num_threads())
    if route != "serial":  # no more threads than there are idle cores for (a worker waiting for a core
        # makes the call slower than one thread); every route gives the same bits
        route, nch = _kernel_route(B, n, m, usable_threads(numba.get_num_threads()))
    _check_budget(B, n, m, max_bytes, kernel=True, threads=numba.get_num_threads())
    cmax = C.max(axis=2)  # (B, n), > 0
    Cn = C / cmax[..., None]
    log_scale = np.log(cmax).sum(axis=1)
    lay = _layout(n, m)
    post = np.empty((B, m))
    row_start = _ragged_rows(n, lay)
    args = (np.ascontiguousarray(Cn), np.ascontiguousarray(alpha, dtype=np.float64), lay.pk, lay.ps,
            lay.par, lay.group_start, row_start, post, log_scale)
    if route != "serial":
        _kernels.start_threads()
    try:
        if route == "rows":
            forward_rows(*args, nch, _spare_cells(n, lay, nch))
        elif route == "batch":
            # sequences handed out one at a time: a thread that a competing process holds back takes
            # fewer of them, rather than the caller waiting for its fixed share (set from Python:
            # numba cannot cache a kernel with a chunk-size block inside)
            prev_chunk = numba.set_parallel_chunksize(1)
            try:
                forward_batch(*args)
            finally:
                numba.set_parallel_chunksize(prev_chunk)
        else:
            forward(*args)
    except ZeroDivisionError:
        # a level fell to 0 (alpha entries outside the float64 range of each other): the compiled
        # route divides by its maximum; report it as the Array-API route does
        raise range_error(alpha) from None
    return post, log_scale


def _ragged_rows(n: int, lay: _LevelLayout) -> np.ndarray:
    """Offsets of the rows of the ragged layout: row q keeps its n - ps_q + 1 usable cells."""
    row_start = np.zeros(lay.R + 1, dtype=np.int64)
    np.cumsum(n - lay.ps + 1, out=row_start[1:])
    return row_start


def _kernel_route(B: int, n: int, m: int, threads: int) -> tuple[str, int]:
    """Which compiled recursion runs, and its number of chunks per level.

    ``"batch"``: the sequences in parallel, one buffer each (small levels, B > 1); ``"rows"``: each
    level split into chunks over the threads (large levels, where a level costs far more than a
    thread barrier); ``"serial"`` otherwise. The results do not depend on the route.
    """
    if threads <= 1:
        return "serial", 1
    if n_count_states(n, m) >= _PARALLEL_STATES and m >= 3:
        return "rows", 2 * threads
    # Σ_{L <= n} n_count_states(L, m) = n_count_states(n, m + 1): the cell updates of one sequence
    if B > 1 and n_count_states(n, m) < _PARALLEL_STATES and B * n_count_states(n, m + 1) >= _BATCH_WORK:
        return "batch", 1
    return "serial", 1


def _spare_cells(n: int, lay: _LevelLayout, nch: int) -> int:
    """Cells the row-split route copies aside per level: at most nch-1 whole prefix-sum groups."""
    rows = np.diff(lay.group_start)  # rows of each prefix sum s = 0..n
    cells = rows * (n + 1 - np.arange(rows.shape[0]))
    return int((nch - 1) * cells.max())


def _forward_xp(C: Any, alpha: np.ndarray, max_bytes: float) -> tuple[Any, Any]:
    """The recursion on the padded layout in the Array API: the generic route of every backend.

    C (B, n, m) is a float64 array of any namespace: NumPy when the compiled kernel is not
    available, or a CUDA tensor, which stays on its device (the layout's index arrays are moved
    there once). Budget checked before any allocation. The levels are those of
    :class:`PolyaLevels`; only the last one's moments are taken.
    """
    rec = PolyaLevels(C, alpha, max_bytes)
    for _ in rec:
        pass
    return rec.moments()


def range_error(alpha: np.ndarray) -> ValueError:
    """The refusal of a recursion whose level fell to 0: a Pólya factor ``alpha_g / (α₀ + i)`` below
    the float64 range on every path of a level (alpha entries about 1e300 apart), so that the
    level's weights, and the posterior's ratios, are not representable."""
    return ValueError(
        f"alpha: the exact recursion's weights fall below the float64 range for alpha = {validate._show(alpha)} "
        "(the smallest alpha_g / α₀ is below about 1e-300); use posterior_mean_mc, or bring the alpha "
        "entries closer together")


def levels_bytes(batch: int, n: int, m: int) -> int:
    """Peak memory (bytes) of :class:`PolyaLevels` on a (batch, n, m) problem, the moments of a level
    included: the Array-API bound of the recursion (measured in ``tests/test_bayes.py``)."""
    return _bytes_needed(batch, n, m, kernel=False)


class PolyaLevels:
    """The Pólya-urn forward recursion (docs/math.md §4) one level at a time, in the Array API.

    The one implementation of the recursion's levels on the padded layout (the compiled kernel
    of :mod:`mtdmath._kernels` is checked against it): iterating yields L = 0, 1, ..., n after
    level L is computed, and :meth:`moments` then gives the posterior mean and the log evidence
    given the first L transitions. ``W_{i+1}[k] = Σ_g W_i[k - e_g] · C[i,g] · (alpha_g + k_g - 1)
    / (α₀ + i)``, rescaled as :func:`_forward` describes (the row maxima of C and the level
    maxima go to a log scale kept per level, so every prefix's evidence is exact too).

    Parameters
    ----------
    C : array, shape (B, n, m)
        Float64 lag factors of any namespace and device, every row nonzero (validated by the caller).
    alpha : ndarray, shape (m,)
        Validated Dirichlet prior (float64 NumPy).
    max_bytes : float
        Memory budget; :func:`levels_bytes` above it raises ``ValueError`` naming C before anything
        is allocated.
    """

    def __init__(self, C: Any, alpha: np.ndarray, max_bytes: float) -> None:
        xp = _xp.array_namespace(C)
        B, n, m = C.shape
        _check_budget(B, n, m, max_bytes, kernel=False)
        self.xp, self.dev, self.alpha = xp, _xp._device(C), alpha
        self.shape = (B, n, m)
        self.a0 = float(alpha.sum())
        f64 = xp.float64
        self.level = -1
        if n:
            cmax = xp.max(C, axis=2)  # (B, n), > 0
            self.Cn = C / cmax[..., None]
            self.log_cmax = xp.log(cmax)
        self.log_scale = xp.zeros((B,), dtype=f64, device=self.dev)
        if m == 1 or n == 0:
            return
        lay = self.lay = _layout(n, m)
        R = lay.R
        self.ps = xp.asarray(lay.ps.astype(np.float64), device=self.dev)
        self.pk = xp.asarray(lay.pk.astype(np.float64), device=self.dev)
        self.par = xp.asarray(lay.par.astype(np.int64), device=self.dev)
        self.col = xp.arange(n + 1, dtype=f64, device=self.dev)
        self.W = xp.zeros((B, R + 1, n + 1), dtype=f64, device=self.dev)  # row R: the sentinel, always 0
        self.W[:, 0, 0] = 1.0  # level 0: the single state k = 0
        self.Wn = xp.zeros_like(self.W)
        self.mx = xp.ones((B,), dtype=f64, device=self.dev)

    def __iter__(self):
        B, n, m = self.shape
        self.level = 0
        yield 0
        for i in range(n):
            if m == 1:  # one lag: a single state per level, lam = 1
                self.log_scale = self.log_scale + self.log_cmax[:, i]
            else:
                self._step(i)
            self.level = i + 1
            yield i + 1

    def _step(self, i: int) -> None:
        """Level i -> i+1 (docs/math.md §4): every move k - e_g -> k a slice, a column shift or a row gather."""
        xp, lay, alpha = self.xp, self.lay, self.alpha
        B, n, m = self.shape
        P = m - 2
        W, Wn, mx, ps, pk, par, col = self.W, self.Wn, self.mx, self.ps, self.pk, self.par, self.col
        L = i + 1
        log_scale = self.log_scale + self.log_cmax[:, i]
        tiny = mx < 1e-150
        if bool(xp.any(tiny)):  # bring the stored level back to max 1 rather than fold a huge 1/mx
            W = xp.where(tiny[:, None, None], W / mx[:, None, None], W)
            log_scale = log_scale + xp.where(tiny, xp.log(mx), xp.zeros_like(mx))
            mx = xp.where(tiny, xp.ones_like(mx), mx)
        self.log_scale = log_scale + xp.log(mx)
        c = self.Cn[:, i, :] / (mx[:, None] * (self.a0 + i))  # (B, m)
        new_mx = xp.zeros_like(mx)
        for r0, r1, w in lay.plan(L):
            src = W[:, r0:r1, :w]
            # lag m-1 (implicit count, in place): factor alpha + k_{m-1} - 1, the integer part first
            A = ((i - ps[r0:r1])[:, None] - col[None, :w]) + float(alpha[m - 1])  # (nr, w)
            out = (src * c[:, m - 1, None, None]) * A
            if w > 1:  # lag m-2 (the column): parent column c-1, factor alpha + c - 1
                colc = c[:, m - 2, None] * (float(alpha[m - 2]) + col[: w - 1])  # (B, w-1)
                shifted = W[:, r0:r1, : w - 1] * colc[:, None, :]
                out = out + xp.concat([xp.zeros_like(out[:, :, :1]), shifted], axis=2)
            for g in range(P):  # lags g < m-2: parent row q - e_g (the sentinel gives 0)
                rc = c[:, g, None] * (float(alpha[g]) + (pk[r0:r1, g] - 1))  # (B, nr)
                parent = xp.take(W, par[g, r0:r1], axis=1)[:, :, :w]
                out = out + parent * rc[:, :, None]
            Wn[:, r0:r1, :w] = out
            new_mx = xp.maximum(new_mx, xp.max(xp.reshape(out, (B, -1)), axis=1))
        if bool(xp.any(new_mx < 1e-150)) and bool(xp.any(new_mx == 0)):  # one test per level, as a rule
            raise range_error(alpha)
        self.mx = new_mx
        self.W, self.Wn = Wn, W

    def moments(self) -> tuple[Any, Any]:
        """Posterior mean (B, m) and log evidence (B,) given the first L transitions, L the current level.

        ``E[lam_g | y] = Σ_k W_L[k] (alpha_g + k_g) / ((α₀ + L) Σ_k W_L[k])`` over the states of
        level L: the rows in use (prefix sum <= L) and the columns <= L; non-states hold exactly 0
        (they only ever receive 0), so the sums are over states.
        """
        xp, alpha, dev = self.xp, self.alpha, self.dev
        B, n, m = self.shape
        L = self.level
        f64 = xp.float64
        if L < 0:
            raise RuntimeError("PolyaLevels.moments: iterate to a level first")
        if L == 0 or m == 1:
            post = xp.broadcast_to(xp.asarray(alpha / self.a0, dtype=f64, device=dev), (B, m))
            return xp.asarray(post, copy=True), self.log_scale
        P, lay = m - 2, self.lay
        nr = int(lay.group_start[min(L, int(lay.ps[-1])) + 1])
        Wf = self.W[:, :nr, : L + 1]
        col = self.col[: L + 1]
        ps = self.ps[:nr]
        rows = xp.sum(Wf, axis=2)  # (B, nr)
        tot = xp.sum(rows, axis=1)
        parts = []
        if P:
            parts.append(xp.asarray(alpha[:P], dtype=f64, device=dev) * tot[:, None] + rows @ self.pk[:nr])
        parts.append((float(alpha[m - 2]) * tot + xp.sum(Wf @ col, axis=1))[:, None])
        k_last = xp.maximum(L - ps[:, None] - col[None, :], xp.zeros((1, 1), dtype=f64, device=dev))  # implicit count
        parts.append((float(alpha[m - 1]) * tot + xp.sum(Wf * k_last, axis=(1, 2)))[:, None])
        num = xp.concat(parts, axis=1)  # (B, m)
        return num / ((self.a0 + L) * tot[:, None]), xp.log(tot) + self.log_scale

    def count_marginals(self) -> np.ndarray:
        """Posterior law of each lag's count given the first L transitions, L the current level.

        The posterior is the mixture ``Σ_k W_L[k] Dirichlet(alpha + k) / Σ_k W_L[k]`` (docs/math.md §4), so
        the marginal of ``lam_g`` is ``Σ_j P(k_g = j) Beta(alpha_g + j, α₀ + L - alpha_g - j)``: this returns
        ``P(k_g = j)``, shape (B, m, L + 1), float64 NumPy (summed on the host).
        """
        B, n, m = self.shape
        L = self.level
        if L < 0:
            raise RuntimeError("PolyaLevels.count_marginals: iterate to a level first")
        out = np.zeros((B, m, L + 1))
        if L == 0 or m == 1:  # one state: k = 0, or k = (L,) with one lag
            out[:, :, L if m == 1 else 0] = 1.0
            return out
        lay = self.lay
        nr = int(lay.group_start[min(L, int(lay.ps[-1])) + 1])
        W = np.asarray(_xp.to_numpy(self.W[:, :nr, : L + 1]), dtype=np.float64)  # (B, nr, L + 1)
        tot = W.sum(axis=(1, 2))
        offset = (L + 1) * np.arange(B)[:, None]

        def binned(bins: np.ndarray, weights: np.ndarray) -> np.ndarray:  # (B, cells) -> (B, L + 1)
            idx = (offset + bins.reshape(1, -1)).ravel()
            return np.bincount(idx, weights=weights.reshape(-1), minlength=B * (L + 1)).reshape(B, L + 1)

        rows = W.sum(axis=2)  # (B, nr)
        for g in range(m - 2):  # a prefix coordinate: its count is the row's
            out[:, g] = binned(lay.pk[:nr, g], rows)
        out[:, m - 2] = W.sum(axis=1)  # the column
        # the implicit count L - prefix sum - column; a non-state (negative) holds 0
        k_last = np.clip(L - lay.ps[:nr, None] - np.arange(L + 1)[None, :], 0, L)
        out[:, m - 1] = binned(k_last, W.reshape(B, -1))
        return out / tot[:, None, None]


def _on_device(space: Any) -> bool:
    """Whether the exact posterior should run where the data are (a CUDA tensor) rather than on the host."""
    return space.is_torch and space.device.type == "cuda"


def _prepare_bayes_inputs(C: Any, alpha: Any, allow_impossible: bool) -> tuple[np.ndarray, np.ndarray, _xp.Space]:
    """Validate in C's own space, then continue in float64 NumPy (the recursion is host code);
    the space is returned so the result goes back to C's namespace, device and dtype."""
    space = _xp.data_space(C)
    C = validate.check_C(C, "C", allow_impossible=allow_impossible, space=space)
    alpha = validate.check_alpha(alpha, "alpha")
    validate.check_same_m(C.shape[-1], alpha.shape[0], "alpha")
    if _on_device(space):  # a CUDA batch stays on its device, in float64
        return _xp.convert(C, _xp.Space(space.xp, space.device, space.xp.float64)), alpha, space
    return np.asarray(_xp.to_numpy(C), dtype=np.float64), alpha, space


def posterior_mean(C: Any, alpha: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Exact posterior mean ``E[lam | y]`` under a Dirichlet(alpha) prior (docs/math.md §4).

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
    array, shape (..., m)
        In C's namespace, device and float dtype (computed in float64 NumPy). For n = 0 the
        prior mean ``alpha / α₀``.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> alpha = np.array([2.0, 1.0])
    >>> post = mtdmath.posterior_mean(C[:20], alpha)
    >>> print(post.round(4), round(float(post.sum()), 12))
    [0.6292 0.3708] 1.0
    """
    max_bytes = validate.check_float(max_bytes, "max_bytes", positive=True)
    C, alpha, space = _prepare_bayes_inputs(C, alpha, allow_impossible=False)
    batch, (n, m) = tuple(C.shape[:-2]), tuple(C.shape[-2:])
    if _on_device(space):
        post, _ = _forward_xp(space.xp.reshape(C, (math.prod(batch), n, m)), alpha, max_bytes)
        return _xp.convert(space.xp.reshape(post, batch + (m,)), space)
    post, _ = _forward(C.reshape((int(np.prod(batch)), n, m)), alpha, max_bytes)
    return _xp.from_numpy(post.reshape(batch + (m,)), space)


def log_evidence(C: Any, alpha: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """``log E_{lam ~ Dir(alpha)} Π_i C[i]·lam``, exact; -inf for impossible data.

    This is ``log p(y[m:] | y[:m], pi, alpha)``; add the first-m-token term for ``log p(y)``.

    Returns
    -------
    array, shape (...)
        In C's namespace, device and float dtype (computed in float64 NumPy). 0 for n = 0.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> alpha = np.array([2.0, 1.0])
    >>> lam = rng.dirichlet(alpha, size=200_000)  # Monte Carlo check: log E[prod_i C[i]·lam]
    >>> mc = np.log(np.exp((np.log(C[:8] @ lam.T)).sum(axis=0)).mean())
    >>> print(abs(float(mtdmath.log_evidence(C[:8], alpha)) - mc) < 1e-2)
    True
    """
    max_bytes = validate.check_float(max_bytes, "max_bytes", positive=True)
    C, alpha, space = _prepare_bayes_inputs(C, alpha, allow_impossible=True)
    batch, (n, m) = tuple(C.shape[:-2]), tuple(C.shape[-2:])
    if _on_device(space):
        xp = space.xp
        Cf = xp.reshape(C, (math.prod(batch), n, m))
        impossible = xp.any(xp.all(Cf == 0, axis=-1), axis=-1)  # (B,)
        Cf = xp.where(impossible[:, None, None], xp.ones_like(Cf), Cf)
        _, le = _forward_xp(Cf, alpha, max_bytes)
        le = xp.where(impossible, xp.full_like(le, -math.inf), le)
        return _xp.convert(xp.reshape(le, batch), space)
    Cf = C.reshape((int(np.prod(batch)), n, m))
    impossible = np.any(np.all(Cf == 0, axis=-1), axis=-1)  # (B,)
    # run the impossible elements on a harmless stand-in and report -inf for them
    Cf = np.where(impossible[:, None, None], 1.0, Cf)
    _, le = _forward(Cf, alpha, max_bytes)
    le = np.where(impossible, -np.inf, le)
    return _xp.from_numpy(le.reshape(batch), space)


def _log_prod(x: np.ndarray) -> np.ndarray:
    """``Σ log x`` over the last axis, x >= 0 (-inf if a factor is 0).

    Speed: a log costs ~10x a product, so when every factor lies in [1e-36, 1e36] the factors
    are first multiplied in pairs three times (a product of 8 such factors stays within
    [1e-288, 1e288]: no underflow, no overflow) and only the products are logged.
    """
    acc = np.zeros(x.shape[:-1])
    if x.shape[-1] >= 2 and x.min() >= 1e-36 and x.max() <= 1e36:
        for _ in range(3):
            L = x.shape[-1]
            if L < 2:
                break
            h = L // 2
            if L % 2:
                acc += np.log(x[..., -1])
            x = x[..., :h] * x[..., h: 2 * h]
    with np.errstate(divide="ignore"):
        return acc + np.log(x).sum(axis=-1)


def posterior_mean_mc(
    C: Any, alpha: Any, *, samples: int, rng: Any = None, chunk: int = 4096, max_bytes: float = DEFAULT_MAX_BYTES
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
        Draws processed at a time; lowered so that the (batch, chunk, n) work array fits in
        ``max_bytes``.
    max_bytes : float
        Memory budget of the work arrays (bytes, > 0).

    Returns
    -------
    mean, stderr : arrays, shape (..., m)
        In C's namespace, device and float dtype (computed in float64 NumPy).

    Raises
    ------
    ValueError
        When no prior draw gives the data positive probability (importance sampling from the
        prior has no effective sample: use the exact :func:`posterior_mean`), or when the prior
        draws themselves are not finite (alpha outside what the Dirichlet sampler supports).

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> alpha = np.array([2.0, 1.0])
    >>> mean, se = mtdmath.posterior_mean_mc(C[:20], alpha, samples=20_000, rng=1)
    >>> print(bool(np.all(np.abs(mean - mtdmath.posterior_mean(C[:20], alpha)) < 5 * se)))
    True
    """
    max_bytes = validate.check_float(max_bytes, "max_bytes", positive=True)
    C, alpha, space = _prepare_bayes_inputs(C, alpha, allow_impossible=False)
    samples = validate.check_int(samples, "samples", minimum=1)
    chunk = validate.check_int(chunk, "chunk", minimum=1)
    gen = validate.as_rng(rng)
    batch, (n, m) = C.shape[:-2], C.shape[-2:]
    Bn = int(np.prod(batch))
    if Bn == 0:
        empty = np.zeros(batch + (m,))
        return _xp.from_numpy(empty, space), _xp.from_numpy(empty.copy(), space)
    # the (B, chunk, n) products and their logs: 2 arrays of 8-byte floats
    chunk = max(1, min(chunk, int(max_bytes // (16 * Bn * max(n, 1)))))
    Cf = C.reshape((Bn, n, m))
    CfT = np.ascontiguousarray(np.swapaxes(Cf, 1, 2))  # (B, m, n)
    # running sums of w, w·lam, w²·lam, w²·lam², w², all relative to a running max log-weight
    top = np.full(Bn, -np.inf)
    s_w, s_w2 = np.zeros(Bn), np.zeros(Bn)
    s_wl, s_w2l, s_w2l2 = np.zeros((Bn, m)), np.zeros((Bn, m)), np.zeros((Bn, m))
    done = 0
    while done < samples:
        k = min(chunk, samples - done)
        with np.errstate(all="ignore"):
            lam = gen.dirichlet(alpha, size=k)  # (k, m)
            lam /= lam.sum(axis=1, keepdims=True)
        if not np.all(np.isfinite(lam)):
            raise ValueError(f"alpha: the Dirichlet prior draws are not finite for alpha = {validate._show(alpha)}; "
                             "use the exact posterior_mean")
        logw = _log_prod(np.matmul(lam, CfT))  # (B, k): Σ_i log(C[i]·lam_k)
        new_top = np.maximum(top, logw.max(axis=1))
        ref = np.where(np.isfinite(new_top), new_top, 0.0)  # all weights 0 so far: nothing to rescale
        with np.errstate(invalid="ignore", over="ignore"):
            f = np.where(np.isfinite(top), np.exp(top - ref), 0.0)  # rescale old sums to the new max
            w = np.exp(logw - ref[:, None])  # (B, k)
        s_w = s_w * f + w.sum(1)
        s_w2 = s_w2 * f**2 + (w**2).sum(1)
        s_wl = s_wl * f[:, None] + w @ lam
        s_w2l = s_w2l * f[:, None] ** 2 + (w**2) @ lam
        s_w2l2 = s_w2l2 * f[:, None] ** 2 + (w**2) @ lam**2
        top = new_top
        done += k
    if not np.all(s_w > 0):
        raise ValueError(
            "C, alpha: no prior draw gives the data positive probability (importance sampling from the prior "
            f"has no effective sample in {int(np.sum(s_w <= 0))} of {Bn} problems); use the exact posterior_mean")
    mean = s_wl / s_w[:, None]
    var_num = s_w2l2 - 2 * mean * s_w2l + mean**2 * s_w2[:, None]
    stderr = np.sqrt(np.maximum(var_num, 0.0)) / s_w[:, None]
    return _xp.from_numpy(mean.reshape(batch + (m,)), space), _xp.from_numpy(stderr.reshape(batch + (m,)), space)
