"""Uncertainty for MTD fits: the observed information on the constrained parameter space, standard errors,
Wald intervals (also for identified functionals such as the next-token law), and the parametric bootstrap.

Parameters ``theta`` are the simplex blocks of the layout in :mod:`.em` (lam with lam0, every row of pi, p0).
With ``s_u = sum_j theta[j] theta[e_ju]`` the mixture probability of a distinct (context, next) tuple ``u``
(weight ``w_u``; component ``j`` uses emission entry ``e_ju``), the log-likelihood ``l = sum_u w_u log s_u``
has the exact Hessian (docs/math.md §2, extended to the emission entries)

    H = sum_u w_u [ D2 s_u / s_u - (D s_u)(D s_u)^T / s_u^2 ],

where ``D s_u`` has entries ``theta[e_ju]`` at ``j`` and ``sum_{j: e_ju = e} theta[j]`` at ``e``, and
``D2 s_u`` is 1 at ``(j, e_ju)`` and ``(e_ju, j)``. On the product of simplices the free directions are
``Z`` (per block, ``e_i - e_last``); the observed information is ``I = -Z^T H Z`` and the asymptotic
covariance of the MLE is ``Z I^{-1} Z^T`` (delta method for any smooth function of theta). When ``I`` is
singular (the lag-wise model: lam_j pi_j is identified only up to constant rows ``1 c_j^T`` with
``sum_j c_j = 0``) only estimable functions get a finite standard error: those whose tangent gradient lies
in the row space of ``I``; the others get ``inf`` (interval ``[0, 1]``). Rows of pi that no transition uses
are not identified either and get ``inf``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
import scipy.sparse as sp
from scipy.stats import norm

from ._em import EM as _EM, Layout as _Layout

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


def hessian(em: _EM, theta: np.ndarray) -> np.ndarray:
    """Exact Hessian (d, d) of the log-likelihood in the unconstrained coordinates ``theta`` (module doc)."""
    lay = em.lay
    K, d = lay.K, lay.size
    lam = theta[:K]
    P, s, q, _, _ = em.estep(theta)  # (K, U), (U,), (U,)
    w = em.w
    U = s.shape[0]
    rows = np.concatenate([np.tile(np.arange(U), K), np.tile(np.arange(U), K)])
    cols = np.concatenate([np.repeat(np.arange(K), U), em.idx.ravel()])
    vals = np.concatenate([P.ravel(), np.repeat(lam, U)])
    A = sp.csr_matrix((vals, (rows, cols)), shape=(U, d))  # D s_u (duplicates summed)
    H = -(A.T @ sp.diags(w / s**2) @ A).toarray()
    cross = sp.coo_matrix((np.tile(q, K), (np.repeat(np.arange(K), U), em.idx.ravel())), shape=(d, d)).toarray()
    return H + cross + cross.T


@dataclass
class Inference:
    """Asymptotic covariance of the MLE on the constrained space.

    Attributes
    ----------
    theta : ndarray (d,)
        The fitted parameters (layout of :mod:`.em`).
    cov : ndarray (d, d)
        ``Z I^+ Z^T``; meaningful only for estimable functions (see :meth:`se_of`).
    identified : bool
        Whether the observed information on the used blocks is nonsingular (every parameter estimable).
    rank, dim : int
        Rank of the information and number of free directions.
    """

    theta: np.ndarray
    cov: np.ndarray
    Z: np.ndarray
    null: np.ndarray
    used: np.ndarray
    identified: bool
    rank: int
    dim: int
    lay: _Layout

    def se_of(self, grad: np.ndarray) -> float:
        """Delta-method standard error of a function with gradient ``grad`` (d,) in theta; ``inf`` when the
        function is not estimable (its tangent gradient has a component on the null space of I, or it
        depends on a block the data do not use)."""
        grad = np.asarray(grad, dtype=np.float64)
        c = self.Z.T @ grad
        unused = ~self.used
        if np.any(grad[unused] != 0):
            # a block no transition uses: only directions inside it are unconstrained by the data
            return math.inf
        cn = float(np.linalg.norm(c))
        if cn == 0.0:
            return 0.0
        if self.null.shape[1] and float(np.linalg.norm(self.null.T @ c)) > ESTIMABLE_TOL * cn:
            return math.inf
        return float(math.sqrt(max(grad @ self.cov @ grad, 0.0)))

    def se(self) -> np.ndarray:
        """(d,) standard error of every coordinate of theta (``inf`` where not estimable)."""
        return np.array([self.se_of(np.eye(1, self.theta.shape[0], i)[0]) for i in range(self.theta.shape[0])])


def observed_inference(em: _EM, theta: np.ndarray) -> Inference:
    """The observed information ``I = -Z^T H Z`` at ``theta`` and the covariance ``Z I^+ Z^T``."""
    lay = em.lay
    K, S, d = lay.K, lay.S, lay.size
    H = hessian(em, theta)
    used = np.zeros(d, dtype=bool)
    used[:K] = True
    used_rows = np.unique(em.idx_rest // S)
    for r in used_rows:
        used[K + r * S : K + (r + 1) * S] = True
    blocks = [np.arange(K)] + [K + r * S + np.arange(S) for r in used_rows]
    cols = []
    for b in blocks:
        for i in b[:-1]:
            z = np.zeros(d)
            z[i], z[b[-1]] = 1.0, -1.0
            cols.append(z)
    Z = np.stack(cols, axis=1) if cols else np.zeros((d, 0))
    info = -(Z.T @ H @ Z)
    info = 0.5 * (info + info.T)
    ev, V = np.linalg.eigh(info)
    top = float(ev.max()) if ev.size else 0.0
    good = ev > RCOND * top
    inv = (V[:, good] / ev[good]) @ V[:, good].T
    null = V[:, ~good]
    cov = Z @ inv @ Z.T
    return Inference(theta=theta.copy(), cov=cov, Z=Z, null=null, used=used, identified=bool(good.all()),
                     rank=int(good.sum()), dim=int(ev.size), lay=lay)


def wald(est: np.ndarray, se: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """``est -/+ z se`` clipped to [0, 1] (probabilities); an infinite se gives [0, 1]."""
    z = float(norm.ppf(0.5 + level / 2.0))
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isinf(se), 0.0, est - z * se)
        hi = np.where(np.isinf(se), 1.0, est + z * se)
    return np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)


def predictive_gradients(lay: _Layout, theta: np.ndarray, lags: tuple[int, ...], contexts: np.ndarray) -> np.ndarray:
    """(n, S, d) gradient in theta of P(next = b | context) for each context (n, L) and b."""
    K, S, k = lay.K, lay.S, lay.k
    n = contexts.shape[0]
    G = np.zeros((n, S, lay.size))
    ar_n, ar_b = np.arange(n)[:, None], np.arange(S)[None, :]
    for j, l in enumerate(lags):
        a = contexts[:, -l]
        off = K + (j * S * S if lay.variant == "lagwise" else 0)
        G[ar_n, ar_b, j] = theta[off + a[:, None] * S + ar_b]  # d/d lam_j = pi_j[a, b]
        G[ar_n, ar_b, off + a[:, None] * S + ar_b] += theta[j]  # d/d pi_j[a, b] = lam_j
    if lay.independent:
        off = K + lay.n_pi_rows * S
        G[ar_n, ar_b, k] = theta[off + ar_b]
        G[ar_n, ar_b, off + ar_b] += theta[k]
    return G
