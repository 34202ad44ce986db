"""The EM machinery of MTD fitting (pi unknown): sufficient statistics, the E/M steps, the convergence monitor.

Model (docs/math.md §1, Raftery's MTD and its lag-wise form MTDg; lags ``l_1 < ... < l_k``, max lag ``M``)::

    P(y[t] = b | past) = lam_indep * p0[b] + sum_j lam[j] * pi_j[y[t - l_j], b]          (t >= M)

``variant="shared"``: one ``pi`` for every lag (the paper's model); ``variant="lagwise"``: one matrix per
lag (MTDg); ``independent=True`` adds the order-0 component ``lam_indep * p0`` (hdMTD's model), otherwise
``lam_indep = 0``. Each sequence is conditioned on its own first ``M`` tokens.

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
curvature along the step, to be below ``tol * |loglik|``. The summed gap is reported as ``MTD.kkt_gap_``.
On flat ridges and near boundary saddles a second rule stops the run: less than ``tol * |loglik|`` gained
over the last ``window`` iterates (:class:`ConvergenceMonitor`).
"""
from __future__ import annotations
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._squarem import squarem
from .._validate import check_float, check_pi, check_prob_vector
from ._data import TransitionCounts
from ._monitor import ConvergenceMonitor

VARIANTS = ("shared", "lagwise")
#: above this many (component, tuple) cells the EM map runs row by row rather than as one batch
_BATCH_CELLS = 20_000
#: pseudo-count added to every cell when building the "counts" start (keeps every entry > 0,
#: because EM can never move an entry away from exactly 0)
_SMOOTH = 0.5


# ----------------------------------------------------------------------------------------------------------
# parameter layout: theta = [lam (k), lam_indep (if independent) | pi rows (S or k*S rows) | p0 row (if independent)]
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Layout:
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

    def index(self, counts: TransitionCounts) -> np.ndarray:
        """(U, K) positions in theta of the emission probability of each component for each tuple."""
        S, K = self.S, self.K
        cols = []
        for j in range(self.k):
            off = K + (j * S * S if self.variant == "lagwise" else 0)
            cols.append(off + counts.ctx[:, j] * S + counts.nxt)
        if self.independent:
            cols.append(K + self.n_pi_rows * S + counts.nxt)
        return np.ascontiguousarray(np.stack(cols, axis=1))

    def pack(self, lam, pi, lam_indep=None, p0=None) -> np.ndarray:
        parts = [np.asarray(lam, float)]
        if self.independent:
            parts.append(np.array([lam_indep], float))
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
            out["lam_indep"] = float(theta[k])
            out["p0"] = rows[-1].copy()
        return out

    def normalise(self, theta: np.ndarray) -> np.ndarray:
        """Rescale every simplex block to sum 1 (removes rounding drift after an extrapolation)."""
        th = theta.copy()
        th[: self.K] /= th[: self.K].sum()
        rows = th[self.K :].reshape(-1, self.S)
        rows /= rows.sum(axis=1, keepdims=True)
        return th



class EM:
    """The EM map on aggregated counts: ``__call__(theta)`` returns (EM(theta), loglik(theta)).

    One E-step (:meth:`mix` and :meth:`stats`, on a batch of parameter vectors) serves the EM map, the KKT
    gap, the stopping rule's predicted gain and the observed information. No BLAS in the hot loop: OpenBLAS
    threads on these small (U, K) products cost far more than the work when cores are shared, so products
    are einsum / elementwise (single-threaded C loops)."""

    def __init__(self, counts: TransitionCounts, lay: Layout, freeze_pi: bool = False, n_jobs: int | None = None):
        self.lay = lay
        #: threads of the compiled EM map (scikit-learn's convention, see :func:`mtdmath._kernels.fitem.threads_for`)
        self.n_jobs = n_jobs
        self.K = lay.K
        self.idx = np.ascontiguousarray(lay.index(counts).T)  # (K, U): component-major for contiguous rows
        self.idx_i64 = self.idx.astype(np.int64, copy=False)
        self.idx_rest = (self.idx - self.K).ravel()  # positions among the emission rows
        self.w = counts.w
        self.N = counts.n_obs
        self.n_rest = lay.size - lay.K
        self.freeze_pi = freeze_pi
        #: whether batch uses the compiled kernel: None = decide at every call; run_em fixes it for one run
        self.kernel: bool | None = None
        # for predicted_gain: emission row of each (component, tuple) pair, and for a shared pi the groups of
        # pairs that use the same row at the same tuple
        self.nxt = counts.nxt
        self.nxt_i64 = np.ascontiguousarray(counts.nxt, dtype=np.int64)  # the compiled predicted_gain's layout
        self.row_of = (self.idx - self.K) // lay.S  # (K, U)
        self.row_of_i64 = np.ascontiguousarray(self.row_of, dtype=np.int64)
        # whether two components use the same emission row at some tuple (shared pi, equal context tokens)
        self.shared_rows = bool(any((self.row_of[j] == self.row_of[k]).any() for k in range(self.K) for j in range(k)))
        self.group = self.group_row = self.group_u = None
        if lay.variant == "shared" and lay.k > 1:
            U = self.idx.shape[1]
            n_rows = self.n_rest // lay.S
            key = np.arange(U)[None, :] * n_rows + self.row_of
            uniq, inv = np.unique(key.ravel(), return_inverse=True)
            self.group = inv.ravel()
            self.group_row = uniq % n_rows
            self.group_u = uniq // n_rows

    # -- the E-step (docs/math.md §2, on aggregated rows) ----------------------------------------------------
    def mix(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For a batch x (b, d): P (b, K, U), the emission probability of each component for each tuple, and
        s (b, U), the mixture probability of each tuple (docs/math.md §1)."""
        P = x[:, self.idx]
        return P, np.einsum("bku,bk->bu", P, x[:, : self.K])

    def stats(self, x: np.ndarray, P: np.ndarray, s: np.ndarray):
        """The E-step statistics of a batch: q (b, U) = w_u / s_u, g_lam (b, K) = dl/dlam_j (the expected
        component counts are lam_j g_lam_j) and G (b, n_rows, S) = dl/d(emission entry) (None when pi is
        frozen; the expected transition counts are emission * G)."""
        b, S = x.shape[0], self.lay.S
        with np.errstate(divide="ignore"):
            q = self.w[None, :] / s
        g_lam = np.einsum("bku,bu->bk", P, q)
        G = None
        if not self.freeze_pi:
            # sum over (tuple, component) pairs using an emission entry of q_u lam_j
            pos = ((np.arange(b) * self.n_rest)[:, None] + self.idx_rest[None, :]).ravel()
            G = np.bincount(pos, weights=(x[:, : self.K, None] * q[:, None, :]).ravel(),
                            minlength=b * self.n_rest).reshape(b, -1, S)
        return q, g_lam, G

    def estep(self, theta: np.ndarray):
        """The E-step statistics at one parameter vector.

        Returns
        -------
        P : (K, U) emission probability of each component for each tuple
        s : (U,) mixture probability of each tuple
        q : (U,) ``w_u / s_u``
        g_lam : (K,) dl/dlam_j
        G : (n_rows, S) dl/d(emission entry), or None when pi is frozen
        """
        x = theta[None, :]
        P, s = self.mix(x)
        q, g_lam, G = self.stats(x, P, s)
        return P[0], s[0], q[0], g_lam[0], None if G is None else G[0]

    # -- the EM map --------------------------------------------------------------------------------------------
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
            Parameter vectors in the layout of :class:`Layout`.

        Returns
        -------
        F : ndarray (b, d)
            ``EM(x[i])`` per row (``x[i]`` itself where the data are impossible under it).
        loglik : ndarray (b,)
            Log-likelihood of ``x[i]`` (-inf where the data are impossible).
        """
        K, S = self.K, self.lay.S
        b = x.shape[0]
        if self.kernel if self.kernel is not None else _kernels_enabled(b * self.idx.size):  # the fused E+M
            # kernel: one pass over the tuples per restart (run_em decides once per fit; direct calls every time)
            from .._kernels.fitem import em_batch

            x = np.ascontiguousarray(x, dtype=np.float64)
            new, ll = np.empty_like(x), np.empty(b)
            em_batch(x, self.idx_i64, self.w, K, S, self.n_rest, self.freeze_pi, new, ll, n_jobs=self.n_jobs)
            return new, ll
        if b > 1 and self.idx.size > _BATCH_CELLS:
            # many distinct tuples: row by row keeps the (K, U) work in cache (batched einsum is ~3x slower)
            outs = [self.batch(x[i : i + 1]) for i in range(b)]
            return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
        P, s = self.mix(x)
        ok = (s > 0).all(axis=1)
        ll = np.full(b, -math.inf)
        new = x.copy()
        if not ok.all():  # rows whose data are impossible: returned unchanged, loglik -inf
            if ok.any():
                new[ok], ll[ok] = self.batch(x[ok])
            return new, ll
        ll = (self.w[None, :] * np.log(s)).sum(axis=1)  # elementwise, not BLAS (see the class docstring)
        q, g_lam, G = self.stats(x, P, s)
        e_lam = x[:, :K] * g_lam  # expected component counts sum_u w_u gamma_u(j)
        new[:, :K] = e_lam / e_lam.sum(axis=1, keepdims=True)  # lam M-step (docs/math.md §3, EM)
        if G is not None:
            E = x[:, K:].reshape(b, -1, S) * G  # expected transition counts
            n_row = E.sum(axis=2)
            seen = n_row > 0
            rows = x[:, K:].reshape(b, -1, S).copy()
            rows[seen] = E[seen] / n_row[seen][:, None]  # exact M-step per row; unseen rows unchanged
            new[:, K:] = rows.reshape(b, -1)
        return new, ll

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
        units; costs about one E-step, so it is only evaluated when the other stopping test already passed.
        Where the compiled EM map is used, so is the compiled gain (two passes over the tuples, no temporaries);
        else :meth:`predicted_gain_generic`."""
        if self.kernel if self.kernel is not None else _kernels_enabled(self.idx.size):
            from .._kernels.fitem import predicted_gain

            theta = np.ascontiguousarray(theta, dtype=np.float64)
            return float(predicted_gain(theta, self.idx_i64, self.w, self.nxt_i64, self.row_of_i64, self.shared_rows,
                                        self.K, self.lay.S, self.n_rest, self.freeze_pi))
        return self.predicted_gain_generic(theta)

    def predicted_gain_generic(self, theta: np.ndarray) -> float:
        """:meth:`predicted_gain` in NumPy (the route without the compiled kernels)."""
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


def _kernels_enabled(work: int) -> bool:
    """Whether the compiled EM map serves ``work`` (restart x component x tuple) cells: below
    :data:`mtdmath._kernels.COLD_WORK` only in a process that has imported numba already (a small fit in a fresh
    process stays in NumPy rather than pay numba's import)."""
    from .. import _kernels

    return _kernels.enabled(work=work)


@contextlib.contextmanager
def _kernel_for_run(em: EM, B: int):
    """For one EM run: decide once whether the compiled kernel is used (the check reads the environment, ~5 us,
    and a run makes ~100 EM evaluations). The kernel itself decides its threads (serial below
    :data:`mtdmath._kernels.fitem.SERIAL_CELLS`, at most ``em.n_jobs``); each restart's arithmetic does not
    depend on the threads, so results are bit-identical."""
    em.kernel = _kernels_enabled(B * em.idx.size)
    try:
        yield
    finally:
        em.kernel = None


def run_em(em: EM, x0: np.ndarray, tol: float, max_iter: int, accelerate: bool = True,
           window: int = 10) -> list[tuple[np.ndarray, ConvergenceMonitor]]:
    """Run EM from every row of ``x0`` (one row per restart, solved as one batch) until each row stops.

    The batch goes through the library's one SQUAREM (:func:`mtdmath._squarem.squarem`: scheme S3, adaptive
    step bound, backtracking to feasibility, and the monotone safeguard that keeps the log-likelihood
    nondecreasing); ``accelerate=False`` runs plain EM through the same loop. Stopping:
    :class:`ConvergenceMonitor`, one per row.

    Parameters
    ----------
    em : EM
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
def lag_counts(counts: TransitionCounts) -> np.ndarray:
    """(k, S, S) weighted transition counts from the token at lag l_j to the next token."""
    S, k = counts.n_symbols, len(counts.lags)
    return np.stack(
        [np.bincount(counts.ctx[:, j] * S + counts.nxt, weights=counts.w, minlength=S * S).reshape(S, S) for j in range(k)]
    )


def init_counts(counts: TransitionCounts, lay: Layout) -> np.ndarray:
    """lam from the lag-wise association (plug-in mutual information of (y[t-l_j], y[t])), pi from the
    transition counts (lag-wise; pooled with weights lam for a shared pi), smoothed so every entry is > 0."""
    Nc = lag_counts(counts)
    N = counts.n_obs
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
        marg = np.bincount(counts.nxt, weights=counts.w, minlength=S) + _SMOOTH
        return lay.pack(0.9 * lam, pi, 0.1, marg / marg.sum())
    return lay.pack(lam, pi)


def init_random(lay: Layout, rng: np.random.Generator) -> np.ndarray:
    """lam ~ Dirichlet(1), every pi row ~ Dirichlet(1) (and p0, lam_indep likewise)."""
    S = lay.S
    w = rng.dirichlet(np.ones(lay.K))
    rows = rng.dirichlet(np.ones(S), size=lay.n_pi_rows + int(lay.independent))
    return np.concatenate([w, rows.ravel()])


def init_explicit(init: Any, lay: Layout) -> np.ndarray:
    """A dict with keys pi, lam (and lam_indep, p0 when independent), an MTDModel or a fitted MTD."""
    law = getattr(init, "model_", init)  # a fitted estimator starts from its law
    if all(hasattr(law, a) for a in ("pi", "lam", "lam_indep", "p0")):  # an MTDModel
        init = {"pi": law.pi, "lam": law.lam, "lam_indep": law.lam_indep, "p0": law.p0}
    if not isinstance(init, dict):
        raise ValueError(f'init must be "counts", "random", a dict of parameters, an MTDModel or a fitted MTD (got {init!r})')
    unknown = set(init) - {"pi", "lam", "lam_indep", "p0"}
    if unknown:
        raise ValueError(f"init has unknown keys {sorted(unknown)} (allowed: pi, lam, lam_indep, p0)")
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
    lam_indep = init.get("lam_indep")
    if lay.independent:
        if lam_indep is None or init.get("p0") is None:
            raise ValueError("init must give 'lam_indep' and 'p0' when independent=True")
        lam_indep = check_float(lam_indep, "init['lam_indep']", nonnegative=True)
        p0 = check_prob_vector(init["p0"], "init['p0']", S)
        lam = np.asarray(init["lam"], dtype=np.float64)
        check_prob_vector(np.append(lam, lam_indep), "init['lam'] with init['lam_indep']", k + 1)
        return lay.pack(lam, pi, lam_indep, p0)
    if lam_indep not in (None, 0, 0.0):
        raise ValueError("init gives 'lam_indep' but independent=False")
    lam = check_prob_vector(init["lam"], "init['lam']", k)
    return lay.pack(lam, pi)


def mixture_prob(lay: Layout, theta: np.ndarray, counts: TransitionCounts) -> np.ndarray:
    """(U,) mixture probability ``s_u = sum_j theta[j] theta[e_ju]`` of each tuple of ``counts`` at one
    parameter vector (docs/math.md §1): the E-step's ``s`` without building the EM map."""
    return np.einsum("uk,k->u", theta[lay.index(counts)], theta[: lay.K])
