"""Runs inside the mtdlearn virtualenv (numpy<1.24): fit mtdlearn 0.2.3's MTD on one sequence.

Usage: $MTDLEARN_PYTHON _mtdlearn_runner.py IN.npz OUT.json
IN.npz holds ``seq`` (int, (T,)), ``order``, ``restarts``, ``seed`` and optionally ``warm`` (how many more
fits of the same data follow in the same process, default 0). Writes the fitted lambdas and transition
matrices (mtdlearn's column order: column c of x is lag order-c), its own log-likelihood and the wall time
of ``fit`` to OUT.json; with the CPU time (``process_time``) of importing mtdlearn plus its first fit
(``cold_cpu_s``; NumPy is imported and the data loaded before the clock starts) and the smallest CPU time
of the warm fits (``warm_cpu_s``). Not imported by mtdmath; it only needs numpy and mtdlearn.
"""
import json
import sys
import time

import numpy as np


def main() -> None:
    inp, out = sys.argv[1], sys.argv[2]
    z = np.load(inp)
    seq, m, restarts, seed = z["seq"], int(z["order"]), int(z["restarts"]), int(z["seed"])
    n = seq.shape[0] - m
    # mtdlearn's layout: x[:, c] = seq[c:c+n] (column 0 = lag m, last column = lag 1), y = seq[m:]
    x = np.stack([seq[c:c + n] for c in range(m)], axis=1)
    y = seq[m:]
    warm = int(z["warm"]) if "warm" in z.files else 0
    c0 = time.process_time()
    from mtdlearn.mtd import MTD

    np.random.seed(seed)  # its random starts use the global numpy RNG; n_jobs=1 keeps them in this process
    model = MTD(order=m, number_of_initiations=restarts, n_jobs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(x, y)
    dt = time.perf_counter() - t0
    cold = time.process_time() - c0
    warm_s = []
    for _ in range(warm):
        np.random.seed(seed)
        again = MTD(order=m, number_of_initiations=restarts, n_jobs=1, verbose=0)
        c0 = time.process_time()
        again.fit(x, y)
        warm_s.append(time.process_time() - c0)
    json.dump({"lambdas": np.asarray(model.lambdas).tolist(),
               "transition_matrices": np.asarray(model.transition_matrices).tolist(),
               "log_likelihood": float(model.log_likelihood), "fit_seconds": dt,
               "cold_cpu_s": cold, "warm_cpu_s": min(warm_s) if warm_s else None,
               "numpy": np.__version__}, open(out, "w"))


if __name__ == "__main__":
    main()
