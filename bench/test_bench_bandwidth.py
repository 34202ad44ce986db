"""Group ``bandwidth``: a plain large-array copy per backend — the memory-bandwidth limit of this run."""
import numpy as np
import pytest
import torch

import _common as C

N = C.COPY_BYTES // 8  # float64 elements: 256 MiB per array


@pytest.mark.benchmark(group="bandwidth")
@pytest.mark.parametrize("backend", C.BACKENDS, ids=[f"{b}-256MiB" for b in C.BACKENDS])
def test_copy(benchmark, backend):
    if backend == "numpy":
        src, dst = np.ones(N), np.empty(N)
        fn = lambda: np.copyto(dst, src)  # noqa: E731
    else:
        src = torch.ones(N, dtype=torch.float64, device=C.DEVICE[backend])
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # noqa: E731
    C.run(benchmark, fn, backend=backend, rounds=7)
    assert bool((dst == 1).all())
    # the limit used by the other groups was measured once per session by the same copy
    C.record(benchmark, ("bandwidth", "copy", backend, "float64", "256MiB"), backend=backend,
             min_bytes=2 * C.nbytes(src))
