"""Model selection for MTD fits: the order (:func:`select_order`) and a sparse lag set (:func:`select_lags`)."""
from __future__ import annotations

from typing import Any

from .._validate import as_rng, check_int
from .estimator import _fit_impl, _to_numpy
from .model import MTDFit
from .symbols import check_classes_states, encode


def select_order(sequences: Any, max_order: int, *, criterion: str = "bic", variant: str = "shared",
                 **fit_kwargs: Any) -> tuple[MTDFit, list[dict]]:
    """Fit orders 1..max_order and keep the one with the smallest information criterion.

    Every order is fitted on the same transitions (each sequence conditioned on its first ``max_order``
    tokens), so the log-likelihoods are comparable.

    Returns
    -------
    best : MTDFit
    table : list of dict
        One row per order: ``order, loglik, n_params, aic, bic, n_obs``.
    """
    max_order = check_int(max_order, "max_order", minimum=1)
    from .em import _as_sequences

    sequences, classes = encode(sequences, "sequences")  # labels -> codes once (docs/math.md §7.9)
    if classes is not None:
        fit_kwargs["n_states"] = check_classes_states(classes, fit_kwargs.get("n_states"))
    sequences = _as_sequences(_to_numpy(sequences))
    longest = max(s.shape[0] for s in sequences)
    if max_order >= longest:
        raise ValueError(f"max_order = {max_order} leaves no transition to fit: the longest sequence has "
                         f"{longest} tokens (an order-k fit needs more than k)")
    if criterion not in ("aic", "bic"):
        raise ValueError(f'criterion must be "aic" or "bic" (got {criterion!r})')
    for key in ("order", "lags", "start"):
        if key in fit_kwargs:
            raise ValueError(f"select_order chooses the order itself: do not pass {key!r}")
    bad = set(fit_kwargs) - {"n_states", "independent", "restarts", "init", "tol", "max_iter", "weights", "rng"}
    if bad:
        raise ValueError(f"select_order got unknown fit arguments {sorted(bad)}")
    rng = as_rng(fit_kwargs.pop("rng", None))
    sequences = _to_numpy(sequences)
    table, fits = [], []
    for m in range(1, max_order + 1):
        f = _fit_impl(sequences, m, variant=variant, start=max_order, rng=rng, classes=classes, **fit_kwargs)
        fits.append(f)
        table.append({"order": m, "loglik": f.loglik, "n_params": f.n_params, "aic": f.aic, "bic": f.bic,
                      "n_obs": f.n_obs})
    best = min(range(max_order), key=lambda i: table[i][criterion])
    return fits[best], table


def select_lags(sequences: Any, max_lag: int, *, method: str = "forward", criterion: str = "bic",
                variant: str = "shared", max_size: int | None = None, screen: int = 8, n_states: int | None = None,
                independent: bool = False, restarts: int = 2, tol: float = 1e-7, max_iter: int = 10_000,
                weights: Any = None, rng: Any = None) -> tuple[MTDFit, list[dict]]:
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
    variant, n_states, independent, restarts, tol, max_iter, weights, rng
        Passed to each fit. ``tol`` defaults to 1e-7: criteria differ by whole nats between candidates, far
        above what a looser fit loses (tol * |loglik|); the chosen set is refitted with ``tol=1e-9``.

    Returns
    -------
    best : MTDFit
        Fit of the chosen lag set (``best.lags``).
    table : list of dict
        Every candidate fitted, in order: ``lags, loglik, n_params, aic, bic, n_obs, step``.
    """
    max_lag = check_int(max_lag, "max_lag", minimum=1)
    if method not in ("forward", "bic"):
        raise ValueError(f'method must be "forward" or "bic" (got {method!r})')
    if criterion not in ("aic", "bic"):
        raise ValueError(f'criterion must be "aic" or "bic" (got {criterion!r})')
    screen = check_int(screen, "screen", minimum=1)
    if max_size is not None:
        max_size = check_int(max_size, "max_size", minimum=1)
    rng = as_rng(rng)
    sequences, classes = encode(sequences, "sequences")  # labels -> codes once (docs/math.md §7.9)
    n_states = check_classes_states(classes, n_states)
    sequences = _to_numpy(sequences)
    from .em import _as_sequences

    seqs = _as_sequences(sequences)  # once: every candidate fit reuses the converted sequences
    kw = dict(n_states=n_states, variant=variant, independent=independent, restarts=restarts, tol=tol,
              max_iter=max_iter, weights=weights, start=max_lag)
    table: list[dict] = []
    cache: dict[tuple, MTDFit] = {}

    def crit(lags: tuple, step: str) -> float:
        if lags not in cache:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # screening fits; the final refit warns
                f = _fit_impl(seqs, None, lags=lags, rng=rng, **kw)
            cache[lags] = f
            table.append({"lags": lags, "loglik": f.loglik, "n_params": f.n_params, "aic": f.aic, "bic": f.bic,
                          "n_obs": f.n_obs, "step": step})
        return getattr(cache[lags], criterion)

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
    final_kw = dict(kw, tol=1e-9)
    best_fit = _fit_impl(seqs, None, lags=chosen, rng=rng, classes=classes, **final_kw)
    return best_fit, table
