"""Simultaneous confidence intervals for the cells of multinomial rows, e.g. the rows of a transition law
estimated from transition counts (docs/math.md §10.5): Bonferroni (Clopper-Pearson or Wilson per cell),
Thompson (1987) and Bailey (1980), the intervals march offers.

Every function takes counts of shape (..., S): the last axis holds the cells of one multinomial row (the
next-symbol counts of one context), leading axes index rows. ``family="row"`` makes the S intervals of each
row hold together with probability >= 1 - alpha; ``family="all"`` makes every interval of every observed
row hold together (Bonferroni only). A row with no count gets [0, 1].
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from .._validate import check_float, float_array

__all__ = ["bailey_intervals", "bonferroni_intervals", "thompson_intervals"]


def _check_counts(counts: Any) -> np.ndarray:
    c = float_array(counts, "counts")
    c = np.asarray(c, dtype=np.float64)
    if c.ndim < 1 or c.shape[-1] < 2:
        raise ValueError(f"counts must have a last axis of S >= 2 cells (got shape {c.shape})")
    if not np.all(np.isfinite(c)) or np.any(c < 0) or np.any(c != np.round(c)):
        raise ValueError("counts must hold nonnegative integers")
    return c


def _check_alpha(alpha: Any) -> float:
    a = check_float(alpha, "alpha", positive=True)
    if a >= 1:
        raise ValueError(f"alpha must lie in (0, 1) (got {a})")
    return a


def _empty_rows(c: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[0, 1] where a row has no count (nothing is known about it)."""
    empty = (c.sum(axis=-1) == 0)[..., None]
    return np.where(empty, 0.0, lo), np.where(empty, 1.0, hi)


def bonferroni_intervals(counts: Any, alpha: float = 0.05, *, method: str = "clopper-pearson",
                         family: str = "row") -> tuple[np.ndarray, np.ndarray]:
    """Bonferroni simultaneous intervals: each cell's binomial interval at level ``alpha / m``.

    ``m = S`` per row (``family="row"``) or the number of cells of the rows with a count (``family="all"``).
    With ``method="clopper-pearson"`` (exact binomial intervals, from Beta quantiles) the simultaneous
    coverage is >= 1 - alpha for every sample size (union bound); ``"wilson"`` is the score interval, shorter
    but only asymptotically at its level.

    Parameters
    ----------
    counts : array (..., S) of nonnegative integers
    alpha : float in (0, 1)
    method : {"clopper-pearson", "wilson"}
    family : {"row", "all"}

    Returns
    -------
    lower, upper : ndarray (..., S)

    Examples
    --------
    >>> lo, hi = bonferroni_intervals([[30, 10], [0, 0]])
    >>> lo.round(3).tolist(), hi.round(3).tolist()
    ([[0.566, 0.114], [0.0, 0.0]], [[0.886, 0.434], [1.0, 1.0]])
    """
    c = _check_counts(counts)
    alpha = _check_alpha(alpha)
    if method not in ("clopper-pearson", "wilson"):
        raise ValueError(f'method must be "clopper-pearson" or "wilson" (got {method!r})')
    if family not in ("row", "all"):
        raise ValueError(f'family must be "row" or "all" (got {family!r})')
    S = c.shape[-1]
    n = np.broadcast_to(c.sum(axis=-1, keepdims=True), c.shape)
    m = S if family == "row" else max(int((c.sum(axis=-1) > 0).sum()) * S, 1)
    safe_n = np.where(n > 0, n, 1.0)
    a = alpha / m
    if method == "clopper-pearson":
        # exact binomial ends: Beta quantiles, with their conventions 0 below at x = 0 and 1 above at x = n
        with np.errstate(invalid="ignore"):
            lo = np.where(c > 0, stats.beta.ppf(a / 2, c, safe_n - c + 1), 0.0)
            hi = np.where(c < n, stats.beta.ppf(1 - a / 2, c + 1, safe_n - c), 1.0)
    else:
        # Wilson's score interval: the p with |p_hat - p| <= z sqrt(p (1 - p) / n)
        z2 = stats.norm.ppf(1 - a / 2) ** 2
        p = c / safe_n
        centre = (p + z2 / (2 * safe_n)) / (1 + z2 / safe_n)
        half = np.sqrt(z2 * p * (1 - p) / safe_n + z2 ** 2 / (4 * safe_n ** 2)) / (1 + z2 / safe_n)
        lo, hi = centre - half, centre + half
    lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
    return _empty_rows(c, lo, hi)


def thompson_intervals(counts: Any, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Thompson's (1987) simultaneous intervals ``p_hat +/- d`` for the S cells of each row.

    ``d^2 n = max_{1 <= m <= S} z^2_{1 - alpha / (2 m)} (1/m) (1 - 1/m)`` (n the row's count, z the standard
    normal quantile): the worst case of the normal approximation over the laws, attained with m cells of
    mass 1/m (docs/math.md §10.5). Clipped to [0, 1].

    Parameters
    ----------
    counts : array (..., S) of nonnegative integers
    alpha : float in (0, 1)

    Returns
    -------
    lower, upper : ndarray (..., S)

    Examples
    --------
    >>> lo, hi = thompson_intervals([60, 30, 10])
    >>> (hi - lo).round(4).tolist()
    [0.2257, 0.2257, 0.2129]
    """
    c = _check_counts(counts)
    alpha = _check_alpha(alpha)
    S = c.shape[-1]
    m = np.arange(1, S + 1)
    d2n = float(np.max(stats.norm.ppf(1 - alpha / (2 * m)) ** 2 * (1 / m) * (1 - 1 / m)))
    n = c.sum(axis=-1, keepdims=True)
    safe_n = np.where(n > 0, n, 1.0)
    p = c / safe_n
    d = np.sqrt(d2n / safe_n)
    return _empty_rows(c, np.clip(p - d, 0.0, 1.0), np.clip(p + d, 0.0, 1.0))


def bailey_intervals(counts: Any, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Bailey's (1980) simultaneous intervals from the square-root transformation with continuity correction.

    With ``B = chi2_1(1 - alpha / S)`` (upper quantile), ``C = B / (4 n)``, ``p- = (x - 1/8) / (n + 1/8)`` and
    ``p+ = (x + 7/8) / (n + 1/8)`` (clipped to [0, 1]): ``lower = (max(sqrt(p-) - sqrt(C (C + 1 - p-)), 0))^2
    / (C + 1)^2`` (0 at x = 0) and ``upper = (sqrt(p+) + sqrt(C (C + 1 - p+)))^2 / (C + 1)^2`` (at most 1)
    (docs/math.md §10.5).

    Parameters and returns as for :func:`thompson_intervals`.

    Examples
    --------
    >>> lo, hi = bailey_intervals([60, 30, 10])
    >>> lo.round(3).tolist(), hi.round(3).tolist()
    ([0.471, 0.192, 0.039], [0.712, 0.418, 0.191])
    """
    c = _check_counts(counts)
    alpha = _check_alpha(alpha)
    S = c.shape[-1]
    n = c.sum(axis=-1, keepdims=True)
    safe_n = np.where(n > 0, n, 1.0)
    B = stats.chi2.ppf(1 - alpha / S, 1)
    C = B / (4 * safe_n)
    pm = np.clip((c - 0.125) / (safe_n + 0.125), 0.0, 1.0)
    pp = np.clip((c + 0.875) / (safe_n + 0.125), 0.0, 1.0)
    lo = np.clip(np.sqrt(pm) - np.sqrt(C * (C + 1 - pm)), 0.0, None) ** 2 / (C + 1) ** 2
    hi = (np.sqrt(pp) + np.sqrt(C * (C + 1 - pp))) ** 2 / (C + 1) ** 2
    lo = np.where(c == 0, 0.0, lo)
    return _empty_rows(c, lo, np.clip(hi, 0.0, 1.0))
