"""Coverage experiment for the observed-information Wald intervals (used by the tests and the table in docs/guide/peers.md).

For a setting, draw ``n_sets`` data sets from one fixed true model, fit each, and count how often the 95 %
interval of each target covers its true value. Targets: lam[0] and every pi entry for a shared model (both
identified); for a lag-wise model (lam and pi not identified) the next-token law P(b | context) at fixed
contexts, which is identified. Run ``python -m mtdmath.fitting._coverage --out FILE`` for the full table.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from scipy.stats import binomtest

from .mtd import MTD
from .laws import MTDModel

SETTINGS = {
    "shared": dict(S=3, lags=(1, 2), n=3000, variant="shared"),
    "lagwise": dict(S=3, lags=(1, 2), n=3000, variant="lagwise"),
    # near the boundary: a small lag weight and sparse rows (entries of pi near 0, some never observed)
    "boundary": dict(S=5, lags=(1, 2), n=3000, variant="shared", lam=(0.9, 0.1), concentration=0.5),
    # lag-wise with sparse rows: many next-token probabilities near 0 (docs/math.md §12)
    "sparse_lagwise": dict(S=3, lags=(1, 2), n=3000, variant="lagwise", concentration=0.2),
}
CONTEXTS = np.array([[0, 0], [1, 2], [2, 1]])


def true_model(setting: dict) -> MTDModel:
    """The fixed true law of a setting: rows ~ Dirichlet(concentration) (default 4: away from the boundary),
    lam = ``setting["lam"]`` (default (0.6, 0.4))."""
    rng = np.random.default_rng(12345)
    S, k = setting["S"], len(setting["lags"])
    shape = (k, S) if setting["variant"] == "lagwise" else (S,)
    pi = rng.dirichlet(np.full(S, setting.get("concentration", 4.0)), size=shape)
    return MTDModel(pi, np.array(setting.get("lam", (0.6, 0.4))), lags=setting["lags"])


def targets(setting: dict, model_or_est) -> tuple[np.ndarray, list[str]]:
    if setting["variant"] == "shared":
        return np.concatenate([[model_or_est.lam[0]], model_or_est.pi.ravel()]), (
            ["lam[0]"] + [f"pi[{a},{b}]" for a in range(setting["S"]) for b in range(setting["S"])])
    p = model_or_est.predict_proba(CONTEXTS).ravel()
    return p, [f"P({b}|{tuple(c)})" for c in CONTEXTS.tolist() for b in range(setting["S"])]


def run(name: str, n_sets: int, seed: int = 0, level: float = 0.95) -> dict:
    """Coverage counts per target over ``n_sets`` data sets; returns a JSON-ready dict."""
    setting = SETTINGS[name]
    true = true_model(setting)
    truth, names = targets(setting, true)
    hits = np.zeros(truth.shape[0], dtype=np.int64)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(n_sets):
        y = true.sample(setting["n"] + max(setting["lags"]), rng=rng)
        est = MTD(lags=setting["lags"], variant=setting["variant"], restarts=3, random_state=rng,
                  n_symbols=setting["S"])
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a non-converged fit would be a bug here
            est.fit(y)
        if setting["variant"] == "shared":
            ci = est.confidence_intervals(level)
            lo = np.concatenate([[ci["lam"][0][0]], ci["pi"][0].ravel()])
            hi = np.concatenate([[ci["lam"][1][0]], ci["pi"][1].ravel()])
        else:
            _, lo, hi = est.predict_proba_interval(CONTEXTS, level)
            lo, hi = lo.ravel(), hi.ravel()
        hits += (lo <= truth) & (truth <= hi)
    pvals = [binomtest(int(h), n_sets, level).pvalue for h in hits]
    return {"setting": name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in setting.items()},
            "n_sets": n_sets, "level": level, "targets": names, "truth": truth.tolist(),
            "covered": hits.tolist(), "coverage": (hits / n_sets).tolist(), "binom_p": pvals,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-sets", type=int, default=200)
    ap.add_argument("--out", default="coverage.json")
    args = ap.parse_args()
    res = [run(name, args.n_sets) for name in SETTINGS]
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    for r in res:
        print(f"{r['setting']}: n = {r['n']}, {r['n_sets']} data sets, {r['seconds']:.0f} s")
        for t, c, p in zip(r["targets"], r["coverage"], r["binom_p"]):
            print(f"  {t:>12s}  coverage {c:.3f}  binomial p {p:.3f}")


if __name__ == "__main__":
    main()
