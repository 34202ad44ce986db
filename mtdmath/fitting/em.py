"""The EM machinery of MTD fitting (pi unknown): sufficient statistics, the E/M steps, the convergence monitor.

Model (docs/math.md §1, Raftery's MTD and its lag-wise form MTDg; lags ``l_1 < ... < l_k``, max lag ``M``)::

    P(y[t] = b | past) = lam0 * p0[b] + sum_j lam[j] * pi_j[y[t - l_j], b]          (t >= M)

``variant="shared"``: one ``pi`` for every lag (the paper's model); ``variant="lagwise"``: one matrix per
lag (MTDg); ``independent=True`` adds the order-0 component ``lam0 * p0`` (hdMTD's model), otherwise
``lam0 = 0``. Each sequence is conditioned on its own first ``M`` tokens.

EM (the latent lag ``Z_t`` of docs/math.md §1 is the missing datum). With ``s_u`` the mixture probability of a
distinct (context, next) tuple ``u`` with weighted count ``w_u`` and ``q_u = w_u / s_u``:

- E-step: responsibilities ``gamma_u(j) = lam_j P_j[u] / s_u`` (docs/math.md §2).
- M-step (exact, closed form): ``lam_j <- sum_u w_u gamma_u(j) / N`` (docs/math.md §3, EM);
  ``pi[a, b] <- E[count a -> b] / E[count a]`` with ``E[count a -> b] = pi[a, b] * dl/dpi[a, b]``;
  ``p0[b] <- E[count of component 0 emitting b] / E[count of component 0]``.

Everything is computed on the aggregated counts of distinct (lag-context, next) tuples (``np.unique`` of the
stacked tuples, weighted counts), so an iteration costs O(#distinct tuples x #components) vectorised work —
never O(S^(k+1)) and never O(n) Python work. EM is accelerated by the library's one SQUAREM
(``mtdmath._squarem``: Varadhan & Roland 2008, scheme S3) with a monotonicity safeguard: if the
extrapolated point gives a lower log-likelihood than the plain EM path, the plain EM step is taken instead,
so the log-likelihood never decreases. All restarts of a fit run as one batch.

Stopping rule: relative change of the log-likelihood over one iteration below ``tol`` *and* a KKT test: the
KKT (Frank-Wolfe) gap of a simplex block ``B`` with gradient ``g`` is ``gap_B = max_{j in B} g_j - theta_B . g_B``
(zero exactly at a KKT point of the block; the log-likelihood is concave in each block - lam given pi, pi given
lam - so it bounds what optimising that block alone could gain). The test requires the predicted gain of one
Frank-Wolfe line step per block under the quadratic model, ``sum_B gap_B^2 / (2 c_B)`` with ``c_B`` the
curvature along the step, to be below ``tol * |loglik|``. The summed gap is reported as ``MTDFit.kkt_gap``.
On flat ridges and near boundary saddles a second rule stops the run: less than ``tol * |loglik|`` gained
over the last ``window`` iterates (:class:`ConvergenceMonitor`).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._squarem import squarem
from .._validate import _host_kind_check, check_alloc, check_float, check_int, check_pi, check_prob_vector

VARIANTS = ("shared", "lagwise")
#: relative drop of the log-likelihood between iterations that the convergence monitor reports
MONITOR_RTOL = 1e-10
#: above this many (component, tuple) cells the EM map runs row by row rather than as one batch
_BATCH_CELLS = 20_000
#: below this many (restart, component, tuple) cells the compiled EM map runs on one thread: one serial pass
#: then costs <= ~0.2 ms (measured 0.13 ms at 38k cells), less than a parallel launch on a busy machine
_PARALLEL_CELLS = 50_000
#: pseudo-count added to every cell when building the "counts" start (keeps every entry > 0,
#: because EM can never move an entry away from exactly 0)
_SMOOTH = 0.5


# ----------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> Any:
    """Array inputs of any backend (torch CPU/CUDA, array-api-strict, ...) to NumPy, once, at the public entry
    points; fitting is NumPy inside. Lists and tuples stay lists, their array elements converted."""
    from .._xp import to_numpy

    if x is None or isinstance(x, (str, dict)) or np.isscalar(x):
        return x
    if isinstance(x, (list, tuple)):
        return [a if np.isscalar(a) else to_numpy(a) for a in x]
    return to_numpy(x)


def _as_sequences(sequences: Any, name: str = "sequences") -> list[np.ndarray]:
    """One 1-D array, a 2-D array (rows are sequences) or a list of 1-D arrays -> list of int64 arrays.

    Errors name the argument as ``name`` (``X`` for the estimator). Tokens are range-checked in their
    own dtype before the cast, so an unsigned token of 2**63 or more is reported, not wrapped.
    """
    if isinstance(sequences, np.ndarray):
        arrs = [sequences] if sequences.ndim == 1 else list(sequences) if sequences.ndim == 2 else None
        if arrs is None:
            raise ValueError(f"{name} must be 1-D, 2-D or a list of 1-D arrays (got shape {sequences.shape})")
    elif isinstance(sequences, (list, tuple)):
        if len(sequences) == 0:
            raise ValueError(f"{name} is empty: no data to fit")
        try:
            if all(np.ndim(s) == 0 for s in sequences):  # a flat list of tokens is one sequence
                arrs = [np.asarray(sequences)]
            else:
                arrs = [np.asarray(s) for s in sequences]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must hold integer tokens") from None
    else:
        raise ValueError(f"{name} must be an integer array or a list of integer arrays "
                         f"(got {type(sequences).__name__})")
    if len(arrs) == 0:
        raise ValueError(f"{name} is empty: no data to fit")
    out = []
    for i, a in enumerate(arrs):
        a = np.asarray(a)
        if a.ndim != 1:
            raise ValueError(f"{name}[{i}] must be 1-D (got shape {a.shape})")
        if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer tokens ({name}[{i}] has dtype {a.dtype})")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} must hold non-negative tokens ({name}[{i}] has min {a.min()})")
        if a.size and a.max() > np.iinfo(np.int64).max // 2:
            raise ValueError(f"{name} holds a token too large for a state ({name}[{i}] has max {a.max()})")
        out.append(a.astype(np.int64, copy=False))
    if not any(a.size for a in out):
        raise ValueError(f"{name} is empty: no data to fit")
    return out


def _check_lags(order: Any, lags: Any) -> tuple[int, ...]:
    """Sorted tuple of distinct positive lags; ``order`` alone means lags 1..order."""
    if lags is None:
        if order is None:
            raise ValueError("order must be given (or lags)")
        order = check_int(order, "order", minimum=1)
        return tuple(range(1, order + 1))
    if isinstance(lags, (str, bytes)):
        raise ValueError(f"lags must be a sequence of positive integers (got {lags!r})")
    try:
        arr = np.asarray(lags)
    except (TypeError, ValueError):
        raise ValueError(f"lags must be a sequence of positive integers (got {lags!r})") from None
    if arr.ndim > 1:
        raise ValueError(f"lags must be a 1-D sequence of positive integers (got shape {arr.shape})")
    raw = [lags] if arr.ndim == 0 else list(arr)
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


def _check_weights(weights: Any, seqs: list[np.ndarray], name: str = "weights"
                   ) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Per-sequence and per-transition weights (docs/math.md §7.9) -> (sequence weights (B,), token weights).

    ``weights`` is either one weight per sequence, shape (B,), or one weight per token in the layout of the
    sequences (a 1-D array (T,) for one sequence, a 2-D array (B, T) for rows, a list of 1-D arrays): the
    weight at position t weighs the transition into y[t]; positions before the conditioning start weigh
    nothing (they must still be finite and non-negative). One sequence with one weight is a sequence weight.
    Errors name the argument as ``name``.
    """
    n_seq = len(seqs)
    if weights is None:
        return np.ones(n_seq), None
    lens = [s.shape[0] for s in seqs]
    per_token = None
    if isinstance(weights, (list, tuple)) and len(weights) == n_seq and any(np.ndim(x) > 0 for x in weights):
        per_token = list(weights)
    else:
        _host_kind_check(weights, name)  # no parsing of strings, no dropping of imaginary parts
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim == 0:
            w = w.reshape(1)
        if w.ndim == 1 and w.shape[0] == n_seq:
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"{name} must be finite and non-negative (got {w[:6]})")
            if not np.any(w > 0):
                raise ValueError(f"{name} are all zero: no data to fit")
            return w, None
        if n_seq == 1 and w.ndim == 1 and w.shape[0] == lens[0]:
            per_token = [w]
        elif w.ndim == 2 and len(set(lens)) == 1 and w.shape == (n_seq, lens[0]):
            per_token = list(w)
        else:
            raise ValueError(f"{name} must have one entry per sequence ({n_seq}) or one per token in the layout "
                             f"of the sequences (lengths {lens[:6]}) (got shape {w.shape})")
    out = []
    for i, (x, T) in enumerate(zip(per_token, lens)):
        _host_kind_check(x, f"{name}[{i}]")
        a = np.asarray(x, dtype=np.float64)
        if a.shape != (T,):
            raise ValueError(f"{name}[{i}] must have one weight per token of sequence {i} (shape ({T},)) "
                             f"(got shape {a.shape})")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"{name} must be finite and non-negative ({name}[{i}] has {a[~(np.isfinite(a) & (a >= 0))][:4]})")
        out.append(a)
    return np.ones(n_seq), out


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


def _aggregate(seqs: list[np.ndarray], S: int, lags: tuple[int, ...], weights: np.ndarray, start: int,
               token_w: list[np.ndarray] | None = None) -> _Data:
    """Stack every transition t = start..T-1 of every sequence as the tuple (y[t-l_1], ..., y[t-l_k], y[t])
    and count the distinct tuples (np.unique + weighted bincount). Python work is O(#sequences).

    A transition's weight is its sequence's weight times, with ``token_w``, the weight of its position t
    (docs/math.md §7.9); a tuple whose summed weight is 0 is dropped."""
    k = len(lags)
    lag_arr = np.asarray(lags)
    if k * math.log(max(S, 2)) + math.log(max(S, 2)) < 62 * math.log(2):
        # encode each tuple as one int64 in base S: 1-D np.unique is much faster than unique(axis=0)
        codes, wts = [], []
        if len(seqs) > 1 and token_w is None and len({y.shape[0] for y in seqs}) == 1 and seqs[0].shape[0] > start:
            # many sequences of one length (e.g. a design matrix, one row per transition): one vectorised pass
            Y = np.stack(seqs)
            t = np.arange(start, Y.shape[1])
            c = np.zeros((Y.shape[0], t.shape[0]), dtype=np.int64)
            for l in lag_arr:
                c = c * S + Y[:, t - l]
            c = c * S + Y[:, t]
            keep_rows = weights > 0
            codes.append(c[keep_rows].ravel())
            wts.append(np.repeat(weights[keep_rows], t.shape[0]))
            seqs = []
        for i, (y, wt) in enumerate(zip(seqs, weights)):
            T = y.shape[0]
            if T <= start or wt == 0:
                continue
            t = np.arange(start, T)
            c = np.zeros(T - start, dtype=np.int64)
            for l in lag_arr:  # most significant digit = lag l_1, ..., least significant = next token
                c = c * S + y[t - l]
            c = c * S + y[t]
            codes.append(c)
            wts.append(np.full(T - start, wt) if token_w is None else wt * token_w[i][start:])
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
        for i, (y, wt) in enumerate(zip(seqs, weights)):
            T = y.shape[0]
            if T <= start or wt == 0:
                continue
            t = np.arange(start, T)
            rows.append(np.stack([y[t - l] for l in lag_arr] + [y[t]], axis=1))
            wts.append(np.full(T - start, wt) if token_w is None else wt * token_w[i][start:])
        if not rows:
            raise ValueError("sequences hold no transitions (every sequence has length <= max lag, or zero weight)")
        digits, inv = np.unique(np.concatenate(rows), axis=0, return_inverse=True)
        w = np.bincount(inv.ravel(), weights=np.concatenate(wts), minlength=digits.shape[0])
    keep = w > 0
    digits, w = digits[keep], w[keep]
    return _Data(ctx=np.ascontiguousarray(digits[:, :k]), nxt=np.ascontiguousarray(digits[:, k]), w=w, S=S, lags=lags)


def _prepare(sequences, order, lags, n_states, weights, start=None, weights_name="weights"):
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
    # the parameters: up to one (S, S) matrix per lag, a few copies per restart and SQUAREM iterate
    name = "sequences" if n_states is None else "n_states"
    why = f"the largest token {top} makes S = {S} states" if n_states is None else f"S = {S} states"
    check_alloc(8 * len(lags_t) * S * S, 8, name, f"{why}: (S, S) transition matrices for {len(lags_t)} lags")
    w, token_w = _check_weights(weights, seqs, weights_name)
    data = _aggregate(seqs, S, lags_t, w, M if start is None else max(start, M), token_w)
    if data.w.shape[0] == 0:
        raise ValueError(f"{weights_name} gives every transition weight 0: no data to fit")
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
        self.idx_i64 = self.idx.astype(np.int64, copy=False)
        self.idx_rest = (self.idx - self.K).ravel()  # positions among the emission rows
        self.w = data.w
        self.N = data.N
        self.n_rest = lay.size - lay.K
        self.freeze_pi = freeze_pi
        #: whether batch uses the compiled kernel: None = decide at every call; run_em fixes it for one run
        self.kernel: bool | None = None
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
        """One EM step on one parameter vector: returns (EM(theta), loglik(theta)); loglik is -inf (and theta
        is returned) when the data are impossible under theta."""
        new, ll = self.batch(theta[None, :])
        return new[0], float(ll[0])

    def batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The EM map on a batch of parameter vectors.

        Parameters
        ----------
        x : ndarray (b, d)
            Parameter vectors in the layout of :class:`_Layout`.

        Returns
        -------
        F : ndarray (b, d)
            ``EM(x[i])`` per row (``x[i]`` itself where the data are impossible under it).
        loglik : ndarray (b,)
            Log-likelihood of ``x[i]`` (-inf where the data are impossible).
        """
        K, S = self.K, self.lay.S
        b = x.shape[0]
        if self.kernel if self.kernel is not None else _kernels_enabled():  # the fused E+M kernel: one pass
            # over the tuples per restart (run_em decides once per fit; direct calls check every time)
            from .._kernels.fitem import em_batch

            x = np.ascontiguousarray(x, dtype=np.float64)
            new, ll = np.empty_like(x), np.empty(b)
            em_batch(x, self.idx_i64, self.w, K, S, self.n_rest, self.freeze_pi, new, ll)
            return new, ll
        if b > 1 and self.idx.size > _BATCH_CELLS:
            # many distinct tuples: row by row keeps the (K, U) work in cache (batched einsum is ~3x slower)
            outs = [self.batch(x[i : i + 1]) for i in range(b)]
            return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
        lam = x[:, :K]  # (b, K)
        P = x[:, self.idx]  # (b, K, U) emission probability of each component for each distinct tuple
        if b == 1:
            s = np.einsum("ku,k->u", P[0], lam[0])[None, :]  # mixture probability of each tuple (docs/math.md §1)
        else:
            s = np.einsum("bku,bk->bu", P, lam)
        ok = (s > 0).all(axis=1)
        ll = np.full(b, -math.inf)
        new = x.copy()
        if not ok.any():
            return new, ll
        if not ok.all():  # rows whose data are impossible: returned unchanged, loglik -inf
            sub, lls = self.batch(x[ok])
            new[ok], ll[ok] = sub, lls
            return new, ll
        ll = (self.w[None, :] * np.log(s)).sum(axis=1)  # elementwise, not BLAS (see the class docstring)
        q = self.w[None, :] / s  # (b, U)
        if b == 1:
            e_lam = lam * np.einsum("ku,u->k", P[0], q[0])[None, :]  # expected component counts
        else:
            e_lam = lam * np.einsum("bku,bu->bk", P, q)  # sum_u w_u gamma_u(j)
        new[:, :K] = e_lam / e_lam.sum(axis=1, keepdims=True)  # lam M-step (docs/math.md §3, EM)
        if not self.freeze_pi:
            # dl/dtheta for every emission entry: sum over (tuple, component) pairs using it of q_u lam_j
            pos = self.idx_rest if b == 1 else ((np.arange(b) * self.n_rest)[:, None] + self.idx_rest[None, :]).ravel()
            G = np.bincount(pos, weights=(lam[:, :, None] * q[:, None, :]).ravel(),
                            minlength=b * self.n_rest).reshape(b, -1, S)
            E = x[:, K:].reshape(b, -1, S) * G  # expected transition counts
            n_row = E.sum(axis=2)
            seen = n_row > 0
            if b == 1:  # a 1-D slice of the copy: reshaping it is a view, updated in place
                rows = new[0, K:].reshape(-1, S)
                rows[seen[0]] = E[0][seen[0]] / n_row[0][seen[0]][:, None]  # exact M-step per row
            else:
                rows = x[:, K:].reshape(b, -1, S).copy()
                rows[seen] = E[seen] / n_row[seen][:, None]  # exact M-step per row; unseen rows unchanged
                new[:, K:] = rows.reshape(b, -1)
        return new, ll

    def estep(self, theta: np.ndarray):
        """The E-step statistics at one parameter vector (docs/math.md §2, aggregated rows).

        Returns
        -------
        P : (K, U) emission probability of each component for each tuple
        s : (U,) mixture probability of each tuple
        q : (U,) ``w_u / s_u``
        g_lam : (K,) dl/dlam_j
        G : (n_rows, S) dl/d(emission entry), or None when pi is frozen
        """
        K, S = self.K, self.lay.S
        lam = theta[:K]
        P = theta[self.idx]
        s = np.einsum("ku,k->u", P, lam)
        with np.errstate(divide="ignore"):
            q = self.w / s
        g_lam = np.einsum("ku,u->k", P, q)
        G = None
        if not self.freeze_pi:
            G = np.bincount(self.idx_rest, weights=(lam[:, None] * q).ravel(), minlength=self.n_rest).reshape(-1, S)
        return P, s, q, g_lam, G

    def kkt_gap(self, theta: np.ndarray) -> float:
        """Sum over simplex blocks of the Frank-Wolfe / KKT gap ``max_j g_j - theta_B . g_B``, the max over the
        support: EM never moves an entry that is exactly 0 (an explicit start may pin entries to 0), so the
        iteration searches that face."""
        K, S = self.K, self.lay.S
        lam = theta[:K]
        P, s, q, g_lam, G = self.estep(theta)
        if not (s > 0).all():
            return math.inf
        gap = float(np.where(lam > 0, g_lam, -np.inf).max() - (lam * g_lam).sum())
        if not self.freeze_pi:
            rows = theta[K:].reshape(-1, S)
            n_row = (rows * G).sum(axis=1)
            seen = n_row > 0
            gap += float((np.where(rows > 0, G, -np.inf).max(axis=1)[seen] - n_row[seen]).sum())
        return max(gap, 0.0)

    def predicted_gain(self, theta: np.ndarray) -> float:
        """Sum over simplex blocks B of gap_B^2 / (2 c_B): the gain of the best Frank-Wolfe line step in
        block B under the quadratic model of the (block-concave) log-likelihood along d_B = e_{j*} - theta_B,
        with c_B = -d_B^T (Hessian) d_B = sum_u w_u (ds_u)^2 / s_u^2 (docs/math.md §2 Hessian). In log-likelihood
        units; costs about one E-step, so it is only evaluated when the other stopping test already passed."""
        K, S = self.K, self.lay.S
        lam = theta[:K]
        P, s, q, g_lam, G = self.estep(theta)
        h = q / s
        jstar = int(np.argmax(np.where(lam > 0, g_lam, -np.inf)))  # over the support, as in __call__
        gap = float(g_lam[jstar] - np.sum(lam * g_lam))
        c = float(np.sum(h * (P[jstar] - s) ** 2))  # direction e_{j*} - lam: ds_u = P_{j*}(u) - s_u
        total = gap * gap / (2.0 * c) if gap > 0 and c > 0 else 0.0
        if self.freeze_pi:
            return total
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


# ----------------------------------------------------------------------------------------------------------
# convergence monitor and the EM loop (written once: every fit, restart and refit goes through run_em)
# ----------------------------------------------------------------------------------------------------------
class ConvergenceMonitor:
    """Tracks one EM run and decides when it has converged (hmmlearn's ``ConvergenceMonitor`` role).

    Stopping rule (``tol`` relative to ``max(|loglik|, 1)``), checked after every accepted iterate:

    - ``"kkt"``: the last change of the log-likelihood is below ``tol`` *and* the gain that one Frank-Wolfe
      line step per simplex block would still bring (quadratic model of the KKT gap, see
      :meth:`_EM.predicted_gain`) is below ``tol``. A stalled likelihood alone is not enough: slow EM also
      stalls, far from the maximum.
    - ``"flat"``: the log-likelihood gained less than ``tol`` over the last ``window`` accepted iterates. This
      ends runs on flat ridges and near saddles on the boundary (a lag weight creeping to 0 under EM's
      multiplicative update), where the KKT test can need thousands of further steps for a gain below
      ``tol`` in total. The KKT gap at the returned point stays reported (``MTDFit.kkt_gap``).
    - ``"max_iter"``: ``max_iter`` EM-map evaluations were spent; the fit warns.

    Attributes
    ----------
    tol : float
    max_iter : int
        Largest number of EM-map evaluations (one SQUAREM iteration uses two or three).
    window : int
    history : list of float
        Log-likelihood of every accepted iterate (nondecreasing: SQUAREM here is monotone).
    n_evals : int
        EM-map evaluations used.
    reason : str or None
        ``"kkt"``, ``"flat"``, ``"max_iter"`` once stopped.
    """

    def __init__(self, tol: float, max_iter: int, window: int = 10):
        self.tol = check_float(tol, "tol", positive=True)
        self.max_iter = check_int(max_iter, "max_iter", minimum=1)
        self.window = check_int(window, "window", minimum=1)
        self.history: list[float] = []
        self.n_evals = 0
        self.reason: str | None = None

    @property
    def converged(self) -> bool:
        """True when the run stopped by the KKT or the flat rule (not by ``max_iter``)."""
        return self.reason in ("kkt", "flat")

    @property
    def iter(self) -> int:
        """Number of accepted iterates after the start."""
        return max(len(self.history) - 1, 0)

    def _scale(self) -> float:
        return max(abs(self.history[-1]), 1.0)

    def check(self, ll: float, gain: Any) -> bool:
        """Record the accepted log-likelihood ``ll`` and return True when the run should stop.

        ``gain`` is a callable returning the predicted Frank-Wolfe gain at the current point, called only
        when the likelihood has stalled (it costs about one E-step)."""
        if self.history and ll < self.history[-1] - MONITOR_RTOL * max(abs(self.history[-1]), 1.0):
            warnings.warn(f"log-likelihood decreased from {self.history[-1]!r} to {ll!r}", RuntimeWarning,
                          stacklevel=4)
        self.history.append(float(ll))
        if len(self.history) < 2:  # the start point
            return False
        scale = self._scale()
        rel = (self.history[-1] - self.history[-2]) / scale
        if abs(rel) < self.tol and gain() <= self.tol * scale:
            self.reason = "kkt"
            return True
        h = self.history
        if len(h) > self.window and (h[-1] - h[-1 - self.window]) < self.tol * scale:
            self.reason = "flat"
            return True
        return False

    def report(self) -> str:
        """One line: iterations, evaluations, final log-likelihood and why the run stopped."""
        ll = self.history[-1] if self.history else math.nan
        return (f"ConvergenceMonitor: {self.iter} iterates, {self.n_evals} EM evaluations, loglik {ll:.10g}, "
                f"stopped by {self.reason or 'nothing yet'}")

    def __repr__(self) -> str:
        return (f"ConvergenceMonitor(tol={self.tol!r}, max_iter={self.max_iter}, window={self.window}, "
                f"n_evals={self.n_evals}, reason={self.reason!r})")


def _kernels_enabled() -> bool:
    from .. import _kernels

    return _kernels.enabled()


@contextlib.contextmanager
def _kernel_for_run(em: _EM, B: int):
    """For one EM run: decide once whether the compiled kernel is used (the check reads the environment and
    imports numba, ~5 us, and a run makes ~100 EM evaluations), and run a small problem's kernel on one
    thread. Below ``_PARALLEL_CELLS`` (restart, component, tuple) cells waking the kernel's thread pool costs
    more than the pass itself, and on a busy machine every parallel launch waits for a descheduled worker:
    a 300-symbol fit (S = 4, m = 2, 10 restarts) took 265 ms instead of 5 ms on 2 shared cores. Each
    restart's arithmetic does not depend on the threads, so results are bit-identical."""
    use = _kernels_enabled()
    em.kernel = use
    prev = None
    try:
        if use and B * em.idx.size < _PARALLEL_CELLS:
            import numba

            prev = numba.get_num_threads()
            numba.set_num_threads(1)
        yield
    finally:
        em.kernel = None
        if prev is not None:
            import numba

            numba.set_num_threads(prev)


def run_em(em: _EM, x0: np.ndarray, tol: float, max_iter: int, accelerate: bool = True,
           window: int = 10) -> list[tuple[np.ndarray, ConvergenceMonitor]]:
    """Run EM from every row of ``x0`` (one row per restart, solved as one batch) until each row stops.

    The batch goes through the library's one SQUAREM (:func:`mtdmath._squarem.squarem`: scheme S3, adaptive
    step bound, backtracking to feasibility, and the monotone safeguard that keeps the log-likelihood
    nondecreasing); ``accelerate=False`` runs plain EM through the same loop. Stopping:
    :class:`ConvergenceMonitor`, one per row.

    Parameters
    ----------
    em : _EM
    x0 : ndarray (B, d)
        Start points (linear-space parameters).
    tol, max_iter, window
        See :class:`ConvergenceMonitor`; ``max_iter`` counts EM-map evaluations per row.

    Returns
    -------
    list of (theta, monitor), one per row of ``x0``.
    """
    x0 = np.atleast_2d(np.asarray(x0, dtype=np.float64))
    B = x0.shape[0]
    with _kernel_for_run(em, B):  # also this first call: one parallel launch wakes the pool, whose spinning
        _, ll0 = em.batch(x0)      # workers then slow every later serial call on a busy machine
    if not np.all(np.isfinite(ll0)):
        raise ValueError("init: the start point gives the data probability 0 "
                         "(it has a zero probability that the data use)")
    mons = [ConvergenceMonitor(tol, max_iter, window) for _ in range(B)]
    lay = em.lay

    def em_map(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return em.batch(x)

    def normalise(x_ext: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = x_ext.copy()
        out[:, : lay.K] /= out[:, : lay.K].sum(axis=1, keepdims=True)
        if em.freeze_pi:  # frozen rows are not iterated: keep them bit-exact
            out[:, lay.K :] = x[:, lay.K :]
        else:
            rows = out[:, lay.K :].reshape(x.shape[0], -1, lay.S)
            out[:, lay.K :] = (rows / rows.sum(axis=2, keepdims=True)).reshape(x.shape[0], -1)
        return out

    def stop(x: np.ndarray, fx: np.ndarray, ll: np.ndarray, ll_prev: np.ndarray, idx: np.ndarray) -> np.ndarray:
        done = np.zeros(x.shape[0], dtype=bool)
        for r, i in enumerate(np.asarray(idx).tolist()):
            done[r] = mons[i].check(float(ll[r]), lambda r=r: em.predicted_gain(x[r]))
        return done

    with _kernel_for_run(em, B):
        res = squarem(em_map, x0, stop=stop, max_evals=max_iter, normalise=normalise, accelerate=accelerate)
    out = []
    for i in range(B):
        mon = mons[i]
        mon.n_evals = int(res.n_evals[i])
        if not res.converged[i]:
            mon.reason = "max_iter"
        out.append((np.asarray(res.x[i], dtype=np.float64).copy(), mon))
    return out


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
    """A dict with keys pi, lam (and lam0, p0 when independent), an MTDModel or an MTDFit."""
    if all(hasattr(init, a) for a in ("pi", "lam", "lam0", "p0")):  # an MTDModel / MTDFit
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
