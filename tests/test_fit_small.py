"""Small fits run the compiled EM map on one thread (no thread-pool launch per EM evaluation); the result
must be the same as the parallel launch, bit for bit: each restart's arithmetic does not depend on how the
restarts are spread over threads. (Timing is measured in bench/test_bench_fit_small.py, not here.)"""
from __future__ import annotations

import numpy as np
import pytest

import mtdmath as M
import mtdmath.fitting._em as E
from mtdmath.fitting import MTDModel, fit

pytest.importorskip("numba")


@pytest.mark.parametrize("variant", ["shared", "lagwise"])
def test_serial_small_fit_equals_the_parallel_kernel(variant, monkeypatch):
    true = MTDModel(M.random_transition_matrix(4, concentration=1.0, rng=0), [0.5, 0.3, 0.2])
    y = true.sample(2000, rng=1)
    serial = fit(y, 3, variant=variant, restarts=6, rng=0)  # 6 x (3 x ~60 tuples) cells: the serial path
    monkeypatch.setattr(E, "_PARALLEL_CELLS", 0)  # force the parallel launch
    parallel = fit(y, 3, variant=variant, restarts=6, rng=0)
    assert serial.loglik_ == parallel.loglik_ and serial.n_iter_ == parallel.n_iter_
    np.testing.assert_array_equal(serial.pi_, parallel.pi_)
    np.testing.assert_array_equal(serial.restart_logliks_, parallel.restart_logliks_)
    # the NumPy route (no kernel) reaches the same maximum: 1e-9 relative, the stopping tolerance, since its
    # sums run in another order and the EM path can stop one iteration apart
    monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", "1")
    generic = fit(y, 3, variant=variant, restarts=6, rng=0)
    assert abs(generic.loglik_ - serial.loglik_) <= 1e-9 * abs(serial.loglik_)
