"""The exact posterior's compiled routes (mtdmath/_kernels/bayes.py): in place, serial, batch-parallel
and row-split, against each other (bit for bit: every cell gets the same arithmetic on every route)
and at one and two threads in fresh processes (the results may not depend on the thread count)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mtdmath
from mtdmath import bayes as Bm

numba = pytest.importorskip("numba")


def _route(monkeypatch, route, nch=1):
    monkeypatch.setattr(Bm, "_kernel_route", lambda B, n, m, threads: (route, nch))


@pytest.mark.parametrize("m, n, B", [(2, 40, 3), (3, 50, 2), (4, 30, 3), (5, 18, 2), (7, 8, 2)])
def test_routes_are_bit_identical(m, n, B, monkeypatch):
    rng = np.random.default_rng(10 * m + n)
    C = rng.uniform(0.0, 1.0, (B, n, m)) * (rng.random((B, n, m)) < 0.8)
    C[..., 0] += 1e-3  # every row possible
    alpha = rng.uniform(0.3, 3.0, m)
    _route(monkeypatch, "serial")
    want = mtdmath.posterior_mean(C, alpha), mtdmath.log_evidence(C, alpha)
    routes = [("batch", 1)] + ([("rows", k) for k in (2, 3, 5)] if m >= 3 else [])
    for route, nch in routes:
        _route(monkeypatch, route, nch)
        got = mtdmath.posterior_mean(C, alpha), mtdmath.log_evidence(C, alpha)
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"{route} {nch}")
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"{route} {nch}")
    # and the serial kernel against the generic Array-API route (the same products, other sums)
    monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", "1")
    generic = mtdmath.posterior_mean(C, alpha), mtdmath.log_evidence(C, alpha)
    np.testing.assert_allclose(want[0], generic[0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(want[1], generic[1], rtol=1e-12, atol=1e-12)


def test_row_split_reads_the_copied_group(monkeypatch):
    # the row-split route must read the group below each chunk from its copy: a chunk bound inside
    # the recursion changes nothing, while reading the overwritten cells would (the check can fail:
    # with every parent read in place the posterior moves by 7e-2 here: checked by hand)
    from mtdmath._kernels import bayes as K

    rng = np.random.default_rng(2)
    n, m = 24, 4
    C = rng.uniform(0.05, 1.0, (1, n, m))
    alpha = np.ones(m)
    lay = Bm._layout(n, m)
    rows = Bm._ragged_rows(n, lay)
    Cn = C / C.max(axis=2, keepdims=True)

    def run(nch, spare):
        post, ls = np.empty((1, m)), np.log(C.max(axis=2)).sum(axis=1)
        K.forward_rows(Cn, alpha, lay.pk, lay.ps, lay.par, lay.group_start, rows, post, ls, nch, spare)
        return post

    want = run(1, 0)
    np.testing.assert_array_equal(run(4, Bm._spare_cells(n, lay, 4)), want)
    serial = mtdmath.posterior_mean(C, alpha)
    np.testing.assert_allclose(want, serial, rtol=0, atol=0)


THREADS_CODE = """
import numpy as np, mtdmath
from mtdmath import bayes as Bm
Bm._PARALLEL_STATES = 1 << 20  # the row-split route for m = 4, n = 185 at two threads
Bm._BATCH_WORK = 0  # and the batch route for the batches
from mtdmath._kernels import cores
cores.runnable_tasks = lambda: 1  # as on an idle machine: the threaded routes even when other work runs
rng = np.random.default_rng(0)
for (B, n, m) in [(1, 185, 4), (6, 40, 4), (3, 60, 3)]:
    C = rng.uniform(0.05, 1.0, (B, n, m))
    alpha = rng.uniform(0.5, 2.0, m)
    print(mtdmath.posterior_mean(C, alpha).tobytes().hex(), mtdmath.log_evidence(C, alpha).tobytes().hex())
"""


def test_results_do_not_depend_on_the_thread_count():
    # m = 4, n = 185 has 1.1 M states: the row-split route at two threads, the serial one at one;
    # the batches take the batch-parallel route at two threads
    out = {}
    for t in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=t)
        out[t] = subprocess.run([sys.executable, "-c", THREADS_CODE], env=env, capture_output=True, text=True,
                                check=True).stdout
    assert out["1"].count("\n") == 3
    assert out["1"] == out["2"]


def test_route_choice():
    assert Bm._kernel_route(8, 50, 4, 1) == ("serial", 1)
    assert Bm._kernel_route(8, 50, 4, 2)[0] == "batch"
    assert Bm._kernel_route(8, 5, 4, 2)[0] == "serial"  # too little work to wake a thread
    assert Bm._kernel_route(1, 50, 4, 2)[0] == "serial"
    assert Bm._kernel_route(1, 185, 4, 2)[0] == "serial"  # 1.1 M states: a barrier per level costs more
    assert Bm._kernel_route(1, 500, 4, 2)[0] == "rows"  # 21 M states
    assert Bm._kernel_route(1, 10**7, 2, 2)[0] == "serial"  # m = 2: one row, nothing to split


def test_budget_counts_one_level_per_sequence_in_flight():
    one = Bm._bytes_needed(1, 40, 5, kernel=True, threads=1)
    four = Bm._bytes_needed(8, 40, 5, kernel=True, threads=4)
    assert four - one >= 3 * 8 * mtdmath.n_count_states(40, 5)  # four buffers at once on the batch route
