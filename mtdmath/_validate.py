"""Input validation shared by every public function of mtdmath.

Each checker raises ``ValueError`` whose message names the argument as the caller wrote it
and shows the offending values, before any work is done. Checkers return the validated
array (converted to float64 / int64 where appropriate) so callers use what was checked.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: tolerance on row sums of pi, on the simplex constraint of lam and of probability vectors
SUM_TOL = 1e-8


def _show(x: Any, limit: int = 6) -> str:
    """Short printable form of (the first few) offending values."""
    a = np.asarray(x).ravel()
    s = np.array2string(a[:limit], precision=6, separator=", ")
    return s[:-1] + ", ...]" if a.size > limit else s


def as_rng(rng: Any, name: str = "rng") -> np.random.Generator:
    """``numpy.random.default_rng`` semantics: Generator, int seed, SeedSequence or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer, np.random.SeedSequence)):
        if isinstance(rng, (int, np.integer)) and rng < 0:
            raise ValueError(f"{name} must be a non-negative seed (got {rng})")
        return np.random.default_rng(rng)
    raise ValueError(f"{name} must be a numpy.random.Generator, an int seed or None (got {type(rng).__name__})")


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """A Python int (bools rejected), optionally ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer (got {value!r})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (got {value})")
    return value


def check_float(value: Any, name: str, *, nonnegative: bool = False, positive: bool = False) -> float:
    """A finite real scalar, optionally >= 0 or > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number (got {value!r})") from None
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar (got shape {np.shape(value)})")
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite (got {v})")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0 (got {v})")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0 (got {v})")
    return v


def _float_array(x: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of real numbers") from None
    return a


def check_pi(pi: Any, name: str = "pi") -> np.ndarray:
    """A row-stochastic square matrix (S, S), S >= 1, float64."""
    a = _float_array(pi, name)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"{name} must be a square (S, S) matrix (got shape {a.shape})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (got non-finite entries {_show(a[~np.isfinite(a)])})")
    if np.any(a < 0):
        raise ValueError(f"{name} must be nonnegative (got negative entries {_show(a[a < 0])})")
    rs = a.sum(axis=1)
    bad = np.abs(rs - 1.0) > SUM_TOL
    if np.any(bad):
        raise ValueError(f"{name}: rows must sum to 1 (got row sums of {_show(rs[bad])} in rows {_show(np.flatnonzero(bad))})")
    return a


def check_prob_vector(p: Any, name: str, size: int | None = None, tol: float = SUM_TOL) -> np.ndarray:
    """A probability vector over the last axis (batched allowed): finite, >= 0, sums to 1 within tol."""
    a = _float_array(p, name)
    if a.ndim < 1 or a.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one axis of length >= 1 (got shape {a.shape})")
    if size is not None and a.shape[-1] != size:
        raise ValueError(f"{name} must have length {size} on its last axis (got shape {a.shape})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (got {_show(a[~np.isfinite(a)])})")
    if np.any(a < 0):
        raise ValueError(f"{name} must be nonnegative (got {_show(a[a < 0])})")
    s = a.sum(axis=-1)
    bad = np.abs(s - 1.0) > tol
    if np.any(bad):
        raise ValueError(f"{name} must lie on the simplex: entries must sum to 1 (got sums of {_show(s[bad])})")
    return a


def check_lam(lam: Any, name: str = "lam", m: int | None = None) -> np.ndarray:
    """Lag weights on the simplex Delta_m, shape (..., m)."""
    return check_prob_vector(lam, name, m)


def check_alpha(alpha: Any, name: str = "alpha", m: int | None = None) -> np.ndarray:
    """Dirichlet concentration: 1-D, length m, positive and finite."""
    a = _float_array(alpha, name)
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"{name} must be 1-D with length m >= 1 (got shape {a.shape})")
    if m is not None and a.shape[0] != m:
        raise ValueError(f"{name} must have length m = {m} (got length {a.shape[0]})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (got {_show(a)})")
    if np.any(a <= 0):
        raise ValueError(f"{name} must be positive (got {_show(a)})")
    return a


def check_tokens(tokens: Any, S: int, m: int | None = None, name: str = "tokens") -> np.ndarray:
    """Integer tokens in [0, S), shape (..., T) with T >= m; returned as int64."""
    a = np.asarray(tokens)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype (got dtype {a.dtype})")
    if a.ndim < 1:
        raise ValueError(f"{name} must have at least one axis (time last) (got a scalar)")
    if a.size:
        lo, hi = a.min(), a.max()
        if lo < 0 or hi >= S:
            bad = a[(a < 0) | (a >= S)]
            raise ValueError(f"{name} must lie in [0, {S}) for S = {S} (got out-of-range values {_show(bad)})")
    if m is not None and a.shape[-1] < m:
        raise ValueError(f"{name} must have length T >= m = {m} on its last axis (got T = {a.shape[-1]})")
    return a.astype(np.int64, copy=False)


def check_C(C: Any, name: str = "C", *, allow_impossible: bool = False) -> np.ndarray:
    """Lag factors, shape (..., n, m), finite and nonnegative.

    Unless ``allow_impossible``, a transition (row) that is zero under every lag raises:
    the data are impossible under pi and the quantity is undefined (MATH.md §2).
    """
    a = _float_array(C, name)
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (..., n, m) (got shape {a.shape})")
    if a.shape[-1] < 1:
        raise ValueError(f"{name} must have m >= 1 columns (got shape {a.shape})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (got {_show(a[~np.isfinite(a)])})")
    if np.any(a < 0):
        raise ValueError(f"{name} must be nonnegative (got {_show(a[a < 0])})")
    if not allow_impossible and a.size:
        zero_rows = np.all(a == 0, axis=-1)
        if np.any(zero_rows):
            idx = np.argwhere(zero_rows)[:3].tolist()
            raise ValueError(
                f"{name} has a transition with probability 0 under every lag (rows {idx}): "
                "the data are impossible under pi"
            )
    return a


def check_same_m(m_C: int, m_other: int, name: str) -> None:
    if m_C != m_other:
        raise ValueError(f"{name} has length {m_other} on its last axis but C has m = {m_C} columns")
