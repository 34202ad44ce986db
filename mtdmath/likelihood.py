"""Log-likelihood of lam and its derivatives (MATH.md §2), and the KL divergence.

Everything depends on the data only through the lag factors C (shape (..., n, m)), with
``s_i(lam) = C[i]·lam``:

- log-likelihood ``ℓ(lam) = Σ_i log s_i(lam)``
- gradient ``∇ℓ(lam)_g = Σ_i C[i,g] / s_i(lam)``
- Hessian ``∇²ℓ(lam) = -Σ_i C[i] C[i]ᵀ / s_i(lam)²``
- responsibilities ``γ_i(g) = lam_g C[i,g] / s_i(lam)``
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _validate as V


def _lam_C(lam: Any, C: Any, allow_impossible: bool) -> tuple[np.ndarray, np.ndarray]:
    C = V.check_C(C, "C", allow_impossible=allow_impossible)
    lam = V.check_lam(lam, "lam")
    V.check_same_m(C.shape[-1], lam.shape[-1], "lam")
    return lam, C


def _s(lam: np.ndarray, C: np.ndarray) -> np.ndarray:
    """s_i(lam) = C[i]·lam, shape (..., n)."""
    return (C @ lam[..., :, None])[..., 0]


def _positive_s(lam: np.ndarray, C: np.ndarray, name: str = "lam") -> np.ndarray:
    s = _s(lam, C)
    if np.any(s <= 0):
        raise ValueError(
            f"{name} gives probability 0 to an observed transition (C[i]·{name} = 0 for some i): "
            "the log-likelihood is -inf there and its derivatives are undefined"
        )
    return s


def log_likelihood(lam: Any, C: Any) -> np.ndarray:
    """``ℓ(lam) = Σ_i log(C[i]·lam)``; -inf for impossible data.

    Parameters
    ----------
    lam : array_like, shape (..., m)
    C : array_like, shape (..., n, m)

    Returns
    -------
    ndarray, shape (broadcast batch...)
    """
    lam, C = _lam_C(lam, C, allow_impossible=True)
    with np.errstate(divide="ignore"):
        return np.log(_s(lam, C)).sum(axis=-1)


def gradient(lam: Any, C: Any) -> np.ndarray:
    """``∇ℓ(lam)_g = Σ_i C[i,g] / s_i(lam)``, shape (..., m)."""
    lam, C = _lam_C(lam, C, allow_impossible=False)
    s = _positive_s(lam, C)
    return (C / s[..., None]).sum(axis=-2)


def hessian(lam: Any, C: Any) -> np.ndarray:
    """``∇²ℓ(lam) = -Σ_i C[i] C[i]ᵀ / s_i(lam)²``, shape (..., m, m); negative semidefinite."""
    lam, C = _lam_C(lam, C, allow_impossible=False)
    s = _positive_s(lam, C)
    Cs = C / s[..., None]  # (..., n, m)
    return -np.einsum("...ng,...nh->...gh", Cs, Cs)


def responsibilities(lam: Any, C: Any) -> np.ndarray:
    """Posterior of the latent lag, ``γ_i(g) = lam_g C[i,g] / s_i(lam)``, shape (..., n, m)."""
    lam, C = _lam_C(lam, C, allow_impossible=False)
    s = _positive_s(lam, C)
    return lam[..., None, :] * C / s[..., None]


def kl(p: Any, q: Any) -> np.ndarray:
    """``KL(p ‖ q) = Σ p log(p/q)`` over the last axis, in nats; broadcasts p against q.

    Uses ``0·log 0 = 0``; the result is ``+inf`` where some ``p > 0 = q``. Both arguments
    must be probability vectors (nonnegative, summing to 1 within 1e-6, loose enough for
    float32 model outputs).
    """
    p = V.check_prob_vector(p, "p", tol=1e-6)
    q = V.check_prob_vector(q, "q", tol=1e-6)
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"p and q must have the same last axis (got {p.shape[-1]} and {q.shape[-1]})")
    p, q = np.broadcast_arrays(p, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=-1)
