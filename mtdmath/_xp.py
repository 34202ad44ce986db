"""Array-namespace plumbing: one implementation of the core for every Array-API backend.

The core is written once against the Python Array API standard through ``array-api-compat``
(``xp = array_namespace(x)``, as SciPy and scikit-learn do); NumPy arrays get ``numpy`` itself from
NumPy 2.1 on, whose main namespace follows the standard (:func:`numpy_namespace`). This module holds

- the *backend contract* (:func:`data_space`, :func:`convert`): which namespace, device and
  dtype a result has, and how every other argument is brought there;
- what the standard lacks: :func:`logsumexp`, :func:`log_softmax`, a quiet-errors context
  (:func:`quiet`), ``finfo`` values, :func:`to_numpy`;
- the backend fast paths, each a small named branch beside its generic route and tested
  against it: :func:`exclusive_cumsum` (in-place NumPy / torch cumulative sums) and
  :func:`weighted_rows` (NumPy ``bincount @ table``, torch ``embedding_bag``).

The contract (docs/guide/backends.md and docs/math.md state it for users):

1. The *data arguments* of a function are ``C`` (likelihood, estimators, exact Bayes), or
   ``tokens`` and ``pi`` (functions that take tokens), or ``p`` and ``q`` (:func:`mtdmath.kl`).
   The result lives in their namespace and on their device. When they disagree, an array of a
   non-NumPy library (torch, array-api-strict, ...) wins over a NumPy array, which wins over a
   Python list or scalar.
2. The result's floating dtype is that of the floating data argument (``C``, ``pi``, ``p``):
   float64 stays float64, float32 stays float32; float16 and bfloat16 are computed and
   returned in float32 (their 11 / 8 significant bits cannot hold a log-likelihood of 10^5
   transitions, nor a probability below 6e-8); integer, boolean and Python inputs give float64.
3. Every other array argument (``lam``, ``lam0``, ``alpha``, ...) is converted to that
   namespace, device and dtype. A torch tensor already in the result's namespace is used as it
   is, so autograd flows through it; one from another namespace is detached and copied.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import numpy as np
from array_api_compat import (
    array_namespace as _compat_namespace,
    device as _device,
    is_array_api_obj,
    is_numpy_array,
    is_array_api_strict_namespace,
    is_numpy_namespace,
    is_torch_array,
    is_torch_namespace,
)

__all__ = [
    "Space",
    "array_namespace",
    "numpy_namespace",
    "data_space",
    "convert",
    "to_numpy",
    "from_numpy",
    "logsumexp",
    "log_softmax",
    "quiet",
    "finfo_max",
    "finfo_tiny",
    "exclusive_cumsum",
    "softmax_first_axis",
    "weighted_rows",
    "is_numpy_namespace",
    "is_torch_namespace",
]


#: NumPy's own main namespace follows the Array API standard from NumPy 2.1 (``astype``,
#: ``cumulative_sum``, ``clip(min=, max=)``, ``device=`` keywords): there it is used as it is.
#: array-api-compat's wrapper of it, needed only by older NumPy, is expensive the first time a
#: process asks for it (building it walks NumPy's lazy submodules: f2py, testing, ...), which was
#: most of the cold-start cost of a small fit (docs/guide/performance.md).
PLAIN_NUMPY = tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 1)


@functools.lru_cache(maxsize=1)
def numpy_namespace() -> Any:
    """The namespace of NumPy arrays: ``numpy`` itself from NumPy 2.1 (see :data:`PLAIN_NUMPY`),
    else array-api-compat's NumPy namespace, imported on first use."""
    if PLAIN_NUMPY:
        return np
    import array_api_compat.numpy

    return array_api_compat.numpy


def array_namespace(*xs: Any) -> Any:
    """The Array API namespace of ``xs`` (array-api-compat's :func:`array_namespace`, except that
    NumPy arrays, alone or with Python scalars and ``None``, give :func:`numpy_namespace`)."""
    arrays = [x for x in xs if x is not None and not isinstance(x, (bool, int, float, complex))]
    if arrays and all(is_numpy_array(x) for x in arrays):
        return numpy_namespace()
    return _compat_namespace(*xs)


class Space:
    """Where results live: namespace ``xp``, ``device`` and floating ``dtype``."""

    __slots__ = ("xp", "device", "dtype")

    def __init__(self, xp: Any, device: Any, dtype: Any):
        self.xp, self.device, self.dtype = xp, device, dtype

    @property
    def is_numpy(self) -> bool:
        return is_numpy_namespace(self.xp)

    @property
    def is_torch(self) -> bool:
        return is_torch_namespace(self.xp)

    def __repr__(self) -> str:
        return f"Space({self.xp.__name__}, {self.device}, {self.dtype})"


def _is_array(x: Any) -> bool:
    # NumPy scalars count as NumPy arrays (they carry a dtype); Python lists do not
    return is_array_api_obj(x) and not isinstance(x, (bool, int, float, complex))


def _float_dtype(xp: Any, dtype: Any) -> Any:
    """The computing dtype for data of ``dtype`` (rule 2 of the contract)."""
    if xp.isdtype(dtype, "real floating"):
        if dtype in (xp.float32, xp.float64):
            return dtype
        return xp.float32  # float16, bfloat16 (and any other narrow float)
    return xp.float64


def data_space(*data: Any) -> Space:
    """The :class:`Space` of a result computed from the data arguments ``data`` (rules 1-2).

    ``None`` entries are ignored. The first non-NumPy array fixes the namespace and device;
    the dtype comes from the first floating array among the data (else float64).
    """
    arrays = [x for x in data if x is not None and _is_array(x)]
    lead = next((x for x in arrays if not is_numpy_array(x)), None)
    if lead is None:
        xp, dev = numpy_namespace(), "cpu"
    else:
        xp, dev = array_namespace(lead), _device(lead)
    dtype = xp.float64
    for x in arrays:
        try:
            kind_float = bool(np.issubdtype(x.dtype, np.floating)) if is_numpy_array(x) else \
                array_namespace(x).isdtype(x.dtype, "real floating")
        except TypeError:
            kind_float = False
        if kind_float:
            dtype = _float_dtype(xp, _same_dtype(xp, x))
            break
    return Space(xp, dev, dtype)


def _same_dtype(xp: Any, x: Any) -> Any:
    """x's dtype expressed in namespace xp (by name: float16/32/64, bfloat16)."""
    if array_namespace(x) is xp or (is_numpy_namespace(xp) and is_numpy_array(x)):
        return x.dtype
    name = str(x.dtype).split(".")[-1]
    return getattr(xp, name, xp.float32)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy view or copy of any array (torch: detached, on the CPU; bfloat16 as float32)."""
    if is_numpy_array(x):
        return np.asarray(x)
    if is_torch_array(x):
        import torch

        t = x.detach()
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)
        return t.to("cpu").numpy()
    if _is_array(x):
        try:
            return np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError, AttributeError):
            return np.asarray(x)
    return np.asarray(x)


def from_numpy(a: np.ndarray, space: Space, *, dtype: Any = "float") -> Any:
    """Bring a NumPy result into ``space``; ``dtype="float"`` uses the space's float dtype,
    ``None`` keeps an integer or boolean dtype."""
    xp = space.xp
    if dtype == "float":
        dtype = space.dtype
    if is_numpy_namespace(xp):
        return a if dtype is None else a.astype(dtype, copy=False)
    if is_torch_namespace(xp):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(device=space.device, dtype=dtype) if dtype is not None else t.to(space.device)
    out = xp.asarray(np.ascontiguousarray(a), device=space.device)
    return out if dtype is None else xp.astype(out, dtype)


def convert(x: Any, space: Space, *, dtype: Any = "float") -> Any:
    """Rule 3 of the contract: ``x`` in ``space``'s namespace and device (and float dtype).

    An array of the space's own namespace is only moved/cast (autograd kept); anything else goes
    through NumPy. ``dtype=None`` keeps the array's own dtype.
    """
    xp = space.xp
    if dtype == "float":
        dtype = space.dtype
    if _is_array(x) and not is_numpy_array(x) and array_namespace(x) is xp:
        if is_torch_namespace(xp):
            return x.to(device=space.device, dtype=dtype) if dtype is not None else x.to(space.device)
        if _device(x) != space.device:
            x = xp.asarray(x, device=space.device)
        return x if dtype is None or x.dtype == dtype else xp.astype(x, dtype)
    return from_numpy(to_numpy(x), space, dtype=dtype)


def torch_space(device: Any = None, dtype: Any = None, like: Any = None) -> Space:
    """The torch :class:`Space` on ``device`` (default: ``like``'s device if it is a tensor, else the
    CPU) with float ``dtype`` (default float64), for torch-only code (the transformers, the task)."""
    import torch

    if device is None:
        device = like.device if is_torch_array(like) else torch.device("cpu")
    return Space(array_namespace(torch.empty(0)), torch.device(device), dtype or torch.float64)


# ----------------------------------------------------------------------------- what the standard lacks
@contextlib.contextmanager
def quiet(xp: Any):
    """Silence floating-point warnings (NumPy's errstate, which array-api-strict inherits, being
    built on NumPy); torch does not warn."""
    if is_numpy_namespace(xp) or is_array_api_strict_namespace(xp):
        with np.errstate(all="ignore"):
            yield
    else:
        yield


def finfo_max(xp: Any, dtype: Any) -> float:
    return float(xp.finfo(dtype).max)


def finfo_tiny(xp: Any, dtype: Any) -> float:
    return float(xp.finfo(dtype).smallest_normal)


def logsumexp(a: Any, axis: int, xp: Any) -> Any:
    """``log Σ exp(a)`` over ``axis`` (removed); -inf for an all--inf slice, never NaN from it."""
    if is_torch_namespace(xp):  # fast path: torch's fused kernel, same -inf convention
        import torch

        return torch.logsumexp(a, dim=axis)
    amax = xp.max(a, axis=axis, keepdims=True)
    amax = xp.where(xp.isfinite(amax), amax, xp.zeros_like(amax))
    with quiet(xp):
        out = xp.log(xp.sum(xp.exp(a - amax), axis=axis, keepdims=True)) + amax
    return xp.squeeze(out, axis=axis)


def log_softmax(z: Any, xp: Any, axis: int = -1) -> Any:
    """``z - logsumexp(z)`` over ``axis``; shifting by the max *first* keeps huge z exact."""
    top = xp.max(z, axis=axis, keepdims=True)
    top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
    shifted = z - top
    with quiet(xp):
        return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def log(a: Any, xp: Any) -> Any:
    """``log a`` with ``log 0 = -inf`` and no warning (torch: the tensor method, no wrapper)."""
    if is_torch_namespace(xp):
        return a.log()
    with quiet(xp):
        return xp.log(a)


# ----------------------------------------------------------------------------- fast paths
def _requires_grad(*xs: Any) -> bool:
    return any(is_torch_array(x) and x.requires_grad for x in xs)


def exclusive_cumsum(x: Any, axis: int, xp: Any, *, generic: bool = False) -> Any:
    """Exclusive cumulative sum along ``axis``: a leading 0, then the inclusive sums (length +1).

    Fast paths: NumPy and torch (without autograd) write the cumulative sum straight into the
    output buffer (no concatenation copy). ``generic=True`` forces the standard route
    (``cumulative_sum(..., include_initial=True)``), the reference the fast paths are tested against.
    """
    axis = axis % x.ndim
    if not generic and is_numpy_namespace(xp):
        shape = list(x.shape)
        shape[axis] += 1
        out = np.empty(shape, dtype=x.dtype)
        lead = (slice(None),) * axis
        out[lead + (0,)] = 0
        np.cumsum(x, axis=axis, out=out[lead + (slice(1, None),)])
        return out
    if not generic and is_torch_namespace(xp) and not _requires_grad(x):
        import torch

        shape = list(x.shape)
        shape[axis] += 1
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
        out.narrow(axis, 0, 1).zero_()
        torch.cumsum(x, dim=axis, out=out.narrow(axis, 1, x.shape[axis]))
        return out
    return xp.cumulative_sum(x, axis=axis, include_initial=True)


def softmax_first_axis(z: Any, scale: float, shift: Any, xp: Any, *, generic: bool = False) -> Any:
    """``softmax(scale·z + shift)`` over axis 0 (the lags), ``shift`` of shape (z.shape[0],).

    Fast path: NumPy and torch (without autograd) work in place on ``z`` (a buffer the caller
    owns): on the all-prefix predictive each (m, B, n+1) temporary costs a page-faulting
    allocation of tens of MB. ``generic=True`` forces the functional route.
    """
    shift = xp.reshape(shift, (-1,) + (1,) * (z.ndim - 1))
    if not generic and (is_numpy_namespace(xp) or (is_torch_namespace(xp) and not _requires_grad(z, shift))):
        z *= scale
        z += shift
        z -= xp.max(z, axis=0, keepdims=True)
        if is_numpy_namespace(xp):
            np.exp(z, out=z)
        else:
            z.exp_()
        z /= xp.sum(z, axis=0, keepdims=True)
        return z
    z = scale * z + shift
    e = xp.exp(z - xp.max(z, axis=0, keepdims=True))
    return e / xp.sum(e, axis=0, keepdims=True)


def weighted_rows(src: Any, w: Any, table: Any, xp: Any, *, generic: bool = False) -> Any:
    """``out[r] = Σ_j w[j, r] · table[src[j, r], :]`` for src, w of shape (m, R); out (R, S).

    The mixture of rows of ``table`` that every predictive law is made of. Fast paths:

    - NumPy: the (R, S) matrix of the weight of each source token (``bincount``, summed where two
      lags see the same token) times ``table`` — the (R, m, S) array of gathered rows is never built;
    - torch: ``embedding_bag`` (a fused gather-and-weighted-sum; int32 indices take its fast CPU
      kernel), differentiable in ``table`` and ``w``.

    ``generic=True`` forces the standard route (gather the rows, weight, sum).
    """
    m, R = src.shape
    S = table.shape[-1]
    if not generic and is_numpy_namespace(xp):
        rows = np.arange(R, dtype=np.int64) * table.shape[0]
        weights = np.bincount((src + rows).ravel(), weights=np.ascontiguousarray(w).ravel(),
                              minlength=R * table.shape[0])
        # float64 weights times the table, rounded once to the table's dtype
        return (weights.reshape(R, table.shape[0]) @ table).astype(table.dtype, copy=False)
    if not generic and is_torch_namespace(xp):
        import torch

        itype = torch.int32 if src.device.type == "cpu" else torch.int64
        idx = src.to(itype).T.reshape(-1)  # (R*m,): bag r holds src[:, r]
        offsets = torch.arange(0, R * m, m, dtype=itype, device=src.device)
        return torch.nn.functional.embedding_bag(idx, table, offsets, mode="sum",
                                                 per_sample_weights=w.T.reshape(-1))
    rows = xp.take(table, xp.reshape(src, (-1,)), axis=0)  # (m*R, S)
    rows = xp.reshape(rows, (m, R, S))
    return xp.sum(rows * w[:, :, None], axis=0)


def sum_tol(dtype_eps: float, size: int, base: float) -> float:
    """Tolerance on a sum that should be 1: ``base`` or the rounding of ``size`` terms if coarser."""
    return max(base, 4.0 * size * dtype_eps)
