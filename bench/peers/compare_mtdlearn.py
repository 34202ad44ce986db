"""Peer comparison: mtdmath.fitting.fit (variant="lagwise") against mtdlearn 0.2.3's MTD on identical data.

mtdlearn needs numpy<1.24, so it runs in its own virtualenv: set ``MTDLEARN_PYTHON`` to that venv's python
(see README.md here). Without it the comparison is skipped (exit code 0).

For each case (S, m, n) a lag-wise MTD is drawn (lam ~ Dirichlet(2), every row of every pi_g ~ Dirichlet(1))
and one chain of n + m tokens is simulated. Both libraries fit order m with 10 restarts; mtdlearn with its
defaults otherwise (max_iter=100, min_gain=0.1) and n_jobs=1 so its seed is honoured. Both are compared by
log-likelihood only (the peers count parameters differently), each computed by mtdmath's likelihood from the
fitted parameters (mtdlearn's own value is reported as well, as a check of the parameter mapping).
"True maximum": the best of a long tight run (30 restarts, tol=1e-13) and the two fits.

Usage (repository root)::

    MTDLEARN_PYTHON=~/venvs/mtdlearn/bin/python python bench/peers/compare_mtdlearn.py [--out FILE] [--check]

``--check`` exits 1 if a target is missed: ours >= mtdlearn and >= max - 1e-6 n on every case, ours faster on
every case, >= 10x faster on the largest. Timings are wall-clock of one fit call each, single BLAS thread.
"""
from __future__ import annotations

import os

# one BLAS thread for both libraries (set before numpy loads): fair, and the machine is shared
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, so mtdmath imports without installing

from mtdmath.fitting import MTDModel, fit  # noqa: E402

CASES = [(3, 2, 2000), (5, 3, 20000), (10, 4, 20000)]
RESTARTS = 10


def true_model(S: int, m: int, seed: int) -> MTDModel:
    rng = np.random.default_rng(seed)
    lam = rng.dirichlet(np.full(m, 2.0))
    pi = rng.dirichlet(np.ones(S), size=(m, S))
    return MTDModel(pi, lam)


def stalling_chain(S: int, m: int, n: int, seed: int) -> tuple[MTDModel, np.ndarray]:
    """Lag-wise chain with nearly uniform rows (Dirichlet(3)), lam ~ Dirichlet(3): shared-pi EM used to stall."""
    rng = np.random.default_rng(seed)
    lam = rng.dirichlet(np.full(m, 3.0))
    pi = rng.dirichlet(np.full(S, 3.0), size=(m, S))
    true = MTDModel(pi, lam)
    return true, true.sample(n + m, rng=seed)


def real_sequences() -> list[dict]:
    """Categorical sequences from data shipped inside statsmodels (no download): yearly sunspot activity
    1700-2008 in terciles (S = 3, order 3), and weekly Mauna Loa CO2 changes in terciles (S = 3, order 4,
    weeks with a missing value dropped). Skipped when statsmodels is absent."""
    try:
        import statsmodels.api as sm
    except ImportError:
        print("statsmodels not installed: real-data cases skipped")
        return []
    sun = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    co2 = sm.datasets.co2.load_pandas().data["co2"].dropna().to_numpy()
    out = []
    for name, x, m in (("sunspots terciles", sun, 3), ("co2 weekly change terciles", np.diff(co2), 4)):
        cuts = np.quantile(x, [1 / 3, 2 / 3])
        out.append({"name": name, "S": 3, "m": m, "seq": np.searchsorted(cuts, x).astype(np.int64), "seed": 7,
                    "true": None})
    return out


def all_cases() -> list[dict]:
    cases = []
    for i, (S, m, n) in enumerate(CASES):
        true = true_model(S, m, 1000 + i)
        cases.append({"name": "simulated", "S": S, "m": m, "seq": true.sample(n + m, rng=1000 + i),
                      "seed": 1000 + i, "true": true})
    true, seq = stalling_chain(20, 3, 100_000, 0)
    cases.append({"name": "stalling (Dirichlet(3) rows)", "S": 20, "m": 3, "seq": seq, "seed": 0, "true": true})
    return cases + real_sequences()


def run_mtdlearn(python: str, seq: np.ndarray, m: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.json"
        np.savez(inp, seq=seq, order=m, restarts=RESTARTS, seed=seed)
        subprocess.run([python, str(HERE / "_mtdlearn_runner.py"), str(inp), str(out)], check=True,
                       env=dict(os.environ))
        return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "results_mtdlearn.json"))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    python = os.environ.get("MTDLEARN_PYTHON")
    if not python:
        print("MTDLEARN_PYTHON is not set: mtdlearn comparison skipped (see bench/peers/README.md)")
        return 0
    rows = []
    for case in all_cases():
        S, m, seq, seed, true = case["S"], case["m"], case["seq"], case["seed"], case["true"]
        n = seq.shape[0] - m
        ll_true = true.log_likelihood(seq) if true is not None else None

        t0 = time.perf_counter()
        ours = fit(seq, m, variant="lagwise", restarts=RESTARTS, rng=seed)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        shared = fit(seq, m, variant="shared", restarts=RESTARTS, rng=seed)
        t_shared = time.perf_counter() - t0

        peer = run_mtdlearn(python, seq, m, seed)
        # mtdlearn's column c is lag m - c: reverse to mtdmath's lag order 1..m
        lam_p = np.asarray(peer["lambdas"])[::-1]
        pi_p = np.asarray(peer["transition_matrices"])[::-1]
        peer_model = MTDModel(pi_p / pi_p.sum(-1, keepdims=True), lam_p / lam_p.sum(),
                              lags=tuple(range(1, m + 1)))
        ll_peer = peer_model.log_likelihood(seq)

        t0 = time.perf_counter()
        tight = fit(seq, m, variant="lagwise", restarts=30 if case["name"] == "simulated" else 10, tol=1e-13,
                    max_iter=100_000, rng=seed + 1)
        t_tight = time.perf_counter() - t0
        ll_max = max(tight.loglik_, ours.loglik_, ll_peer)
        row = {
            "case": case["name"], "S": S, "m": m, "n": n, "seed": seed,
            "loglik_ours_shared": shared.loglik_, "seconds_ours_shared": t_shared,
            "ours_shared_converged": shared.converged_, "ours_shared_stop": shared.monitor_.reason,
            "loglik_true_params": ll_true, "loglik_max_estimate": ll_max, "loglik_tight_run": tight.loglik_,
            "tight_run_seconds": t_tight,
            "loglik_ours_lagwise": ours.loglik_, "loglik_mtdlearn": ll_peer,
            "loglik_mtdlearn_reported": peer["log_likelihood"],
            "seconds_ours": t_ours, "seconds_mtdlearn": peer["fit_seconds"],
            "ours_converged": ours.converged_, "ours_em_evals_best_restart": ours.n_iter_,
            "ours_minus_mtdlearn": ours.loglik_ - ll_peer, "max_minus_ours": ll_max - ours.loglik_,
            "speedup": peer["fit_seconds"] / t_ours,
        }
        row["ok_vs_peer"] = row["ours_minus_mtdlearn"] >= 0
        row["ok_vs_max"] = row["max_minus_ours"] <= 1e-6 * n
        if case["name"] == "simulated":
            row["ok_targets_apply"] = True
        else:  # the added cases are reported, not part of the original three targets
            row["ok_targets_apply"] = False
        row["ok_faster"] = row["speedup"] > 1
        rows.append(row)
        print(json.dumps(row), flush=True)
    sim = [r for r in rows if r["case"] == "simulated"]
    sim[-1]["ok_10x_largest"] = sim[-1]["speedup"] >= 10
    meta = {"mtdlearn": "0.2.3", "restarts": RESTARTS, "numpy_ours": np.__version__,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "cases": rows}
    Path(args.out).write_text(json.dumps(meta, indent=2))

    print()
    print("| case | S | m | n | loglik true params | max (est.) | ours lagwise | mtdlearn | ours - mtdlearn "
          "| max - ours | ours s | mtdlearn s | speed-up | ours shared | shared s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lt = "-" if r["loglik_true_params"] is None else f"{r['loglik_true_params']:.3f}"
        print(f"| {r['case']} | {r['S']} | {r['m']} | {r['n']} | {lt} | {r['loglik_max_estimate']:.4f} "
              f"| {r['loglik_ours_lagwise']:.4f} | {r['loglik_mtdlearn']:.3f} | {r['ours_minus_mtdlearn']:.3f} "
              f"| {r['max_minus_ours']:.1e} | {r['seconds_ours']:.2f} | {r['seconds_mtdlearn']:.2f} "
              f"| {r['speedup']:.0f}x | {r['loglik_ours_shared']:.4f} | {r['seconds_ours_shared']:.2f} |")
    ok = all(r["ok_vs_peer"] and r["ok_vs_max"] and r["ok_faster"] for r in sim) and sim[-1]["ok_10x_largest"]
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if (ok or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
