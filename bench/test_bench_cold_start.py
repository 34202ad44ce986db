"""Group ``cold-start``: the CPU a fresh process pays for its first small fit, over a warm fit's.

Target: a first ``fit`` in a fresh process (import of ``mtdmath.fitting`` included, NumPy already imported and
the data loaded) costs at most 0.1 s of CPU more than a warm fit of the same data, for n <= 2·10⁴ with S and m
as in the small cases of ``bench/peers/small_fit.py`` (those cases, and a simulated chain of 2·10⁴ transitions
for each of their (S, m)), both variants, 10 restarts.

Each round runs one fresh process (``bench/peers/_cold_runner.py``): its process CPU time (``process_time``)
for the import and the first fit, then for warm fits of the same data. Cold and warm come from the same
processes, so they are interleaved; the excess is the minimum cold time minus the minimum warm time over the
rounds. The processes cache bytecode under a temporary ``PYTHONPYCACHEPREFIX`` (filled by a discarded first
process), as an installed package has its ``.pyc`` files. pytest-benchmark's own time is the wall time of a
whole fresh process (interpreter start included), for information only.
"""
from __future__ import annotations

import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import _common as C

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

from small_fit import COLD_EXCESS_TARGET_S, cold_ours, cold_summary, fresh_env, small_cases  # noqa: E402

from mtdmath.fitting import MTDModel  # noqa: E402

ROUNDS = 5
N_LARGE = 20_000


@lru_cache(maxsize=1)
def cases() -> list[dict]:
    """The small cases, then one simulated chain of ``N_LARGE`` transitions per (S, m) among them."""
    out = [{k: c[k] for k in ("name", "S", "m", "seq", "seed")} for c in small_cases()]
    for i, (S, m) in enumerate(sorted({(c["S"], c["m"]) for c in out})):
        rng = np.random.default_rng(2000 + i)
        true = MTDModel(rng.dirichlet(np.ones(S), size=(m, S)), rng.dirichlet(np.full(m, 2.0)))
        out.append({"name": f"simulated S={S} m={m} n={N_LARGE}", "S": S, "m": m,
                    "seq": true.sample(N_LARGE + m, rng=2000 + i), "seed": 2000 + i})
    return out


@pytest.fixture(scope="module")
def pycache():
    with tempfile.TemporaryDirectory() as d:
        yield d


IDS = [f"{c['name']}-{v}" for c in cases() for v in ("shared", "lagwise")]
PARAMS = [(i, v) for i in range(len(cases())) for v in ("shared", "lagwise")]


@pytest.mark.benchmark(group="cold-start")
@pytest.mark.parametrize("i, variant", PARAMS, ids=IDS)
def test_cold_start(benchmark, pycache, i, variant):
    c = cases()[i]
    env = fresh_env(pycache)
    one = lambda: cold_ours(c["seq"], c["m"], variant, c["seed"], env)  # noqa: E731
    one()  # discarded: fills the bytecode cache
    runs: list[dict] = []
    benchmark.pedantic(lambda: runs.append(one()), rounds=ROUNDS, iterations=1)
    # the cold and the warm fits are one computation: the same log-likelihood, bit for bit
    lls = {r["loglik_cold"] for r in runs} | {x for r in runs for x in r["loglik_warm"]}
    assert len(lls) == 1, lls
    info = {"case": c["name"], "variant": variant, "n": int(c["seq"].shape[0] - c["m"]),
            "target_excess_s": COLD_EXCESS_TARGET_S, "numba_imported": any(r["numba_imported"] for r in runs),
            **cold_summary(runs)}
    benchmark.extra_info.update(info)
    if benchmark.stats is not None:
        C.RESULTS[("cold-start", "fit", "numpy", "float64", f"{c['name']}-{variant}")] = dict(benchmark.extra_info)
