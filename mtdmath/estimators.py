"""Estimators of lam with pi known (MATH.md §3): mirror descent, EM, MLE, one-step MD.

All iterations run in log space: ``log s_i = logsumexp_g(log C[i,g] + log lam_g)``, so a long
context (n in the thousands) or a large step never overflows, and a lag weight that is tiny
never underflows into a spurious ``s_i = 0``.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from . import _validate as V


# ----------------------------------------------------------------------------- helpers
def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    amax = np.max(a, axis=axis, keepdims=True)
    amax = np.where(np.isfinite(amax), amax, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - amax), axis=axis, keepdims=True)) + amax
    return np.squeeze(out, axis=axis)


def _log(a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(a)


def _log_grad(logC: np.ndarray, loglam: np.ndarray) -> np.ndarray:
    """log ∇ℓ(lam)_g = logsumexp_i(log C[i,g] - log s_i), shape (..., m); -inf for an all-zero column."""
    log_s = _logsumexp(logC + loglam[..., None, :], axis=-1)  # (..., n)
    return _logsumexp(logC - log_s[..., None], axis=-2)


def _normalise_log(z: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis; shifting by the max *first* keeps huge z exact (no absorption)."""
    top = np.max(z, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    shifted = z - top
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


#: below this, s_i = C[i]·lam is recomputed in log space (the linear sum is exact to rounding above it)
_TINY = 1e-250


def _grad(C: np.ndarray, logC: np.ndarray, loglam: np.ndarray) -> np.ndarray:
    """∇ℓ(lam)_g = Σ_i C[i,g] / s_i, shape (..., m); C and loglam share one batch shape.

    The linear-space sum is the most accurate route; a batch element with some s_i below
    1e-250 (a lag weight has collapsed) is recomputed in log space. The result may be +inf
    (overflow) for a collapsed weight; callers handle it.
    """
    lam = np.exp(loglam)
    s = (C @ lam[..., :, None])[..., 0]  # (..., n)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        g = (C / s[..., None]).sum(axis=-2)
    bad = np.any(s < _TINY, axis=-1)
    if np.any(bad):
        with np.errstate(over="ignore"):
            g[bad] = np.exp(_log_grad(logC[bad], loglam[bad]))
    return g


def _prepare(C: Any, lam0: Any, name_lam0: str = "lam0") -> tuple[np.ndarray, np.ndarray]:
    """Validate C and the start point, broadcast them, check the start explains the data."""
    C = V.check_C(C, "C")
    m = C.shape[-1]
    if lam0 is None:
        lam0 = np.full(m, 1.0 / m)
    else:
        lam0 = V.check_lam(lam0, name_lam0)
        V.check_same_m(m, lam0.shape[-1], name_lam0)
    batch = np.broadcast_shapes(C.shape[:-2], lam0.shape[:-1])
    C = np.broadcast_to(C, batch + C.shape[-2:])
    lam0 = np.broadcast_to(lam0, batch + (m,))
    if C.shape[-2] and np.any((C @ lam0[..., :, None]) <= 0):
        raise ValueError(
            f"{name_lam0} gives probability 0 to an observed transition (C[i]·{name_lam0} = 0): "
            "put positive weight on a lag that explains every transition"
        )
    return C, lam0


_FMAX = np.finfo(np.float64).max
_LOG_HUGE = np.log(_FMAX) - np.log(4.0)


def _eg_update(loglam: np.ndarray, log_step: np.ndarray, step: np.ndarray | None = None) -> np.ndarray:
    """``log_softmax(log lam + exp(log_step))`` over the last axis, exact when the step overflows.

    ``∇ℓ_g`` can overflow once a lag weight has collapsed (large steps). With
    ``K = max_g η∇ℓ_g`` over the support, write ``log lam + η∇ℓ = K·w`` with
    ``w_g = log lam_g / K + η∇ℓ_g / K`` (order 1): then ``log lam⁺ = K (w - max w) - log #ties``,
    0 on the maximiser(s) and ``-K (max w - w_g)`` elsewhere, exact to the resolution of w
    (clamping the step instead would create false ties). Log-weights are floored at
    ``-finfo.max``: a weight on the support stays positive in log space, so no later
    ``C[i]·lam`` is 0 and no NaN appears. ``step``, if given, is ``exp(log_step)`` computed
    more accurately by the caller (used where it is representable).
    """
    support = loglam > -np.inf
    if step is None:
        step = np.exp(np.minimum(log_step, _LOG_HUGE))
    out = _normalise_log(loglam + np.minimum(step, np.exp(_LOG_HUGE)))
    log_K = np.max(np.where(support, log_step, -np.inf), axis=-1, keepdims=True)
    over = log_K > _LOG_HUGE  # (..., 1)
    if np.any(over):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            w = np.where(support, loglam * np.exp(-log_K) + np.exp(log_step - log_K), -np.inf)
            w_max = np.max(w, axis=-1, keepdims=True)
            top = w == w_max
            gap = -np.minimum(np.exp(log_K + np.log(w_max - w)), _FMAX)
        limit = np.where(top, -np.log(top.sum(axis=-1, keepdims=True)), gap)
        out = np.where(over, np.where(support, limit, -np.inf), out)
    return np.where(support, np.maximum(out, -_FMAX), -np.inf)


def _md_log_step(C: np.ndarray, logC: np.ndarray, loglam: np.ndarray, eta: float) -> np.ndarray:
    """One exponentiated-gradient step in log space: ``log lam⁺ = log_softmax(log lam + η ∇ℓ(lam))``."""
    if eta == 0:
        return _normalise_log(loglam)
    with np.errstate(divide="ignore", over="ignore"):
        step = eta * _grad(C, logC, loglam)  # (..., m), +inf where ∇ℓ overflowed
        log_step = np.log(step)
    if not np.all(np.isfinite(step)):  # the log-space route is finite where the linear one overflowed
        log_step = np.where(np.isfinite(step), log_step, np.log(eta) + _log_grad(logC, loglam))
    return _eg_update(loglam, log_step, step)


def _em_log_step(C: np.ndarray, logC: np.ndarray, loglam: np.ndarray, log_n: float) -> np.ndarray:
    """One EM step in log space: ``lam⁺_g = lam_g ∇ℓ(lam)_g / n`` (renormalised against rounding).

    ``lam_g ∇ℓ_g <= n``, so the product never overflows; where ∇ℓ_g itself overflowed its
    log comes from the log-space route.
    """
    g = _grad(C, logC, loglam)
    with np.errstate(divide="ignore"):
        lg = np.log(g)
    if not np.all(np.isfinite(g)):
        lg = np.where(np.isfinite(g), lg, _log_grad(logC, loglam))
    return _normalise_log(loglam + lg - log_n)


# ----------------------------------------------------------------------------- public
def mirror_descent(C: Any, *, eta: float, steps: int = 1, lam0: Any = None) -> np.ndarray:
    """Mirror descent with the negative-entropy mirror map (exponentiated gradient) on ℓ.

    ``lam⁺ = softmax(log lam + η ∇ℓ(lam))``, the exact maximiser of
    ``η⟨∇ℓ(lam), λ⟩ - KL(λ ‖ lam)`` over the simplex (MATH.md §3).

    Parameters
    ----------
    C : array_like, shape (..., n, m)
        Lag factors; no all-zero row.
    eta : float
        Step size, ``>= 0``.
    steps : int
        Number of steps, ``>= 0`` (0 returns the start point).
    lam0 : array_like, shape (..., m), optional
        Start point (default uniform); must give every transition positive probability.

    Returns
    -------
    lam : ndarray, shape (broadcast batch..., m)
    """
    eta = V.check_float(eta, "eta", nonnegative=True)
    steps = V.check_int(steps, "steps", minimum=0)
    C, lam0 = _prepare(C, lam0)
    if C.shape[-2] == 0 or steps == 0:
        return lam0.copy()
    logC, loglam = _log(C), _log(lam0)
    for _ in range(steps):
        loglam = _md_log_step(C, logC, loglam, eta)
    return np.exp(loglam)


def em(C: Any, *, steps: int = 1, lam0: Any = None) -> np.ndarray:
    """EM for the lag weights: ``lam⁺_g = (1/n) Σ_i γ_i(g) = lam_g ∇ℓ(lam)_g / n`` (MATH.md §3).

    Parameters and returns as :func:`mirror_descent` (no step size). ℓ never decreases.
    """
    steps = V.check_int(steps, "steps", minimum=0)
    C, lam0 = _prepare(C, lam0)
    n = C.shape[-2]
    if n == 0 or steps == 0:
        return lam0.copy()
    logC, loglam, log_n = _log(C), _log(lam0), np.log(n)
    for _ in range(steps):
        loglam = _em_log_step(C, logC, loglam, log_n)
    return np.exp(loglam)


def kkt_gap(lam: Any, C: Any) -> np.ndarray:
    """KKT gap of the MLE problem, ``max_g ∇ℓ(lam)_g / n - 1`` (>= 0 on the simplex).

    At a maximiser of ℓ on Δ_m, ``∇ℓ_g <= n`` with equality where ``lam_g > 0``, so the gap
    is 0; by concavity ``ℓ(MLE) - ℓ(lam) <= n · gap``. Shape (...); 0 when n = 0.
    """
    C = V.check_C(C, "C")
    lam = V.check_lam(lam, "lam")
    V.check_same_m(C.shape[-1], lam.shape[-1], "lam")
    n = C.shape[-2]
    batch = np.broadcast_shapes(C.shape[:-2], lam.shape[:-1])
    if n == 0:
        return np.zeros(batch)
    C, lam = np.broadcast_to(C, batch + C.shape[-2:]), np.broadcast_to(lam, batch + lam.shape[-1:])
    return _grad(C, _log(C), _log(lam)).max(axis=-1) / n - 1.0


def mle(C: Any, *, tol: float = 1e-12, max_steps: int = 100_000) -> np.ndarray:
    """Maximum-likelihood lag weights: the maximiser of ℓ on the simplex (concave problem).

    EM from the uniform point, accelerated by SQUAREM (Varadhan & Roland 2008, scheme S3)
    with a monotonicity safeguard: an extrapolated point is kept only if it stays inside the
    simplex and its log-likelihood is no lower than two plain EM steps. Stops, per batch
    element, when the KKT gap ``max_g ∇ℓ_g / n - 1`` (see :func:`kkt_gap`) is below ``tol``;
    that bounds the suboptimality ``ℓ(MLE) - ℓ(lam) <= n · tol``.

    Parameters
    ----------
    C : array_like, shape (..., n, m)
    tol : float
        KKT-gap tolerance, ``> 0``.
    max_steps : int
        Maximum number of accelerated iterations (each costs three EM maps); a
        ``RuntimeWarning`` is issued for the elements that have not converged by then.

    Returns
    -------
    lam : ndarray, shape (..., m)
        n = 0 returns the uniform start point. When C has collinear columns the MLE is not
        unique; any maximiser is returned.
    """
    tol = V.check_float(tol, "tol", positive=True)
    max_steps = V.check_int(max_steps, "max_steps", minimum=1)
    C, lam0 = _prepare(C, None)
    batch, (n, m) = C.shape[:-2], C.shape[-2:]
    if n == 0 or m == 1:
        return lam0.copy()
    Cf = C.reshape((-1, n, m))  # (B, n, m)
    logC = _log(Cf)
    loglam = _log(lam0).reshape((-1, m)).copy()
    log_n = np.log(n)
    active = np.arange(loglam.shape[0])

    def ll(lC: np.ndarray, ll_: np.ndarray) -> np.ndarray:
        return _logsumexp(lC + ll_[..., None, :], axis=-1).sum(axis=-1)

    for _ in range(max_steps):
        Ca, lC, x = Cf[active], logC[active], loglam[active]
        with np.errstate(divide="ignore"):
            lgrad = np.log(_grad(Ca, lC, x))
        gap = np.exp(lgrad.max(axis=-1) - log_n) - 1.0
        done = gap < tol
        if np.all(done):
            active = active[:0]
            break
        keep = ~done
        active, Ca, lC, x, lgrad = active[keep], Ca[keep], lC[keep], x[keep], lgrad[keep]
        f1 = _normalise_log(x + lgrad - log_n)
        f2 = _em_log_step(Ca, lC, f1, log_n)
        lam, l1, l2 = np.exp(x), np.exp(f1), np.exp(f2)
        r, v = l1 - lam, l2 - 2 * l1 + lam
        rn, vn = np.linalg.norm(r, axis=-1), np.linalg.norm(v, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(vn > 0, -rn / vn, -1.0)
        a = np.minimum(a, -1.0)[:, None]  # a = -1 reproduces two EM steps exactly
        ext = lam - 2 * a * r + a * a * v
        ok = np.all(ext > 0, axis=-1)
        ext_log = _normalise_log(_log(np.where(ok[:, None], ext, l2)))
        ext_log = _em_log_step(Ca, lC, ext_log, log_n)  # stabilising EM step
        better = ok & (ll(lC, ext_log) >= ll(lC, f2))
        loglam[active] = np.where(better[:, None], ext_log, f2)
    if active.size:
        warnings.warn(
            f"mle: {active.size} of {loglam.shape[0]} problems did not reach KKT gap < {tol} "
            f"within max_steps={max_steps}",
            RuntimeWarning,
            stacklevel=2,
        )
    return np.exp(loglam).reshape(batch + (m,))


def eta_bayes(alpha: Any) -> float:
    """The Bayes-matching step size ``η* = 1 / (1 + α₀)``, ``α₀ = Σ alpha`` (Theorem 1)."""
    alpha = V.check_alpha(alpha, "alpha")
    return float(1.0 / (1.0 + alpha.sum()))


def one_step_md(C: Any, alpha: Any) -> np.ndarray:
    """One-step MD estimator ``lam¹ = softmax(log μ + η* ∇ℓ(μ))`` from the prior mean ``μ = alpha/α₀``.

    Equivalently ``softmax(log μ + η* G/μ)`` with ``G = Σ_i γ_i`` under μ (MATH.md §3).

    Parameters
    ----------
    C : array_like, shape (..., n, m)
    alpha : array_like, shape (m,)

    Returns
    -------
    ndarray, shape (..., m)
    """
    return k_step_md(C, alpha, 1)


def k_step_md(C: Any, alpha: Any, k: int, *, eta: float | None = None) -> np.ndarray:
    """``k`` mirror-descent steps from the prior mean μ with step ``eta`` (default η* = eta_bayes(alpha))."""
    alpha = V.check_alpha(alpha, "alpha")
    C = V.check_C(C, "C")
    V.check_same_m(C.shape[-1], alpha.shape[0], "alpha")
    k = V.check_int(k, "k", minimum=0)
    eta = eta_bayes(alpha) if eta is None else eta
    return mirror_descent(C, eta=eta, steps=k, lam0=alpha / alpha.sum())
