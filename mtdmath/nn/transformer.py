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

The attention matrices are formed explicitly, (B, T, T) each, as a transformer does:
memory O(B·T²). For long contexts use :func:`mtdmath.md_predictive_all_prefixes`
(O(B·T·m), same numbers).

``StandardTransformer`` is a GPT-style baseline (nanoGPT-like: token + learned absolute position
embeddings, pre-LayerNorm blocks of causal multi-head softmax attention and an MLP) with the
same ``forward`` / ``log_probs`` / ``return_attention`` contract.

Both models return their named activations with ``forward(tokens, return_cache=True)``: a dict
of the exact tensors used (TransformerLens-style names such as ``blocks.{l}.attn.hook_pattern``,
``[batch, head, query_pos, key_pos]``), listed with their shapes in :data:`MD_CACHE_NAMES` and
by :func:`standard_cache_names`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate as V
from .._xp import torch_space
from ..estimators import _check_eta

__all__ = ["MDConfig", "StandardConfig", "MDTransformer", "StandardTransformer", "MD_CACHE_NAMES",
           "MD_SINK_CACHE_NAMES", "AGGREGATIONS", "adaptive_params", "md_cache_names", "standard_cache_names"]


# ----------------------------------------------------------------------------- helpers
def _tokens_2d(tokens: Any, S: int, m: int, device: torch.device) -> torch.Tensor:
    """Validate tokens (B, T), integer, in [0, S), T >= m; int64 on ``device``."""
    y = V.check_tokens(tokens, S, m, "tokens", torch_space(device, like=tokens))
    if y.ndim != 2:
        raise ValueError(f"tokens must have shape (B, T) (got shape {tuple(y.shape)})")
    return y


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


def _cache_order(name: str) -> tuple[int, str]:
    """Sort key of cache names: embeddings, then block by block, then the final layers."""
    if name.startswith("blocks."):
        return (1 + int(name.split(".")[1]), name)
    return (0 if name.startswith("hook_") and name != "hook_logits" else 10_000, name)


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
    layer 2 (``aggregation``: ``"sum"`` or ``"softmax_sink"``, see :data:`AGGREGATIONS`)."""

    S: int
    m: int
    aggregation: str = "sum"

    def __post_init__(self) -> None:
        V.check_int(self.S, "S", minimum=1)
        V.check_int(self.m, "m", minimum=1)
        _check_aggregation(self.aggregation)


@dataclass(frozen=True)
class StandardConfig:
    """Hyper-parameters of a :class:`StandardTransformer`."""

    S: int
    m: int
    n_layers: int = 3
    d_model: int = 64
    n_heads: int = 4
    max_len: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        V.check_int(self.S, "S", minimum=1)
        V.check_int(self.m, "m", minimum=1)
        V.check_int(self.n_layers, "n_layers", minimum=1)
        V.check_int(self.d_model, "d_model", minimum=1)
        V.check_int(self.n_heads, "n_heads", minimum=1)
        V.check_int(self.max_len, "max_len", minimum=self.m)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be divisible by n_heads (got d_model={self.d_model}, n_heads={self.n_heads})")
        d = V.check_float(self.dropout, "dropout", nonnegative=True)
        if d >= 1:
            raise ValueError(f"dropout must be < 1 (got {d})")
        object.__setattr__(self, "dropout", d)


# ----------------------------------------------------------------------------- cache names
#: Named activations of ``MDTransformer.forward(tokens, return_cache=True)`` and their shapes
#: (TransformerLens-style names; attention tensors are ``[batch, head, query_pos, key_pos]``
#: with one head per layer). Scores are the masked logits: -inf outside the window (and where
#: pi is 0), so a row with no allowed key (layer 1: t < m; layer 3: t < m-1) is all -inf and its
#: pattern row is all 0. The residual stream is the disentangled concatenation
#: ``[e(y[t]) | r_t | G_t | p_t]`` of width ``S + 2m + S``; blocks a layer has not written yet are 0.
MD_CACHE_NAMES: dict[str, str] = {
    "hook_embed": "(B, T, S) one-hot tokens e(y[t])",
    "blocks.0.attn.hook_scores": "(B, 1, T, T) layer-1 logits W1[y[s], y[t]] + b1[t-s-1], masked to -inf",
    "blocks.0.attn.hook_pattern": "(B, 1, T, T) layer-1 weights A1 (responsibilities when constructed)",
    "blocks.0.hook_r": "(B, T, m) r_t = Σ_g A1[t, t-g] v1[g-1]",
    "blocks.0.hook_resid_post": "(B, T, S+2m+S) [e | r | 0 | 0]",
    "blocks.1.attn.hook_pattern": "(B, 1, T, T) layer-2 weights: 1 for s <= t, else 0",
    "blocks.1.hook_G": "(B, T, m) G_t = Σ_{s<=t} r_s",
    "blocks.1.hook_resid_post": "(B, T, S+2m+S) [e | r | G | 0]",
    "blocks.2.attn.hook_q": "(B, T, m) layer-3 query q_t = q_bias + G_t w_q",
    "blocks.2.attn.hook_lag_logits": "(B, T, m) layer-3 logits q_t · K3[j] of key t-j (lag j+1)",
    "blocks.2.attn.hook_scores": "(B, 1, T, T) layer-3 logits scattered to keys, masked to -inf",
    "blocks.2.attn.hook_pattern": "(B, 1, T, T) layer-3 weights A3 (one-step MD lam¹ when constructed)",
    "blocks.2.attn.hook_v": "(B, T, S) layer-3 values W_V e(y[s])",
    "blocks.2.hook_p": "(B, T, S) p_t = Σ_s A3[t, s] W_V e(y[s]); forward returns rows t >= m-1",
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
    """The named activations of an :class:`MDTransformer` with this layer 2 (name -> shape and meaning)."""
    return dict(MD_SINK_CACHE_NAMES if _check_aggregation(aggregation) == "softmax_sink" else MD_CACHE_NAMES)


def standard_cache_names(n_layers: int) -> dict[str, str]:
    """Named activations of ``StandardTransformer.forward(tokens, return_cache=True)`` and their shapes.

    D = d_model, H = n_heads, d = D/H. Scores are scaled by 1/sqrt(d) and masked to -inf on
    future keys; patterns are taken before attention dropout.
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
    """
    alpha = V.check_alpha(alpha, "alpha")
    m, alpha0 = alpha.shape[0], float(alpha.sum())
    if c is not None:
        c = V.check_float(c, "c", positive=True)
    if a is not None:
        a = V.check_float(a, "a", nonnegative=True)
    if c is None:
        c = (m + (a if a is not None else 0.0)) / (1.0 + alpha0)
        if not (math.isfinite(c) and c > 0):
            raise ValueError(f"a = {a!r} gives c = (m+a)/(1+α₀) = {c!r}, not a positive finite number")
    if a is None:
        a = c * (1.0 + alpha0) - m
        if not math.isfinite(a):
            raise ValueError(f"c = {c!r} gives a = c(1+α₀) - m = {a!r}, not finite")
        if a < 0:
            raise ValueError(f"c = {c!r} gives the sink a = c(1+α₀) - m = {a!r} < 0 (η(0) = η* needs c >= "
                             f"m/(1+α₀) = {m / (1.0 + alpha0)!r}); pass a >= 0 explicitly")
    return float(c), float(a)


# ----------------------------------------------------------------------------- MDTransformer
class MDTransformer(nn.Module):
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
        (``w_q = diag(c/μ)``, n = t+1-m transitions; docs/math.md §5.6). The ``"sum"`` model's
        parameters, random draws and checkpoints are those of the model without this option.

    Attributes
    ----------
    S, m : int
    aggregation : str
    w1 : Parameter (S, S)
        Finite token–token score; the effective score matrix is :attr:`W1`.
    b1 : Parameter (m,)
        Relative-position bias of layer 1, ``b1[g-1]`` for lag g (``log μ`` when constructed).
    v1 : Parameter (m, m)
        Relative value embeddings of layer 1, row g-1 for lag g (identity when constructed).
    q_bias : Parameter (m,), w_q : Parameter (m, m)
        Layer-3 query ``q_t = q_bias + G_t @ w_q`` (``log μ`` and ``diag(η/μ)`` when constructed).
    k3 : Parameter (m, m)
        Relative key embeddings of layer 3, row g-1 for lag g (identity when constructed).
    value_logits : Parameter (S, S)
        ``W_V = softmax(value_logits, -1)ᵀ`` (``log pi`` when constructed), so every output row
        is a probability vector.
    pi_zero : buffer (S, S) bool
        Where pi is 0: masks ``w1`` and ``value_logits`` to -inf. All False unless constructed.
    sink_logit : Parameter (), only for ``aggregation="softmax_sink"``
        Layer-2 score of the sink key, ``log a`` (drawn N(0, 0.1²): a ≈ 1 at initialisation).
    sink_off : buffer () bool, only for ``aggregation="softmax_sink"``
        True when a = 0: the sink key is masked out (no ``log 0``), so ``Ḡ_t = G_t/(t+1)``.
    """

    def __init__(self, S: int, m: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, generator: torch.Generator | None = None,
                 aggregation: str = "sum") -> None:
        super().__init__()
        self.config = MDConfig(S, m, _check_aggregation(aggregation))
        self.aggregation = aggregation
        self.S, self.m = int(S), int(m)
        dtype = V.check_torch_dtype(dtype)
        device = V.check_torch_device(device)
        V.check_alloc(3 * self.S * self.S, 8, "S", f"the (S, S) weights of S = {self.S}")
        kw = dict(dtype=dtype, device=_init_device(generator), generator=generator)

        def randn(*shape: int, std: float) -> nn.Parameter:
            return nn.Parameter(std * torch.randn(*shape, **kw))

        eye = torch.eye(m, dtype=dtype, device=kw["device"])
        # layer 1: responsibility attention
        self.w1 = randn(S, S, std=1.0)
        self.b1 = randn(m, std=0.1)
        self.v1 = nn.Parameter(eye + 0.1 * torch.randn(m, m, **kw))
        # layer 3: mirror-step attention
        self.q_bias = randn(m, std=0.1)
        self.w_q = randn(m, m, std=1.0 / math.sqrt(m))
        self.k3 = nn.Parameter(eye + 0.1 * torch.randn(m, m, **kw))
        self.value_logits = randn(S, S, std=1.0)
        self.register_buffer("pi_zero", torch.zeros(S, S, dtype=torch.bool, device=kw["device"]))
        if aggregation == "softmax_sink":
            # drawn after every other weight, so the layers 1 and 3 of a seed are those of the "sum" model
            self.sink_logit = nn.Parameter(0.1 * torch.randn(1, **kw)[0])
            self.register_buffer("sink_off", torch.zeros((), dtype=torch.bool, device=kw["device"]))
        self.to(device=device)

    # -------------------------------------------------------------- construction
    @classmethod
    def construct(cls, pi: Any, alpha: Any, *, eta: float | None = None, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None, aggregation: str = "sum", c: float | None = None,
                  a: float | None = None) -> "MDTransformer":
        """The exact one-step-MD transformer of docs/math.md §5 (and its context-adaptive form, §5.6).

        Parameters
        ----------
        pi : array_like or tensor, shape (S, S)
            Row-stochastic; zero entries are allowed (masked to -inf scores).
        alpha : array_like or tensor, shape (m,)
            Dirichlet prior of lam; μ = alpha/α₀.
        eta : float, optional
            Step size ``>= 0`` of the ``"sum"`` model; default ``η* = eta_bayes(alpha) = 1/(1+α₀)``.
        dtype, device :
            Of the model.
        aggregation : {"sum", "softmax_sink"}
            ``"softmax_sink"``: layer 2 normalises by ``t+1+a`` and layer 3 takes one MD step of
            size ``η(n) = c/(n+m+a)`` after a prefix of n transitions (docs/math.md §5.6).
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
            With ``W1 = log pi``, ``b1 = q_bias = log μ``, ``v1 = k3 = I``, ``w_q = diag(η/μ)``
            (``diag(c/μ)`` for ``"softmax_sink"``), ``W_V = piᵀ``; its forward gives the one-step
            MD predictive after every prefix.
        """
        pi64 = V.check_pi(pi, "pi", torch_space("cpu")).detach()  # (S, S) float64
        alpha = V.check_alpha(alpha, "alpha")
        dtype = V.check_torch_dtype(dtype)
        device = V.check_torch_device(device)
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
        with torch.no_grad():
            for p, value in ((model.w1, log_pi), (model.b1, mu.log()), (model.v1, torch.eye(m)),
                             (model.q_bias, mu.log()), (model.w_q, torch.diag(scale / mu)),
                             (model.k3, torch.eye(m)), (model.value_logits, log_pi)):
                p.copy_(value)
            model.pi_zero.copy_(zero)
            if aggregation == "softmax_sink":
                # a = 0: a finite logit that the sink_off mask removes (log 0 would be -inf, NaN gradients)
                model.sink_logit.fill_(math.log(a) if a > 0 else 0.0)
                model.sink_off.fill_(a == 0)
        return model

    @property
    def sink_weight(self) -> float:
        """The sink weight ``a`` of a ``"softmax_sink"`` model (``exp(sink_logit)``; 0 when the sink is off)."""
        if self.aggregation != "softmax_sink":
            raise ValueError(f"sink_weight: this model has aggregation={self.aggregation!r}, no sink")
        return 0.0 if bool(self.sink_off) else float(torch.exp(self.sink_logit.detach()))

    # -------------------------------------------------------------- effective weights
    @property
    def W1(self) -> torch.Tensor:
        """The (S, S) bilinear score of layer 1, ``score(s -> t) = W1[y[s], y[t]] + b1[t-s-1]``.

        ``log pi`` for a constructed model (-inf where pi is 0). Identified only up to an
        additive constant per query token (column): compare ``softmax(W1, dim=0)`` with pi
        normalised over its columns (docs/math.md §5).
        """
        return self.w1.masked_fill(self.pi_zero, -math.inf)

    @property
    def W_V(self) -> torch.Tensor:
        """The (S, S) value matrix of layer 3, ``W_V = softmax(value_logits, -1)ᵀ`` (``piᵀ`` when constructed)."""
        return self._value_rows().T

    def _value_rows(self) -> torch.Tensor:
        """Row a = law emitted for source token a, ``W_V e(a)``; (S, S), rows on the simplex."""
        return torch.softmax(self.value_logits.masked_fill(self.pi_zero, -math.inf), dim=-1)

    # -------------------------------------------------------------- layers
    def _layers_1_2(self, y: torch.Tensor, cache: dict[str, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Responsibility and aggregation layers; returns (A1, A2, G).

        A1 : (B, T, T) softmax weights of layer 1; A2 : (T, T) layer-2 weights on the positions
        (causal ones for ``"sum"``, ``1/(t+1+a)`` for ``"softmax_sink"``); G : (B, T, m) layer 2's
        output (``G_t``, or ``Ḡ_t = G_t/(t+1+a)``).
        When ``cache`` is a dict, the intermediate tensors are stored in it by name.
        """
        B, T = y.shape
        S, m = self.S, self.m
        dev = y.device
        x = F.one_hot(y, S).to(self.w1.dtype)  # (B, T, S) token one-hots e(y[t])
        pos = torch.arange(T, device=dev)
        lag = pos[:, None] - pos[None, :]  # (T, T): lag[t, s] = t - s

        # ---- layer 1: score[t, s] = e(y[s])ᵀ W1 e(y[t]) + b1[t-s-1] on the window 1 <= t-s <= m
        q1 = x @ self.w1.T  # (B, T, S): q1[b, t] = W1 e(y[t]) = W1[:, y[t]]
        scores1 = q1 @ x.transpose(1, 2)  # (B, T, T): [b, t, s] = W1[y[s], y[t]]
        scores1 = scores1 + self.b1[(lag - 1).clamp(0, m - 1)]  # + (T, T) relative-position bias
        window1 = (lag >= 1) & (lag <= m) & (pos >= m)[:, None]  # (T, T); rows t < m undefined
        allowed1 = window1.expand(B, T, T)
        if bool(self.pi_zero.any()):
            # pi[y[s], y[t]] = 0 -> score -inf, by masking: zero_pi[b, t, s] = pi_zero[y[s], y[t]]
            zero_pi = self.pi_zero[y[:, None, :], y[:, :, None]]  # (B, T, T)
            allowed1 = allowed1 & ~zero_pi
            impossible = window1.any(-1) & ~allowed1.any(-1)  # (B, T): no lag explains y[t]
            if bool(impossible.any()):
                b, t = impossible.nonzero()[0].tolist()
                raise ValueError(
                    f"tokens contain a transition with probability 0 under every lag of pi "
                    f"(batch {b}, position {t}): the data are impossible under pi"
                )
        A1 = _masked_softmax(scores1, allowed1)  # (B, T, T)
        # relative values: r_t = Σ_g A1[t, t-g] v1[g-1]; gather the band A1[b, t, t-g], g = 1..m
        band_idx = (pos[:, None] - torch.arange(1, m + 1, device=dev)[None, :]).clamp(min=0)  # (T, m)
        band1 = A1.gather(2, band_idx.expand(B, T, m))  # (B, T, m); zero rows for t < m
        r = band1 @ self.v1  # (B, T, m): r_t = γ_{t-m} when constructed

        if self.aggregation == "sum":
            # ---- layer 2: G_t = Σ_{s<=t} r_s (unnormalised causal attention with weights 1)
            A2 = (lag >= 0).to(r.dtype)  # (T, T) lower-triangular ones
            sink = scores2 = None
        else:
            # ---- layer 2: softmax over [sink, positions 0..T-1] with scores [log a, 0 (s <= t), -inf (s > t)]:
            # weights 1/(t+1+a) on s <= t and a/(t+1+a) on the sink, whose value is 0 (docs/math.md §5.6)
            allowed2 = torch.cat([(~self.sink_off).expand(T, 1), lag >= 0], dim=1)  # (T, 1+T)
            scores2 = torch.cat([self.sink_logit.to(r.dtype).expand(T, 1), torch.zeros(T, T, dtype=r.dtype, device=dev)],
                                dim=1)
            W2 = _masked_softmax(scores2, allowed2)  # (T, 1+T); every row has its own position allowed
            A2, sink = W2[:, 1:], W2[:, 0]  # (T, T), (T,)
            scores2 = scores2.masked_fill(~allowed2, -math.inf)
        G = A2 @ r  # (B, T, m): G_t ("sum") or Ḡ_t = G_t/(t+1+a) ("softmax_sink")
        if cache is not None:
            cache["hook_embed"] = x
            cache["blocks.0.attn.hook_scores"] = scores1.masked_fill(~allowed1, -math.inf).unsqueeze(1)
            cache["blocks.0.attn.hook_pattern"] = A1.unsqueeze(1)
            cache["blocks.0.hook_r"] = r
            if scores2 is not None:
                cache["blocks.1.attn.hook_scores"] = scores2.expand(B, 1, T, T + 1)
                cache["blocks.1.attn.hook_sink"] = sink.expand(B, 1, T)
            cache["blocks.1.attn.hook_pattern"] = A2.expand(B, 1, T, T)
            cache["blocks.1.hook_G"] = G
        return A1, A2, G

    def _layer3_scores(self, G: torch.Tensor, cache: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Band scores of layer 3, (B, T, m): ``[b, t, j] = q_t · K3[j]`` for the key s = t - j (lag j+1)."""
        q3 = self.q_bias + G @ self.w_q  # (B, T, m): log μ + η G_t/μ when constructed
        band = q3 @ self.k3.T  # (B, T, m)
        if cache is not None:
            cache["blocks.2.attn.hook_q"] = q3
            cache["blocks.2.attn.hook_lag_logits"] = band
        return band

    # -------------------------------------------------------------- public
    def forward(self, tokens: Any, return_attention: bool = False, return_cache: bool = False):
        """Predictive law of the token after every prefix of length m … T.

        Parameters
        ----------
        tokens : int tensor or ndarray, shape (B, T), T >= m
        return_attention : bool
            Also return the attention matrices of the three layers.
        return_cache : bool
            Also return a dict of named activations (``MD_CACHE_NAMES`` lists them with their
            shapes; :data:`MD_SINK_CACHE_NAMES` for ``aggregation="softmax_sink"``); the exact tensors
            the forward pass used, so they carry gradients.

        Returns
        -------
        probs : tensor, shape (B, T-m+1, S)
            Row r is the law of ``y[m+r]`` given ``y[:m+r]`` (position t = m-1+r).
        attention : list of three tensors (B, T, T), only if ``return_attention``
            ``attn[b, t, s]`` = weight of query t on key s, the exact tensors used. Layer 1
            rows t < m and layer 3 rows t < m-1 are all zero; layer 2 is 1 for s <= t, else 0
            (``"softmax_sink"``: 1/(t+1+a) for s <= t; the sink weight is in the cache).
        cache : dict str -> tensor, only if ``return_cache`` (last when both are asked for)
        """
        y = _tokens_2d(tokens, self.S, self.m, self.w1.device)
        B, T = y.shape
        m = self.m
        # the three (B, T, T) attention matrices and their masks and scores
        V.check_alloc(8 * B * T * T, self.w1.element_size(), "tokens",
                      f"the (B, T, T) attention matrices of B = {B}, T = {T} (md_predictive_all_prefixes is O(B·T))")
        cache: dict[str, torch.Tensor] | None = {} if return_cache else None
        A1, A2, G = self._layers_1_2(y, cache)

        # ---- layer 3: scatter the band scores to (B, T, T): scores3[b, t, s] = band[b, t, t-s]
        pos = torch.arange(T, device=y.device)
        lag = pos[:, None] - pos[None, :]  # (T, T)
        band3 = self._layer3_scores(G, cache)  # (B, T, m)
        scores3 = band3.gather(2, lag.clamp(0, m - 1).expand(B, T, T))  # (B, T, T)
        allowed3 = ((lag >= 0) & (lag <= m - 1) & (pos >= m - 1)[:, None]).expand(B, T, T)
        A3 = _masked_softmax(scores3, allowed3)  # (B, T, T): lam¹ of the prefix y[:t+1] when constructed
        values = F.one_hot(y, self.S).to(A3.dtype) @ self._value_rows()  # (B, T, S): W_V e(y[s])
        p_all = A3 @ values  # (B, T, S)
        probs = p_all[:, m - 1:]  # (B, T-m+1, S)
        out: list[Any] = [probs]
        if return_attention:
            out.append([A1, A2.expand(B, T, T), A3])
        if cache is not None:
            cache["blocks.2.attn.hook_scores"] = scores3.masked_fill(~allowed3, -math.inf).unsqueeze(1)
            cache["blocks.2.attn.hook_pattern"] = A3.unsqueeze(1)
            cache["blocks.2.attn.hook_v"] = values
            cache["blocks.2.hook_p"] = p_all
            # the disentangled residual stream [e(y[t]) | r_t | G_t | p_t]; blocks not yet written are 0
            x, r = cache["hook_embed"], cache["blocks.0.hook_r"]
            zm, zs = torch.zeros_like(G), torch.zeros_like(p_all)
            cache["blocks.0.hook_resid_post"] = torch.cat([x, r, zm, zs], dim=-1)
            cache["blocks.1.hook_resid_post"] = torch.cat([x, r, G, zs], dim=-1)
            cache["blocks.2.hook_resid_post"] = torch.cat([x, r, G, p_all], dim=-1)
            out.append({k: cache[k] for k in md_cache_names(self.aggregation)})  # in the documented order
        return out[0] if len(out) == 1 else tuple(out)

    def log_probs(self, tokens: Any) -> torch.Tensor:
        """``log`` of :meth:`forward`, computed in log space (finite for a learned model), (B, T-m+1, S).

        Layer 3 is evaluated on its band: ``log p_t = logsumexp_j(log A3[t, t-j] + log W_V[:, y[t-j]])``.
        For training use the NLL of ``tokens[:, m:]`` on rows ``0 … T-m-1`` (the last row
        predicts beyond the sequence).
        """
        y = _tokens_2d(tokens, self.S, self.m, self.w1.device)
        m = self.m
        _, _, G = self._layers_1_2(y)
        log_att = torch.log_softmax(self._layer3_scores(G)[:, m - 1:], dim=-1)  # (B, T', m), key t-j
        # key t - j of row t = m-1+r is y[r + m-1-j]: window r of length m, reversed
        src = y.unfold(1, m, 1).flip(-1)  # (B, T', m)
        log_rows = torch.log_softmax(self.value_logits.masked_fill(self.pi_zero, -math.inf), dim=-1)
        log_vals = log_rows[src]  # (B, T', m, S)
        return _logsumexp(log_att.unsqueeze(-1) + log_vals, dim=2)  # (B, T', S)


# ----------------------------------------------------------------------------- StandardTransformer
class _CausalSelfAttention(nn.Module):
    """Multi-head causal softmax attention with an explicit (B, H, T, T) weight matrix."""

    def __init__(self, cfg: StandardConfig) -> None:
        super().__init__()
        self.n_heads, self.d_model = cfg.n_heads, cfg.d_model
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: dict[str, torch.Tensor] | None = None,
                prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 × (B, T, D)
        # (B, T, D) -> (B, T, H, D/H) -> (B, H, T, D/H)
        q, k, v = (z.view(B, T, H, D // H).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D // H)  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T): s <= t
        masked = scores.masked_fill(~causal, -math.inf)
        att = torch.softmax(masked, dim=-1)  # (B, H, T, T)
        z = self.attn_drop(att) @ v  # (B, H, T, D/H)
        y = z.transpose(1, 2).contiguous().view(B, T, D)  # (B, H, T, D/H) -> (B, T, D)
        if cache is not None:
            cache |= {f"{prefix}attn.hook_q": q, f"{prefix}attn.hook_k": k, f"{prefix}attn.hook_v": v,
                      f"{prefix}attn.hook_scores": masked, f"{prefix}attn.hook_pattern": att,
                      f"{prefix}attn.hook_z": z}
        return self.resid_drop(self.proj(y)), att


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: StandardConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = _CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, cache: dict[str, torch.Tensor] | None = None,
                prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        h = self.ln1(x)
        a, att = self.attn(h, cache, prefix)
        mid = x + a
        mlp_out = self.mlp(self.ln2(mid))
        out = mid + mlp_out
        if cache is not None:
            cache |= {f"{prefix}hook_resid_pre": x, f"{prefix}ln1.hook_normalized": h, f"{prefix}hook_attn_out": a,
                      f"{prefix}hook_resid_mid": mid, f"{prefix}hook_mlp_out": mlp_out,
                      f"{prefix}hook_resid_post": out}
        return out, att


class StandardTransformer(nn.Module):
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

    ``forward(tokens, return_attention=True)`` returns one (B, T, T) matrix per layer: the
    causal softmax weights **averaged over the heads** (rows sum to 1; before dropout).
    """

    def __init__(self, S: int, m: int, *, n_layers: int = 3, d_model: int = 64, n_heads: int = 4,
                 max_len: int = 256, dropout: float = 0.0, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        cfg = StandardConfig(S, m, n_layers, d_model, n_heads, max_len, dropout)
        self.config = cfg
        dtype = V.check_torch_dtype(dtype)
        device = V.check_torch_device(device)
        # embeddings and the 12 d² weights of each block; the error names the largest term
        terms = {"S": 2 * S * d_model, "max_len": max_len * d_model, "d_model": 12 * n_layers * d_model * d_model}
        V.check_alloc(sum(terms.values()), 8, max(terms, key=terms.get),
                      f"the weights of S = {S}, max_len = {max_len}, d_model = {d_model}, n_layers = {n_layers}")
        self.S, self.m = int(S), int(m)
        self.tok_emb = nn.Embedding(S, d_model)
        self.pos_emb = nn.Embedding(max_len, d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, S)
        self.to(dtype=dtype, device=_init_device(generator))
        self._init_weights(generator)
        self.to(device=device)

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

    def _logits(self, tokens: Any, cache: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits at positions m-1 … T-1, (B, T-m+1, S), and per-layer head-averaged attention."""
        y = _tokens_2d(tokens, self.S, self.m, self.head.weight.device)
        B, T = y.shape
        if T > self.config.max_len:
            raise ValueError(f"tokens must have length T <= max_len = {self.config.max_len} (got T = {T})")
        pos = torch.arange(T, device=y.device)
        tok, pe = self.tok_emb(y), self.pos_emb(pos)
        x = self.drop(tok + pe)  # (B, T, D)
        attns = []
        for l, block in enumerate(self.blocks):
            x, att = block(x, cache, f"blocks.{l}.")
            attns.append(att.mean(dim=1))  # (B, H, T, T) -> (B, T, T)
        xf = self.ln_f(x)
        logits = self.head(xf)  # (B, T, S)
        if cache is not None:
            cache |= {"hook_embed": tok, "hook_pos_embed": pe, "ln_final.hook_normalized": xf, "hook_logits": logits}
        return logits[:, self.m - 1:], attns

    def forward(self, tokens: Any, return_attention: bool = False, return_cache: bool = False):
        """As :meth:`MDTransformer.forward`: probs (B, T-m+1, S) [, list of n_layers (B, T, T)] [, cache].

        ``return_cache=True`` also returns a dict of named activations (per-head patterns and
        scores, q/k/v, the residual stream before, inside and after each block, the logits),
        listed with their shapes by :func:`standard_cache_names`.
        """
        cache: dict[str, torch.Tensor] | None = {} if return_cache else None
        logits, attns = self._logits(tokens, cache)
        probs = torch.softmax(logits, dim=-1)
        out: list[Any] = [probs]
        if return_attention:
            out.append(attns)
        if cache is not None:
            out.append(dict(sorted(cache.items(), key=lambda kv: _cache_order(kv[0]))))
        return out[0] if len(out) == 1 else tuple(out)

    def log_probs(self, tokens: Any) -> torch.Tensor:
        """Log-probabilities (B, T-m+1, S) via log_softmax (finite)."""
        return torch.log_softmax(self._logits(tokens)[0], dim=-1)
