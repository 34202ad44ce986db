"""The real-data example of the README and docs/guide/fitting.md: yearly sunspot numbers (shipped inside statsmodels, no download) in terciles
labelled "low" / "mid" / "high", the lag search, the model comparison table and the fitted lag weights with
95 % Wald intervals (``sunspots_lag_weights.png`` and every plotted number in ``sunspots_lag_weights.json``,
written to the current directory). Run: ``python bench/peers/sunspots_example.py``. Needs statsmodels
(and so pandas) and matplotlib.
"""
import json
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import statsmodels.api as sm
from mtdmath.fitting import MTD, MarkovChain, compare_models, select_lags

sun = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()  # yearly sunspot numbers, 1700-2008
level = np.searchsorted(np.quantile(sun, [1 / 3, 2 / 3]), sun)            # terciles
states = pd.Categorical(np.array(["low", "mid", "high"])[level], categories=["low", "mid", "high"])
print(len(states), list(states[:6]))

sel, _ = select_lags(states, 12, rng=0)   # forward search over lags 1..12, on the labels
print("selected lags", sel.lags_)
models = [MarkovChain(0), MarkovChain(1), MarkovChain(2), MTD(lags=sel.lags_, restarts=10, random_state=0),
          MTD(lags=sel.lags_, variant="lagwise", restarts=10, random_state=0)]
table = compare_models(models, states)   # every model on the same transitions
print(table)
print("best by BIC:", table.best("bic"))

est = table.models[3]                     # the fitted shared-pi MTD
print(est.summary())
print(est.predict([["low", "mid", "high", "high", "mid", "low", "low", "low", "mid", "high"]]))

lo, hi = est.confidence_intervals(0.95)["lam"]   # Wald intervals (observed information)
fig, ax = plt.subplots(figsize=(4, 3))
ax.errorbar(est.lags_, est.lam_, yerr=[est.lam_ - lo, hi - est.lam_], fmt="o", capsize=4)
ax.set(xlabel="lag (years)", ylabel="lag weight", xticks=est.lags_, title="sunspot terciles: MTD lag weights")
fig.tight_layout()
fig.savefig("sunspots_lag_weights.png", dpi=120)
with open("sunspots_lag_weights.json", "w") as fh:   # every plotted number
    json.dump({"lags": list(est.lags_), "lam": est.lam_.tolist(), "lower": lo.tolist(), "upper": hi.tolist()}, fh)
print("lam", est.lam_.round(3), "lower", lo.round(3), "upper", hi.round(3))
