"""Group ``md-predictive``: the one-step MD predictive law after every prefix (docs/math.md §3, §5).

B x T = 4096 x 256 and 256 x 64, m = 3, S = 16. Kernels:

- ``md_predictive_all_prefixes``: the one implementation on NumPy (float64; the ``bincount @ pi``
  fast path) and torch (float64 and float32; the ``embedding_bag`` fast path);
- ``transformer``: the forward pass of ``MDTransformer.construct(pi, alpha)`` (float32). It forms
  (B, T, T) attention matrices as a transformer does; at T = 256 that is 0.27 GB per matrix per
  512 sequences, so it runs on B = 512 there (its own id), not 4096;
- ``naive_loop``: for each sequence and each prefix, ``lag_factors`` + ``one_step_md`` +
  ``predictive`` of the NumPy core — what one writes without vectorising. It runs on 4 sequences;
  ``scaled_median_s`` (in extra_info) is its median time x B/4, compared in the summary.

Every kernel's rows are checked against the NumPy vectorised ones on a few sequences before timing
(float64: 1e-10; float32: 1e-5 absolute on probabilities).
"""
from functools import lru_cache

import numpy as np
import pytest
import torch

import _common as C
import mtdmath

S, m = 16, 3
ALPHA = np.array([2.0, 1.0, 0.5])
SMALL, LARGE = (256, 64), (4096, 256)
NAIVE_B = 4
ROUNDS = {SMALL: 15, LARGE: 5, (512, 256): 3}


@lru_cache(maxsize=1)
def _problem():
    rng = np.random.default_rng(6)
    pi = mtdmath.random_transition_matrix(S, rng=rng)
    tokens, _ = mtdmath.sample_icl(pi, ALPHA, LARGE[1], LARGE[0], rng=rng)
    return tokens, pi


def get(B, T):
    """The first B sequences of the large problem, cut to length T (contiguous)."""
    tok, pi = _problem()
    return np.ascontiguousarray(tok[:B, :T]), pi


def min_bytes(B, T, itemsize):
    # tokens (int64) and pi read once, the (B, T-m+1, S) output written once
    return B * T * 8 + S * S * itemsize + B * (T - m + 1) * S * itemsize


def naive(tokens, pi, alpha):
    out = np.empty((tokens.shape[0], tokens.shape[1] - m + 1, S))
    for b, y in enumerate(tokens):
        for t in range(m - 1, y.shape[0]):
            prefix = y[: t + 1]
            lam = mtdmath.one_step_md(mtdmath.lag_factors(prefix, pi, m), alpha)
            out[b, t - m + 1] = mtdmath.predictive(lam, prefix, pi)
    return out


def _check(got, tokens, pi, dtype):
    ref = mtdmath.md_predictive_all_prefixes(tokens[:3], pi, ALPHA)
    got = got.detach().cpu().double().numpy() if isinstance(got, torch.Tensor) else got
    np.testing.assert_allclose(got[:3], ref, rtol=0, atol=1e-10 if dtype == "float64" else 1e-5)


SIZES = [SMALL, LARGE]
VARIANTS = [("numpy", "float64"), ("torch-cpu", "float64"), ("torch-cpu", "float32"),
            ("torch-cuda", "float64"), ("torch-cuda", "float32")]
CASES = [(v, s) for s in SIZES for v in VARIANTS]


@pytest.mark.benchmark(group="md-predictive")
@pytest.mark.parametrize("variant,size", CASES, ids=[f"{v[0]}-{v[1]}-B{s[0]}-T{s[1]}" for v, s in CASES])
def test_all_prefixes(benchmark, variant, size):
    backend, dtype = variant
    tokens, pi = get(*size)
    if backend == "numpy":
        fn = lambda: mtdmath.md_predictive_all_prefixes(tokens, pi, ALPHA)  # noqa: E731
    else:
        dev = C.DEVICE[backend]
        yt = torch.as_tensor(tokens).to(dev)
        pit = torch.as_tensor(pi).to(dev, getattr(torch, dtype))
        fn = lambda: mtdmath.md_predictive_all_prefixes(yt, pit, ALPHA)  # noqa: E731
    if backend != "numpy":  # (every backend is tested in tests/test_backends.py)
        _check(mtdmath.md_predictive_all_prefixes(yt[:3], pit, ALPHA), tokens, pi, dtype)
    C.run(benchmark, fn, backend=backend, rounds=ROUNDS[size])
    C.record(benchmark, ("md-predictive", "md_predictive_all_prefixes", backend, dtype, f"B{size[0]}-T{size[1]}"),
             backend=backend, min_bytes=min_bytes(*size, np.dtype(dtype).itemsize), largest=size == LARGE)


T_SIZES = [SMALL, (512, 256)]
T_CASES = [(b, s) for s in T_SIZES for b in ("torch-cpu", "torch-cuda")]


@pytest.mark.benchmark(group="md-predictive")
@pytest.mark.parametrize("backend,size", T_CASES, ids=[f"transformer-{b}-float32-B{s[0]}-T{s[1]}" for b, s in T_CASES])
def test_transformer(benchmark, backend, size):
    tokens, pi = get(*size)
    dev = C.DEVICE[backend]
    model = mtdmath.nn.MDTransformer.construct(pi, ALPHA, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(tokens).to(dev)

    def fn():
        with torch.no_grad():
            return torch.softmax(model(yt), dim=-1)  # forward returns the logits

    with torch.no_grad():
        _check(torch.softmax(model(yt[:3]), dim=-1), tokens, pi, "float32")
    C.run(benchmark, fn, backend=backend, rounds=ROUNDS[size])
    C.record(benchmark, ("md-predictive", "transformer", backend, "float32", f"B{size[0]}-T{size[1]}"),
             backend=backend, min_bytes=min_bytes(*size, 4))


@pytest.mark.benchmark(group="md-predictive")
@pytest.mark.parametrize("size", SIZES, ids=[f"naive_loop-numpy-float64-B{NAIVE_B}of{s[0]}-T{s[1]}" for s in SIZES])
def test_naive_loop(benchmark, size):
    tokens, pi = get(*size)
    sub = tokens[:NAIVE_B]
    _check(naive(sub[:3], pi, ALPHA), tokens, pi, "float64")
    C.run(benchmark, lambda: naive(sub, pi, ALPHA), backend="numpy", rounds=3, warmup=0)
    scale = size[0] / NAIVE_B
    extra = {}
    if benchmark.stats is not None:
        extra["scaled_median_s"] = benchmark.stats.stats.median * scale
    C.record(benchmark, ("md-predictive", "naive_loop", "numpy", "float64", f"B{size[0]}-T{size[1]}"),
             backend="numpy", min_bytes=min_bytes(NAIVE_B, size[1], 8), batch_run=NAIVE_B, scale=scale, **extra)
