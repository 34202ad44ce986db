"""The batched PyTorch core: lag factors, likelihood, mirror descent, EM and the all-prefix MD predictive.

Torch twins of the NumPy functions in :mod:`mtdmath.model`, :mod:`mtdmath.likelihood` and
:mod:`mtdmath.estimators` (MATH.md §2-3), with the same arguments, shapes, edge conventions
and validation (``ValueError`` naming the argument, raised before any work). They run on any
device (CPU, CUDA) and in any floating dtype:

- a result lives on the device of the tensor argument it is computed from (``C``, or ``pi``
  for the functions taking tokens) and has its floating dtype; NumPy arrays and Python
  sequences become float64 tensors on the CPU (or on the device of the other tensor argument);
- every other argument is converted to that dtype and device.

Everything iterative runs in log space, like the NumPy core: the iterate is ``log lam``, and the
gradient is taken by linear-space sums (two batched matrix products) unless some ``s_i = C[i]·lam``
is near underflow, where ``log s_i = logsumexp_g(log C[i,g] + log lam_g)`` takes over — so long
contexts (n in the thousands) never overflow and a tiny lag weight never underflows into a
spurious ``s_i = 0``.

The one function with no NumPy twin, :func:`md_predictive_all_prefixes`, returns the k-step MD
predictive law after *every* prefix of a batch of sequences in one vectorised pass — the
reference the constructed transformer of MATH.md §5 is compared with, and the fast route for
the evaluation protocol of §6.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import _validate as V
from .estimators import eta_bayes

__all__ = [
    "lag_factors",
    "log_likelihood",
    "gradient",
    "mirror_descent",
    "em",
    "one_step_md",
    "md_predictive_all_prefixes",
]

#: upper bound on the elements of the (..., prefixes, n) work tensor of a k >= 2 step in
#: :func:`md_predictive_all_prefixes`; prefixes are processed in chunks below it
_CHUNK_ELEMENTS = 1 << 23


# ----------------------------------------------------------------------------- conversion
def _float_tensor(x: Any, name: str, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """A real floating tensor; non-tensors become float64 (or ``dtype``) on ``device``."""
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be a real tensor (got dtype {x.dtype})")
        if not x.is_floating_point():
            x = x.to(torch.float64)
        return x.to(dtype=dtype or x.dtype, device=device or x.device)
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of real numbers") from None
    return torch.as_tensor(a, dtype=dtype or torch.float64, device=device)


def _sum_tol(dtype: torch.dtype, size: int) -> float:
    """Tolerance on a sum that should be 1: ``SUM_TOL`` of the NumPy core, or the rounding of
    ``size`` terms of this dtype if coarser (a float32 pi has row sums 1 ± ~1e-7)."""
    return max(V.SUM_TOL, 4.0 * size * torch.finfo(dtype).eps)


def _bad(x: torch.Tensor) -> str:
    return V._show(x.detach().to("cpu", torch.float64).numpy())


# ----------------------------------------------------------------------------- validation
# Torch-native versions of the checkers in mtdmath._validate (same checks, same messages), so
# a CUDA tensor is checked where it lives; only the offending values travel to the CPU.
def _check_finite_nonneg(a: torch.Tensor, name: str) -> None:
    if a.numel():  # fast path (issue 6): one pass; a NaN propagates into the min and the max
        lo, hi = torch.aminmax(a)
        if bool(torch.isfinite(lo) & torch.isfinite(hi) & (lo >= 0)):
            return
    fin = torch.isfinite(a)
    if not bool(fin.all()):
        raise ValueError(f"{name} must be finite (got non-finite entries {_bad(a[~fin])})")
    if bool((a < 0).any()):
        raise ValueError(f"{name} must be nonnegative (got negative entries {_bad(a[a < 0])})")


def _check_pi(pi: Any, name: str = "pi", *, device: torch.device | None = None) -> torch.Tensor:
    """Row-stochastic (S, S) matrix, as a floating tensor (its own dtype/device if a tensor)."""
    p = _float_tensor(pi, name, device=device)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] < 1:
        raise ValueError(f"{name} must be a square (S, S) matrix (got shape {tuple(p.shape)})")
    _check_finite_nonneg(p, name)
    rs = p.to(torch.float64).sum(dim=1)
    bad = (rs - 1.0).abs() > _sum_tol(p.dtype, p.shape[0])
    if bool(bad.any()):
        raise ValueError(
            f"{name}: rows must sum to 1 (got row sums of {_bad(rs[bad])} in rows {_bad(bad.nonzero()[:, 0])})"
        )
    return p


def _check_simplex(lam: Any, name: str, *, m: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Lag weights (..., m) on the simplex, converted to ``dtype`` on ``device``."""
    a = _float_tensor(lam, name)
    if a.ndim < 1 or a.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one axis of length >= 1 (got shape {tuple(a.shape)})")
    if a.shape[-1] != m:
        raise ValueError(f"{name} has length {a.shape[-1]} on its last axis but C has m = {m} columns")
    _check_finite_nonneg(a, name)
    s = a.to(torch.float64).sum(dim=-1)
    bad = (s - 1.0).abs() > _sum_tol(a.dtype, m)
    if bool(bad.any()):
        raise ValueError(f"{name} must lie on the simplex: entries must sum to 1 (got sums of {_bad(s[bad])})")
    return a.to(dtype=dtype, device=device)


def _check_alpha(alpha: Any, name: str = "alpha") -> np.ndarray:
    """Dirichlet concentration as float64 NumPy (it is m numbers: validated on the CPU)."""
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach().to("cpu", torch.float64).numpy()
    return V.check_alpha(alpha, name)


def _check_C(C: Any, name: str = "C", *, allow_impossible: bool = False) -> torch.Tensor:
    """Lag factors (..., n, m): finite, nonnegative, and (unless allowed) no all-zero row."""
    a = _float_tensor(C, name)
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (..., n, m) (got shape {tuple(a.shape)})")
    if a.shape[-1] < 1:
        raise ValueError(f"{name} must have m >= 1 columns (got shape {tuple(a.shape)})")
    _check_finite_nonneg(a, name)
    if not allow_impossible and a.numel():
        # a >= 0, so a row is all zero exactly when its sum is 0: a matrix-vector product, where
        # an all() over the length-m last axis is a slow torch CPU reduction (issue 6)
        zero_rows = (a @ torch.ones(a.shape[-1], dtype=a.dtype, device=a.device)) == 0
        if bool(zero_rows.any()):
            idx = zero_rows.nonzero()[:3].tolist()
            raise ValueError(
                f"{name} has a transition with probability 0 under every lag (rows {idx}): "
                "the data are impossible under pi"
            )
    return a


def check_tokens(tokens: Any, S: int, m: int | None = None, name: str = "tokens", *,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Integer tokens in [0, S), shape (..., T) with T >= m, as an int64 tensor on ``device``.

    Accepts an integer tensor (any device) or anything NumPy turns into an integer array;
    the torch twin of :func:`mtdmath._validate.check_tokens` (same messages).
    """
    if isinstance(tokens, torch.Tensor):
        y = tokens
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise ValueError(f"{name} must have an integer dtype (got dtype {y.dtype})")
    else:
        a = np.asarray(tokens)
        if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must have an integer dtype (got dtype {a.dtype})")
        y = torch.as_tensor(a.astype(np.int64, copy=False))
    if y.ndim < 1:
        raise ValueError(f"{name} must have at least one axis (time last) (got a scalar)")
    if y.numel():
        out = (y < 0) | (y >= S)
        if bool(out.any()):
            raise ValueError(f"{name} must lie in [0, {S}) for S = {S} (got out-of-range values {_bad(y[out])})")
    if m is not None and y.shape[-1] < m:
        raise ValueError(f"{name} must have length T >= m = {m} on its last axis (got T = {y.shape[-1]})")
    return y.to(device=device, dtype=torch.int64)


def _check_eta(eta: Any, alpha: np.ndarray) -> float:
    """Step size: default η* = eta_bayes(alpha) = 1/(1+α₀) (MATH.md §3, Theorem 1)."""
    if eta is None:
        return eta_bayes(alpha)
    return V.check_float(eta, "eta", nonnegative=True)


def _device_of(*xs: Any) -> torch.device | None:
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device
    return None


# ----------------------------------------------------------------------------- log-space kernels
def _log_grad(logC: torch.Tensor, loglam: torch.Tensor) -> torch.Tensor:
    """log ∇ℓ(lam)_g = logsumexp_i(log C[i,g] - log s_i) (MATH.md §2), shape (..., m).

    ``log s_i = logsumexp_g(log C[i,g] + log lam_g)``; an all-zero column gives -inf.
    """
    log_s = torch.logsumexp(logC + loglam.unsqueeze(-2), dim=-1)  # (..., n)
    return torch.logsumexp(logC - log_s.unsqueeze(-1), dim=-2)  # (..., m)


def _log_grad_lin(C: torch.Tensor, logC: torch.Tensor, loglam: torch.Tensor) -> torch.Tensor:
    """``log ∇ℓ(lam)`` as :func:`_log_grad`, by the linear-space sums where they are safe.

    Speed (issue 6): ``s = C lam`` and ``∇ℓ = Σ_i C[i]/s_i`` are two batched matrix products,
    where the log-space route needs two logsumexps over (..., n, m) (torch CPU reductions over a
    length-m last axis are slow). The linear sums of nonnegative terms are exact to rounding as
    long as no s_i is near underflow (the NumPy core's ``_grad`` makes the same choice): a batch
    element with some ``s_i < tiny^0.81`` (1e-249 in float64, 2e-31 in float32; a lag weight has
    collapsed) is recomputed in log space. Above that bound ∇ℓ <= n / tiny^0.81 stays finite.
    """
    s = C @ torch.exp(loglam).unsqueeze(-1)  # (..., n, 1)
    lg = torch.log((s.reciprocal().transpose(-1, -2) @ C).squeeze(-2))  # (..., m)
    bad = (s.squeeze(-1) < torch.finfo(C.dtype).tiny ** 0.81).any(dim=-1)  # (...)
    if bool(bad.any()):
        lg = torch.where(bad.unsqueeze(-1), _log_grad(logC, loglam), lg)
    return lg


def _eg_update(loglam: torch.Tensor, log_grad: torch.Tensor, eta: float) -> torch.Tensor:
    """``log_softmax(log lam + η exp(log_grad))`` over the last axis, kept finite on the support.

    ``∇ℓ_g`` overflows when a lag weight has collapsed (mirror descent with a step far above
    1/L, where ∇ℓ ~ 1/lam grows doubly exponentially). Let ``K = max_g η∇ℓ_g`` over the support
    of lam. When K is not representable, write ``log lam + η∇ℓ = K·w`` with
    ``w_g = log lam_g / K + exp(log η∇ℓ_g - log K)`` (all of order 1): then
    ``log lam⁺_g = K (w_g - max w) - log #ties``, i.e. 0 on the maximiser(s) of w and
    ``-exp(log K + log(max w - w_g))`` elsewhere — exact to the dtype's resolution of w.
    (Clamping the step instead would turn distinct huge steps into false ties and leave the
    simplex.) A value below ``-finfo.max`` is floored there: lam_g stays a positive (if
    unrepresentably small) weight, as it is for every iterate of MD from an interior point,
    so the next ``C[i]·lam`` is never 0 and no NaN appears.
    """
    if eta == 0:
        return torch.log_softmax(loglam, dim=-1)
    fmax = torch.finfo(loglam.dtype).max
    log_huge = math.log(fmax) - math.log(4.0)
    log_step = math.log(eta) + log_grad  # (..., m)
    support = loglam > -math.inf
    log_K = log_step.masked_fill(~support, -math.inf).amax(dim=-1, keepdim=True)  # (..., 1)
    out = torch.log_softmax(loglam + torch.exp(log_step.clamp(max=log_huge)), dim=-1)
    overflow = log_K > log_huge  # (..., 1)
    if bool(overflow.any()):
        w = (loglam * torch.exp(-log_K) + torch.exp(log_step - log_K)).masked_fill(~support, -math.inf)
        w_max = w.amax(dim=-1, keepdim=True)
        top = w == w_max
        gap = -torch.exp(log_K + torch.log(w_max - w)).clamp(max=fmax)  # K (w_g - max w), floored
        limit = torch.where(top, -torch.log(top.sum(dim=-1, keepdim=True).to(w.dtype)), gap)
        out = torch.where(overflow, limit.masked_fill(~support, -math.inf), out)
    return torch.where(support, out.clamp(min=-fmax), -math.inf)  # floor on the support only


def _prepare(C: Any, lam0: Any, name_lam0: str = "lam0") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate C and the start point (default uniform), broadcast them, check lam0 explains the data."""
    C = _check_C(C, "C")
    m = C.shape[-1]
    if lam0 is None:
        lam0 = torch.full((m,), 1.0 / m, dtype=C.dtype, device=C.device)
    else:
        lam0 = _check_simplex(lam0, name_lam0, m=m, dtype=C.dtype, device=C.device)
    batch = torch.broadcast_shapes(C.shape[:-2], lam0.shape[:-1])
    C = C.expand(batch + C.shape[-2:])
    lam0 = lam0.expand(batch + (m,))
    if C.shape[-2] and bool(((C @ lam0.unsqueeze(-1)) <= 0).any()):
        raise ValueError(
            f"{name_lam0} gives probability 0 to an observed transition (C[i]·{name_lam0} = 0): "
            "put positive weight on a lag that explains every transition"
        )
    return C, lam0


# ----------------------------------------------------------------------------- public
def lag_factors(tokens: Any, pi: Any, m: int) -> torch.Tensor:
    """Lag factors ``C[..., i, g-1] = pi[y[m+i-g], y[m+i]]`` (MATH.md §2).

    Parameters
    ----------
    tokens : int tensor or array_like, shape (..., T), T >= m
    pi : tensor or array_like, shape (S, S)
        Row-stochastic; the result has its dtype and device (a NumPy ``pi`` gives float64 on
        the device of ``tokens``).
    m : int
        Order, ``m >= 1``.

    Returns
    -------
    C : tensor, shape (..., T - m, m)
    """
    m = V.check_int(m, "m", minimum=1)
    pi = _check_pi(pi, "pi", device=None if isinstance(pi, torch.Tensor) else _device_of(tokens))
    y = check_tokens(tokens, pi.shape[0], m, "tokens", device=pi.device)
    return _lag_factors(y, pi, m)


def _lag_factors(y: torch.Tensor, pi: torch.Tensor, m: int) -> torch.Tensor:
    """Unchecked lag factors; y (..., T) int64 on pi's device."""
    # windows[..., j, :] = y[..., j : j+m]; transition i uses window i reversed,
    # i.e. the sources y[m+i-1], ..., y[i] for lags g = 1..m
    n = y.shape[-1] - m
    src = y.unfold(-1, m, 1)[..., :n, :].flip(-1)  # (..., n, m)
    tgt = y[..., m:].unsqueeze(-1)  # (..., n, 1)
    return pi[src, tgt]  # (..., n, m)


def log_likelihood(lam: Any, C: Any) -> torch.Tensor:
    """``ℓ(lam) = Σ_i log(C[i]·lam)`` (MATH.md §2); -inf for impossible data.

    Parameters
    ----------
    lam : tensor or array_like, shape (..., m)
    C : tensor or array_like, shape (..., n, m)

    Returns
    -------
    tensor, shape (broadcast batch...), dtype/device of C
    """
    C = _check_C(C, "C", allow_impossible=True)
    lam = _check_simplex(lam, "lam", m=C.shape[-1], dtype=C.dtype, device=C.device)
    s = (C @ lam.unsqueeze(-1)).squeeze(-1)  # (..., n)
    return torch.log(s).sum(dim=-1)


def gradient(lam: Any, C: Any) -> torch.Tensor:
    """``∇ℓ(lam)_g = Σ_i C[i,g] / s_i(lam)`` (MATH.md §2), shape (broadcast batch..., m).

    Raises ``ValueError`` for impossible data or when ``lam`` gives an observed transition
    probability 0 (the gradient is undefined there), as the NumPy core does.
    """
    C = _check_C(C, "C")
    lam = _check_simplex(lam, "lam", m=C.shape[-1], dtype=C.dtype, device=C.device)
    s = (C @ lam.unsqueeze(-1)).squeeze(-1)  # (..., n)
    if bool((s <= 0).any()):
        raise ValueError(
            "lam gives probability 0 to an observed transition (C[i]·lam = 0 for some i): "
            "the log-likelihood is -inf there and its derivatives are undefined"
        )
    return (C / s.unsqueeze(-1)).sum(dim=-2)


def mirror_descent(C: Any, *, eta: float, steps: int = 1, lam0: Any = None) -> torch.Tensor:
    """Mirror descent with the negative-entropy mirror map: ``lam⁺ = softmax(log lam + η ∇ℓ(lam))``.

    MATH.md §3; computed in log space.

    Parameters
    ----------
    C : tensor or array_like, shape (..., n, m)
    eta : float
        Step size ``>= 0``.
    steps : int
        ``>= 0``; 0 (or n = 0) returns the start point.
    lam0 : tensor or array_like, shape (..., m), optional
        Start point (default uniform); must give every transition positive probability.

    Returns
    -------
    lam : tensor, shape (broadcast batch..., m), dtype/device of C
    """
    eta = V.check_float(eta, "eta", nonnegative=True)
    steps = V.check_int(steps, "steps", minimum=0)
    C, lam0 = _prepare(C, lam0)
    if C.shape[-2] == 0 or steps == 0:
        return lam0.clone()
    C = C.contiguous()  # (an expanded C would be copied at every matrix product)
    logC, loglam = torch.log(C), torch.log(lam0)
    for _ in range(steps):
        loglam = _eg_update(loglam, _log_grad_lin(C, logC, loglam), eta)
    return torch.exp(loglam)


def em(C: Any, *, steps: int = 1, lam0: Any = None) -> torch.Tensor:
    """EM: ``lam⁺_g = (1/n) Σ_i γ_i(g) = lam_g ∇ℓ(lam)_g / n`` (MATH.md §3), in log space.

    Parameters and returns as :func:`mirror_descent` (no step size).
    """
    steps = V.check_int(steps, "steps", minimum=0)
    C, lam0 = _prepare(C, lam0)
    n = C.shape[-2]
    if n == 0 or steps == 0:
        return lam0.clone()
    C = C.contiguous()
    logC, loglam, log_n = torch.log(C), torch.log(lam0), float(np.log(n))
    for _ in range(steps):
        # renormalise against rounding, as the NumPy core does
        loglam = torch.log_softmax(loglam + _log_grad_lin(C, logC, loglam) - log_n, dim=-1)
    return torch.exp(loglam)


def one_step_md(C: Any, alpha: Any) -> torch.Tensor:
    """One-step MD estimator (MATH.md §3): ``lam¹ = softmax(log μ + η* G/μ)``.

    ``μ = alpha/α₀`` is the prior mean, ``η* = 1/(1+α₀)`` and ``G = Σ_i γ_i`` the summed
    responsibilities under μ (so ``∇ℓ(μ) = G/μ``).

    Parameters
    ----------
    C : tensor or array_like, shape (..., n, m)
    alpha : array_like or tensor, shape (m,)

    Returns
    -------
    lam¹ : tensor, shape (..., m), dtype/device of C
    """
    alpha = _check_alpha(alpha, "alpha")
    C = _check_C(C, "C")
    V.check_same_m(C.shape[-1], alpha.shape[0], "alpha")
    eta = _check_eta(None, alpha)
    mu = torch.as_tensor(alpha / alpha.sum(), dtype=C.dtype, device=C.device)  # (m,)
    G = _responsibilities(C, mu).sum(dim=-2)  # (..., m)
    return torch.softmax(torch.log(mu) + eta * G / mu, dim=-1)


def _responsibilities(C: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """γ_i(g) = μ_g C[i,g] / (C[i]·μ) for a strictly positive μ (m,), shape (..., n, m)."""
    w = C * mu  # (..., n, m)
    return w / w.sum(dim=-1, keepdim=True)


def md_predictive_all_prefixes(tokens: Any, pi: Any, alpha: Any, eta: float | None = None,
                               steps: int = 1) -> torch.Tensor:
    """The k-step MD predictive law of the next token after every prefix, in one vectorised pass.

    For a sequence y of length T, row r (r = 0..T-m) is the prefix ``y[:m+r]`` (position
    ``t = m-1+r``), whose transitions are ``i = 0..r-1`` (C rows of the whole sequence):
    ``lam^(k)_r`` is k MD steps from the prior mean μ on ``C[:r]``, and the row is
    ``p_r = Σ_g lam^(k)_r[g-1] · pi[y[t+1-g], :]`` (MATH.md §3, §5). Row 0 has no transition:
    its lam is μ for every k (the prior predictive).

    - ``steps == 1``: ``lam¹_r = softmax(log μ + η G_r/μ)`` with ``G_r = Σ_{i<r} γ_i`` the cumulative
      responsibilities under μ — exactly the three-layer construction of MATH.md §5 (its
      aggregation layer is this cumulative sum). Cost O(B·T·m) time and memory.
    - ``steps >= 2``: the gradient at prefix r, ``Σ_{i<r} C[i]/(C[i]·lam_r)``, depends on the
      prefix's own ``lam_r``, so every prefix carries its own iterate; each step forms the
      masked (prefix r, transition i) matrix of ``log(C[i]·lam_r)`` in chunks of prefixes.
      Cost O(k·B·T²·m) time, O(B·T·m + 2^23) memory (chunks of at most 2^23 (r, i) pairs).

    Parameters
    ----------
    tokens : int tensor or array_like, shape (..., T), T >= m
    pi : tensor or array_like, shape (S, S)
        The result has its dtype and device (a NumPy ``pi``: float64 on the device of ``tokens``).
    alpha : array_like or tensor, shape (m,)
        Dirichlet prior; m = len(alpha). μ = alpha/α₀.
    eta : float, optional
        Step size ``>= 0``; default ``η* = 1/(1+α₀)`` (``eta_bayes(alpha)``).
    steps : int
        Number of MD steps k ``>= 0`` (0 gives the prior predictive at every prefix).

    Returns
    -------
    p : tensor, shape (..., T-m+1, S)
        Row r is the law of ``y[m+r]`` given ``y[:m+r]`` (the last row predicts beyond the sequence).

    Raises
    ------
    ValueError
        For bad arguments, or if a transition of ``tokens`` has probability 0 under every lag.
    """
    alpha = _check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    eta = _check_eta(eta, alpha)
    steps = V.check_int(steps, "steps", minimum=0)
    pi = _check_pi(pi, "pi", device=None if isinstance(pi, torch.Tensor) else _device_of(tokens))
    y = check_tokens(tokens, pi.shape[0], m, "tokens", device=pi.device)
    S = pi.shape[0]
    batch, T = y.shape[:-1], y.shape[-1]
    n = T - m
    y2 = y.reshape(-1, T)
    B = y2.shape[0]
    # Speed (issue 6): the lags are kept as m planes of shape (B, n) in *window order* — plane j
    # is lag g = m - j, whose source for transition i is y[i+j] and for prefix row r is y[r+j] —
    # so reductions over the lags are elementwise across planes (torch CPU reductions over a
    # length-m last axis are slow) and the unfolded windows of y are the bags of the predictive.
    mu_w = torch.as_tensor(alpha[::-1] / alpha.sum(), dtype=pi.dtype, device=pi.device)  # (m,) μ, window order
    idx = torch.empty((B, m, n), dtype=torch.int64, device=y.device)
    for j in range(m):  # flat index of pi[y[i+j], y[m+i]]
        torch.add(y2[:, m:], y2[:, j: j + n], alpha=S, out=idx[:, j])
    C = torch.take(pi, idx)  # (B, m, n): the lag factors (MATH.md §2), one plane per lag
    s = torch.matmul(mu_w, C)  # (B, n): s_i(μ) = C[i]·μ; 0 exactly when the row C[i] is 0 (μ > 0)
    if n and bool((s == 0).any()):
        raise ValueError("tokens contain a transition with probability 0 under every lag of pi: "
                         "the data are impossible under pi")

    if steps == 0:
        lam = mu_w[:, None].expand(B, m, n + 1)
    elif steps == 1:
        # η G_r/μ with G_r = Σ_{i<r} γ_i under μ, and γ_i/μ = C[i]/s_i(μ): an exclusive cumulative
        # sum along the transitions (the aggregation layer of MATH.md §5)
        z = torch.empty((B, m, n + 1), dtype=pi.dtype, device=pi.device)
        z[:, :, 0] = 0
        if C.requires_grad:  # autograd (pi requires grad): no in-place, no out=
            z[:, :, 1:] = torch.cumsum(C / s.unsqueeze(1), dim=2)
        else:  # reuse C's memory
            z[:, :, 1:] = torch.cumsum(C.div_(s.unsqueeze(1)), dim=2, out=C)
        z.mul_(eta).add_(torch.log(mu_w).unsqueeze(-1))
        lam = torch.softmax(z, dim=1)  # (B, m, n+1): lam¹ of every prefix, window order
    else:
        logC = torch.log(C.flip(1).transpose(1, 2))  # (B, n, m), lag order g = 1..m
        loglam = _all_prefix_md(logC, torch.log(mu_w.flip(0)), eta, steps)  # (B, n+1, m), lag order
        lam = torch.exp(loglam).flip(-1).transpose(1, 2)  # (B, m, n+1), window order

    # predictive p_r = Σ_g lam_r[g-1] pi[y[t+1-g], :]: one bag per prefix row, the m rows of pi
    # indexed by the window y[r..r+m-1], weighted by lam_r (a fused gather-and-sum; int32 indices
    # take the fast CPU kernel)
    itype = torch.int32 if y.device.type == "cpu" else torch.int64
    src = y2.to(itype).unfold(-1, m, 1).reshape(-1)  # (B*(n+1)*m,)
    offsets = torch.arange(0, src.shape[0], m, dtype=itype, device=y.device)
    p = torch.nn.functional.embedding_bag(src, pi, offsets, mode="sum",
                                          per_sample_weights=lam.transpose(1, 2).reshape(-1))
    return p.reshape(batch + (n + 1, S))


def _all_prefix_md(logC: torch.Tensor, log_mu: torch.Tensor, eta: float, steps: int) -> torch.Tensor:
    """k >= 2 MD steps from μ for every prefix r = 0..n of C; returns log lam (..., n+1, m).

    Prefix r uses transitions i < r. Per step and chunk of prefixes [a, b): the (r, i) matrix
    ``log s_{r,i} = logsumexp_g(log C[i,g] + log lam_r[g])`` for i < b-1, then
    ``log ∇ℓ_r = logsumexp_{i<r}(log C[i] - log s_{r,i})`` with the terms i >= r masked to -inf.
    """
    batch, n, m = logC.shape[:-2], logC.shape[-2], logC.shape[-1]
    loglam = log_mu.expand(batch + (n + 1, m)).clone()  # row 0 stays μ (n = 0 convention)
    if n == 0:
        return loglam
    bsz = max(1, int(np.prod(batch, dtype=np.int64)))
    chunk = max(1, _CHUNK_ELEMENTS // (bsz * n * m))
    r_all = torch.arange(n + 1, device=logC.device)
    ninf = torch.tensor(-torch.inf, dtype=logC.dtype, device=logC.device)
    for _ in range(steps):
        new = loglam.clone()
        for a in range(1, n + 1, chunk):  # prefixes r in [a, b) with r >= 1
            b = min(n + 1, a + chunk)
            lC = logC[..., : b - 1, :]  # the transitions i < b-1 that some r < b uses: (..., b-1, m)
            ll = loglam[..., a:b, :]  # (..., R, m)
            # log s[r, i] = logsumexp_g(log C[i, g] + log lam_r[g]); shape (..., R, b-1)
            log_s = torch.logsumexp(lC.unsqueeze(-3) + ll.unsqueeze(-2), dim=-1)
            used = torch.arange(b - 1, device=logC.device) < r_all[a:b, None]  # (R, b-1): i < r
            # log (C[i,g] / s[r,i]) for used i, -inf otherwise (masking, never -inf · 0)
            terms = torch.where(used.unsqueeze(-1), lC.unsqueeze(-3) - log_s.unsqueeze(-1), ninf)  # (..., R, b-1, m)
            log_grad = torch.logsumexp(terms, dim=-2)  # (..., R, m)
            new[..., a:b, :] = _eg_update(ll, log_grad, eta)
        loglam = new
    return loglam
