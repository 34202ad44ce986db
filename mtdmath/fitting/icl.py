"""Fitting the paper's model: one pi shared by all sequences, each sequence with its own lam ~ Dirichlet(alpha).

``fit_icl`` maximises the exact marginal likelihood ``sum_b log p(y_b[m:] | y_b[:m], pi, alpha)`` (docs/math.md §4:
the Pólya-urn forward recursion over count states, the quantity :func:`mtdmath.log_evidence` computes) over
pi (rows on the simplex) and alpha (> 0). The recursion is written here in torch so that autograd gives the
exact gradient, and L-BFGS-B (scipy) climbs it with a sufficient-increase line search, so the recorded
objective never decreases. The parametrisation is ``pi = softmax(U)`` row-wise and ``alpha = exp(a)``.
No Monte Carlo is used: when the bound :func:`memory_estimate` on the recursion's autograd graph (docs/math.md
§12.3) exceeds ``max_bytes``, a ``ValueError`` says so before any work.

Standard errors come from the observed information of the marginal likelihood (Hessian-vector products by
forward-over-reverse autograd, in chunks that fit ``max_bytes``, in the unconstrained coordinates, delta method to pi and alpha; the softmax's one redundant direction per row
is removed by fixing the last logit of each row at 0).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._validate import check_alpha, check_float, check_int, check_pi
from ._data import as_sequences as _as_sequences
from ._posterior import check_budget

#: default memory budget of :func:`fit_icl` (bytes): the autograd graph of one length group's recursion and,
#: at the end, the Hessian's forward-over-reverse pass (docs/math.md §12.3). The library's budget for one call
#: (the default of ``mtdmath._validate.MAX_ALLOC_BYTES``): 2000 sequences of length 64 at m = 2 fit within it
#: (bound 4.2 GiB with one Hessian direction at a time), 500 of length 200 do not (10.6 GiB) and are refused.
DEFAULT_MAX_BYTES = 8 * 2**30
#: bytes per (sequence x grid cell x step) of one "graph unit": 12 float64 grid tensors per step of the
#: recursion (W, the shifted products, the step's sum, the rescaled grid, the factors)
GRAPH_BYTES_PER_CELL = 8 * 12
#: graph units of the gradient pass (the forward graph and the backward pass's buffers). Measured peaks of
#: the whole fit, less the Hessian's directions, were 1.1-1.6 graph units (tests/test_fit_icl_memory.py)
GRADIENT_COPIES = 2
#: graph units each Hessian-vector product evaluated at once adds (the tangents of the forward pass and of the
#: gradient's graph): measured 2.75-2.85 graph units per direction
HVP_COPIES = 4


def memory_estimate(n_sequences: int, length: int, m: int, directions: int = 0) -> int:
    """Bound (bytes) on the peak memory of :func:`fit_icl` for one length group: the exact recursion's
    gradient and, with ``directions > 0``, a Hessian pass evaluating that many Hessian-vector products at once.

    A graph unit is ``GRAPH_BYTES_PER_CELL`` bytes for each of the ``B (n+1)^(m-1)`` grid cells of each of the
    ``n = length - m`` steps; the bound is ``GRADIENT_COPIES + HVP_COPIES * directions`` units
    (docs/math.md §12.3)."""
    n = max(length - m, 0)
    unit = GRAPH_BYTES_PER_CELL * n_sequences * (n + 1) ** (m - 1) * max(n, 1)
    return int(unit * (GRADIENT_COPIES + HVP_COPIES * directions))


def _torch():
    import torch

    return torch


def log_evidence_torch(y: Any, pi: Any, alpha: Any, m: int):
    """Exact ``log p(y[:, m:] | y[:, :m], pi, alpha)`` for sequences of one length, differentiable in pi, alpha.

    Parameters
    ----------
    y : LongTensor (B, T), T >= m
    pi : Tensor (S, S)
    alpha : Tensor (m,)

    Returns
    -------
    Tensor (B,)

    The count-state weights live on a dense grid over ``(k_1, ..., k_{m-1})`` (``k_m = i - sum``), size
    ``(n+1)^(m-1)``; the step divides by ``alpha_0 + i`` so the grid sums to the evidence, and rescales by
    its sum (the log of the scale is accumulated), so nothing underflows.
    """
    torch = _torch()
    B, T = y.shape
    n = T - m
    dt = pi.dtype
    if n <= 0:
        return torch.zeros(B, dtype=dt)
    t = torch.arange(m, T)
    g = torch.arange(1, m + 1)
    C = pi[y[:, t[:, None] - g[None, :]], y[:, t][:, :, None]]  # (B, n, m): C[i, g-1] = pi[y[t-g], y[t]]
    a0 = alpha.sum()
    shape = (B,) + (n + 1,) * (m - 1)
    W = torch.zeros(shape, dtype=dt)
    W[(slice(None),) + (0,) * (m - 1)] = 1.0
    grids = torch.meshgrid(*[torch.arange(n + 1, dtype=dt)] * (m - 1), indexing="ij") if m > 1 else []
    ksum = sum(grids) if m > 1 else torch.zeros((), dtype=dt)
    logscale = torch.zeros(B, dtype=dt)
    for i in range(n):
        c = C[:, i, :]  # (B, m)
        new = torch.zeros_like(W)
        for j in range(m - 1):  # lags 1..m-1: shift the grid by one along axis j (k_j -> k_j + 1)
            src = [slice(None)] * (m - 1)
            dst = [slice(None)] * (m - 1)
            src[j], dst[j] = slice(0, n), slice(1, n + 1)
            # alpha + (k - 1), not (alpha + k) - 1: the latter rounds a tiny alpha away at k = 1
            contrib = W[(slice(None),) + tuple(src)] * (alpha[j] + (grids[j][tuple(dst)] - 1.0))
            new[(slice(None),) + tuple(dst)] = new[(slice(None),) + tuple(dst)] + \
                contrib * c[:, j].reshape((B,) + (1,) * (m - 1))
        # lag m: k_m = (i + 1) - sum(k_1..k_{m-1}) after the step, grid position unchanged
        km = (i + 1) - ksum
        fac = torch.clamp(alpha[m - 1] + (km - 1.0), min=0.0) * (km >= 1)
        new = new + W * fac * c[:, m - 1].reshape((B,) + (1,) * (m - 1))
        new = new / (a0 + i)
        s = new.reshape(B, -1).sum(dim=1)
        W = new / s.reshape((B,) + (1,) * (m - 1))
        logscale = logscale + torch.log(s)
    return logscale


@dataclass
class ICLFit:
    """Result of :func:`fit_icl`.

    Attributes
    ----------
    pi : ndarray (S, S)
    alpha : ndarray (m,)
    objective : float
        ``sum_b log p(y_b[m:] | y_b[:m], pi, alpha)`` at the estimate.
    history : ndarray
        Objective at every accepted L-BFGS iterate (nondecreasing).
    n_iter : int
    converged : bool
    se_pi, se_alpha : ndarray
        Standard errors from the observed information (``inf`` where it is singular).
    n_sequences : int

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> from mtdmath import fitting
    >>> pi = mtdmath.random_transition_matrix(3, concentration=0.5, rng=0)
    >>> tokens, _ = mtdmath.sample_icl(pi, np.array([2.0, 1.0]), 20, 50, rng=1)
    >>> res = fitting.fit_icl(tokens, 2)
    >>> type(res).__name__, res.n_sequences, res.se_pi.shape
    ('ICLFit', 50, (3, 3))
    >>> print(bool(np.all(np.diff(res.history) >= 0)))  # the objective never decreases
    True
    """

    pi: np.ndarray
    alpha: np.ndarray
    objective: float
    history: np.ndarray
    n_iter: int
    converged: bool
    se_pi: np.ndarray
    se_alpha: np.ndarray
    n_sequences: int
    message: str = ""
    cov: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))

    def posterior_lam(self, sequences: Any, *, level: float = 0.95, max_bytes: float | None = None,
                      samples: int = 100_000, rng: Any = None):
        """Each sequence's own lam under the fitted model: its exact posterior mean and credible intervals.

        In the paper's model every sequence ``b`` has its own ``lam_b ~ Dirichlet(alpha)``; given its tokens
        the posterior of ``lam_b`` is the finite Dirichlet mixture of docs/math.md §4, computed by the
        library's Pólya-urn recursion (:class:`mtdmath.bayes.PolyaLevels`, the recursion of
        :func:`mtdmath.posterior_mean`) at the fitted ``pi`` and ``alpha``, each sequence conditioned on its
        first ``m`` tokens. The credible interval of ``lam_g`` is the equal-tailed interval of its exact
        marginal posterior, the Beta mixture ``Σ_j P(k_g = j | y) Beta(alpha_g + j, α₀ + n - alpha_g - j)``
        (k_g: the number of transitions drawn from lag g), inverted by bisection (docs/math.md §7.4.3): no
        normal or moment approximation. Where the recursion for one sequence needs more than ``max_bytes``,
        that sequence falls back to Monte Carlo (importance sampling from the prior): the mean is
        :func:`mtdmath.posterior_mean_mc`'s with its standard error, the interval the weighted quantiles of
        the draws; ``method`` says which route each sequence took.

        Parameters
        ----------
        sequences : 2-D int array (rows are sequences) or list of 1-D int arrays
            Codes in ``0..S-1``, each of length >= m (a sequence of exactly m tokens gets the prior).
        level : float
            Credible level in (0, 1).
        max_bytes : float, optional
            Memory budget of the exact recursion (default :data:`mtdmath.bayes.DEFAULT_MAX_BYTES`); sequences
            are processed in batches that fit it.
        samples : int
            Prior draws of the Monte Carlo fallback.
        rng : None, int or numpy Generator
            Seeds the fallback.

        Returns
        -------
        PosteriorLam
            ``mean``, ``lower``, ``upper``, ``stderr`` (B, m), ``method`` (B,) in ``{"exact", "mc"}``.

        Examples
        --------
        >>> import numpy as np
        >>> import mtdmath
        >>> from mtdmath.fitting import fit_icl
        >>> pi = mtdmath.random_transition_matrix(3, rng=0)
        >>> Y, lam = mtdmath.sample_icl(pi, np.array([1.0, 1.0]), 40, 30, rng=1)
        >>> post = fit_icl(Y, 2).posterior_lam(Y)
        >>> post.mean.shape, sorted(set(post.method.tolist())), bool(np.all(post.lower <= post.mean))
        ((30, 2), ['exact'], True)
        """
        from .._validate import check_pi
        from ..bayes import DEFAULT_MAX_BYTES as exact_budget
        from ._data import to_numpy
        from ._posterior import check_level, lag_factor_groups, posterior_lam

        level = check_level(level)
        max_bytes = check_budget(exact_budget if max_bytes is None else max_bytes)
        pi = check_pi(self.pi, "pi")
        alpha = check_alpha(self.alpha, "alpha")
        m = alpha.shape[0]
        seqs = _as_sequences(to_numpy(sequences))
        groups = lag_factor_groups(seqs, pi, tuple(range(1, m + 1)), m)
        return posterior_lam(groups, len(seqs), alpha, level, max_bytes, samples, rng)


def _groups(seqs: list[np.ndarray], m: int) -> list[np.ndarray]:
    by_len: dict[int, list[np.ndarray]] = {}
    for i, s in enumerate(seqs):
        if s.shape[0] < m:
            raise ValueError(f"sequences[{i}] has length {s.shape[0]}, shorter than m = {m}")
        by_len.setdefault(int(s.shape[0]), []).append(s)
    return [np.stack(v) for v in by_len.values()]


def fit_icl(sequences: Any, m: int, *, n_symbols: int | None = None, alpha: Any = None, init_pi: Any = None,
            init_alpha: Any = None, tol: float = 1e-10, max_iter: int = 1000,
            max_bytes: int = DEFAULT_MAX_BYTES) -> ICLFit:
    """Estimate the shared pi and the Dirichlet alpha of the paper's model from many sequences.

    Parameters
    ----------
    sequences : 2-D int array (rows are sequences) or list of 1-D int arrays
        Each sequence has its own latent lam ~ Dirichlet(alpha); the objective conditions on each
        sequence's first ``m`` tokens.
    m : int
        Order (lags 1..m).
    n_symbols : int, optional
    alpha : array (m,), optional
        Hold alpha fixed at this value and fit pi only (e.g. a huge concentration ``c * lam``, the limit in
        which every sequence shares ``lam``).
    init_pi, init_alpha : optional
        Start; default pi from the shared-pi :func:`mtdmath.fitting.fit` on the pooled sequences and alpha = 1.
    tol : float
        Relative decrease tolerance of L-BFGS-B (``ftol``) and gradient tolerance (``gtol`` = tol * N, N the
        number of transitions).
    max_iter : int
    max_bytes : float
        Memory budget in bytes (``inf``: none; nan, zero and negative values are refused). The bound
        :func:`memory_estimate` of the largest length group's gradient and of its Hessian one direction at a time
        must fit, else a ``ValueError`` before any work says how many GiB are needed (no Monte Carlo
        fallback); the Hessian evaluates as many directions at once as the budget allows.

    Returns
    -------
    ICLFit

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> from mtdmath import fitting
    >>> pi = mtdmath.random_transition_matrix(3, concentration=0.5, rng=0)
    >>> tokens, lam = mtdmath.sample_icl(pi, np.array([2.0, 1.0]), 30, 200, rng=1)
    >>> res = fitting.fit_icl(tokens, 2)
    >>> res.converged, res.pi.shape, res.alpha.shape
    (True, (3, 3), (2,))
    >>> print(bool(np.abs(res.pi - pi).max() < 0.15))  # 200 sequences of 30 tokens
    True
    """
    torch = _torch()
    from scipy.optimize import minimize

    from ._data import to_numpy as _to_numpy
    from .mtd import fit as _fit

    m = check_int(m, "m", minimum=1)
    tol = check_float(tol, "tol", positive=True)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    max_bytes = check_budget(max_bytes)
    seqs = _as_sequences(_to_numpy(sequences))
    if not any(s.size for s in seqs):
        raise ValueError("sequences is empty: no tokens to fit")
    top = max(int(s.max()) for s in seqs if s.size)
    S = top + 1 if n_symbols is None else check_int(n_symbols, "n_symbols", minimum=1)
    if S <= top:
        raise ValueError(f"n_symbols must exceed the largest token {top} (got n_symbols = {S})")
    groups = _groups(seqs, m)
    n_free = S * (S - 1) + (m if alpha is None else 0)  # unconstrained coordinates: Hessian directions
    # the largest group's gradient must fit, and the Hessian at least one direction at a time; the chunk of
    # directions evaluated together is the largest that fits (docs/math.md §12.3)
    worst = max(groups, key=lambda G: memory_estimate(G.shape[0], G.shape[1], m))
    need = memory_estimate(worst.shape[0], worst.shape[1], m, directions=1)
    if need > max_bytes:
        raise ValueError(f"max_bytes: the exact count-state recursion for {worst.shape[0]} sequences of length "
                         f"{worst.shape[1]} at m = {m} needs about {need / 2**30:.2f} GiB for its gradient and "
                         f"Hessian, above max_bytes = {max_bytes / 2**30:.2f} GiB; raise max_bytes, or fit "
                         "fewer or shorter sequences (no Monte Carlo fallback is used)")
    base = memory_estimate(worst.shape[0], worst.shape[1], m)
    per_direction = memory_estimate(worst.shape[0], worst.shape[1], m, directions=1) - base
    chunk = int(max(1, min(n_free, (max_bytes - base) // per_direction))) if math.isfinite(max_bytes) else n_free
    N = sum(G.shape[0] * (G.shape[1] - m) for G in groups)
    fixed_alpha = None if alpha is None else check_alpha(alpha, "alpha", m)
    if init_pi is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            pi0 = _fit(seqs, m, n_symbols=S, restarts=1).pi_
    else:
        pi0 = check_pi(init_pi, "init_pi")
        if pi0.shape != (S, S):
            raise ValueError(f"init_pi must have shape ({S}, {S}) (got {pi0.shape})")
    a0 = np.ones(m) if init_alpha is None else check_alpha(init_alpha, "init_alpha", m)
    if fixed_alpha is not None:
        a0 = fixed_alpha
    pi0 = np.clip(pi0, 1e-12, None)
    logits0 = np.log(pi0) - np.log(pi0[:, -1:])  # last logit of each row fixed at 0
    x0 = logits0[:, :-1].ravel()
    if fixed_alpha is None:
        x0 = np.concatenate([x0, np.log(a0)])
    Yt = [torch.as_tensor(G, dtype=torch.long) for G in groups]

    def unpack(x):
        U = torch.cat([x[: S * (S - 1)].reshape(S, S - 1), torch.zeros(S, 1, dtype=x.dtype)], dim=1)
        pi = torch.softmax(U, dim=1)
        al = torch.exp(x[S * (S - 1) :]) if fixed_alpha is None else torch.as_tensor(fixed_alpha)
        return pi, al

    def group_objective(x, Y):
        pi, al = unpack(x)
        return log_evidence_torch(Y, pi, al, m).sum()

    def objective(x):
        return sum(group_objective(x, Y) for Y in Yt)

    last: dict = {}

    def fg(xn):
        # one length group's graph at a time: the peak is the largest group's, as memory_estimate assumes
        f, gr = 0.0, np.zeros_like(xn)
        for Y in Yt:
            x = torch.tensor(xn, dtype=torch.float64, requires_grad=True)
            fy = group_objective(x, Y)
            (gy,) = torch.autograd.grad(fy, x)
            f, gr = f + float(fy.detach()), gr + gy.numpy()
        last["x"], last["f"] = np.array(xn, copy=True), f
        return -f, -gr

    history = [-fg(x0)[0]]

    def cb(xk):
        # the accepted iterate is the last point evaluated by the line search
        history.append(last["f"] if np.array_equal(last["x"], xk) else -fg(xk)[0])

    res = minimize(fg, x0, jac=True, method="L-BFGS-B", callback=cb,
                   options={"maxiter": max_iter, "ftol": tol, "gtol": tol * N, "maxcor": 20})
    x = torch.tensor(res.x, dtype=torch.float64)
    pi, al = unpack(x)
    obj = float(objective(x).detach())
    nfev = int(res.nfev)
    if obj > history[-1]:
        history.append(obj)
    if not res.success:
        warnings.warn(f"fit_icl: L-BFGS-B stopped without converging ({res.message})", RuntimeWarning, stacklevel=2)
    # observed information in the unconstrained coordinates, delta method to (pi, alpha)
    # forward-over-reverse Hessian-vector products, ``chunk`` directions at a time and one group at a time,
    # so the peak stays within max_bytes (memory_estimate)
    Hx = np.zeros((x.shape[0], x.shape[0]))
    eye = torch.eye(x.shape[0], dtype=torch.float64)
    for Y in Yt:
        def hvp(v, Y=Y):
            return torch.func.jvp(torch.func.grad(lambda z: group_objective(z, Y)), (x,), (v,))[1]

        Hx += torch.func.vmap(hvp, chunk_size=chunk)(eye).detach().numpy()
    info = -(Hx + Hx.T) / 2
    ev, V = np.linalg.eigh(info)
    good = ev > 1e-9 * ev.max()  # a flat direction: an entry of pi estimated on the boundary (logit -> -inf)
    cov_x = (V[:, good] / ev[good]) @ V[:, good].T
    J = torch.autograd.functional.jacobian(
        lambda z: torch.cat([unpack(z)[0].reshape(-1), unpack(z)[1].reshape(-1)]), x).numpy()
    cov = J @ cov_x @ J.T
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    # a quantity that moves along a flat direction is not estimable from these data: infinite se
    leak = np.linalg.norm(J @ V[:, ~good], axis=1) > 1e-3 * np.maximum(np.linalg.norm(J, axis=1), 1e-300)
    se[leak] = np.inf
    se_alpha = se[S * S :] if fixed_alpha is None else np.zeros(m)
    return ICLFit(pi=pi.detach().numpy(), alpha=al.detach().numpy().astype(np.float64), objective=obj,
                  history=np.asarray(history), n_iter=int(res.nit), converged=bool(res.success),
                  se_pi=se[: S * S].reshape(S, S), se_alpha=se_alpha, n_sequences=len(seqs),
                  message=f"{res.message} ({nfev} evaluations)", cov=cov)
