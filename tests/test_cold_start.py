"""What a fresh process's first small fit imports, and the plain-NumPy namespace it runs on.

The cold-start *time* is measured in ``bench/test_bench_cold_start.py`` (fresh processes, CPU time); these
tests pin the causes: no numba, no array-api-compat NumPy wrapper, no SciPy, scikit-learn or torch on the way.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import array_api_compat
import numpy as np
import pytest

from mtdmath import _xp
from mtdmath.fitting import MTDModel, fit

HEAVY = ("numba", "array_api_compat.numpy", "scipy", "sklearn", "torch")


def _first_fit_modules(before: str = "") -> dict:
    code = ("import json, sys, numpy as np; " + before + "import mtdmath.fitting as fitting; "
            "y = fitting.MTDModel(np.array([[0.8, 0.2], [0.3, 0.7]]), [0.6, 0.4]).sample(20_000, rng=0); "
            f"fitting.fit(y, 2, rng=0); print(json.dumps({{k: k in sys.modules for k in {HEAVY!r}}}))")
    env = {k: v for k, v in os.environ.items() if k != "MTDMATH_DISABLE_KERNELS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not _xp.PLAIN_NUMPY, reason="NumPy < 2.1 needs array-api-compat's NumPy namespace")
def test_a_first_small_fit_imports_none_of_the_heavy_modules():
    assert _first_fit_modules() == dict.fromkeys(HEAVY, False)
    # the wrong case: on the wrapped namespace (what NumPy < 2.1 gets) the same fit does build the wrapper
    wrapped = _first_fit_modules("import mtdmath._xp as xpmod; xpmod.PLAIN_NUMPY = False; ")
    assert wrapped["array_api_compat.numpy"] and not wrapped["numba"]


def test_numpy_arrays_get_numpy_itself():
    a = np.ones(3)
    expected = np if _xp.PLAIN_NUMPY else array_api_compat.array_namespace(a)
    assert _xp.array_namespace(a) is expected
    assert _xp.array_namespace(a, 2.0, None, np.float64(1.0)) is expected
    assert _xp.data_space(a).xp is expected and _xp.data_space([1, 2]).xp is expected
    assert _xp.is_numpy_namespace(expected)


def test_other_arrays_keep_array_api_compat_namespace():
    torch = pytest.importorskip("torch")
    strict = pytest.importorskip("array_api_strict")
    for x in (torch.ones(2), strict.ones(2)):
        assert _xp.array_namespace(x) is array_api_compat.array_namespace(x)
        assert _xp.array_namespace(x, 1.0, None) is array_api_compat.array_namespace(x)
    with pytest.raises(TypeError):  # two libraries in one call: array-api-compat's refusal
        _xp.array_namespace(np.ones(2), torch.ones(2))


@pytest.mark.parametrize("variant", ["shared", "lagwise"])
def test_plain_numpy_fit_equals_the_wrapped_namespace_fit(variant, monkeypatch):
    # two namespaces, one set of NumPy operations: the fit must agree bit for bit (the generic EM route,
    # kernels off, so every array operation of the fit goes through the namespace under test)
    monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", "1")
    rng = np.random.default_rng(5)
    y = MTDModel(rng.dirichlet(np.ones(3), size=(3, 3)), rng.dirichlet(np.ones(3))).sample(2000, rng=6)
    plain = fit(y, 3, variant=variant, restarts=4, rng=7)
    monkeypatch.setattr(_xp, "PLAIN_NUMPY", False)
    _xp.numpy_namespace.cache_clear()
    try:
        assert _xp.array_namespace(np.ones(2)) is not np
        wrapped = fit(y, 3, variant=variant, restarts=4, rng=7)
    finally:
        monkeypatch.undo()
        _xp.numpy_namespace.cache_clear()
    assert wrapped.loglik_ == plain.loglik_
    np.testing.assert_array_equal(wrapped.lam_, plain.lam_)
    np.testing.assert_array_equal(wrapped.pi_, plain.pi_)
