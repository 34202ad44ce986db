"""Model selection for MTD fits: the order (:func:`select_order`, warm-started so the log-likelihood is
monotone in the order) and a sparse lag set (:func:`select_lags`)."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._validate import as_rng, check_int, check_n_jobs
from ._data import parse, resolve_states
from .estimator import MTD

#: weight given to the new lag in the warm start of order m + 1 from the best order-m fit (EM cannot move a
#: weight that is exactly 0; a small one lets the new lag enter while the start stays near the order-m optimum)
WARM_WEIGHT = 0.05


def _nested_start(prev: MTD, m: int, eps: float) -> dict:
    """The order-m parameters of ``prev`` (order m - 1) with weight ``eps`` on the new lag m: the other weights
    scaled by ``1 - eps``; the new lag's matrix is the shared pi, or for a lag-wise model lag m - 1's matrix.
    ``eps = 0`` is the order-(m - 1) law itself, written as an order-m one."""
    law = prev.model_
    lam = np.append(law.lam * (1.0 - eps), eps)
    pi = law.pi if law.variant == "shared" else np.concatenate([law.pi, law.pi[-1:]], axis=0)
    out = {"pi": pi, "lam": lam}
    if law.independent:
        out.update(lam0=law.lam0 * (1.0 - eps), p0=law.p0)
    return out


def select_order(sequences: Any, max_order: int, *, criterion: str = "bic", variant: str = "shared",
                 **fit_kwargs: Any) -> tuple[MTD, list[dict]]:
    """Fit orders 1..max_order and keep the one with the smallest information criterion.

    Every order is fitted on the same transitions (each sequence conditioned on its first ``max_order``
    tokens), so the log-likelihoods are comparable. Order m + 1 is warm-started from the best order-m fit
    (weight :data:`WARM_WEIGHT` on the new lag, besides the random restarts); if its best fit is still below
    order m's log-likelihood (a local optimum), it is refitted from the order-m law itself with the new lag's
    weight at 0, a point of the order-(m + 1) model with order m's likelihood, from which EM only climbs. So
    the log-likelihood is nondecreasing in the order by construction.

    Parameters
    ----------
    sequences : as for :func:`~mtdmath.fitting.fit`
    max_order : int
    criterion : {"bic", "aic"}
    variant : {"shared", "lagwise"}
    **fit_kwargs
        ``n_states, independent, restarts, init, tol, max_iter, weights, rng, n_jobs`` as for
        :func:`~mtdmath.fitting.fit`; ``init`` applies to order 1.

    Returns
    -------
    best : MTD
        The fitted estimator of the chosen order.
    table : list of dict
        One row per order: ``order, loglik, n_params, aic, bic, n_obs``.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> from mtdmath import fitting
    >>> pi = mtdmath.random_transition_matrix(3, concentration=0.5, rng=0)
    >>> y = mtdmath.sample(pi, np.array([0.0, 1.0]), 600, rng=1)  # all the weight on lag 2
    >>> best, table = fitting.select_order(y, max_order=3, restarts=1, rng=0)
    >>> best.lags_, [row['order'] for row in table]
    ((1, 2), [1, 2, 3])
    """
    max_order = check_int(max_order, "max_order", minimum=1)
    if criterion not in ("aic", "bic"):
        raise ValueError(f'criterion must be "aic" or "bic" (got {criterion!r})')
    for key in ("order", "lags", "start"):
        if key in fit_kwargs:
            raise ValueError(f"select_order chooses the order itself: do not pass {key!r}")
    bad = set(fit_kwargs) - {"n_states", "independent", "restarts", "init", "tol", "max_iter", "weights", "rng",
                             "n_jobs"}
    if bad:
        raise ValueError(f"select_order got unknown fit arguments {sorted(bad)}")
    check_n_jobs(fit_kwargs.get("n_jobs"))
    parsed = parse(sequences, sample_weight=fit_kwargs.pop("weights", None), name="sequences",
                   weight_name="weights")
    if max_order >= parsed.longest:
        raise ValueError(f"max_order = {max_order} leaves no transition to fit: the longest sequence has "
                         f"{parsed.longest} tokens (an order-k fit needs more than k)")
    S = resolve_states(parsed, fit_kwargs.pop("n_states", None))
    rng = as_rng(fit_kwargs.pop("rng", None))
    first_init = fit_kwargs.pop("init", "counts")
    table, fits = [], []
    prev = None
    for m in range(1, max_order + 1):
        kw = dict(n_states=S, variant=variant, burn_in=max_order, random_state=rng, **fit_kwargs)
        init = first_init if prev is None else _nested_start(prev, m, WARM_WEIGHT)
        f = MTD(m, init=init, **kw)._fit_parsed(parsed)
        if prev is not None and f.loglik_ < prev.loglik_:
            with warnings.catch_warnings():  # the fit below warned already if it ran out of iterations
                warnings.simplefilter("ignore", RuntimeWarning)
                g = MTD(m, **{**kw, "init": _nested_start(prev, m, 0.0), "restarts": 1})._fit_parsed(parsed)
            f = g if g.loglik_ > f.loglik_ else f
        fits.append(f)
        prev = f
        table.append({"order": m, "loglik": f.loglik_, "n_params": f.n_params, "aic": f.aic(), "bic": f.bic(),
                      "n_obs": f.n_obs_})
    best = min(range(max_order), key=lambda i: table[i][criterion])
    return fits[best], table


def select_lags(sequences: Any, max_lag: int, *, method: str = "forward", criterion: str = "bic",
                variant: str = "shared", max_size: int | None = None, screen: int = 8, n_states: int | None = None,
                independent: bool = False, restarts: int = 2, tol: float = 1e-7, max_iter: int = 10_000,
                weights: Any = None, rng: Any = None, n_jobs: int | None = None) -> tuple[MTD, list[dict]]:
    """Choose a sparse set of lags from the window ``1..max_lag`` by an information criterion.

    Every candidate is fitted on the same transitions (each sequence conditioned on its first ``max_lag``
    tokens), so criteria are comparable.

    - ``method="forward"``: forward stepwise on the MTD likelihood. Start from the best single lag; at each
      step add the lag whose fit lowers the criterion most; stop when no addition lowers it (or at
      ``max_size``). A final backward pass drops any lag whose removal lowers the criterion.
    - ``method="bic"`` (hdMTD's BIC method after screening): rank every lag by the criterion of its
      single-lag fit, keep the best ``screen``, and search all their subsets of size <= ``max_size``
      (default ``min(screen, 4)``) exhaustively.

    Parameters
    ----------
    sequences : as for :func:`fit` (integer codes or labels)
    max_lag : int
        Window size.
    method : {"forward", "bic"}
    criterion : {"bic", "aic"}
    variant, n_states, independent, restarts, tol, max_iter, weights, rng, n_jobs
        Passed to each fit. ``tol`` defaults to 1e-7: criteria differ by whole nats between candidates, far
        above what a looser fit loses (tol * |loglik|); the chosen set is refitted with ``tol=1e-9``.

    Returns
    -------
    best : MTD
        The fitted estimator of the chosen lag set (``best.lags_``).
    table : list of dict
        Every candidate fitted, in order: ``lags, loglik, n_params, aic, bic, n_obs, step``.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> from mtdmath import fitting
    >>> pi = mtdmath.random_transition_matrix(3, concentration=0.5, rng=0)
    >>> y = mtdmath.sample(pi, np.array([0.0, 1.0]), 600, rng=1)  # all the weight on lag 2
    >>> best, table = fitting.select_lags(y, max_lag=4, rng=0)
    >>> best.lags_
    (2,)
    """
    max_lag = check_int(max_lag, "max_lag", minimum=1)
    if method not in ("forward", "bic"):
        raise ValueError(f'method must be "forward" or "bic" (got {method!r})')
    if criterion not in ("aic", "bic"):
        raise ValueError(f'criterion must be "aic" or "bic" (got {criterion!r})')
    screen = check_int(screen, "screen", minimum=1)
    if max_size is not None:
        max_size = check_int(max_size, "max_size", minimum=1)
    n_jobs = check_n_jobs(n_jobs)
    rng = as_rng(rng)
    # parsed once: every candidate fit counts the same sequences
    parsed = parse(sequences, sample_weight=weights, name="sequences", weight_name="weights")
    if max_lag >= parsed.longest:
        raise ValueError(f"max_lag = {max_lag} leaves no transition to fit: the longest sequence has "
                         f"{parsed.longest} tokens")
    S = resolve_states(parsed, n_states)
    kw = dict(n_states=S, variant=variant, independent=independent, restarts=restarts, tol=tol,
              max_iter=max_iter, burn_in=max_lag, random_state=rng, n_jobs=n_jobs)
    table: list[dict] = []
    cache: dict[tuple, MTD] = {}

    def crit(lags: tuple, step: str) -> float:
        if lags not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # screening fits; the final refit warns
                f = MTD(lags=lags, **kw)._fit_parsed(parsed)
            cache[lags] = f
            table.append({"lags": lags, "loglik": f.loglik_, "n_params": f.n_params, "aic": f.aic(),
                          "bic": f.bic(), "n_obs": f.n_obs_, "step": step})
        return table[[r["lags"] for r in table].index(lags)][criterion]

    singles = {(l,): crit((l,), "single") for l in range(1, max_lag + 1)}
    if method == "forward":
        limit = max_lag if max_size is None else min(max_size, max_lag)
        cur = min(singles, key=singles.get)
        cur_val = singles[cur]
        while len(cur) < limit:
            cands = {tuple(sorted(cur + (l,))): None for l in range(1, max_lag + 1) if l not in cur}
            vals = {c: crit(c, f"add to {cur}") for c in cands}
            best = min(vals, key=vals.get)
            if vals[best] >= cur_val:
                break
            cur, cur_val = best, vals[best]
        improved = True
        while improved and len(cur) > 1:  # backward pass
            improved = False
            vals = {tuple(x for x in cur if x != l): None for l in cur}
            vals = {c: crit(c, f"drop from {cur}") for c in vals}
            best = min(vals, key=vals.get)
            if vals[best] < cur_val:
                cur, cur_val, improved = best, vals[best], True
        chosen = cur
    else:
        import itertools

        top = sorted(singles, key=singles.get)[: min(screen, max_lag)]
        pool = sorted(l for (l,) in top)
        size = min(len(pool), 4) if max_size is None else min(max_size, len(pool))
        best_val, chosen = float("inf"), None
        for r in range(1, size + 1):
            for c in itertools.combinations(pool, r):
                v = crit(tuple(c), "subset")
                if v < best_val:
                    best_val, chosen = v, tuple(c)
    best_fit = MTD(lags=chosen, **{**kw, "tol": 1e-9})._fit_parsed(parsed)
    return best_fit, table
