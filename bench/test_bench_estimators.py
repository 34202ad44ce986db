"""Group ``estimators``: k-step mirror descent and EM (k = 1, 5, 50) from μ, and the MLE (docs/math.md §3).

B x n x m = 1024 x 256 x 3 (lag factors of sequences from the in-context task, S = 16). One
implementation serves every backend; torch results are checked against NumPy before timing.
"""
from functools import lru_cache

import numpy as np
import pytest
import torch

import _common as C
import mtdmath

B, n, m, S = 1024, 256, 3, 16
SIZE = f"B{B}-n{n}-m{m}"
ALPHA = np.array([2.0, 1.0, 0.5])
MU = ALPHA / ALPHA.sum()
ETA = mtdmath.eta_bayes(ALPHA)
KS = (1, 5, 50)
ROUNDS = {1: 15, 5: 7, 50: 3}
VARIANTS = [("numpy", "float64"), ("torch-cpu", "float64"), ("torch-cpu", "float32"),
            ("torch-cuda", "float64"), ("torch-cuda", "float32")]


@lru_cache(maxsize=1)
def lag_factors():
    rng = np.random.default_rng(5)
    pi = mtdmath.random_transition_matrix(S, rng=rng)
    tokens, _ = mtdmath.sample_icl(pi, ALPHA, n + m, B, rng=rng)
    return mtdmath.lag_factors(tokens, pi, m)


def _fn(kernel, backend, dtype, k, rows=slice(None)):
    """The timed call on C[rows], and C[rows] in the backend's form."""
    C_ = lag_factors()[rows]
    if backend != "numpy":
        C_ = torch.as_tensor(C_).to(C.DEVICE[backend], getattr(torch, dtype))
    lib = M  # one implementation for every backend
    if kernel == "mirror_descent":
        return C_, lambda: lib.mirror_descent(C_, eta=ETA, steps=k, lam0=MU)
    return C_, lambda: lib.em(C_, steps=k, lam0=MU)


def _check(got, want, dtype):
    got = got.detach().cpu().double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10 if dtype == "float64" else 1e-4, atol=1e-12)


CASES = [(v, k) for k in KS for v in VARIANTS]
IDS = [f"{v[0]}-{v[1]}-k{k}-{SIZE}" for v, k in CASES]


def _bench(benchmark, kernel, variant, k):
    backend, dtype = variant
    Cx, fn = _fn(kernel, backend, dtype, k)
    if backend != "numpy":  # correctness first, on 8 sequences
        _check(_fn(kernel, backend, dtype, k, slice(8))[1](), _fn(kernel, "numpy", "float64", k, slice(8))[1](), dtype)
    C.run(benchmark, fn, backend=backend, rounds=ROUNDS[k], warmup=0 if k == 50 else 1)
    C.record(benchmark, ("estimators", f"{kernel}-k{k}", backend, dtype, SIZE), backend=backend,
             min_bytes=C.nbytes(Cx) + B * m * np.dtype(dtype).itemsize, largest=True)


@pytest.mark.benchmark(group="estimators")
@pytest.mark.parametrize("variant,k", CASES, ids=IDS)
def test_mirror_descent(benchmark, variant, k):
    _bench(benchmark, "mirror_descent", variant, k)


@pytest.mark.benchmark(group="estimators")
@pytest.mark.parametrize("variant,k", CASES, ids=IDS)
def test_em(benchmark, variant, k):
    _bench(benchmark, "em", variant, k)


MLE_VARIANTS = [("numpy", "float64"), ("torch-cpu", "float64"), ("torch-cuda", "float64")]


@pytest.mark.benchmark(group="estimators")
@pytest.mark.parametrize("variant", MLE_VARIANTS, ids=[f"{v[0]}-{v[1]}-{SIZE}" for v in MLE_VARIANTS])
def test_mle(benchmark, variant):
    backend, dtype = variant
    C_ = lag_factors()
    Cx = C_ if backend == "numpy" else torch.as_tensor(C_).to(C.DEVICE[backend], getattr(torch, dtype))
    lam = C.run(benchmark, lambda: mtdmath.mle(Cx), backend=backend, rounds=3)
    lam = lam if backend == "numpy" else lam.detach().cpu().numpy()
    assert np.all(mtdmath.kkt_gap(lam, C_) < 1e-10)
    C.record(benchmark, ("estimators", "mle", backend, dtype, SIZE), backend=backend,
             min_bytes=C.nbytes(C_) + B * m * 8)
