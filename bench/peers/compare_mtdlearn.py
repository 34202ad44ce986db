"""Peer comparison: mtdmath.fit (variant="lagwise") against mtdlearn 0.2.3's MTD on identical data.

mtdlearn needs numpy<1.24, so it runs in its own virtualenv: set ``MTDLEARN_PYTHON`` to that venv's python
(see README.md here). Without it the comparison is skipped (exit code 0).

For each case (S, m, n) a lag-wise MTD is drawn (lam ~ Dirichlet(2), every row of every pi_g ~ Dirichlet(1))
and one chain of n + m tokens is simulated. Both libraries fit order m with 10 restarts; mtdlearn with its
defaults otherwise (max_iter=100, min_gain=0.1) and n_jobs=1 so its seed is honoured. Both are compared by
log-likelihood only (the peers count parameters differently), each computed by mtdmath's likelihood from the
fitted parameters (mtdlearn's own value is reported as well, as a check of the parameter mapping).
"True maximum": the best of a long tight run (30 restarts, tol=1e-13) and the two fits.

Usage (repository root)::

    MTDLEARN_PYTHON=/work/venvs/mtdlearn/bin/python python bench/peers/compare_mtdlearn.py [--out FILE] [--check]

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

from mtdmath.fit import MTDFit, fit  # noqa: E402

CASES = [(3, 2, 2000), (5, 3, 20000), (10, 4, 20000)]
RESTARTS = 10


def true_model(S: int, m: int, seed: int) -> MTDFit:
    rng = np.random.default_rng(seed)
    lam = rng.dirichlet(np.full(m, 2.0))
    pi = rng.dirichlet(np.ones(S), size=(m, S))
    return MTDFit.from_params(pi, lam)


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
    for case, (S, m, n) in enumerate(CASES):
        seed = 1000 + case
        true = true_model(S, m, seed)
        seq = true.sample(n + m, rng=seed)
        ll_true = true.log_likelihood(seq)

        t0 = time.perf_counter()
        ours = fit(seq, m, variant="lagwise", restarts=RESTARTS, rng=seed)
        t_ours = time.perf_counter() - t0

        peer = run_mtdlearn(python, seq, m, seed)
        # mtdlearn's column c is lag m - c: reverse to mtdmath's lag order 1..m
        lam_p = np.asarray(peer["lambdas"])[::-1]
        pi_p = np.asarray(peer["transition_matrices"])[::-1]
        peer_model = MTDFit(pi=pi_p / pi_p.sum(-1, keepdims=True), lam=lam_p / lam_p.sum(),
                            lags=tuple(range(1, m + 1)))
        ll_peer = peer_model.log_likelihood(seq)

        t0 = time.perf_counter()
        tight = fit(seq, m, variant="lagwise", restarts=30, tol=1e-13, max_iter=100_000, rng=seed + 1)
        t_tight = time.perf_counter() - t0
        ll_max = max(tight.loglik, ours.loglik, ll_peer)
        row = {
            "S": S, "m": m, "n": n, "seed": seed,
            "loglik_true_params": ll_true, "loglik_max_estimate": ll_max, "loglik_tight_run": tight.loglik,
            "tight_run_seconds": t_tight,
            "loglik_ours_lagwise": ours.loglik, "loglik_mtdlearn": ll_peer,
            "loglik_mtdlearn_reported": peer["log_likelihood"],
            "seconds_ours": t_ours, "seconds_mtdlearn": peer["fit_seconds"],
            "ours_converged": ours.converged, "ours_em_evals_best_restart": ours.n_iter,
            "ours_minus_mtdlearn": ours.loglik - ll_peer, "max_minus_ours": ll_max - ours.loglik,
            "speedup": peer["fit_seconds"] / t_ours,
        }
        row["ok_vs_peer"] = row["ours_minus_mtdlearn"] >= 0
        row["ok_vs_max"] = row["max_minus_ours"] <= 1e-6 * n
        row["ok_faster"] = row["speedup"] > 1
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows[-1]["ok_10x_largest"] = rows[-1]["speedup"] >= 10
    meta = {"mtdlearn": "0.2.3", "restarts": RESTARTS, "numpy_ours": np.__version__,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "cases": rows}
    Path(args.out).write_text(json.dumps(meta, indent=2))

    print()
    print("| S | m | n | loglik true params | max (est.) | ours lagwise | mtdlearn | ours - mtdlearn | max - ours "
          "| ours s | mtdlearn s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['S']} | {r['m']} | {r['n']} | {r['loglik_true_params']:.3f} | {r['loglik_max_estimate']:.4f} "
              f"| {r['loglik_ours_lagwise']:.4f} | {r['loglik_mtdlearn']:.3f} | {r['ours_minus_mtdlearn']:.3f} "
              f"| {r['max_minus_ours']:.1e} | {r['seconds_ours']:.2f} | {r['seconds_mtdlearn']:.2f} "
              f"| {r['speedup']:.0f}x |")
    ok = all(r["ok_vs_peer"] and r["ok_vs_max"] and r["ok_faster"] for r in rows) and rows[-1]["ok_10x_largest"]
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if (ok or not args.check) else 1


if __name__ == "__main__":
    sys.exit(main())
