"""Compiled kernels (numba) behind the public functions, for NumPy (and CPU torch) inputs.

Each kernel is a fast path of one public function and is tested against that function's generic
Array-API route (tests/test_kernels*.py). Kernels are compiled on first use and cached on disk
(``cache=True``): ``import mtdmath`` compiles nothing and does not import numba. The cold compile
takes a few seconds per kernel and dtype; warm calls load the cached machine code.

Set ``MTDMATH_DISABLE_KERNELS=1`` to force the generic route everywhere (the tests do, to compare).

Threads: a threaded kernel is only launched where its work pays for waking the pool (each caller
keeps a serial route below a measured size), and the pool is started by :func:`start_threads`,
whose OpenMP workers sleep rather than spin while they wait.
"""
from __future__ import annotations

import os
import sys

_started = False


#: below this much work (the caller's unit; for the fit, restart x component x tuple cells of one
#: EM map) a process that has not imported numba yet does not import it: below it, importing numba
#: and loading the cached EM kernel cost more than the NumPy fit saves by it; above it the import
#: pays for itself within the first fit (docs/guide/performance.md has the measurements)
COLD_WORK = 50_000


def enabled(work: int | None = None) -> bool:
    """Whether the compiled fast paths are used (numba importable and not disabled).

    ``work``: the size of the problem at hand; below :data:`COLD_WORK`, False unless numba is
    already imported (no cold-start tax on small problems in a fresh process).
    """
    if os.environ.get("MTDMATH_DISABLE_KERNELS", "") not in ("", "0"):
        return False
    if work is not None and work < COLD_WORK and "numba" not in sys.modules:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def start_threads() -> None:
    """Start numba's thread pool (once per process) with workers that wait passively.

    With the OpenMP threading layer, idle workers spin by default (GNU OpenMP: up to about 0.3 s
    per wait); on a machine whose cores are shared, a spinning worker takes a core from the
    thread it is waiting for, and a parallel map became several times slower in wall time than
    one thread. GNU OpenMP reads ``OMP_WAIT_POLICY`` once, when numba's pool loads it, so the
    policy is set to ``PASSIVE`` for that moment only (unless the user chose one) and the
    environment is restored afterwards: other OpenMP runtimes loaded later (torch's) are not
    affected. TBB and numba's workqueue layer do not spin and are left as they are.
    """
    global _started
    if _started:
        return
    chose = "OMP_WAIT_POLICY" in os.environ
    if not chose:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
    finally:
        if not chose:
            del os.environ["OMP_WAIT_POLICY"]
    _started = True
