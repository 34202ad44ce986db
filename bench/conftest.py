"""Benchmark harness: `pytest bench --benchmark-only` (not part of `pytest -q`: testpaths = tests).

- Backends ``numpy``, ``torch-cpu`` and ``torch-cuda`` (skipped without a GPU).
- Every benchmark records in ``extra_info``: ``min_bytes`` (inputs read once + outputs written
  once), ``achieved_GBps = min_bytes / median time``, ``limit_GBps`` (the copy bandwidth of its
  device, measured in this run: on the CPU the faster of the NumPy and the torch copy of a
  256 MiB array, on a GPU the torch copy) and ``fraction_of_limit`` (their ratio, clipped to
  [0, 1]; ``fraction_raw`` unclipped — above 1 only when the data sit in cache).
- At the end a "targets" summary is printed: the md-predictive fraction of the copy
  bandwidth, the speed-up over the naive loop, torch CPU against NumPy at the largest sizes, and
  the exact-posterior times.

Torch CPU allocator: on Linux NumPy asks for transparent huge pages on large arrays by default;
PyTorch does so only when ``THP_MEM_ALLOC_ENABLE=1`` is set before it is imported. Without it,
every fresh large torch tensor costs ~1.5 ms/MB of page faults on this VM (a 66 MB output:
~100 ms, against 6 ms to copy it), which would measure the kernel's page faults rather than the
kernels. The harness therefore sets ``THP_MEM_ALLOC_ENABLE=1`` unless the variable is already set
(``THP_MEM_ALLOC_ENABLE=0 pytest bench --benchmark-only`` measures the default allocator); the
value is recorded in every benchmark's ``extra_info``.

NumPy's BLAS: NumPy is single-threaded except in BLAS calls, and the kernels here only make tiny
ones ((rows x 16) @ (16 x 16), (4096 x 3) @ (3 x n)). OpenBLAS's thread pool spin-waits on this
shared 2-core VM and made those calls 2-5x slower in wall time than one thread, so the harness
sets ``OPENBLAS_NUM_THREADS=1`` unless it is already set. Torch keeps its default intra-op
threads (its BLAS is MKL with OpenMP, unaffected), so "torch no slower than NumPy" compares
torch's threads against single-threaded NumPy.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch is imported (see above)
# before NumPy is imported (see above); recorded in machine_info
_OPENBLAS_PRESET = "numpy" in sys.modules
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import _common as C  # noqa: E402


def pytest_configure(config):
    # pyproject's addopts carries --benchmark-disable (so that `pytest -q` never times anything);
    # an explicit --benchmark-only asks for the timings, so it wins here. This hook runs before
    # pytest-benchmark's own (trylast) configure, which would otherwise refuse the combination.
    if config.getoption("benchmark_only", False):
        config.option.benchmark_disable = False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "torch-cuda" in item.nodeid and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="torch-cuda: no CUDA GPU on this machine"))


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["numpy"] = np.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["THP_MEM_ALLOC_ENABLE"] = os.environ.get("THP_MEM_ALLOC_ENABLE")
    machine_info["OPENBLAS_NUM_THREADS"] = os.environ.get("OPENBLAS_NUM_THREADS")
    machine_info["numpy_imported_before_harness"] = _OPENBLAS_PRESET
    machine_info["loadavg_at_end"] = os.getloadavg()
    machine_info["copy_bandwidth_GBps"] = {k: v / 1e9 for k, v in C.BANDWIDTH.items()}


@pytest.fixture(scope="session", autouse=True)
def copy_bandwidth():
    """Copy bandwidth (bytes moved per second: read + write) of each CPU backend, measured once
    at the start of the session (CUDA: on first use).

    A 256 MiB float64 array (8x the 32 MiB L3 cache) is copied into a preallocated one 9 times
    (after one warm-up); the median time gives ``2 · nbytes / t``. The median, not the best,
    so that the limit is taken under the same load as the kernels' median times.
    """
    for backend in ("numpy", "torch-cpu"):
        C.measure_copy_bandwidth(backend)
    return C.BANDWIDTH


@pytest.fixture(scope="session", autouse=True)
def _report_load():
    C.LOAD["start"] = os.getloadavg()
    t0 = time.perf_counter()
    yield
    C.LOAD["end"] = os.getloadavg()
    C.LOAD["wall_s"] = time.perf_counter() - t0


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables: the targets are the last lines of the output
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = C.target_summary()
    if lines:
        terminalreporter.section("performance targets (measured in this run)")
        for ln in lines:
            terminalreporter.write_line(ln)
