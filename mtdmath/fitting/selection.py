"""Model selection for MTD fits: the order (:func:`select_order`, warm-started so the log-likelihood is
monotone in the order) and a sparse lag set (:func:`select_lags`)."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._validate import as_rng, check_int, check_n_jobs
from ._data import parse, resolve_states
from ._lagselect import check_cut_constants, cut_statistics, elbow_size, forward_stepwise
from .mtd import MTD

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
        out.update(lam_indep=law.lam_indep * (1.0 - eps), p0=law.p0)
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
        ``n_symbols, independent, restarts, init, tol, max_iter, weights, rng, n_jobs`` as for
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
    bad = set(fit_kwargs) - {"n_symbols", "independent", "restarts", "init", "tol", "max_iter", "weights", "rng",
                             "n_jobs"}
    if bad:
        raise ValueError(f"select_order got unknown fit arguments {sorted(bad)}")
    check_n_jobs(fit_kwargs.get("n_jobs"))
    parsed = parse(sequences, sample_weight=fit_kwargs.pop("weights", None), name="sequences",
                   weight_name="weights")
    if max_order >= parsed.longest:
        raise ValueError(f"max_order = {max_order} leaves no transition to fit: the longest sequence has "
                         f"{parsed.longest} tokens (an order-k fit needs more than k)")
    S = resolve_states(parsed, fit_kwargs.pop("n_symbols", None))
    rng = as_rng(fit_kwargs.pop("rng", None))
    first_init = fit_kwargs.pop("init", "counts")
    table, fits = [], []
    prev = None
    for m in range(1, max_order + 1):
        kw = dict(n_symbols=S, variant=variant, burn_in=max_order, random_state=rng, **fit_kwargs)
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
                variant: str = "shared", max_size: int | None = None, screen: int = 8, n_symbols: int | None = None,
                independent: bool = False, restarts: int = 2, tol: float = 1e-7, max_iter: int = 10_000,
                weights: Any = None, rng: Any = None, n_jobs: int | None = None,
                cut_constants: dict | None = None) -> tuple[MTD, list[dict]]:
    """Choose a sparse set of lags from the window ``1..max_lag`` by an information criterion.

    Every candidate is fitted on the same transitions (each sequence conditioned on its first ``max_lag``
    tokens), so criteria are comparable.

    - ``method="forward"``: forward stepwise on the MTD likelihood. Start from the best single lag; at each
      step add the lag whose fit lowers the criterion most; stop when no addition lowers it (or at
      ``max_size``). A final backward pass drops any lag whose removal lowers the criterion.
    - ``method="bic"`` (hdMTD's BIC method after screening): rank every lag by the criterion of its
      single-lag fit, keep the best ``screen``, and search all their subsets of size <= ``max_size``
      (default ``min(screen, 4)``) exhaustively.
    - ``method="cut"`` (hdMTD's ``hdMTD_CUT``, docs/math.md §10.3): keep the lags of the window whose CUT
      statistic (largest distance between next-token laws that differ at that lag, minus a threshold) is
      positive. No likelihood fit; with hdMTD's default threshold constants and a long window it keeps lags
      the law does not use (CUT is meant for a small candidate set, as in ``"fsc"``).
    - ``method="fs"`` (hdMTD's ``hdMTD_FS``, docs/math.md §10.4): forward stepwise on the statistic nu. With
      ``max_size`` it runs ``max_size`` steps and keeps every chosen lag (hdMTD's ``l``); without, it runs
      ``min(5, max_lag)`` steps and keeps the lags chosen before the step whose nu is smallest (hdMTD's
      ``elbowTest``).
    - ``method="fsc"`` (hdMTD's ``hdMTD_FSC``): FS for ``max_size`` steps (default ``min(5, max_lag)``) on the
      first half of every sequence, then CUT of the chosen lags on the second half.

    The hdMTD methods read integer counts: they take no ``weights``. Their chosen set is fitted once by EM
    (``variant``, ``independent``, ... apply to that fit only); ``criterion`` and ``screen`` do not apply.

    Parameters
    ----------
    sequences : as for :func:`fit` (integer codes or labels)
    max_lag : int
        Window size.
    method : {"forward", "bic", "cut", "fs", "fsc"}
    criterion : {"bic", "aic"}
    max_size : int, optional
        Largest lag set (``"forward"``, ``"bic"``); the number of FS steps (``"fs"``, ``"fsc"``).
    variant, n_symbols, independent, restarts, tol, max_iter, weights, rng, n_jobs
        Passed to each fit. ``tol`` defaults to 1e-7: criteria differ by whole nats between candidates, far
        above what a looser fit loses (tol * |loglik|); the chosen set is refitted with ``tol=1e-9``.
    cut_constants : dict, optional
        CUT's threshold constants ``{"alpha": 0.05, "mu": 1.0, "xi": 0.5}`` (hdMTD's defaults; give any of
        them) for ``"cut"`` and ``"fsc"``. A larger ``alpha`` raises the threshold.

    Returns
    -------
    best : MTD
        The fitted estimator of the chosen lag set (``best.lags_``).
    table : list of dict
        ``"forward"``, ``"bic"``: every candidate fitted, in order: ``lags, loglik, n_params, aic, bic, n_obs,
        step``. ``"cut"``: one row per lag of the window, ``lags`` (that lag), ``cut`` (its statistic) and
        ``step="cut"``. ``"fs"``: one row per step, ``lags`` (the set after it), ``nu`` (the largest nu) and
        ``step``. ``"fsc"``: the FS rows, then the CUT rows of the chosen lags.

    Raises
    ------
    ValueError
        Naming the argument on bad input; naming ``cut_constants`` when CUT keeps no lag (an MTD needs one).

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath.fitting import MTDModel, select_lags
    >>> pi = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    >>> y = MTDModel(pi, [0.6, 0.4], lags=(1, 4)).sample(5000, rng=0)
    >>> select_lags(y, 6, method="fs", max_size=2, rng=0)[0].lags_
    (1, 4)
    """
    max_lag = check_int(max_lag, "max_lag", minimum=1)
    if method not in ("forward", "bic", "cut", "fs", "fsc"):
        raise ValueError(f'method must be "forward", "bic", "cut", "fs" or "fsc" (got {method!r})')
    if criterion not in ("aic", "bic"):
        raise ValueError(f'criterion must be "aic" or "bic" (got {criterion!r})')
    screen = check_int(screen, "screen", minimum=1)
    if max_size is not None:
        max_size = check_int(max_size, "max_size", minimum=1)
    n_jobs = check_n_jobs(n_jobs)
    constants = _cut_constants(cut_constants)
    if method in ("cut", "fs", "fsc") and weights is not None:
        raise ValueError(f'weights: method="{method}" (hdMTD) reads integer counts; weights apply to "forward" '
                         'and "bic" only')
    rng = as_rng(rng)
    # parsed once: every candidate fit counts the same sequences
    parsed = parse(sequences, sample_weight=weights, name="sequences", weight_name="weights")
    if max_lag >= parsed.longest:
        raise ValueError(f"max_lag = {max_lag} leaves no transition to fit: the longest sequence has "
                         f"{parsed.longest} tokens")
    S = resolve_states(parsed, n_symbols)
    kw = dict(n_symbols=S, variant=variant, independent=independent, restarts=restarts, tol=tol,
              max_iter=max_iter, burn_in=max_lag, random_state=rng, n_jobs=n_jobs)
    if method in ("cut", "fs", "fsc"):
        chosen, table = _hdmtd_lags(parsed, S, max_lag, method, max_size, constants)
        return MTD(lags=chosen, **{**kw, "tol": 1e-9})._fit_parsed(parsed), table
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


#: hdMTD's CUT threshold constants (docs/math.md eq-cut-threshold)
CUT_DEFAULTS = {"alpha": 0.05, "mu": 1.0, "xi": 0.5}


def _cut_constants(cut_constants: Any) -> dict:
    if cut_constants is None:
        return dict(CUT_DEFAULTS)
    if not isinstance(cut_constants, dict) or set(cut_constants) - set(CUT_DEFAULTS):
        raise ValueError(f"cut_constants must be a dict with keys among {sorted(CUT_DEFAULTS)} "
                         f"(got {cut_constants!r})")
    out = {**CUT_DEFAULTS, **cut_constants}
    try:
        check_cut_constants(out["alpha"], out["mu"], out["xi"])
    except ValueError as e:
        raise ValueError(f"cut_constants: {e}") from None
    return out


def _hdmtd_lags(parsed: Any, S: int, d: int, method: str, max_size: int | None, constants: dict
                ) -> tuple[tuple[int, ...], list[dict]]:
    """The lag set hdMTD's CUT, FS or FSC chooses from the window 1..d (docs/math.md §10.3, §10.4), and the
    table of its statistics."""
    seqs = parsed.seqs
    table: list[dict] = []

    def cut_rows(data: list, candidates: tuple | None) -> tuple[int, ...]:
        L, stat = cut_statistics(data, S, d, lags=candidates, **constants)
        table.extend({"lags": (l,), "cut": float(s), "step": "cut"} for l, s in zip(L, stat))
        kept = tuple(l for l, s in zip(L, stat) if s > 0)
        if not kept:
            raise ValueError(f"cut_constants: CUT kept no lag of {L} (every statistic <= 0 at alpha = "
                             f"{constants['alpha']}); an MTD needs one lag: lower alpha or use another method")
        return kept

    def fs_rows(data: list, steps: int, elbow: bool) -> tuple[int, ...]:
        order, nu = forward_stepwise(data, S, d, steps)
        for i, v in enumerate(nu):
            table.append({"lags": tuple(sorted(order[: i + 1])), "nu": float(v), "step": f"fs step {i + 1}"})
        return tuple(sorted(order[: elbow_size(nu)] if elbow else order))

    steps = min(5, d) if max_size is None else min(max_size, d)
    if method == "cut":
        return cut_rows(seqs, None), table
    if method == "fs":
        return fs_rows(seqs, steps, elbow=max_size is None), table
    first = [y[: y.shape[0] // 2] for y in seqs]
    second = [y[y.shape[0] // 2:] for y in seqs]
    if max(y.shape[0] for y in second) <= d:
        raise ValueError(f'max_lag = {d} leaves no transition in the second half of any sequence (method="fsc" '
                         "runs CUT on the second halves)")
    return cut_rows(second, fs_rows(first, steps, elbow=False)), table
