"""SQUAREM: the one accelerated fixed-point loop of mtdmath (the MLE of lam and the MTD fits).

Varadhan & Roland (2008), scheme S3, for a batch of B independent problems whose EM map is
``F`` and whose objective (a log-likelihood, nondecreasing under F) is ``ℓ``. One iteration
from ``θ`` with ``θ₁ = F(θ)``:

- ``θ₂ = F(θ₁)``, ``r = θ₁ - θ``, ``v = θ₂ - θ₁ - r``;
- step ``a = clip(‖r‖/‖v‖, 1, a_max)``, point ``θ' = θ + 2a r + a² v`` (``a = 1`` gives ``θ₂``);
  ``a`` is halved towards 1 until ``θ'`` is feasible: nonnegative, and positive wherever ``θ`` is
  (an extrapolation must not put an exact zero on the support), then ``θ'`` is renormalised;
- safeguard: the stabilising EM step ``θ'₁ = F(θ')`` is computed with ``ℓ(θ')``; the point is
  kept only if ``ℓ(θ') >= ℓ(θ₁)``, and then ``a_max`` grows 4x when it was reached. Otherwise the
  iteration falls back to ``θ₂`` (``ℓ(θ₂) >= ℓ(θ₁) >= ℓ(θ)`` by EM monotonicity) and ``a_max``
  shrinks 4x. So the accepted objective never decreases (up to rounding).

Everything is vectorised over the batch with the Array API; converged problems leave the
active set, so ``em_map`` sees only the rows still running.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from array_api_compat import device

from ._xp import array_namespace, to_numpy

__all__ = ["SquaremResult", "squarem"]

#: halvings of the extrapolation step towards 1 before giving up on feasibility
_MAX_BACKTRACK = 30


@dataclass
class SquaremResult:
    """Outcome of :func:`squarem` for a batch of B problems.

    Attributes
    ----------
    x : array, shape (B, d)
        Final iterates (in the namespace of ``x0``).
    loglik : ndarray of float64, shape (B,)
        Objective at ``x``.
    n_evals : ndarray of int64, shape (B,)
        EM-map evaluations per problem.
    n_iter : ndarray of int64, shape (B,)
        SQUAREM iterations per problem.
    converged : ndarray of bool, shape (B,)
        Whether ``stop`` accepted the problem before the iteration limits.
    history : list of ndarray
        ``history[b]`` holds the objective of every accepted iterate of problem b (nondecreasing).
    """

    x: Any
    loglik: np.ndarray
    n_evals: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    history: list = field(default_factory=list)


def _merge(xp: Any, mask: Any, full: Any, part: Any) -> Any:
    """Rows of ``full`` (b, ...) with those where ``mask`` replaced, in order, by ``part`` (k, ...)."""
    if part.shape[0] == 0:
        return full
    pos = xp.cumulative_sum(xp.astype(mask, xp.int64)) - 1
    pos = xp.clip(pos, 0, part.shape[0] - 1)
    spread = xp.take(part, pos, axis=0)
    shape = (mask.shape[0],) + (1,) * (full.ndim - 1)
    return xp.where(xp.reshape(mask, shape), spread, full)


def squarem(
    em_map: Callable[[Any, Any], tuple[Any, Any]],
    x0: Any,
    *,
    stop: Callable[[Any, Any, Any, Any, Any], Any],
    max_iter: int | None = None,
    max_evals: int | None = None,
    normalise: Callable[[Any, Any, Any], Any] | None = None,
    monitor: Callable[[Any, Any, Any], None] | None = None,
    accelerate: bool = True,
) -> SquaremResult:
    """Run SQUAREM-accelerated EM on a batch of problems until ``stop`` or a limit.

    Parameters
    ----------
    em_map : callable ``(x, idx) -> (F(x), ℓ(x))``
        The EM map on the active rows: ``x`` (b, d) and ``idx`` (b,) their row numbers in the
        batch (to pick each problem's data); returns F(x) (b, d) and ℓ(x) (b,).
    x0 : array, shape (B, d)
        Start points, nonnegative.
    stop : callable ``(x, fx, ll, ll_prev, idx) -> bool array (b,)``
        Convergence test at the current iterate ``x`` with ``fx = F(x)``, ``ll = ℓ(x)`` and the
        previous accepted objective ``ll_prev`` (-inf before the first iteration). Called at the
        start of every iteration.
    max_iter, max_evals : int, optional
        Limits on iterations and on EM-map evaluations per problem (at least one must be given).
    normalise : callable ``(x_ext, x, idx) -> x_ext``, optional
        Projects a feasible extrapolated point back onto the parameter set (e.g. renormalises
        simplex blocks); ``x`` is the iterate it was extrapolated from.
    monitor : callable ``(idx, ll_new, ll_old)``, optional
        Called after every iteration with the accepted objective (e.g. to warn on a decrease).
    accelerate : bool
        ``False`` runs plain EM (one map per iteration), for comparison.

    Returns
    -------
    SquaremResult
    """
    if max_iter is None and max_evals is None:
        raise ValueError("squarem: give max_iter or max_evals")
    xp = array_namespace(x0)
    B = x0.shape[0]
    max_iter = np.inf if max_iter is None else max_iter
    max_evals = np.inf if max_evals is None else max_evals

    idx_np = np.arange(B)
    idx = _put(xp, np.arange(B), x0)
    theta = x0
    th1, ll = em_map(theta, idx)
    n_eval = np.ones(B, dtype=np.int64)
    n_iter = np.zeros(B, dtype=np.int64)
    ll_prev = xp.full(ll.shape, -np.inf, dtype=ll.dtype, device=device(ll))
    step_max = xp.ones_like(ll)
    hist: list[list[float]] = [[v] for v in to_numpy(ll).astype(np.float64).tolist()]
    done_x, done_ll, done_idx, done_conv = [], [], [], []

    while idx_np.size:
        conv = stop(theta, th1, ll, ll_prev, idx)
        conv_np = np.asarray(to_numpy(conv), dtype=bool)
        out_np = conv_np | (n_iter[idx_np] >= max_iter) | (n_eval[idx_np] >= max_evals)
        if out_np.any():
            keep_np = ~out_np
            pos_out = _put(xp, np.flatnonzero(out_np), theta)
            done_x.append(xp.take(theta, pos_out, axis=0))
            done_ll.append(to_numpy(xp.take(ll, pos_out, axis=0)))
            done_idx.append(idx_np[out_np])
            done_conv.append(conv_np[out_np])
            if not keep_np.any():
                break
            pos = _put(xp, np.flatnonzero(keep_np), theta)
            theta, th1, ll, ll_prev, step_max, idx = (xp.take(a, pos, axis=0) for a in (theta, th1, ll, ll_prev, step_max, idx))
            idx_np = idx_np[keep_np]
        if not accelerate:
            new_theta = th1
            th1, ll_new = em_map(new_theta, idx)
            n_eval[idx_np] += 1
        else:
            th2, ll1 = em_map(th1, idx)
            r = th1 - theta
            v = th2 - th1 - r
            sr = xp.sum(r * r, axis=-1)
            sv = xp.sum(v * v, axis=-1)
            one = xp.ones_like(sr)
            safe = (sv > 0) & (sr > 0)
            ratio = xp.sqrt(xp.where(safe, sr, one) / xp.where(safe, sv, one))
            a = xp.where(safe, xp.minimum(xp.maximum(ratio, one), step_max), one)
            on_support = theta > 0
            for _ in range(_MAX_BACKTRACK):
                thp = theta + 2.0 * a[:, None] * r + (a * a)[:, None] * v
                feasible = xp.all(thp >= 0, axis=-1) & xp.all((thp > 0) | ~on_support, axis=-1)
                need = (~feasible) & (a > 1.0)
                if not bool(xp.any(need)):
                    break
                a = xp.where(need, 1.0 + (a - 1.0) / 2.0, a)
            a = xp.where(feasible, a, one)
            plain = a <= 1.0
            a = xp.where(plain, one, a)
            if normalise is not None:
                thp = normalise(thp, theta, idx)
            thp = xp.where(plain[:, None], th2, thp)
            thn, llp = em_map(thp, idx)
            n_eval[idx_np] += 2
            accept = llp >= ll1
            new_theta = xp.where(accept[:, None], thp, th2)
            ll_new = xp.where(accept, llp, ll1)  # placeholder for rejected rows, fixed below
            th1_new = thn
            rej_np = ~np.asarray(to_numpy(accept), dtype=bool)
            if rej_np.any():  # the fallback θ₂ needs F(θ₂) and ℓ(θ₂): one more map, rejected rows only
                pos = _put(xp, np.flatnonzero(rej_np), theta)
                f_rej, ll_rej = em_map(xp.take(th2, pos, axis=0), xp.take(idx, pos, axis=0))
                rej = ~accept
                th1_new = _merge(xp, rej, th1_new, f_rej)
                ll_new = _merge(xp, rej, ll_new, ll_rej)
                n_eval[idx_np[rej_np]] += 1
            grow = accept & (a == step_max)
            step_max = xp.where(grow, step_max * 4.0, step_max)
            step_max = xp.where(accept, step_max, xp.maximum(one, step_max / 4.0))
            th1 = th1_new
        n_iter[idx_np] += 1
        if monitor is not None:
            monitor(idx, ll_new, ll)
        for b, val in zip(idx_np.tolist(), to_numpy(ll_new).astype(np.float64).tolist()):
            hist[b].append(val)
        theta, ll_prev, ll = new_theta, ll, ll_new

    order = np.argsort(np.concatenate(done_idx), kind="stable")
    perm = _put(xp, order, x0)
    x = xp.take(xp.concat(done_x, axis=0), perm, axis=0)
    loglik = np.concatenate(done_ll)[order].astype(np.float64)
    converged = np.concatenate(done_conv)[order]
    return SquaremResult(x=x, loglik=loglik, n_evals=n_eval, n_iter=n_iter, converged=converged,
                         history=[np.asarray(h) for h in hist])


def _put(xp: Any, a: np.ndarray, like: Any) -> Any:
    """A host index array in the namespace and on the device of ``like``."""
    return xp.asarray(a, device=device(like))
