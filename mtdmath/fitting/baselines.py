"""Baselines for MTD fits: the saturated order-m Markov chain, the independence model, likelihood-ratio tests
and a comparison table (docs/math.md §7.8).

- :class:`MarkovChain` (``order=0`` is the independence model): maximum likelihood by counts, optional
  additive smoothing, with the estimator face of :class:`~mtdmath.fitting.MTD` (``fit`` returns self,
  ``score``, ``predict_proba``, ``predict``, ``sample``, ``aic``, ``bic``, ``n_params``, ``summary``, labels).
- :func:`lr_test`: the likelihood-ratio statistic of two nested models, its degrees of freedom from the
  identifiable parameter counts, and the asymptotic chi-square p-value (Wilks).
- :func:`compare_models`: log-likelihood, n_params, AIC and BIC per model, and the LR tests between the
  nested pairs for which Wilks' theorem applies.

Every comparison fits copies of the given estimators on the same transitions: each sequence is conditioned
on its first ``max order`` tokens for every model, so the log-likelihoods are of the same data.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .._validate import check_alloc, check_float, check_int
from ._data import Parsed, TransitionCounts, check_lags
from .base import SequenceEstimator
from .mtd import MTD
from .laws import ChainModel


class MarkovChain(SequenceEstimator):
    """The saturated order-m Markov chain, fitted by counts (docs/math.md §7.8); ``order=0`` is the
    independence model.

    ``P(y[t] = b | y[t-1], ..., y[t-m] = c) = (N[c, b] + a) / (N[c] + S a)`` with ``N`` the (weighted)
    transition counts and ``a = smoothing`` (0: the maximum-likelihood estimate). A context the data never
    show gets the uniform law (with ``a = 0`` it is not identified; with ``a > 0`` the formula gives it).

    Parameters
    ----------
    order : int
        m >= 0.
    smoothing : float
        Additive pseudo-count ``a >= 0`` per (context, next) cell.
    n_symbols : int, optional
        S for integer codes; default largest code + 1. With labels S is the number of labels.
    burn_in : int, optional
        Condition every sequence on its first ``max(order, burn_in)`` tokens (default ``order``), so that
        chains of different orders are scored on the same transitions.

    Attributes
    ----------
    model_ : ChainModel
        The fitted law; ``transition_`` is a read-only view of its rows.
    classes_ : ndarray (S,)
        The states (labels in code order, or ``0..S-1``).
    n_symbols_ : int
    contexts_ : ndarray (n_ctx, order)
        The observed contexts as codes, time last (``contexts_[i, -l]`` is the symbol at lag l).
    counts_ : ndarray (n_ctx, S)
        Weighted transition counts from each observed context.
    transition_ : ndarray (n_ctx, S)
        The fitted law after each observed context.
    loglik_ : float
        Training log-likelihood (of the smoothed estimate when ``smoothing > 0``).
    n_obs_ : float
        Number of (weighted) transitions.

    Examples
    --------
    >>> from mtdmath.fitting import MarkovChain
    >>> MarkovChain(1).fit([0, 1, 1, 0, 1, 1, 0]).transition_.round(2)
    array([[0. , 1. ],
           [0.5, 0.5]])
    """

    def __init__(self, order: int = 1, *, smoothing: float = 0.0, n_symbols: int | None = None,
                 burn_in: int | None = None):
        self.order = order
        self.smoothing = smoothing
        self.n_symbols = n_symbols
        self.burn_in = burn_in

    @property
    def name(self) -> str:
        return "independence (order 0)" if self.order == 0 else f"Markov chain (order {self.order})"

    def _validate_params(self) -> None:
        check_int(self.order, "order", minimum=0)
        check_float(self.smoothing, "smoothing", nonnegative=True)

    def _lags(self, parsed: Parsed) -> tuple[int, ...]:
        order = check_int(self.order, "order", minimum=0)
        if order == 0:
            return ()
        if parsed.design and order > parsed.n_lag_columns:
            raise ValueError(f"X has {parsed.n_lag_columns} lag columns, fewer than the order {order}")
        return check_lags(order, None, parsed.longest)

    def _fit_law(self, counts: TransitionCounts) -> tuple[ChainModel, dict]:
        """The counting estimate on aggregated counts with lags ``1..order``:
        ``(N[c, b] + a) / (N[c] + S a)`` per observed context (docs/math.md §7.8)."""
        order, a, S = len(counts.lags), check_float(self.smoothing, "smoothing", nonnegative=True), counts.n_symbols
        if counts.lags != tuple(range(1, self.order + 1)):
            raise ValueError(f"counts: their lags {counts.lags} are not lags 1..order = {self.order}")
        if order and (order + 1) * math.log(S) >= 62 * math.log(2):
            raise ValueError(f"order = {order}: S^(order+1) = {S}^{order + 1} contexts overflow the int64 "
                             "context codes; use an MTD (its size does not grow as S^order)")
        keys = np.zeros(len(counts), dtype=np.int64)
        for j in range(order):  # column j holds lag j+1, the most significant digit first
            keys = keys * S + counts.ctx[:, j]
        ctx, inv = np.unique(keys, return_inverse=True)
        check_alloc(ctx.shape[0] * S, 8, "X", f"counts of {ctx.shape[0]} observed contexts x S = {S}")
        N = np.zeros((ctx.shape[0], S))
        np.add.at(N, (inv.ravel(), counts.nxt), counts.w)
        tot = N.sum(axis=1, keepdims=True) + S * a
        law = ChainModel(np.where(tot > 0, (N + a) / np.where(tot > 0, tot, 1.0), 1.0 / S), order, contexts=ctx)
        contexts = (np.stack([(ctx // S ** (order - l)) % S for l in range(order, 0, -1)], axis=1) if order
                    else np.zeros((1, 0), dtype=np.int64))
        return law, {"loglik": law.log_prob(counts), "counts": N, "contexts": contexts, "smoothing": a}

    @property
    def transition_(self) -> np.ndarray:
        self._check_fitted()
        return self.model_.transition

    @property
    def order_(self) -> int:
        self._check_fitted()
        return self.model_.order

    @property
    def n_params_observed(self) -> int:
        """``(#observed contexts) (S - 1)``: the parameters the data identify."""
        self._check_fitted()
        return self.model_.contexts.shape[0] * (self.n_symbols_ - 1)

    def summary(self) -> str:
        """A printable report: order, states, smoothing, log-likelihood, n_params, AIC, BIC."""
        self._check_fitted()
        states = (", ".join(repr(c) for c in self._labels.tolist()) if self._labels is not None
                  else f"codes 0..{self.n_symbols_ - 1}")
        k = self.n_params
        return "\n".join([
            f"{self.name}, saturated: one free law per context, smoothing {self.smoothing_:g}",
            f"  states (S = {self.n_symbols_}): {states}",
            f"  observed contexts {self.model_.contexts.shape[0]} of {self.n_symbols_ ** self.order_}",
            f"  loglik {self.loglik_:.4f} on {self.n_obs_:g} transitions, n_params {k}, "
            f"AIC {-2 * self.loglik_ + 2 * k:.2f}, BIC {-2 * self.loglik_ + math.log(self.n_obs_) * k:.2f}"])


# ----------------------------------------------------------------------------------------------------------
# nesting, likelihood-ratio tests, the comparison table
# ----------------------------------------------------------------------------------------------------------
def _spec(est: Any, name: str) -> dict:
    """What nesting depends on: kind, order, lags, variant, independent (validated, before any fit)."""
    if isinstance(est, MarkovChain):
        return {"kind": "chain", "order": check_int(est.order, f"{name}.order", minimum=0)}
    if isinstance(est, MTD):
        lags = check_lags(est.order, est.lags)
        return {"kind": "mtd", "order": lags[-1], "lags": lags, "variant": est.variant,
                "independent": bool(est.independent)}
    raise ValueError(f"{name} must be an MTD or a MarkovChain estimator (got {type(est).__name__})")


def _label(est: Any) -> str:
    if isinstance(est, MarkovChain):
        return "independence" if est.order == 0 else f"chain(order={est.order})"
    sp = _spec(est, "model")
    v = "MTDg lag-wise" if sp["variant"] == "lagwise" else "MTD shared pi"
    return f"{v}, lags {sp['lags']}" + (" + order 0" if sp["independent"] else "")


def nesting(smaller: Any, larger: Any) -> tuple[bool, bool, str]:
    """(nested, regular, why): whether ``smaller``'s laws are a subset of ``larger``'s, and whether Wilks'
    theorem gives the chi-square limit of the LR statistic under ``smaller`` (docs/math.md §7.8): the null
    must be a smooth submanifold of an identified parametrisation, at an interior point of ``larger``."""
    a, b = _spec(smaller, "smaller"), _spec(larger, "larger")
    if a["kind"] == "chain" and b["kind"] == "chain":
        if a["order"] <= b["order"]:
            return True, True, "a chain of lower order is a smooth subfamily of the saturated chain"
        return False, False, f"order {a['order']} > {b['order']}"
    if a["kind"] == "mtd" and b["kind"] == "chain":
        if a["order"] <= b["order"]:
            return True, True, ("an MTD of max lag <= m is a smooth subfamily of the saturated order-m chain "
                                "(regular at an interior, identified MTD: lam_j > 0, rows of pi > 0)")
        return False, False, f"the MTD's max lag {a['order']} exceeds the chain's order {b['order']}"
    if a["kind"] == "chain" and b["kind"] == "mtd":
        if a["order"] == 0:
            return True, False, ("independence sits in an MTD where every row of pi is equal: the lag weights are "
                                 "not identified there, so the chi-square limit does not hold")
        if a["order"] == 1 and 1 in b["lags"]:
            return True, False, "a first-order chain is the MTD with lam on the boundary (lam_1 = 1)"
        return False, False, "a chain of order >= 2 is not an MTD"
    la, lb = set(a["lags"]), set(b["lags"])
    ok_variant = a["variant"] == b["variant"] or (a["variant"], b["variant"]) == ("shared", "lagwise")
    if not (la <= lb and ok_variant and (not a["independent"] or b["independent"])):
        return False, False, "lags, variant or order-0 component not contained"
    if la == lb and a["independent"] == b["independent"]:
        return True, True, "shared pi is the smooth subfamily of the lag-wise model with equal matrices"
    return True, False, "the smaller model sets weights of the larger to 0: a boundary null (chi-bar-square)"


def _copy_with_burn_in(est: Any, start: int) -> Any:
    new = type(est)(**est.get_params())
    new.set_params(burn_in=start)
    return new


def _loglik_nparams(est: Any) -> tuple[float, int, float]:
    return est.loglik_, est.n_params, est.n_obs_


@dataclass
class LRTest:
    """Result of :func:`lr_test`.

    Attributes
    ----------
    statistic : float
        ``2 (loglik_larger - loglik_smaller) >= 0``.
    df : int
        ``n_params(larger) - n_params(smaller)`` (identifiable counts, docs/math.md §7.8).
    pvalue : float
        ``P(chi2_df >= statistic)``.
    loglik_smaller, loglik_larger, n_obs : float
    regular : bool
        Whether Wilks' theorem applies to the pair (see :func:`nesting`); when False the p-value is the naive
        chi-square one and is not justified.
    smaller, larger : the fitted copies

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> from mtdmath import fitting
    >>> pi = mtdmath.random_transition_matrix(3, concentration=0.5, rng=0)
    >>> y = mtdmath.sample(pi, np.array([0.0, 1.0]), 600, rng=1)  # all the weight on lag 2
    >>> t = fitting.lr_test(fitting.MarkovChain(1), fitting.MarkovChain(2), y)
    >>> type(t).__name__, t.statistic == 2 * (t.loglik_larger - t.loglik_smaller)
    ('LRTest', True)
    """

    statistic: float
    df: int
    pvalue: float
    loglik_smaller: float
    loglik_larger: float
    n_obs: float
    regular: bool
    smaller: Any = field(repr=False)
    larger: Any = field(repr=False)


def lr_from_fits(fs: Any, fl: Any, regular: bool, df: int | None = None) -> LRTest:
    from scipy.stats import chi2

    ls, ks, n = _loglik_nparams(fs)
    ll, kl, _ = _loglik_nparams(fl)
    stat = 2.0 * (ll - ls)
    if stat < 0:
        # the larger model contains the smaller one, so its maximum is at least as high; a small deficit is
        # the optimiser's tolerance (tol * |loglik| per fit), a large one a fit that missed its maximum
        if -stat > 1e-6 * max(abs(ls), 1.0):
            warnings.warn(f"the larger model's log-likelihood ({ll:.6f}) is below the smaller's ({ls:.6f}): "
                          "its fit missed the maximum (raise restarts)", RuntimeWarning, stacklevel=3)
        stat = 0.0
    d = kl - ks if df is None else df
    if d <= 0:
        raise ValueError(f"df must be positive: the larger model has {kl} identifiable parameters, the smaller "
                         f"{ks} (got df = {d})")
    return LRTest(statistic=stat, df=int(d), pvalue=float(chi2.sf(stat, d)), loglik_smaller=ls,
                  loglik_larger=ll, n_obs=n, regular=regular, smaller=fs, larger=fl)


def lr_test(smaller: Any, larger: Any, X: Any, y: Any = None, lengths: Any = None, *, sample_weight: Any = None,
            df: int | None = None) -> LRTest:
    """Likelihood-ratio test of ``smaller`` (the null) inside ``larger`` on the data ``X`` (docs/math.md §7.8).

    Both are estimators (:class:`MarkovChain` or :class:`~mtdmath.fitting.MTD`, fitted or not; they are
    not modified): copies are fitted on ``X`` with ``burn_in`` = the larger of the two max orders, so both
    log-likelihoods are maxima over the same transitions. For an MTD, use enough restarts that its fit
    reaches the global maximum (a local one inflates the statistic).

    Parameters
    ----------
    smaller, larger : MarkovChain or MTD
        ``smaller`` must be nested in ``larger`` (:func:`nesting`), else ``ValueError``.
    X, y, lengths, sample_weight
        The data, as in :meth:`MTD.fit`.
    df : int, optional
        Override the degrees of freedom (default ``n_params(larger) - n_params(smaller)``).

    Returns
    -------
    LRTest
        ``statistic = 2 (l_larger - l_smaller)``, ``df``, ``pvalue = P(chi2_df >= statistic)``; a
        ``RuntimeWarning`` says when the pair is nested but not regular (a boundary or unidentified null),
        where the chi-square p-value is not justified.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> from mtdmath import fitting
    >>> pi = mtdmath.random_transition_matrix(3, concentration=0.5, rng=0)
    >>> y = mtdmath.sample(pi, np.array([0.0, 1.0]), 600, rng=1)  # all the weight on lag 2
    >>> t = fitting.lr_test(fitting.MarkovChain(1), fitting.MarkovChain(2), y)
    >>> t.df, bool(t.pvalue < 1e-6)  # lag 2 matters: order 1 is rejected
    (12, True)
    """
    nested, regular, why = nesting(smaller, larger)
    if not nested:
        raise ValueError(f"smaller ({_label(smaller)}) is not nested in larger ({_label(larger)}): {why}")
    if df is not None:
        df = check_int(df, "df", minimum=1)
    if not regular:
        warnings.warn(f"lr_test: {why}; the chi-square p-value is not justified for this pair", RuntimeWarning,
                      stacklevel=2)
    start = _common_start([smaller, larger])
    fs = _copy_with_burn_in(smaller, start).fit(X, y, lengths, sample_weight=sample_weight)
    fl = _copy_with_burn_in(larger, start).fit(X, y, lengths, sample_weight=sample_weight)
    return lr_from_fits(fs, fl, regular, df)


def _common_start(models: Sequence[Any]) -> int:
    out = 0
    for i, m in enumerate(models):
        sp = _spec(m, f"models[{i}]")
        b = m.burn_in
        out = max(out, sp["order"], 0 if b is None else check_int(b, f"models[{i}].burn_in", minimum=0))
    return out


class ModelComparison:
    """The table of :func:`compare_models`: one row per model, and the LR tests between regular nested pairs.

    Attributes
    ----------
    rows : list of dict
        ``name, loglik, n_params, aic, bic, n_obs`` per model, in the given order.
    tests : list of dict
        ``smaller, larger, statistic, df, pvalue`` for each nested pair where Wilks applies.
    models : list
        The fitted copies.
    burn_in : int
        The number of first tokens of each sequence every model is conditioned on.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> from mtdmath import fitting
    >>> pi = mtdmath.random_transition_matrix(3, concentration=0.5, rng=0)
    >>> y = mtdmath.sample(pi, np.array([0.0, 1.0]), 600, rng=1)  # all the weight on lag 2
    >>> cmp = fitting.compare_models([fitting.MarkovChain(1), fitting.MarkovChain(2)], y, names=['order 1', 'order 2'])
    >>> cmp.best('aic'), len(cmp.tests)
    ('order 2', 1)
    """

    def __init__(self, rows: list[dict], tests: list[dict], models: list, burn_in: int):
        self.rows, self.tests, self.models, self.burn_in = rows, tests, models, burn_in

    def best(self, criterion: str = "bic") -> str:
        """Name of the model with the smallest ``criterion`` (``"aic"`` or ``"bic"``)."""
        if criterion not in ("aic", "bic"):
            raise ValueError(f'criterion must be "aic" or "bic" (got {criterion!r})')
        return min(self.rows, key=lambda r: r[criterion])["name"]

    def to_dict(self) -> dict:
        """``{"models": rows, "tests": tests, "burn_in": burn_in}`` (plain Python values)."""
        return {"models": [dict(r) for r in self.rows], "tests": [dict(t) for t in self.tests],
                "burn_in": self.burn_in}

    def to_frame(self):
        """The model rows as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is optional
            raise ImportError("ModelComparison.to_frame needs pandas (pip install pandas)") from None
        return pd.DataFrame(self.rows).set_index("name")

    def __str__(self) -> str:
        w = max(len(r["name"]) for r in self.rows)
        lines = [f"{'model':<{w}}  {'loglik':>10}  {'n_params':>8}  {'AIC':>9}  {'BIC':>9}"]
        for r in self.rows:
            lines.append(f"{r['name']:<{w}}  {r['loglik']:>10.2f}  {r['n_params']:>8d}  {r['aic']:>9.2f}  "
                         f"{r['bic']:>9.2f}")
        lines.append(f"({self.rows[0]['n_obs']:g} transitions each; every sequence conditioned on its first "
                     f"{self.burn_in} symbols)")
        if self.tests:
            lines.append("likelihood-ratio tests (asymptotic chi-square):")
            for t in self.tests:
                lines.append(f"  {t['smaller']} vs {t['larger']}: LR {t['statistic']:.2f}, df {t['df']}, "
                             f"p {_fmt_p(t['pvalue'])}")
        return "\n".join(lines)

    __repr__ = __str__


def _fmt_p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def compare_models(models: Sequence[Any], X: Any, y: Any = None, lengths: Any = None, *,
                   sample_weight: Any = None, names: Sequence[str] | None = None) -> ModelComparison:
    """Fit every model on the same transitions and tabulate log-likelihood, n_params, AIC, BIC, with the
    LR tests between the pairs that are nested and regular (docs/math.md §7.8).

    Parameters
    ----------
    models : sequence of MarkovChain or MTD
        Estimators (fitted or not; copies are fitted, each with ``burn_in`` = the largest max order).
    X, y, lengths, sample_weight
        The data, as in :meth:`MTD.fit`.
    names : sequence of str, optional
        Row names (default: a description of each model, e.g. ``"MTD shared pi, lags (1, 2)"``).

    Returns
    -------
    ModelComparison
        Printable; ``to_dict()``, ``to_frame()`` (pandas), ``best("bic")``.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> from mtdmath import fitting
    >>> pi = mtdmath.random_transition_matrix(3, concentration=0.5, rng=0)
    >>> y = mtdmath.sample(pi, np.array([0.0, 1.0]), 600, rng=1)  # all the weight on lag 2
    >>> cmp = fitting.compare_models([fitting.MarkovChain(1), fitting.MTD(2, restarts=2, random_state=0)], y)
    >>> [row['n_params'] for row in cmp.rows]
    [6, 7]
    >>> cmp.best('bic')
    'MTD shared pi, lags (1, 2)'
    """
    if isinstance(models, (str, bytes)) or not hasattr(models, "__len__") or len(models) == 0:
        raise ValueError(f"models must be a non-empty sequence of MTD / MarkovChain estimators (got {models!r})")
    models = list(models)
    for i, m in enumerate(models):  # validate every model before any fit
        _spec(m, f"models[{i}]")
    if names is None:
        names = [_label(m) for m in models]
    else:
        names = [str(n) for n in names]
        if len(names) != len(models):
            raise ValueError(f"names must have one entry per model ({len(models)}) (got {len(names)})")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct (got {names}); pass names=")
    start = _common_start(models)
    fits = [_copy_with_burn_in(m, start).fit(X, y, lengths, sample_weight=sample_weight) for m in models]
    rows = []
    for nm, f in zip(names, fits):
        ll, k, n = _loglik_nparams(f)
        rows.append({"name": nm, "loglik": ll, "n_params": int(k), "aic": -2 * ll + 2 * k,
                     "bic": -2 * ll + math.log(n) * k, "n_obs": n})
    tests = []
    for i, a in enumerate(models):
        for j, b in enumerate(models):
            if i == j:
                continue
            nested, regular, _ = nesting(a, b)
            if nested and regular and rows[j]["n_params"] > rows[i]["n_params"]:
                t = lr_from_fits(fits[i], fits[j], True)
                tests.append({"smaller": names[i], "larger": names[j], "statistic": t.statistic, "df": t.df,
                              "pvalue": t.pvalue})
    return ModelComparison(rows, tests, fits, start)


__all__ = ["MarkovChain", "lr_test", "compare_models", "ModelComparison", "LRTest", "nesting"]
