"""Log-likelihood of lam and its derivatives (docs/math.md §2), and the KL divergence.

Everything depends on the data only through the lag factors C (shape (..., n, m)), with
``s_i(lam) = C[i]·lam``:

- log-likelihood ``ℓ(lam) = Σ_i log s_i(lam)``
- gradient ``∇ℓ(lam)_g = Σ_i C[i,g] / s_i(lam)``
- Hessian ``∇²ℓ(lam) = -Σ_i C[i] C[i]ᵀ / s_i(lam)²``
- responsibilities ``γ_i(g) = lam_g C[i,g] / s_i(lam)``

Every function runs in the namespace and on the device of ``C`` and returns its float dtype
(:mod:`mtdmath._xp` states the backend contract); ``lam`` is converted there.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _validate as V
from . import _xp


def _broadcast_batch(a: Any, b: Any, name_a: str, name_b: str, core_a: int, core_b: int) -> tuple:
    """The broadcast batch shape of a and b (their shapes less ``core_*`` trailing axes), or a
    ValueError that names both arguments and shows their shapes."""
    sa, sb = tuple(a.shape[: a.ndim - core_a]), tuple(b.shape[: b.ndim - core_b])
    try:
        return tuple(np.broadcast_shapes(sa, sb))
    except ValueError:
        raise ValueError(f"{name_a} and {name_b} have batch shapes {sa} and {sb} that do not broadcast "
                         f"(shapes {tuple(a.shape)} and {tuple(b.shape)})") from None


def _lam_C(lam: Any, C: Any, allow_impossible: bool) -> tuple[Any, Any, Any]:
    space = _xp.data_space(C)
    C = V.check_C(C, "C", allow_impossible=allow_impossible, space=space)
    lam = V.check_lam(lam, "lam", space=space)
    V.check_same_m(C.shape[-1], lam.shape[-1], "lam")
    _broadcast_batch(lam, C, "lam", "C", 1, 2)
    return lam, C, space.xp


def _s(lam: Any, C: Any) -> Any:
    """s_i(lam) = C[i]·lam, shape (..., n)."""
    return (C @ lam[..., :, None])[..., 0]


def _tiny_s(dtype: Any, xp: Any) -> float:
    """Below this, s_i = C[i]·lam is recomputed in log space (1e-249 in float64, 2e-31 in float32).

    Above it the linear sums of nonnegative terms are exact to rounding, and
    ``∇ℓ <= n / tiny^0.81`` stays finite for any n that fits in memory.
    """
    return _xp.finfo_tiny(xp, dtype) ** 0.81


def check_possible(lam: Any, C: Any, xp: Any, name: str = "lam", s: Any = None) -> Any:
    """Raise if ``lam`` gives an observed transition probability exactly 0; return ``s = C lam``.

    Decided exactly: ``s_i = 0`` only when every ``C[i,g]·lam_g`` is 0. A linear ``s_i`` that
    underflowed (C[i,g] ~ 1e-300 with lam_g ~ 1e-30) is still a possible transition.
    """
    if s is None:
        s = _s(lam, C)
    low = s < _tiny_s(s.dtype, xp)
    if bool(xp.any(low)):
        possible = xp.any((C > 0) & (lam[..., None, :] > 0), axis=-1)
        if not bool(xp.all(possible)):
            raise ValueError(
                f"{name} gives probability 0 to an observed transition (C[i]·{name} = 0 for some i): "
                "the log-likelihood is -inf there and its derivatives are undefined"
            )
    return s


def _log_grad(logC: Any, loglam: Any, xp: Any) -> Any:
    """log ∇ℓ(lam)_g = logsumexp_i(log C[i,g] - log s_i), shape (..., m); -inf for an all-zero column."""
    log_s = _xp.logsumexp(logC + loglam[..., None, :], -1, xp)  # (..., n)
    return _xp.logsumexp(logC - log_s[..., None], -2, xp)


def _grad(C: Any, logC: Any, loglam: Any, xp: Any) -> Any:
    """∇ℓ(lam)_g = Σ_i C[i,g] / s_i, shape (..., m).

    Two batched matrix products (``s = C lam``, ``∇ℓ = (1/s)ᵀ C``), the most accurate and the
    fastest route; a batch element with some s_i below :func:`_tiny_s` (a lag weight has
    collapsed, or C[i] is tiny) is recomputed in log space. The result may be +inf (overflow)
    for a collapsed weight; callers handle it.
    """
    s = (C @ xp.exp(loglam)[..., :, None])[..., 0]  # (..., n)
    with _xp.quiet(xp):
        g = (xp.reciprocal(s)[..., None, :] @ C)[..., 0, :]  # (..., m)
    bad = xp.any(s < _tiny_s(s.dtype, xp), axis=-1)  # (...)
    if bool(xp.any(bad)):
        with _xp.quiet(xp):
            g = xp.where(bad[..., None], xp.exp(_log_grad(logC, loglam, xp)), g)
    return g


def _C_over_s(lam: Any, C: Any, s: Any, xp: Any) -> Any:
    """``C[i] / s_i`` (..., n, m), in log space on the rows where the linear s_i underflows."""
    with _xp.quiet(xp):
        out = C / s[..., None]
    low = s < _tiny_s(s.dtype, xp)
    if bool(xp.any(low)):
        logC = _xp.log(C, xp)
        log_s = _xp.logsumexp(logC + _xp.log(lam, xp)[..., None, :], -1, xp)
        with _xp.quiet(xp):
            out = xp.where(low[..., None], xp.exp(logC - log_s[..., None]), out)
    return out


def _log_s(lam: Any, C: Any, xp: Any) -> Any:
    """``log s_i(lam)``, shape (..., n): the linear sum, recomputed in log space where it underflows.

    A transition of probability below the dtype's smallest normal number (e.g. C[i] ~ 1e-300
    with lam_g ~ 1e-30) is still possible: ``log s_i = logsumexp_g(log C[i,g] + log lam_g)``
    keeps it finite, and -inf is left for the transitions that are really impossible.
    """
    s = _s(lam, C)
    log_s = _xp.log(s, xp)
    tiny = _xp.finfo_tiny(xp, s.dtype)
    if bool(xp.any(s < tiny)):
        exact = _xp.logsumexp(_xp.log(C, xp) + _xp.log(lam, xp)[..., None, :], -1, xp)
        log_s = xp.where(s < tiny, exact, log_s)
    return log_s


def log_likelihood(lam: Any, C: Any) -> Any:
    """``ℓ(lam) = Σ_i log(C[i]·lam)``; -inf for impossible data.

    Parameters
    ----------
    lam : array_like, shape (..., m)
    C : array_like, shape (..., n, m)

    Returns
    -------
    array, shape (broadcast batch...)
        In C's namespace, device and float dtype.
    """
    lam, C, xp = _lam_C(lam, C, allow_impossible=True)
    return xp.sum(_log_s(lam, C, xp), axis=-1)


def gradient(lam: Any, C: Any) -> Any:
    """``∇ℓ(lam)_g = Σ_i C[i,g] / s_i(lam)``, shape (broadcast batch..., m)."""
    lam, C, xp = _lam_C(lam, C, allow_impossible=False)
    check_possible(lam, C, xp)
    return _grad(C, _xp.log(C, xp), _xp.log(lam, xp), xp)


def hessian(lam: Any, C: Any) -> Any:
    """``∇²ℓ(lam) = -Σ_i C[i] C[i]ᵀ / s_i(lam)²``, shape (..., m, m); negative semidefinite."""
    lam, C, xp = _lam_C(lam, C, allow_impossible=False)
    Cs = _C_over_s(lam, C, check_possible(lam, C, xp), xp)  # (..., n, m)
    return -(xp.matrix_transpose(Cs) @ Cs)


def responsibilities(lam: Any, C: Any) -> Any:
    """Posterior of the latent lag, ``γ_i(g) = lam_g C[i,g] / s_i(lam)``, shape (..., n, m)."""
    lam, C, xp = _lam_C(lam, C, allow_impossible=False)
    return lam[..., None, :] * _C_over_s(lam, C, check_possible(lam, C, xp), xp)


def kl(p: Any, q: Any) -> Any:
    """``KL(p ‖ q) = Σ p log(p/q)`` over the last axis, in nats; broadcasts p against q.

    Uses ``0·log 0 = 0``; the result is ``+inf`` where some ``p > 0 = q``. Both arguments
    must be probability vectors (nonnegative, summing to 1 within 1e-6, loose enough for
    float32 model outputs). The result is in the namespace, device and float dtype of p and q.
    """
    space = _xp.data_space(p, q)
    xp = space.xp
    p = V.check_prob_vector(p, "p", tol=1e-6, space=space)
    q = V.check_prob_vector(q, "q", tol=1e-6, space=space)
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"p and q must have the same last axis (got {p.shape[-1]} and {q.shape[-1]})")
    _broadcast_batch(p, q, "p", "q", 1, 1)
    p, q = xp.broadcast_arrays(p, q)
    with _xp.quiet(xp):
        terms = xp.where(p > 0, p * (_xp.log(p, xp) - _xp.log(q, xp)), xp.zeros_like(p))
    return xp.sum(terms, axis=-1)
