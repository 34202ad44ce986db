"""The fit's EM kernel (mtdmath/_kernels/fitem.py): serial and threaded routes, the thread policy."""
import os

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from mtdmath._kernels import fitem  # noqa: E402


def _problem(variant="lagwise", restarts=7):
    from mtdmath.fitting import TransitionCounts
    from mtdmath.fitting._em import EM as _EM, Layout

    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, size=4000)
    lay = Layout(5, 3, variant, False)
    em = _EM(TransitionCounts.from_sequences([y], lags=(1, 2, 3)), lay)
    x = np.stack([lay.normalise(rng.random(lay.size)) for _ in range(restarts)])
    x[3, lay.K:] = 0.0  # every emission at 0: the data are impossible under restart 3
    return em, lay, x


@pytest.mark.parametrize("variant", ["shared", "lagwise"])
def test_threaded_route_is_bit_identical_to_the_serial_one(variant, monkeypatch):
    em, lay, x = _problem(variant)
    args = (em.idx_i64, em.w, lay.K, lay.S, em.n_rest, False)
    serial_new, serial_ll = np.empty_like(x), np.empty(x.shape[0])
    fitem._em_serial(x, *args, serial_new, serial_ll)
    assert serial_ll[3] == -np.inf and np.array_equal(serial_new[3], x[3])
    assert np.isfinite(np.delete(serial_ll, 3)).all()
    monkeypatch.setattr(fitem, "SERIAL_CELLS", 0)  # force the threaded route
    for n_jobs in (None, 2, 1):
        new, ll = np.empty_like(x), np.empty(x.shape[0])
        fitem.em_batch(x, *args, new, ll, n_jobs=n_jobs)
        np.testing.assert_array_equal(new, serial_new)
        np.testing.assert_array_equal(ll, serial_ll)
    # one restart at a time through the block kernel gives the same bits as the whole block
    for r in range(x.shape[0]):
        new, ll = np.empty_like(x[r:r + 1]), np.empty(1)
        fitem._em_serial(x[r:r + 1], *args, new, ll)
        np.testing.assert_array_equal(new[0], serial_new[r])
        assert ll[0] == serial_ll[r]


def test_thread_policy(monkeypatch):
    from mtdmath._kernels import cores

    monkeypatch.setattr(cores, "runnable_tasks", lambda: 1)  # as on an idle machine, whatever else runs
    many = fitem.SERIAL_CELLS
    assert fitem.threads_for(many - 1, 10) == 1  # small: serial, the pool is not woken
    assert fitem.threads_for(many, 1) == 1  # one restart: nothing to spread
    assert fitem.threads_for(many, 10, n_jobs=1) == 1
    assert fitem.threads_for(many, 10, n_jobs=-1) == min(numba.get_num_threads(), 10)
    assert fitem.threads_for(many, 10, n_jobs=10**6) <= numba.config.NUMBA_NUM_THREADS
    monkeypatch.setattr(cores, "runnable_tasks", lambda: 10**6)  # every core busy: the calling thread alone
    assert fitem.threads_for(many, 10, n_jobs=-1) == 1


def test_start_threads_leaves_the_environment_as_it_was():
    from mtdmath import _kernels

    before = os.environ.get("OMP_WAIT_POLICY")
    _kernels.start_threads()
    assert os.environ.get("OMP_WAIT_POLICY") == before


def test_small_work_does_not_import_numba_in_a_fresh_process():
    import subprocess
    import sys

    code = ("import sys; from mtdmath import _kernels; small = _kernels.enabled(work=10); "
            "print(small, 'numba' in sys.modules, _kernels.enabled(work=10**9), _kernels.enabled(work=10))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # small and fresh: no numba; large: numba imported and used; small again once numba is loaded: used
    assert out == ["False", "False", "True", "True"]


@pytest.mark.parametrize("variant, independent, freeze, order", [
    ("shared", False, False, 3), ("lagwise", False, False, 3), ("shared", True, False, 2), ("shared", False, True, 3),
    ("shared", False, False, 1)])
def test_predicted_gain_kernel_equals_the_numpy_one(variant, independent, freeze, order):
    from mtdmath.fitting import TransitionCounts
    from mtdmath.fitting._em import EM as _EM, Layout

    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, size=2000)  # 3 symbols and 3 lags: equal context tokens are common (shared rows)
    lay = Layout(3, order, variant, independent)
    em = _EM(TransitionCounts.from_sequences([y], lags=tuple(range(1, order + 1))), lay, freeze_pi=freeze)
    for _ in range(4):
        theta = lay.normalise(rng.random(lay.size))
        kept = theta.copy()
        theta[lay.K + 1] = 0.0  # an entry at 0: excluded from the argmax of its row ...
        if not (em.estep(theta)[1] > 0).all():  # ... unless that makes the data impossible
            theta = kept
        want = em.predicted_gain_generic(theta)
        got = fitem.predicted_gain(theta, em.idx_i64, em.w, em.nxt.astype(np.int64), em.row_of.astype(np.int64),
                                   em.shared_rows, lay.K, lay.S, em.n_rest, freeze)
        # the same terms summed in another order (bincount/einsum against one pass): 1e-12 relative
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
        assert want > 0 or freeze
        em.kernel = True  # the EM's dispatch (as inside a run) gives the kernel's value
        assert em.predicted_gain(theta) == got
        em.kernel = False
        assert em.predicted_gain(theta) == want
        em.kernel = None
