"""Which mirror-descent step does a transformer implement? (docs/math.md §3, §5)

For an :class:`~mtdmath.nn.MDTransformer`, layer 3 scores lag j+1 at position t with a logit that,
for the construction, is ``log μ_j + η ∇ℓ_t(μ)_j`` (∇ℓ_t of the prefix y[:t+1], i.e. G_t/μ).
:func:`effective_step` regresses the layer-3 logit differences between lags on the differences of
``∇ℓ_t(μ)`` (differences remove what softmax ignores), with one intercept per lag, and reports the
slope (the step), its R², and the same fit in bins of the number n of transitions in the prefix,
so a step that changes with n shows up.

A step that depends on the context, such as the ``c/(n+m+a)`` of the softmax-sink layer 2
(docs/math.md §5.6), is read per number of transitions n: :func:`step_by_n` fits the same
regression at each n separately (an ``MDTransformer``'s layer-3 logits), :func:`matched_step`
finds, for any model's predictive law, the one-step MD step whose predictive is closest to it at
each n (so it also probes a ``StandardTransformer``), and :func:`fit_adaptive_step` fits
``η(n) = c/(n+m+a)``, i.e. ``1/η = A + B·n`` with ``A = (m+a)/c``, ``B = 1/c``, with its R².
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _validate as validate
from .._xp import to_numpy
from ..model import lag_factors

#: the hook point whose activations are layer 3's logits per lag
LAG_LOGITS = "blocks.2.attn.hook_lag_logits"

__all__ = ["EffectiveStep", "effective_step", "StepByN", "MatchedStep", "step_by_n", "matched_step", "AdaptiveFit",
           "fit_adaptive_step"]


@dataclass
class EffectiveStep:
    """Result of :func:`effective_step`.

    Attributes
    ----------
    eta : float
        The MD step the model implements (see :func:`effective_step` for the two routes).
    eta_se : float
        Its standard error, clustered by sequence (the prefixes of one sequence are not
        independent): the sandwich estimator over the B sequences; NaN for B = 1.
    r2 : float
        For the layer-3 route, the coefficient of determination of the regression (1 for the
        construction); for the output route, ``1 - KL(model ‖ MD(η̂)) / KL(model ‖ MD(0))``,
        the share of the distance to the prior predictive that the step explains.
    n_bins : list of (int, int)
        Ranges [lo, hi] of the number of transitions n of the prefixes in each bin.
    eta_by_n, r2_by_n : ndarray, shape (len(n_bins),)
        The same fit within each bin (NaN where a bin has no spread in ∇ℓ beyond rounding).
    method : str
        ``"layer3"`` (an MDTransformer's layer-3 logits) or ``"output"`` (any model's predictive).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> est = nn.effective_step(nn.MDTransformer.construct(pi, alpha, eta=0.1), tokens, pi, alpha)
    >>> type(est).__name__, round(est.eta, 10), est.method
    ('EffectiveStep', 0.1, 'layer3')
    """

    eta: float
    r2: float
    n_bins: list
    eta_by_n: np.ndarray
    r2_by_n: np.ndarray
    eta_se: float = float("nan")
    method: str = "layer3"


#: relative spread of the regressors below which a step is not identified (rounding of sums of at most 10^5
#: terms is below 10^5 eps ~ 2e-11; a real spread of gradients between prefixes is O(1/n))
SPREAD_RTOL = 1e-10


def _fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> tuple[float, float, float]:
    """Slope, R² and clustered s.e. of ``y[..., j] = a_j + η x[..., j]`` (one intercept per column j), pooled.

    ``groups`` labels the rows by sequence; the s.e. is the cluster-robust sandwich
    ``sqrt(G/(G-1) Σ_g (Σ_{i∈g} x̃_i e_i)²) / Σ x̃²`` (NaN with fewer than 2 groups).
    """
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    sxx = float(np.sum(xc * xc))
    # a spread at the rounding level of x is no spread: gradients equal in exact arithmetic differ by the
    # rounding of their sums (a few eps each), and a slope fitted to that noise is arbitrary (any sign, R² = 1)
    if sxx <= SPREAD_RTOL**2 * float(np.sum(x * x)):
        return float("nan"), float("nan"), float("nan")
    eta = float(np.sum(xc * yc)) / sxx
    ss_tot = float(np.sum(yc * yc))
    resid = yc - eta * xc
    ss_res = float(np.sum(resid ** 2))
    se = float("nan")
    if groups is not None:
        labels, idx = np.unique(groups, return_inverse=True)
        if labels.size >= 2:
            score = np.bincount(idx, weights=np.sum(xc * resid, axis=1), minlength=labels.size)
            se = float(np.sqrt(labels.size / (labels.size - 1) * np.sum(score ** 2)) / sxx)
    return eta, (1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan"), se


def _prefix_gradients(y: np.ndarray, pi_np: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """∇ℓ(μ) of every prefix, (B, T-m+1, m): row r (position t = m-1+r) uses the transitions i < r."""
    m = alpha.shape[0]
    mu = alpha / alpha.sum()
    C = lag_factors(y, pi_np, m)  # (B, n, m)
    terms = C / (C @ mu)[..., None]
    return np.concatenate([np.zeros((y.shape[0], 1, m)), np.cumsum(terms, axis=1)], axis=1)


class _OneStepPrefixes:
    """One-step MD from μ after every prefix of ``y`` (B, T), for any step per prefix row, vectorised.

    Precomputes ∇ℓ(μ) of every prefix (B, R, m) and the rows of pi each lag mixes (B, R, m, S),
    R = T - m + 1 (row r: the prefix of length m + r, n = r transitions), so that a step costs one
    softmax over the lags and one contraction (docs/math.md §3.5, §5.6). The reference route is
    :func:`mtdmath.md_predictive_all_prefixes` with a per-prefix step (tests compare them).
    """

    def __init__(self, y: np.ndarray, pi_np: np.ndarray, alpha: np.ndarray) -> None:
        m = alpha.shape[0]
        self.log_mu = np.log(alpha / alpha.sum())
        self.grad = _prefix_gradients(y, pi_np, alpha)  # (B, R, m)
        # rows[b, r, g] = pi[y[t-g]] for lag g+1 at position t = m-1+r
        src = np.lib.stride_tricks.sliding_window_view(y, m, axis=1)[:, :, ::-1]  # (B, R, m)
        self.rows = pi_np[src]  # (B, R, m, S)

    def predictive(self, eta: Any, rows: Any = slice(None)) -> np.ndarray:
        """The predictive at ``rows`` (a slice, index array or int) for ``eta`` (a scalar, or one step
        per selected row): (B, r, S), or (B, S) for an int."""
        g = self.grad[:, rows]
        z = self.log_mu + np.asarray(eta, dtype=np.float64)[..., None] * g
        z -= z.max(-1, keepdims=True)
        lam = np.exp(z)
        lam /= lam.sum(-1, keepdims=True)
        return np.einsum("...g,...gs->...s", lam, self.rows[:, rows])


def _neg_entropy(p: np.ndarray) -> np.ndarray:
    """``Σ_s p log p`` over the last axis (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)


def _kl_rows(p: np.ndarray, neg_entropy: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``KL(p ‖ q)`` over the last axis given ``Σ p log p``; the library's :func:`mtdmath.kl` without its
    per-call validation, for the inner loops of the step fits (p > 0 where q is read)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.where(p > 0, p * np.log(np.where(p > 0, q, 1.0)), 0.0).sum(-1)
    return neg_entropy - cross


def _lag_logits_and_gradients(model: Any, tokens: Any, pi: Any, alpha: Any
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated (alpha, tokens (B, T), layer-3 lag logits (B, T-m+1, m), ∇ℓ(μ) (B, T-m+1, m))."""
    alpha, pi_np, y = _validated(model, tokens, pi, alpha, m_extra=2)
    m = alpha.shape[0]
    if LAG_LOGITS not in getattr(model, "hook_dict", {}):
        raise ValueError(f"model must have a layer-3 hook {LAG_LOGITS!r}, as an MDTransformer (got "
                         f"{type(model).__name__})")
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.as_tensor(y, device=_device(model)), names_filter=LAG_LOGITS)
    logits = cache[LAG_LOGITS].detach().to("cpu", torch.float64).numpy()[:, m - 1:]  # (B, n+1, m)
    return alpha, y, logits, _prefix_gradients(y, pi_np, alpha)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _validated(model: Any, tokens: Any, pi: Any, alpha: Any, m_extra: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """alpha, pi and tokens (B, T >= m + m_extra) checked against each other and the model's m."""
    alpha = validate.check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be an nn.Module (got {type(model).__name__})")
    if int(getattr(model, "m", m)) != m:
        raise ValueError(f"alpha has length {m} but the model has order m = {model.m}")
    if m < 2:
        raise ValueError("alpha: the step is identified by logit differences between lags: m >= 2")
    pi_np = to_numpy(validate.check_pi(pi, "pi")).astype(np.float64)
    y = np.asarray(to_numpy(validate.check_tokens(tokens, pi_np.shape[0], m + m_extra, "tokens")))
    if y.ndim != 2:
        raise ValueError(f"tokens must have shape (B, T) (got shape {y.shape})")
    return alpha, pi_np, y


def _bins(n_of_row: np.ndarray, bins: int) -> list[tuple[int, int, np.ndarray]]:
    """Quantile bins of the numbers of transitions: (lo, hi, selection) each."""
    edges = np.unique(np.quantile(n_of_row, np.linspace(0, 1, bins + 1)).round().astype(int))
    return [(int(lo), int(hi), (n_of_row >= lo) & ((n_of_row <= hi) if hi == edges[-1] else (n_of_row < hi)))
            for lo, hi in zip(edges[:-1], edges[1:])]


def _output_step(model: Any, y: np.ndarray, pi_np: np.ndarray, alpha: np.ndarray, bins: int,
                 bounds: tuple[float, float] = (1e-4, 1e2)) -> EffectiveStep:
    """The one step η minimising the mean KL(model ‖ MD(η)) over the prefixes with n >= 1, with a
    sandwich s.e. clustered by sequence (in θ = log η, by central differences)."""
    from scipy.optimize import minimize_scalar

    with torch.no_grad():
        logp = model.log_probs(torch.as_tensor(y, device=_device(model)))
    p = torch.exp(logp.detach().to("cpu", torch.float64)).numpy()  # (B, R, S)
    if not np.all(np.isfinite(p)):
        raise ValueError("model: its log_probs are not finite on these tokens")
    md = _OneStepPrefixes(y, pi_np, alpha)
    B, R = p.shape[:2]
    h = _neg_entropy(p)

    def per_row(theta: float, rows: Any) -> np.ndarray:  # (B, r) KL at the rows
        return _kl_rows(p[:, rows], h[:, rows], md.predictive(np.exp(theta), rows))

    def solve(rows: Any) -> tuple[float, float, float]:
        res = minimize_scalar(lambda th: float(np.mean(per_row(th, rows))), bounds=np.log(bounds), method="bounded",
                              options={"xatol": 1e-10})
        th = float(res.x)
        base = float(np.mean(_kl_rows(p[:, rows], h[:, rows], md.predictive(0.0, rows))))
        r2 = 1.0 - float(res.fun) / base if base > 0 else float("nan")
        if B < 2:
            return float(np.exp(th)), r2, float("nan")
        d = 1e-4  # central differences in log η: truncation ~d², far below the sampling error
        f_p, f_0, f_m = (per_row(th + s, rows).mean(axis=1) for s in (d, 0.0, -d))  # (B,) per sequence
        score, hess = (f_p - f_m) / (2 * d), float(np.sum(f_p - 2 * f_0 + f_m)) / d ** 2
        se_th = float(np.sqrt(B / (B - 1) * np.sum(score ** 2))) / abs(hess) if hess > 0 else float("nan")
        return float(np.exp(th)), r2, float(np.exp(th)) * se_th

    rows_all = np.arange(1, R)
    eta, r2, se = solve(rows_all)
    n_bins, e_by, r_by = [], [], []
    for lo, hi, sel in _bins(rows_all, bins):
        e, r, _ = solve(rows_all[sel])
        n_bins.append((lo, hi))
        e_by.append(e)
        r_by.append(r)
    return EffectiveStep(eta=eta, r2=r2, n_bins=n_bins, eta_by_n=np.asarray(e_by), r2_by_n=np.asarray(r_by),
                         eta_se=se, method="output")


def effective_step(model: Any, tokens: Any, pi: Any, alpha: Any, *, bins: int = 4) -> EffectiveStep:
    """Estimate the MD step size that ``model`` implements on ``tokens``, with a standard error.

    Two routes. A model with the layer-3 hook ``blocks.2.attn.hook_lag_logits`` (an
    :class:`~mtdmath.nn.MDTransformer`): the layer-3 logit differences between lags regressed on
    the ∇ℓ(μ) differences (one intercept per lag). Any other module with ``log_probs(tokens)``:
    the step of the one-step MD predictive closest to the model's output, ``argmin_η`` of the mean
    ``KL(model ‖ MD(η))`` over every prefix with n >= 1 transitions (η in [1e-4, 1e2]). The
    standard error is clustered by sequence in both.

    Parameters
    ----------
    model : nn.Module
        An MDTransformer (constructed or trained), or any module with ``m`` and ``log_probs``.
    tokens : int array or tensor, shape (B, T), T >= m + 2
        Sequences of the task (e.g. ``ICLTask.sample``); B >= 2 for a standard error.
    pi : array_like, shape (S, S)
        The task's transition matrix, which defines ∇ℓ(μ).
    alpha : array_like, shape (m,)
        The prior; μ = alpha/α₀.
    bins : int
        Number of bins of n (quantiles of the prefix lengths) for ``eta_by_n``.

    Returns
    -------
    EffectiveStep
        For ``MDTransformer.construct(pi, alpha, eta=e)``: eta = e (to rounding), R² = 1 and a
        standard error at rounding level.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> est = nn.effective_step(nn.MDTransformer.construct(pi, alpha), tokens, pi, alpha)
    >>> print(round(est.eta, 10), round(mtdmath.eta_bayes(alpha), 10), round(est.r2, 10))
    0.25 0.25 1.0
    """
    bins = validate.check_int(bins, "bins", minimum=1)
    if LAG_LOGITS not in getattr(model, "hook_dict", {}):
        alpha, pi_np, y = _validated(model, tokens, pi, alpha, m_extra=2)
        if not callable(getattr(model, "log_probs", None)):
            raise ValueError(f"model must be an MDTransformer or have log_probs(tokens) (got {type(model).__name__})")
        return _output_step(model, y, pi_np, alpha, bins)
    alpha, y, logits, grad = _lag_logits_and_gradients(model, tokens, pi, alpha)
    m = alpha.shape[0]
    dx = (grad[..., 1:] - grad[..., :1]).reshape(-1, m - 1)
    dy = (logits[..., 1:] - logits[..., :1]).reshape(-1, m - 1)
    seq = np.repeat(np.arange(y.shape[0]), grad.shape[1])
    eta, r2, se = _fit(dx, dy, seq)
    n_of_row = np.broadcast_to(np.arange(grad.shape[1]), grad.shape[:2]).reshape(-1)
    n_bins, e_by, r_by = [], [], []
    for lo, hi, sel in _bins(n_of_row, bins):
        e, r, _ = _fit(dx[sel], dy[sel])
        n_bins.append((lo, hi))
        e_by.append(e)
        r_by.append(r)
    return EffectiveStep(eta=eta, r2=r2, n_bins=n_bins, eta_by_n=np.asarray(e_by), r2_by_n=np.asarray(r_by),
                         eta_se=se, method="layer3")


# ----------------------------------------------------------------------------- the step as a function of n
@dataclass
class StepByN:
    """Result of :func:`step_by_n`: the layer-3 step of one MD step from μ at each number of transitions n.

    Attributes
    ----------
    n : ndarray of int, shape (K,)
        Numbers of transitions of the prefixes (context length L = n + m).
    eta : ndarray, shape (K,)
        The step at each n (NaN where it is not identified: no spread of ∇ℓ at that n beyond rounding).
    r2 : ndarray, shape (K,)
        The R² of the regression at each n: how well one step describes layer 3 there (higher is
        better; 1 for a constructed model).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> res = nn.step_by_n(nn.MDTransformer.construct(pi, alpha), tokens, pi, alpha)
    >>> type(res).__name__, res.n[:3]
    ('StepByN', array([1, 2, 3]))
    >>> print(res.eta[:3].round(6), bool(res.r2.min() > 1 - 1e-12))
    [0.25 0.25 0.25] True
    """

    n: np.ndarray
    eta: np.ndarray
    r2: np.ndarray


@dataclass
class MatchedStep:
    """Result of :func:`matched_step`: the one-step MD step closest to a model's output at each n.

    Attributes
    ----------
    n : ndarray of int, shape (K,)
        Numbers of transitions of the prefixes (context length L = n + m).
    eta : ndarray, shape (K,)
        The step η(n) whose one-step MD predictive is closest to the model's at n.
    kl_left : ndarray, shape (K,)
        The mean ``KL(model ‖ MD(η(n)))`` left at that step, in nats (lower is better; 0 for a
        model that is one MD step).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> model = nn.MDTransformer.construct(pi, alpha, eta=0.2)
    >>> res = nn.matched_step(torch.softmax(model(tokens), -1), tokens, pi, alpha)
    >>> type(res).__name__, bool(res.kl_left.max() < 1e-12)
    ('MatchedStep', True)
    """

    n: np.ndarray
    eta: np.ndarray
    kl_left: np.ndarray


def step_by_n(model: Any, tokens: Any, pi: Any, alpha: Any) -> StepByN:
    """The layer-3 step of an :class:`~mtdmath.nn.MDTransformer` at every number of transitions n >= 1.

    The regression of :func:`effective_step` (layer-3 logit differences between lags on the
    ∇ℓ(μ) differences, one intercept per lag), fitted separately at each n over the sequences.

    Parameters
    ----------
    model : MDTransformer
    tokens : int array or tensor, shape (B, T), T >= m + 2
    pi : array_like, shape (S, S)
    alpha : array_like, shape (m,), m >= 2

    Returns
    -------
    StepByN
        ``n = 1 … T-m``; ``r2`` is the R² at each n. For ``construct(..., aggregation="softmax_sink",
        c=c, a=a)``: ``eta = c/(n+m+a)`` (to rounding) and R² = 1.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> model = nn.MDTransformer.construct(pi, alpha, aggregation='softmax_sink', c=1.0, a=2.0)
    >>> res = nn.step_by_n(model, tokens, pi, alpha)
    >>> print(np.allclose(res.eta, 1.0 / (res.n + 2 + 2.0), rtol=1e-8))  # c / (n + m + a)
    True
    """
    alpha, y, logits, grad = _lag_logits_and_gradients(model, tokens, pi, alpha)
    if y.shape[0] < 2:
        raise ValueError(f"tokens: the step at each n is fitted across sequences: give B >= 2 (got B = {y.shape[0]})")
    dx = grad[..., 1:] - grad[..., :1]  # (B, R, m-1)
    dy = logits[..., 1:] - logits[..., :1]
    n = np.arange(1, grad.shape[1])
    eta, r2 = np.empty(n.size), np.empty(n.size)
    for j, r in enumerate(n):
        eta[j], r2[j], _ = _fit(dx[:, r], dy[:, r])
    return StepByN(n=n, eta=eta, r2=r2)


def matched_step(probs: Any, tokens: Any, pi: Any, alpha: Any, *, bounds: tuple[float, float] = (1e-4, 1e2)
                 ) -> MatchedStep:
    """For any model's predictive law, the one-step MD step closest to it at each number of transitions n.

    At each n, ``η(n) = argmin_η mean_b KL(p_model[b, n] ‖ p_MD(η)[b, n])`` over the sequences b,
    where ``p_MD(η)`` is the predictive of one MD step from μ of size η on the prefix (bounded
    Brent on log η). It reads only the model's output, so it probes a ``StandardTransformer``
    as well as an ``MDTransformer``.

    Parameters
    ----------
    probs : array or tensor, shape (B, T-m+1, S)
        The model's predictive after every prefix of ``tokens`` (row r: prefix of length m + r),
        e.g. ``torch.softmax(model(tokens), -1)``.
    tokens : int array or tensor, shape (B, T), T >= m + 1
    pi : array_like, shape (S, S)
    alpha : array_like, shape (m,), m >= 2
    bounds : (float, float)
        The search interval of η, ``0 < lo < hi``, finite.

    Returns
    -------
    MatchedStep
        ``n = 1 … T-m``; ``kl_left`` is the mean KL left at the best step (nats). An ``eta`` at a
        bound means the closest step lies at or beyond it.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> model = nn.MDTransformer.construct(pi, alpha, eta=0.1)
    >>> probs = torch.softmax(model(tokens), -1)
    >>> res = nn.matched_step(probs, tokens, pi, alpha)
    >>> print(np.allclose(res.eta, 0.1, rtol=1e-4), bool(res.kl_left.max() < 1e-12))
    True True
    """
    from scipy.optimize import minimize_scalar

    alpha = validate.check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    if m < 2:
        raise ValueError("alpha: a step moves lam only for m >= 2")
    pi_np = to_numpy(validate.check_pi(pi, "pi")).astype(np.float64)
    S = pi_np.shape[0]
    y = np.asarray(to_numpy(validate.check_tokens(tokens, S, m + 1, "tokens")))
    if y.ndim != 2:
        raise ValueError(f"tokens must have shape (B, T) (got shape {y.shape})")
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise ValueError(f"bounds must be a pair (lo, hi) (got {bounds!r})")
    lo, hi = (validate.check_float(b, "bounds", positive=True) for b in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must have lo < hi (got {bounds!r})")
    p = np.asarray(to_numpy(probs.detach() if isinstance(probs, torch.Tensor) else probs), dtype=np.float64)
    B, T = y.shape
    R = T - m + 1
    if p.shape != (B, R, S):
        raise ValueError(f"probs must have shape (B, T-m+1, S) = {(B, R, S)} for these tokens, m = len(alpha) = {m} "
                         f"and S = len(pi) = {S} (got {p.shape})")
    if not (np.all(np.isfinite(p)) and np.all(p >= 0)):
        raise ValueError("probs must be finite and >= 0")
    md = _OneStepPrefixes(y, pi_np, alpha)
    plogp = _neg_entropy(p)  # (B, R)
    n = np.arange(1, R)
    eta, left = np.empty(n.size), np.empty(n.size)
    for j, r in enumerate(n):
        pr, h = p[:, r], plogp[:, r]

        def mean_kl(log_eta: float) -> float:
            return float(np.mean(_kl_rows(pr, h, md.predictive(np.exp(log_eta), r))))

        res = minimize_scalar(mean_kl, bounds=(np.log(lo), np.log(hi)), method="bounded",
                              options={"xatol": 1e-10})
        eta[j], left[j] = float(np.exp(res.x)), float(res.fun)
    return MatchedStep(n=n, eta=eta, kl_left=left)


@dataclass
class AdaptiveFit:
    """Result of :func:`fit_adaptive_step`: ``η(n) = c/(n+m+a)``, i.e. ``1/η = A + B·n``.

    Attributes
    ----------
    A, B, A_se, B_se, cov_AB : float
        Weighted least-squares line of ``1/η`` on n and its covariance (from the given σ, or
        from the residuals when none is given).
    c, a, c_se, a_se : float
        ``c = 1/B``, ``a = A/B - m``, s.e. by the delta method (NaN when B <= 0, or B is zero to
        rounding as for a constant step: no decreasing step).
    r2 : float
        R² of the fitted ``c/(n+m+a)`` in η: ``1 - Σ(η - η_fit)²/Σ(η - mean η)²``.
    chi2_dof : float
        χ²/dof of the line (with the given σ; NaN when none is given or dof = 0).
    eta_fit : ndarray
        The fitted step at the given n.

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath import nn
    >>> n = np.arange(1, 30)
    >>> fit = nn.fit_adaptive_step(n, 2.0 / (n + 5.0), m=2)
    >>> type(fit).__name__, round(fit.A, 8), round(fit.B, 8)  # 1/eta = A + B n
    ('AdaptiveFit', 2.5, 0.5)
    """

    A: float
    B: float
    A_se: float
    B_se: float
    cov_AB: float
    c: float
    a: float
    c_se: float
    a_se: float
    r2: float
    chi2_dof: float
    eta_fit: np.ndarray


def fit_adaptive_step(n: Any, eta: Any, m: int, *, eta_se: Any = None) -> AdaptiveFit:
    """Fit ``η(n) = c/(n+m+a)`` to steps ``eta`` at numbers of transitions ``n`` (docs/math.md §5.6).

    Weighted least squares of ``1/η = A + B·n`` (σ of 1/η: ``eta_se/η²``, the delta method; equal
    weights when ``eta_se`` is None), then ``c = 1/B``, ``a = A/B - m``.

    Parameters
    ----------
    n : array_like of int, shape (K,), K >= 2
    eta : array_like, shape (K,), > 0 and finite
    m : int
        The MTD order (enters a only).
    eta_se : array_like, shape (K,), optional
        Standard errors of eta (> 0).

    Returns
    -------
    AdaptiveFit

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath import nn
    >>> n = np.arange(1, 30)
    >>> fit = nn.fit_adaptive_step(n, 2.0 / (n + 2 + 3.0), m=2)  # an exact c/(n+m+a), c = 2, a = 3
    >>> print(round(fit.c, 8), round(fit.a, 8))
    2.0 3.0
    """
    m = validate.check_int(m, "m", minimum=1)
    n_arr = np.asarray(n, dtype=np.float64)
    e = np.asarray(eta, dtype=np.float64)
    if n_arr.ndim != 1 or e.shape != n_arr.shape or n_arr.size < 2:
        raise ValueError(f"n and eta must be 1-D of the same length >= 2 (got {n_arr.shape} and {e.shape})")
    if not (np.all(np.isfinite(e)) and np.all(e > 0)):
        raise ValueError("eta must be finite and > 0")
    if not np.all(np.isfinite(n_arr)):
        raise ValueError("n must be finite")
    y = 1.0 / e
    if eta_se is not None:
        se = np.asarray(eta_se, dtype=np.float64)
        if se.shape != e.shape or not (np.all(np.isfinite(se)) and np.all(se > 0)):
            raise ValueError(f"eta_se must be finite, > 0, of shape {e.shape}")
        sy = se / e ** 2
    else:
        sy = np.ones_like(y)
    D = np.stack([np.ones_like(n_arr), n_arr], axis=1)
    w = 1.0 / sy
    beta, *_ = np.linalg.lstsq(D * w[:, None], y * w, rcond=None)
    resid = (y - D @ beta) / sy
    dof = y.size - 2
    chi2 = float(resid @ resid)
    cov = np.linalg.inv((D * (w ** 2)[:, None]).T @ D)
    if eta_se is None:  # σ unknown: scale by the residual variance
        cov = cov * (chi2 / dof if dof > 0 else np.nan)
    A, B = float(beta[0]), float(beta[1])
    # a B whose change of 1/η over the whole range of n is at rounding level (1e-12 relative; the
    # least-squares solve loses a few digits to the conditioning of [1, n]) is a constant step
    flat = abs(B) * float(np.ptp(n_arr)) <= 1e-12 * float(np.max(np.abs(y)))
    if B > 0 and not flat:
        c, a = 1.0 / B, A / B - m
        c_se = float(np.sqrt(cov[1, 1])) / B ** 2
        # a = A/B - m: gradient (1/B, -A/B²)
        gvec = np.array([1.0 / B, -A / B ** 2])
        a_se = float(np.sqrt(gvec @ cov @ gvec))
    else:
        c = a = c_se = a_se = float("nan")
    eta_fit = 1.0 / (D @ beta)
    ss_tot = float(np.sum((e - e.mean()) ** 2))
    r2 = 1.0 - float(np.sum((e - eta_fit) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return AdaptiveFit(A=A, B=B, A_se=float(np.sqrt(cov[0, 0])), B_se=float(np.sqrt(cov[1, 1])),
                       cov_AB=float(cov[0, 1]), c=c, a=a, c_se=c_se, a_se=a_se, r2=r2,
                       chi2_dof=chi2 / dof if (eta_se is not None and dof > 0) else float("nan"), eta_fit=eta_fit)
