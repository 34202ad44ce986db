"""Small fits run the compiled EM map on one thread (no thread-pool launch per EM evaluation) and, in a fresh
process, in NumPy without importing numba; the result must be the same at any ``n_jobs``, bit for bit: each
restart's arithmetic does not depend on how the restarts are spread over threads. (Timing is measured in
bench/, not here.)"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import mtdmath
from mtdmath.fitting import MTD, MTDModel, fit, select_lags, select_order

numba = pytest.importorskip("numba")
from mtdmath._kernels import cores, fitem  # noqa: E402  (after the skip: it imports numba)


@pytest.mark.parametrize("variant", ["shared", "lagwise"])
def test_serial_small_fit_equals_the_parallel_kernel(variant, monkeypatch):
    true = MTDModel(mtdmath.random_transition_matrix(4, concentration=1.0, rng=0), [0.5, 0.3, 0.2])
    y = true.sample(2000, rng=1)
    calls = []
    kernel = fitem.em_batch
    monkeypatch.setattr(fitem, "em_batch", lambda *a, **k: (calls.append(k["n_jobs"]), kernel(*a, **k))[1])
    serial = fit(y, 3, variant=variant, restarts=6, rng=0, n_jobs=1)
    assert calls and set(calls) == {1}  # the kernel route (numba is imported here), with n_jobs passed down
    monkeypatch.setattr(fitem, "SERIAL_CELLS", 0)  # force the threaded launch of the kernel
    monkeypatch.setattr(cores, "runnable_tasks", lambda: 1)  # as on an idle machine, whatever else runs
    if numba.config.NUMBA_NUM_THREADS >= 2:  # else threads_for caps it at one: nothing to compare
        assert fitem.threads_for(1, 6, n_jobs=2) == 2
    parallel = fit(y, 3, variant=variant, restarts=6, rng=0, n_jobs=2)
    assert serial.loglik_ == parallel.loglik_ and serial.n_iter_ == parallel.n_iter_
    np.testing.assert_array_equal(serial.pi_, parallel.pi_)
    np.testing.assert_array_equal(serial.restart_logliks_, parallel.restart_logliks_)
    # the NumPy route (no kernel) reaches the same maximum: 1e-9 relative, the stopping tolerance, since its
    # sums run in another order and the EM path can stop one iteration apart
    monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", "1")
    generic = fit(y, 3, variant=variant, restarts=6, rng=0)
    assert abs(generic.loglik_ - serial.loglik_) <= 1e-9 * abs(serial.loglik_)


def test_n_jobs_is_validated_before_any_work():
    y = np.zeros(50, dtype=int)  # a constant sequence: the fit itself would run
    for bad, what in ((0, "got 0"), (1.5, "integer"), (True, "integer"), ("2", "integer")):
        with pytest.raises(ValueError, match=f"n_jobs.*{what}"):
            MTD(2, n_jobs=bad).fit(y)
        with pytest.raises(ValueError, match="n_jobs"):
            fit(y, 2, n_jobs=bad)
        with pytest.raises(ValueError, match="n_jobs"):
            select_order(y, 2, n_jobs=bad)
        with pytest.raises(ValueError, match="n_jobs"):
            select_lags(y, 2, n_jobs=bad)
    assert MTD(2, n_jobs=-1).get_params()["n_jobs"] == -1  # scikit-learn's clone / grid search see it


def test_a_small_fit_in_a_fresh_process_does_not_import_numba():
    # the NumPy route below COLD_WORK: numba's import and the cached kernel's load cost more than the fit
    code = ("import sys, numpy as np; import mtdmath.fitting as F; "
            "y = F.MTDModel(np.array([[0.8, 0.2], [0.3, 0.7]]), [0.6, 0.4]).sample(20_000, rng=0); "
            "F.fit(y, 2, rng=0); print('numba' in sys.modules)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "MTDMATH_DISABLE_KERNELS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False"]
    # the wrong case: a large problem (10 restarts x 4 lags x ~86,000 distinct tuples, above COLD_WORK) does
    # import it, so the check above can fail; two EM evaluations are enough to take the route
    big = ("import sys, warnings, numpy as np; import mtdmath.fitting as F; "
           "warnings.simplefilter('ignore'); y = np.random.default_rng(0).integers(0, 10, 200_000); "
           "F.fit(y, 4, rng=0, max_iter=2); print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", big], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True"]
