"""Uncertainty for MTD fits: the observed information on the identified face of the parameter space, standard
errors, boundary-respecting intervals (also for identified functionals such as the next-token law), and the
parametric bootstrap (in :class:`~mtdmath.fitting.MTD`). The mathematics is docs/math.md §7.4.1 and §12.

Parameters ``theta`` are the simplex blocks of the layout in :mod:`.em` (lam with lam_indep, every row of pi, p0).
With ``s_u = sum_j theta[j] theta[e_ju]`` the mixture probability of a distinct (context, next) tuple ``u``
(weight ``w_u``; component ``j`` uses emission entry ``e_ju``), the log-likelihood ``l = sum_u w_u log s_u``
has the exact Hessian (docs/math.md §2, extended to the emission entries)

    H = sum_u w_u [ D2 s_u / s_u - (D s_u)(D s_u)^T / s_u^2 ],

where ``D s_u`` has entries ``theta[e_ju]`` at ``j`` and ``sum_{j: e_ju = e} theta[j]`` at ``e``, and
``D2 s_u`` is 1 at ``(j, e_ju)`` and ``(e_ju, j)``.

Which coordinates move (docs/math.md §12). Three kinds of coordinate of theta:

- *free*: inside a block some transition uses, with ``theta > 0``;
- *on the boundary*: an emission entry of a used block with ``theta = 0``, or whose removal changes the
  log-likelihood by less than :data:`BOUNDARY_NATS`. EM sets an entry to exactly 0 when no transition uses
  it, and shrinks one whose constrained maximum is 0 geometrically without reaching it; moving mass into such
  an entry lowers the log-likelihood at first order (its Lagrange multiplier is positive), so the constraint
  is active and the MLE stays at 0 with probability tending to 1. It is held fixed at 0: its standard error is
  0 and it adds no direction to the tangent space. Treating it as free (a tangent direction ``e_i - e_0``
  along which the Hessian sees only ``e_i``) inflates the variance of every other entry of its row by
  ``1 / (1 - pi_i)``, and through the cross terms that of lam;
- *unidentified*: in a block (a row of pi, p0) that no transition uses; the data say nothing about it and
  its standard error is ``inf`` (interval [0, 1]).

The observed information is ``I = -Z^T H Z`` with ``Z`` the free directions (per block, ``e_i - e_pivot`` over
the free coordinates). Its size, time and memory scale with the free coordinates only, so a declared but
unused state costs nothing, and the dense work is checked against a budget before it is allocated. When ``I``
is singular (the lag-wise model: lam_j pi_j is identified only up to constant rows ``1 c_j^T`` with
``sum_j c_j = 0``) only estimable functions get a finite standard error: those whose tangent gradient lies in
the row space of ``I``; the others get ``inf``.

Intervals (docs/math.md §12) are Wald intervals on the face, clipped to [0, 1]; a quantity that moves only
coordinates held at the boundary gets the Wilson score interval of a proportion with the complete-data count of
its rows, whose upper end at an estimate of 0 is positive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.stats import norm

from .. import _validate
from ._em import EM as _EM, Layout

#: relative eigenvalue below which a direction of the observed information counts as not identified. Along a
#: non-identified direction the log-likelihood is exactly flat, but the Hessian at a point that is stationary
#: only up to the stopping tolerance shows spurious curvature of the size of the remaining gradient (measured:
#: |eigenvalue| ~ 1e-7 of the largest for the lag-wise S = 3, k = 2, n = 3000 fit), while an identified
#: direction has curvature of order n (smallest identified one there: 0.09 of the largest).
RCOND = 1e-6
#: relative component of a tangent gradient on the null space above which a function is not estimable. The
#: computed null space is off by about (spurious eigenvalue / spectral gap) ~ 1e-6, while a non-estimable
#: function such as a single lam_j of a lag-wise model has a component of order 1.
ESTIMABLE_TOL = 1e-3
#: dense float64 (d_free, d_free) arrays alive at the peak of :func:`observed_inference`: the Hessian, the
#: information and its eigenvectors, LAPACK's workspace (about one more), the covariance, ``Z Z^T`` and the
#: products that build them. The budget check multiplies d_free^2 by this count before allocating anything.
DENSE_COPIES = 8
#: bytes of gathered covariance entries one chunk of :meth:`Inference.se_sparse` may hold
CHUNK_BYTES = 64 * 2**20

#: an emission entry whose removal (set to 0, row renormalised) changes the log-likelihood by less than this
#: many nats is on the boundary: EM leaves an entry whose constrained maximum is 0 at a small positive value
#: (its multiplicative update shrinks it geometrically), and the quadratic model would let it go negative.
#: Likelihood-ratio statistics have quantiles of order 1 (3.84 at 95 %), so 1e-3 nats is invisible to them.
BOUNDARY_NATS = 1e-3
#: codes of :attr:`Inference.pos` for coordinates that are not free
FIXED, UNIDENTIFIED = -1, -2


def _used_rows(em: _EM) -> np.ndarray:
    """Sorted emission rows (rows of pi, then p0) that at least one transition uses."""
    return np.unique(em.idx_rest // em.lay.S)


def hessian(em: _EM, theta: np.ndarray, coords: np.ndarray | None = None) -> np.ndarray:
    """Exact Hessian of the log-likelihood in the coordinates ``theta`` (module doc).

    Parameters
    ----------
    em : _EM
    theta : ndarray (d,)
    coords : int ndarray (c,), optional
        Positions in theta to keep; default all. Only the (c, c) block is ever formed.

    Returns
    -------
    ndarray (d, d) or (c, c)
    """
    lay = em.lay
    K, d = lay.K, lay.size
    coords = np.arange(d) if coords is None else np.asarray(coords)
    c = coords.shape[0]
    where = np.full(d, -1, dtype=np.int64)
    where[coords] = np.arange(c)
    lam = theta[:K]
    P, s, q, _, _ = em.estep(theta)  # (K, U), (U,), (U,)
    U = s.shape[0]
    u = np.arange(U)
    rows = np.concatenate([np.tile(u, K), np.tile(u, K)])
    cols = where[np.concatenate([np.repeat(np.arange(K), U), em.idx.ravel()])]
    vals = np.concatenate([P.ravel(), np.repeat(lam, U)])
    keep = cols >= 0
    A = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(U, c))  # D s_u (duplicates summed)
    H = -(A.T @ sp.diags(em.w / s**2) @ A).toarray()
    ci, ce = where[np.repeat(np.arange(K), U)], where[em.idx.ravel()]
    keep = (ci >= 0) & (ce >= 0)
    cross = sp.coo_matrix((np.tile(q, K)[keep], (ci[keep], ce[keep])), shape=(c, c)).toarray()
    return H + cross + cross.T


@dataclass
class Inference:
    """Asymptotic covariance of the MLE on its identified face (module doc, docs/math.md §12).

    Attributes
    ----------
    theta : ndarray (d,)
        The fitted parameters (layout of :mod:`.em`).
    pos : int ndarray (d,)
        Position of each coordinate among the free ones, or :data:`FIXED` (on the boundary, held at 0) or
        :data:`UNIDENTIFIED` (a block no transition uses).
    cov : ndarray (d_free, d_free)
        ``Z I^+ Z^T`` on the free coordinates; meaningful only for estimable functions.
    zz : ndarray (d_free, d_free)
        ``Z Z^T`` (the squared norm of a tangent gradient is ``g^T zz g``).
    znull : ndarray (d_free, n_null)
        ``Z`` times the null space of ``I`` (a gradient with ``g^T znull != 0`` is not estimable).
    n_ref : ndarray (d,)
        Complete-data count of each coordinate's block: ``N`` for lam, the expected count of the row for an
        emission entry (the effective count of a Wilson interval at the boundary, docs/math.md §12).
    identified : bool
        Whether the observed information on the free coordinates is nonsingular (every parameter estimable).
    rank, dim : int
        Rank of the information and number of free directions.
    """

    theta: np.ndarray
    pos: np.ndarray
    cov: np.ndarray
    zz: np.ndarray
    znull: np.ndarray
    n_ref: np.ndarray
    identified: bool
    rank: int
    dim: int
    lay: Layout

    def se_sparse(self, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
        """Delta-method standard errors of many functions, each with a sparse gradient.

        Parameters
        ----------
        idx : int ndarray (n, m)
            Positions in theta of the nonzero gradient entries of each function (repeats are summed).
        val : ndarray (n, m)
            The gradient entries.

        Returns
        -------
        ndarray (n,)
            ``inf`` where a function is not estimable (it moves along a null direction of ``I`` or depends on
            an unidentified block), 0 where it depends on boundary coordinates only.
        """
        idx = np.asarray(idx, dtype=np.int64)
        val = np.asarray(val, dtype=np.float64)
        n, m = idx.shape
        out = np.empty(n)
        step = max(1, CHUNK_BYTES // (8 * m * m + 8 * m * max(self.znull.shape[1], 1)))
        for a in range(0, n, step):
            out[a : a + step] = self._se_chunk(idx[a : a + step], val[a : a + step])
        return out

    def _se_chunk(self, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
        st = self.pos[idx]
        bad = np.any((st == UNIDENTIFIED) & (val != 0), axis=1)
        free = st >= 0
        v = np.where(free, val, 0.0)  # boundary coordinates are held fixed: no variance along them
        c = np.where(free, st, 0)
        var = np.einsum("ni,nij,nj->n", v, self.cov[c[:, :, None], c[:, None, :]], v)
        cn2 = np.einsum("ni,nij,nj->n", v, self.zz[c[:, :, None], c[:, None, :]], v)
        se = np.sqrt(np.clip(var, 0.0, None))
        if self.znull.shape[1]:
            leak = np.linalg.norm(np.einsum("ni,nik->nk", v, self.znull[c]), axis=1)
            se[leak > ESTIMABLE_TOL * np.sqrt(np.clip(cn2, 0.0, None))] = math.inf
        se[cn2 <= 0.0] = 0.0  # the function does not move on the face
        se[bad] = math.inf
        return se

    def se_of(self, grad: np.ndarray) -> float:
        """Delta-method standard error of a function with (dense) gradient ``grad`` (d,) in theta."""
        grad = np.asarray(grad, dtype=np.float64)
        nz = np.flatnonzero(grad)
        if nz.size == 0:
            return 0.0
        return float(self.se_sparse(nz[None, :], grad[nz][None, :])[0])

    def se(self) -> np.ndarray:
        """(d,) standard error of every coordinate of theta (``inf`` where not estimable, 0 on the boundary)."""
        d = self.theta.shape[0]
        return self.se_sparse(np.arange(d)[:, None], np.ones((d, 1)))

    def interval(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Intervals (docs/math.md §12, :func:`interval`) for every coordinate of theta: (lower, upper), each (d,)."""
        return interval(self.theta, self.se(), self.n_ref, level)


def _budget(d_free: int) -> None:
    _validate.check_alloc(DENSE_COPIES * d_free * d_free, 8, "standard_errors",
                          f"the observed information on the {d_free} free parameters (the used states' "
                          f"rows; {DENSE_COPIES} dense ({d_free}, {d_free}) float64 arrays)")


def observed_inference(em: _EM, theta: np.ndarray) -> Inference:
    """The observed information ``I = -Z^T H Z`` on the free coordinates at ``theta`` and the covariance
    ``Z I^+ Z^T`` (module doc). Raises ``ValueError`` before any dense allocation above the budget
    :data:`mtdmath._validate.MAX_ALLOC_BYTES`."""
    lay = em.lay
    K, S, d = lay.K, lay.S, lay.size
    theta = np.asarray(theta, dtype=np.float64)
    pos = np.full(d, UNIDENTIFIED, dtype=np.int64)
    used_rows = _used_rows(em)
    block_of = np.full(d, -1, dtype=np.int64)  # block number of each identified coordinate (0 = lam)
    block_of[:K] = 0
    ent = (K + used_rows[:, None] * S + np.arange(S)[None, :]).ravel()
    block_of[ent] = np.repeat(np.arange(1, used_rows.shape[0] + 1), S)
    ident = block_of >= 0

    # complete-data counts: N for lam, the expected count sum_b theta[r, b] dl/dtheta[r, b] of each used row
    _, _, _, _, G = em.estep(theta)
    rows = theta[K:].reshape(-1, S)
    n_row = (rows * G).sum(axis=1) if G is not None else np.full(rows.shape[0], em.N)
    n_ref = np.concatenate([np.full(K, em.N), np.repeat(n_row, S)])
    # an emission entry is on the boundary when it is 0, or when removing it changes the log-likelihood by
    # less than BOUNDARY_NATS: its expected count theta_e dl/dtheta_e and the first-order gain of
    # renormalising its row, theta_e n_row, are both below that (docs/math.md §12)
    boundary = np.zeros(d, dtype=bool)
    if G is not None:
        tiny = (rows * G < BOUNDARY_NATS) & (rows * n_row[:, None] < BOUNDARY_NATS)
        # a row keeps its largest entry off the boundary: zeroing all of them would leave no law on the face
        # (a one-state row is 1 by definition), and intervals around that empty row miss the estimate
        empty = np.flatnonzero(tiny.all(axis=1))
        tiny[empty, np.argmax(rows[empty], axis=1)] = False
        boundary[K:] = tiny.ravel()
    if boundary.any():
        # the face's point: boundary entries at exactly 0, their rows renormalised (moves the log-likelihood by
        # less than BOUNDARY_NATS per entry), so that no gradient keeps a spurious O(theta_e) component
        theta = theta.copy()
        theta[boundary] = 0.0
        face_rows = theta[K:].reshape(-1, S)
        sums = face_rows.sum(axis=1, keepdims=True)
        np.divide(face_rows, sums, out=face_rows, where=sums > 0)
    free = ident & (theta > 0) & ~boundary
    coords = np.flatnonzero(free)
    pos[ident] = FIXED
    pos[coords] = np.arange(coords.shape[0])
    dc = coords.shape[0]
    _budget(dc)

    H = hessian(em, theta, coords)
    cov, zz, znull, good = _covariance(H, block_of[coords])
    del H
    return Inference(theta=theta.copy(), pos=pos, cov=cov, zz=zz, znull=znull, n_ref=n_ref,
                     identified=bool(good.all()), rank=int(good.sum()), dim=int(good.shape[0]), lay=lay)


def _covariance(H: np.ndarray, blk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From the Hessian ``H`` (c, c) on free coordinates sorted by block (block number ``blk`` (c,)):
    the covariance ``Z I^+ Z^T``, ``Z Z^T``, ``Z`` times the null space of ``I``, and which eigen-directions
    of ``I = -Z^T H Z`` are identified. ``Z`` has the columns ``e_i - e_pivot``, pivot the last free
    coordinate of each block."""
    dc = blk.shape[0]
    last = np.r_[blk[1:] != blk[:-1], True] if dc else np.zeros(0, dtype=bool)
    pivot = np.flatnonzero(last)[np.searchsorted(blk[last], blk)]
    f = np.flatnonzero(~last)
    p = pivot[f]
    r = f.shape[0]
    Z = sp.csr_matrix((np.r_[np.ones(r), -np.ones(r)], (np.r_[f, p], np.r_[np.arange(r), np.arange(r)])),
                      shape=(dc, r))
    info = -(H[np.ix_(f, f)] - H[np.ix_(f, p)] - H[np.ix_(p, f)] + H[np.ix_(p, p)])  # -Z^T H Z by indexing
    info = 0.5 * (info + info.T)
    ev, V = np.linalg.eigh(info)
    del info
    top = float(ev.max()) if ev.size else 0.0
    good = ev > RCOND * top
    ZV = np.asarray(Z @ V[:, good]) / np.sqrt(ev[good])  # Z I^{-1/2} on the identified subspace
    cov = ZV @ ZV.T
    del ZV
    zz = np.asarray((Z @ Z.T).todense())
    znull = np.asarray(Z @ V[:, ~good])
    return cov, zz, znull, good


#: a row's expected count below which its Wilson interval is [0, 1] (the data say nothing about it)
UNOBSERVED = 1e-6


def interval(est: np.ndarray, se: np.ndarray, n_ref: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Intervals for probabilities on the face (docs/math.md §12): Wald ``est -/+ z se`` clipped to [0, 1]
    where the standard error is positive and finite; where it is 0 (the quantity moves only coordinates held
    at the boundary) the Wilson score interval of a proportion ``est`` observed ``n_ref`` times, which at
    ``est = 0`` is ``[0, z^2 / (n_ref + z^2)]``; an infinite standard error (not estimable) gives [0, 1]."""
    z = float(norm.ppf(0.5 + level / 2.0))
    est = np.clip(np.asarray(est, dtype=np.float64), 0.0, 1.0)
    se = np.asarray(se, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n_ref, dtype=np.float64), est.shape)
    # Wilson where se = 0 and something was observed; a row observed less than a millionth of a time gets
    # [0, 1] (the floor keeps z^2 / n finite)
    k = z * z / np.maximum(n, UNOBSERVED)
    centre = (est + k / 2.0) / (1.0 + k)
    half = np.sqrt(k * est * (1.0 - est) + k * k / 4.0) / (1.0 + k)
    with np.errstate(invalid="ignore"):
        lo = np.where(se > 0, est - z * se, centre - half)
        hi = np.where(se > 0, est + z * se, centre + half)
    # the floored Wilson interval of an unobserved row stops just short of 1 (1 - 1/(1 + z^2 / UNOBSERVED)),
    # which need not hold an estimate the data say nothing about: such a row gets [0, 1] exactly
    blank = np.isinf(se) | ((se == 0) & (n < UNOBSERVED))
    lo = np.where(blank, 0.0, np.clip(lo, 0.0, 1.0))
    hi = np.where(blank, 1.0, np.clip(hi, 0.0, 1.0))
    # the interval always holds the estimate (rounding of centre -/+ half at est = 0 or 1)
    return np.minimum(lo, est), np.maximum(hi, est)


def predictive_interval(inf: Inference, lags: tuple[int, ...], contexts: np.ndarray, p: np.ndarray,
                        level: float) -> tuple[np.ndarray, np.ndarray]:
    """Intervals (:func:`interval`) for the next-token law ``p`` (n, S) at ``contexts`` (n, L) (docs/math.md §12).

    The gradient of ``P(b | context)`` in theta has ``2 K`` nonzero entries (``d/d lam_j = pi_j[a_j, b]`` and
    ``d/d pi_j[a_j, b] = lam_j``), so the work is chunked over contexts with O(K^2) memory per entry."""
    lay, theta = inf.lay, inf.theta
    K, S, k = lay.K, lay.S, lay.k
    n = contexts.shape[0]
    _validate.check_alloc(4 * n * S, 8, "X", f"intervals for {n} contexts x {S} states")
    lo, hi = np.empty((n, S)), np.empty((n, S))
    b = np.arange(S)
    step = max(1, CHUNK_BYTES // (8 * S * (2 * K) ** 2))
    for a0 in range(0, n, step):
        ctx = contexts[a0 : a0 + step]
        c = ctx.shape[0]
        idx = np.empty((c, S, 2 * K), dtype=np.int64)
        val = np.empty((c, S, 2 * K))
        inv_n = np.zeros((c, S))
        for j, l in enumerate(lags):
            off = K + (j * S * S if lay.variant == "lagwise" else 0)
            ent = off + ctx[:, -l][:, None] * S + b[None, :]
            idx[:, :, j], val[:, :, j] = j, theta[ent]
            idx[:, :, K + j], val[:, :, K + j] = ent, theta[j]
            inv_n += theta[j] ** 2 / np.maximum(inf.n_ref[ent], 1e-300)
        if lay.independent:
            ent = np.broadcast_to(K + lay.n_pi_rows * S + b[None, :], (c, S))
            idx[:, :, k], val[:, :, k] = k, theta[ent]
            idx[:, :, K + k], val[:, :, K + k] = ent, theta[k]
            inv_n += theta[k] ** 2 / np.maximum(inf.n_ref[ent], 1e-300)
        se = inf.se_sparse(idx.reshape(c * S, 2 * K), val.reshape(c * S, 2 * K)).reshape(c, S)
        # effective count of a mixture of the rows' proportions (docs/math.md §12)
        lo[a0 : a0 + c], hi[a0 : a0 + c] = interval(p[a0 : a0 + c], se, 1.0 / np.maximum(inv_n, 1e-300), level)
    return lo, hi
