"""Transformers for the in-context MTD task: the three-layer mirror-descent construction and a GPT baseline.

``MDTransformer`` is the disentangled three-layer causal transformer of docs/math.md §5. Position t
holds the one-hot token ``e(y[t])``; each layer writes its own block of the (concatenated)
residual stream, ``[e(y[t]) | r_t | G_t | p_t]``:

1. responsibility layer — softmax attention of query t over the keys ``s = t-m … t-1`` with
   score ``e(y[s])ᵀ W1 e(y[t]) + b[t-s-1]`` and relative value embeddings ``V1[t-s-1]``:
   ``r_t = Σ_s A1[t, s] V1[t-s-1]`` (defined for t >= m; ``r_t = 0`` for t < m);
2. aggregation layer — unnormalised causal linear attention, ``G_t = Σ_{s<=t} r_s``;
3. mirror-step layer — softmax attention of query t over ``s = t-m+1 … t`` (lag ``g = t+1-s``)
   with query ``q_t = q_bias + G_t Wq``, relative key embeddings ``K3[g-1]`` and value
   ``W_V e(y[s])`` where ``W_V = softmax(value_logits, -1)ᵀ``: ``p_t = Σ_s A3[t, s] W_V e(y[s])``.

:meth:`MDTransformer.construct` sets ``W1 = log pi``, ``b = log μ``, ``V1 = K3 = I``,
``q_bias = log μ``, ``Wq = diag(η/μ)`` and ``W_V = piᵀ``: then ``A1`` holds the
responsibilities under μ, ``A3`` holds the one-step MD weights ``lam¹`` of each prefix, and
``p_t`` is the one-step MD predictive law of ``y[t+1]`` — the softmax of layer 3 *is* the
exponentiated-gradient step. ``MDTransformer(S, m)`` is the same architecture with random,
learnable weights; the construction is one point of its parameter space.

Zero entries of pi give ``-inf`` scores and values. They are applied by masking
(``masked_fill``) a finite parameter, never by multiplying ``-inf`` with a one-hot (which
would give ``0 · -inf = NaN``).

``MDTransformer(S, m, aggregation="softmax_sink")`` replaces layer 2 by softmax attention with
equal scores over s <= t plus a sink key (score ``log a``, value 0): it outputs
``Ḡ_t = G_t/(t+1+a)``, and ``construct(pi, alpha, aggregation="softmax_sink", c=, a=)`` with
``w_q = diag(c/μ)`` takes one MD step of the context-adaptive size ``c/(n+m+a)`` after a prefix of
``n = t+1-m`` transitions (docs/math.md §5.6).

The three layers are the submodules ``blocks[0]`` (:class:`Responsibility`), ``blocks[1]``
(:class:`Aggregate`) and ``blocks[2]`` (:class:`MirrorStep`), also reachable by these role names.
The attention matrices are formed explicitly, (B, T, T) each, as a transformer does: memory
O(B·T²). For long contexts use :func:`mtdmath.md_predictive_all_prefixes` (O(B·T·m), same numbers).

``StandardTransformer`` is a GPT-style baseline (nanoGPT-like: token + learned absolute position
embeddings, pre-LayerNorm blocks of causal multi-head softmax attention and an MLP) with the
same ``forward(tokens) -> logits`` contract; its attention runs fused
(``F.scaled_dot_product_attention``) unless its scores or pattern are asked for.

Every named activation passes through an identity :class:`~mtdmath.nn.hooks.HookPoint` named by
its module path (TransformerLens names such as ``blocks.{l}.attn.hook_pattern``,
``[batch, head, query_pos, key_pos]``, listed with their shapes in :data:`MD_CACHE_NAMES` and by
:func:`standard_cache_names`): ``run_with_cache`` reads them, ``run_with_hooks`` replaces them.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate as validate
from .._xp import torch_space
from ..estimators import _check_eta
from ..stepsize import step_law
from .hooks import HookedModule, HookPoint

__all__ = ["MDConfig", "StandardConfig", "MDTransformer", "StandardTransformer", "MD_CACHE_NAMES",
           "Responsibility", "Aggregate", "MirrorStep",
           "MD_SINK_CACHE_NAMES", "AGGREGATIONS", "adaptive_params", "md_cache_names", "standard_cache_names"]


# ----------------------------------------------------------------------------- helpers
def _tokens_2d(tokens: Any, S: int, m: int, device: torch.device) -> tuple[torch.Tensor, bool]:
    """Validate tokens (B, T) or (T,), integer, in [0, S), T >= m; int64 on ``device``, as (B, T).

    Returns the (B, T) tokens and whether the input was one sequence (T,), whose batch axis the
    caller drops from its result: the core functions take one sequence or a batch alike.

    Under ``torch.compile`` only what the graph knows statically is checked (a tensor, its
    dtype and shape): the range check reads the tokens' values back to the host, which would
    split the compiled graph. A compiled forward therefore trusts the token values.
    """
    if torch.compiler.is_compiling():
        if not isinstance(tokens, torch.Tensor) or tokens.dtype == torch.bool or tokens.is_floating_point() \
                or tokens.is_complex():
            raise ValueError("tokens must be an integer torch tensor in a compiled forward")
        y = tokens.to(device=device, dtype=torch.int64)
        if y.ndim in (1, 2) and y.shape[-1] < m:
            raise ValueError(f"tokens must have length T >= m = {m} on its last axis (got T = {y.shape[-1]})")
    else:
        y = validate.check_tokens(tokens, S, m, "tokens", torch_space(device, like=tokens))
    if y.ndim not in (1, 2):
        raise ValueError(f"tokens must have shape (B, T) or (T,) (got shape {tuple(y.shape)})")
    return (y[None], True) if y.ndim == 1 else (y, False)


def _masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``allowed``; rows with no allowed key are all 0.

    Masked entries are exactly 0 and no NaN appears (an all-masked row is softmaxed as zeros
    and then zeroed), so such rows also pass no gradient.
    """
    any_allowed = allowed.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~allowed, -math.inf).masked_fill(~any_allowed, 0.0)
    return torch.softmax(scores, dim=-1).masked_fill(~any_allowed, 0.0)


def _logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` that gives -inf where every term is -inf with a zero (not NaN) gradient there.

    ``torch.logsumexp`` back-propagates ``exp(-inf - (-inf)) = NaN`` through an all -inf slice,
    which would poison training of a model whose pi has zeros; such slices are masked out.
    """
    dead = torch.isneginf(x).all(dim=dim, keepdim=True)
    out = torch.logsumexp(x.masked_fill(dead, 0.0), dim=dim, keepdim=True)
    return out.masked_fill(dead, -math.inf).squeeze(dim)


def _init_device(generator: torch.Generator | None) -> torch.device:
    """Weights are drawn on the generator's device (CPU by default), then moved: a CPU
    generator gives the same weights whatever the model's device."""
    return generator.device if generator is not None else torch.device("cpu")


# ----------------------------------------------------------------------------- configs
#: Layer 2 of :class:`MDTransformer`: ``"sum"`` — unnormalised causal attention with weights 1,
#: ``G_t = Σ_{s<=t} r_s`` (docs/math.md §5.1); ``"softmax_sink"`` — softmax attention with equal
#: scores over s <= t plus a sink key of score ``log a`` and value 0, ``Ḡ_t = G_t/(t+1+a)``, which
#: turns layer 3 into one MD step with the context-adaptive step ``c/(n+m+a)`` (docs/math.md §5.6).
AGGREGATIONS = ("sum", "softmax_sink")


def _check_aggregation(aggregation: Any) -> str:
    if not isinstance(aggregation, str) or aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS} (got {aggregation!r})")
    return aggregation


@dataclass(frozen=True)
class MDConfig:
    """Shape of an :class:`MDTransformer`: vocabulary size ``S``, MTD order ``m`` and the kind of
    layer 2 (``aggregation``: ``"sum"`` or ``"softmax_sink"``, see :data:`AGGREGATIONS`).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> nn.MDTransformer.construct(pi, alpha).config
    MDConfig(S=3, m=2, aggregation='sum')
    """

    S: int
    m: int
    aggregation: str = "sum"

    def __post_init__(self) -> None:
        validate.check_int(self.S, "S", minimum=1)
        validate.check_int(self.m, "m", minimum=1)
        _check_aggregation(self.aggregation)


@dataclass(frozen=True)
class StandardConfig:
    """Hyper-parameters of a :class:`StandardTransformer`.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> nn.StandardTransformer(3, 2, n_layers=1, d_model=8, n_heads=1, max_len=16, generator=torch.Generator().manual_seed(0)).config
    StandardConfig(S=3, m=2, n_layers=1, d_model=8, n_heads=1, max_len=16, dropout=0.0)
    """

    S: int
    m: int
    n_layers: int = 3
    d_model: int = 64
    n_heads: int = 4
    max_len: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        validate.check_int(self.S, "S", minimum=1)
        validate.check_int(self.m, "m", minimum=1)
        validate.check_int(self.n_layers, "n_layers", minimum=1)
        validate.check_int(self.d_model, "d_model", minimum=1)
        validate.check_int(self.n_heads, "n_heads", minimum=1)
        validate.check_int(self.max_len, "max_len", minimum=self.m)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be divisible by n_heads (got d_model={self.d_model}, n_heads={self.n_heads})")
        d = validate.check_float(self.dropout, "dropout", nonnegative=True)
        if d >= 1:
            raise ValueError(f"dropout must be < 1 (got {d})")
        object.__setattr__(self, "dropout", d)


# ----------------------------------------------------------------------------- cache names
#: Named activations (hook points) of :class:`MDTransformer`, as ``run_with_cache`` returns them, and their shapes
#: (TransformerLens-style names; attention tensors are ``[batch, head, query_pos, key_pos]``
#: with one head per layer). Scores are the masked logits: -inf outside the window (and where
#: pi is 0), so a row with no allowed key (layer 1: t < m; layer 3: t < m-1) is all -inf and its
#: pattern row is all 0. The residual stream is the disentangled concatenation
#: ``[e(y[t]) | r_t | G_t | p_t]`` of width ``S + 2m + S``; blocks a layer has not written yet are 0.
MD_CACHE_NAMES: dict[str, str] = {
    "hook_embed": "(B, T, S) one-hot tokens e(y[t])",
    "blocks.0.attn.hook_scores": "(B, 1, T, T) layer-1 logits W1[y[s], y[t]] + lag_bias[t-s-1], masked to -inf",
    "blocks.0.attn.hook_pattern": "(B, 1, T, T) layer-1 weights A1 (responsibilities when constructed)",
    "blocks.0.hook_r": "(B, T, m) r_t = Σ_g A1[t, t-g] lag_value[g-1]",
    "blocks.0.hook_resid_post": "(B, T, S+2m+S) [e | r | 0 | 0]",
    "blocks.1.attn.hook_pattern": "(B, 1, T, T) layer-2 weights: 1 for s <= t, else 0",
    "blocks.1.hook_G": "(B, T, m) G_t = Σ_{s<=t} r_s",
    "blocks.1.hook_resid_post": "(B, T, S+2m+S) [e | r | G | 0]",
    "blocks.2.attn.hook_step": "(B, T, m) the mirror step's update G_t w_q (η ∇ℓ_t(μ) when constructed)",
    "blocks.2.attn.hook_q": "(B, T, m) layer-3 query q_t = q_bias + G_t w_q (log μ + η ∇ℓ_t(μ) when constructed)",
    "blocks.2.attn.hook_lag_logits": "(B, T, m) layer-3 logits q_t · lag_key[j] of key t-j (lag j+1)",
    "blocks.2.attn.hook_scores": "(B, 1, T, T) layer-3 logits scattered to keys, masked to -inf",
    "blocks.2.attn.hook_pattern": "(B, 1, T, T) layer-3 weights A3 (one-step MD lam¹ when constructed)",
    "blocks.2.attn.hook_v": "(B, T, S) layer-3 values W_V e(y[s])",
    "blocks.2.hook_p": "(B, T, S) p_t = Σ_s A3[t, s] W_V e(y[s]); forward returns its log at rows t >= m-1",
    "blocks.2.hook_resid_post": "(B, T, S+2m+S) [e | r | G | p]",
}


def _sink_cache_names() -> dict[str, str]:
    """MD_CACHE_NAMES with layer 2 as softmax attention with a sink (docs/math.md §5.6)."""
    out: dict[str, str] = {}
    for k, v in MD_CACHE_NAMES.items():
        if k == "blocks.1.attn.hook_pattern":
            out["blocks.1.attn.hook_scores"] = ("(B, 1, T, 1+T) layer-2 logits; key 0 is the sink (score sink_logit = "
                                                "log a, -inf when the sink is off), key 1+s is position s (score 0 "
                                                "for s <= t, -inf after t)")
            out[k] = "(B, 1, T, T) layer-2 weights on the positions: 1/(t+1+a) for s <= t, else 0"
            out["blocks.1.attn.hook_sink"] = "(B, 1, T) layer-2 weight of the sink key, a/(t+1+a) (its value is 0)"
        elif k == "blocks.1.hook_G":
            out[k] = "(B, T, m) layer-2 output Ḡ_t = Σ_{s<=t} r_s/(t+1+a) = G_t/(t+1+a)"
        elif k == "blocks.2.attn.hook_q":
            out[k] = "(B, T, m) layer-3 query q_t = q_bias + Ḡ_t w_q (log μ + c Ḡ_t/μ when constructed)"
        else:
            out[k] = v.replace("[e | r | G", "[e | r | Ḡ")
    return out


#: The named activations of an ``MDTransformer(..., aggregation="softmax_sink")`` (as
#: :data:`MD_CACHE_NAMES`, with layer 2's scores over the sink and the positions, its pattern over
#: the positions and the sink weight, and ``blocks.1.hook_G`` the normalised Ḡ_t).
MD_SINK_CACHE_NAMES: dict[str, str] = _sink_cache_names()


def md_cache_names(aggregation: str = "sum") -> dict[str, str]:
    """The named activations of an :class:`MDTransformer` with this layer 2 (name -> shape and meaning).

    Examples
    --------
    >>> from mtdmath import nn
    >>> names = nn.md_cache_names()
    >>> list(names)[:3]
    ['hook_embed', 'blocks.0.attn.hook_scores', 'blocks.0.attn.hook_pattern']
    """
    return dict(MD_SINK_CACHE_NAMES if _check_aggregation(aggregation) == "softmax_sink" else MD_CACHE_NAMES)


def standard_cache_names(n_layers: int) -> dict[str, str]:
    """Named activations (hook points) of a :class:`StandardTransformer`, as ``run_with_cache`` returns them.

    D = d_model, H = n_heads, d = D/H. Scores are scaled by 1/sqrt(d) and masked to -inf on
    future keys; patterns are taken before attention dropout.

    Examples
    --------
    >>> from mtdmath import nn
    >>> names = nn.standard_cache_names(1)
    >>> len(names)
    17
    >>> 'hook_logits' in names
    True
    """
    names = {"hook_embed": "(B, T, D) token embeddings", "hook_pos_embed": "(T, D) position embeddings"}
    for l in range(n_layers):
        names |= {
            f"blocks.{l}.hook_resid_pre": "(B, T, D) residual stream entering the block",
            f"blocks.{l}.ln1.hook_normalized": "(B, T, D) LayerNorm of the residual, input of attention",
            f"blocks.{l}.attn.hook_q": "(B, H, T, d) queries",
            f"blocks.{l}.attn.hook_k": "(B, H, T, d) keys",
            f"blocks.{l}.attn.hook_v": "(B, H, T, d) values",
            f"blocks.{l}.attn.hook_scores": "(B, H, T, T) q·k/sqrt(d), -inf on future keys",
            f"blocks.{l}.attn.hook_pattern": "(B, H, T, T) per-head softmax weights",
            f"blocks.{l}.attn.hook_z": "(B, H, T, d) per-head outputs pattern @ v",
            f"blocks.{l}.hook_attn_out": "(B, T, D) attention output after the projection",
            f"blocks.{l}.hook_resid_mid": "(B, T, D) resid_pre + attn_out",
            f"blocks.{l}.ln2.hook_normalized": "(B, T, D) LayerNorm of resid_mid, input of the MLP",
            f"blocks.{l}.hook_mlp_out": "(B, T, D) MLP output",
            f"blocks.{l}.hook_resid_post": "(B, T, D) resid_mid + mlp_out",
        }
    names |= {"ln_final.hook_normalized": "(B, T, D) final LayerNorm", "hook_logits": "(B, T, S) logits at every position"}
    return names


# ----------------------------------------------------------------------------- the adaptive step
def adaptive_params(alpha: Any, *, c: float | None = None, a: float | None = None) -> tuple[float, float]:
    """The (c, a) of the context-adaptive step ``η(n) = c/(n+m+a)`` (docs/math.md §5.6), validated.

    Parameters
    ----------
    alpha : array_like, shape (m,)
        The prior; α₀ = Σ alpha, η* = 1/(1+α₀).
    c : float, optional
        ``> 0``, finite. Default: ``(m+a)/(1+α₀)`` (η(0) = η*), or ``m/(1+α₀)`` when ``a`` is not given either.
    a : float, optional
        ``>= 0``, finite. Default: ``c(1+α₀) - m`` (η(0) = η*); a ValueError naming ``c`` if that is < 0.

    Returns
    -------
    (c, a) : floats. In the form ``1/η = A + B·n``: ``A = (m+a)/c``, ``B = 1/c``.

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath import nn
    >>> c, a = nn.adaptive_params(np.array([2.0, 1.0]), c=1.0)
    >>> print(c, round(a, 6))  # a = c (1 + alpha_0) - m, so that eta(0) = c/(m+a) = eta* = 1/4
    1.0 2.0
    """
    alpha = validate.check_alpha(alpha, "alpha")
    m, alpha0 = alpha.shape[0], float(alpha.sum())
    if c is not None:
        c = validate.check_float(c, "c", positive=True)
    if a is not None:
        a = validate.check_float(a, "a", nonnegative=True)
    if c is None:
        if a is None:  # the default c = m/(1+α₀) is the one with a = 0; a computed back from c may round below 0
            a = 0.0
        c = (m + a) / (1.0 + alpha0)
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"a = {a!r} gives c = (m+a)/(1+α₀) = {c!r}, not a positive finite number")
    if a is None:
        a = c * (1.0 + alpha0) - m
        if not math.isfinite(a):
            raise ValueError(f"c = {c!r} gives a = c(1+α₀) - m = {a!r}, not finite")
        if 0 > a >= -4 * sys.float_info.epsilon * max(m, c * (1.0 + alpha0)):
            a = 0.0  # c = m/(1+α₀) to rounding: the product and the difference round by an eps each
        if a < 0:
            raise ValueError(f"c = {c!r} gives the sink a = c(1+α₀) - m = {a!r} < 0 (η(0) = η* needs c >= "
                             f"m/(1+α₀) = {m / (1.0 + alpha0)!r}); pass a >= 0 explicitly")
    return float(c), float(a)


# ----------------------------------------------------------------------------- MDTransformer
def _safe_log(p: torch.Tensor) -> torch.Tensor:
    """``log p`` with -inf (and a zero, not NaN, gradient) where p is exactly 0.

    A constructed model's predictive is 0 where pi is 0; ``torch.log`` would back-propagate
    ``0 · inf = NaN`` through those entries.
    """
    pos = p > 0
    return torch.where(pos, torch.log(torch.where(pos, p, torch.ones_like(p))), -math.inf)


def _allowed(scores: torch.Tensor) -> torch.Tensor:
    """The keys a masked score tensor allows: those not at -inf."""
    return ~torch.isneginf(scores)


class _Holder(nn.Module):
    """A plain container (``blocks.{l}.attn``) for a layer's attention weights and hook points."""


class Responsibility(nn.Module):
    """Layer 1 (``blocks.0``): responsibility attention, ``r_t = Σ_g A1[t, t-g] lag_value[g-1]``.

    Weights (under ``attn``): ``token_score`` (S, S), the raw score of key token y[s] for query
    token y[t] (the effective, masked matrix is :attr:`MDTransformer.W1`); ``lag_bias`` (m,), the
    bias ``b1[g-1]`` of lag g; ``lag_value`` (m, m), the value of lag g in row g-1.
    """

    def __init__(self, S: int, m: int, kw: dict[str, Any]) -> None:
        super().__init__()
        self.m = m
        self.attn = _Holder()
        self.attn.token_score = nn.Parameter(torch.randn(S, S, **kw))
        self.attn.lag_bias = nn.Parameter(0.1 * torch.randn(m, **kw))
        self.attn.lag_value = nn.Parameter(torch.eye(m, dtype=kw["dtype"], device=kw["device"])
                                           + 0.1 * torch.randn(m, m, **kw))
        self.attn.hook_scores = HookPoint()
        self.attn.hook_pattern = HookPoint()
        self.hook_r = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: torch.Tensor, y: torch.Tensor, pi_zero: torch.Tensor) -> torch.Tensor:
        B, T = y.shape
        m, S = self.m, pi_zero.shape[0]
        a = self.attn
        x = resid[..., :S]  # e(y[t])
        pos = torch.arange(T, device=y.device)
        lag = pos[:, None] - pos[None, :]  # (T, T): lag[t, s] = t - s
        # score[t, s] = e(y[s])ᵀ W1 e(y[t]) + b1[t-s-1] on the window 1 <= t-s <= m
        scores = (x @ a.token_score.T) @ x.transpose(1, 2)  # (B, T, T): [b, t, s] = W1[y[s], y[t]]
        scores = scores + a.lag_bias[(lag - 1).clamp(0, m - 1)]
        window = (lag >= 1) & (lag <= m) & (pos >= m)[:, None]  # rows t < m: no transition ends there
        allowed = window.expand(B, T, T)
        # compiled, the mask is always applied (a no-op where pi has no zero) and the data are not
        # checked: both tests read a value back to the host, which would split the graph
        compiling = torch.compiler.is_compiling()
        if compiling or bool(pi_zero.any()):
            # pi[y[s], y[t]] = 0 -> score -inf, by masking (never 0 · -inf)
            allowed = allowed & ~pi_zero[y[:, None, :], y[:, :, None]]
            impossible = window.any(-1) & ~allowed.any(-1)  # (B, T): no lag explains y[t]
            if not compiling and bool(impossible.any()):
                b, t = impossible.nonzero()[0].tolist()
                raise ValueError(f"tokens contain a transition with probability 0 under every lag of pi "
                                 f"(batch {b}, position {t}): the data are impossible under pi")
        scores = a.hook_scores(scores.masked_fill(~allowed, -math.inf).unsqueeze(1))  # (B, 1, T, T)
        pattern = a.hook_pattern(_masked_softmax(scores, _allowed(scores)))  # (B, 1, T, T)
        # the band pattern[b, t, t-g], g = 1..m (rows t < m are zero)
        band_idx = (pos[:, None] - torch.arange(1, m + 1, device=y.device)[None, :]).clamp(min=0)  # (T, m)
        band = pattern[:, 0].gather(2, band_idx.expand(B, T, m))  # rows t < m of the pattern are 0
        r = self.hook_r(band @ a.lag_value)  # (B, T, m): r_t = γ_{t-m} when constructed
        return self.hook_resid_post(torch.cat([x, r, resid[..., S + m:]], dim=-1))


class Aggregate(nn.Module):
    """Layer 2 (``blocks.1``): ``G_t = Σ_{s<=t} r_s`` (``"sum"``) or softmax attention with a sink,
    ``Ḡ_t = G_t/(t+1+a)`` (``"softmax_sink"``: weight ``attn.sink_logit = log a``, buffer
    ``attn.sink_off`` when a = 0)."""

    def __init__(self, S: int, m: int, aggregation: str, kw: dict[str, Any]) -> None:
        super().__init__()
        self.S, self.m, self.aggregation = S, m, aggregation
        self.attn = _Holder()
        if aggregation == "softmax_sink":
            self.attn.hook_scores = HookPoint()
        self.attn.hook_pattern = HookPoint()
        if aggregation == "softmax_sink":
            self.attn.hook_sink = HookPoint()
        self.hook_G = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        S, m = self.S, self.m
        B, T = resid.shape[:2]
        r = resid[..., S:S + m]
        pos = torch.arange(T, device=resid.device)
        causal = pos[:, None] >= pos[None, :]  # (T, T): s <= t
        a = self.attn
        if self.aggregation == "sum":
            pattern = a.hook_pattern(causal.to(r.dtype).expand(B, 1, T, T))
        else:
            # softmax over [sink, positions] with scores [log a, 0 (s <= t), -inf (s > t)]: weights
            # 1/(t+1+a) on s <= t and a/(t+1+a) on the sink, whose value is 0 (docs/math.md §5.6)
            sink_col = a.sink_logit.to(r.dtype).expand(T, 1).masked_fill(a.sink_off, -math.inf)
            scores = torch.cat([sink_col, torch.zeros(T, T, dtype=r.dtype, device=r.device)
                                .masked_fill(~causal, -math.inf)], dim=1)  # (T, 1+T)
            scores = a.hook_scores(scores.expand(B, 1, T, T + 1))
            w = _masked_softmax(scores, _allowed(scores))  # every row allows its own position
            pattern = a.hook_pattern(w[..., 1:])
            a.hook_sink(w[..., 0])  # its value is 0: it only removes weight from the positions
        G = self.hook_G(pattern[:, 0] @ r)  # (B, T, m)
        return self.hook_resid_post(torch.cat([resid[..., :S + m], G, resid[..., S + 2 * m:]], dim=-1))


class MirrorStep(nn.Module):
    """Layer 3 (``blocks.2``): the mirror step, softmax attention of query t over s = t-m+1 … t.

    Weights (under ``attn``): ``q_bias`` (m,) and ``w_q`` (m, m), the query
    ``q_t = q_bias + G_t w_q`` (``log μ`` and ``diag(η/μ)`` when constructed; ``G_t w_q`` passes
    through ``attn.hook_step``); ``lag_key`` (m, m), the key of lag g in row g-1;
    ``value_logits`` (S, S), ``W_V = softmax(value_logits, -1)ᵀ``.
    """

    def __init__(self, S: int, m: int, kw: dict[str, Any]) -> None:
        super().__init__()
        self.S, self.m = S, m
        self.attn = _Holder()
        self.attn.q_bias = nn.Parameter(0.1 * torch.randn(m, **kw))
        self.attn.w_q = nn.Parameter((1.0 / math.sqrt(m)) * torch.randn(m, m, **kw))
        self.attn.lag_key = nn.Parameter(torch.eye(m, dtype=kw["dtype"], device=kw["device"])
                                         + 0.1 * torch.randn(m, m, **kw))
        self.attn.value_logits = nn.Parameter(torch.randn(S, S, **kw))
        for name in ("hook_step", "hook_q", "hook_lag_logits", "hook_scores", "hook_pattern", "hook_v"):
            setattr(self.attn, name, HookPoint())
        self.hook_p = HookPoint()
        self.hook_resid_post = HookPoint()

    def value_rows(self, pi_zero: torch.Tensor) -> torch.Tensor:
        """Row a = the law emitted for source token a, ``W_V e(a)``; (S, S), rows on the simplex."""
        return torch.softmax(self.attn.value_logits.masked_fill(pi_zero, -math.inf), dim=-1)

    def explicit(self) -> bool:
        """Whether this call must form the (B, T, T) scores, pattern and p_t (one of them is hooked)."""
        a = self.attn
        return any(h.has_hooks() for h in (a.hook_scores, a.hook_pattern, a.hook_v, self.hook_p, self.hook_resid_post))

    def forward(self, resid: torch.Tensor, y: torch.Tensor, pi_zero: torch.Tensor) -> torch.Tensor:
        """The logits ``log p_t`` at rows t = m-1 … T-1, (B, T-m+1, S)."""
        S, m = self.S, self.m
        B, T = y.shape
        a = self.attn
        x, G = resid[..., :S], resid[..., S + m:S + 2 * m]
        q = a.hook_q(a.q_bias + a.hook_step(G @ a.w_q))  # (B, T, m): log μ + η G_t/μ when constructed
        band = a.hook_lag_logits(q @ a.lag_key.T)  # (B, T, m): [b, t, j] = score of key t-j (lag j+1)
        if not self.explicit():
            # in log space on the band: log p_t = logsumexp_j(log A3[t, t-j] + log W_V[:, y[t-j]]), finite
            # for a learned model even where p_t underflows
            log_att = torch.log_softmax(band[:, m - 1:], dim=-1)  # (B, T-m+1, m)
            src = y.unfold(1, m, 1).flip(-1)  # (B, T-m+1, m): key t-j of row t = m-1+r is y[r+m-1-j]
            log_rows = torch.log_softmax(a.value_logits.masked_fill(pi_zero, -math.inf), dim=-1)
            return _logsumexp(log_att.unsqueeze(-1) + log_rows[src], dim=2)
        pos = torch.arange(T, device=y.device)
        lag = pos[:, None] - pos[None, :]
        allowed = (lag >= 0) & (lag <= m - 1) & (pos >= m - 1)[:, None]  # (T, T)
        scores = band.gather(2, lag.clamp(0, m - 1).expand(B, T, T)).masked_fill(~allowed, -math.inf)
        scores = a.hook_scores(scores.unsqueeze(1))  # (B, 1, T, T)
        pattern = a.hook_pattern(_masked_softmax(scores, _allowed(scores)))  # lam¹ of y[:t+1] when constructed
        values = a.hook_v(x @ self.value_rows(pi_zero))  # (B, T, S): W_V e(y[s])
        p = self.hook_p(pattern[:, 0] @ values)  # (B, T, S)
        resid = self.hook_resid_post(torch.cat([resid[..., :S + 2 * m], p], dim=-1))
        return _safe_log(resid[:, m - 1:, S + 2 * m:])


class MDTransformer(HookedModule):
    """The disentangled three-layer transformer of docs/math.md §5 (see the module docstring).

    Parameters
    ----------
    S, m : int
        Vocabulary size and MTD order.
    dtype, device :
        Of the parameters (and of every output).
    generator : torch.Generator, optional
        Source of the random initial weights (drawn on its device, then moved).
    aggregation : {"sum", "softmax_sink"}
        Layer 2 (:data:`AGGREGATIONS`): ``"sum"`` (default) is the unnormalised causal sum
        ``G_t = Σ_{s<=t} r_s``; ``"softmax_sink"`` is softmax attention with equal scores over
        s <= t plus a sink key of learnable score ``sink_logit = log a`` and value 0, which
        outputs ``Ḡ_t = G_t/(t+1+a)``: layer 3 then takes one MD step of size ``c/(n+m+a)``
        (``w_q = diag(c/μ)``, n = t+1-m transitions; docs/math.md §5.6).

    Attributes
    ----------
    S, m : int
    aggregation : str
    blocks : ModuleList
        ``blocks[0]`` is :class:`Responsibility` (also :attr:`responsibility`), ``blocks[1]``
        :class:`Aggregate` (:attr:`aggregate`), ``blocks[2]`` :class:`MirrorStep`
        (:attr:`mirror_step`); their weights live under ``blocks.{l}.attn``.
    pi_zero : buffer (S, S) bool
        Where pi is 0: masks ``token_score`` and ``value_logits`` to -inf. All False unless constructed.
    hook_dict : dict
        The hook points by name (:data:`MD_CACHE_NAMES`, :data:`MD_SINK_CACHE_NAMES`).

    ``forward(tokens)`` returns the logits ``log p`` (B, T-m+1, S) of the predictive law after
    every prefix of length m … T (-inf where the law is exactly 0, as where pi is 0);
    ``run_with_cache`` and ``run_with_hooks`` read and replace the named activations. Layer 3
    runs in log space on its band of m keys (finite where p underflows) unless one of its
    (B, T, T) scores or pattern, its values, ``p_t`` or its residual output is hooked; then it
    forms them and the logits are ``log p_t`` (the two routes agree to rounding).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> model = nn.MDTransformer.construct(pi, alpha)  # one MD step at eta*, float64
    >>> p = torch.softmax(model(tokens), -1).detach().numpy()
    >>> p.shape
    (8, 11, 3)
    >>> print(np.allclose(p, mtdmath.md_predictive_all_prefixes(tokens, pi, alpha), atol=1e-10))
    True
    >>> model(tokens[0]).shape  # one sequence (T,) gives (T-m+1, S), as the core does
    torch.Size([11, 3])
    """

    def __init__(self, S: int, m: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, generator: torch.Generator | None = None,
                 aggregation: str = "sum") -> None:
        super().__init__()
        self.config = MDConfig(S, m, _check_aggregation(aggregation))
        self.aggregation = aggregation
        self.S, self.m = int(S), int(m)
        dtype = validate.check_torch_dtype(dtype)
        device = validate.check_torch_device(device)
        # every weight: (S, S) scores, values and mask; (m, m) lag values, keys and w_q
        terms = {"S": 3 * self.S * self.S, "m": 3 * self.m * self.m + 3 * self.m}
        validate.check_alloc(sum(terms.values()), 8, max(terms, key=terms.get),
                      f"the weights of S = {self.S}, m = {self.m}")
        kw = dict(dtype=dtype, device=_init_device(generator), generator=generator)
        self.hook_embed = HookPoint()
        # drawn in this order so that a seed gives the weights of the earlier flat layout
        # (token_score, lag_bias, lag_value, then layer 3, then the sink)
        blocks = [Responsibility(S, m, kw), Aggregate(S, m, aggregation, kw), MirrorStep(S, m, kw)]
        self.blocks = nn.ModuleList(blocks)
        self.register_buffer("pi_zero", torch.zeros(S, S, dtype=torch.bool, device=kw["device"]))
        if aggregation == "softmax_sink":
            agg = self.blocks[1].attn
            agg.sink_logit = nn.Parameter(0.1 * torch.randn(1, **kw)[0])
            agg.register_buffer("sink_off", torch.zeros((), dtype=torch.bool, device=kw["device"]))
        self.to(device=device)
        self.setup_hooks()

    # -------------------------------------------------------------- role names
    @property
    def responsibility(self) -> Responsibility:
        """Layer 1, ``blocks[0]``."""
        return self.blocks[0]

    @property
    def aggregate(self) -> Aggregate:
        """Layer 2, ``blocks[1]``."""
        return self.blocks[1]

    @property
    def mirror_step(self) -> MirrorStep:
        """Layer 3, ``blocks[2]``."""
        return self.blocks[2]

    # -------------------------------------------------------------- construction
    @classmethod
    def construct(cls, pi: Any, alpha: Any, *, eta: Any = None, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None, aggregation: str | None = None, c: float | None = None,
                  a: float | None = None) -> "MDTransformer":
        """The exact one-step-MD transformer of docs/math.md §5 (and its context-adaptive form, §5.6).

        Parameters
        ----------
        pi : array_like or tensor, shape (S, S)
            Row-stochastic; zero entries are allowed (masked to -inf scores).
        alpha : array_like or tensor, shape (m,)
            Dirichlet prior of lam; μ = alpha/α₀.
        eta : float, "predicted" or PredictedStep, optional
            Step size ``>= 0`` of the ``"sum"`` model; default ``η* = eta_bayes(alpha) = 1/(1+α₀)``.
            ``"predicted"`` (``predicted_step(pi, alpha, rng=0)``) or a
            :class:`~mtdmath.stepsize.PredictedStep`: the zero-parameter step law
            ``η(n) = 1/((1+α₀) + n/c∞)`` (docs/math.md eq-step-law), built as the ``"softmax_sink"``
            model with ``c = c∞`` and ``a = c∞(1+α₀) − m`` (a ValueError naming eta where that
            ``a < 0``); in the ``"flat"`` and ``"unbounded"`` regimes the law is the constant η*, built
            as the ``"sum"`` model at η*. ``c`` and ``a`` are then not given.
        dtype, device :
            Of the model.
        aggregation : {"sum", "softmax_sink"}, optional
            ``"softmax_sink"``: layer 2 normalises by ``t+1+a`` and layer 3 takes one MD step of
            size ``η(n) = c/(n+m+a)`` after a prefix of n transitions (docs/math.md §5.6). Default
            ``"sum"``, or the aggregation the step law needs when ``eta`` is one (giving another is a
            ValueError naming aggregation).
        c : float, optional
            ``> 0``, finite: the layer-3 scale of ``"softmax_sink"`` (``w_q = diag(c/μ)``). Default
            ``(m+a)/(1+α₀)`` if ``a`` is given, else ``m/(1+α₀)``: η(0) = η*.
        a : float, optional
            ``>= 0``, finite: the sink weight of ``"softmax_sink"`` (``sink_logit = log a``; a = 0
            masks the sink out). Default ``c(1+α₀) - m``, the value with η(0) = η*, which must be
            ``>= 0`` (i.e. ``c >= m/(1+α₀)``; otherwise pass ``a``).

        Returns
        -------
        MDTransformer
            With ``W1 = log pi``, ``lag_bias = q_bias = log μ``, ``lag_value = lag_key = I``,
            ``w_q = diag(η/μ)`` (``diag(c/μ)`` for ``"softmax_sink"``), ``W_V = piᵀ``; the softmax
            of its logits is the one-step MD predictive after every prefix.
        """
        pi64 = validate.check_pi(pi, "pi", torch_space("cpu")).detach()  # (S, S) float64
        alpha = validate.check_alpha(alpha, "alpha")
        dtype = validate.check_torch_dtype(dtype)
        device = validate.check_torch_device(device)
        law = step_law(eta, pi64.numpy(), alpha)
        if law is not None:
            for name, v in (("c", c), ("a", a)):
                if v is not None:
                    raise ValueError(f"eta={eta!r} is a step law that sets c and a (got {name}={v!r})")
            need = "softmax_sink" if law.regime == "interior" else "sum"
            if aggregation is not None and aggregation != need:
                raise ValueError(f"aggregation={aggregation!r}: the step law of eta (regime {law.regime!r}) is "
                                 f"built with aggregation={need!r}")
            aggregation, eta = need, None
            if need == "softmax_sink":
                c = law.c_inf
                a = c * (1.0 + float(alpha.sum())) - alpha.shape[0]
                if a < 0:
                    raise ValueError(f"eta: the step law has c_inf = {c!r} < m/(1+α₀), so its sink weight "
                                     f"a = c_inf(1+α₀) - m = {a!r} is negative and no softmax sink realises it")
            else:
                eta = law.eta_star
        aggregation = "sum" if aggregation is None else aggregation
        _check_aggregation(aggregation)
        S, m = pi64.shape[0], alpha.shape[0]
        if aggregation == "sum":
            for name, v in (("c", c), ("a", a)):
                if v is not None:
                    raise ValueError(f"{name} sets the context-adaptive step of aggregation='softmax_sink' "
                                     f"(got {name}={v!r} with aggregation='sum'; use eta)")
            eta = _check_eta(eta, alpha)
            scale = eta
        else:
            if eta is not None:
                raise ValueError(f"eta is the constant step of aggregation='sum' (got eta={eta!r}); with "
                                 f"aggregation='softmax_sink' the step is c/(n+m+a): give c and/or a")
            c, a = adaptive_params(alpha, c=c, a=a)
            scale = c
        mu = torch.as_tensor(alpha / alpha.sum(), dtype=torch.float64)  # prior mean μ, (m,)
        zero = pi64 == 0
        # log pi with the zeros replaced by a finite 0: the -inf is applied by the pi_zero mask
        log_pi = torch.log(pi64.masked_fill(zero, 1.0))
        model = cls(S, m, dtype=dtype, device=device, aggregation=aggregation)
        l1, l3 = model.blocks[0].attn, model.blocks[2].attn
        with torch.no_grad():
            for p, value in ((l1.token_score, log_pi), (l1.lag_bias, mu.log()), (l1.lag_value, torch.eye(m)),
                             (l3.q_bias, mu.log()), (l3.w_q, torch.diag(scale / mu)),
                             (l3.lag_key, torch.eye(m)), (l3.value_logits, log_pi)):
                p.copy_(value)
            model.pi_zero.copy_(zero)
            if aggregation == "softmax_sink":
                agg = model.blocks[1].attn
                # a = 0: a finite logit that the sink_off mask removes (log 0 would be -inf, NaN gradients)
                agg.sink_logit.fill_(math.log(a) if a > 0 else 0.0)
                agg.sink_off.fill_(a == 0)
        return model

    @property
    def sink_logit(self) -> nn.Parameter:
        """Layer 2's sink score ``log a`` (``blocks.1.attn.sink_logit``) of a ``"softmax_sink"`` model."""
        if self.aggregation != "softmax_sink":
            raise AttributeError(f"sink_logit: this model has aggregation={self.aggregation!r}, no sink")
        return self.blocks[1].attn.sink_logit

    @property
    def sink_weight(self) -> float:
        """The sink weight ``a`` of a ``"softmax_sink"`` model (``exp(sink_logit)``; 0 when the sink is off)."""
        if self.aggregation != "softmax_sink":
            raise ValueError(f"sink_weight: this model has aggregation={self.aggregation!r}, no sink")
        agg = self.blocks[1].attn
        return 0.0 if bool(agg.sink_off) else float(torch.exp(agg.sink_logit.detach()))

    # -------------------------------------------------------------- effective weights
    @property
    def W1(self) -> torch.Tensor:
        """The (S, S) bilinear score of layer 1, ``score(s -> t) = W1[y[s], y[t]] + lag_bias[t-s-1]``.

        ``token_score`` masked to -inf where pi is 0 (``log pi`` for a constructed model).
        Identified only up to an additive constant per query token (column): compare
        ``softmax(W1, dim=0)`` with pi normalised over its columns (docs/math.md §5).
        """
        return self.blocks[0].attn.token_score.masked_fill(self.pi_zero, -math.inf)

    @property
    def W_V(self) -> torch.Tensor:
        """The (S, S) value matrix of layer 3, ``W_V = softmax(value_logits, -1)ᵀ`` (``piᵀ`` when constructed)."""
        return self.blocks[2].value_rows(self.pi_zero).T

    # -------------------------------------------------------------- forward
    def forward(self, tokens: Any) -> torch.Tensor:
        """Logits of the predictive law of the token after every prefix of length m … T.

        Parameters
        ----------
        tokens : int tensor or ndarray, shape (B, T) or (T,), T >= m

        Returns
        -------
        logits : tensor, shape (B, T-m+1, S), or (T-m+1, S) for one sequence (T,)
            ``log p``: row r is the log-law of ``y[m+r]`` given ``y[:m+r]`` (position t = m-1+r);
            ``softmax(logits, -1)`` is the law itself (the logits are already normalised).
            -inf where the law is exactly 0.
        """
        y, single = _tokens_2d(tokens, self.S, self.m, self.pi_zero.device)
        B, T = y.shape
        S, m = self.S, self.m
        # the (B, T, T) scores, patterns and masks of the three layers
        validate.check_alloc(8 * B * T * T, self.blocks[2].attn.w_q.element_size(), "tokens",
                      f"the (B, T, T) attention matrices of B = {B}, T = {T} (md_predictive_all_prefixes is O(B·T))")
        dtype = self.blocks[2].attn.w_q.dtype
        x = self.hook_embed(F.one_hot(y, S).to(dtype))  # (B, T, S) token one-hots e(y[t])
        # the disentangled residual stream [e | r | G | p]; each layer reads and writes its own block
        resid = torch.cat([x, x.new_zeros(B, T, 2 * m + S)], dim=-1)
        resid = self.blocks[0](resid, y, self.pi_zero)
        resid = self.blocks[1](resid)
        logits = self.blocks[2](resid, y, self.pi_zero)
        return logits[0] if single else logits

    def log_probs(self, tokens: Any) -> torch.Tensor:
        """``log_softmax`` of :meth:`forward`, (B, T-m+1, S) ((T-m+1, S) for one sequence)."""
        return torch.log_softmax(self(tokens), dim=-1)


# ----------------------------------------------------------------------------- StandardTransformer
class _LayerNorm(nn.LayerNorm):
    """LayerNorm whose output passes through ``hook_normalized``."""

    def __init__(self, d: int) -> None:
        super().__init__(d)
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(super().forward(x))


class _CausalSelfAttention(nn.Module):
    """Multi-head causal softmax attention: fused (``F.scaled_dot_product_attention``) unless its
    scores or pattern are hooked, then explicit with a (B, H, T, T) weight matrix."""

    def __init__(self, cfg: StandardConfig) -> None:
        super().__init__()
        self.n_heads, self.d_model = cfg.n_heads, cfg.d_model
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.resid_drop = nn.Dropout(cfg.dropout)
        for name in ("hook_q", "hook_k", "hook_v", "hook_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())

    def explicit(self) -> bool:
        """Whether this call must form the attention matrices (their hook points are hooked)."""
        return self.hook_scores.has_hooks() or self.hook_pattern.has_hooks()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 × (B, T, D)
        # (B, T, D) -> (B, T, H, D/H) -> (B, H, T, D/H)
        q, k, v = (z.view(B, T, H, D // H).transpose(1, 2) for z in (q, k, v))
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.explicit():
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(D // H)  # (B, H, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T): s <= t
            scores = self.hook_scores(scores.masked_fill(~causal, -math.inf))
            att = self.hook_pattern(torch.softmax(scores, dim=-1))  # (B, H, T, T)
            z = self.attn_drop(att) @ v  # (B, H, T, D/H)
        else:
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0,
                                               is_causal=True)
        z = self.hook_z(z)
        y = z.transpose(1, 2).contiguous().view(B, T, D)  # (B, H, T, D/H) -> (B, T, D)
        return self.resid_drop(self.proj(y))


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: StandardConfig) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln1 = _LayerNorm(cfg.d_model)
        self.attn = _CausalSelfAttention(cfg)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln2 = _LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout),
        )
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        mid = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x))))
        return self.hook_resid_post(mid + self.hook_mlp_out(self.mlp(self.ln2(mid))))


class StandardTransformer(HookedModule):
    """GPT-style baseline: token + learned absolute position embeddings, pre-LN blocks, linear head.

    Parameters
    ----------
    S, m : int
        Vocabulary size and MTD order (outputs start at the prefix of length m, as for
        :class:`MDTransformer`).
    n_layers, d_model, n_heads, max_len, dropout :
        Depth, width, heads per layer, longest context ``T``, dropout rate.
    generator : torch.Generator, optional
        Source of the initial weights (GPT-2 scheme: N(0, 0.02), residual projections
        N(0, 0.02/sqrt(2·n_layers)), zero biases), drawn on its device then moved.
    dtype, device :
        Of the parameters and outputs.

    The modules follow nanoGPT (``tok_emb``, ``pos_emb``, ``blocks.{l}.ln1 / attn.qkv / attn.proj
    / ln2 / mlp``, ``ln_final``, ``head``) and the hook points TransformerLens
    (:func:`standard_cache_names`). Attention runs fused (``F.scaled_dot_product_attention``)
    unless a hook reads or replaces ``attn.hook_scores`` or ``attn.hook_pattern``.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> model = nn.StandardTransformer(3, 2, n_layers=1, d_model=8, n_heads=1, max_len=16, generator=torch.Generator().manual_seed(0))
    >>> model(torch.as_tensor(tokens)).shape
    torch.Size([8, 11, 3])
    >>> sorted(model.run_with_cache(tokens)[1])[:3]
    ['blocks.0.attn.hook_k', 'blocks.0.attn.hook_pattern', 'blocks.0.attn.hook_q']
    """

    def __init__(self, S: int, m: int, *, n_layers: int = 3, d_model: int = 64, n_heads: int = 4,
                 max_len: int = 256, dropout: float = 0.0, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        cfg = StandardConfig(S, m, n_layers, d_model, n_heads, max_len, dropout)
        self.config = cfg
        dtype = validate.check_torch_dtype(dtype)
        device = validate.check_torch_device(device)
        # embeddings and the 12 d² weights of each block; the error names the largest term
        terms = {"S": 2 * S * d_model, "max_len": max_len * d_model, "d_model": 12 * n_layers * d_model * d_model}
        validate.check_alloc(sum(terms.values()), 8, max(terms, key=terms.get),
                      f"the weights of S = {S}, max_len = {max_len}, d_model = {d_model}, n_layers = {n_layers}")
        self.S, self.m = int(S), int(m)
        self.tok_emb = nn.Embedding(S, d_model)
        self.hook_embed = HookPoint()
        self.pos_emb = nn.Embedding(max_len, d_model)
        self.hook_pos_embed = HookPoint()
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(n_layers))
        self.ln_final = _LayerNorm(d_model)
        self.head = nn.Linear(d_model, S)
        self.hook_logits = HookPoint()
        self.to(dtype=dtype, device=_init_device(generator))
        self._init_weights(generator)
        self.to(device=device)
        self.setup_hooks()

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator | None) -> None:
        std_proj = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln" in name or name.startswith("ln_"):
                p.fill_(1.0)  # LayerNorm gains
            else:
                std = std_proj if name.endswith(("attn.proj.weight", "mlp.2.weight")) else 0.02
                p.normal_(0.0, std, generator=generator)

    def forward(self, tokens: Any) -> torch.Tensor:
        """Logits (B, T-m+1, S) at positions m-1 … T-1 (``softmax`` gives the predictive law);
        one sequence (T,) gives (T-m+1, S), as the core functions do.

        ``run_with_cache`` returns the named activations of :func:`standard_cache_names`.
        """
        y, single = _tokens_2d(tokens, self.S, self.m, self.head.weight.device)
        T = y.shape[1]
        if T > self.config.max_len:
            raise ValueError(f"tokens must have length T <= max_len = {self.config.max_len} (got T = {T})")
        pos = torch.arange(T, device=y.device)
        x = self.drop(self.hook_embed(self.tok_emb(y)) + self.hook_pos_embed(self.pos_emb(pos)))  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        logits = self.hook_logits(self.head(self.ln_final(x)))  # (B, T, S)
        return logits[0, self.m - 1:] if single else logits[:, self.m - 1:]

    def log_probs(self, tokens: Any) -> torch.Tensor:
        """Log-probabilities (B, T-m+1, S), or (T-m+1, S) for one sequence: ``log_softmax`` of :meth:`forward`."""
        return torch.log_softmax(self(tokens), dim=-1)

    # -------------------------------------------------------------- TransformerLens
    def to_transformer_lens(self) -> Any:
        """The same network as a TransformerLens ``TransformerBridge`` (needs the ``lens`` extra).

        TransformerLens 4 replaced ``HookedTransformer`` by ``TransformerBridge``; this one wraps
        its TL-native architecture, configured to compute this model's function (LayerNorm eps
        1e-5, exact GELU, attention scaled by 1/sqrt(d_head), biases everywhere, untied
        unembedding) with the same weights, dtype and device. TransformerLens has no dropout: the
        bridge equals this model in ``eval()`` mode.

        Returns
        -------
        bridge : transformer_lens.model_bridge.TransformerBridge
            ``bridge(tokens)`` gives the logits at every position, (B, T, S):
            ``bridge(tokens)[:, m-1:]`` equals ``self(tokens)``. Its hook names match this model's
            where both have them (``hook_embed``, ``blocks.{l}.attn.hook_pattern``,
            ``blocks.{l}.hook_resid_post``, ...; see the transformer guide for the differences).

        Examples
        --------
        >>> bridge = model.to_transformer_lens()  # doctest: +SKIP
        >>> logits, cache = bridge.run_with_cache(tokens)  # doctest: +SKIP
        """
        from ._lens import to_bridge

        return to_bridge(self)

    @classmethod
    def from_transformer_lens(cls, model: Any, m: int, *, dropout: float = 0.0) -> "StandardTransformer":
        """A ``StandardTransformer`` with the weights of a TL-native ``TransformerBridge``.

        Parameters
        ----------
        model : transformer_lens.model_bridge.TransformerBridge
            Built by :meth:`to_transformer_lens` or by ``transformer_lens.model_bridge.sources.native.boot``
            with a config this class can represent (otherwise a ValueError names what differs).
        m : int
            MTD order: the returned model's outputs start at position m-1.
        dropout : float
            Dropout rate of the returned model (TransformerLens has none).

        Returns
        -------
        StandardTransformer
            Same dtype and device as ``model``; ``S = d_vocab``, ``max_len = n_ctx``.

        Examples
        --------
        >>> back = StandardTransformer.from_transformer_lens(bridge, m=2)  # doctest: +SKIP
        """
        from ._lens import from_bridge

        return from_bridge(cls, model, m, dropout)
