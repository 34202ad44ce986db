"""fit_icl's memory bound against measured peaks, its budget argument, and a tiny fixed alpha.

The peak is measured as the growth of the resident set in a fresh process per size: after a warm-up fit (so
torch's one-off allocations are not counted) the high-water mark is reset (``/proc/self/clear_refs``) and the
peak is ``VmHWM`` after the fit minus ``VmRSS`` before it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import mtdmath
from mtdmath.fitting.icl import fit_icl, memory_estimate

MEASURE = r"""
import json, math, sys
import numpy as np, torch, mtdmath
torch.set_num_threads(1)
from mtdmath.fitting.icl import fit_icl, memory_estimate
B, n, m, S, mb = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
pi = mtdmath.random_transition_matrix(S, concentration=3.0, rng=3)
y, _ = mtdmath.sample_icl(pi, np.full(m, 1.5), n, B, rng=1)
def status(key):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(key))
fit_icl(y[:2, : m + 3], m, max_iter=2)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the high-water mark (VmHWM) to the current resident set
base = status("VmRSS")
fit_icl(y, m, max_iter=30, max_bytes=mb)
peak = status("VmHWM") - base
L, nf = y.shape[1], S * (S - 1) + m
b0 = memory_estimate(B, L, m)
per = memory_estimate(B, L, m, 1) - b0
chunk = nf if not math.isfinite(mb) else int(max(1, min(nf, (mb - b0) // per)))
print(json.dumps(dict(B=B, T=L, m=m, S=S, chunk=chunk, bound=memory_estimate(B, L, m, chunk), peak=peak)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("B,n,m,S,max_bytes", [(60, 38, 2, 3, "inf"), (100, 58, 2, 3, "4e8"),
                                               (40, 22, 3, 3, "4e8")])
def test_memory_bound_holds_over_sizes(B, n, m, S, max_bytes):
    """The peak of a whole fit stays under memory_estimate (measured: 0.66-0.77 of it, docs/math.md §12.3)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    out = subprocess.run([sys.executable, "-c", MEASURE, str(B), str(n), str(m), str(S), max_bytes],
                         capture_output=True, text=True, timeout=300, env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["peak"] <= r["bound"], r
    # and the bound is not vacuous: within a factor 3 of the peak
    assert r["bound"] <= 3 * r["peak"], r


def test_500_by_200_is_refused_before_any_work_with_the_gib():
    Y = np.random.default_rng(0).integers(0, 5, size=(500, 200))
    t = time.perf_counter()
    need = memory_estimate(500, 200, 2, 1) / 2**30
    with pytest.raises(ValueError, match=f"max_bytes: .* needs about {need:.2f} GiB"):
        fit_icl(Y, 2)
    # nothing was fitted: the refusal comes from sizes alone (a fit of this size takes minutes)
    assert time.perf_counter() - t < 5.0


@pytest.mark.parametrize("bad", [float("nan"), -1.0, 0, "1e9", True])
def test_max_bytes_validated(bad):
    y = np.zeros((3, 10), dtype=int)
    with pytest.raises(ValueError, match="max_bytes must be a positive number of bytes or inf"):
        fit_icl(y, 2, max_bytes=bad)


def test_max_bytes_inf_means_no_budget():
    pi = mtdmath.random_transition_matrix(3, concentration=3.0, rng=3)
    y, _ = mtdmath.sample_icl(pi, np.array([2.0, 1.0]), 15, 8, rng=1)
    a = fit_icl(y, 2, max_bytes=float("inf"))
    b = fit_icl(y, 2, max_bytes=2e8)  # a smaller Hessian chunk: the same numbers to rounding
    np.testing.assert_allclose(a.pi, b.pi, rtol=1e-12)
    np.testing.assert_allclose(a.se_pi, b.se_pi, rtol=1e-9)  # summed in another order: rounding


def test_tiny_fixed_alpha_is_finite_and_matches_the_core():
    """alpha = (1e-30, 1e-30): every sequence uses one lag. The torch recursion used to round alpha + 1 - 1 to
    0 (NaN objective, LinAlgError); now its objective equals the core's NumPy log_evidence (independent)."""
    pi = mtdmath.random_transition_matrix(3, concentration=3.0, rng=3)
    y, _ = mtdmath.sample_icl(pi, np.array([2.0, 1.0]), 20, 10, rng=1)
    f = fit_icl(y, 2, alpha=[1e-30, 1e-30])
    assert np.all(np.isfinite(f.pi)) and np.all(np.isfinite(f.se_pi)) and np.isfinite(f.objective)
    core = mtdmath.log_evidence(mtdmath.lag_factors(y, f.pi, 2), np.array([1e-30, 1e-30])).sum()
    assert f.objective == pytest.approx(core, rel=1e-12)  # two float64 recursions: rounding
