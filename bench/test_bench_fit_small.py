"""Group ``fit-small``: the fixed cost of one ``mtdmath.fitting.fit`` call on short sequences (target: < 20 ms for
300 symbols, S = 4, m = 2, 10 restarts, once the kernels are warm).

The cases and mtdlearn 0.2.3's times for the same data come from ``bench/peers/small_fit.py`` (mtdlearn runs
in its own virtualenv, so its times are read from ``bench/peers/results_small_fit.json``, written by
``MTDLEARN_PYTHON=~/venvs/mtdlearn/bin/python python bench/peers/small_fit.py``). Each benchmark records
its median, the target, mtdlearn's median for the case and the ratio of the two, and the ratio of the
lag-wise to the shared-pi fit of the same run.
"""
from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

from small_fit import RESTARTS, RESULTS, small_cases  # noqa: E402

from mtdmath.fitting import fit  # noqa: E402

TARGET_MS = 20.0
_MEDIANS: dict[tuple, float] = {}


@lru_cache(maxsize=1)
def cases() -> list[dict]:
    return small_cases()


@lru_cache(maxsize=1)
def peer_times() -> dict:
    if not RESULTS.exists():
        return {}
    return {r["case"]: r for r in json.loads(RESULTS.read_text())["cases"]}


IDS = [f"{c['name']}-{v}" for c in small_cases() for v in ("shared", "lagwise")]
PARAMS = [(i, v) for i in range(len(small_cases())) for v in ("shared", "lagwise")]


@pytest.mark.benchmark(group="fit-small")
@pytest.mark.parametrize("i, variant", PARAMS, ids=IDS)
def test_small_fit(benchmark, i, variant):
    c = cases()[i]
    call = lambda: fit(c["seq"], c["m"], variant=variant, restarts=RESTARTS, rng=c["seed"])  # noqa: E731
    f = call()  # warm (kernels compiled or loaded from the cache) and checked
    assert f.converged_
    peer = peer_times().get(c["name"], {})
    if f"ours_{variant}_loglik" in peer:  # the same maximum as the recorded run (1e-9 relative: stopping tol)
        assert f.loglik_ >= peer[f"ours_{variant}_loglik"] - 1e-9 * abs(f.loglik_)
    benchmark.pedantic(call, rounds=15, warmup_rounds=2, iterations=1)
    info = {"case": c["name"], "variant": variant, "target_ms": TARGET_MS, "restarts": RESTARTS,
            "mtdlearn_ms": peer.get("mtdlearn_ms")}
    if benchmark.stats is not None:
        med_ms = 1e3 * benchmark.stats.stats.median
        _MEDIANS[(i, variant)] = med_ms
        info.update(median_ms=med_ms, meets_target=med_ms < TARGET_MS)
        if info["mtdlearn_ms"]:
            info["mtdlearn_over_ours"] = info["mtdlearn_ms"] / med_ms
        if variant == "lagwise" and (i, "shared") in _MEDIANS:
            info["lagwise_over_shared_same_run"] = med_ms / _MEDIANS[(i, "shared")]
    benchmark.extra_info.update(info)
