"""Small fits: the fixed cost of one ``mtdmath.fit`` call on short sequences, next to mtdlearn 0.2.3.

Cases: the small-fit target (one simulated chain of 300 symbols, S = 4, m = 2, 10 restarts; the target is
< 20 ms once the kernels are warm), and the two real sequences shipped inside statsmodels that the peer table
uses (sunspots in terciles, S = 3, m = 3, 306 transitions; weekly CO2 changes in terciles, S = 3, m = 4).
For every case: our shared-pi and lag-wise fits (median of ``--repeats`` warm calls of
``fit(seq, m, variant=..., restarts=10, rng=seed)``) and mtdlearn's lag-wise fit (median of ``--repeats``
runs of ``bench/peers/_mtdlearn_runner.py``, which times its ``fit`` call inside the mtdlearn virtualenv),
one BLAS thread each. Results: ``bench/peers/results_small_fit.json``.

Usage (repository root)::

    MTDLEARN_PYTHON=~/venvs/mtdlearn/bin/python python bench/peers/small_fit.py [--repeats 7] [--out FILE]

Without ``MTDLEARN_PYTHON`` only our times are measured. ``bench/test_bench_fit_small.py`` times the same
fits under pytest-benchmark and reads mtdlearn's times from the JSON.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from mtdmath.fitting import MTDModel, fit  # noqa: E402

RESTARTS = 10
RESULTS = HERE / "results_small_fit.json"


def small_cases() -> list[dict]:
    """The small-fit target case, then the real sequences of the peer table (when statsmodels is there)."""
    rng = np.random.default_rng(300)
    true = MTDModel(rng.dirichlet(np.ones(4), size=4), rng.dirichlet(np.full(2, 2.0)))
    cases = [{"name": "simulated S=4 m=2 n=300", "S": 4, "m": 2, "seq": true.sample(302, rng=301), "seed": 7}]
    try:
        from compare_mtdlearn import real_sequences
    except ImportError:  # pragma: no cover - run from elsewhere
        return cases
    return cases + [{k: c[k] for k in ("name", "S", "m", "seq", "seed")} for c in real_sequences()]


def time_ours(seq: np.ndarray, m: int, variant: str, seed: int, repeats: int) -> tuple[float, float]:
    fit(seq, m, variant=variant, restarts=RESTARTS, rng=seed)  # warm: kernels compiled / loaded
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f = fit(seq, m, variant=variant, restarts=RESTARTS, rng=seed)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), f.loglik_


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    python = os.environ.get("MTDLEARN_PYTHON")
    rows = []
    for c in small_cases():
        row = {"case": c["name"], "S": c["S"], "m": c["m"], "n": int(c["seq"].shape[0] - c["m"]),
               "restarts": RESTARTS}
        for v in ("shared", "lagwise"):
            t, ll = time_ours(c["seq"], c["m"], v, c["seed"], args.repeats)
            row[f"ours_{v}_ms"], row[f"ours_{v}_loglik"] = 1e3 * t, ll
        if python:
            from compare_mtdlearn import run_mtdlearn

            peer = [run_mtdlearn(python, c["seq"], c["m"], c["seed"]) for _ in range(args.repeats)]
            row["mtdlearn_ms"] = 1e3 * statistics.median(p["fit_seconds"] for p in peer)
            row["speedup_lagwise_vs_mtdlearn"] = row["mtdlearn_ms"] / row["ours_lagwise_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"restarts": RESTARTS, "repeats": args.repeats, "numpy": np.__version__,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "cases": rows,
            "note": "median wall time of one warm fit call; mtdlearn's time is measured inside its process"}
    Path(args.out).write_text(json.dumps(meta, indent=2))
    print("\n| case | S | m | n | ours shared ms | ours lag-wise ms | mtdlearn (lag-wise) ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        peer = f"{r['mtdlearn_ms']:.1f}" if "mtdlearn_ms" in r else "-"
        print(f"| {r['case']} | {r['S']} | {r['m']} | {r['n']} | {r['ours_shared_ms']:.1f} | "
              f"{r['ours_lagwise_ms']:.1f} | {peer} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
