"""Log-likelihood of lam and its derivatives (MATH.md §2), and the KL divergence.

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

from . import _validate as V
from . import _xp


def _lam_C(lam: Any, C: Any, allow_impossible: bool) -> tuple[Any, Any, Any]:
    space = _xp.data_space(C)
    C = V.check_C(C, "C", allow_impossible=allow_impossible, space=space)
    lam = V.check_lam(lam, "lam", space=space)
    V.check_same_m(C.shape[-1], lam.shape[-1], "lam")
    return lam, C, space.xp


def _s(lam: Any, C: Any) -> Any:
    """s_i(lam) = C[i]·lam, shape (..., n)."""
    return (C @ lam[..., :, None])[..., 0]


def _positive_s(lam: Any, C: Any, xp: Any, name: str = "lam") -> Any:
    s = _s(lam, C)
    if bool(xp.any(s <= 0)):
        raise ValueError(
            f"{name} gives probability 0 to an observed transition (C[i]·{name} = 0 for some i): "
            "the log-likelihood is -inf there and its derivatives are undefined"
        )
    return s


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
    s = _positive_s(lam, C, xp)
    return (xp.reciprocal(s)[..., None, :] @ C)[..., 0, :]


def hessian(lam: Any, C: Any) -> Any:
    """``∇²ℓ(lam) = -Σ_i C[i] C[i]ᵀ / s_i(lam)²``, shape (..., m, m); negative semidefinite."""
    lam, C, xp = _lam_C(lam, C, allow_impossible=False)
    s = _positive_s(lam, C, xp)
    Cs = C / s[..., None]  # (..., n, m)
    return -(xp.matrix_transpose(Cs) @ Cs)


def responsibilities(lam: Any, C: Any) -> Any:
    """Posterior of the latent lag, ``γ_i(g) = lam_g C[i,g] / s_i(lam)``, shape (..., n, m)."""
    lam, C, xp = _lam_C(lam, C, allow_impossible=False)
    s = _positive_s(lam, C, xp)
    return lam[..., None, :] * C / s[..., None]


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
    p, q = xp.broadcast_arrays(p, q)
    with _xp.quiet(xp):
        terms = xp.where(p > 0, p * (_xp.log(p, xp) - _xp.log(q, xp)), xp.zeros_like(p))
    return xp.sum(terms, axis=-1)
