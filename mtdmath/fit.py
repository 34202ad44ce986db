"""Fitting MTD models when pi is unknown: true EM with exact M-steps, restarts, AIC/BIC, order selection.

Model (MATH.md §1, Raftery's MTD and its lag-wise form MTDg; lags ``l_1 < ... < l_k``, max lag ``M``)::

    P(y[t] = b | past) = lam0 * p0[b] + sum_j lam[j] * pi_j[y[t - l_j], b]          (t >= M)

``variant="shared"``: one ``pi`` for every lag (the paper's model); ``variant="lagwise"``: one matrix per
lag (MTDg); ``independent=True`` adds the order-0 component ``lam0 * p0`` (hdMTD's model), otherwise
``lam0 = 0``. Each sequence is conditioned on its own first ``M`` tokens.

EM (the latent lag ``Z_t`` of MATH.md §1 is the missing datum). With ``s_u`` the mixture probability of a
distinct (context, next) tuple ``u`` with weighted count ``w_u`` and ``q_u = w_u / s_u``:

- E-step: responsibilities ``gamma_u(j) = lam_j P_j[u] / s_u`` (MATH.md §2).
- M-step (exact, closed form): ``lam_j <- sum_u w_u gamma_u(j) / N`` (MATH.md §3, EM);
  ``pi[a, b] <- E[count a -> b] / E[count a]`` with ``E[count a -> b] = pi[a, b] * dl/dpi[a, b]``;
  ``p0[b] <- E[count of component 0 emitting b] / E[count of component 0]``.

Everything is computed on the aggregated counts of distinct (lag-context, next) tuples (``np.unique`` of the
stacked tuples, weighted counts), so an iteration costs O(#distinct tuples x #components) vectorised work —
never O(S^(k+1)) and never O(n) Python work. EM is accelerated with SQUAREM (Varadhan & Roland 2008,
scheme S3) with a monotonicity safeguard: if the extrapolated point gives a lower log-likelihood than the
plain EM path, the plain EM step is taken instead, so the log-likelihood never decreases.

Stopping rule: relative change of the log-likelihood over one iteration below ``tol`` *and* a KKT test: the
KKT (Frank-Wolfe) gap of a simplex block ``B`` with gradient ``g`` is ``gap_B = max_{j in B} g_j - theta_B . g_B``
(zero exactly at a KKT point of the block; the log-likelihood is concave in each block - lam given pi, pi given
lam - so it bounds what optimising that block alone could gain). The test requires the predicted gain of one
Frank-Wolfe line step per block under the quadratic model, ``sum_B gap_B^2 / (2 c_B)`` with ``c_B`` the
curvature along the step, to be below ``tol * |loglik|``. The summed gap is reported as ``MTDFit.kkt_gap``.
"""
from __future__ import annotations

import bisect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._validate import as_rng, check_float, check_int, check_pi, check_prob_vector, check_tokens

__all__ = ["fit", "select_order", "MTDFit"]

VARIANTS = ("shared", "lagwise")
#: default largest state space S^max_lag for :meth:`MTDFit.stationary_distribution` and a sparse expanded matrix
MAX_STATES = 200_000
#: default largest state space S^max_lag for a dense :meth:`MTDFit.expanded_matrix`
MAX_DENSE_STATES = 4096
#: stationary law: exact dense solve up to this many states, power iteration (then GMRES) above
_DENSE_SOLVE_STATES = 2000
_POWER_ITERS = 20_000
#: relative drop of the log-likelihood between iterations that the convergence monitor reports
MONITOR_RTOL = 1e-10
#: pseudo-count added to every cell when building the "counts" start (keeps every entry > 0,
#: because EM can never move an entry away from exactly 0)
_SMOOTH = 0.5


# ----------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------
def _as_sequences(sequences: Any) -> list[np.ndarray]:
    """One 1-D array, a 2-D array (rows are sequences) or a list of 1-D arrays -> list of int64 arrays."""
    if isinstance(sequences, np.ndarray):
        arrs = [sequences] if sequences.ndim == 1 else list(sequences) if sequences.ndim == 2 else None
        if arrs is None:
            raise ValueError(f"sequences must be 1-D, 2-D or a list of 1-D arrays (got shape {sequences.shape})")
    elif isinstance(sequences, (list, tuple)):
        if len(sequences) == 0:
            raise ValueError("sequences is empty: no data to fit")
        if all(np.ndim(s) == 0 for s in sequences):  # a flat list of tokens is one sequence
            arrs = [np.asarray(sequences)]
        else:
            arrs = [np.asarray(s) for s in sequences]
    else:
        raise ValueError("sequences must be an integer array or a list of integer arrays "
                         f"(got {type(sequences).__name__})")
    if len(arrs) == 0:
        raise ValueError("sequences is empty: no data to fit")
    out = []
    for i, a in enumerate(arrs):
        a = np.asarray(a)
        if a.ndim != 1:
            raise ValueError(f"sequences[{i}] must be 1-D (got shape {a.shape})")
        if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"sequences must hold integer tokens (sequences[{i}] has dtype {a.dtype})")
        if a.size and a.min() < 0:
            raise ValueError(f"sequences must hold non-negative tokens (sequences[{i}] has min {a.min()})")
        out.append(a.astype(np.int64, copy=False))
    return out


def _check_lags(order: Any, lags: Any) -> tuple[int, ...]:
    """Sorted tuple of distinct positive lags; ``order`` alone means lags 1..order."""
    if lags is None:
        if order is None:
            raise ValueError("order must be given (or lags)")
        order = check_int(order, "order", minimum=1)
        return tuple(range(1, order + 1))
    try:
        raw = [lags] if np.ndim(lags) == 0 else list(np.asarray(lags).ravel())
    except Exception:  # pragma: no cover - exotic input
        raise ValueError(f"lags must be a sequence of positive integers (got {lags!r})") from None
    if len(raw) == 0:
        raise ValueError("lags must hold at least one lag (got an empty sequence)")
    out = []
    for x in raw:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            raise ValueError(f"lags must be positive integers (got {lags!r})")
        if x < 1:
            raise ValueError(f"lags must be positive (got {lags!r})")
        out.append(int(x))
    if len(set(out)) != len(out):
        raise ValueError(f"lags must be distinct (got {lags!r})")
    out = tuple(sorted(out))
    if order is not None:
        order = check_int(order, "order", minimum=1)
        if order != out[-1]:
            raise ValueError(f"order must equal max(lags) = {out[-1]} when both are given (got order = {order})")
    return out


def _check_weights(weights: Any, n_seq: int) -> np.ndarray:
    if weights is None:
        return np.ones(n_seq)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("weights must be an array of real numbers") from None
    if w.ndim == 0:
        w = w.reshape(1)
    if w.ndim != 1 or w.shape[0] != n_seq:
        raise ValueError(f"weights must have one entry per sequence ({n_seq}) (got shape {w.shape})")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and non-negative (got {w[:6]})")
    if not np.any(w > 0):
        raise ValueError("weights are all zero: no data to fit")
    return w


@dataclass
class _Data:
    """Aggregated transitions: distinct (lag-context, next) tuples and their weighted counts."""

    ctx: np.ndarray  # (U, k) token at lag lags[j] for each distinct tuple
    nxt: np.ndarray  # (U,)
    w: np.ndarray  # (U,) weighted counts
    S: int
    lags: tuple[int, ...]

    @property
    def N(self) -> float:
        return float(self.w.sum())


def _aggregate(seqs: list[np.ndarray], S: int, lags: tuple[int, ...], weights: np.ndarray, start: int) -> _Data:
    """Stack every transition t = start..T-1 of every sequence as the tuple (y[t-l_1], ..., y[t-l_k], y[t])
    and count the distinct tuples (np.unique + weighted bincount). Python work is O(#sequences)."""
    k = len(lags)
    lag_arr = np.asarray(lags)
    if k * math.log(max(S, 2)) + math.log(max(S, 2)) < 62 * math.log(2):
        # encode each tuple as one int64 in base S: 1-D np.unique is much faster than unique(axis=0)
        codes, wts = [], []
        for y, wt in zip(seqs, weights):
            T = y.shape[0]
            if T <= start or wt == 0:
                continue
            t = np.arange(start, T)
            c = np.zeros(T - start, dtype=np.int64)
            for l in lag_arr:  # most significant digit = lag l_1, ..., least significant = next token
                c = c * S + y[t - l]
            c = c * S + y[t]
            codes.append(c)
            wts.append(np.full(T - start, wt))
        if not codes:
            raise ValueError("sequences hold no transitions (every sequence has length <= max lag, or zero weight)")
        codes_all = np.concatenate(codes)
        uniq, inv = np.unique(codes_all, return_inverse=True)
        w = np.bincount(inv.ravel(), weights=np.concatenate(wts), minlength=uniq.shape[0])
        digits = np.empty((uniq.shape[0], k + 1), dtype=np.int64)
        rem = uniq.copy()
        for j in range(k, -1, -1):
            digits[:, j] = rem % S
            rem //= S
    else:  # huge S^(k+1): unique over rows
        rows, wts = [], []
        for y, wt in zip(seqs, weights):
            T = y.shape[0]
            if T <= start or wt == 0:
                continue
            t = np.arange(start, T)
            rows.append(np.stack([y[t - l] for l in lag_arr] + [y[t]], axis=1))
            wts.append(np.full(T - start, wt))
        if not rows:
            raise ValueError("sequences hold no transitions (every sequence has length <= max lag, or zero weight)")
        digits, inv = np.unique(np.concatenate(rows), axis=0, return_inverse=True)
        w = np.bincount(inv.ravel(), weights=np.concatenate(wts), minlength=digits.shape[0])
    keep = w > 0
    digits, w = digits[keep], w[keep]
    return _Data(ctx=np.ascontiguousarray(digits[:, :k]), nxt=np.ascontiguousarray(digits[:, k]), w=w, S=S, lags=lags)


def _prepare(sequences, order, lags, n_states, weights, start=None):
    seqs = _as_sequences(sequences)
    lags_t = _check_lags(order, lags)
    M = lags_t[-1]
    top = max((int(s.max()) for s in seqs if s.size), default=-1)
    if n_states is None:
        S = top + 1
        if S < 1:
            raise ValueError("sequences is empty: no data to fit")
    else:
        S = check_int(n_states, "n_states", minimum=1)
        if S <= top:
            raise ValueError(f"n_states must exceed the largest token {top} (got n_states = {S})")
    for i, s in enumerate(seqs):
        if s.shape[0] < M:
            raise ValueError(f"sequences[{i}] has length {s.shape[0]}, shorter than its max lag {M}")
    w = _check_weights(weights, len(seqs))
    data = _aggregate(seqs, S, lags_t, w, M if start is None else max(start, M))
    return data


# ----------------------------------------------------------------------------------------------------------
# parameter layout: theta = [lam (k), lam0 (if independent) | pi rows (S or k*S rows) | p0 row (if independent)]
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Layout:
    S: int
    k: int
    variant: str
    independent: bool

    @property
    def K(self) -> int:  # number of mixture components
        return self.k + int(self.independent)

    @property
    def n_pi_rows(self) -> int:
        return self.S * (self.k if self.variant == "lagwise" else 1)

    @property
    def size(self) -> int:
        return self.K + (self.n_pi_rows + int(self.independent)) * self.S

    def index(self, data: _Data) -> np.ndarray:
        """(U, K) positions in theta of the emission probability of each component for each tuple."""
        S, K = self.S, self.K
        cols = []
        for j in range(self.k):
            off = K + (j * S * S if self.variant == "lagwise" else 0)
            cols.append(off + data.ctx[:, j] * S + data.nxt)
        if self.independent:
            cols.append(K + self.n_pi_rows * S + data.nxt)
        return np.ascontiguousarray(np.stack(cols, axis=1))

    def pack(self, lam, pi, lam0=None, p0=None) -> np.ndarray:
        parts = [np.asarray(lam, float)]
        if self.independent:
            parts.append(np.array([lam0], float))
        parts.append(np.asarray(pi, float).ravel())
        if self.independent:
            parts.append(np.asarray(p0, float))
        return np.concatenate(parts)

    def unpack(self, theta: np.ndarray) -> dict:
        S, k, K = self.S, self.k, self.K
        rows = theta[K:].reshape(-1, S)
        pi = rows[: self.n_pi_rows]
        out = {"lam": theta[:k].copy(), "pi": (pi.reshape(k, S, S) if self.variant == "lagwise" else pi).copy()}
        if self.independent:
            out["lam0"] = float(theta[k])
            out["p0"] = rows[-1].copy()
        return out

    def normalise(self, theta: np.ndarray) -> np.ndarray:
        """Rescale every simplex block to sum 1 (removes rounding drift after an extrapolation)."""
        th = theta.copy()
        th[: self.K] /= th[: self.K].sum()
        rows = th[self.K :].reshape(-1, self.S)
        rows /= rows.sum(axis=1, keepdims=True)
        return th


class _EM:
    """The EM map on aggregated counts: ``__call__(theta)`` returns (EM(theta), loglik(theta)).

    No BLAS in the hot loop: OpenBLAS threads on these small (U, K) products cost far more than the work
    when cores are shared, so products are einsum / elementwise (single-threaded C loops)."""

    def __init__(self, data: _Data, lay: _Layout, freeze_pi: bool = False):
        self.lay = lay
        self.K = lay.K
        self.idx = np.ascontiguousarray(lay.index(data).T)  # (K, U): component-major for contiguous rows
        self.idx_rest = (self.idx - self.K).ravel()  # positions among the emission rows
        self.w = data.w
        self.N = data.N
        self.n_rest = lay.size - lay.K
        self.freeze_pi = freeze_pi
        # for predicted_gain: emission row of each (component, tuple) pair, and for a shared pi the groups of
        # pairs that use the same row at the same tuple
        self.nxt = data.nxt
        self.row_of = (self.idx - self.K) // lay.S  # (K, U)
        self.group = self.group_row = self.group_u = None
        if lay.variant == "shared" and lay.k > 1:
            U = self.idx.shape[1]
            n_rows = self.n_rest // lay.S
            key = np.arange(U)[None, :] * n_rows + self.row_of
            uniq, inv = np.unique(key.ravel(), return_inverse=True)
            self.group = inv.ravel()
            self.group_row = uniq % n_rows
            self.group_u = uniq // n_rows

    def __call__(self, theta: np.ndarray) -> tuple[np.ndarray, float]:
        """One EM step: returns (EM(theta), loglik(theta)); loglik is -inf (and theta is returned) when the
        data are impossible under theta."""
        K, S = self.K, self.lay.S
        lam = theta[:K]
        P = theta[self.idx]  # (K, U) emission probability of each component for each distinct tuple
        s = np.einsum("ku,k->u", P, lam)  # mixture probability of each tuple (MATH.md §1)
        if not (s > 0).all():
            return theta, -math.inf  # impossible data under theta
        ll = float((self.w * np.log(s)).sum())
        q = self.w / s
        e_lam = lam * np.einsum("ku,u->k", P, q)  # expected component counts sum_u w_u gamma_u(j)
        new = theta.copy()
        new[:K] = e_lam / e_lam.sum()  # lam M-step (MATH.md §3, EM); e_lam.sum() = N up to rounding
        if not self.freeze_pi:
            # dl/dtheta for every emission entry: sum over (tuple, component) pairs using it of q_u lam_j
            G = np.bincount(self.idx_rest, weights=(lam[:, None] * q).ravel(), minlength=self.n_rest).reshape(-1, S)
            E = theta[K:].reshape(-1, S) * G  # expected transition counts
            n_row = E.sum(axis=1)
            seen = n_row > 0
            new_rows = new[K:].reshape(-1, S)  # view into new
            new_rows[seen] = E[seen] / n_row[seen, None]  # exact M-step per row; unseen rows unchanged
        return new, ll

    def kkt_gap(self, theta: np.ndarray) -> float:
        """Sum over simplex blocks of the Frank-Wolfe / KKT gap ``max_j g_j - theta_B . g_B``, the max over the
        support: EM never moves an entry that is exactly 0 (an explicit start may pin entries to 0), so the
        iteration searches that face."""
        K, S = self.K, self.lay.S
        lam = theta[:K]
        P = theta[self.idx]
        s = np.einsum("ku,k->u", P, lam)
        if not (s > 0).all():
            return math.inf
        q = self.w / s
        g_lam = np.einsum("ku,u->k", P, q)  # dl/dlam_j (MATH.md §2 gradient, aggregated rows)
        gap = float(np.where(lam > 0, g_lam, -np.inf).max() - (lam * g_lam).sum())
        if not self.freeze_pi:
            G = np.bincount(self.idx_rest, weights=(lam[:, None] * q).ravel(), minlength=self.n_rest).reshape(-1, S)
            rows = theta[K:].reshape(-1, S)
            n_row = (rows * G).sum(axis=1)
            seen = n_row > 0
            gap += float((np.where(rows > 0, G, -np.inf).max(axis=1)[seen] - n_row[seen]).sum())
        return max(gap, 0.0)

    def predicted_gain(self, theta: np.ndarray) -> float:
        """Sum over simplex blocks B of gap_B^2 / (2 c_B): the gain of the best Frank-Wolfe line step in
        block B under the quadratic model of the (block-concave) log-likelihood along d_B = e_{j*} - theta_B,
        with c_B = -d_B^T (Hessian) d_B = sum_u w_u (ds_u)^2 / s_u^2 (MATH.md §2 Hessian). In log-likelihood
        units; costs about one E-step, so it is only evaluated when the other stopping test already passed."""
        K, S = self.K, self.lay.S
        lam = theta[:K]
        P = theta[self.idx]
        s = np.einsum("ku,k->u", P, lam)
        q = self.w / s
        h = self.w / (s * s)
        g_lam = np.einsum("ku,u->k", P, q)
        jstar = int(np.argmax(np.where(lam > 0, g_lam, -np.inf)))  # over the support, as in __call__
        gap = float(g_lam[jstar] - np.sum(lam * g_lam))
        c = float(np.sum(h * (P[jstar] - s) ** 2))  # direction e_{j*} - lam: ds_u = P_{j*}(u) - s_u
        total = gap * gap / (2.0 * c) if gap > 0 and c > 0 else 0.0
        if self.freeze_pi:
            return total
        G = np.bincount(self.idx_rest, weights=(lam[:, None] * q).ravel(), minlength=self.n_rest).reshape(-1, S)
        rows = theta[K:].reshape(-1, S)
        Gs = np.where(rows > 0, G, -np.inf)
        bstar = np.argmax(Gs, axis=1)
        gaps = Gs[np.arange(rows.shape[0]), bstar] - (rows * G).sum(axis=1)
        # ds_u along d_r for the row r used by component j at tuple u: lam_j ([nxt_u = b*_r] - theta_r[nxt_u]);
        # components sharing a row at one tuple (shared pi, equal context tokens) are summed before squaring
        a = lam[:, None] * ((self.nxt[None, :] == bstar[self.row_of]) - theta[self.idx])
        if self.group is not None:
            a_grp = np.bincount(self.group, weights=a.ravel(), minlength=self.group_row.shape[0])
            c_rows = np.bincount(self.group_row, weights=h[self.group_u] * a_grp**2, minlength=rows.shape[0])
        else:
            c_rows = np.bincount(self.row_of.ravel(), weights=(h[None, :] * a * a).ravel(), minlength=rows.shape[0])
        ok = (gaps > 0) & (c_rows > 0)
        return total + float(np.sum(gaps[ok] ** 2 / (2.0 * c_rows[ok])))


def _run_em(em: _EM, theta: np.ndarray, tol: float, max_iter: int, accelerate: bool = True):
    """Iterate EM (SQUAREM-accelerated unless ``accelerate=False``) from ``theta``.

    Returns (theta, loglik, n_evals, converged, history, kkt_gap); ``history[i]`` is the log-likelihood of the
    i-th accepted iterate, nondecreasing by construction; ``n_evals`` counts EM-map evaluations."""
    lay = em.lay
    th1, ll = em(theta)
    if not math.isfinite(ll):
        raise ValueError("init: the start point gives the data probability 0 "
                         "(it has a zero probability that the data use)")
    n_eval = 1
    hist = [ll]
    converged = False
    step_max = 1.0

    def monitor(new_ll: float, old_ll: float) -> None:
        if new_ll < old_ll - MONITOR_RTOL * abs(old_ll):
            warnings.warn(f"log-likelihood decreased from {old_ll!r} to {new_ll!r}", RuntimeWarning, stacklevel=3)

    while n_eval < max_iter:
        if not accelerate:
            theta = th1
            th1, ll_new = em(theta)
            n_eval += 1
        else:
            th2, ll1 = em(th1)
            n_eval += 1
            r = th1 - theta
            v = th2 - th1 - r
            sr, sv = float(np.sum(r * r)), float(np.sum(v * v))
            alpha = 1.0 if sv == 0.0 or sr == 0.0 else min(max(math.sqrt(sr / sv), 1.0), step_max)
            # SQUAREM S3 point theta + 2 a r + a^2 v (a = 1 gives th2); shrink a towards 1 until feasible
            # (block sums are preserved exactly by the extrapolation; only non-negativity can fail)
            for _ in range(30):
                if alpha <= 1.0:
                    alpha = 1.0
                    break
                thp = theta + 2.0 * alpha * r + alpha * alpha * v
                if thp.min() >= 0.0 and np.all(thp[theta > 0] > 0.0):  # keep the support: no new exact 0
                    break
                alpha = 1.0 + (alpha - 1.0) / 2.0
            else:
                alpha = 1.0
            if alpha == 1.0:
                thp = th2
            else:
                thp = lay.normalise(thp)
                if em.freeze_pi:  # frozen rows are not iterated: keep them bit-exact
                    thp[lay.K :] = theta[lay.K :]
            thn, llp = em(thp)
            n_eval += 1
            if llp >= ll1:  # extrapolation at least as good as the plain EM path: accept it
                theta, th1, ll_new = thp, thn, llp
                if alpha == step_max:
                    step_max *= 4.0
            else:  # safeguard: fall back to the plain EM step th2 (ll(th2) >= ll1 >= ll by EM monotonicity)
                theta = th2
                th1, ll_new = em(theta)
                n_eval += 1
                step_max = max(1.0, step_max / 4.0)
        monitor(ll_new, hist[-1])
        rel = (ll_new - hist[-1]) / max(abs(ll_new), 1.0)
        hist.append(ll_new)
        # KKT rule (checked only once the likelihood has stalled): the gain that one Frank-Wolfe line step in
        # each simplex block would still bring, under the quadratic model, must be below tol * |loglik|.
        # A stalled likelihood alone is not enough (slow EM also stalls: mtdlearn's failure), and the raw gap
        # alone is too strict on the flat ridges of the lag-wise model.
        if abs(rel) < tol and em.predicted_gain(theta) <= tol * max(abs(ll_new), 1.0):
            converged = True
            break
    return theta, hist[-1], n_eval, converged, np.asarray(hist), em.kkt_gap(theta)


# ----------------------------------------------------------------------------------------------------------
# starts
# ----------------------------------------------------------------------------------------------------------
def _lag_counts(data: _Data) -> np.ndarray:
    """(k, S, S) weighted transition counts from the token at lag l_j to the next token."""
    S, k = data.S, len(data.lags)
    return np.stack(
        [np.bincount(data.ctx[:, j] * S + data.nxt, weights=data.w, minlength=S * S).reshape(S, S) for j in range(k)]
    )


def _init_counts(data: _Data, lay: _Layout) -> np.ndarray:
    """lam from the lag-wise association (plug-in mutual information of (y[t-l_j], y[t])), pi from the
    transition counts (lag-wise; pooled with weights lam for a shared pi), smoothed so every entry is > 0."""
    Nc = _lag_counts(data)
    N = data.N
    S = lay.S
    mi = np.empty(lay.k)
    for j in range(lay.k):
        P = Nc[j] / N
        pa, pb = P.sum(1, keepdims=True), P.sum(0, keepdims=True)
        nz = P > 0
        mi[j] = float((P[nz] * np.log(P[nz] / (pa @ pb)[nz])).sum())
    mi = np.maximum(mi, 0.0)
    lam = mi + 0.1 * mi.mean() + 1e-12  # floor: EM cannot revive a weight that starts at exactly 0
    lam = lam / lam.sum()
    if lay.variant == "lagwise":
        pi = (Nc + _SMOOTH) / (Nc + _SMOOTH).sum(axis=2, keepdims=True)
    else:
        pooled = np.tensordot(lam, Nc, axes=1) + _SMOOTH
        pi = pooled / pooled.sum(axis=1, keepdims=True)
    if lay.independent:
        marg = np.bincount(data.nxt, weights=data.w, minlength=S) + _SMOOTH
        return lay.pack(0.9 * lam, pi, 0.1, marg / marg.sum())
    return lay.pack(lam, pi)


def _init_random(lay: _Layout, rng: np.random.Generator) -> np.ndarray:
    """lam ~ Dirichlet(1), every pi row ~ Dirichlet(1) (and p0, lam0 likewise)."""
    S = lay.S
    w = rng.dirichlet(np.ones(lay.K))
    rows = rng.dirichlet(np.ones(S), size=lay.n_pi_rows + int(lay.independent))
    return np.concatenate([w, rows.ravel()])


def _init_explicit(init: Any, lay: _Layout) -> np.ndarray:
    """A dict with keys pi, lam (and lam0, p0 when independent) or an MTDFit."""
    if isinstance(init, MTDFit):
        init = {"pi": init.pi, "lam": init.lam, "lam0": init.lam0, "p0": init.p0}
    if not isinstance(init, dict):
        raise ValueError(f'init must be "counts", "random", a dict of parameters or an MTDFit (got {init!r})')
    unknown = set(init) - {"pi", "lam", "lam0", "p0"}
    if unknown:
        raise ValueError(f"init has unknown keys {sorted(unknown)} (allowed: pi, lam, lam0, p0)")
    if "pi" not in init or "lam" not in init:
        raise ValueError("init must give both 'pi' and 'lam'")
    S, k = lay.S, lay.k
    pi = np.asarray(init["pi"], dtype=np.float64)
    if lay.variant == "lagwise":
        if pi.shape == (S, S):
            pi = np.broadcast_to(pi, (k, S, S))
        if pi.shape != (k, S, S):
            raise ValueError(f"init['pi'] must have shape ({k}, {S}, {S}) for variant='lagwise' (got {pi.shape})")
        for j in range(k):
            check_pi(pi[j], f"init['pi'][{j}]")
    else:
        if pi.shape != (S, S):
            raise ValueError(f"init['pi'] must have shape ({S}, {S}) (got {pi.shape})")
        check_pi(pi, "init['pi']")
    lam0 = init.get("lam0")
    if lay.independent:
        if lam0 is None or init.get("p0") is None:
            raise ValueError("init must give 'lam0' and 'p0' when independent=True")
        lam0 = check_float(lam0, "init['lam0']", nonnegative=True)
        p0 = check_prob_vector(init["p0"], "init['p0']", S)
        lam = np.asarray(init["lam"], dtype=np.float64)
        check_prob_vector(np.append(lam, lam0), "init['lam'] with init['lam0']", k + 1)
        return lay.pack(lam, pi, lam0, p0)
    if lam0 not in (None, 0, 0.0):
        raise ValueError("init gives 'lam0' but independent=False")
    lam = check_prob_vector(init["lam"], "init['lam']", k)
    return lay.pack(lam, pi)


# ----------------------------------------------------------------------------------------------------------
# the fitted model
# ----------------------------------------------------------------------------------------------------------
def _n_params(S: int, k: int, variant: str, independent: bool) -> int:
    """Generic number of identifiable parameters (rank of the Jacobian of the map from the parameters to the
    conditional law P(. | context) at a generic interior point):

    - shared:                 S(S-1) + k - 1            (pi rows, lam on the simplex; identifiable)
    - shared + independent:   S(S-1) + k - 1            (raw S(S-1) + k + S - 1, minus the S-dimensional
      invariance pi -> (pi - t 1 q^T)/(1-t), lam -> (1-t) lam, lam0 p0 -> lam0 p0 + t (1-lam0) q)
    - lagwise (+/- independent): (S-1)(1 + k(S-1))       (the products lam_j pi_j are identified only up to
      adding constant rows 1 c_j^T with sum_j c_j = 0; this is Lebre & Bourguignon's count, also mtdlearn's)
    """
    if variant == "lagwise":
        return (S - 1) * (1 + k * (S - 1))
    return S * (S - 1) + k - 1


@dataclass
class MTDFit:
    """A fitted (or given) MTD model.

    Attributes
    ----------
    pi : ndarray
        (S, S) shared transition matrix, or (k, S, S) with ``pi[j]`` the matrix of lag ``lags[j]``. A row that
        no transition of the data uses is not identified; :func:`fit` returns it uniform.
    lam : ndarray
        (k,) lag weights, ``lam[j]`` for lag ``lags[j]``; ``lam.sum() + lam0 == 1``.
    lags : tuple of int
        Sorted distinct positive lags; the max lag is ``order``.
    lam0, p0 : float, ndarray (S,) or None
        Weight and law of the order-0 component (``independent=True``), else None.
    loglik : float
        Log-likelihood of the data, conditioned on each sequence's first ``order`` tokens (nan if not fitted).
    n_obs : float
        Number of (weighted) transitions used, the ``n`` of BIC.
    n_iter : int
        EM-map evaluations of the best restart (one SQUAREM iteration uses three).
    converged : bool
        The best restart met the stopping rule before ``max_iter``.
    history : ndarray
        Log-likelihood at every accepted iterate of the best restart (nondecreasing).
    kkt_gap : float
        Sum over simplex blocks of the Frank-Wolfe gap ``max_j g_j - theta . g`` at the returned point, the max
        taken over the support (an entry that is exactly 0, e.g. pinned by an explicit start, stays 0 under EM).
    restart_logliks : ndarray
        Final log-likelihood of every restart, in start order (first = the ``init`` start).
    """

    pi: np.ndarray
    lam: np.ndarray
    lags: tuple[int, ...]
    lam0: float | None = None
    p0: np.ndarray | None = None
    loglik: float = math.nan
    n_obs: float = 0.0
    n_iter: int = 0
    converged: bool = False
    history: np.ndarray = field(default_factory=lambda: np.empty(0))
    kkt_gap: float = math.nan
    restart_logliks: np.ndarray = field(default_factory=lambda: np.empty(0))

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_params(cls, pi: Any, lam: Any, *, lags: Sequence[int] | None = None, lam0: float | None = None,
                    p0: Any = None) -> "MTDFit":
        """Build a model from known parameters (for simulation and scoring), validating them.

        ``pi`` (S, S) means a shared model, (k, S, S) a lag-wise one; ``lags`` defaults to 1..k; give
        ``lam0`` and ``p0`` together for the order-0 component (then ``lam.sum() + lam0 == 1``)."""
        lam = np.asarray(lam, dtype=np.float64)
        if lam.ndim != 1 or lam.shape[0] < 1:
            raise ValueError(f"lam must be 1-D with length k >= 1 (got shape {lam.shape})")
        k = lam.shape[0]
        lags_t = _check_lags(None, lags) if lags is not None else tuple(range(1, k + 1))
        if len(lags_t) != k:
            raise ValueError(f"lags must have one entry per lam weight ({k}) (got {lags!r})")
        pi = np.asarray(pi, dtype=np.float64)
        if pi.ndim == 3:
            if pi.shape[0] != k:
                raise ValueError(f"pi must have shape (k={k}, S, S) for a lag-wise model (got {pi.shape})")
            pi = np.stack([check_pi(pi[j], f"pi[{j}]") for j in range(k)])
        else:
            pi = check_pi(pi, "pi")
        S = pi.shape[-1]
        if (lam0 is None) != (p0 is None):
            raise ValueError("lam0 and p0 must be given together")
        if lam0 is not None:
            lam0 = check_float(lam0, "lam0", nonnegative=True)
            p0 = check_prob_vector(p0, "p0", S)
            check_prob_vector(np.append(lam, lam0), "lam with lam0")
        else:
            check_prob_vector(lam, "lam")
        return cls(pi=pi, lam=lam, lags=lags_t, lam0=lam0, p0=p0)

    # -- derived quantities -------------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        return "lagwise" if self.pi.ndim == 3 else "shared"

    @property
    def independent(self) -> bool:
        return self.lam0 is not None

    @property
    def n_states(self) -> int:
        return int(self.pi.shape[-1])

    @property
    def order(self) -> int:
        return int(self.lags[-1])

    @property
    def n_params(self) -> int:
        """Generic identifiable parameter count (see ``_n_params`` for the derivation):
        shared: S(S-1)+k-1 (with or without the order-0 component); lagwise: (S-1)(1+k(S-1))."""
        return _n_params(self.n_states, len(self.lags), self.variant, self.independent)

    @property
    def aic(self) -> float:
        """-2 loglik + 2 n_params."""
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        """-2 loglik + log(n_obs) n_params, n_obs = number of (weighted) transitions."""
        return -2.0 * self.loglik + math.log(self.n_obs) * self.n_params if self.n_obs > 0 else math.nan

    def _pis(self) -> np.ndarray:
        """(k, S, S) per-lag matrices (a shared pi repeated)."""
        k = len(self.lags)
        return self.pi if self.pi.ndim == 3 else np.broadcast_to(self.pi, (k,) + self.pi.shape)

    # -- prediction ---------------------------------------------------------------------------------------
    def predict_proba(self, contexts: Any) -> np.ndarray:
        """Law of the next token after each context.

        Parameters
        ----------
        contexts : int array (..., L), L >= order
            Token histories, time last; only the last ``order`` tokens matter (``contexts[..., -l]`` is lag l).

        Returns
        -------
        ndarray (..., S)
            ``lam0 p0 + sum_j lam[j] pi_j[contexts[..., -lags[j]], :]`` (MATH.md §1).
        """
        S = self.n_states
        c = check_tokens(contexts, S, self.order, name="contexts")
        pis = self._pis()
        out = np.zeros(c.shape[:-1] + (S,))
        for j, l in enumerate(self.lags):
            out += self.lam[j] * pis[j][c[..., -l]]
        if self.independent:
            out += self.lam0 * self.p0
        return out

    def log_likelihood(self, sequences: Any, *, weights: Any = None) -> float:
        """Log-likelihood of ``sequences`` (same layouts as :func:`fit`), each conditioned on its first
        ``order`` tokens; -inf when the data are impossible under the model."""
        data = _prepare(sequences, None, self.lags, self.n_states, weights)
        lay = _Layout(self.n_states, len(self.lags), self.variant, self.independent)
        theta = lay.pack(self.lam, self.pi, self.lam0, self.p0)
        s = np.einsum("uk,k->u", theta[lay.index(data)], theta[: lay.K])
        with np.errstate(divide="ignore"):
            return float(np.sum(data.w * np.log(s)))

    def sample(self, T: int, rng: Any = None, *, init: Any = None) -> np.ndarray:
        """Simulate one chain of length T.

        The first ``order`` tokens are i.i.d. from ``init`` (default uniform, MATH.md §1); afterwards each
        token is drawn from :meth:`predict_proba` of the tokens generated so far (latent lag first, then the
        row of that lag's matrix). A real chain: every token depends on the previously generated ones.

        Returns
        -------
        ndarray (T,) int64
        """
        T = check_int(T, "T", minimum=0)
        rng = as_rng(rng)
        S, M = self.n_states, self.order
        init_p = np.full(S, 1.0 / S) if init is None else check_prob_vector(init, "init", S)
        y = np.empty(T, dtype=np.int64)
        M0 = min(M, T)
        y[:M0] = rng.choice(S, size=M0, p=init_p)
        if T <= M:
            return y
        k = len(self.lags)
        weights = np.append(self.lam, self.lam0) if self.independent else self.lam
        weights = weights / weights.sum()
        z = rng.choice(weights.shape[0], size=T - M, p=weights)  # latent lags Z_t
        u = rng.random(T - M)
        pis = self._pis()
        # cumulative rows as Python lists: bisect on them is cheap in the unavoidable sequential loop
        cum = [[np.cumsum(pis[j][a]).tolist() for a in range(S)] for j in range(k)]
        cum0 = np.cumsum(self.p0).tolist() if self.independent else None
        lags = self.lags
        yl = y.tolist()
        for i in range(T - M):
            t = M + i
            zi = int(z[i])
            row = cum0 if zi == k else cum[zi][yl[t - lags[zi]]]
            b = bisect.bisect_right(row, float(u[i]))
            yl[t] = b if b < S else S - 1  # guards u ~ 1 against rounding of the last cumulative sum
        return np.asarray(yl, dtype=np.int64)

    # -- first-order embedding ----------------------------------------------------------------------------
    def _state_space(self, max_states: int, what: str) -> int:
        S, M = self.n_states, self.order
        n = S**M
        if n > max_states:
            raise ValueError(
                f"{what}: the max-lag state space has S^order = {S}^{M} = {n} states, above the limit "
                f"max_states = {max_states}; raise max_states if you have the memory"
            )
        return n

    def _expanded_sparse(self, n: int):
        import scipy.sparse as sp

        S, M = self.n_states, self.order
        states = np.arange(n)
        # digits of each state, oldest token first: state = sum_i y[t-M+1+i] S^(M-1-i)
        ctx = np.stack([(states // S ** (M - 1 - i)) % S for i in range(M)], axis=1)
        P = self.predict_proba(ctx)  # (n, S): law of the next token from each state
        nxt = (states % S ** (M - 1))[:, None] * S + np.arange(S)[None, :]  # drop oldest, append b
        return sp.csr_matrix((P.ravel(), (np.repeat(states, S), nxt.ravel())), shape=(n, n))

    def expanded_matrix(self, *, sparse: bool = False, max_states: int | None = None):
        """First-order embedding of the chain on the max-lag state space (Raftery 1985, §1.1).

        State ``(y[t-M+1], ..., y[t])`` (oldest first) has index ``sum_i y[t-M+1+i] S^(M-1-i)``; the entry
        ``[s, s']`` is P(s -> s'), non-zero only when s' = s shifted by one token. Returns a dense
        (S^M, S^M) array (limit ``max_states``, default 4096) or a scipy CSR matrix with ``sparse=True``
        (default limit 200000); a ``ValueError`` names the limit when S^M is above it."""
        if max_states is None:
            limit = MAX_STATES if sparse else MAX_DENSE_STATES
        else:
            limit = check_int(max_states, "max_states", 1)
        n = self._state_space(limit, "expanded_matrix")
        A = self._expanded_sparse(n)
        return A if sparse else A.toarray()

    def stationary_distribution(self, *, max_states: int = MAX_STATES) -> tuple[np.ndarray, np.ndarray]:
        """Stationary law of the chain on the max-lag state space and its one-token marginal.

        Solves ``p A = p, sum p = 1`` for the expanded matrix A: exactly (dense LU of
        ``I - A^T + 1 1^T / n``, nonsingular iff the stationary law is unique) when S^order <= 2000, else by
        power iteration of the lazy chain ``(I + A) / 2`` from the uniform law (sparse products only) to an
        L1 change < 1e-14, finished by GMRES on the same nonsingular system if that is slow. Raises
        ``ValueError`` when S^order exceeds ``max_states`` (naming the limit) or, for small state spaces,
        when the law is not unique (for large ones a reducible chain gives the limit from the uniform start).

        Returns
        -------
        joint : ndarray (S^order,)
            Indexed like :meth:`expanded_matrix`.
        marginal : ndarray (S,)
            Law of one token under stationarity.
        """
        max_states = check_int(max_states, "max_states", 1)
        n = self._state_space(max_states, "stationary_distribution")
        S = self.n_states
        AT = self._expanded_sparse(n).T.tocsr()
        if n <= _DENSE_SOLVE_STATES:
            B = np.eye(n) - AT.toarray() + 1.0 / n
            try:
                p = np.linalg.solve(B, np.full(n, 1.0 / n))
            except np.linalg.LinAlgError:  # exactly singular: several stationary laws
                p = np.full(n, np.nan)
        else:
            p = np.full(n, 1.0 / n)
            for _ in range(_POWER_ITERS):
                q = AT @ p
                delta = float(np.abs(q - p).sum())
                p = 0.5 * (p + q)
                if delta < 1e-14:
                    break
            else:
                import scipy.sparse.linalg as spl

                op = spl.LinearOperator((n, n), matvec=lambda x: x - AT @ x + x.sum() / n, dtype=np.float64)
                p, _ = spl.gmres(op, np.full(n, 1.0 / n), x0=p, rtol=1e-13, atol=0.0, restart=50, maxiter=1000)
        ok = np.all(np.isfinite(p)) and float(np.abs(AT @ p - p).sum()) <= 1e-9 and p.min() >= -1e-9
        if not ok:
            raise ValueError("stationary_distribution: the chain has no unique stationary law (reducible chain)"
                             " or the solver did not converge")
        p = np.clip(p, 0.0, None)
        p /= p.sum()
        marginal = np.bincount(np.arange(n) % S, weights=p, minlength=S)
        return p, marginal


# ----------------------------------------------------------------------------------------------------------
# public fitting functions
# ----------------------------------------------------------------------------------------------------------
def _fit_impl(sequences, order=None, *, lags=None, n_states=None, variant="shared", independent=False,
              restarts=10, init="counts", tol=1e-9, max_iter=10_000, weights=None, rng=None,
              start=None, accelerate=True, freeze_pi=False) -> MTDFit:
    """:func:`fit` plus private knobs: ``start`` (condition every sequence on its first ``start`` tokens,
    for comparable likelihoods across orders), ``accelerate`` (SQUAREM on/off), ``freeze_pi`` (lam-only EM
    with pi fixed at the explicit start, for checking against ``mtdmath.mle``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} (got {variant!r})")
    if not isinstance(independent, (bool, np.bool_)):
        raise ValueError(f"independent must be a bool (got {independent!r})")
    restarts = check_int(restarts, "restarts", minimum=1)
    tol = check_float(tol, "tol", positive=True)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    if isinstance(init, str) and init not in ("counts", "random"):
        raise ValueError(f'init must be "counts", "random", a dict of parameters or an MTDFit (got {init!r})')
    rng = as_rng(rng)
    data = _prepare(sequences, order, lags, n_states, weights, start)
    lay = _Layout(data.S, len(data.lags), variant, bool(independent))
    em = _EM(data, lay, freeze_pi=freeze_pi)
    if freeze_pi and isinstance(init, str):
        raise ValueError("freeze_pi needs explicit init parameters")
    explicit = None if isinstance(init, str) else _init_explicit(init, lay)
    best = None
    lls = []
    for r in range(restarts):
        if r == 0 and not (isinstance(init, str) and init == "random"):
            theta0 = _init_counts(data, lay) if explicit is None else explicit
        else:
            theta0 = _init_random(lay, rng)
            if freeze_pi:  # only lam is random; the emission rows stay the given ones
                theta0[lay.K :] = explicit[lay.K :]
        res = _run_em(em, theta0, tol, max_iter, accelerate)
        lls.append(res[1])
        if best is None or res[1] > best[1]:
            best = res
    theta, ll, n_eval, converged, hist, gap = best
    if not converged:
        warnings.warn(f"EM did not converge in max_iter = {max_iter} EM steps (KKT gap {gap:.3g})",
                      RuntimeWarning, stacklevel=3)
    if not freeze_pi:
        # rows of pi that no transition uses do not enter the likelihood: report them as uniform rather than
        # as whatever the winning start happened to hold
        rows = theta[lay.K :].reshape(-1, lay.S)
        unused = np.ones(rows.shape[0], dtype=bool)
        unused[np.unique(em.idx_rest // lay.S)] = False
        rows[unused] = 1.0 / lay.S
    par = lay.unpack(theta)
    return MTDFit(pi=par["pi"], lam=par["lam"], lags=data.lags, lam0=par.get("lam0"), p0=par.get("p0"),
                  loglik=ll, n_obs=data.N, n_iter=n_eval, converged=converged, history=hist, kkt_gap=gap,
                  restart_logliks=np.asarray(lls))


def fit(sequences: Any, order: int | None = None, *, lags: Sequence[int] | None = None,
        n_states: int | None = None, variant: str = "shared", independent: bool = False, restarts: int = 10,
        init: Any = "counts", tol: float = 1e-9, max_iter: int = 10_000, weights: Any = None,
        rng: Any = None) -> MTDFit:
    """Maximum-likelihood fit of an MTD model by EM (exact M-steps, SQUAREM-accelerated, restarts).

    Parameters
    ----------
    sequences : int array (T,), int array (B, T), or list of 1-D int arrays
        Tokens in [0, S); each sequence is conditioned on its own first ``max(lags)`` tokens.
    order : int, optional
        Fit lags 1..order (give ``order`` or ``lags``).
    lags : sequence of int, optional
        Sparse set of distinct positive lags, e.g. (1, 10); stored sorted, ``lam[j]`` belongs to ``lags[j]``.
    n_states : int, optional
        S; default ``max token + 1``.
    variant : {"shared", "lagwise"}
        One pi for every lag (Raftery's MTD) or one matrix per lag (MTDg).
    independent : bool
        Add the order-0 component ``lam0 * p0``.
    restarts : int
        Number of starts; the first is ``init`` (unless ``init="random"``), the others are random
        (lam and every row ~ Dirichlet(1)), drawn from ``rng`` in order. The best log-likelihood wins.
    init : "counts", "random", dict or MTDFit
        "counts": lam from the lag-wise mutual information, pi from smoothed lag-wise transition counts
        (pooled with weights lam when shared); explicit: ``{"pi", "lam"[, "lam0", "p0"]}`` (entries that
        are exactly 0 stay 0 under EM).
    tol : float
        Stop when the relative log-likelihood change over an iteration is < tol and the gain that one
        Frank-Wolfe step per simplex block would still bring (quadratic model of the KKT gap, see the
        module docstring) is < tol * |loglik|.
    max_iter : int
        Maximum number of EM-map evaluations per start.
    weights : array (n_sequences,), optional
        Non-negative weight of each sequence's log-likelihood.
    rng : numpy Generator, int seed or None
        Makes the random restarts reproducible.

    Returns
    -------
    MTDFit
    """
    return _fit_impl(sequences, order, lags=lags, n_states=n_states, variant=variant, independent=independent,
                     restarts=restarts, init=init, tol=tol, max_iter=max_iter, weights=weights, rng=rng)


def select_order(sequences: Any, max_order: int, *, criterion: str = "bic", variant: str = "shared",
                 **fit_kwargs: Any) -> tuple[MTDFit, list[dict]]:
    """Fit orders 1..max_order and keep the one with the smallest information criterion.

    Every order is fitted on the same transitions (each sequence conditioned on its first ``max_order``
    tokens), so the log-likelihoods are comparable.

    Returns
    -------
    best : MTDFit
    table : list of dict
        One row per order: ``order, loglik, n_params, aic, bic, n_obs``.
    """
    max_order = check_int(max_order, "max_order", minimum=1)
    if criterion not in ("aic", "bic"):
        raise ValueError(f'criterion must be "aic" or "bic" (got {criterion!r})')
    for key in ("order", "lags", "start"):
        if key in fit_kwargs:
            raise ValueError(f"select_order chooses the order itself: do not pass {key!r}")
    bad = set(fit_kwargs) - {"n_states", "independent", "restarts", "init", "tol", "max_iter", "weights", "rng"}
    if bad:
        raise ValueError(f"select_order got unknown fit arguments {sorted(bad)}")
    rng = as_rng(fit_kwargs.pop("rng", None))
    table, fits = [], []
    for m in range(1, max_order + 1):
        f = _fit_impl(sequences, m, variant=variant, start=max_order, rng=rng, **fit_kwargs)
        fits.append(f)
        table.append({"order": m, "loglik": f.loglik, "n_params": f.n_params, "aic": f.aic, "bic": f.bic,
                      "n_obs": f.n_obs})
    best = min(range(max_order), key=lambda i: table[i][criterion])
    return fits[best], table
