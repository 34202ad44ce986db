"""Runs in a fresh process: the CPU time of mtdmath's first fit (its import included) and of warm fits.

Usage: python _cold_runner.py IN.npz OUT.json
IN.npz holds ``seq`` (int, (T,)), ``order``, ``restarts``, ``seed``, ``variant`` and ``warm`` (how many warm
fits follow the first). NumPy is imported and the data loaded before the clock starts (a caller has its data
in memory); then ``process_time`` (every thread of the process) is taken around ``import mtdmath.fitting``
and the first ``fit`` ("cold"), and around each warm ``fit`` of the same data in the same process. Writes
both times (the warm one as the smallest), both log-likelihoods and whether numba was imported to OUT.json.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: mtdmath without installing


def main() -> None:
    inp, out = sys.argv[1], sys.argv[2]
    z = np.load(inp)
    seq, m, restarts, seed = z["seq"], int(z["order"]), int(z["restarts"]), int(z["seed"])
    variant, warm = str(z["variant"]), int(z["warm"])
    t0 = time.process_time()
    from mtdmath.fitting import fit

    first = fit(seq, m, variant=variant, restarts=restarts, rng=seed)
    cold = time.process_time() - t0
    numba_cold = "numba" in sys.modules
    warm_s, lls = [], []
    for _ in range(warm):
        t0 = time.process_time()
        again = fit(seq, m, variant=variant, restarts=restarts, rng=seed)
        warm_s.append(time.process_time() - t0)
        lls.append(again.loglik_)
    json.dump({"cold_cpu_s": cold, "warm_cpu_s": min(warm_s) if warm_s else None,
               "loglik_cold": first.loglik_, "loglik_warm": lls, "numba_imported": numba_cold,
               "numpy": np.__version__}, open(out, "w"))


if __name__ == "__main__":
    main()
