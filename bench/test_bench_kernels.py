"""Group ``kernels``: the compiled fast paths against the generic routes and against the write ceiling.

All at one thread (numba and torch), measured side by side in one run:

- ``write_ceiling``: a fresh ``np.empty`` of the all-prefix predictive's output (B x (T-m+1) x S)
  plus a fill — what writing that many bytes costs on this machine, page faults of the first
  touch included — and ``write_ceiling_prealloc``, the fill into an existing buffer;
- ``allprefix_kernel`` (NumPy float64 and float32 pi): the fused kernel behind
  ``md_predictive_all_prefixes``; ``allprefix_generic``: the Array-API route it replaced
  (``MTDMATH_DISABLE_KERNELS=1``), on NumPy float64 and torch float32;
- ``bayes_kernel`` / ``bayes_generic``: the exact posterior, reported in ns per state-step
  (Σ_L n_count_states(L, m) cell updates);
- ``bayes_peak_rss``: the peak resident memory of m = 5, n = 128 in a fresh process.

``MTDMATH_BENCH_SLOW=1`` adds m = 5, n = 256 (minutes; 187 M states per level).
"""
from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest
import torch

import _common as C
import mtdmath

numba = pytest.importorskip("numba")

S, m = 16, 3
ALPHA = np.array([2.0, 1.0, 0.5])
B, T = 4096, 256
OUT_SHAPE = (B, T - m + 1, S)
SLOW = os.environ.get("MTDMATH_BENCH_SLOW", "") not in ("", "0")


@pytest.fixture(autouse=True)
def one_thread():
    nb_threads, t_threads = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    numba.set_num_threads(nb_threads)
    torch.set_num_threads(t_threads)


@pytest.fixture
def generic(monkeypatch):
    monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", "1")


@lru_cache(maxsize=1)
def problem():
    rng = np.random.default_rng(6)
    pi = mtdmath.random_transition_matrix(S, rng=rng)
    tokens, _ = mtdmath.sample_icl(pi, ALPHA, T, B, rng=rng)
    return tokens, pi


def _out_bytes(dtype: str) -> int:
    return int(np.prod(OUT_SHAPE)) * np.dtype(dtype).itemsize


@pytest.mark.benchmark(group="kernels")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_write_ceiling(benchmark, dtype):
    def fn():
        a = np.empty(OUT_SHAPE, dtype=dtype)
        a.fill(1.0)
        return a

    C.run(benchmark, fn, backend="numpy", rounds=7)
    C.record(benchmark, ("kernels", "write_ceiling", "numpy", dtype, f"B{B}-T{T}"), backend="numpy",
             min_bytes=_out_bytes(dtype))


@pytest.mark.benchmark(group="kernels")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_write_ceiling_prealloc(benchmark, dtype):
    a = np.empty(OUT_SHAPE, dtype=dtype)
    a.fill(0.0)
    C.run(benchmark, lambda: a.fill(1.0), backend="numpy", rounds=7)
    C.record(benchmark, ("kernels", "write_ceiling_prealloc", "numpy", dtype, f"B{B}-T{T}"), backend="numpy",
             min_bytes=_out_bytes(dtype))


@pytest.mark.benchmark(group="kernels")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_allprefix_kernel(benchmark, dtype):
    tokens, pi = problem()
    P = pi.astype(dtype)
    mtdmath.md_predictive_all_prefixes(tokens[:2], P, ALPHA)  # compile / load the cached kernel first
    C.run(benchmark, lambda: mtdmath.md_predictive_all_prefixes(tokens, P, ALPHA), backend="numpy", rounds=7)
    C.record(benchmark, ("kernels", "allprefix_kernel", "numpy", dtype, f"B{B}-T{T}"), backend="numpy",
             min_bytes=_out_bytes(dtype) + tokens.nbytes)


@pytest.mark.benchmark(group="kernels")
@pytest.mark.parametrize("variant", [("numpy", "float64"), ("torch-cpu", "float32")],
                         ids=["numpy-float64", "torch-cpu-float32"])
def test_allprefix_generic(benchmark, generic, variant):
    backend, dtype = variant
    tokens, pi = problem()
    if backend == "numpy":
        y, P = tokens, pi
    else:
        y, P = torch.as_tensor(tokens), torch.as_tensor(pi, dtype=torch.float32)
    C.run(benchmark, lambda: mtdmath.md_predictive_all_prefixes(y, P, ALPHA), backend=backend, rounds=3)
    C.record(benchmark, ("kernels", "allprefix_generic", backend, dtype, f"B{B}-T{T}"), backend=backend,
             min_bytes=_out_bytes(dtype) + tokens.nbytes)


BAYES = [(3, 512), (5, 64)] + ([(5, 256)] if SLOW else [])


@lru_cache(maxsize=None)
def bayes_C(m_: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(100 * m_ + n)
    return rng.uniform(0.05, 1.0, (n, m_))


def _state_steps(m_: int, n: int) -> int:
    return sum(mtdmath.n_count_states(L, m_) for L in range(1, n + 1))


@pytest.mark.benchmark(group="kernels")
@pytest.mark.parametrize("route", ["kernel", "generic"])
@pytest.mark.parametrize("m_,n", BAYES, ids=[f"m{a}-n{b}" for a, b in BAYES])
def test_bayes(benchmark, monkeypatch, route, m_, n):
    if route == "generic":
        if (m_, n) == (5, 256):
            pytest.skip("the padded NumPy route needs > 8 GiB here")
        monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", "1")
    Cx = bayes_C(m_, n)
    alpha = np.ones(m_)
    mtdmath.posterior_mean(Cx[:3], alpha)  # compile / load the kernel, build a small layout
    budget = 16 * 2**30
    rounds = 1 if n > 128 else 3
    C.run(benchmark, lambda: mtdmath.posterior_mean(Cx, alpha, max_bytes=budget), backend="numpy", rounds=rounds,
          warmup=0 if n > 128 else 1)
    extra = {}
    if benchmark.stats is not None:
        extra["ns_per_state_step"] = benchmark.stats.stats.median / _state_steps(m_, n) * 1e9
    C.record(benchmark, ("kernels", f"bayes_{route}", "numpy", "float64", f"m{m_}-n{n}"), backend="numpy",
             min_bytes=16 * _state_steps(m_, n), **extra)


PEAK_CODE = """
import sys, numpy as np, mtdmath
n, m = int(sys.argv[1]), int(sys.argv[2])
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
C = np.random.default_rng(0).uniform(0.05, 1, (n, m))
mtdmath.posterior_mean(C[:3], np.ones(m))  # load numba and the compiled kernel first
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = rss("VmRSS")
mtdmath.posterior_mean(C, np.ones(m))
print(rss("VmHWM") - base)
"""


def peak_rss_growth(n: int, m_: int) -> int:
    """Peak resident memory added by one exact posterior of (n, m) in a fresh process (bytes)."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PEAK_CODE, str(n), str(m_)], capture_output=True, text=True,
                         check=True, env=env)
    return int(out.stdout)


@pytest.mark.benchmark(group="kernels")
@pytest.mark.parametrize("m_,n", [(5, 128)], ids=["m5-n128"])
def test_bayes_peak_rss(benchmark, m_, n):
    grew = C.run(benchmark, lambda: peak_rss_growth(n, m_), backend="numpy", rounds=1, warmup=0)
    C.record(benchmark, ("kernels", "bayes_peak_rss", "numpy", "float64", f"m{m_}-n{n}"), backend="numpy",
             min_bytes=1, peak_bytes=grew)


@lru_cache(maxsize=1)
def fit_chain():
    from mtdmath.fitting import MTDModel

    rng = np.random.default_rng(0)
    true = MTDModel(mtdmath.random_transition_matrix(10, concentration=0.5, rng=rng), rng.dirichlet(np.ones(4)))
    return true.sample(100_000, rng=1)


@pytest.mark.benchmark(group="kernels")
@pytest.mark.parametrize("route", ["kernel", "generic"])
def test_fit(benchmark, monkeypatch, route):
    # S = 10, m = 4, n = 1e5, 10 restarts: the fused E+M kernel against the NumPy EM map
    if route == "generic":
        monkeypatch.setenv("MTDMATH_DISABLE_KERNELS", "1")
    y = fit_chain()
    mtdmath.fitting.fit(y[:2000], 4, restarts=2, rng=0)  # compile / load the kernel
    f = C.run(benchmark, lambda: mtdmath.fitting.fit(y, 4, restarts=10, rng=0), backend="numpy", rounds=3)
    C.record(benchmark, ("kernels", f"fit_{route}", "numpy", "float64", "S10-m4-n100000"), backend="numpy",
             min_bytes=y.nbytes, loglik=float(f.loglik_))
