"""Calibration of the likelihood-ratio test MTD vs the saturated chain (docs/math.md §7.8).

Null: a shared-pi MTD (S = 3, lags 1, 2, lam = (0.6, 0.4), rows of pi ~ Dirichlet(4), the model of
tests/test_fit_baselines.py), n = 1000 transitions per replicate; each replicate runs
``lr_test(MTD(2, restarts=5), MarkovChain(2), y)`` (df = 18 - 7 = 11). Reported: the KS test of the p-values
against U(0, 1), the rejection rate at 5 %, the KS test with the df off by +-3 (must reject), and how often
all 5 restarts of the MTD fit end within 1e-3 of each other, and how often the best value is reached by at
least two restarts (evidence that the best is the global optimum Wilks needs).
Alternative: a saturated order-2 chain with rows ~ Dirichlet(1), drawn afresh per replicate; reported: the
rejection rate at 5 %. Results: ``bench/peers/results_lr_calibration.json``; a QQ plot of the null p-values
``lr_calibration_qq.png`` (its numbers are in the JSON).

Usage (repository root): ``python bench/peers/lr_calibration.py [--n-null 1000] [--n-alt 200]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import chi2, kstest
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from mtdmath.fitting import MTD, ChainModel, MarkovChain, MTDModel, lr_test  # noqa: E402

S = 3


def null_model() -> MTDModel:
    return MTDModel(np.random.default_rng(2024).dirichlet(np.full(S, 4.0), size=S), [0.6, 0.4])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-null", type=int, default=1000)
    ap.add_argument("--n-alt", type=int, default=200)
    ap.add_argument("--n", type=int, default=1000, help="transitions per replicate")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default=str(HERE / "results_lr_calibration.json"))
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    true = null_model()
    stats, pvals, agree, twice = [], [], 0, 0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for r in tqdm(range(args.n_null), desc="null", leave=False):
            y = true.sample(args.n + 2, rng=rng)
            t = lr_test(MTD(2, restarts=5, random_state=r), MarkovChain(2), y)
            stats.append(t.statistic)
            pvals.append(t.pvalue)
            rl = t.smaller.restart_logliks_
            # the stopping rule leaves ~tol * |loglik| ~ 1e-6 between restarts at one maximum: 1e-3 separates
            # "the same maximum" from a local one (those sit ~1 nat lower here)
            agree += float(rl.max() - rl.min()) <= 1e-3
            twice += int(np.sum(rl >= rl.max() - 1e-3)) >= 2
    df = t.df
    t_null = time.perf_counter() - t0
    rej_alt = 0
    for r in tqdm(range(args.n_alt), desc="alternative", leave=False):
        P = rng.dirichlet(np.ones(S), size=S * S)
        y = ChainModel(P, 2).sample(args.n + 2, rng=rng)
        rej_alt += lr_test(MTD(2, restarts=5, random_state=r), MarkovChain(2), y).pvalue < 0.05
    pv = np.sort(np.asarray(pvals))
    res = {
        "S": S, "lags": [1, 2], "n_transitions": args.n, "df": df, "seed": args.seed,
        "null_replicates": args.n_null, "null_ks_pvalue": float(kstest(pvals, "uniform").pvalue),
        "null_reject_rate_5pct": float(np.mean(pv < 0.05)), "null_mean_statistic": float(np.mean(stats)),
        "restarts_all_within_1e-3_fraction": agree / args.n_null,
        "best_reached_by_two_restarts_fraction": twice / args.n_null,
        "wrong_df_plus3_ks_pvalue": float(kstest(chi2.sf(stats, df + 3), "uniform").pvalue),
        "wrong_df_minus3_ks_pvalue": float(kstest(chi2.sf(stats, df - 3), "uniform").pvalue),
        "alt_replicates": args.n_alt, "alt_reject_rate_5pct": rej_alt / args.n_alt,
        "null_seconds": t_null,
        "qq": {"uniform_quantiles": ((np.arange(pv.size) + 0.5) / pv.size).tolist(), "pvalues": pv.tolist()},
    }
    Path(args.out).write_text(json.dumps(res, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.5, 3.5))
    ax.plot(res["qq"]["uniform_quantiles"], pv, ".", ms=2)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="U(0, 1) quantile", ylabel="LR p-value", title=f"MTD vs chain(2), df {df}")
    fig.tight_layout()
    fig.savefig(HERE / "lr_calibration_qq.png", dpi=110)
    print(json.dumps({k: v for k, v in res.items() if k != "qq"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
