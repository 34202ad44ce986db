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

import math

import numpy as np

from . import _validate as validate
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


def _lam_C(lam: Any, C: Any, allow_impossible: bool) -> tuple[Any, Any, Any, bool]:
    """Validated (lam, C, xp, safe); ``safe``: every C[i]·lam is above the underflow bound
    :func:`_tiny_s` for any lam on the simplex (min C is), so no check of s is needed."""
    space = _xp.data_space(C)
    C, cmin = validate.check_C(C, "C", allow_impossible=allow_impossible, space=space, with_min=True)
    lam = validate.check_lam(lam, "lam", space=space)
    validate.check_same_m(C.shape[-1], lam.shape[-1], "lam")
    _broadcast_batch(lam, C, "lam", "C", 1, 2)
    return lam, C, space.xp, is_safe(cmin, C.dtype, space.xp)


def is_safe(cmin: float, dtype: Any, xp: Any) -> bool:
    """``C[i]·lam >= min C · Σ lam``: with min C at least twice the bound, no s_i can underflow."""
    return cmin >= 2 * _tiny_s(dtype, xp)


def _s(lam: Any, C: Any) -> Any:
    """s_i(lam) = C[i]·lam, shape (..., n)."""
    return (C @ lam[..., :, None])[..., 0]


def _tiny_s(dtype: Any, xp: Any) -> float:
    """Below this, s_i = C[i]·lam is recomputed in log space (1e-249 in float64, 2e-31 in float32).

    Above it the linear sums of nonnegative terms are exact to rounding, and
    ``∇ℓ <= n / tiny^0.81`` stays finite for any n that fits in memory.
    """
    return _xp.finfo_tiny(xp, dtype) ** 0.81


def _any_below(s: Any, bound: float, xp: Any) -> bool:
    """Whether some entry of s is below ``bound``: one min-reduction (a mask costs a full pass and a
    temporary; the masks below are built only on the rare arrays where this is True)."""
    return math.prod(s.shape) > 0 and bool(xp.min(s) < bound)


def check_possible(lam: Any, C: Any, xp: Any, name: str = "lam", s: Any = None, safe: bool = False) -> Any:
    """Raise if ``lam`` gives an observed transition probability exactly 0; return ``s = C lam``.

    Decided exactly: ``s_i = 0`` only when every ``C[i,g]·lam_g`` is 0. A linear ``s_i`` that
    underflowed (C[i,g] ~ 1e-300 with lam_g ~ 1e-30) is still a possible transition.
    """
    if s is None:
        s = _s(lam, C)
    if not safe and _any_below(s, _tiny_s(s.dtype, xp), xp):
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


def _grad(C: Any, logC: Any, loglam: Any, xp: Any, safe: bool = False) -> Any:
    """∇ℓ(lam)_g = Σ_i C[i,g] / s_i, shape (..., m); ``logC`` may be None or a function returning
    it (computed only if needed), and ``safe`` skips the underflow check (:func:`is_safe`).

    Two batched matrix products (``s = C lam``, ``∇ℓ = (1/s)ᵀ C``), the most accurate and the
    fastest route; a batch element with some s_i below :func:`_tiny_s` (a lag weight has
    collapsed, or C[i] is tiny) is recomputed in log space. The result may be +inf (overflow)
    for a collapsed weight; callers handle it.
    """
    s = (C @ xp.exp(loglam)[..., :, None])[..., 0]  # (..., n)
    with _xp.quiet(xp):
        g = (xp.reciprocal(s)[..., None, :] @ C)[..., 0, :]  # (..., m)
    if not safe and _any_below(s, _tiny_s(s.dtype, xp), xp):
        bad = xp.any(s < _tiny_s(s.dtype, xp), axis=-1)  # (...)
        if logC is None:
            logC = _xp.log(C, xp)
        elif callable(logC):
            logC = logC()
        with _xp.quiet(xp):
            g = xp.where(bad[..., None], xp.exp(_log_grad(logC, loglam, xp)), g)
    return g


def _C_over_s(lam: Any, C: Any, s: Any, xp: Any, safe: bool = False) -> Any:
    """``C[i] / s_i`` (..., n, m), in log space on the rows where the linear s_i underflows."""
    with _xp.quiet(xp):
        out = C / s[..., None]
    if not safe and _any_below(s, _tiny_s(s.dtype, xp), xp):
        low = s < _tiny_s(s.dtype, xp)
        logC = _xp.log(C, xp)
        log_s = _xp.logsumexp(logC + _xp.log(lam, xp)[..., None, :], -1, xp)
        with _xp.quiet(xp):
            out = xp.where(low[..., None], xp.exp(logC - log_s[..., None]), out)
    return out


def _log_s(lam: Any, C: Any, xp: Any, safe: bool = False) -> Any:
    """``log s_i(lam)``, shape (..., n): the linear sum, recomputed in log space where it underflows.

    A transition of probability below the dtype's smallest normal number (e.g. C[i] ~ 1e-300
    with lam_g ~ 1e-30) is still possible: ``log s_i = logsumexp_g(log C[i,g] + log lam_g)``
    keeps it finite, and -inf is left for the transitions that are really impossible.
    """
    s = _s(lam, C)
    log_s = _xp.log(s, xp)
    tiny = _xp.finfo_tiny(xp, s.dtype)
    if not safe and _any_below(s, tiny, xp):
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

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> print(round(float(mtdmath.log_likelihood(np.array([0.7, 0.3]), C)), 4))
    -49.5334
    >>> print(mtdmath.log_likelihood(mtdmath.mle(C), C) >= mtdmath.log_likelihood(np.array([0.7, 0.3]), C))  # the MLE is the maximum
    True
    """
    lam, C, xp, safe = _lam_C(lam, C, allow_impossible=True)
    return xp.sum(_log_s(lam, C, xp, safe), axis=-1)


def gradient(lam: Any, C: Any) -> Any:
    """``∇ℓ(lam)_g = Σ_i C[i,g] / s_i(lam)``, shape (broadcast batch..., m).

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> lam = np.array([0.6, 0.4])
    >>> g = mtdmath.gradient(lam, C)
    >>> h = 1e-6
    >>> d = np.array([1.0, -1.0])  # a direction inside the simplex
    >>> fd = (mtdmath.log_likelihood(lam + h * d, C) - mtdmath.log_likelihood(lam - h * d, C)) / (2 * h)
    >>> print(g.shape, bool(np.isclose(g @ d, fd, rtol=1e-6)))  # central difference, error O(h^2)
    (2,) True
    """
    lam, C, xp, safe = _lam_C(lam, C, allow_impossible=False)
    check_possible(lam, C, xp, safe=safe)
    return _grad(C, None, _xp.log(lam, xp), xp, safe)


def hessian(lam: Any, C: Any) -> Any:
    """``∇²ℓ(lam) = -Σ_i C[i] C[i]ᵀ / s_i(lam)²``, shape (..., m, m); negative semidefinite.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> H = mtdmath.hessian(np.array([0.6, 0.4]), C)
    >>> H.shape
    (2, 2)
    >>> print(bool(np.all(np.linalg.eigvalsh(H) <= 0)))  # the log-likelihood is concave
    True
    """
    lam, C, xp, safe = _lam_C(lam, C, allow_impossible=False)
    Cs = _C_over_s(lam, C, check_possible(lam, C, xp, safe=safe), xp, safe)  # (..., n, m)
    return -(xp.matrix_transpose(Cs) @ Cs)


def responsibilities(lam: Any, C: Any) -> Any:
    """Posterior of the latent lag, ``γ_i(g) = lam_g C[i,g] / s_i(lam)``, shape (..., n, m).

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> r = mtdmath.responsibilities(np.array([0.6, 0.4]), C)
    >>> r.shape
    (58, 2)
    >>> print(np.allclose(r.sum(axis=-1), 1.0))
    True
    """
    lam, C, xp, safe = _lam_C(lam, C, allow_impossible=False)
    s = check_possible(lam, C, xp, safe=safe)
    with _xp.quiet(xp):
        out = lam[..., None, :] * (C / s[..., None])
    if not safe and _any_below(s, _tiny_s(s.dtype, xp), xp):
        # where s_i underflows, C[i,g]/s_i can overflow while γ_i(g) <= 1 (and 0·inf is NaN):
        # γ = exp(log lam + log C - log s) there, all terms finite or -inf
        low = s < _tiny_s(s.dtype, xp)
        logC, loglam = _xp.log(C, xp), _xp.log(lam, xp)[..., None, :]
        log_s = _xp.logsumexp(logC + loglam, -1, xp)
        with _xp.quiet(xp):
            out = xp.where(low[..., None], xp.exp(loglam + logC - log_s[..., None]), out)
    return out


def kl(p: Any, q: Any) -> Any:
    """``KL(p ‖ q) = Σ p log(p/q)`` over the last axis, in nats; broadcasts p against q.

    Uses ``0·log 0 = 0``; the result is ``+inf`` where some ``p > 0 = q``. Both arguments
    must be probability vectors (nonnegative, summing to 1 within 1e-6, loose enough for
    float32 model outputs). The result is in the namespace, device and float dtype of p and q.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> p = np.array([0.5, 0.5])
    >>> print(round(float(mtdmath.kl(p, np.array([0.9, 0.1]))), 6), float(mtdmath.kl(p, p)))
    0.510826 0.0
    """
    space = _xp.data_space(p, q)
    xp = space.xp
    p = validate.check_prob_vector(p, "p", tol=1e-6, space=space)
    q = validate.check_prob_vector(q, "q", tol=1e-6, space=space)
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"p and q must have the same last axis (got {p.shape[-1]} and {q.shape[-1]})")
    _broadcast_batch(p, q, "p", "q", 1, 1)
    p, q = xp.broadcast_arrays(p, q)
    with _xp.quiet(xp):
        terms = xp.where(p > 0, p * (_xp.log(p, xp) - _xp.log(q, xp)), xp.zeros_like(p))
    return xp.sum(terms, axis=-1)
