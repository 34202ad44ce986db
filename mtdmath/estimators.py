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


def _normalise_log(loglam: np.ndarray) -> np.ndarray:
    return loglam - _logsumexp(loglam, axis=-1)[..., None]


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


def _md_log_step(logC: np.ndarray, loglam: np.ndarray, eta: float) -> np.ndarray:
    """One exponentiated-gradient step in log space: ``log lam⁺ = log lam + η ∇ℓ(lam) - log Z``."""
    with np.errstate(over="ignore"):
        step = eta * np.exp(_log_grad(logC, loglam))
    # ∇ℓ_g ≤ n / lam_g is finite; only a lag weight below ~1e-300 could overflow it, and any
    # finite step above ~1e300 already makes the softmax one-hot in float64.
    step = np.minimum(step, 1e300)
    return _normalise_log(loglam + step)


def _em_log_step(logC: np.ndarray, loglam: np.ndarray, log_n: float) -> np.ndarray:
    """One EM step in log space: ``lam⁺_g = lam_g ∇ℓ(lam)_g / n`` (renormalised against rounding)."""
    return _normalise_log(loglam + _log_grad(logC, loglam) - log_n)


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
        loglam = _md_log_step(logC, loglam, eta)
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
        loglam = _em_log_step(logC, loglam, log_n)
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
    return np.exp(_log_grad(_log(C), _log(lam))).max(axis=-1) / n - 1.0


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
    logC = _log(C).reshape((-1, n, m))  # (B, n, m)
    loglam = _log(lam0).reshape((-1, m)).copy()
    log_n = np.log(n)
    active = np.arange(loglam.shape[0])

    def ll(lC: np.ndarray, ll_: np.ndarray) -> np.ndarray:
        return _logsumexp(lC + ll_[..., None, :], axis=-1).sum(axis=-1)

    for _ in range(max_steps):
        lC, x = logC[active], loglam[active]
        lgrad = _log_grad(lC, x)
        gap = np.exp(lgrad.max(axis=-1) - log_n) - 1.0
        done = gap < tol
        if np.all(done):
            active = active[:0]
            break
        keep = ~done
        active, lC, x, lgrad = active[keep], lC[keep], x[keep], lgrad[keep]
        f1 = _normalise_log(x + lgrad - log_n)
        f2 = _em_log_step(lC, f1, log_n)
        lam, l1, l2 = np.exp(x), np.exp(f1), np.exp(f2)
        r, v = l1 - lam, l2 - 2 * l1 + lam
        rn, vn = np.linalg.norm(r, axis=-1), np.linalg.norm(v, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(vn > 0, -rn / vn, -1.0)
        a = np.minimum(a, -1.0)[:, None]  # a = -1 reproduces two EM steps exactly
        ext = lam - 2 * a * r + a * a * v
        ok = np.all(ext > 0, axis=-1)
        ext_log = _normalise_log(_log(np.where(ok[:, None], ext, l2)))
        ext_log = _em_log_step(lC, ext_log, log_n)  # stabilising EM step
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
