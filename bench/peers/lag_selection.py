"""Lag-set recovery of every ``select_lags`` method: the likelihood search ("forward") and hdMTD's CUT, FS, FSC.

For each setting a shared-pi MTD on S = 3 states with a sparse lag set inside a window of ``d`` lags is drawn
(every row of pi ~ Dirichlet(0.5), from the seed), one chain of n + d tokens is simulated, and every method
selects a lag set from the window 1..d on the same data. "Weak" settings put little weight on the last lag.
Reported per method and setting: exact recoveries out of the seeds, the mean number of true lags missed and of
wrong lags added, and the mean wall time of one selection (one process, single BLAS thread; a shared machine,
so times are indicative only).

Methods (every one is ``select_lags(y, d, method=...)``, and its time includes the EM fit of the chosen set):

- ``forward, BIC``: the forward search on the MTD likelihood with BIC (the default method).
- ``cut``: CUT over the whole window (hdMTD's default alpha = 0.05, and 0.25).
- ``fs, max_size=true size``: forward stepwise for as many steps as the true lag set has lags (an oracle size).
- ``fs, elbow``: forward stepwise for 5 steps with hdMTD's elbow rule (``max_size=None``).
- ``fsc``: FS for 5 steps (or the true size) on the first half of the chain, then CUT (alpha = 0.05 or 0.25)
  of those lags on the second half.

The exhaustive ``method="bic"`` (162 fits per selection at ``screen=8``) is left out for time.

Usage (repository root)::

    python bench/peers/lag_selection.py [--seeds 5] [--n 4000] [--out FILE.md]
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, so mtdmath imports without installing

from mtdmath.fitting import MTDModel, select_lags  # noqa: E402

S, D = 3, 10
SETTINGS = {
    "strong (1, 4, 8), lam .4/.3/.3": ((1, 4, 8), (0.4, 0.3, 0.3)),
    "weak (1, 4, 8), lam .6/.3/.1": ((1, 4, 8), (0.6, 0.3, 0.1)),
    "weaker (1, 4, 8), lam .7/.25/.05": ((1, 4, 8), (0.7, 0.25, 0.05)),
    "pair (2, 7), lam .85/.15": ((2, 7), (0.85, 0.15)),
}


def methods(true_size):
    def sel(**kw):
        def run(y):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    return select_lags(y, D, n_symbols=S, rng=0, **kw)[0].lags_
                except ValueError as e:  # CUT kept no lag: an empty selection
                    if "kept no lag" not in str(e):
                        raise
                    return ()
        return run

    return {
        "forward, BIC (default)": sel(),
        "cut, alpha=0.05": sel(method="cut"),
        "cut, alpha=0.25": sel(method="cut", cut_constants={"alpha": 0.25}),
        "fs, max_size=true size": sel(method="fs", max_size=true_size),
        "fs, elbow of 5 steps": sel(method="fs"),
        "fsc, 5 steps, alpha=0.05": sel(method="fsc", max_size=5),
        "fsc, 5 steps, alpha=0.25": sel(method="fsc", max_size=5, cut_constants={"alpha": 0.25}),
        "fsc, max_size=true size, alpha=0.05": sel(method="fsc", max_size=true_size),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--out", default=None, help="markdown file (default results_lag_selection_n<N>.md here)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else HERE / f"results_lag_selection_n{args.n}.md"
    rows = []
    for name, (lags, lam) in SETTINGS.items():
        stats: dict[str, list] = {}
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 + seed)
            pi = rng.dirichlet(np.full(S, 0.5), size=S)
            y = MTDModel(pi, list(lam), lags=lags).sample(args.n + D, rng=seed)
            for mname, f in methods(len(lags)).items():
                t0 = time.perf_counter()
                got = tuple(f(y))
                dt = time.perf_counter() - t0
                st = stats.setdefault(mname, [])
                st.append((got == tuple(lags), len(set(lags) - set(got)), len(set(got) - set(lags)), dt, got))
        for mname, st in stats.items():
            a = np.array([s[:4] for s in st], dtype=float)
            rows.append((name, mname, int(a[:, 0].sum()), len(st), a[:, 1].mean(), a[:, 2].mean(), a[:, 3].mean(),
                         " ".join("".join(map(str, s[4])) if s[4] else "-" for s in st)))
            print(rows[-1], flush=True)
    lines = [f"Lag-set recovery, S = {S}, window d = {D}, n = {args.n} transitions, {args.seeds} seeds "
             f"(`python bench/peers/lag_selection.py --seeds {args.seeds} --n {args.n}`)", "",
             "| setting | select_lags method | exact | missed (mean) | added (mean) | time s (mean) |",
             "|---|---|---|---|---|---|"]
    for name, mname, ok, k, miss, add, dt, _ in rows:
        lines.append(f"| {name} | {mname} | {ok}/{k} | {miss:.1f} | {add:.1f} | {dt:.2f} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
