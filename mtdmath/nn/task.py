"""The in-context MTD task (docs/math.md §1) sampled in torch on the model's device.

:class:`ICLTask` draws batches with the law of :func:`mtdmath.sample_icl`: a fixed pi, one
``lam ~ Dirichlet(alpha)`` per sequence, the first m tokens i.i.d. uniform, then
``Z_t ~ Categorical(lam)`` and ``y[t] ~ pi[y[t - Z_t], :]``. Every draw comes from a
``torch.Generator`` on the task's device, so a GPU training loop never waits on the CPU for data
and a seed fixes the batch stream (the stream of a CUDA generator differs from a CPU one).

The Dirichlet draw normalises Gamma(alpha_g, 1) variables. ``torch.distributions.Dirichlet`` and
``torch._standard_gamma`` take no generator (they read the global RNG), so the Gamma variables
are drawn here with the Marsaglia–Tsang squeeze method, which only needs normal and uniform
draws: for a >= 1, with d = a - 1/3 and c = 1/sqrt(9d), x ~ N(0, 1), v = (1 + cx)³ > 0 and
u ~ U(0, 1), accept d·v when ``log u < x²/2 + d - d·v + d·log v``; for a < 1 use
``Gamma(a) = Gamma(a + 1)·U^(1/a)`` (Marsaglia & Tsang, ACM TOMS 26(3), 2000).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _validate as validate
from .._xp import torch_space

__all__ = ["ICLTask", "dirichlet", "log_gamma", "ALPHA_MIN"]

#: The smallest Dirichlet parameter :class:`ICLTask` draws: below it ``log(U)/alpha`` (U >= 2^-53)
#: can overflow float64, and the draw would be 0/0. Down to it the draws are exact one-hots in the
#: limit, as the law is.
ALPHA_MIN = 1e-300


def log_gamma(shape_param: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``log`` of Gamma(a, 1) draws, one per entry of ``shape_param`` (a > 0), same dtype and device.

    Marsaglia–Tsang (module docstring), vectorised: every round proposes for all entries still
    waiting; the acceptance rate is >= 95 % for every a, so a handful of rounds suffice. The
    boost for a < 1 is applied in log space (``+ log U / a``), so a tiny a cannot underflow.
    """
    a = shape_param
    boost = a < 1
    a1 = torch.where(boost, a + 1, a)
    d = a1 - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.zeros_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    kw = dict(dtype=a.dtype, device=a.device, generator=generator)
    while bool(todo.any()):
        x = torch.randn(a.shape, **kw)
        u = torch.rand(a.shape, **kw)
        v = (1.0 + c * x) ** 3
        logv = torch.log(v.clamp_min(torch.finfo(a.dtype).tiny))  # only used where v > 0
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * logv)
        take = ok & todo
        out = torch.where(take, torch.log(d) + logv, out)
        todo = todo & ~take
    # Gamma(a) = Gamma(a+1) · U^(1/a); 1 - rand lies in (0, 1], so the log is finite
    u = 1.0 - torch.rand(a.shape, **kw)
    return torch.where(boost, out + torch.log(u) / a, out)


def dirichlet(alpha: torch.Tensor, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``batch`` draws of Dirichlet(alpha), shape (batch, m): normalised Gamma(alpha_g) variables.

    The normalisation is a softmax of the log-Gamma draws, so no row underflows to 0/0 even
    for a tiny alpha.
    """
    return torch.softmax(log_gamma(alpha.expand(batch, -1).contiguous(), generator), dim=1)


class ICLTask:
    """In-context MTD task: fixed pi, per-sequence lam ~ Dirichlet(alpha), sequences of length T.

    Parameters
    ----------
    pi : array_like or tensor, shape (S, S)
        Row-stochastic transition matrix (zeros allowed).
    alpha : array_like or tensor, shape (m,)
        Dirichlet prior of the lag weights, entries > 0.
    T : int
        Sequence length, ``T >= m + 1`` (at least one transition to predict).
    device : torch device, optional
        Where batches are drawn (default CPU); :func:`mtdmath.nn.train` moves the task to the
        model's device.

    Attributes
    ----------
    pi : tensor (S, S) float64 on ``device``; alpha : ndarray (m,) float64; S, m, T : int

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> task = nn.ICLTask(pi, alpha, T=16)
    >>> tokens, lam = task.sample(4, generator=torch.Generator().manual_seed(0))
    >>> tokens.shape, lam.shape
    (torch.Size([4, 16]), torch.Size([4, 2]))
    >>> task.S, task.m, task.T
    (3, 2, 16)
    """

    def __init__(self, pi: Any, alpha: Any, T: int, *, device: torch.device | str | None = None) -> None:
        dev = validate.check_torch_device(device) or torch.device("cpu")
        self.pi = validate.check_pi(pi, "pi", torch_space(dev)).detach()
        self.alpha = validate.check_alpha(alpha, "alpha")
        if float(self.alpha.min()) < ALPHA_MIN:
            # the Gamma boost log(U)/alpha reaches -inf: every weight would be 0 and lam NaN
            raise ValueError(f"alpha entries must be >= {ALPHA_MIN:g} for the torch sampler, whose Gamma draws "
                             f"divide by alpha (got min(alpha) = {float(self.alpha.min())!r})")
        self.S, self.m = int(self.pi.shape[0]), int(self.alpha.shape[0])
        self.T = validate.check_int(T, "T", minimum=self.m + 1)
        self.device = dev
        self._alpha_t = torch.as_tensor(self.alpha, dtype=torch.float64, device=dev)
        cdf = torch.cumsum(self.pi, dim=1)  # (S, S)
        # divided by its last entry, the cdf ends at exactly 1 > u: a category of mass 0 is never
        # drawn (as mtdmath.sample's inverse-CDF draws)
        self._pi_cdf = cdf / cdf[:, -1:]

    def to(self, device: torch.device | str) -> "ICLTask":
        """The same task drawing on ``device`` (``self`` if it already does)."""
        dev = torch.device(device)
        if dev == self.device:
            return self
        return ICLTask(self.pi, self.alpha, self.T, device=dev)

    def __repr__(self) -> str:
        return f"ICLTask(S={self.S}, m={self.m}, T={self.T}, alpha={self.alpha.tolist()}, device={self.device})"

    def to_dict(self) -> dict[str, Any]:
        """pi, alpha (CPU float64 tensors) and T: what :func:`from_dict` rebuilds the task from."""
        return {"pi": self.pi.cpu(), "alpha": torch.as_tensor(self.alpha), "T": self.T}

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device | str | None = None) -> "ICLTask":
        return cls(d["pi"], d["alpha"], int(d["T"]), device=device)

    def sample(self, batch: int, *, generator: torch.Generator | None = None, lam: Any = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch`` sequences on the task's device.

        Parameters
        ----------
        batch : int
        generator : torch.Generator, optional
            On the task's device; None uses torch's global generator of that device.
        lam : array_like or tensor, shape (m,) or (batch, m), optional
            Use these lag weights instead of drawing them from Dirichlet(alpha).

        Returns
        -------
        tokens : int64 tensor (batch, T)
        lam : float64 tensor (batch, m), the latent lag weights of each sequence
        """
        batch = validate.check_int(batch, "batch", minimum=1)
        # the tokens and four (T, batch) float64 work arrays
        validate.check_alloc(batch * self.T * 5, 8, "batch", f"{batch} sequences of length T = {self.T}")
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(f"generator must live on the task's device {self.device} (got {generator.device})")
        dev, m, T = self.device, self.m, self.T
        if lam is None:
            lam_t = dirichlet(self._alpha_t, batch, generator)
        else:
            lam_np = validate.check_lam(lam.detach().cpu().numpy() if isinstance(lam, torch.Tensor) else lam, "lam", m)
            lam_t = torch.as_tensor(np.broadcast_to(lam_np, (batch, m)).copy(), dtype=torch.float64, device=dev)
        kw = dict(dtype=torch.float64, device=dev, generator=generator)
        y = torch.empty(batch, T, dtype=torch.int64, device=dev)
        # first m tokens i.i.d. uniform on [0, S), as sample()'s default init
        y[:, :m] = torch.randint(self.S, (batch, m), device=dev, generator=generator)
        u_lag = torch.rand(T - m, batch, **kw)
        u_tok = torch.rand(T - m, batch, **kw)
        lam_cdf = torch.cumsum(lam_t, dim=1)
        lam_cdf = lam_cdf / lam_cdf[:, -1:]
        # the latent lags do not depend on the tokens: all at once, (B, T-m), lag index g-1 in [0, m)
        lags = torch.searchsorted(lam_cdf, u_lag.T.contiguous(), right=True)
        pos = torch.arange(m, T, device=dev) - 1 - lags  # (B, T-m): source position t - Z_t
        rows = torch.arange(batch, device=dev)
        for i, t in enumerate(range(m, T)):  # sequential in time by nature; vectorised over the batch
            src = y[rows, pos[:, i]]  # the source token y[t - Z_t]
            y[:, t] = torch.searchsorted(self._pi_cdf[src], u_tok[i, :, None], right=True)[:, 0]
        return y, lam_t

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ICLTask) and self.T == other.T and np.array_equal(self.alpha, other.alpha)
                and torch.equal(self.pi.cpu(), other.pi.cpu()))

    __hash__ = None  # type: ignore[assignment]
