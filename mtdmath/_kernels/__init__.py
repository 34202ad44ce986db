"""Compiled kernels (numba) behind the public functions, for NumPy (and CPU torch) inputs.

Each kernel is a fast path of one public function and is tested against that function's generic
Array-API route (tests/test_kernels.py). Kernels are compiled on first use and cached on disk
(``cache=True``): ``import mtdmath`` compiles nothing and does not import numba. The cold compile
takes a few seconds per kernel and dtype; warm calls load the cached machine code.

Set ``MTDMATH_DISABLE_KERNELS=1`` to force the generic route everywhere (the tests do, to compare).
"""
from __future__ import annotations

import os


def enabled() -> bool:
    """Whether the compiled fast paths are used (numba importable and not disabled)."""
    if os.environ.get("MTDMATH_DISABLE_KERNELS", "") not in ("", "0"):
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
