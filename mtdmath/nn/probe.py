"""Which mirror-descent step does a transformer implement? (docs/math.md §3, §5)

For an :class:`~mtdmath.nn.MDTransformer`, layer 3 scores lag j+1 at position t with a logit that,
for the construction, is ``log μ_j + η ∇ℓ_t(μ)_j`` (∇ℓ_t of the prefix y[:t+1], i.e. G_t/μ).
:func:`effective_step` regresses the layer-3 logit differences between lags on the differences of
``∇ℓ_t(μ)`` (differences remove what softmax ignores), with one intercept per lag, and reports the
slope (the step), its R², and the same fit in bins of the number n of transitions in the prefix,
so a step that changes with n shows up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _validate as V
from .._xp import to_numpy
from ..model import lag_factors

__all__ = ["EffectiveStep", "effective_step"]


@dataclass
class EffectiveStep:
    """Result of :func:`effective_step`.

    Attributes
    ----------
    eta : float
        Least-squares slope of the layer-3 logit differences on the ∇ℓ(μ) differences.
    r2 : float
        Its coefficient of determination (1 for the construction).
    n_bins : list of (int, int)
        Ranges [lo, hi] of the number of transitions n of the prefixes in each bin.
    eta_by_n, r2_by_n : ndarray, shape (len(n_bins),)
        The same fit within each bin (NaN where a bin has no spread in ∇ℓ).
    """

    eta: float
    r2: float
    n_bins: list
    eta_by_n: np.ndarray
    r2_by_n: np.ndarray


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and R² of ``y[..., j] = a_j + η x[..., j]`` (one intercept per column j), pooled."""
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    sxx = float(np.sum(xc * xc))
    if sxx == 0.0:
        return float("nan"), float("nan")
    eta = float(np.sum(xc * yc)) / sxx
    ss_tot = float(np.sum(yc * yc))
    ss_res = float(np.sum((yc - eta * xc) ** 2))
    return eta, (1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def effective_step(model: Any, tokens: Any, pi: Any, alpha: Any, *, bins: int = 4) -> EffectiveStep:
    """Estimate the MD step size that ``model``'s layer 3 implements on ``tokens``.

    Parameters
    ----------
    model : MDTransformer
        Constructed or trained (any weights).
    tokens : int array or tensor, shape (B, T), T >= m + 2
        Sequences of the task (e.g. ``ICLTask.sample``).
    pi : array_like, shape (S, S)
        The task's transition matrix, which defines ∇ℓ(μ).
    alpha : array_like, shape (m,)
        The prior; μ = alpha/α₀.
    bins : int
        Number of bins of n (quantiles of the prefix lengths) for ``eta_by_n``.

    Returns
    -------
    EffectiveStep
        For ``MDTransformer.construct(pi, alpha, eta=e)``: eta = e (to rounding) and R² = 1.
    """
    alpha = V.check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    if not hasattr(model, "_layer3_scores"):
        raise ValueError(f"model must be an MDTransformer (got {type(model).__name__})")
    if model.m != m:
        raise ValueError(f"alpha has length {m} but the model has order m = {model.m}")
    if m < 2:
        raise ValueError("alpha: the step is identified by logit differences between lags: m >= 2")
    bins = V.check_int(bins, "bins", minimum=1)
    pi_np = to_numpy(V.check_pi(pi, "pi")).astype(np.float64)
    y = np.asarray(to_numpy(V.check_tokens(tokens, pi_np.shape[0], m + 2, "tokens")))
    if y.ndim != 2:
        raise ValueError(f"tokens must have shape (B, T) (got shape {y.shape})")
    with torch.no_grad():
        _, cache = model(torch.as_tensor(y, device=model.w1.device), return_cache=True)
    logits = cache["blocks.2.attn.hook_lag_logits"].detach().to("cpu", torch.float64).numpy()[:, m - 1:]  # (B, n+1, m)
    # ∇ℓ(μ) of every prefix: row r (position t = m-1+r) uses the transitions i < r
    mu = alpha / alpha.sum()
    C = lag_factors(y, pi_np, m)  # (B, n, m)
    terms = C / (C @ mu)[..., None]
    grad = np.concatenate([np.zeros((y.shape[0], 1, m)), np.cumsum(terms, axis=1)], axis=1)  # (B, n+1, m)
    dx = (grad[..., 1:] - grad[..., :1]).reshape(-1, m - 1)
    dy = (logits[..., 1:] - logits[..., :1]).reshape(-1, m - 1)
    eta, r2 = _fit(dx, dy)
    n_of_row = np.broadcast_to(np.arange(grad.shape[1]), grad.shape[:2]).reshape(-1)
    edges = np.unique(np.quantile(n_of_row, np.linspace(0, 1, bins + 1)).round().astype(int))
    n_bins, e_by, r_by = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (n_of_row >= lo) & ((n_of_row <= hi) if hi == edges[-1] else (n_of_row < hi))
        e, r = _fit(dx[sel], dy[sel])
        n_bins.append((int(lo), int(hi)))
        e_by.append(e)
        r_by.append(r)
    return EffectiveStep(eta=eta, r2=r2, n_bins=n_bins, eta_by_n=np.asarray(e_by), r2_by_n=np.asarray(r_by))
