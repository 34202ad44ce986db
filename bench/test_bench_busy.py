"""Groups ``busy`` and ``threads``: do the threaded kernels pay?

``threads`` (idle machine): the exact posterior of a batch of 8 small problems (m = 4, n = 48,
the batch-parallel route, with the count of idle cores pinned so that the threaded route runs
whatever the load) at two numba threads against one.

``busy``: each threaded kernel next to a competing busy process (one Python loop that never
sleeps, started for the group), at one and at two numba threads; the summary reports the
two-thread time as a ratio to the one-thread time under the same competition (target <= 1: a
thread that waits on a descheduled worker must not make the call slower than not threading;
the kernels take no more threads than there are idle cores for, mtdmath/_kernels/cores.py).
``python bench/thread_targets.py`` measures the same targets interleaved, in wall and CPU time.
Kernels: the fit (S = 10, m = 4, n = 1e5, 10 restarts), the exact posterior's batch route (8 x
m = 4, n = 48) and row-split route (m = 4, n = 185), the all-prefix predictive (1024 x 256).
Wall time (what a user waits for), median of the rounds.
"""
from __future__ import annotations

import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest

import _common as C
import mtdmath

numba = pytest.importorskip("numba")

THREADS = [1, 2]


@pytest.fixture(scope="module")
def busy_process():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def threads(request):
    prev = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
    yield numba.get_num_threads()
    numba.set_num_threads(prev)


@lru_cache(maxsize=1)
def fit_chain():
    from mtdmath.fitting import MTDModel

    rng = np.random.default_rng(0)
    true = MTDModel(mtdmath.random_transition_matrix(10, concentration=0.5, rng=rng), rng.dirichlet(np.ones(4)))
    return true.sample(100_000, rng=1)


@lru_cache(maxsize=None)
def bayes_batch(B, n, m):
    return np.random.default_rng(B * n + m).uniform(0.05, 1.0, (B, n, m))


@lru_cache(maxsize=1)
def tokens():
    rng = np.random.default_rng(6)
    pi = mtdmath.random_transition_matrix(16, rng=rng)
    return mtdmath.sample_icl(pi, np.array([2.0, 1.0, 0.5]), 256, 1024, rng=rng)[0], pi


def _case(kernel):
    if kernel == "fit":
        y = fit_chain()
        mtdmath.fitting.fit(y[:2000], 4, restarts=2, rng=0)  # compile / load the kernels first
        return lambda: mtdmath.fitting.fit(y, 4, restarts=10, rng=0), 3
    if kernel == "bayes_batch":
        Cb = bayes_batch(8, 48, 4)
        return lambda: mtdmath.posterior_mean(Cb, np.ones(4)), 5
    if kernel == "bayes_rows":
        Cb = bayes_batch(1, 185, 4)
        return lambda: mtdmath.posterior_mean(Cb, np.ones(4)), 3
    y, pi = tokens()
    return lambda: mtdmath.md_predictive_all_prefixes(y, pi, np.array([2.0, 1.0, 0.5])), 5


KERNELS = ["fit", "bayes_batch", "bayes_rows", "allprefix"]


@pytest.mark.benchmark(group="busy")
@pytest.mark.parametrize("threads", THREADS, indirect=True, ids=[f"threads{t}" for t in THREADS])
@pytest.mark.parametrize("kernel", KERNELS)
def test_busy(benchmark, busy_process, kernel, threads):
    fn, rounds = _case(kernel)
    C.run(benchmark, fn, backend="numpy", rounds=rounds)
    C.record(benchmark, ("busy", kernel, "numpy", "float64", f"threads{threads}"), backend="numpy", min_bytes=1)


@pytest.mark.benchmark(group="threads")
@pytest.mark.parametrize("threads", THREADS, indirect=True, ids=[f"threads{t}" for t in THREADS])
def test_bayes_batch_threads(benchmark, monkeypatch, threads):
    from mtdmath._kernels import cores

    # the threaded route itself, as on an idle machine (else a busy machine gets the serial route)
    monkeypatch.setattr(cores, "runnable_tasks", lambda: 1)
    fn, rounds = _case("bayes_batch")
    C.run(benchmark, fn, backend="numpy", rounds=rounds)
    C.record(benchmark, ("threads", "bayes_batch", "numpy", "float64", f"threads{threads}"), backend="numpy",
             min_bytes=1)
