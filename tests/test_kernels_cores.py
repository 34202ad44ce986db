"""How many threads a kernel may use (mtdmath/_kernels/cores.py): no more than there are idle cores for."""
from __future__ import annotations

import os

import numpy as np
import pytest

import mtdmath
from mtdmath._kernels import cores

numba = pytest.importorskip("numba")

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.mark.parametrize("running, want, expect", [
    (1, 4, min(4, CORES)),  # only the caller runs: every core is idle
    (CORES, 4, 1),  # every other core busy: the caller alone
    (CORES + 7, 4, 1),  # more runnable tasks than cores
    (None, 3, 3),  # the count cannot be read: the request as it is
    (1, 1, 1),
])
def test_usable_threads(monkeypatch, running, want, expect):
    monkeypatch.setattr(cores, "runnable_tasks", lambda: running)
    assert cores.usable_threads(want) == expect


def test_runnable_tasks_counts_the_caller():
    got = cores.runnable_tasks()
    if got is None:
        pytest.skip("no /proc/loadavg here")
    assert got >= 1  # this thread is running while it reads


def test_busy_cores_give_the_serial_route_and_the_same_bits(monkeypatch):
    # the exact posterior's batch route at two threads on idle cores, the serial one when they are busy:
    # the same bits either way (each sequence's arithmetic does not depend on the thread)
    from mtdmath._kernels import bayes as kernel

    if numba.config.NUMBA_NUM_THREADS < 2 or CORES < 2:
        pytest.skip("one thread or one core here: no threaded route to compare")
    ran = []
    for name in ("forward", "forward_batch"):  # record which compiled route runs
        fn = getattr(kernel, name)
        monkeypatch.setattr(kernel, name, lambda *a, fn=fn, name=name: (ran.append(name), fn(*a))[1])
    prev = numba.get_num_threads()
    numba.set_num_threads(2)
    C = np.random.default_rng(3).uniform(0.05, 1.0, (8, 48, 4))
    try:
        monkeypatch.setattr(cores, "runnable_tasks", lambda: 1)
        idle = mtdmath.posterior_mean(C, np.ones(4))
        monkeypatch.setattr(cores, "runnable_tasks", lambda: 1 + CORES)
        busy = mtdmath.posterior_mean(C, np.ones(4))
    finally:
        numba.set_num_threads(prev)
    assert ran == ["forward_batch", "forward"]
    np.testing.assert_array_equal(idle, busy)
