"""Evaluation during training: KL of the model to three references on a fixed held-out batch.

:class:`HeldOutKL` is a :func:`mtdmath.nn.train` callback. At construction it draws one batch of
the task with its own generator (so it never touches the training stream) and computes, in
float64 NumPy through the core, three predictive laws after every prefix of that batch:

- ``bayes``: the exact Bayes predictive, ``predictive(E[lam | prefix])`` with the exact posterior
  mean (:func:`mtdmath.posterior_mean`, docs/math.md §4);
- ``md``: one MD step from μ at η* = 1/(1+α₀) (:func:`mtdmath.md_predictive_all_prefixes`, §5);
- ``adaptive``: one MD step of the context-adaptive size ``c/(n+m+a)`` (§5.6; ``(c, a)`` default
  to :func:`mtdmath.nn.adaptive_params`).

Every ``every`` steps it returns ``kl_bayes``, ``kl_md`` and ``kl_adaptive``: the mean over the
batch and the prefixes of ``KL(reference ‖ model)`` in nats (:func:`mtdmath.kl`), the model
evaluated in eval mode without gradients.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _validate as validate
from ..bayes import posterior_mean
from ..estimators import md_predictive_all_prefixes
from ..likelihood import kl
from ..model import lag_factors, predictive
from .task import ICLTask
from .transformer import adaptive_params

__all__ = ["HeldOutKL"]


class HeldOutKL:
    """Training callback: KL to exact Bayes, to one-step MD at η* and to the adaptive step, every k steps.

    Parameters
    ----------
    task : ICLTask
    every : int
        Evaluate at steps that are multiples of ``every`` (give :func:`train` the same
        ``log_every`` to log one evaluation per point).
    batch_size : int
        Sequences of the held-out batch.
    seed : int
        Seed of the held-out batch (a CPU generator of its own).
    c, a : float, optional
        The context-adaptive step ``c/(n+m+a)``; defaults as :func:`mtdmath.nn.adaptive_params`.

    Attributes
    ----------
    tokens : int64 tensor (batch_size, T)
    references : dict str -> ndarray (batch_size, T-m+1, S)
        The ``bayes``, ``md`` and ``adaptive`` predictive laws.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> task = nn.ICLTask(pi, alpha, T=12)
    >>> model = nn.StandardTransformer(3, 2, n_layers=1, d_model=8, n_heads=1, max_len=16, generator=torch.Generator().manual_seed(0))
    >>> ev = nn.HeldOutKL(task, every=5, batch_size=32)
    >>> hist = nn.train(model, task, steps=10, batch_size=8, log_every=5, callbacks=[ev], progress=False)
    >>> sorted(k for k in hist.extra if k.startswith('kl_'))[:3]
    ['kl_adaptive', 'kl_bayes', 'kl_md']
    >>> len(hist.extra['kl_bayes']) == len(hist.step)
    True
    """

    def __init__(self, task: ICLTask, *, every: int = 50, batch_size: int = 256, seed: int = 0,
                 c: float | None = None, a: float | None = None) -> None:
        if not isinstance(task, ICLTask):
            raise ValueError(f"task must be an ICLTask (got {type(task).__name__})")
        self.every = validate.check_int(every, "every", minimum=1)
        batch_size = validate.check_int(batch_size, "batch_size", minimum=1)
        seed = validate.check_int(seed, "seed", minimum=0)
        self.c, self.a = adaptive_params(task.alpha, c=c, a=a)
        cpu = task.to("cpu")
        self.tokens, _ = cpu.sample(batch_size, generator=torch.Generator().manual_seed(seed))
        y = self.tokens.numpy()
        pi, alpha, m = cpu.pi.numpy(), np.asarray(task.alpha, np.float64), task.m
        C = lag_factors(y, pi, m)  # (B, T-m, m)
        bayes = np.stack([predictive(posterior_mean(C[:, :r], alpha), y[:, :m + r], pi)
                          for r in range(y.shape[1] - m + 1)], axis=1)
        c_, a_ = self.c, self.a
        self.references = {
            "bayes": bayes,
            "md": np.asarray(md_predictive_all_prefixes(y, pi, alpha)),
            "adaptive": np.asarray(md_predictive_all_prefixes(y, pi, alpha, eta=lambda n: c_ / (n + m + a_))),
        }

    def __call__(self, *, step: int, model: torch.nn.Module, **_: Any) -> dict[str, float] | None:
        if step % self.every:
            return None
        return self.evaluate(model)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """``kl_bayes``, ``kl_md``, ``kl_adaptive`` of ``model`` on the held-out batch now."""
        was_training = model.training
        model.eval()
        try:
            dev = next(model.parameters()).device
            logits = model(self.tokens.to(dev))
        finally:
            model.train(was_training)
        q = torch.softmax(logits.to(torch.float64), dim=-1).cpu().numpy()
        return {f"kl_{k}": float(np.mean(kl(p, q))) for k, p in self.references.items()}
