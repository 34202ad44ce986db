"""Hook functions for ablations and interventions on attention heads (``run_with_hooks``).

Each function returns a hook ``fn(activation, hook) -> replacement`` for the hook points of
:class:`~mtdmath.nn.StandardTransformer` (and :class:`~mtdmath.nn.MDTransformer` where the shapes
match):

- :func:`head_ablation_hook` on ``blocks.{l}.attn.hook_z`` (B, H, T, d): replace one head's output
  by zero or by a given mean (mean ablation);
- :func:`add_sink_hook` on ``blocks.{l}.attn.hook_pattern`` (B, H, T, T): add a key of value 0
  whose weight is ``weight`` times the mean weight of the real keys, i.e. rescale row t of the
  pattern by ``(t+1)/(t+1+weight)`` (docs/math.md §5.7).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

__all__ = ["head_ablation_hook", "add_sink_hook"]


def _check_head(head: Any, name: str = "head") -> int:
    if isinstance(head, bool) or not isinstance(head, int) or head < 0:
        raise ValueError(f"{name} must be an integer >= 0 (got {head!r})")
    return int(head)


def head_ablation_hook(head: int, mean: torch.Tensor | None = None) -> Callable[..., torch.Tensor]:
    """A hook on ``attn.hook_z`` that replaces the output of one head.

    Parameters
    ----------
    head : int
        The head (index along axis 1 of ``hook_z``).
    mean : tensor, shape (T, d) or broadcastable to (B, T, d), optional
        The replacement (mean ablation: the head's output averaged over sequences at each
        position, e.g. ``cache[name][:, head].mean(0)``); None replaces it by zeros.

    Returns
    -------
    fn : callable ``fn(z, hook) -> z'``
        ``z`` (B, H, T, d); ``z'`` equals ``z`` except ``z'[:, head]``. A mean of T' > T rows is
        cut to the call's T (its first T positions), so one mean serves shorter inputs.

    Examples
    --------
    >>> import torch
    >>> from mtdmath import nn
    >>> g = torch.Generator().manual_seed(0)
    >>> model = nn.StandardTransformer(3, 2, n_layers=2, d_model=8, n_heads=2, max_len=10, generator=g,
    ...                                dtype=torch.float64)
    >>> tokens = torch.randint(0, 3, (2, 10), generator=g)
    >>> base = model(tokens)
    >>> ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", nn.head_ablation_hook(1))])
    >>> ablated.shape, bool((ablated - base).abs().max() > 1e-6)  # the head mattered
    (torch.Size([2, 9, 3]), True)
    """
    head = _check_head(head)
    if mean is not None and not isinstance(mean, torch.Tensor):
        raise ValueError(f"mean must be a torch tensor of shape (T, d) or None (got {type(mean).__name__})")

    def fn(z: torch.Tensor, hook: Any = None) -> torch.Tensor:
        if head >= z.shape[1]:
            raise ValueError(f"head must be < the number of heads {z.shape[1]} (got {head})")
        out = z.clone()
        if mean is None:
            out[:, head] = 0.0
        else:
            T = z.shape[2]
            out[:, head] = mean[..., :T, :].to(dtype=z.dtype, device=z.device)
        return out

    return fn


def add_sink_hook(weight: float, heads: Sequence[int] | None = None) -> Callable[..., torch.Tensor]:
    """A hook on ``attn.hook_pattern`` that adds a zero-value key of weight ``weight`` (docs/math.md §5.7).

    The added key's score is ``log(weight) + log(mean_s exp(score[t, s]))`` over the real keys
    ``s <= t``; after renormalising, the real keys' weights are the old ones times
    ``N/(N + weight)`` (``N = t + 1``) and the added key's value is 0, so the head's output is
    rescaled by the same factor. For equal scores this is the attention sink of weight ``weight``
    of docs/math.md §5.6; ``weight = 0`` changes nothing.

    Parameters
    ----------
    weight : float >= 0
        The sink's weight in units of the mean weight of a real key.
    heads : sequence of int, optional
        The heads to change (default: all heads of the layer).

    Returns
    -------
    fn : callable ``fn(pattern, hook) -> pattern'``
        ``pattern`` (B, H, T, T) with causal rows (row t has t+1 keys).

    Examples
    --------
    >>> import torch
    >>> from mtdmath import nn
    >>> g = torch.Generator().manual_seed(0)
    >>> model = nn.StandardTransformer(3, 2, n_layers=2, d_model=8, n_heads=2, max_len=10, generator=g,
    ...                                dtype=torch.float64)
    >>> tokens = torch.randint(0, 3, (2, 10), generator=g)
    >>> base = model(tokens)
    >>> def run(weight):
    ...     hook = nn.add_sink_hook(weight, heads=[0])
    ...     return model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", hook)])
    >>> bool(torch.allclose(run(0.0), base, atol=1e-12)), bool((run(16.0) - base).abs().max() > 1e-6)
    (True, True)
    """
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0 (got {weight!r})")
    weight = float(weight)
    if heads is not None:
        if not isinstance(heads, (list, tuple)) or not heads:
            raise ValueError(f"heads must be a non-empty list of head indices or None (got {heads!r})")
        heads = [_check_head(h, "heads") for h in heads]

    def fn(pattern: torch.Tensor, hook: Any = None) -> torch.Tensor:
        T = pattern.shape[-1]
        n_keys = torch.arange(1, T + 1, dtype=pattern.dtype, device=pattern.device)  # N = t + 1 keys of row t
        scale = (n_keys / (n_keys + weight))[:, None]  # (T, 1)
        if heads is None:
            return pattern * scale
        if max(heads) >= pattern.shape[1]:
            raise ValueError(f"heads must be < the number of heads {pattern.shape[1]} (got {heads})")
        out = pattern.clone()
        out[:, heads] = pattern[:, heads] * scale
        return out

    return fn
