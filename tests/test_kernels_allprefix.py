"""The all-prefix kernel's pieces (mtdmath/_kernels/allprefix.py) against independent routes."""
import numpy as np
import pytest

pytest.importorskip("numba")


def test_branch_free_exp_matches_libm():
    from mtdmath._kernels.allprefix import _exp_rows

    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.exponential(5.0, 20000), -rng.uniform(0, 700, 20000), [0.0, -1e-300, -0.5 * np.log(2),
                        -707.9, -708.0, -708.1, -745.0, -1e5, -np.inf]])
    e, bits = np.empty_like(x), np.empty(x.shape, dtype=np.int64)
    _exp_rows(x, e, bits)
    want = np.exp(x)
    keep = x > -708.0
    # degree-13 Taylor on |r| <= ln(2)/2 and a two-part ln 2: a few ulps (2.2e-16 each)
    np.testing.assert_allclose(e[keep], want[keep], rtol=1e-15, atol=0)
    assert np.all(e[~keep] == 0.0)  # below -708: 0 (exp(-708) = 3e-308 next to the row's exp(0) = 1)
