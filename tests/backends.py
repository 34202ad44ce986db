"""The array backends the core is tested on, and the decorator that runs a property test on each.

Every backend test feeds the *same* NumPy-drawn inputs through :meth:`Backend.asarray`, checks
that the result is in the backend's namespace, device and dtype (:meth:`Backend.check`), and
compares it, in float64, with an independent reference (brute force, mpmath, complex step, ...):
never with another backend only.

Example counts: NumPy runs the profile's full count; every other backend a quarter of it
(at least 10), so the backend matrix costs about twice the NumPy-only suite, not five times.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given, settings

try:
    import torch
except ImportError:  # the core and its tests run without torch
    torch = None
try:
    import array_api_strict
except ImportError:
    array_api_strict = None

from mtdmath import _xp


class Backend:
    """One backend: namespace, device and float dtype, plus conversion helpers for tests."""

    def __init__(self, name: str, kind: str, float_dtype: str = "float64", device: str = "cpu",
                 fraction: float = 0.25, marks=()):
        self.name, self.kind, self.float_dtype, self.device = name, kind, float_dtype, device
        self.fraction, self.marks = fraction, marks

    @property
    def float32(self) -> bool:
        return self.float_dtype == "float32"

    @property
    def eps(self) -> float:
        return float(np.finfo(self.float_dtype).eps)

    def asarray(self, a, *, dtype=None):
        """A NumPy array (or list) in this backend: floats in its float dtype, ints as int64."""
        a = np.asarray(a)
        if dtype is None:
            dtype = self.float_dtype if a.dtype.kind == "f" else "int64"
        a = a.astype(dtype)
        if self.kind == "numpy":
            return a
        if self.kind == "torch":
            return torch.as_tensor(a, device=self.device)
        return array_api_strict.asarray(a)

    def round_trip(self, a) -> np.ndarray:
        """The float64 values this backend actually receives for ``a`` (float32 rounding included),
        so references are computed on exactly the backend's inputs."""
        return np.asarray(a, dtype=self.float_dtype).astype(np.float64)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(_xp.to_numpy(x), dtype=np.float64)

    def check(self, x, *, integer: bool = False):
        """Assert x is in this backend's namespace, on its device, with the expected dtype."""
        if self.kind == "numpy":
            assert isinstance(x, (np.ndarray, np.generic)), type(x)  # 0-d NumPy results are scalars
            assert x.dtype == (np.int64 if integer else np.dtype(self.float_dtype)), x.dtype
        elif self.kind == "torch":
            assert isinstance(x, torch.Tensor), type(x)
            assert x.device.type == torch.device(self.device).type, x.device
            assert x.dtype == (torch.int64 if integer else getattr(torch, self.float_dtype)), x.dtype
        else:
            assert type(x).__module__.startswith("array_api_strict"), type(x)
            want = array_api_strict.int64 if integer else getattr(array_api_strict, self.float_dtype)
            assert x.dtype == want, x.dtype
        return self.to_numpy(x)

    def __repr__(self) -> str:
        return self.name


_no_torch = pytest.mark.skipif(torch is None, reason="torch not installed")
_no_cuda = pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="needs a CUDA GPU")
_no_strict = pytest.mark.skipif(array_api_strict is None, reason="array-api-strict not installed")

NUMPY = Backend("numpy", "numpy", fraction=1.0)
STRICT = Backend("array_api_strict", "strict", marks=(_no_strict,))
TORCH64 = Backend("torch-cpu-f64", "torch", marks=(_no_torch,))
TORCH32 = Backend("torch-cpu-f32", "torch", "float32", marks=(_no_torch,))
CUDA64 = Backend("torch-cuda-f64", "torch", device="cuda", marks=(_no_cuda,))

#: float64 backends: results held to the NumPy core's float64 tolerances
FLOAT64 = (NUMPY, STRICT, TORCH64, CUDA64)
ALL = FLOAT64 + (TORCH32,)


def params(backends):
    return [pytest.param(b, id=b.name, marks=b.marks) for b in backends]


def given_backends(*strategies, backends=ALL, **kw_strategies):
    """``@given`` run once per backend, each with its share of the profile's example count.

    The decorated test takes the backend as its first argument ``bk``; the strategies fill the
    remaining arguments as with ``@given``.
    """

    def deco(test):
        @pytest.mark.parametrize("bk", params(backends))
        def wrapper(bk):
            def inner(*args, **kwargs):
                return test(bk, *args, **kwargs)

            sig = inspect.signature(test)
            inner.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])  # bk is bound
            for attr in ("__name__", "__qualname__", "__module__"):
                setattr(inner, attr, getattr(test, attr))
            n = max(10, int(settings.default.max_examples * bk.fraction))
            settings(max_examples=n)(given(*strategies, **kw_strategies)(inner))()

        wrapper.__name__ = test.__name__
        wrapper.__qualname__ = test.__qualname__
        wrapper.__doc__ = test.__doc__
        wrapper.__module__ = test.__module__
        return wrapper

    return deco
