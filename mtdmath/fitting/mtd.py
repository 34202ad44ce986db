"""Maximum-likelihood fitting of MTD models: the :class:`MTD` estimator, its fit on counts
(:func:`em_fit`: EM with SQUAREM and restarts) and the thin :func:`fit` function over it.

:class:`MTD` follows the scikit-learn and hmmlearn conventions (:class:`~mtdmath.fitting.base.SequenceEstimator`):
parameters are set in the constructor (``get_params``/``set_params``/``sklearn.base.clone`` work), ``fit``
returns ``self``, fitted attributes end in ``_``, and ``fit(X, lengths)`` takes concatenated sequences with
their lengths (hmmlearn), a list of sequences or a 2-D array whose rows are sequences, while ``fit(x, y)``
takes mtdlearn's design matrix.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from .._validate import as_rng, check_alloc, check_float, check_int, check_n_jobs, check_tokens
from ._data import Parsed, TransitionCounts, check_lags, count, parse
from ._em import EM, VARIANTS, Layout, init_counts, init_explicit, init_random, run_em
from .base import SequenceEstimator
from .laws import MTDModel

#: how every printed summary names the two variants (the peers' default model is the lag-wise one)
VARIANT_NAMES = {"shared": "shared pi: one transition matrix for every lag, Raftery's MTD",
                 "lagwise": "lag-wise: one matrix per lag, MTDg"}
PEER_NOTE = "mtdlearn's MTD is the lag-wise model (variant='lagwise'); mtdmath's default is variant='shared'"
#: level of the likelihood-ratio test by which a summary reports that the other variant fits better
LR_LEVEL = 0.05
#: copies of the parameter vector that one restart holds at once (SQUAREM's iterates and the EM map's output)
_COPIES_PER_RESTART = 8


def _embed(par: dict, states: np.ndarray, S: int) -> dict:
    """Parameters fitted on the used states ``states`` -> the declared S states (0 elsewhere)."""
    out = dict(par)
    pi_c = par["pi"]
    pi = np.zeros(pi_c.shape[:-2] + (S, S))
    pi[..., states[:, None], states[None, :]] = pi_c
    out["pi"] = pi
    if "p0" in par:
        p0 = np.zeros(S)
        p0[states] = par["p0"]
        out["p0"] = p0
    return out


def em_fit(counts: TransitionCounts, *, variant: str = "shared", independent: bool = False, restarts: int = 10,
           init: Any = "counts", tol: float = 1e-9, max_iter: int = 10_000, rng: Any = None,
           accelerate: bool = True, freeze_pi: bool = False, window: int = 10,
           n_jobs: int | None = None) -> tuple[MTDModel, dict]:
    """Maximum likelihood on transition counts by EM (exact M-steps, SQUAREM, restarts as one batch).

    The fit of :meth:`MTD.fit` and :meth:`MTD.fit_counts`, with the knobs the tests and the maths checks need: ``accelerate``
    (SQUAREM on/off), ``freeze_pi`` (lam-only EM with pi fixed at the explicit start, to check against
    ``mtdmath.mle``), ``window`` (of the flat stopping rule), ``n_jobs`` (threads of the compiled EM map, as
    for :class:`MTD`). With ``init="counts"`` or ``"random"`` EM runs
    on the states the counts use (a declared state no transition uses changes nothing but the shapes: its
    column of pi is 0 and its row uniform); an explicit start runs on every declared state.

    Returns
    -------
    law : MTDModel
    report : dict
        ``loglik, n_iter, converged, monitor, history, kkt_gap, restart_logliks``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} (got {variant!r})")
    if not isinstance(independent, (bool, np.bool_)):
        raise ValueError(f"independent must be a bool (got {independent!r})")
    restarts = check_int(restarts, "restarts", minimum=1)
    tol = check_float(tol, "tol", positive=True)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    n_jobs = check_n_jobs(n_jobs)
    if isinstance(init, str) and init not in ("counts", "random"):
        raise ValueError(f'init must be "counts", "random", a dict of parameters, an MTDModel or a fitted MTD '
                         f"(got {init!r})")
    if freeze_pi and isinstance(init, str):
        raise ValueError("freeze_pi needs explicit init parameters")
    S_decl, k = counts.n_symbols, len(counts.lags)
    full = Layout(S_decl, k, variant, bool(independent))
    check_alloc(restarts * _COPIES_PER_RESTART * full.size, 8, "restarts",
                f"{restarts} restarts of {full.size} parameters each")
    rng = as_rng(rng)
    states, declared = None, counts
    if isinstance(init, str):
        used = counts.used_states()
        if used.shape[0] < S_decl:
            states, counts = used, counts.relabel(used)
    lay = Layout(counts.n_symbols, k, variant, bool(independent))
    em = EM(counts, lay, freeze_pi=freeze_pi, n_jobs=n_jobs)
    explicit = None if isinstance(init, str) else init_explicit(init, lay)
    starts = []
    for r in range(restarts):
        if r == 0 and not (isinstance(init, str) and init == "random"):
            theta0 = init_counts(counts, lay) if explicit is None else explicit
        else:
            theta0 = init_random(lay, rng)
            if freeze_pi:  # only lam is random; the emission rows stay the given ones
                theta0[lay.K :] = explicit[lay.K :]
        starts.append(theta0)
    runs = run_em(em, np.stack(starts), tol, max_iter, accelerate, window)  # all restarts as one batch
    lls = np.array([mon.history[-1] for _, mon in runs])
    best = int(np.argmax(lls))  # first of the ties: the init start wins a tie
    theta, mon = runs[best]
    gap = em.kkt_gap(theta)
    if not mon.converged:
        h = mon.history
        w = min(mon.window, len(h) - 1)
        warnings.warn(
            f"EM did not converge: max_iter = {max_iter} EM evaluations spent by the best of {restarts} "
            f"restarts (loglik {h[-1]:.10g}, still rising by {h[-1] - h[-1 - w]:.3g} over its last {w} "
            f"iterates; KKT gap {gap:.3g}). Raise max_iter, or loosen tol (now {tol:g}).",
            RuntimeWarning, stacklevel=5)
    par = lay.unpack(theta)
    if states is not None:
        par = _embed(par, states, S_decl)
    if not freeze_pi:
        # rows of pi that no transition uses do not enter the likelihood: report them as uniform rather than
        # as whatever the winning start happened to hold
        rows = par["pi"].reshape(-1, S_decl)
        unused = np.ones(rows.shape[0], dtype=bool)
        unused[np.unique(full.index(declared)[:, :k] - full.K) // S_decl] = False
        rows[unused] = 1.0 / S_decl
    law = MTDModel(par["pi"], par["lam"], lags=counts.lags, lam_indep=par.get("lam_indep"), p0=par.get("p0"))
    report = {"loglik": float(mon.history[-1]), "n_iter": mon.n_evals, "converged": mon.converged,
              "monitor": mon, "history": np.asarray(mon.history), "kkt_gap": gap, "restart_logliks": lls}
    return law, report


class MTD(SequenceEstimator):
    """Maximum-likelihood MTD estimator with scikit-learn / hmmlearn conventions.

    Parameters
    ----------
    order : int, optional
        Fit lags ``1..order``. With a design matrix and neither ``order`` nor ``lags``, ``order`` is the
        number of its columns.
    lags : sequence of int, optional
        A sparse lag set instead of ``order``.
    n_symbols : int, optional
        S; default: largest token seen in ``fit`` + 1.
    variant : {"shared", "lagwise"}
        One pi for every lag (Raftery's MTD) or one matrix per lag (MTDg).
    independent : bool
        Add the order-0 component ``lam_indep * p0``.
    restarts : int
        Number of starts; the first is ``init`` (unless ``init="random"``), the others are random
        (lam and every row ~ Dirichlet(1)), drawn from ``random_state`` in order. The best log-likelihood wins.
    tol : float
        Stop when the relative log-likelihood change over an iteration is < tol and the gain that one
        Frank-Wolfe step per simplex block would still bring (quadratic model of the KKT gap) is
        < tol * |loglik|, or when the log-likelihood gained < tol * |loglik| over the last 10 iterates
        (flat ridges; see :class:`~mtdmath.fitting.ConvergenceMonitor`). A RuntimeWarning says when
        ``max_iter`` ran out first.
    max_iter : int
        Maximum number of EM-map evaluations per start (all starts run as one batch).
    init : "counts", "random", dict, MTDModel or fitted MTD
        "counts": lam from the lag-wise mutual information, pi from smoothed lag-wise transition counts
        (pooled with weights lam when shared); explicit: ``{"pi", "lam"[, "lam_indep", "p0"]}`` (entries that
        are exactly 0 stay 0 under EM).
    burn_in : int, optional
        Condition every sequence on its first ``burn_in`` tokens (at least the max lag, which is the
        default) when fitting and scoring, so that models of different orders are scored on the same
        transitions.
    random_state : None, int or numpy Generator
        Seeds the random restarts (and :meth:`sample`, :meth:`confidence_intervals` when not given there).
    n_jobs : int or None
        Threads of the compiled EM map, in scikit-learn's convention: None lets the library choose (one
        thread below a measured problem size, where waking a thread pool costs more than it saves, else
        numba's thread count), 1 is serial, -1 all cores, -2 all but one. The result does not depend on it
        (each restart's arithmetic is the same on any thread): only the time does.
    missing : scalar, optional
        The symbol of a missing token in ``fit`` and the scores (e.g. -1, "NA", or ``float('nan')``, which
        also matches None). A transition whose target or window (the ``max(order, burn_in)`` tokens before
        it) holds one is dropped (march's convention: every sequence is cut into the runs between missing
        tokens, docs/math.md §7.1); ``n_dropped_`` counts them. Default: none, and data holding None or NaN
        raise ``ValueError``.
    pad : scalar, optional
        A null state put before every sequence (mtdlearn's left-padding): every token, from the first, is then
        a target, its window holding the null state where the sequence has no past, so short sequences count
        (without ``pad`` a sequence contributes only from token ``max(order, burn_in)`` on). The null state is
        a state of its own (a label appended to ``classes_``, or the given integer code, unused by the data)
        and never a target. Not with ``missing``.

    Attributes
    ----------
    model_ : MTDModel
        The fitted law; ``lam_``, ``pi_``, ``lam_indep_``, ``p0_``, ``lags_`` are read-only views of it
        (``lam_indep_``/``p0_`` None unless ``independent``).
    transition_counts_ : TransitionCounts
        The training transitions.
    classes_ : ndarray (S,)
        The states: the labels of fit in code order (sorted, or a Categorical's order), or ``0..S-1`` for
        integer data. Column ``i`` of :meth:`predict_proba` is ``classes_[i]``.
    n_symbols_ : int
    loglik_ : float
        Training log-likelihood, each sequence conditioned on its first ``max(order, burn_in)`` tokens.
    n_obs_ : float
        Number of (weighted) training transitions, the ``n`` of BIC.
    n_dropped_ : int
        Training transitions dropped for a ``missing`` token.
    n_iter_ : int
        EM-map evaluations of the best restart (one SQUAREM iteration uses two or three).
    converged_ : bool
        The best restart met a stopping rule (``monitor_.reason`` says which) before ``max_iter``.
    monitor_ : ConvergenceMonitor
    history_ : ndarray
        Log-likelihood at every accepted iterate of the best restart (nondecreasing).
    kkt_gap_ : float
        Sum over simplex blocks of the Frank-Wolfe gap ``max_j g_j - theta . g`` at the returned point, the
        max over the support (an entry that is exactly 0, e.g. pinned by an explicit start, stays 0 under EM).
    restart_logliks_ : ndarray
        Final log-likelihood of every restart, in start order (first = the ``init`` start).

    Notes
    -----
    Cross-validation must split whole sequences, never transitions inside one sequence: pass ``X`` as a 2-D
    array (rows are sequences) or a list of sequences, and any row splitter (``KFold``, ``GroupKFold``)
    splits sequences. To compare orders, set ``burn_in`` to the largest order, otherwise a lower order is
    scored on more transitions and its held-out log-likelihood is lower for that reason alone. For example
    ``GridSearchCV(MTD(burn_in=3, n_symbols=S), {"order": [1, 2, 3]}, cv=KFold(5)).fit(X)`` selects the order
    by the held-out log-likelihood (:meth:`score`). Set ``n_symbols`` so that every fold knows all tokens.

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath.fitting import MTD, MTDModel
    >>> y = MTDModel(np.array([[0.8, 0.2], [0.3, 0.7]]), [0.6, 0.4]).sample(500, rng=0)
    >>> est = MTD(2, random_state=0).fit(y)
    >>> est.lam_.shape, est.predict_proba([[0, 1]]).shape
    ((2,), (1, 2))
    """

    _repr_always = ("variant",)  # the default (shared pi) differs from mtdlearn's lag-wise model

    def __init__(self, order: int | None = None, *, lags: Sequence[int] | None = None, n_symbols: int | None = None,
                 variant: str = "shared", independent: bool = False, restarts: int = 10, tol: float = 1e-9,
                 max_iter: int = 10_000, init: Any = "counts", burn_in: int | None = None,
                 random_state: Any = None, n_jobs: int | None = None, missing: Any = None, pad: Any = None):
        # scikit-learn convention: store the arguments unchanged; validate in fit
        self.order = order
        self.lags = lags
        self.n_symbols = n_symbols
        self.variant = variant
        self.independent = independent
        self.restarts = restarts
        self.tol = tol
        self.max_iter = max_iter
        self.init = init
        self.burn_in = burn_in
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.missing = missing
        self.pad = pad

    # -- the fit on counts -------------------------------------------------------------------------------------
    def _validate_params(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS} (got {self.variant!r})")
        check_int(self.restarts, "restarts", minimum=1)
        check_n_jobs(self.n_jobs)
        if self.order is not None:
            check_int(self.order, "order", minimum=1)

    def _lags(self, parsed: Parsed) -> tuple[int, ...]:
        order, lags = self.order, self.lags
        if parsed.design and order is None and lags is None:
            order = parsed.n_lag_columns
        if order is None and lags is None:
            raise ValueError("MTD: set order (or lags) to fit sequences")
        if parsed.design:  # the design matrix's width bounds the lags
            L = parsed.n_lag_columns
            if lags is None and check_int(order, "order", minimum=1) > L:
                raise ValueError(f"X has {L} lag columns, fewer than the order {order}")
            out = check_lags(order, lags)
            if out[-1] > L:
                raise ValueError(f"X has {L} lag columns, fewer than the max lag {out[-1]}")
            return out
        return check_lags(order, lags, parsed.longest)

    def _fit_law(self, counts: TransitionCounts) -> tuple[MTDModel, dict]:
        """The EM fit (:func:`em_fit`) of this estimator's parameters on aggregated counts."""
        if self.order is not None or self.lags is not None:  # else a design matrix's width set them
            if counts.lags != (lags := check_lags(self.order, self.lags)):
                raise ValueError(f"counts: their lags {counts.lags} are not this estimator's lags {lags}")
        return em_fit(counts, variant=self.variant, independent=self.independent, restarts=self.restarts,
                      init=self.init, tol=self.tol, max_iter=self.max_iter,
                      rng=as_rng(self.random_state, "random_state"), n_jobs=self.n_jobs)

    # -- online and out-of-core fitting -----------------------------------------------------------------------
    def partial_fit(self, X: Any, y: Any = None, lengths: Any = None, *, sample_weight: Any = None,
                    warm_start: bool = False) -> "MTD":
        """Add the sequences ``X`` to the data seen so far and refit; returns self.

        The transitions of ``X`` are counted (:class:`~mtdmath.fitting.TransitionCounts`) and added to
        ``transition_counts_`` (``a + b``, docs/math.md §7.1); the model is then fitted on the merged counts.
        Counts are the fit's sufficient statistics, so only they are kept, never the sequences: memory is
        bounded by the number of distinct (context, next) tuples, whatever the number of batches.

        What "fit" means here: with ``warm_start=False`` (the default) every call is a full fit on the merged
        counts, with this estimator's ``init`` and ``restarts`` (seeded by ``random_state``), so after any
        sequence of calls the fit equals ``fit`` on all the batches at once (given as a list of sequences)
        to the fit's tolerance, whatever the batching. With ``warm_start=True`` EM instead starts from the
        current fit, with one start (no restarts): cheaper when a batch changes the counts little, but it
        climbs to the maximum nearest the previous one, so the result can depend on the batching.

        Each batch is a set of separate sequences, each conditioned on its own first
        ``max(order, burn_in)`` tokens: to split one long sequence into chunks without losing the
        transitions across a cut, let consecutive chunks overlap by ``max(lags)`` tokens. The first call
        fixes the states: set ``n_symbols`` (or pass every label in the first batch) when a later batch may
        hold a state the first one lacks; a later batch with a state outside them raises ``ValueError``.

        Parameters
        ----------
        X, y, lengths, sample_weight
            One batch, in any layout of :meth:`fit`.
        warm_start : bool
            Start EM at the current fit (one start) instead of a full fit (see above). Ignored on the first
            call.

        Returns
        -------
        self : MTD

        Examples
        --------
        >>> import numpy as np
        >>> from mtdmath.fitting import MTD, MTDModel
        >>> law = MTDModel(np.array([[0.8, 0.2], [0.3, 0.7]]), [0.6, 0.4])
        >>> batches = [law.sample(300, rng=seed) for seed in range(3)]
        >>> online = MTD(2, n_symbols=2, random_state=0)
        >>> for batch in batches:
        ...     _ = online.partial_fit(batch)
        >>> offline = MTD(2, n_symbols=2, random_state=0).fit(batches)
        >>> online.n_obs_, bool(np.allclose(online.lam_, offline.lam_))
        (894.0, True)
        """
        if not isinstance(warm_start, (bool, np.bool_)):
            raise ValueError(f"warm_start must be a bool (got {warm_start!r})")
        self._validate_params()
        if "model_" not in vars(self):
            return self._fit_parsed(self._parse(X, y, lengths, sample_weight))
        parsed = self._parse(X, y, lengths, sample_weight, fitted=True)
        S = self.n_symbols_
        if parsed.top >= S:
            raise ValueError(f"X holds the token {parsed.top}, outside the states 0..{S - 1} of the first batch; "
                             "set n_symbols to the number of states of all batches")
        lags = self._lags(parsed)
        seen = self.transition_counts_
        if lags != seen.lags:
            raise ValueError(f"X: this batch is counted for the lags {lags}, the data seen so far for {seen.lags} "
                             "(order or lags changed between calls)")
        merged = seen + count(parsed, lags, S, self._burn_in(parsed))
        if not warm_start:
            return self.fit_counts(merged)
        previous = self.model_
        init, restarts = self.init, self.restarts
        try:
            self.init, self.restarts = previous, 1
            return self.fit_counts(merged)
        finally:
            self.init, self.restarts = init, restarts

    # -- one lam per sequence --------------------------------------------------------------------------------
    def per_sequence_lam(self, X: Any, method: str = "bayes", *, prior: Any = None, eta: Any = None,
                         max_bytes: float | None = None, samples: int = 100_000, rng: Any = None) -> np.ndarray:
        """Each sequence's own lag weights, with the fitted pi shared: ``lam_b`` estimated from sequence b alone.

        The fitted model says every sequence mixes its lags with the one ``lam_``; the paper's model lets
        every sequence ``b`` have its own ``lam_b ~ Dirichlet(alpha)`` with pi shared. This estimates each
        ``lam_b`` from the lag factors ``C_b[i, j] = pi_[y_b[t - lags[j]], y_b[t]]`` of that sequence alone
        (docs/math.md §2), each sequence conditioned on its first ``max(order, burn_in)`` tokens, as in fit:

        - ``"bayes"``: the exact posterior mean ``E[lam_b | y_b]`` under the Dirichlet(alpha) ``prior`` (the
          Pólya-urn recursion, docs/math.md §4, with the Monte Carlo fallback above ``max_bytes``; for its
          credible intervals and the route each sequence took use :meth:`ICLFit.posterior_lam`);
        - ``"md"``: the one-step mirror-descent estimator from the prior mean (:func:`mtdmath.one_step_md`,
          step ``eta``, default the Bayes-matching ``1 / (1 + α₀)``, Theorem 1);
        - ``"mle"``: the maximiser of the sequence's own likelihood in lam (:func:`mtdmath.mle`; no prior).

        Parameters
        ----------
        X : array (T,), (B, T) or list of 1-D arrays
            Sequences in the fitted states (codes, or the labels of fit); each needs a transition after its
            first ``max(order, burn_in)`` tokens.
        method : {"bayes", "md", "mle"}
        prior : array (k,) or ICLFit
            The Dirichlet prior of ``lam_b`` for ``"bayes"`` and ``"md"``: a given ``alpha``, or a fitted one,
            the ``alpha`` of a :func:`fit_icl` result (its pi is not used: the estimator's ``pi_`` is).
        eta : float, optional
            Step of ``"md"``.
        max_bytes, samples, rng
            Memory budget of the exact recursion, and prior draws and seed of its Monte Carlo fallback
            (``"bayes"`` only; as :meth:`ICLFit.posterior_lam`).

        Returns
        -------
        ndarray (B, k)
            One row per sequence, columns in the order of ``lags_``.

        Examples
        --------
        >>> import numpy as np
        >>> from mtdmath.fitting import MTD, MTDModel
        >>> law = MTDModel(np.array([[0.8, 0.2], [0.3, 0.7]]), [0.6, 0.4])
        >>> seqs = [law.sample(80, rng=seed) for seed in range(5)]
        >>> est = MTD(2, random_state=0).fit(seqs)
        >>> lam_bayes = est.per_sequence_lam(seqs, "bayes", prior=[1.0, 1.0])
        >>> lam_mle = est.per_sequence_lam(seqs, "mle")
        >>> lam_bayes.shape, bool(np.allclose(lam_mle.sum(axis=1), 1.0))
        ((5, 2), True)
        """
        import mtdmath

        from ._posterior import check_budget, lag_factor_groups, posterior_lam
        from .icl import ICLFit

        self._check_fitted()
        if method not in ("bayes", "md", "mle"):
            raise ValueError(f'method must be "bayes", "md" or "mle" (got {method!r})')
        m = self.model_
        if m.variant != "shared" or m.independent:
            raise ValueError("per_sequence_lam needs the shared-pi model without an order-0 component "
                             "(variant='shared', independent=False): the paper's model")
        k = len(m.lags)
        alpha = None
        if method != "mle":
            if prior is None:
                raise ValueError(f'prior must be given for method="{method}": a Dirichlet alpha of length {k} '
                                 "or a fit_icl result")
            from .._validate import check_alpha

            alpha = check_alpha(prior.alpha if isinstance(prior, ICLFit) else prior, "prior", k)
        elif prior is not None:
            raise ValueError('prior does not apply to method="mle" (the maximiser of the likelihood alone)')
        if eta is not None and method != "md":
            raise ValueError(f'eta applies to method="md" only (got method="{method}")')
        from ..bayes import DEFAULT_MAX_BYTES as exact_budget

        budget = check_budget(exact_budget if max_bytes is None else max_bytes)
        samples = check_int(samples, "samples", minimum=1)
        rng = as_rng(rng, "rng")
        seqs = parse(X, classes=self._labels, fitted=True).seqs
        groups = lag_factor_groups(seqs, np.asarray(m.pi), m.lags, self._start(), "X", min_transitions=1)
        if method == "bayes":
            return posterior_lam(groups, len(seqs), alpha, None, budget, samples, rng).mean
        out = np.zeros((len(seqs), k))
        for idx, C in groups:
            out[idx] = mtdmath.mle(C) if method == "mle" else mtdmath.one_step_md(C, alpha, eta=eta)
        return out

    # -- the fitted parameters: views of the law ---------------------------------------------------------------
    @property
    def lam_(self) -> np.ndarray:
        self._check_fitted()
        return self.model_.lam

    @property
    def pi_(self) -> np.ndarray:
        self._check_fitted()
        return self.model_.pi

    @property
    def lam_indep_(self) -> float | None:
        self._check_fitted()
        return self.model_.lam_indep

    @property
    def p0_(self) -> np.ndarray | None:
        self._check_fitted()
        return self.model_.p0

    @property
    def lags_(self) -> tuple[int, ...]:
        self._check_fitted()
        return self.model_.lags

    # -- report ------------------------------------------------------------------------------------------------
    def _variant_test(self):
        """The LR test of the shared variant inside the lag-wise one on the training counts (docs/math.md
        §7.8): the fit of the other variant, warm-started from this one, with as many restarts."""
        from .baselines import lr_from_fits

        other_variant = "lagwise" if self.variant == "shared" else "shared"
        other = type(self)(**{**self.get_params(), "variant": other_variant})
        if other_variant == "lagwise":  # the shared fit is a lag-wise point: start there, so l_lagwise >= l_shared
            other.set_params(init={"pi": np.broadcast_to(self.pi_, (len(self.lags_),) + self.pi_.shape),
                                   "lam": self.lam_, "lam_indep": self.lam_indep_, "p0": self.p0_}, restarts=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            other.fit_counts(self.transition_counts_)
        shared, lagwise = (self, other) if self.variant == "shared" else (other, self)
        return lr_from_fits(shared, lagwise, True)

    def summary(self, level: float = 0.95) -> str:
        """A printable report: the variant (shared pi or lag-wise MTDg; mtdlearn's model is the lag-wise one),
        the states, log-likelihood, n_params, AIC, BIC, convergence; the parameter table with standard errors
        and ``level`` intervals (:meth:`standard_errors`, :meth:`confidence_intervals`; ``inf`` marks a
        parameter the data do not identify); and the likelihood-ratio test of shared pi inside the lag-wise
        model, saying when the other variant fits significantly better."""
        self._check_fitted()
        m = self.model_
        states = (", ".join(repr(c) for c in self._labels.tolist()) if self._labels is not None
                  else f"codes 0..{m.n_symbols - 1}")
        k, ll, n = m.n_params, self.loglik_, self.n_obs_
        lines = [f"MTD fit, variant = {m.variant!r} ({VARIANT_NAMES[m.variant]})",
                 f"  note: {PEER_NOTE}",
                 f"  states (S = {m.n_symbols}): {states}",
                 f"  lags {m.lags}, lam {np.array2string(np.round(m.lam, 4), separator=', ')}"
                 + (f", lam_indep {m.lam_indep:.4f} (order-0 component)" if m.independent else ""),
                 f"  loglik {ll:.4f} on {n:g} transitions, n_params {k}, "
                 f"AIC {-2 * ll + 2 * k:.2f}, BIC {-2 * ll + math.log(n) * k:.2f}",
                 f"  converged {self.converged_} (stopped by {self.monitor_.reason})"]
        lines += self._parameter_table(level)
        if len(m.lags) == 1:  # one lag: shared pi and lag-wise are the same model, there is nothing to test
            lines.append("  LR test shared pi vs lag-wise: none (with one lag the two variants are the same model)")
            return "\n".join(lines)
        t = self._variant_test()
        better = "lag-wise (variant='lagwise')" if m.variant == "shared" else "shared pi (variant='shared')"
        if m.variant == "shared" and t.pvalue < 1 - level:
            verdict = "the lag-wise variant fits significantly better: refit with variant='lagwise'"
        elif m.variant == "shared":
            verdict = "shared pi is not rejected"
        elif t.pvalue < 1 - level:
            verdict = "shared pi is rejected: the lag-wise variant is needed"
        else:
            verdict = f"shared pi is not rejected: {better} fits as well with fewer parameters"
        lines.append(f"  LR test shared pi vs lag-wise: statistic {t.statistic:.2f}, df {t.df}, "
                     f"p {t.pvalue:.3g}: {verdict}")
        return "\n".join(lines)

    def _parameter_table(self, level: float) -> list[str]:
        se = self.standard_errors()
        ci = self.confidence_intervals(level)
        pct = f"{100 * level:g} %"
        out = [f"  {'parameter':<14} {'estimate':>9} {'std err':>9}  {pct + ' interval':>20}"]
        m = self.model_
        names = []
        for j, l in enumerate(m.lags):
            names.append((f"lam[lag {l}]", ("lam", (j,))))
        if m.independent:
            names.append(("lam_indep", ("lam_indep", ())))
        shape = m.pi.shape
        for idx in np.ndindex(*shape):
            names.append(("pi[" + ",".join(map(str, idx)) + "]", ("pi", idx)))
        if m.independent:
            names += [(f"p0[{b}]", ("p0", (b,))) for b in range(m.n_symbols)]
        shown = names if len(names) <= 60 else names[:60]
        for label, (key, idx) in shown:
            est = np.asarray(getattr(m, key))[idx]
            s = np.asarray(se[key])[idx]
            lo, hi = np.asarray(ci[key][0])[idx], np.asarray(ci[key][1])[idx]
            out.append(f"  {label:<14} {est:>9.4f} {s:>9.4f}  [{lo:>8.4f}, {hi:>8.4f}]")
        if len(names) > len(shown):
            out.append(f"  ... {len(names) - len(shown)} more (standard_errors(), confidence_intervals())")
        return out

    # -- uncertainty -----------------------------------------------------------------------------------------
    def _inference(self):
        from .inference import observed_inference

        if getattr(self, "_inference_cache", None) is None or self._inference_cache[0] is not self.model_:
            lay = self.model_.layout
            em = EM(self.transition_counts_, lay)
            theta = self.model_.theta
            self._inference_cache = (self.model_, observed_inference(em, theta), lay, theta)
        return self._inference_cache[1:]

    def standard_errors(self) -> dict:
        """Standard errors of the fitted parameters from the observed information on the constrained space
        (exact Hessian; :mod:`mtdmath.fitting.inference`). ``inf`` marks a parameter the data do not identify
        (every lam and pi entry of a lag-wise model; rows of pi no transition uses); 0 an entry held at 0 on
        the boundary (docs/math.md §12).

        Returns
        -------
        dict with ``lam`` (k,), ``pi`` (S, S) or (k, S, S), and ``lam_indep``, ``p0`` when independent.
        """
        self._check_fitted()
        inf, lay, theta = self._inference()
        return lay.unpack(inf.se())

    def confidence_intervals(self, level: float = 0.95, *, method: str = "observed", n_boot: int = 200,
                             random_state: Any = None) -> dict:
        """Confidence intervals for lam and pi (and lam_indep, p0).

        ``method="observed"``: Wald intervals ``est -/+ z se`` from :meth:`standard_errors`, clipped to [0, 1]
        (an unidentified parameter gets [0, 1]; one held on the boundary a Wilson interval, docs/math.md §12).
        ``method="bootstrap"``: conditional parametric bootstrap: ``n_boot`` data sets simulated from the fit, each sequence continuing from its own first
        ``max(order, burn_in)`` tokens, refitted from the fitted parameters (one start), percentile intervals.
        Returns a dict mapping each parameter name to ``(lower, upper)`` arrays of its shape.
        """
        self._check_fitted()
        level = check_float(level, "level", positive=True)
        if not level < 1.0:
            raise ValueError(f"level must be in (0, 1) (got {level})")
        if method not in ("observed", "bootstrap"):
            raise ValueError(f'method must be "observed" or "bootstrap" (got {method!r})')
        inf, lay, theta = self._inference()
        if method == "observed":
            lo, hi = inf.interval(level)
        else:
            n_boot = check_int(n_boot, "n_boot", minimum=2)
            rng = as_rng(self.random_state if random_state is None else random_state, "random_state")
            p = self._train
            if p is None:
                raise ValueError('method="bootstrap" re-simulates the training sequences: fit with fit(X), '
                                 "not fit_counts")
            seqs = p.sequences_for(self.model_.order)  # as the fit read them
            M = self.model_.order if p.design else self._start()  # each sequence continues from its first M
            draws = []
            for _ in range(n_boot):
                boot = [self.model_.sample(s.shape[0], rng=rng, prefix=s[:M]) for s in seqs]
                parsed = Parsed(boot, p.seq_w, p.tok_w, False, None, None, pad_code=p.pad_code)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    fb, _ = em_fit(count(parsed, self.lags_, self.n_symbols_, M), variant=self.variant,
                                   independent=self.independent, restarts=1, init=self.model_, tol=self.tol,
                                   max_iter=self.max_iter, n_jobs=self.n_jobs)
                draws.append(fb.theta)
            D = np.stack(draws)
            a = (1.0 - level) / 2.0
            lo, hi = np.quantile(D, a, axis=0), np.quantile(D, 1.0 - a, axis=0)
        plo, phi = lay.unpack(lo), lay.unpack(hi)
        return {k: (plo[k], phi[k]) for k in plo}

    def predict_proba_interval(self, X: Any, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Next-token law after each context with delta-method Wald intervals from the observed information.

        The next-token law is identified in every variant (also lag-wise, whose lam and pi are not), so
        these intervals are finite wherever the contexts use rows the data visit.

        Returns
        -------
        p, lower, upper : ndarray (n, S)
        """
        from .inference import predictive_interval

        self._check_fitted()
        level = check_float(level, "level", positive=True)
        if not level < 1.0:
            raise ValueError(f"level must be in (0, 1) (got {level})")
        X = check_tokens(self._contexts(X), self.n_symbols_, self.model_.order, name="X")
        inf, lay, theta = self._inference()
        p = self.model_.predict_proba(X)
        lo, hi = predictive_interval(inf, self.lags_, X, p, level)
        return p, lo, hi

    def transition_intervals(self, level: float = 0.95, *, method: str = "bonferroni", family: str = "row"
                             ) -> dict:
        """Simultaneous confidence intervals for the transition law of every context the training data show
        (docs/math.md §10.5; march's Bonferroni, Thompson and Bailey intervals).

        The context of a transition is the tuple of symbols at the fit's lags. For each observed context the
        next-symbol counts of the training transitions are a multinomial sample of the true law
        ``P(. | context)``, whatever that law is, so these intervals do not assume the MTD: a fitted law
        ``p`` outside them is evidence against the model.

        Parameters
        ----------
        level : float in (0, 1)
            Simultaneous coverage (``alpha = 1 - level``).
        method : {"bonferroni", "thompson", "bailey"}
            Bonferroni of exact Clopper-Pearson intervals (coverage >= ``level`` at every sample size),
            Thompson (1987) or Bailey (1980) (asymptotic).
        family : {"row", "all"}
            ``"row"``: the S intervals of each context hold together with probability >= ``level``;
            ``"all"`` (Bonferroni only): every interval of every context holds together.

        Returns
        -------
        dict
            ``contexts`` (R, k): the observed contexts, column j the symbol at ``lags_[j]`` (codes);
            ``n`` (R,): their transition counts; ``p`` (R, S): the fitted law there; ``lower``, ``upper``
            (R, S): the intervals.

        Raises
        ------
        ValueError
            Naming the argument on bad input, and ``sample_weight`` when the fit's counts are not integers.

        Examples
        --------
        >>> import numpy as np
        >>> from mtdmath.fitting import MTD, MTDModel
        >>> y = MTDModel(np.array([[0.8, 0.2], [0.3, 0.7]]), [0.6, 0.4]).sample(2000, rng=0)
        >>> band = MTD(2, random_state=0).fit(y).transition_intervals(method="thompson")
        >>> band["contexts"].tolist(), band["lower"].shape
        ([[0, 0], [0, 1], [1, 0], [1, 1]], (4, 2))
        >>> bool(np.all((band["lower"] <= band["p"]) & (band["p"] <= band["upper"])))
        True
        """
        from ._simultaneous import bailey_intervals, bonferroni_intervals, thompson_intervals

        self._check_fitted()
        level = check_float(level, "level", positive=True)
        if not level < 1.0:
            raise ValueError(f"level must be in (0, 1) (got {level})")
        if method not in ("bonferroni", "thompson", "bailey"):
            raise ValueError(f'method must be "bonferroni", "thompson" or "bailey" (got {method!r})')
        if family not in ("row", "all"):
            raise ValueError(f'family must be "row" or "all" (got {family!r})')
        if family == "all" and method != "bonferroni":
            raise ValueError(f'family="all" needs method="bonferroni" (got method={method!r})')
        c = self.transition_counts_
        if np.any(c.w != np.round(c.w)):
            raise ValueError("sample_weight: simultaneous intervals need integer transition counts (the fit was "
                             "weighted by non-integer weights)")
        contexts, row = np.unique(c.ctx, axis=0, return_inverse=True)
        S = c.n_symbols
        table = np.zeros((contexts.shape[0], S))
        np.add.at(table, (row.reshape(-1), c.nxt), c.w)
        alpha = 1.0 - level
        if method == "bonferroni":
            lo, hi = bonferroni_intervals(table, alpha, family=family)
        else:
            lo, hi = (thompson_intervals if method == "thompson" else bailey_intervals)(table, alpha)
        full = np.zeros((contexts.shape[0], self.model_.order), dtype=np.int64)  # time last: lag l at -l
        for j, l in enumerate(self.lags_):
            full[:, -l] = contexts[:, j]
        return {"contexts": contexts, "n": table.sum(axis=1), "p": self.model_.predict_proba(full), "lower": lo,
                "upper": hi}


def fit(sequences: Any, order: int | None = None, *, lags: Sequence[int] | None = None,
        n_symbols: int | None = None, variant: str = "shared", independent: bool = False, restarts: int = 10,
        init: Any = "counts", tol: float = 1e-9, max_iter: int = 10_000, weights: Any = None,
        rng: Any = None, n_jobs: int | None = None, missing: Any = None, pad: Any = None) -> MTD:
    """Maximum-likelihood fit of an MTD model by EM: ``MTD(order, ...).fit(sequences, sample_weight=weights)``.

    Parameters
    ----------
    sequences : array (T,) or (B, T), list of 1-D arrays, or pandas Series / Categorical (or a list of them)
        Integer codes in [0, S), or labels (strings or other sortable hashable symbols; a Categorical keeps
        its category order, otherwise the sorted labels are the states, docs/math.md §7.9; the fit's
        ``classes_`` holds them). Each sequence is conditioned on its own first ``max(lags)`` tokens.
    order, lags, n_symbols, variant, independent, restarts, init, tol, max_iter
        As for :class:`MTD`.
    weights : array (n_sequences,), or one weight per token in the layout of ``sequences``, optional
        Non-negative finite weights (``sample_weight`` of :meth:`MTD.fit`): one per sequence (multiplying its
        log-likelihood), or one per token, where the weight at position t weighs the transition into
        ``y[t]`` (docs/math.md §7.9).
    rng : numpy Generator, int seed or None
        Makes the random restarts reproducible (``random_state`` of :class:`MTD`).
    n_jobs : int or None
        Threads of the compiled EM map, as for :class:`MTD` (the result does not depend on it).
    missing, pad : scalar, optional
        The symbol of a missing token and the null state of left-padding, as for :class:`MTD`.

    Returns
    -------
    MTD
        The fitted estimator (``model_`` is the fitted law).

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath.fitting import MTDModel, fit
    >>> y = MTDModel(np.array([[0.8, 0.2], [0.3, 0.7]]), [0.6, 0.4]).sample(500, rng=0)
    >>> f = fit(y, 2, rng=0)
    >>> bool(f.converged_), f.model_.lags
    (True, (1, 2))
    """
    est = MTD(order, lags=lags, n_symbols=n_symbols, variant=variant, independent=independent, restarts=restarts,
              tol=tol, max_iter=max_iter, init=init, random_state=as_rng(rng), n_jobs=n_jobs, missing=missing,
              pad=pad)
    est._validate_params()
    parsed = parse(sequences, sample_weight=weights, name="sequences", weight_name="weights", missing=missing,
                   pad=pad)
    return est._fit_parsed(parsed)
