"""Estimators of lam with pi known (docs/math.md §3): mirror descent, EM, MLE, one-step and k-step MD,
and the k-step MD predictive law after every prefix of a sequence.

All iterations run in log space: ``log s_i = logsumexp_g(log C[i,g] + log lam_g)`` where the
linear sum would underflow, so a long context (n = 10^5) or a large step never overflows, and a
lag weight that is tiny never underflows into a spurious ``s_i = 0``.

Every function runs in the namespace and on the device of its data argument (``C``, or
``tokens``/``pi``) and returns its float dtype (:mod:`mtdmath._xp` states the contract).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from . import _validate as validate
from . import _xp
from ._squarem import squarem
from .likelihood import _C_over_s, _broadcast_batch, _grad, _log_grad, _log_s, check_possible, is_safe


def _prepare_counts_and_start(C: Any, lam0: Any, name_lam0: str = "lam0", *, checked: tuple | None = None
             ) -> tuple[Any, Any, Any, bool]:
    """Validate C and the start point, broadcast them, check the start explains the data.

    Returns (C, lam0, xp, safe), ``safe`` as in :func:`mtdmath.likelihood.is_safe`. ``checked``
    passes ``(C, min C, space)`` already validated by the caller (no second pass over C).
    """
    if checked is None:
        space = _xp.data_space(C)
        C, cmin = validate.check_C(C, "C", space=space, with_min=True)
    else:
        C, cmin, space = checked
    xp = space.xp
    safe = is_safe(cmin, C.dtype, xp)
    m = C.shape[-1]
    if lam0 is None:
        lam0 = xp.full((m,), 1.0 / m, dtype=C.dtype, device=space.device)
    else:
        lam0 = validate.check_lam(lam0, name_lam0, space=space)
        validate.check_same_m(m, lam0.shape[-1], name_lam0)
    batch = _broadcast_batch(lam0, C, name_lam0, "C", 1, 2)
    C = xp.broadcast_to(C, batch + tuple(C.shape[-2:]))
    lam0 = xp.broadcast_to(lam0, batch + (m,))
    if C.shape[-2]:
        try:
            check_possible(lam0, C, xp, name_lam0, safe=safe)
        except ValueError:
            raise ValueError(
                f"{name_lam0} gives probability 0 to an observed transition (C[i]·{name_lam0} = 0): "
                "put positive weight on a lag that explains every transition"
            ) from None
    return C, lam0, xp, safe


def _lazy_log(C: Any, xp: Any):
    """``log C``, computed on first call only: it is needed only where a linear sum underflows or
    a gradient overflows, and costs a pass over C otherwise."""
    box: list = []

    def get() -> Any:
        if not box:
            box.append(_xp.log(C, xp))
        return box[0]

    return get


def _contiguous(C: Any, xp: Any) -> Any:
    """A materialised copy of a broadcast C (an expanded array would be re-read at every product)."""
    if _xp.is_torch_namespace(xp):
        return C.contiguous()
    if _xp.is_numpy_namespace(xp):
        return np.ascontiguousarray(C)
    return C


# ----------------------------------------------------------------------------- the MD update
def _eg_update(loglam: Any, log_step: Any, xp: Any, step: Any = None) -> Any:
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
    fmax = _xp.finfo_max(xp, loglam.dtype)
    log_huge = math.log(fmax) - math.log(4.0)
    ninf = xp.full_like(loglam, -math.inf)
    support = loglam > -math.inf
    with _xp.quiet(xp):
        if step is None:
            step = xp.exp(xp.clip(log_step, max=log_huge))
        out = _xp.log_softmax(loglam + xp.clip(step, max=math.exp(log_huge)), xp)
        log_K = xp.max(xp.where(support, log_step, ninf), axis=-1, keepdims=True)
        over = log_K > log_huge  # (..., 1)
        if bool(xp.any(over)):
            w = xp.where(support, loglam * xp.exp(-log_K) + xp.exp(log_step - log_K), ninf)
            w_max = xp.max(w, axis=-1, keepdims=True)
            top = w == w_max
            gap = -xp.clip(xp.exp(log_K + xp.log(w_max - w)), max=fmax)
            ties = xp.sum(xp.astype(top, loglam.dtype), axis=-1, keepdims=True)
            limit = xp.where(top, -xp.log(ties), gap)
            out = xp.where(over, xp.where(support, limit, ninf), out)
    return xp.where(support, xp.clip(out, min=-fmax), ninf)


def _md_log_step(C: Any, logC: Any, loglam: Any, eta: float, xp: Any, safe: bool = False) -> Any:
    """One exponentiated-gradient step in log space: ``log lam⁺ = log_softmax(log lam + η ∇ℓ(lam))``.

    ``logC`` is ``log C`` or a function returning it (:func:`_lazy_log`)."""
    if eta == 0:
        return _xp.log_softmax(loglam, xp)
    with _xp.quiet(xp):
        step = eta * _grad(C, logC, loglam, xp, safe)  # (..., m), +inf where ∇ℓ overflowed
        log_step = xp.log(step)
        if not bool(xp.all(xp.isfinite(step))):  # the log-space route is finite where the linear one overflowed
            lC = logC() if callable(logC) else logC
            log_step = xp.where(xp.isfinite(step), log_step, math.log(eta) + _log_grad(lC, loglam, xp))
    return _eg_update(loglam, log_step, xp, step)


def _em_log_step(C: Any, logC: Any, loglam: Any, log_n: float, xp: Any, safe: bool = False) -> Any:
    """One EM step in log space: ``lam⁺_g = lam_g ∇ℓ(lam)_g / n`` (renormalised against rounding).

    ``lam_g ∇ℓ_g <= n``, so the product never overflows; where ∇ℓ_g itself overflowed its
    log comes from the log-space route.
    """
    g = _grad(C, logC, loglam, xp, safe)
    lg = _xp.log(g, xp)
    if not bool(xp.all(xp.isfinite(g))):
        lC = logC() if callable(logC) else logC
        lg = xp.where(xp.isfinite(g), lg, _log_grad(lC, loglam, xp))
    return _xp.log_softmax(loglam + lg - log_n, xp)


# ----------------------------------------------------------------------------- public
def mirror_descent(C: Any, *, eta: Any, steps: int | None = None, lam0: Any = None) -> Any:
    """Mirror descent with the negative-entropy mirror map (exponentiated gradient) on ℓ.

    ``lam⁺ = softmax(log lam + η ∇ℓ(lam))``, the exact maximiser of
    ``η⟨∇ℓ(lam), λ⟩ - KL(λ ‖ lam)`` over the simplex (docs/math.md §3).

    Parameters
    ----------
    C : array_like, shape (..., n, m)
        Lag factors; no all-zero row.
    eta : float or sequence of float
        Step size ``>= 0``, the same every step, or a schedule ``(η₁, ..., η_k)``, one per step
        (docs/math.md §3: the first-order coefficient of k steps is ``Σ_j η_j``).
    steps : int, optional
        Number of steps, ``>= 0`` (0 returns the start point); default 1 for a scalar ``eta``,
        the schedule's length for a sequence (which must equal ``steps`` when both are given).
    lam0 : array_like, shape (..., m), optional
        Start point (default uniform); must give every transition positive probability.

    Returns
    -------
    lam : array, shape (broadcast batch..., m)
        In C's namespace, device and float dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> lam = mtdmath.mirror_descent(C, eta=0.02, steps=50)
    >>> print(lam.round(3))
    [0.324 0.676]
    >>> print(mtdmath.log_likelihood(lam, C) > mtdmath.log_likelihood(np.array([0.5, 0.5]), C))
    True
    """
    if steps is not None:
        steps = validate.check_int(steps, "steps", minimum=0)
    etas = validate.check_schedule(eta, steps)
    return _md_run(*_prepare_counts_and_start(C, lam0), etas)


def _md_run(C: Any, lam0: Any, xp: Any, safe: bool, etas: list[float], loglam0: Any = None) -> Any:
    """Mirror descent on validated, broadcast (C, lam0) with the schedule ``etas``; ``loglam0``, if
    given, is ``log lam0`` computed more accurately by the caller (finite where lam0 underflowed)."""
    if C.shape[-2] == 0 or not etas:
        return xp.asarray(lam0, copy=True)
    C = _contiguous(C, xp)
    logC, loglam = _lazy_log(C, xp), (_xp.log(lam0, xp) if loglam0 is None else loglam0)
    for e in etas:
        loglam = _md_log_step(C, logC, loglam, e, xp, safe)
    return xp.exp(loglam)


def em(C: Any, *, steps: int = 1, lam0: Any = None) -> Any:
    """EM for the lag weights: ``lam⁺_g = (1/n) Σ_i γ_i(g) = lam_g ∇ℓ(lam)_g / n`` (docs/math.md §3).

    Parameters and returns as :func:`mirror_descent` (no step size). ℓ never decreases.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> lam = mtdmath.em(C, steps=200)
    >>> print(lam.round(3), np.allclose(lam, mtdmath.mle(C), atol=1e-3))
    [0.324 0.676] True
    """
    steps = validate.check_int(steps, "steps", minimum=0)
    C, lam0, xp, safe = _prepare_counts_and_start(C, lam0)
    n = C.shape[-2]
    if n == 0 or steps == 0:
        return xp.asarray(lam0, copy=True)
    C = _contiguous(C, xp)
    logC, loglam, log_n = _lazy_log(C, xp), _xp.log(lam0, xp), math.log(n)
    for _ in range(steps):
        loglam = _em_log_step(C, logC, loglam, log_n, xp, safe)
    return xp.exp(loglam)


def kkt_gap(lam: Any, C: Any) -> Any:
    """KKT gap of the MLE problem, ``max_g ∇ℓ(lam)_g / n - 1`` (>= 0 on the simplex).

    At a maximiser of ℓ on Δ_m, ``∇ℓ_g <= n`` with equality where ``lam_g > 0``, so the gap
    is 0; by concavity ``ℓ(MLE) - ℓ(lam) <= n · gap``. Shape (...); 0 when n = 0.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> print(float(mtdmath.kkt_gap(mtdmath.mle(C), C)) < 1e-10, float(mtdmath.kkt_gap(np.array([0.5, 0.5]), C)) > 0)
    True True
    """
    space = _xp.data_space(C)
    xp = space.xp
    C, cmin = validate.check_C(C, "C", space=space, with_min=True)
    safe = is_safe(cmin, C.dtype, xp)
    lam = validate.check_lam(lam, "lam", space=space)
    validate.check_same_m(C.shape[-1], lam.shape[-1], "lam")
    n = C.shape[-2]
    batch = _broadcast_batch(lam, C, "lam", "C", 1, 2)
    if n == 0:
        return xp.zeros(batch, dtype=C.dtype, device=space.device)
    C = xp.broadcast_to(C, batch + tuple(C.shape[-2:]))
    lam = xp.broadcast_to(lam, batch + tuple(lam.shape[-1:]))
    check_possible(lam, C, xp, safe=safe)  # the gap is undefined (∇ℓ infinite) where lam cannot explain the data
    return xp.max(_grad(C, None, _xp.log(lam, xp), xp, safe), axis=-1) / n - 1.0


def mle(C: Any, *, tol: float = 1e-12, max_steps: int = 100_000) -> Any:
    """Maximum-likelihood lag weights: the maximiser of ℓ on the simplex (concave problem).

    EM from the uniform point, accelerated by the library's one SQUAREM (:mod:`mtdmath._squarem`:
    Varadhan & Roland 2008, scheme S3, with a monotonicity safeguard). Stops, per batch element,
    when the KKT gap ``max_g ∇ℓ_g / n - 1`` (see :func:`kkt_gap`) is below ``tol``; that bounds
    the suboptimality ``ℓ(MLE) - ℓ(lam) <= n · tol``.

    Parameters
    ----------
    C : array_like, shape (..., n, m)
    tol : float
        KKT-gap tolerance, ``> 0``. The tolerance used is ``max(tol, floor)`` with
        ``floor = 4 (m + log2 n) eps`` for the machine epsilon ``eps`` of C's float dtype
        (the rounding error of the computed gap): in float64 that is at most 2e-13 up to
        n = 10^9, m = 64, so 1e-12 is used as given; in float32 it is 5e-6 for n = 2000,
        m = 4, and a tolerance below it could never be certified.
    max_steps : int
        Maximum number of accelerated iterations (each costs three EM maps); a
        ``RuntimeWarning`` is issued for the elements that have not converged by then.

    Returns
    -------
    lam : array, shape (..., m)
        In C's namespace, device and float dtype. n = 0 returns the uniform start point. When C
        has collinear columns the MLE is not unique; any maximiser is returned.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> lam = mtdmath.mle(C)
    >>> print(lam.round(3), float(mtdmath.kkt_gap(lam, C)) < 1e-10)
    [0.324 0.676] True
    """
    tol = validate.check_float(tol, "tol", positive=True)
    max_steps = validate.check_int(max_steps, "max_steps", minimum=1)
    C, lam0, xp, safe = _prepare_counts_and_start(C, None)
    batch, (n, m) = tuple(C.shape[:-2]), tuple(C.shape[-2:])
    if n == 0 or m == 1 or math.prod(batch) == 0:
        return xp.asarray(lam0, copy=True)
    tol = max(tol, _kkt_floor(n, m, xp.finfo(C.dtype).eps))
    Cf = xp.reshape(_contiguous(C, xp), (-1, n, m))  # (B, n, m)
    x0 = xp.asarray(xp.broadcast_to(xp.reshape(lam0, (-1, m)), (Cf.shape[0], m)), copy=True)  # (B, m)
    log_n = math.log(n)

    def em_map(x: Any, idx: Any) -> tuple[Any, Any]:
        Ca = xp.take(Cf, idx, axis=0)
        return (xp.exp(_em_log_step(Ca, _lazy_log(Ca, xp), _xp.log(x, xp), log_n, xp, safe)),
                xp.sum(_log_s(x, Ca, xp, safe), axis=-1))

    def stop(x: Any, fx: Any, ll: Any, ll_prev: Any, idx: Any) -> Any:
        Ca = xp.take(Cf, idx, axis=0)
        g = _grad(Ca, None, _xp.log(x, xp), xp, safe)
        return xp.max(g, axis=-1) / n - 1.0 < tol

    def normalise(x: Any, x_old: Any, idx: Any) -> Any:
        return x / xp.sum(x, axis=-1, keepdims=True)

    res = squarem(em_map, x0, stop=stop, max_iter=max_steps, normalise=normalise)
    late = int(np.sum(~res.converged))
    if late:
        warnings.warn(
            f"mle: {late} of {res.converged.size} problems did not reach KKT gap < {tol} "
            f"within max_steps={max_steps}",
            RuntimeWarning,
            stacklevel=2,
        )
    return xp.reshape(res.x, batch + (m,))


def _kkt_floor(n: int, m: int, eps: float) -> float:
    """The smallest KKT gap :func:`mle` can certify in a float dtype of machine epsilon ``eps``.

    The computed gap ``max_g Σ_i C[i,g]/s_i / n - 1`` carries the rounding of ``s_i`` (m-term
    sums: about m·eps relative) and of the n-term sums (pairwise in NumPy and torch: about
    log2(n)·eps); the factor 4 covers the maximum over g of that noise. Below this floor the
    stopping test is decided by rounding, and the iteration would run to ``max_steps``.
    """
    return 4.0 * (m + math.log2(max(n, 2))) * float(eps)


def eta_bayes(alpha: Any) -> float:
    """The Bayes-matching step size ``η* = 1 / (1 + α₀)``, ``α₀ = Σ alpha`` (Theorem 1).

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> mtdmath.eta_bayes(np.array([1.0, 2.0]))  # 1 / (1 + alpha_0)
    0.25
    """
    alpha = validate.check_alpha(alpha, "alpha")
    return float(1.0 / (1.0 + alpha.sum()))


def _check_eta(eta: Any, alpha: np.ndarray) -> float:
    """Step size: default η* = eta_bayes(alpha) = 1/(1+α₀) (docs/math.md §3, Theorem 1)."""
    return eta_bayes(alpha) if eta is None else validate.check_float(eta, "eta", nonnegative=True)


def _check_etas(eta: Any, alpha: np.ndarray, k: int, steps_name: str) -> list[float]:
    """A k-step schedule: default η* every step; a scalar every step; or a length-k sequence."""
    return validate.check_schedule(eta_bayes(alpha) if eta is None else eta, k, "eta", steps_name)


def one_step_md(C: Any, alpha: Any, *, eta: Any = None) -> Any:
    """One-step MD estimator ``lam¹ = softmax(log μ + η ∇ℓ(μ))`` from the prior mean ``μ = alpha/α₀``.

    Equivalently ``softmax(log μ + η G/μ)`` with ``G = Σ_i γ_i`` under μ (docs/math.md §3); the
    default step is η* = 1/(1+α₀), the Bayes-consistent one (Theorem 1).

    Parameters
    ----------
    C : array_like, shape (..., n, m)
    alpha : array_like, shape (m,)
    eta : float or length-1 sequence, optional
        Step size ``>= 0`` (default η*).

    Returns
    -------
    array, shape (..., m)
        In C's namespace, device and float dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> alpha = np.array([2.0, 1.0])
    >>> print(mtdmath.one_step_md(C, alpha).round(3))
    [0.071 0.929]
    >>> print(np.allclose(mtdmath.one_step_md(C, alpha), mtdmath.mirror_descent(C, eta=mtdmath.eta_bayes(alpha), steps=1, lam0=alpha / alpha.sum())))
    True
    """
    return k_step_md(C, alpha, 1, eta=eta)


def k_step_md(C: Any, alpha: Any, k: int, *, eta: Any = None) -> Any:
    """``k`` mirror-descent steps from the prior mean μ = alpha/α₀.

    ``eta`` is a scalar (the same every step; default η* = eta_bayes(alpha)) or a schedule of
    length k. A constant η* is first-order consistent only for k = 1: the first-order coefficient
    of k steps is ``Σ_j η_j`` (docs/math.md §3), so ``Σ_j η_j = η*`` is the consistent choice.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> alpha = np.array([2.0, 1.0])
    >>> print(np.allclose(mtdmath.k_step_md(C, alpha, 1), mtdmath.one_step_md(C, alpha)))
    True
    >>> print(mtdmath.k_step_md(C, alpha, 3).round(3))
    [0. 1.]
    """
    alpha = validate.check_alpha(alpha, "alpha")
    space = _xp.data_space(C)
    C, cmin = validate.check_C(C, "C", space=space, with_min=True)
    validate.check_same_m(C.shape[-1], alpha.shape[0], "alpha")
    k = validate.check_int(k, "k", minimum=0)
    etas = _check_etas(eta, alpha, k, "k")
    # μ = alpha/α₀ in log space, exact whatever alpha is (alpha_g/α₀ itself may underflow for alpha
    # spanning 1e-300 ... 1e300); μ > 0 explains every transition of a valid C, so no check is needed
    log_mu = np.log(alpha) - math.log(math.fsum(alpha))
    with np.errstate(under="ignore"):
        mu = np.exp(log_mu)
    xp = space.xp
    m = C.shape[-1]
    batch = tuple(C.shape[:-2])
    lam0 = xp.broadcast_to(xp.asarray(mu, dtype=C.dtype, device=space.device), batch + (m,))
    loglam0 = xp.broadcast_to(xp.asarray(log_mu, dtype=C.dtype, device=space.device), batch + (m,))
    return _md_run(C, lam0, xp, is_safe(cmin, C.dtype, xp), etas, loglam0)


def corrected_one_step_md(C: Any, alpha: Any) -> Any:
    """A second-order one-step estimator of the posterior mean (docs/math.md §3, K.2).

    ``λ = softmax(log μ + ∇ℓ(μ)/(1+α₀) + ζ)`` with ``ũ_i = γ_i/μ - 1`` (the responsibilities
    under μ over μ, minus 1: ``C[i]/(C[i]·μ) - 1``), ``g̃ = Σ_i ũ_i`` and

    ``ζ_g = (g̃_g² - Σ_i ũ_ig²) / ((1+α₀)(2+α₀)) - g̃_g² / (2(1+α₀)²)``.

    On the no-evidence path ``C[i] = b_i(1 + ε d_i)`` it equals the Bayes posterior mean at
    orders ε⁰, ε¹ and ε² (one-step MD matches only ε⁰ and ε¹): ``python -m proofs_check`` row
    K.2 checks this symbolically and through this function. Far from that regime (long
    contexts, where g̃ ~ n) the quadratic correction is not a good approximation; docs/math.md §3.8
    reports where it helps.

    Parameters
    ----------
    C : array_like, shape (..., n, m)
    alpha : array_like, shape (m,)

    Returns
    -------
    array, shape (..., m)
        In C's namespace, device and float dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> alpha = np.array([2.0, 1.0])
    >>> C5 = C[:5]  # a short context, where the second-order term matters
    >>> exact = mtdmath.posterior_mean(C5, alpha)
    >>> err = lambda lam: float(np.abs(lam - exact).max())
    >>> print(err(mtdmath.corrected_one_step_md(C5, alpha)) < err(mtdmath.one_step_md(C5, alpha)))
    True
    """
    alpha = validate.check_alpha(alpha, "alpha")
    space = _xp.data_space(C)
    xp = space.xp
    C = validate.check_C(C, "C", space=space)
    validate.check_same_m(C.shape[-1], alpha.shape[0], "alpha")
    a0 = float(alpha.sum())
    mu = xp.asarray(validate.check_prior_mean(alpha, "alpha"), dtype=C.dtype, device=space.device)
    s = (C @ mu[:, None])[..., 0]  # (..., n), > 0 where C[i] != 0 (μ > 0)
    u = _C_over_s(mu, C, s, xp) - 1.0  # (..., n, m): γ_i/μ - 1
    g = xp.sum(u, axis=-2)  # (..., m): ∇ℓ(μ) - n
    # every square is formed after its 1/(1+α₀) factors: α₀ up to 1e308 is valid and (1+α₀)²
    # overflows, and ũ ~ 1/μ_g is as large as 1e250 for a tiny alpha_g next to a huge one
    r1, r2 = 1.0 / (1.0 + a0), 1.0 / (2.0 + a0)
    w = math.sqrt(r1 * r2) if r1 * r2 > 0 else math.sqrt(r1) * math.sqrt(r2)
    zeta = (g * r1) * (g * r2) - xp.sum((u * w) ** 2, axis=-2) - 0.5 * (g * r1) ** 2
    # log μ + (n + g̃)/(1+α₀) + ζ; the common n/(1+α₀) cancels in the softmax
    z = xp.log(mu) + g * r1 + zeta
    return xp.exp(_xp.log_softmax(z, xp))


# ----------------------------------------------------------------------------- all prefixes
#: upper bound on the elements of the (batch, prefixes, n, m) work array of a k >= 2 step
_CHUNK_ELEMENTS = 1 << 22


def md_predictive_all_prefixes(tokens: Any, pi: Any, alpha: Any, eta: Any = None,
                               steps: int = 1, *, out: Any = None) -> Any:
    """The k-step MD predictive law of the next token after every prefix, in one vectorised pass.

    For a sequence y of length T, row r (r = 0..T-m) is the prefix ``y[:m+r]`` (position
    ``t = m-1+r``), whose transitions are ``i = 0..r-1``: ``lam^(k)_r`` is k MD steps from the
    prior mean μ on ``C[:r]``, and the row is ``p_r = Σ_g lam^(k)_r[g-1] · pi[y[t+1-g], :]``
    (docs/math.md §3, §5). Row 0 has no transition: its lam is μ for every k (the prior predictive).

    - ``steps == 1``: ``lam¹_r = softmax(log μ + η G_r/μ)`` with ``G_r = Σ_{i<r} γ_i`` the
      cumulative responsibilities under μ, and ``η G_r/μ = η Σ_{i<r} C[i]/s_i(μ)`` — an
      exclusive cumulative sum, exactly the aggregation layer of the three-layer construction
      (docs/math.md §5). Cost O(B·T·m) time and memory.
    - ``steps >= 2``: the gradient at prefix r depends on the prefix's own ``lam_r``, so every
      prefix carries its own iterate; each step forms the masked (prefix r, transition i) matrix
      of ``log(C[i]·lam_r)`` in chunks of prefixes. Cost O(k·B·T²·m) time.

    Parameters
    ----------
    tokens : array_like of int, shape (..., T), T >= m
    pi : array_like, shape (S, S)
        Row-stochastic transition matrix.
    alpha : array_like, shape (m,)
        Dirichlet prior of lam; ``m = len(alpha)``, ``μ = alpha / α₀``.
    eta : float, sequence of float, array of shape (steps, T-m+1), callable, "predicted" or PredictedStep, optional
        Step size ``>= 0``: a scalar (the same every step and prefix; default
        ``η* = 1/(1+α₀)``, :func:`eta_bayes`); a schedule of length ``steps``; or a **per-prefix
        step** (docs/math.md §5.6), either a 2-D array whose entry ``[j, r]`` is step j's size at
        prefix row r, or a callable ``eta(n)`` that receives the int64 NumPy array
        ``n = arange(T-m+1)`` (the number of transitions of each prefix) and returns an array of
        shape (T-m+1,) (the same every step) or (steps, T-m+1). For example
        ``eta=lambda n: c / (n + m + a)`` is the step of the softmax-sink transformer, and
        ``eta=predicted_step(pi, alpha).eta`` the zero-parameter step law
        (:func:`mtdmath.predicted_step`, docs/math.md "The predicted step law"). The name
        ``eta="predicted"`` is that law with ``predicted_step``'s default sample sizes and
        ``rng=0`` (a fixed function of pi and alpha; it costs one ``predicted_step`` call, seconds
        for S^m in the thousands); a :class:`~mtdmath.stepsize.PredictedStep` is its law.
    steps : int
        Number of MD steps ``k >= 0`` from μ (0: the prior predictive at every prefix).
    out : array, shape (..., T-m+1, S), optional
        A buffer of the result's namespace, device and dtype to write the result into (and
        return), so that repeated calls reuse one allocation.

    Returns
    -------
    p : array, shape (..., T-m+1, S)
        Row r is the law of ``y[m+r]`` given ``y[:m+r]`` (the last row predicts beyond the
        sequence); equal to ``predictive(k_step_md(lag_factors(y[:m+r], pi, m), alpha, k), y[:m+r], pi)``.
        In the namespace, device and float dtype of ``tokens``/``pi``; differentiable in a torch
        ``pi`` that requires grad. For NumPy and CPU torch inputs and ``steps == 1`` a fused
        compiled kernel (:mod:`mtdmath._kernels`, float64 accumulation) computes it.

    Raises
    ------
    ValueError
        For bad arguments, or if a transition of ``tokens`` has probability 0 under every lag.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> alpha = np.array([2.0, 1.0])
    >>> P = mtdmath.md_predictive_all_prefixes(tokens, pi, alpha)
    >>> P.shape  # one law after every prefix of length m .. T
    (59, 3)
    >>> lam = mtdmath.one_step_md(mtdmath.lag_factors(tokens[:10], pi, 2), alpha)
    >>> print(np.allclose(P[10 - 2], mtdmath.predictive(lam, tokens[:10], pi)))
    True
    """
    alpha = validate.check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    steps = validate.check_int(steps, "steps", minimum=0)
    from .stepsize import step_law  # imported here: stepsize imports this module

    law = step_law(eta, pi, alpha)  # a named step or a PredictedStep: its eta(n); else None
    if law is not None:
        eta = law.eta
    per_prefix = _is_per_prefix(eta)
    etas = None if per_prefix else _check_etas(eta, alpha, steps, "steps")
    space = _xp.data_space(tokens, pi)
    xp = space.xp
    pi = validate.check_pi(pi, "pi", space)
    S = pi.shape[0]
    y = validate.check_tokens(tokens, S, m, "tokens", space)
    batch, T = tuple(y.shape[:-1]), y.shape[-1]
    n = T - m
    if per_prefix:
        etas = _check_prefix_etas(eta, steps, n)
    # the (..., n+1, S) output and about 4 (m, B, n+1) work arrays
    rows = int(np.prod(batch)) * (n + 1)
    validate.check_alloc(rows * (S + 4 * m), 8, "tokens", f"the predictive of {rows} prefixes over S = {S} tokens")
    if out is not None:
        _check_out(out, space, batch + (n + 1, S), pi.dtype)
    mu_np = validate.check_prior_mean(alpha, "alpha")
    if steps == 1 and _use_kernel(space, pi):
        return _kernel_one_step(y, pi, mu_np, etas[0], space, batch, out)
    p = _md_predictive_generic(y, pi, mu_np, etas, steps, space, batch)
    if out is None:
        return p
    if _xp.is_torch_namespace(xp):
        with __import__("torch").no_grad():
            out.copy_(p)
    else:
        out[...] = p
    return out


def _is_per_prefix(eta: Any) -> bool:
    """A function of n or a 2-D array is a per-prefix step; a scalar or a 1-D schedule is not."""
    if callable(eta):
        return True
    try:
        return np.ndim(eta) == 2
    except ValueError:  # a ragged nested list
        raise ValueError("eta must be a scalar, a schedule, a (steps, T-m+1) array or a function of n "
                         "(got a ragged nested sequence)") from None


def _check_prefix_etas(eta: Any, steps: int, n: int) -> np.ndarray:
    """A per-prefix step as a float64 (steps, n+1) array, every entry finite and >= 0.

    ``eta`` is a 2-D array of that shape, or a callable of the transition counts
    ``arange(n+1)`` returning shape (n+1,) (the same every step) or (steps, n+1).
    """
    name = "eta"
    if callable(eta):
        name = "eta(n)"
        eta = eta(np.arange(n + 1, dtype=np.int64))
    try:
        a = np.asarray(_xp.to_numpy(eta) if _xp._is_array(eta) else eta)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of real numbers (got {type(eta).__name__})") from None
    if a.dtype.kind not in "iuf":  # bool, complex, strings and objects are refused
        raise ValueError(f"{name} must be real numbers (got dtype {a.dtype})")
    a = a.astype(np.float64)
    if a.ndim == 1 and name == "eta(n)":
        a = np.tile(a, (steps, 1)) if a.shape[0] == n + 1 else a
    if a.shape != (steps, n + 1):
        want = f"(T-m+1,) = ({n + 1},) or " if name == "eta(n)" else ""
        raise ValueError(f"{name} must have shape {want}(steps, T-m+1) = ({steps}, {n + 1}) for a per-prefix "
                         f"step (got shape {a.shape})")
    bad = ~np.isfinite(a) | (a < 0)
    if bad.any():
        raise ValueError(f"{name} must be finite and >= 0 at every prefix (got {a[bad][:6]} at "
                         f"[step, prefix] {np.argwhere(bad)[:6].tolist()})")
    return a


def _check_out(out: Any, space: Any, shape: tuple, dtype: Any) -> None:
    """``out`` must be an array of the result's namespace and device, shape and dtype."""
    if not _xp._is_array(out) or _xp.array_namespace(out) is not space.xp:
        raise ValueError(f"out must be an array of the result's namespace {space.xp.__name__} (got {type(out).__name__})")
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"out must have shape {tuple(shape)} and dtype {dtype} (got {tuple(out.shape)}, {out.dtype})")
    if _xp._device(out) != space.device:
        raise ValueError(f"out must be on device {space.device} (got {_xp._device(out)})")


def _use_kernel(space: Any, pi: Any) -> bool:
    """The compiled path serves NumPy and CPU torch (without autograd) in float32/float64."""
    from . import _kernels

    if not _kernels.enabled():
        return False
    if space.is_numpy:
        return True
    return bool(space.is_torch and space.device.type == "cpu" and not pi.requires_grad)


def _kernel_one_step(y: Any, pi: Any, mu: np.ndarray, eta: Any, space: Any, batch: tuple, out: Any) -> Any:
    """The fused one-step kernel on host arrays (zero-copy views of CPU torch tensors); ``eta`` is a
    scalar or the (T-m+1,) steps of the prefix rows."""
    from . import _kernels
    from ._kernels.allprefix import one_step_all_prefixes

    _kernels.start_threads()  # a no-op after the first call

    T = y.shape[-1]
    y_np = np.ascontiguousarray(_xp.to_numpy(y).reshape(-1, T), dtype=np.int64)
    pi_np = np.ascontiguousarray(_xp.to_numpy(pi))
    shape = (y_np.shape[0], T - mu.shape[0] + 1, pi_np.shape[0])
    target = None if out is None else _xp.to_numpy(out)  # a view: CPU torch tensors share their memory
    direct = target is not None and target.flags.c_contiguous
    buf = target.reshape(shape) if direct else np.empty(shape, dtype=pi_np.dtype)
    with np.errstate(divide="ignore"):
        log_mu = np.log(mu)
    etas = np.ascontiguousarray(np.broadcast_to(np.asarray(eta, dtype=np.float64), (shape[1],)))
    import numba

    from ._kernels.cores import usable_threads

    # no more threads than there are idle cores for, and the sequences handed out 8 at a time (a
    # sequence is a small piece of work): a thread that a competing process holds back takes fewer of
    # them, rather than the caller waiting for its fixed half. The bits do not depend on either.
    prev_threads = numba.get_num_threads()
    numba.set_num_threads(usable_threads(prev_threads))
    prev_chunk = numba.set_parallel_chunksize(8)
    try:
        bad = one_step_all_prefixes(y_np, pi_np, log_mu, mu, etas, buf)
    finally:
        numba.set_parallel_chunksize(prev_chunk)
        numba.set_num_threads(prev_threads)
    if bad:
        raise ValueError("tokens contain a transition with probability 0 under every lag of pi: "
                         "the data are impossible under pi")
    if out is not None:
        if not direct:
            target[...] = buf.reshape(target.shape)
        return out
    return _xp.from_numpy(buf.reshape(batch + shape[1:]), space)


def _md_predictive_generic(y: Any, pi: Any, mu_np: np.ndarray, etas: list[float], steps: int, space: Any,
                           batch: tuple) -> Any:
    """The Array-API route of :func:`md_predictive_all_prefixes` (y validated, (..., T))."""
    xp = space.xp
    m = mu_np.shape[0]
    S = pi.shape[0]
    T = y.shape[-1]
    n = T - m
    y = xp.reshape(y, (-1, T))
    B = y.shape[0]
    mu = xp.asarray(mu_np, dtype=pi.dtype, device=space.device)  # (m,)

    # lag factors, one (B, n) plane per lag: C_g[:, i] = pi[y[m+i-g], y[m+i]] (docs/math.md §2)
    flat = xp.reshape(pi, (-1,))
    tgt = y[:, m:]
    idx = xp.stack([y[:, m - g: T - g] * S + tgt for g in range(1, m + 1)])  # (m, B, n)
    C = xp.reshape(xp.take(flat, xp.reshape(idx, (-1,))), (m, B, n))
    s = xp.tensordot(mu, C, axes=1)  # (B, n): s_i(μ) = C[i]·μ; 0 exactly when the row C[i] is 0
    if n and bool(xp.any(s == 0)):
        raise ValueError("tokens contain a transition with probability 0 under every lag of pi: "
                         "the data are impossible under pi")

    if steps == 0:
        lam = xp.broadcast_to(mu[:, None, None], (m, B, n + 1))
    elif steps == 1:
        z = _xp.exclusive_cumsum(C / s, 2, xp)  # (m, B, n+1): ∇ℓ(μ) of every prefix
        scale = etas[0]
        if not isinstance(etas, list):  # a per-prefix step: scale prefix row r by η_r
            row = xp.asarray(etas[0], dtype=z.dtype, device=space.device)  # (n+1,)
            z, scale = z * row, 1.0
        lam = _xp.softmax_first_axis(z, scale, xp.log(mu), xp)  # (m, B, n+1): lam¹ of every prefix
    else:
        logC = _xp.log(xp.permute_dims(C, (1, 2, 0)), xp)  # (B, n, m)
        loglam = _all_prefix_md(logC, xp.log(mu), etas, xp)  # (B, n+1, m)
        lam = xp.permute_dims(xp.exp(loglam), (2, 0, 1))  # (m, B, n+1)

    # p_r = Σ_g lam_r[g-1] pi[y[m-1+r+1-g]]: a weighted mixture of m rows of pi per prefix
    src = xp.stack([y[:, m - g: T + 1 - g] for g in range(1, m + 1)])  # (m, B, n+1)
    R = B * (n + 1)
    p = _xp.weighted_rows(xp.reshape(src, (m, R)), xp.reshape(lam, (m, R)), pi, xp)
    return xp.reshape(p, batch + (n + 1, S))


def _all_prefix_md(logC: Any, log_mu: Any, etas: Any, xp: Any) -> Any:
    """k = len(etas) >= 2 MD steps from μ for every prefix r = 0..n of logC (B, n, m); returns
    log lam (B, n+1, m). ``etas`` is a list of k floats or a (k, n+1) array of per-prefix steps.

    Per step and chunk of prefixes [a, b): ``log s[r, i] = logsumexp_g(log C[i,g] + log lam_r[g])``
    for i < b-1, then ``log ∇ℓ_r = logsumexp_{i<r}(log C[i] - log s[r, i])`` (terms i >= r are
    -inf), and the step ``log lam_r⁺ = log_softmax(log lam_r + η ∇ℓ_r)`` (docs/math.md §3).
    """
    B, n, m = logC.shape
    loglam = xp.broadcast_to(log_mu, (B, n + 1, m))  # row 0 stays μ (n = 0 convention)
    if n == 0:
        return loglam
    dev = _xp._device(logC)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, B * n * m))
    ninf = xp.asarray(-math.inf, dtype=logC.dtype, device=dev)
    for eta in etas:
        parts = [loglam[:, :1, :]]
        for a in range(1, n + 1, chunk):
            b = min(n + 1, a + chunk)
            lC = logC[:, None, : b - 1, :]  # (B, 1, b-1, m)
            ll = loglam[:, a:b, None, :]  # (B, R, 1, m)
            log_s = _xp.logsumexp(lC + ll, -1, xp)  # (B, R, b-1)
            used = xp.arange(b - 1, device=dev)[None, :] < xp.arange(a, b, device=dev)[:, None]  # (R, b-1): i < r
            with _xp.quiet(xp):
                terms = xp.where(used[None, :, :, None], lC - log_s[..., None], ninf)  # (B, R, b-1, m)
            step = eta if isinstance(eta, float) else \
                xp.asarray(eta[a:b, None], dtype=logC.dtype, device=dev)  # (R, 1): per-prefix steps
            parts.append(_eg_step(loglam[:, a:b, :], _xp.logsumexp(terms, -2, xp), step, xp))
        loglam = xp.concat(parts, axis=1)
    return loglam


def _eg_step(loglam: Any, log_grad: Any, eta: Any, xp: Any) -> Any:
    """``log_softmax(log lam + η exp(log_grad))`` (docs/math.md §3), exact when the step overflows.

    ``eta`` is a float or an array broadcasting against ``log_grad`` (per-prefix steps; a zero
    entry gives ``log η = -inf``, i.e. no step there).
    """
    if isinstance(eta, float):
        if eta == 0:
            return _xp.log_softmax(loglam, xp)
        return _eg_update(loglam, math.log(eta) + log_grad, xp)
    with _xp.quiet(xp):
        return _eg_update(loglam, xp.log(eta) + log_grad, xp)
