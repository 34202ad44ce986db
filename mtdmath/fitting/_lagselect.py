"""hdMTD's lag-selection methods on transition counts: CUT, forward stepwise (FS), FS then CUT (FSC), and the
oscillations of the lags (Ost & Takahashi 2023, "Sparse Markov models for high-dimensional inference", JMLR
24(279); docs/math.md §10.2-§10.4).

Every statistic is a function of the counts ``N[x_L, a]`` of (symbols at the lags L, next symbol) over the
transitions of the data, each sequence conditioned on its first ``max_lag`` tokens (docs/math.md §7.1), so
every candidate lag set is compared on the same transitions.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .._validate import check_alloc, check_float, check_int, float_array
from ._data import as_sequences

__all__ = ["cut", "cut_statistics", "cut_statistics_from_counts", "estimate_oscillations", "forward_stepwise",
           "fs_nu_from_counts", "fsc", "lag_design", "oscillation_estimates_from_counts", "oscillations"]


# -- data -------------------------------------------------------------------------------------------------
def _token_arrays(sequences: Any, n_symbols: int) -> list[np.ndarray]:
    """The data layer's sequences (:func:`._data.as_sequences`), each checked against ``n_symbols``."""
    seqs = as_sequences(sequences, "sequences")
    for i, a in enumerate(seqs):
        if a.size and a.max() >= n_symbols:
            raise ValueError(f"sequences[{i}] holds the token {a.max()}, outside 0..n_symbols-1 = 0..{n_symbols - 1}")
    return seqs


def lag_design(sequences: Any, n_symbols: int, max_lag: int) -> np.ndarray:
    """The transitions of the data as rows ``(y[t], y[t-1], ..., y[t-max_lag])``.

    Parameters
    ----------
    sequences : int array (T,), (B, T) or list of int arrays (T_b,)
        Codes in ``0..n_symbols-1``; each sequence is conditioned on its first ``max_lag`` tokens.
    n_symbols : int
        S.
    max_lag : int
        d, the window.

    Returns
    -------
    ndarray (N, max_lag + 1) int64
        Column 0 is the next symbol, column l the symbol at lag l; N = sum_b max(T_b - d, 0).

    Raises
    ------
    ValueError
        Naming the argument, on a bad argument or when no sequence is longer than ``max_lag``.

    Examples
    --------
    >>> lag_design([0, 1, 1, 0], 2, 2).tolist()
    [[1, 1, 0], [0, 1, 1]]
    """
    S = check_int(n_symbols, "n_symbols", minimum=2)
    d = check_int(max_lag, "max_lag", minimum=1)
    seqs = _token_arrays(sequences, S)
    blocks = [np.stack([y[d - l: y.shape[0] - l] for l in range(d + 1)], axis=1) for y in seqs if y.shape[0] > d]
    if not blocks:
        longest = max(y.shape[0] for y in seqs)
        raise ValueError(f"max_lag = {d} leaves no transition: the longest sequence has {longest} tokens")
    return np.concatenate(blocks).astype(np.int64)


def _grouped(X: np.ndarray, S: int, other: Sequence[int], j: int) -> np.ndarray:
    """Counts ``T[g, b, a]`` over the transitions: g an OBSERVED context of the lags ``other`` (one group when
    there are none), b the symbol at lag j, a the next symbol. Only observed contexts are stored, so the
    memory is O(min(N, S^len(other)) S^2) however long the window."""
    K, n = len(other), X.shape[0]
    if K and K * math.log(S) < 62 * math.log(2):  # the context fits an int64 key
        key = np.zeros(n, dtype=np.int64)
        for l in other:
            key = key * S + X[:, l]
        if S ** K <= n:  # few possible contexts: the key is the group (unobserved ones stay empty)
            g, G = key, S ** K
        else:
            _, g = np.unique(key, return_inverse=True)
            G = int(g.max()) + 1
    elif K:
        _, g = np.unique(X[:, list(other)], axis=0, return_inverse=True)
        G = int(g.max()) + 1
    else:
        g, G = np.zeros(n, dtype=np.int64), 1
    g = g.reshape(-1)
    # the table and the statistics' work arrays (pairwise distances: S times the table)
    check_alloc(G * S * S * (S + 2), 8, "max_lag", f"count tables of {G} observed contexts x S^2 = {S * S}")
    T = np.zeros((G, S, S))
    np.add.at(T, (g, X[:, j], X[:, 0]), 1.0)
    return T


def _dense_tables(N: np.ndarray):
    """The tables of :func:`_grouped` from a dense count array N (S,) * (K + 1), one per lag axis."""
    S = N.shape[-1]
    return [np.moveaxis(N, i, -2).reshape(-1, S, S) for i in range(N.ndim - 1)]


def _conditionals(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N(x) = sum_a T[..., a], p_hat(a | x)) with p_hat uniform where N(x) = 0 (never used there)."""
    Nx = T.sum(axis=-1)
    S = T.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(Nx[..., None] > 0, T / Nx[..., None], 1.0 / S)
    return Nx, q


def _pair_tv(q: np.ndarray) -> np.ndarray:
    """dTV(q[..., b, :], q[..., c, :]) for every pair (b, c): shape (..., S, S)."""
    return 0.5 * np.abs(q[..., :, None, :] - q[..., None, :, :]).sum(axis=-1)


def _oscillation_kernel(T: np.ndarray, n: float) -> float:
    """docs/math.md eq-oscillation-hat for one lag, T (G, S, S) grouped by the other lags' context."""
    Nx, q = _conditionals(T)
    seen = (Nx[:, :, None] > 0) & (Nx[:, None, :] > 0)
    NZ = Nx.sum(axis=-1)[:, None, None]  # N(x_Z)
    return float((np.where(seen, _pair_tv(q), 0.0) * NZ).sum(axis=0).max() / n)


def _cut_kernel(T: np.ndarray, alpha: float, mu: float, xi: float) -> float:
    """docs/math.md eq-cut for one lag, T (G, S, S) grouped by the other lags' context."""
    S = T.shape[-1]
    c = mu / (2 * mu - math.expm1(mu))
    Nx, q = _conditionals(T)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (np.sqrt(alpha * (1 + xi) / (2 * Nx)) * np.sqrt((q + alpha / Nx[..., None]) * c).sum(-1)
             + alpha * S / (6 * Nx))
    t = np.where(Nx > 0, t, np.inf)  # an unobserved context has no estimate: its threshold is infinite
    gap = _pair_tv(q) - t[:, :, None] - t[:, None, :]
    return float(gap[:, ~np.eye(S, dtype=bool)].max())


def _nu_kernel(T: np.ndarray, n: float) -> float:
    """docs/math.md eq-fs-nu, T (G, S, S) grouped by the chosen lags' context."""
    S = T.shape[-1]
    Nx, q = _conditionals(T)
    P = Nx / n  # P(x_C b_j)
    PC = P.sum(axis=-1)  # P(x_C)
    pair = P[:, :, None] * P[:, None, :] * _pair_tv(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(PC > 0, pair[:, np.triu(np.ones((S, S), dtype=bool), 1)].sum(axis=-1) / PC, 0.0)
    return float(per.sum())


def _check_lag_set(lags: Any, d: int | None, name: str) -> tuple[int, ...]:
    """Distinct positive lags, increasing, each <= d (no bound when d is None)."""
    if isinstance(lags, (str, bytes)) or np.ndim(lags) != 1 or len(lags) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of positive lags (got {lags!r})")
    out = tuple(sorted(check_int(l, name, minimum=1) for l in lags))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must hold distinct lags (got {lags!r})")
    if d is not None and out[-1] > d:
        raise ValueError(f"{name} must hold lags in 1..max_lag = {d} (got {lags!r})")
    return out


# -- oscillations -------------------------------------------------------------------------------------------
def oscillations(pi: Any, lam: Any) -> np.ndarray:
    """Oscillation of each lag of an MTD law (docs/math.md §10.2).

    ``delta_j = lam[j] * max_{b, c} dTV(pi_j[b, :], pi_j[c, :])``: the largest total-variation change of the
    next-token law when only the symbol at lag ``lags[j]`` changes (whatever the other lags hold, and whether
    or not there is an order-0 component).

    Parameters
    ----------
    pi : array (S, S) or (k, S, S)
        One shared row-stochastic matrix or one per lag.
    lam : array (k,)
        Lag weights (the order-0 weight, if any, is not needed).

    Returns
    -------
    ndarray (k,)

    Examples
    --------
    >>> import numpy as np
    >>> oscillations(np.array([[0.9, 0.1], [0.2, 0.8]]), [0.75, 0.25]).round(12).tolist()
    [0.525, 0.175]
    """
    lam = float_array(lam, "lam")
    if lam.ndim != 1 or lam.shape[0] < 1 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError(f"lam must be 1-D, nonnegative and finite (got {lam!r})")
    pi = float_array(pi, "pi")
    k = lam.shape[0]
    if pi.ndim == 2:
        pi = np.broadcast_to(pi, (k,) + pi.shape)
    if pi.ndim != 3 or pi.shape[0] != k or pi.shape[1] != pi.shape[2]:
        raise ValueError(f"pi must have shape (S, S) or (k={k}, S, S) (got {pi.shape})")
    if not np.all(np.isfinite(pi)) or np.any(pi < 0) or np.any(np.abs(pi.sum(-1) - 1.0) > 1e-8):
        raise ValueError("pi must hold row-stochastic matrices (nonnegative rows summing to 1)")
    return lam * _pair_tv(pi).max(axis=(-2, -1))


def estimate_oscillations(sequences: Any, n_symbols: int, lags: Sequence[int], *, max_lag: int | None = None
                          ) -> np.ndarray:
    """hdMTD's plug-in estimate of the oscillation of each lag in ``lags`` (docs/math.md §10.2).

    For lag j with the other lags Z = lags \\ {j}:
    ``max_{b, c} (1 / N) sum_{x_Z} N(x_Z) dTV(p_hat(. | b_j x_Z), p_hat(. | c_j x_Z))``, the sum over the
    contexts x_Z where both conditional laws are observed.

    Parameters
    ----------
    sequences : int array (T,), (B, T) or list of int arrays
    n_symbols : int
    lags : sequence of int
        The lag set (its estimate is consistent when it contains the true lags).
    max_lag : int, optional
        Window that conditions every sequence, default ``max(lags)``.

    Returns
    -------
    ndarray (len(lags),), in increasing lag order.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1])
    >>> estimate_oscillations(y, 2, [1, 2]).round(6).tolist()  # y[t] = 1 - y[t-2]: lag 1 does not matter
    [0.0, 1.0]
    """
    lags_t = _check_lag_set(lags, None, "lags")
    d = lags_t[-1] if max_lag is None else check_int(max_lag, "max_lag", minimum=lags_t[-1])
    X = lag_design(sequences, n_symbols, d)
    S = int(n_symbols)
    return np.array([_oscillation_kernel(_grouped(X, S, lags_t[:i] + lags_t[i + 1:], l), X.shape[0])
                     for i, l in enumerate(lags_t)])


def _check_count_table(N: Any) -> np.ndarray:
    N = np.asarray(float_array(N, "N"), dtype=np.float64)
    S = N.shape[-1] if N.ndim else 0
    if N.ndim < 2 or S < 2 or any(s != S for s in N.shape):
        raise ValueError(f"N must have shape (S,) * (K + 1) with K >= 1 lags and S >= 2 (got {N.shape})")
    if not np.all(np.isfinite(N)) or np.any(N < 0) or N.sum() <= 0:
        raise ValueError("N must hold nonnegative finite counts with a positive total")
    check_alloc(N.size * (S + 1), 8, "N", "pairwise distances over the count table")
    return N


def oscillation_estimates_from_counts(N: Any) -> np.ndarray:
    """:func:`estimate_oscillations` on a count table (docs/math.md §10.2).

    Parameters
    ----------
    N : array (S,) * (K + 1)
        ``N[x_1, ..., x_K, a]``: (weighted) counts of the symbols at K lags and the next symbol; the total is
        the number of transitions. Counts of disjoint data add (``N_a + N_b``).

    Returns
    -------
    ndarray (K,)
        The estimate for the lag of each of the first K axes.

    Examples
    --------
    >>> import numpy as np
    >>> N = np.zeros((2, 2)); N[0, 0] = N[1, 1] = 5  # next = symbol at the lag
    >>> oscillation_estimates_from_counts(N).tolist()
    [1.0]
    """
    N = _check_count_table(N)
    return np.array([_oscillation_kernel(T, N.sum()) for T in _dense_tables(N)])


# -- CUT --------------------------------------------------------------------------------------------------
def check_cut_constants(alpha: float, mu: float, xi: float) -> tuple[float, float, float]:
    alpha = check_float(alpha, "alpha", positive=True)
    mu = check_float(mu, "mu", positive=True)
    xi = check_float(xi, "xi", positive=True)
    if not 2 * mu - math.expm1(mu) > 0:
        raise ValueError(f"mu must satisfy mu > (e^mu - 1) / 2, i.e. 0 < mu < about 1.2564 (got {mu})")
    return alpha, mu, xi


def cut_statistics(sequences: Any, n_symbols: int, max_lag: int, *, lags: Sequence[int] | None = None,
                   alpha: float = 0.05, mu: float = 1.0, xi: float = 0.5) -> tuple[tuple[int, ...], np.ndarray]:
    """The CUT statistic of each candidate lag: largest distance minus threshold (docs/math.md §10.3).

    For lag j of the candidate set L, Z = L \\ {j}, every context x_Z and every pair of symbols b != c at lag
    j whose contexts are both observed: ``dTV(p_hat(. | b_j x_Z), p_hat(. | c_j x_Z)) - t(b_j x_Z) - t(c_j x_Z)``
    with ``t(x) = sqrt(alpha (1 + xi) / (2 N(x))) sum_a sqrt((p_hat(a | x) + alpha / N(x)) mu / (2 mu - e^mu + 1))
    + alpha S / (6 N(x))``; the statistic is the maximum (``-inf`` when no pair is observed).

    Parameters
    ----------
    sequences : int array (T,), (B, T) or list of int arrays
    n_symbols : int
    max_lag : int
        d: every sequence is conditioned on its first d tokens.
    lags : sequence of int, optional
        Candidate set L, default ``1..max_lag``.
    alpha, mu, xi : float
        Threshold constants (hdMTD's defaults); ``0 < mu`` and ``mu > (e^mu - 1) / 2``.

    Returns
    -------
    lags : tuple of int
        L, increasing.
    statistic : ndarray (len(L),)
        CUT keeps the lags whose statistic is > 0.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.tile([0, 0, 1, 1], 200)  # y[t] = 1 - y[t-2]
    >>> L, stat = cut_statistics(y, 2, 2)
    >>> L, bool(stat[1] > 0)
    ((1, 2), True)
    """
    alpha, mu, xi = check_cut_constants(alpha, mu, xi)
    d = check_int(max_lag, "max_lag", minimum=1)
    L = tuple(range(1, d + 1)) if lags is None else _check_lag_set(lags, d, "lags")
    X = lag_design(sequences, n_symbols, d)
    S = int(n_symbols)
    return L, np.array([_cut_kernel(_grouped(X, S, L[:i] + L[i + 1:], l), alpha, mu, xi) for i, l in enumerate(L)])


def cut_statistics_from_counts(N: Any, *, alpha: float = 0.05, mu: float = 1.0, xi: float = 0.5) -> np.ndarray:
    """:func:`cut_statistics` on a count table (docs/math.md §10.3).

    Parameters
    ----------
    N : array (S,) * (K + 1)
        ``N[x_1, ..., x_K, a]``: (weighted) counts of the symbols at the K candidate lags and the next symbol.
    alpha, mu, xi : float
        As for :func:`cut_statistics`.

    Returns
    -------
    ndarray (K,)
        The CUT statistic of the lag of each of the first K axes.

    Examples
    --------
    >>> import numpy as np
    >>> N = np.zeros((2, 2)); N[0, 0] = N[1, 1] = 500  # next = symbol at the lag
    >>> bool(cut_statistics_from_counts(N)[0] > 0)
    True
    """
    alpha, mu, xi = check_cut_constants(alpha, mu, xi)
    N = _check_count_table(N)
    return np.array([_cut_kernel(T, alpha, mu, xi) for T in _dense_tables(N)])


def cut(sequences: Any, n_symbols: int, max_lag: int, *, lags: Sequence[int] | None = None, alpha: float = 0.05,
        mu: float = 1.0, xi: float = 0.5) -> tuple[int, ...]:
    """hdMTD's CUT: the candidate lags whose CUT statistic is positive (docs/math.md §10.3).

    Parameters and the statistic as in :func:`cut_statistics`.

    Returns
    -------
    tuple of int
        Selected lags, increasing (possibly empty).

    Examples
    --------
    >>> import numpy as np
    >>> cut(np.tile([0, 0, 1, 1], 200), 2, 3)
    (2,)
    """
    L, stat = cut_statistics(sequences, n_symbols, max_lag, lags=lags, alpha=alpha, mu=mu, xi=xi)
    return tuple(l for l, s in zip(L, stat) if s > 0)


# -- forward stepwise ---------------------------------------------------------------------------------------
def forward_stepwise(sequences: Any, n_symbols: int, max_lag: int, n_lags: int, *, elbow: bool = False
                     ) -> tuple[tuple[int, ...], np.ndarray]:
    """hdMTD's forward stepwise (FS) selection (docs/math.md §10.4).

    Starting from the empty set, add at each step the lag j in ``1..max_lag`` (not yet chosen, set C) with
    the largest ``nu_j = sum_{x_C: N(x_C) > 0} (1 / P(x_C)) sum_{b < c} P(x_C b_j) P(x_C c_j)
    dTV(p_hat(. | x_C b_j), p_hat(. | x_C c_j))``, with ``P(.) = N(.) / N``; ties go to the smallest lag.

    Parameters
    ----------
    sequences : int array (T,), (B, T) or list of int arrays
    n_symbols : int
    max_lag : int
        d, the window; every sequence is conditioned on its first d tokens.
    n_lags : int
        Number of steps, ``1 <= n_lags <= max_lag``.
    elbow : bool
        hdMTD's ``elbowTest``: keep only the lags chosen before the step whose largest nu is the smallest
        (at least one).

    Returns
    -------
    lags : tuple of int
        In the order chosen.
    nu : ndarray (n_lags,)
        The largest nu at each step.

    Examples
    --------
    >>> import numpy as np
    >>> forward_stepwise(np.tile([0, 0, 1, 1], 200), 2, 3, 1)[0]
    (2,)
    """
    d = check_int(max_lag, "max_lag", minimum=1)
    n_lags = check_int(n_lags, "n_lags", minimum=1)
    if n_lags > d:
        raise ValueError(f"n_lags must be <= max_lag = {d} (got {n_lags})")
    X = lag_design(sequences, n_symbols, d)
    S = int(n_symbols)
    chosen: list[int] = []
    maxnu = np.empty(n_lags)
    for step in range(n_lags):
        best, best_nu = None, -np.inf
        for j in range(1, d + 1):
            if j in chosen:
                continue
            nu = _nu_kernel(_grouped(X, S, tuple(chosen), j), X.shape[0])
            if nu > best_nu:
                best, best_nu = j, nu
        chosen.append(best)
        maxnu[step] = best_nu
    if elbow:
        chosen = chosen[: elbow_size(maxnu)]
    return tuple(chosen), maxnu


def elbow_size(maxnu: np.ndarray) -> int:
    """hdMTD's elbow rule: the number of lags chosen before the last step whose largest nu is the smallest (at
    least one)."""
    last_min = int(np.flatnonzero(maxnu == maxnu.min())[-1]) + 1  # 1-based step of the smallest nu
    return max(last_min - 1, 1)


def fs_nu_from_counts(N: Any) -> float:
    """The forward-stepwise score nu of one candidate lag from a count table (docs/math.md §10.4).

    Parameters
    ----------
    N : array (S,) * (|C| + 2)
        ``N[x_C..., b_j, a]``: (weighted) counts of the symbols at the chosen lags C, at the candidate lag j
        (second-to-last axis) and of the next symbol; the total is the number of transitions.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> N = np.zeros((2, 2)); N[0, 0] = N[1, 1] = 5  # C empty, next = symbol at j
    >>> fs_nu_from_counts(N)
    0.25
    """
    N = _check_count_table(N)
    S = N.shape[-1]
    return _nu_kernel(N.reshape(-1, S, S), N.sum())


def fsc(sequences: Any, n_symbols: int, max_lag: int, n_lags: int, *, alpha: float = 0.05, mu: float = 1.0,
        xi: float = 0.5) -> tuple[int, ...]:
    """hdMTD's FSC: forward stepwise on the first half of every sequence, then CUT of the chosen lags on the
    second half (docs/math.md §10.4).

    Parameters
    ----------
    sequences, n_symbols, max_lag, n_lags
        As for :func:`forward_stepwise`; each half must leave transitions (more than ``max_lag`` tokens).
    alpha, mu, xi
        As for :func:`cut`.

    Returns
    -------
    tuple of int
        Selected lags, increasing.

    Examples
    --------
    >>> import numpy as np
    >>> fsc(np.tile([0, 0, 1, 1], 400), 2, 3, 2)
    (2,)
    """
    check_cut_constants(alpha, mu, xi)
    S = check_int(n_symbols, "n_symbols", minimum=2)
    seqs = _token_arrays(sequences, S)
    first = [y[: y.shape[0] // 2] for y in seqs]
    second = [y[y.shape[0] // 2:] for y in seqs]
    chosen, _ = forward_stepwise(first, S, max_lag, n_lags)
    return cut(second, S, max_lag, lags=chosen, alpha=alpha, mu=mu, xi=xi)
