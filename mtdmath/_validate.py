"""Input validation shared by every public function of mtdmath, for every array backend.

Each checker raises ``ValueError`` whose message names the argument as the caller wrote it
and shows the offending values, before any work is done. Checkers return the validated
array in the result's :class:`~mtdmath._xp.Space` (namespace, device, dtype; see
:mod:`mtdmath._xp` for the backend contract), so callers use what was checked. The checks run
on the array's own device with a few whole-array reductions; only the offending values of a
failed check travel to the host, for the message.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _xp
from ._xp import Space

#: tolerance on row sums of pi, on the simplex constraint of lam and of probability vectors
SUM_TOL = 1e-8

#: the largest work or output array (bytes) a function allocates from sizes the caller gives
#: (T, S, m, batch, ...); above it a ValueError names the argument before anything is allocated.
#: Raise it on a machine with more memory: ``mtdmath._validate.MAX_ALLOC_BYTES = 64 * 2**30``.
MAX_ALLOC_BYTES = 8 * 2**30


def check_alloc(n_elements: int, itemsize: int, name: str, what: str) -> None:
    """Refuse, before allocating, an array of ``n_elements`` items above :data:`MAX_ALLOC_BYTES`."""
    need = int(n_elements) * int(itemsize)
    if need > MAX_ALLOC_BYTES:
        raise ValueError(f"{name}: {what} would need {need / 2**30:.2f} GiB, above the budget of "
                         f"{MAX_ALLOC_BYTES / 2**30:.2f} GiB (mtdmath._validate.MAX_ALLOC_BYTES)")


def _show(x: Any, limit: int = 6) -> str:
    """Short printable form of (the first few) offending values."""
    a = _xp.to_numpy(x).ravel()
    s = np.array2string(a[:limit], precision=6, separator=", ")
    return s[:-1] + ", ...]" if a.size > limit else s


def as_rng(rng: Any, name: str = "rng") -> np.random.Generator:
    """``numpy.random.default_rng`` semantics: Generator, int seed, SeedSequence or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (np.random.SeedSequence,)) or (
            isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        if isinstance(rng, (int, np.integer)) and rng < 0:
            raise ValueError(f"{name} must be a non-negative seed (got {rng})")
        return np.random.default_rng(rng)
    raise ValueError(f"{name} must be a numpy.random.Generator, an int seed or None (got {type(rng).__name__})")


def check_torch_dtype(dtype: Any, name: str = "dtype") -> Any:
    """A torch floating dtype (float16, bfloat16, float32, float64) for model weights."""
    import torch

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{name} must be a torch floating dtype such as torch.float32 (got {dtype!r})")
    return dtype


def check_torch_device(device: Any, name: str = "device") -> Any:
    """None, or a torch device (or its name) that exists on this machine."""
    import torch

    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ValueError(f"{name} must be a torch device or its name such as 'cpu' or 'cuda' (got {device!r})")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{name} is not a torch device: {device!r} ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} is {device!r} but no CUDA device is available")
    if dev.type not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise ValueError(f"{name} must be a cpu or cuda device (got {device!r})")
    return dev


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """A Python int (bools rejected), optionally ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer (got {value!r})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (got {value})")
    return value


def check_n_jobs(value: Any, name: str = "n_jobs") -> int | None:
    """scikit-learn's ``n_jobs``: None (the library's choice), a positive int, or a negative int counting back
    from all cores (-1 all, -2 all but one); 0 and bools are refused."""
    if value is None:
        return None
    value = check_int(value, name)
    if value == 0:
        raise ValueError(f"{name} must be None, a positive integer or a negative one (-1 = all cores); got 0")
    return value


def check_bool(value: Any, name: str) -> bool:
    """A bool (Python or NumPy); strings such as "no", numbers and None are refused, not read as truth values."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False (got {value!r})")
    return bool(value)


def check_float(value: Any, name: str, *, nonnegative: bool = False, positive: bool = False) -> float:
    """A finite real scalar (a 0-d array of any backend allowed), optionally >= 0 or > 0.

    Strings, booleans and complex numbers are refused rather than parsed or truncated.
    """
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(f"{name} must be a real number (got {value!r})")
    ndim = getattr(value, "ndim", None)
    if ndim is None:
        ndim = np.ndim(value)
    if ndim != 0:
        raise ValueError(f"{name} must be a scalar (got shape {tuple(getattr(value, 'shape', np.shape(value)))})")
    if _xp._is_array(value):
        value = _xp.to_numpy(value)[()]
        if np.iscomplexobj(value):
            raise ValueError(f"{name} must be a real number (got {value!r})")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number (got {value!r})") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite (got {v})")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0 (got {v})")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0 (got {v})")
    return v


def check_schedule(eta: Any, steps: int | None, name: str = "eta", steps_name: str = "steps") -> list[float]:
    """A step-size schedule: a scalar (the same every step) or a length-``steps`` sequence, each >= 0.

    ``steps=None`` takes the length from a sequence (1 for a scalar). Returns the list of steps.
    """
    if isinstance(eta, (str, bytes)) or (not _xp._is_array(eta) and np.ndim(eta) == 0) or \
            (_xp._is_array(eta) and eta.ndim == 0):
        v = check_float(eta, name, nonnegative=True)
        k = 1 if steps is None else steps
        return [v] * k
    try:
        seq = [check_float(e, f"{name}[{j}]", nonnegative=True) for j, e in enumerate(list(_xp.to_numpy(eta)
               if _xp._is_array(eta) else eta))]
    except TypeError:
        raise ValueError(f"{name} must be a real number or a sequence of them (got {eta!r})") from None
    if steps is not None and len(seq) != steps:
        raise ValueError(f"{name} has {len(seq)} steps but {steps_name} = {steps}: give one step size per step")
    return seq


def _host_kind_check(x: Any, name: str) -> None:
    """Refuse complex, string and object inputs instead of truncating or parsing them."""
    if _xp._is_array(x) and not _xp.is_numpy_array(x):
        xp = _xp.array_namespace(x)
        if xp.isdtype(x.dtype, "complex floating"):
            raise ValueError(f"{name} must be real (got complex dtype {x.dtype})")
        if xp.isdtype(x.dtype, "bool"):
            raise ValueError(f"{name} must be an array of real numbers (got dtype {x.dtype})")
        return
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of real numbers") from None
    if a.dtype.kind == "c":
        raise ValueError(f"{name} must be real (got complex dtype {a.dtype})")
    if a.dtype.kind not in "iuf":  # booleans are not numbers here
        raise ValueError(f"{name} must be an array of real numbers (got dtype {a.dtype})")


def float_array(x: Any, name: str, space: Space | None = None) -> Any:
    """``x`` as a real floating array of ``space`` (default: its own data space)."""
    _host_kind_check(x, name)
    if space is None:
        space = _xp.data_space(x)
    try:
        return _xp.convert(x, space)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of real numbers") from None


def _input_eps(x: Any, a: Any) -> float:
    """Machine epsilon of the coarser of the input's own float dtype and the computing dtype:
    a float16 pi has row sums 1 ± S·1e-3, which the float32 computation must still accept."""
    eps = float(_xp.array_namespace(a).finfo(a.dtype).eps)
    if _xp._is_array(x):
        xp = _xp.array_namespace(x)
        if xp.isdtype(x.dtype, "real floating"):
            eps = max(eps, float(xp.finfo(x.dtype).eps))
    return eps


def _check_finite_nonneg(a: Any, name: str, xp: Any, what: str = "entries") -> float:
    """Raise unless every entry is finite and >= 0; returns the minimum (inf when empty)."""
    if math.prod(a.shape) == 0:
        return math.inf
    # fast path: one bool from the min and the max (a NaN propagates into both); torch computes
    # both in one pass (aminmax)
    if _xp.is_torch_namespace(xp):
        import torch

        lo, hi = torch.aminmax(a.detach())  # a check, not part of any graph
    else:
        lo, hi = xp.min(a), xp.max(a)
    if bool(xp.isfinite(lo) & xp.isfinite(hi) & (lo >= 0)):
        return float(lo)
    h = _xp.to_numpy(a)
    fin = np.isfinite(h)
    if not fin.all():
        raise ValueError(f"{name} must be finite (got non-finite {what} {_show(h[~fin])})")
    raise ValueError(f"{name} must be nonnegative (got negative {what} {_show(h[h < 0])})")


def check_pi(pi: Any, name: str = "pi", space: Space | None = None) -> Any:
    """A row-stochastic square matrix (S, S), S >= 1, in ``space``."""
    a = float_array(pi, name, space)
    xp = _xp.array_namespace(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"{name} must be a square (S, S) matrix (got shape {tuple(a.shape)})")
    _check_finite_nonneg(a, name, xp)
    rs = xp.sum(a, axis=1)
    tol = _xp.sum_tol(_input_eps(pi, a), a.shape[0], SUM_TOL)
    if bool(xp.any(xp.abs(rs - 1.0) > tol)):
        h = _xp.to_numpy(rs).astype(np.float64)
        bad = np.abs(h - 1.0) > tol
        raise ValueError(f"{name}: rows must sum to 1 (got row sums of {_show(h[bad])} in rows {_show(np.flatnonzero(bad))})")
    return a


def check_prob_vector(p: Any, name: str, size: int | None = None, tol: float = SUM_TOL,
                      space: Space | None = None) -> Any:
    """A probability vector over the last axis (batched allowed): finite, >= 0, sums to 1 within tol."""
    a = float_array(p, name, space)
    xp = _xp.array_namespace(a)
    if a.ndim < 1 or a.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one axis of length >= 1 (got shape {tuple(a.shape)})")
    if size is not None and a.shape[-1] != size:
        raise ValueError(f"{name} must have length {size} on its last axis (got shape {tuple(a.shape)})")
    _check_finite_nonneg(a, name, xp, what="values")
    tol = _xp.sum_tol(_input_eps(p, a), a.shape[-1], tol)
    s = xp.sum(a, axis=-1)
    if bool(xp.any(xp.abs(s - 1.0) > tol)):
        h = _xp.to_numpy(s).astype(np.float64)
        raise ValueError(f"{name} must lie on the simplex: entries must sum to 1 (got sums of {_show(h[np.abs(h - 1.0) > tol])})")
    return a


def check_lam(lam: Any, name: str = "lam", m: int | None = None, space: Space | None = None) -> Any:
    """Lag weights on the simplex Delta_m, shape (..., m)."""
    return check_prob_vector(lam, name, m, space=space)


def check_alpha(alpha: Any, name: str = "alpha", m: int | None = None) -> np.ndarray:
    """Dirichlet concentration: 1-D, length m, positive and finite; float64 NumPy (m numbers,
    validated and used on the host whatever the backend)."""
    _host_kind_check(alpha, name)
    a = np.asarray(_xp.to_numpy(alpha), dtype=np.float64)
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"{name} must be 1-D with length m >= 1 (got shape {a.shape})")
    if m is not None and a.shape[0] != m:
        raise ValueError(f"{name} must have length m = {m} (got length {a.shape[0]})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (got {_show(a)})")
    if np.any(a <= 0):
        raise ValueError(f"{name} must be positive (got {_show(a)})")
    with np.errstate(over="ignore"):
        total = float(np.sum(a))
    if not math.isfinite(total):
        raise ValueError(f"{name}: the sum α₀ = Σ {name} overflows (got {_show(a)})")
    return a


def check_prior_mean(alpha: np.ndarray, name: str = "alpha") -> np.ndarray:
    """The prior mean ``μ = alpha / α₀`` of a validated alpha, refused where an entry underflows to 0.

    With alpha entries of very different sizes (say 1e-300 next to 1e100) ``alpha_g / α₀`` is below
    the smallest float64: μ would put an exact 0 on a lag the prior supports, and an estimator
    started from μ would divide by a probability that is 0 only through rounding.
    """
    with np.errstate(under="ignore"):
        mu = alpha / alpha.sum()
    if np.any(mu < np.finfo(np.float64).smallest_normal):
        raise ValueError(f"{name}: the prior mean {name} / α₀ underflows for lags {_show(np.flatnonzero(mu < 2.3e-308) + 1)} "
                         f"(got {name} = {_show(alpha)}); estimators started from the prior mean need every "
                         f"{name}_g / α₀ >= 2.2e-308 (the exact posterior_mean has no such limit)")
    return mu


def check_tokens(tokens: Any, S: int, m: int | None = None, name: str = "tokens",
                 space: Space | None = None) -> Any:
    """Integer tokens in [0, S), shape (..., T) with T >= m; int64 in ``space``'s namespace and device.

    The range is checked in the tokens' own dtype, before any cast, so an unsigned token of
    2**63 or more is reported rather than wrapped to a negative int64.
    """
    if isinstance(tokens, (str, bytes)):
        raise ValueError(f"{name} is one string ({tokens[:20]!r}); the functions of mtdmath take integer codes "
                         f"0..S-1: pass list({name}) to mtdmath.fitting, which encodes labels, or encode it "
                         f"yourself, e.g. np.unique(list({name}), return_inverse=True)[1]")
    if _xp._is_array(tokens) and not _xp.is_numpy_array(tokens):
        y = tokens
        xp = _xp.array_namespace(y)
        if not xp.isdtype(y.dtype, "integral"):
            raise ValueError(f"{name} must have an integer dtype (got dtype {y.dtype})")
    else:
        try:
            y = np.asarray(tokens)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an array of integers (ragged or non-numeric input)") from None
        if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must have an integer dtype (got dtype {y.dtype})")
        xp = _xp.numpy_namespace()
    if y.ndim < 1:
        raise ValueError(f"{name} must have at least one axis (time last) (got a scalar)")
    if math.prod(y.shape):
        lo, hi = xp.min(y), xp.max(y)
        if bool((lo < 0) | (hi >= S)):
            h = _xp.to_numpy(y)
            raise ValueError(f"{name} must lie in [0, {S}) for S = {S} "
                             f"(got out-of-range values {_show(h[(h < 0) | (h >= S)])})")
    if m is not None and y.shape[-1] < m:
        raise ValueError(f"{name} must have length T >= m = {m} on its last axis (got T = {y.shape[-1]})")
    if space is None:
        space = _xp.data_space(tokens)
    return _xp.convert(y, space, dtype=space.xp.int64)


def check_C(C: Any, name: str = "C", *, allow_impossible: bool = False, space: Space | None = None,
            with_min: bool = False) -> Any:
    """Lag factors, shape (..., n, m), finite and nonnegative, in ``space`` (default: C's own).

    Unless ``allow_impossible``, a transition (row) that is zero under every lag raises:
    the data are impossible under pi and the quantity is undefined (docs/math.md §2).
    ``with_min=True`` returns ``(C, min C)``: the minimum comes free with the finiteness check and
    bounds every ``C[i]·lam >= min C`` on the simplex (callers then skip underflow checks).
    """
    a = float_array(C, name, space)
    xp = _xp.array_namespace(a)
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (..., n, m) (got shape {tuple(a.shape)})")
    if a.shape[-1] < 1:
        raise ValueError(f"{name} must have m >= 1 columns (got shape {tuple(a.shape)})")
    cmin = _check_finite_nonneg(a, name, xp)
    if not allow_impossible and math.prod(a.shape):
        # a >= 0, so a row is all zero exactly when its sum is 0: one matrix-vector product
        ones = xp.ones((a.shape[-1], 1), dtype=a.dtype, device=_xp._device(a))
        zero_rows = (a @ ones)[..., 0] == 0
        if bool(xp.any(zero_rows)):
            idx = np.argwhere(_xp.to_numpy(zero_rows))[:3].tolist()
            raise ValueError(
                f"{name} has a transition with probability 0 under every lag (rows {idx}): "
                "the data are impossible under pi"
            )
    return (a, cmin) if with_min else a


def check_same_m(m_C: int, m_other: int, name: str) -> None:
    if m_C != m_other:
        raise ValueError(f"{name} has length {m_other} on its last axis but C has m = {m_C} columns")
