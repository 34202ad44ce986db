"""Group ``likelihood``: log_likelihood, gradient, hessian of lam (docs/math.md §2), B x n x m up to 4096 x 1024 x 5.

One implementation serves every backend. Before timing, each torch result is
checked against NumPy on the first batch elements (float64: rtol 1e-10; float32: rtol 1e-4).
"""
from functools import lru_cache

import numpy as np
import pytest
import torch

import _common as C
import mtdmath

SIZES = [(256, 128, 3), (4096, 1024, 5)]  # (B, n, m); the last is the largest
VARIANTS = [("numpy", "float64"), ("torch-cpu", "float64"), ("torch-cpu", "float32"),
            ("torch-cuda", "float64"), ("torch-cuda", "float32")]
ROUNDS = {SIZES[0]: 15, SIZES[1]: 3}


@lru_cache(maxsize=2)
def data(B, n, m):
    rng = np.random.default_rng(B + n + m)
    C_ = rng.uniform(0.01, 1.0, size=(B, n, m))  # lag factors are probabilities pi[a, b]
    lam = rng.dirichlet(np.ones(m), size=B)
    return C_, lam


def _args(backend, dtype, B, n, m):
    C_, lam = data(B, n, m)
    if backend == "numpy":
        return C_, lam
    dt, dev = getattr(torch, dtype), C.DEVICE[backend]
    return torch.as_tensor(C_).to(dev, dt), torch.as_tensor(lam).to(dev, dt)


def _bench(benchmark, kernel, np_fn, torch_fn, backend, dtype, size, out_shape):
    B, n, m = size
    Cx, lamx = _args(backend, dtype, *size)
    fn = (lambda: np_fn(lamx, Cx)) if backend == "numpy" else (lambda: torch_fn(lamx, Cx))
    if backend != "numpy":  # correctness first, on a few batch elements
        C_, lam = data(*size)
        got = torch_fn(lamx[:4], Cx[:4]).detach().cpu().double().numpy()
        np.testing.assert_allclose(got, np_fn(lam[:4], C_[:4]), rtol=1e-10 if dtype == "float64" else 1e-4)
    C.run(benchmark, fn, backend=backend, rounds=ROUNDS[size])
    item = np.dtype(dtype).itemsize
    min_bytes = C.nbytes(Cx, lamx) + item * int(np.prod(out_shape))
    C.record(benchmark, ("likelihood", kernel, backend, dtype, f"B{B}-n{n}-m{m}"), backend=backend,
             min_bytes=min_bytes, largest=size == SIZES[-1])


def _id(v, s):
    return f"{v[0]}-{v[1]}-B{s[0]}-n{s[1]}-m{s[2]}"


CASES = [(v, s) for s in SIZES for v in VARIANTS]
IDS = [_id(v, s) for v, s in CASES]


@pytest.mark.benchmark(group="likelihood")
@pytest.mark.parametrize("variant,size", CASES, ids=IDS)
def test_log_likelihood(benchmark, variant, size):
    _bench(benchmark, "log_likelihood", mtdmath.log_likelihood, mtdmath.log_likelihood, *variant, size, (size[0],))


@pytest.mark.benchmark(group="likelihood")
@pytest.mark.parametrize("variant,size", CASES, ids=IDS)
def test_gradient(benchmark, variant, size):
    _bench(benchmark, "gradient", mtdmath.gradient, mtdmath.gradient, *variant, size, (size[0], size[2]))


@pytest.mark.benchmark(group="likelihood")
@pytest.mark.parametrize("variant,size", CASES, ids=IDS)
def test_hessian(benchmark, variant, size):
    _bench(benchmark, "hessian", mtdmath.hessian, mtdmath.hessian, *variant, size, (size[0], size[2], size[2]))
