"""Per-sequence lam of the paper's model: lag factors per sequence, the exact posterior with credible intervals,
and its Monte Carlo fallback (docs/math.md §4, §7.4.3).

Shared by :meth:`mtdmath.fitting.ICLFit.posterior_lam` and :meth:`mtdmath.fitting.MTD.per_sequence_lam`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import as_rng, check_alloc, check_float, check_int

#: bisection steps of a credible bound in [0, 1]: 2**-60 is below float64's resolution near 1
BISECTION_STEPS = 60
#: prior draws that estimate each Monte Carlo credible bound
MC_SAMPLES = 20_000
#: floats of one block of the Monte Carlo bounds' likelihood products (16 MiB): long sequences take fewer draws
#: at a time, so the fallback's memory does not grow with the length
MC_WORK_FLOATS = 2**21


@dataclass
class PosteriorLam:
    """Per-sequence posterior of lam under a Dirichlet(alpha) prior (docs/math.md §7.4.3).

    Attributes
    ----------
    mean : ndarray (B, m)
        Posterior mean ``E[lam | y_b]`` of each sequence.
    lower, upper : ndarray (B, m)
        Equal-tailed credible interval of each component at ``level``: the ``(1 - level) / 2`` and
        ``(1 + level) / 2`` quantiles of the marginal posterior of ``lam_g``.
    stderr : ndarray (B, m)
        Monte Carlo standard error of ``mean`` (0 where the exact recursion ran).
    method : ndarray (B,) of str
        ``"exact"`` (the Pólya-urn recursion; the interval is the exact Beta-mixture quantile) or ``"mc"``
        (the recursion's memory exceeded ``max_bytes``: importance sampling from the prior, mean by
        :func:`mtdmath.posterior_mean_mc`, interval from weighted quantiles of the draws).
    level : float
    n_transitions : ndarray (B,)
        Transitions each posterior conditions on.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> from mtdmath import fitting
    >>> pi = mtdmath.random_transition_matrix(3, concentration=0.5, rng=0)
    >>> tokens, lam = mtdmath.sample_icl(pi, np.array([1.0, 1.0]), 30, 4, rng=1)
    >>> known = fitting.ICLFit(pi=pi, alpha=np.array([1.0, 1.0]), objective=0.0, history=np.zeros(1), n_iter=0,
    ...                        converged=True, se_pi=np.zeros((3, 3)), se_alpha=np.zeros(2), n_sequences=4)
    >>> post = known.posterior_lam(tokens, level=0.9)
    >>> type(post).__name__, post.mean.shape, post.n_transitions.tolist()
    ('PosteriorLam', (4, 2), [28, 28, 28, 28])
    >>> print(bool(np.all((post.lower <= post.mean) & (post.mean <= post.upper))))
    True
    """

    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    stderr: np.ndarray
    method: np.ndarray
    level: float
    n_transitions: np.ndarray


def check_budget(max_bytes: Any) -> float:
    """``max_bytes``: a positive number of bytes or ``inf`` (no budget); nan, 0 and negative values are refused."""
    if isinstance(max_bytes, (str, bytes, bool, np.bool_)):
        raise ValueError(f"max_bytes must be a positive number of bytes or inf (got {max_bytes!r})")
    try:
        v = float(max_bytes)
    except (TypeError, ValueError):
        raise ValueError(f"max_bytes must be a positive number of bytes or inf (got {max_bytes!r})") from None
    if math.isnan(v) or v <= 0:
        raise ValueError(f"max_bytes must be a positive number of bytes or inf (got {v})")
    return v


def check_level(level: Any) -> float:
    level = check_float(level, "level", positive=True)
    if not level < 1.0:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    return level


def lag_factor_groups(seqs: list[np.ndarray], pi: np.ndarray, lags: tuple[int, ...], start: int,
                      name: str = "sequences", min_transitions: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The lag factors ``C[i, j] = pi[y[t_i - lags[j]], y[t_i]]``, ``t_i = start..T-1`` (docs/math.md §2), of
    every sequence, grouped by length: a list of (sequence indices (b,), C (b, n, k)). Tokens are checked
    against pi's states and every sequence must have ``start`` tokens and ``min_transitions`` transitions."""
    S = pi.shape[0]
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        if s.shape[0] < start + min_transitions:
            raise ValueError(f"{name}[{i}] has length {s.shape[0]}: it needs more than {start} tokens "
                             f"(the first {start} condition the rest)" if min_transitions else
                             f"{name}[{i}] has length {s.shape[0]}, shorter than the {start} tokens it is "
                             "conditioned on")
        if s.size and int(s.max()) >= S:
            raise ValueError(f"{name}[{i}] holds the token {int(s.max())}, outside the model's states 0..{S - 1}")
        by_len.setdefault(int(s.shape[0]), []).append(i)
    lag = np.asarray(lags, dtype=np.int64)
    check_alloc(sum(s.shape[0] for s in seqs) * len(lags), 8, name, "the lag factors of every sequence")
    out = []
    for T, idx in by_len.items():
        Y = np.stack([seqs[i] for i in idx])
        t = np.arange(start, T)
        C = pi[Y[:, t[:, None] - lag[None, :]], Y[:, t][:, :, None]]
        zero = np.all(C == 0, axis=2)  # a transition no lag can produce: the data are impossible under pi
        if np.any(zero):
            b, i = np.argwhere(zero)[0]
            raise ValueError(f"{name}[{idx[b]}]: its transition into position {start + i} has probability 0 "
                             "under pi at every lag (impossible data)")
        out.append((np.asarray(idx), C))
    return out


def beta_mixture_quantiles(weights: np.ndarray, alpha: np.ndarray, n: int, probs: tuple[float, ...]
                           ) -> list[np.ndarray]:
    """Quantiles of the marginals ``Σ_j weights[b, g, j] Beta(alpha_g + j, α₀ + n - alpha_g - j)`` (m >= 2) by
    bisection on the exact mixture CDF (:func:`scipy.special.betainc`); one (B, m) array per probability."""
    from scipy.special import betainc

    a0 = float(alpha.sum())
    j = np.arange(n + 1, dtype=np.float64)
    a = alpha[None, :, None] + j[None, None, :]  # (1, m, n + 1)
    b = (a0 - alpha)[None, :, None] + (n - j)[None, None, :]
    out = []
    for p in probs:
        lo, hi = np.zeros(weights.shape[:2]), np.ones(weights.shape[:2])
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            below = (weights * betainc(a, b, mid[:, :, None])).sum(axis=2) < p
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        out.append((lo + hi) / 2)
    return out


def weighted_quantiles(C: np.ndarray, alpha: np.ndarray, probs: tuple[float, ...], samples: int,
                       gen: np.random.Generator) -> list[np.ndarray]:
    """Monte Carlo quantiles of each lam_g's posterior: ``samples`` prior draws ``lam_k ~ Dirichlet(alpha)``
    weighted by ``Π_i C[b, i]·lam_k`` (self-normalised importance sampling, consistent as samples grows)."""
    B, n, m = C.shape
    lam = gen.dirichlet(alpha, size=samples)  # (K, m)
    out = [np.empty((B, m)) for _ in probs]
    step = max(1, MC_WORK_FLOATS // max(n, 1))  # draws per (n, step) block of C @ lam
    for bi in range(B):
        logw = np.empty(samples)
        for a in range(0, samples, step):
            with np.errstate(divide="ignore"):
                logw[a : a + step] = np.log(C[bi] @ lam[a : a + step].T).sum(axis=0)
        w = np.exp(logw - logw.max())
        w /= w.sum()
        for g in range(m):
            order = np.argsort(lam[:, g])
            cdf = np.cumsum(w[order])
            for q, p in zip(out, probs):
                q[bi, g] = lam[order[min(int(np.searchsorted(cdf, p)), samples - 1)], g]
    return out


def posterior_lam(groups: list[tuple[np.ndarray, np.ndarray]], n_seq: int, alpha: np.ndarray, level: float | None,
                  max_bytes: float, samples: int, rng: Any) -> PosteriorLam:
    """Exact posterior mean and credible intervals of every sequence's lam (docs/math.md §7.4.3), by the Pólya-urn
    recursion (:class:`mtdmath.bayes.PolyaLevels`) in batches that fit ``max_bytes``; a sequence whose
    recursion alone exceeds it falls back to Monte Carlo (``samples`` prior draws). ``level=None``: the means
    only (``lower``/``upper`` are NaN)."""
    import mtdmath
    from ..bayes import PolyaLevels, levels_bytes

    m = alpha.shape[0]
    samples = check_int(samples, "samples", minimum=1)
    gen = as_rng(rng)
    probs = () if level is None else ((1.0 - level) / 2.0, (1.0 + level) / 2.0)
    mean, stderr = np.zeros((n_seq, m)), np.zeros((n_seq, m))
    lower, upper = np.full((n_seq, m), np.nan), np.full((n_seq, m), np.nan)
    method = np.empty(n_seq, dtype=object)
    n_tr = np.zeros(n_seq, dtype=np.int64)
    for idx, C in groups:
        n = C.shape[1]
        n_tr[idx] = n
        if m == 1:  # one lag: lam = (1,) surely
            mean[idx], lower[idx], upper[idx], method[idx] = 1.0, 1.0, 1.0, "exact"
            continue
        if levels_bytes(1, n, m) > max_bytes:
            mu, se = mtdmath.posterior_mean_mc(C, alpha, samples=samples, rng=gen, max_bytes=max_bytes)
            mean[idx], stderr[idx], method[idx] = mu, se, "mc"
            if probs:
                lower[idx], upper[idx] = weighted_quantiles(C, alpha, probs, min(samples, MC_SAMPLES), gen)
            continue
        batch = 1
        while batch < len(idx) and levels_bytes(2 * batch, n, m) <= max_bytes:
            batch *= 2
        for s in range(0, len(idx), batch):
            rows = idx[s : s + batch]
            levels = PolyaLevels(C[s : s + batch], alpha, max_bytes)
            for _ in levels:
                pass
            mu, _ = levels.moments()
            mean[rows], method[rows] = np.asarray(mu), "exact"
            if probs:
                lower[rows], upper[rows] = beta_mixture_quantiles(levels.count_marginals(), alpha, n, probs)
    return PosteriorLam(mean, lower, upper, stderr, method.astype(str), level, n_tr)
