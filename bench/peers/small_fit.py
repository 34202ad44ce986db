"""Small fits: the fixed cost of one ``mtdmath.fitting.fit`` call on short sequences, next to mtdlearn 0.2.3.

Cases: the small-fit target (one simulated chain of 300 symbols, S = 4, m = 2, 10 restarts; the target is
< 20 ms once the kernels are warm), and the two real sequences shipped inside statsmodels that the peer table
uses (sunspots in terciles, S = 3, m = 3, 306 transitions; weekly CO2 changes in terciles, S = 3, m = 4).
For every case: our shared-pi and lag-wise fits (median of ``--repeats`` warm calls of
``fit(seq, m, variant=..., restarts=10, rng=seed)``) and mtdlearn's lag-wise fit (median of ``--repeats``
runs of ``bench/peers/_mtdlearn_runner.py``, which times its ``fit`` call inside the mtdlearn virtualenv),
one BLAS thread each. Results: ``bench/peers/results_small_fit.json``.

``--cold``: every fit in a fresh process instead, for both libraries, in CPU time (``process_time``, all
threads). Each process loads the data with NumPy, then imports the library and fits (cold), then fits the same
data ``--warm`` more times (warm: the smallest). ``--rounds`` processes per case and library, ours and
mtdlearn's interleaved, after one discarded process each that fills the bytecode cache (the processes write
bytecode under a temporary ``PYTHONPYCACHEPREFIX``, as an installed package has its ``.pyc`` files); the
minimum over rounds is reported, and the median over the cases of mtdlearn's CPU time over ours (lag-wise,
the variant mtdlearn fits), cold and warm, with the target (cold >= 1) at the end of the output. Results:
``bench/peers/results_small_fit_cold.json``.

Usage (repository root)::

    MTDLEARN_PYTHON=~/venvs/mtdlearn/bin/python python bench/peers/small_fit.py [--repeats 7] [--out FILE]
    MTDLEARN_PYTHON=~/venvs/mtdlearn/bin/python python bench/peers/small_fit.py --cold [--rounds 5]

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
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from mtdmath.fitting import MTDModel, fit  # noqa: E402

RESTARTS = 10
RESULTS = HERE / "results_small_fit.json"
RESULTS_COLD = HERE / "results_small_fit_cold.json"
#: the cold-start target: a fresh process's first fit costs at most this much CPU more than a warm fit
COLD_EXCESS_TARGET_S = 0.1


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


def fresh_env(pycache: str) -> dict:
    """The environment of a fresh measuring process: bytecode written to and read from ``pycache``."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def run_fresh(python: str, runner: str, seq: np.ndarray, m: int, seed: int, env: dict, **extra) -> dict:
    """Run ``runner`` (``_cold_runner.py`` or ``_mtdlearn_runner.py``) on one sequence in a new process."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.json"
        np.savez(inp, seq=seq, order=m, restarts=RESTARTS, seed=seed, **extra)
        subprocess.run([python, str(HERE / runner), str(inp), str(out)], check=True, env=env)
        return json.loads(out.read_text())


def cold_ours(seq: np.ndarray, m: int, variant: str, seed: int, env: dict, warm: int = 3) -> dict:
    """One fresh process of ours: cold and warm CPU seconds, log-likelihoods (see ``_cold_runner.py``)."""
    return run_fresh(sys.executable, "_cold_runner.py", seq, m, seed, env, variant=variant, warm=warm)


def cold_summary(runs: list[dict]) -> dict:
    """Minimum over fresh processes of the cold and of the warm CPU time, and the excess of the first."""
    cold, warm = min(r["cold_cpu_s"] for r in runs), min(r["warm_cpu_s"] for r in runs)
    return {"cold_cpu_s": cold, "warm_cpu_s": warm, "excess_cpu_s": cold - warm, "rounds": len(runs)}


def main_cold(args: argparse.Namespace, python: str | None) -> int:
    rows = []
    with tempfile.TemporaryDirectory() as pycache:
        env = fresh_env(pycache)
        for c in small_cases():
            seq, m, seed = c["seq"], c["m"], c["seed"]
            row = {"case": c["name"], "S": c["S"], "m": m, "n": int(seq.shape[0] - m), "restarts": RESTARTS}
            for v in ("shared", "lagwise"):
                cold_ours(seq, m, v, seed, env, warm=1)  # discarded: fills the bytecode cache
            if python:
                run_fresh(python, "_mtdlearn_runner.py", seq, m, seed, env)
            ours = {"shared": [], "lagwise": []}
            peer = []
            for _ in range(args.rounds):  # interleaved: one process of each per round
                for v in ("shared", "lagwise"):
                    ours[v].append(cold_ours(seq, m, v, seed, env, warm=args.warm))
                if python:
                    peer.append(run_fresh(python, "_mtdlearn_runner.py", seq, m, seed, env, warm=args.warm))
            for v in ("shared", "lagwise"):
                lls = {r["loglik_cold"] for r in ours[v]} | {x for r in ours[v] for x in r["loglik_warm"]}
                # cold and warm fits are the same computation: one log-likelihood, bit for bit
                row[f"ours_{v}"] = {**cold_summary(ours[v]), "loglik": ours[v][0]["loglik_cold"],
                                    "same_loglik_cold_warm": len(lls) == 1,
                                    "numba_imported": any(r["numba_imported"] for r in ours[v])}
            if python:
                row["mtdlearn"] = {**cold_summary(peer), "log_likelihood": peer[0]["log_likelihood"]}
                row["mtdlearn_over_ours_cold"] = row["mtdlearn"]["cold_cpu_s"] / row["ours_lagwise"]["cold_cpu_s"]
                row["mtdlearn_over_ours_warm"] = row["mtdlearn"]["warm_cpu_s"] / row["ours_lagwise"]["warm_cpu_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"restarts": RESTARTS, "rounds": args.rounds, "warm_fits_per_process": args.warm,
            "numpy": np.__version__, "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "cases": rows,
            "note": "process CPU time, minimum over fresh processes; cold = import of the library + first fit "
                    "(NumPy imported and the data loaded before); warm = a later fit in the same process"}
    if python:
        meta["median_mtdlearn_over_ours_cold"] = statistics.median(r["mtdlearn_over_ours_cold"] for r in rows)
        meta["median_mtdlearn_over_ours_warm"] = statistics.median(r["mtdlearn_over_ours_warm"] for r in rows)
    Path(args.out or RESULTS_COLD).write_text(json.dumps(meta, indent=2))
    print("\n| case | S | m | n | ours lag-wise cold / warm (s CPU) | excess | ours shared excess "
          "| mtdlearn cold / warm (s CPU) | mtdlearn / ours cold | warm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, sh = r["ours_lagwise"], r["ours_shared"]
        peer = "- | - | -"
        if "mtdlearn" in r:
            p = r["mtdlearn"]
            peer = (f"{p['cold_cpu_s']:.3f} / {p['warm_cpu_s']:.3f} | {r['mtdlearn_over_ours_cold']:.2f} | "
                    f"{r['mtdlearn_over_ours_warm']:.2f}")
        print(f"| {r['case']} | {r['S']} | {r['m']} | {r['n']} | {o['cold_cpu_s']:.3f} / {o['warm_cpu_s']:.3f} | "
              f"{o['excess_cpu_s']:.3f} | {sh['excess_cpu_s']:.3f} | {peer} |")
    print("\ntargets:")
    for r in rows:
        for v in ("shared", "lagwise"):
            e = r[f"ours_{v}"]["excess_cpu_s"]
            print(f"  cold start {r['case']} {v}: first fit {e:+.3f} s CPU over a warm fit (target <= "
                  f"{COLD_EXCESS_TARGET_S} s: {'met' if e <= COLD_EXCESS_TARGET_S else 'MISSED'})")
    if python:
        for when in ("cold", "warm"):
            med = meta[f"median_mtdlearn_over_ours_{when}"]
            goal = f"(target >= 1: {'met' if med >= 1 else 'MISSED'})" if when == "cold" else "(no target)"
            print(f"  mtdlearn CPU / ours, lag-wise, {when}, median over {len(rows)} cases: {med:.2f} {goal}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None, help="the results file (default: results_small_fit.json, "
                    "with --cold results_small_fit_cold.json)")
    ap.add_argument("--cold", action="store_true", help="every fit in a fresh process, CPU time")
    ap.add_argument("--rounds", type=int, default=5, help="--cold: fresh processes per case and library")
    ap.add_argument("--warm", type=int, default=3, help="--cold: warm fits after the first in each process")
    args = ap.parse_args()
    python = os.environ.get("MTDLEARN_PYTHON")
    if args.cold:
        return main_cold(args, python)
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
    Path(args.out or RESULTS).write_text(json.dumps(meta, indent=2))
    print("\n| case | S | m | n | ours shared ms | ours lag-wise ms | mtdlearn (lag-wise) ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        peer = f"{r['mtdlearn_ms']:.1f}" if "mtdlearn_ms" in r else "-"
        print(f"| {r['case']} | {r['S']} | {r['m']} | {r['n']} | {r['ours_shared_ms']:.1f} | "
              f"{r['ours_lagwise_ms']:.1f} | {peer} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
