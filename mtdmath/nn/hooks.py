"""Identity hook points and the TransformerLens-style ``run_with_cache`` / ``run_with_hooks``.

Every named activation of the library's transformers passes through a :class:`HookPoint`, an
``nn.Module`` whose forward is the identity. Reading an activation is a torch forward hook on
that module; patching it is a forward hook that returns a replacement, which torch then passes
on instead of the original. Because the hook points are ordinary submodules, torch's own
``register_forward_hook``, nnsight and TransformerLens-style code reach every activation by its
dotted module name (``blocks.0.attn.hook_pattern``).

The hook functions have TransformerLens's signature ``fn(activation, hook) -> replacement or
None`` (``hook`` is the :class:`HookPoint`, ``hook.name`` its name), so hook functions written
for a ``HookedTransformer`` run unchanged. TransformerLens itself is not a dependency: its
``HookPoint`` is this same identity-plus-torch-hook mechanism, and the package pulls in
``transformers`` and a dozen other libraries.

Examples
--------
>>> logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
>>> def zero(x, hook):
...     return torch.zeros_like(x)
>>> ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_G", zero)])
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

__all__ = ["HookPoint", "HookedModule", "NamesFilter"]

#: What ``names_filter`` accepts: None (every hook point), a name, a sequence of names, or a
#: predicate on names.
NamesFilter = "None | str | Sequence[str] | Callable[[str], bool]"


class HookPoint(nn.Module):
    """An identity module that marks a named activation; hooks on it read or replace the activation.

    ``name`` is set by :class:`HookedModule` to the module's dotted path.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> model = nn.MDTransformer.construct(pi, alpha)
    >>> zero = lambda x, hook: torch.zeros_like(x)  # replace the activation
    >>> out = model.run_with_hooks(tokens, fwd_hooks=[('blocks.2.attn.hook_step', zero)])
    >>> out.shape
    torch.Size([8, 11, 3])
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def has_hooks(self) -> bool:
        """Whether a forward hook is registered (then the activation must be formed explicitly)."""
        return bool(self._forward_hooks)


def _name_predicate(names_filter: Any) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, (list, tuple, set, frozenset)) and all(isinstance(n, str) for n in names_filter):
        chosen = set(names_filter)
        return lambda name: name in chosen
    raise ValueError(f"names_filter must be None, a hook name, a list of hook names or a callable "
                     f"(got {type(names_filter).__name__})")


class HookedModule(nn.Module):
    """Mixin of the library's transformers: hook points by name, ``run_with_cache``, ``run_with_hooks``.

    A subclass creates its :class:`HookPoint` submodules and calls :meth:`setup_hooks` at the end
    of ``__init__``; ``forward(tokens)`` returns the logits.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> model = nn.MDTransformer.construct(pi, alpha)
    >>> logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith('hook_r'))
    >>> list(cache), tuple(cache['blocks.0.hook_r'].shape)
    (['blocks.0.hook_r'], (8, 12, 2))
    """

    hook_dict: dict[str, HookPoint]

    def setup_hooks(self) -> None:
        """Name every hook point by its module path (call once the submodules exist)."""
        self.hook_dict = {}
        for name, mod in self.named_modules():
            if isinstance(mod, HookPoint):
                mod.name = name
                self.hook_dict[name] = mod

    @property
    def hook_names(self) -> list[str]:
        """Names of every hook point, in the order of the forward pass."""
        return list(self.hook_dict)

    def _check_hook_names(self, names: Iterable[str], what: str) -> None:
        unknown = [n for n in names if n not in self.hook_dict]
        if unknown:
            raise ValueError(f"{what}: unknown hook name {unknown[0]!r}; {type(self).__name__} has "
                             f"{', '.join(self.hook_dict)}")

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[Any, Callable[..., Any]]] = ()) -> Iterator["HookedModule"]:
        """Context manager that adds ``fwd_hooks`` (``(name or predicate, fn)`` pairs) and removes them on exit."""
        if not isinstance(fwd_hooks, (list, tuple)):
            raise ValueError(f"fwd_hooks must be a list of (name, fn) pairs (got {type(fwd_hooks).__name__})")
        handles = []
        try:
            for pair in fwd_hooks:
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and callable(pair[1])):
                    raise ValueError(f"fwd_hooks must hold (name, fn) pairs with a callable fn (got {pair!r})")
                target, fn = pair
                if isinstance(target, str):
                    self._check_hook_names([target], "fwd_hooks")
                    chosen = [target]
                else:
                    pred = _name_predicate(target)
                    chosen = [n for n in self.hook_dict if pred(n)]
                for name in chosen:
                    hp = self.hook_dict[name]
                    # torch passes a non-None return value on in place of the module's output
                    handles.append(hp.register_forward_hook(lambda mod, args, out, fn=fn: fn(out, hook=mod)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, tokens: Any, fwd_hooks: Sequence[tuple[Any, Callable[..., Any]]] = ()) -> torch.Tensor:
        """Logits of ``tokens`` with ``fwd_hooks`` active for this call only.

        Parameters
        ----------
        tokens : int tensor or ndarray, shape (B, T)
        fwd_hooks : list of (name, fn)
            ``name`` is a hook name (:attr:`hook_names`) or a predicate on names; ``fn(activation,
            hook)`` may return a tensor of the same shape, which replaces the activation
            downstream (patching, ablation), or None (read only).

        Returns
        -------
        logits : tensor, shape (B, T-m+1, S)
        """
        with self.hooks(fwd_hooks):
            return self(tokens)

    def run_with_cache(self, tokens: Any, names_filter: Any = None, *,
                       fwd_hooks: Sequence[tuple[Any, Callable[..., Any]]] = ()
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the named activations, recorded by hooks on the hook points.

        Parameters
        ----------
        tokens : int tensor or ndarray, shape (B, T)
        names_filter : None, str, list of str or callable
            Which activations to keep (None: all). Attention scores and patterns are formed
            explicitly only when they are asked for (otherwise attention runs fused).
        fwd_hooks : list of (name, fn), optional
            Hooks active during the same call; the cache records the activations after them.

        Returns
        -------
        logits : tensor, shape (B, T-m+1, S)
        cache : dict str -> tensor
            In the order of the forward pass; the exact tensors used downstream (they carry
            gradients unless the call runs under ``torch.no_grad``).
        """
        pred = _name_predicate(names_filter)
        cache: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = x

        chosen = [n for n in self.hook_dict if pred(n)]
        with self.hooks(list(fwd_hooks) + [(n, save) for n in chosen]):
            logits = self(tokens)
        return logits, {n: cache[n] for n in self.hook_dict if n in cache}
