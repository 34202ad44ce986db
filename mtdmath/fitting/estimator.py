"""Maximum-likelihood fitting of MTD models: the :func:`fit` function and the :class:`MTD` estimator.

:class:`MTD` follows the scikit-learn and hmmlearn conventions: parameters are set in the constructor
(``get_params``/``set_params``/``sklearn.base.clone`` work), ``fit`` returns ``self``, fitted attributes end
in ``_``, and ``fit(X, lengths)`` takes concatenated sequences with their lengths (hmmlearn), a list of
sequences or a 2-D array whose rows are sequences, while ``fit(x, y)`` takes mtdlearn's design matrix.
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Sequence

import numpy as np

from .._validate import as_rng, check_float, check_int, check_tokens
from .em import (VARIANTS, _EM, _as_sequences, _init_counts, _init_explicit, _init_random, _Layout, _prepare,
                 _to_numpy, run_em)
from .model import MTDFit, summary_text
from .symbols import check_classes_states, decode, encode


def _fit_impl(sequences, order=None, *, lags=None, n_states=None, variant="shared", independent=False,
              restarts=10, init="counts", tol=1e-9, max_iter=10_000, weights=None, rng=None,
              start=None, accelerate=True, freeze_pi=False, window=10, weights_name="weights",
              classes=None) -> MTDFit:
    """:func:`fit` plus private knobs: ``start`` (condition every sequence on its first ``start`` tokens,
    for comparable likelihoods across orders), ``accelerate`` (SQUAREM on/off), ``freeze_pi`` (lam-only EM
    with pi fixed at the explicit start, for checking against ``mtdmath.mle``), ``window`` (of the flat
    stopping rule)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} (got {variant!r})")
    if not isinstance(independent, (bool, np.bool_)):
        raise ValueError(f"independent must be a bool (got {independent!r})")
    restarts = check_int(restarts, "restarts", minimum=1)
    tol = check_float(tol, "tol", positive=True)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    if isinstance(init, str) and init not in ("counts", "random"):
        raise ValueError(f'init must be "counts", "random", a dict of parameters or an MTDFit (got {init!r})')
    rng = as_rng(rng)
    data = _prepare(sequences, order, lags, n_states, weights, start, weights_name)
    lay = _Layout(data.S, len(data.lags), variant, bool(independent))
    em = _EM(data, lay, freeze_pi=freeze_pi)
    if freeze_pi and isinstance(init, str):
        raise ValueError("freeze_pi needs explicit init parameters")
    explicit = None if isinstance(init, str) else _init_explicit(init, lay)
    starts = []
    for r in range(restarts):
        if r == 0 and not (isinstance(init, str) and init == "random"):
            theta0 = _init_counts(data, lay) if explicit is None else explicit
        else:
            theta0 = _init_random(lay, rng)
            if freeze_pi:  # only lam is random; the emission rows stay the given ones
                theta0[lay.K :] = explicit[lay.K :]
        starts.append(theta0)
    runs = run_em(em, np.stack(starts), tol, max_iter, accelerate, window)  # all restarts as one batch
    lls = np.array([mon.history[-1] for _, mon in runs])
    best = int(np.argmax(lls))  # first of the ties: the init start wins a tie
    theta, mon = runs[best]
    theta = theta.copy()
    gap = em.kkt_gap(theta)
    if not mon.converged:
        h = mon.history
        w = min(mon.window, len(h) - 1)
        warnings.warn(
            f"EM did not converge: max_iter = {max_iter} EM evaluations spent by the best of {restarts} "
            f"restarts (loglik {h[-1]:.10g}, still rising by {h[-1] - h[-1 - w]:.3g} over its last {w} "
            f"iterates; KKT gap {gap:.3g}). Raise max_iter, or loosen tol (now {tol:g}).",
            RuntimeWarning, stacklevel=3)
    if not freeze_pi:
        # rows of pi that no transition uses do not enter the likelihood: report them as uniform rather than
        # as whatever the winning start happened to hold
        rows = theta[lay.K :].reshape(-1, lay.S)
        unused = np.ones(rows.shape[0], dtype=bool)
        unused[np.unique(em.idx_rest // lay.S)] = False
        rows[unused] = 1.0 / lay.S
        theta[lay.K :] = rows.ravel()
    par = lay.unpack(theta)
    return MTDFit(par["pi"], par["lam"], lags=data.lags, lam0=par.get("lam0"), p0=par.get("p0"),
                  loglik=mon.history[-1], n_obs=data.N, n_iter=mon.n_evals, converged=mon.converged,
                  history=np.asarray(mon.history), kkt_gap=gap, restart_logliks=lls, monitor=mon, classes=classes)


def fit(sequences: Any, order: int | None = None, *, lags: Sequence[int] | None = None,
        n_states: int | None = None, variant: str = "shared", independent: bool = False, restarts: int = 10,
        init: Any = "counts", tol: float = 1e-9, max_iter: int = 10_000, weights: Any = None,
        rng: Any = None) -> MTDFit:
    """Maximum-likelihood fit of an MTD model by EM (exact M-steps, SQUAREM-accelerated, restarts).

    Parameters
    ----------
    sequences : array (T,) or (B, T), list of 1-D arrays, or pandas Series / Categorical (or a list of them)
        Integer codes in [0, S), or labels (strings or other sortable hashable symbols; a Categorical keeps
        its category order, otherwise the sorted labels are the states, docs/math.md §7.9; the fit's
        ``classes`` holds them). Each sequence is conditioned on its own first ``max(lags)`` tokens.
    order : int, optional
        Fit lags 1..order (give ``order`` or ``lags``).
    lags : sequence of int, optional
        Sparse set of distinct positive lags, e.g. (1, 10); stored sorted, ``lam[j]`` belongs to ``lags[j]``.
    n_states : int, optional
        S; default ``max token + 1``.
    variant : {"shared", "lagwise"}
        One pi for every lag (Raftery's MTD) or one matrix per lag (MTDg).
    independent : bool
        Add the order-0 component ``lam0 * p0``.
    restarts : int
        Number of starts; the first is ``init`` (unless ``init="random"``), the others are random
        (lam and every row ~ Dirichlet(1)), drawn from ``rng`` in order. The best log-likelihood wins.
    init : "counts", "random", dict, MTDModel or MTDFit
        "counts": lam from the lag-wise mutual information, pi from smoothed lag-wise transition counts
        (pooled with weights lam when shared); explicit: ``{"pi", "lam"[, "lam0", "p0"]}`` (entries that
        are exactly 0 stay 0 under EM).
    tol : float
        Stop when the relative log-likelihood change over an iteration is < tol and the gain that one
        Frank-Wolfe step per simplex block would still bring (quadratic model of the KKT gap) is
        < tol * |loglik|, or when the log-likelihood gained < tol * |loglik| over the last 10 iterates
        (flat ridges; see :class:`~mtdmath.fitting.ConvergenceMonitor`). A RuntimeWarning says when
        ``max_iter`` ran out first.
    max_iter : int
        Maximum number of EM-map evaluations per start (all starts run as one batch).
    weights : array (n_sequences,), or one weight per token in the layout of ``sequences``, optional
        Non-negative finite weights: one per sequence (multiplying its log-likelihood), or one per token,
        where the weight at position t weighs the transition into ``y[t]`` (t = max(lags)..T-1; the weights
        of the first ``max(lags)`` positions are ignored). The log-likelihood is
        ``sum_t w_t log P(y[t] | past)`` (docs/math.md §7.9): integer weights give the fit of the data with
        each (context, next) tuple repeated that many times.
    rng : numpy Generator, int seed or None
        Makes the random restarts reproducible.

    Returns
    -------
    MTDFit
    """
    sequences, classes = encode(sequences, "sequences")
    n_states = check_classes_states(classes, n_states)
    sequences = _to_numpy(sequences)
    return _fit_impl(sequences, order, lags=lags, n_states=n_states, variant=variant, independent=independent,
                     restarts=restarts, init=init, tol=tol, max_iter=max_iter, weights=_to_numpy(weights), rng=rng,
                     classes=classes)




# ----------------------------------------------------------------------------------------------------------
# the estimator
# ----------------------------------------------------------------------------------------------------------
def _sequences_from(X: Any, y: Any = None, lengths: Any = None, order: int | None = None) -> tuple[Any, bool]:
    """The data layouts :class:`MTD` accepts -> (sequences for :func:`_prepare`, is_design_matrix).

    - ``y`` given: mtdlearn's design matrix, ``X`` (n, L) with column ``c`` the token at lag ``L - c`` (oldest
      first) and ``y`` (n,) the next token; each row becomes a sequence ``[X[i], y[i]]`` of length L + 1,
      conditioned on its first L tokens, so the likelihood is that of the n transitions.
    - ``lengths`` given: hmmlearn's concatenated sequences, ``X`` (N,) or (N, 1), split by ``lengths``.
    - otherwise: one 1-D sequence, a 2-D array whose rows are sequences, or a list of 1-D sequences.
    """
    X = _to_numpy(X)
    if y is not None:
        if lengths is not None:
            raise ValueError("give either y (design matrix) or lengths (concatenated sequences), not both")
        Xa, ya = np.asarray(X), np.asarray(_to_numpy(y))
        if Xa.ndim != 2:
            raise ValueError(f"X must be a 2-D design matrix (n, L) when y is given (got shape {Xa.shape})")
        if ya.ndim != 1 or ya.shape[0] != Xa.shape[0]:
            raise ValueError(f"y must be 1-D with one entry per row of X ({Xa.shape[0]}) (got shape {ya.shape})")
        if Xa.dtype == bool or not np.issubdtype(Xa.dtype, np.integer):
            raise ValueError(f"X must hold integer tokens (got dtype {Xa.dtype})")
        if ya.dtype == bool or not np.issubdtype(ya.dtype, np.integer):
            raise ValueError(f"y must hold integer tokens (got dtype {ya.dtype})")
        return np.concatenate([Xa, ya[:, None]], axis=1), True
    if lengths is not None:
        Xa = np.asarray(X)
        if Xa.ndim == 2 and Xa.shape[1] == 1:
            Xa = Xa[:, 0]
        if Xa.ndim != 1:
            raise ValueError(f"X must have shape (N,) or (N, 1) when lengths is given (got shape {Xa.shape})")
        ln = np.asarray(_to_numpy(lengths))
        if ln.ndim != 1 or ln.size == 0 or not np.issubdtype(ln.dtype, np.integer) or np.any(ln < 0):
            raise ValueError(f"lengths must be a 1-D array of non-negative integers (got {lengths!r})")
        if int(ln.sum()) != Xa.shape[0]:
            raise ValueError(f"lengths must sum to len(X) = {Xa.shape[0]} (got sum {int(ln.sum())})")
        return _as_sequences(np.split(Xa, np.cumsum(ln)[:-1]), "X"), False
    return _as_sequences(X, "X"), False


def _encode_xy(X: Any, y: Any) -> tuple[Any, Any, np.ndarray | None]:
    """Labels -> codes for ``X`` (and the design matrix's ``y``, encoded together so they share states)."""
    if y is None:
        X, classes = encode(X, "X")
        return X, None, classes
    (Xc, yc), classes = encode([X, y], "X")
    return Xc, yc, classes


def _split_weights(w: Any, lengths: Any, seqs: Any, design: bool) -> Any:
    """``sample_weight`` for :func:`_prepare`: per-token weights given flat with ``lengths`` are split like
    ``X``; a design matrix's per-row weights are per-sequence weights (each row is one transition)."""
    if w is None or lengths is None or design:
        return w
    arr = np.asarray(w)
    n_seq = len(seqs)
    if arr.ndim == 1 and arr.shape[0] != n_seq:
        ln = np.asarray(_to_numpy(lengths))
        if arr.shape[0] != int(ln.sum()):
            raise ValueError(f"sample_weight must have one entry per sequence ({n_seq}) or one per token "
                             f"({int(ln.sum())}) (got shape {arr.shape})")
        return np.split(arr, np.cumsum(ln)[:-1])
    return w


class MTD:
    """Maximum-likelihood MTD estimator with scikit-learn / hmmlearn conventions.

    Parameters
    ----------
    order : int, optional
        Fit lags ``1..order``. With a design matrix and neither ``order`` nor ``lags``, ``order`` is the
        number of its columns.
    lags : sequence of int, optional
        A sparse lag set instead of ``order``.
    n_states : int, optional
        S; default: largest token seen in ``fit`` + 1.
    variant : {"shared", "lagwise"}
    independent : bool
        Add the order-0 component.
    restarts, tol, max_iter, init
        As in :func:`fit`.
    burn_in : int, optional
        Condition every sequence on its first ``burn_in`` tokens (at least the max lag, which is the
        default) when fitting and scoring, so that models of different orders are scored on the same
        transitions.
    random_state : None, int or numpy Generator
        Seeds the random restarts (and :meth:`sample`, :meth:`confidence_intervals` when not given there).

    Attributes
    ----------
    lam_, pi_, lam0_, p0_, lags_, n_states_ :
        The fitted parameters (``lam0_``/``p0_`` None unless ``independent``).
    classes_ : ndarray (S,)
        The states: the labels of fit in code order (sorted, or a Categorical's order), or ``0..S-1`` for
        integer data. Column ``i`` of :meth:`predict_proba` is ``classes_[i]``.
    loglik_ : float
    n_iter_ : int
        EM-map evaluations of the best restart.
    converged_ : bool
    monitor_ : ConvergenceMonitor
    model_ : MTDModel
        The fitted law.
    fit_ : MTDFit
        The full fit report (restart log-likelihoods, KKT gap, AIC/BIC on the training data).

    Notes
    -----
    Cross-validation must split whole sequences, never transitions inside one sequence: pass ``X`` as a 2-D
    array (rows are sequences) or a list of sequences, and any row splitter (``KFold``, ``GroupKFold``)
    splits sequences. To compare orders, set ``burn_in`` to the largest order, otherwise a lower order is
    scored on more transitions and its held-out log-likelihood is lower for that reason alone. For example
    ``GridSearchCV(MTD(burn_in=3, n_states=S), {"order": [1, 2, 3]}, cv=KFold(5)).fit(X)`` selects the order
    by the held-out log-likelihood (:meth:`score`). Set ``n_states`` so that every fold knows all tokens.
    """

    def __init__(self, order: int | None = None, *, lags: Sequence[int] | None = None, n_states: int | None = None,
                 variant: str = "shared", independent: bool = False, restarts: int = 10, tol: float = 1e-9,
                 max_iter: int = 10_000, init: Any = "counts", burn_in: int | None = None,
                 random_state: Any = None):
        # scikit-learn convention: store the arguments unchanged; validate in fit
        self.order = order
        self.lags = lags
        self.n_states = n_states
        self.variant = variant
        self.independent = independent
        self.restarts = restarts
        self.tol = tol
        self.max_iter = max_iter
        self.init = init
        self.burn_in = burn_in
        self.random_state = random_state

    # -- scikit-learn parameter protocol --------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments (``deep`` is accepted for scikit-learn; there are no sub-estimators)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "MTD":
        """Set constructor arguments; unknown names raise ``ValueError``. Returns self."""
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"MTD.set_params: unknown parameter {key!r} (valid: {sorted(valid)})")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        default = MTD()
        # the variant is always shown: the default (shared pi) differs from mtdlearn's lag-wise model
        args = [f"{k}={v!r}" for k, v in self.get_params().items()
                if k == "variant" or not _same(v, getattr(default, k))]
        return f"MTD({', '.join(args)})"

    def __sklearn_tags__(self):  # pragma: no cover - only with scikit-learn installed
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False))

    # -- fitting -------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, lengths: Any = None, *, sample_weight: Any = None) -> "MTD":
        """Fit by maximum likelihood (EM, SQUAREM, restarts); returns self.

        Parameters
        ----------
        X : array (T,), (B, T), list of 1-D arrays, (N,)/(N, 1) with ``lengths``, or (n, L) with ``y``
            Integer codes 0..S-1, or labels (strings, other sortable hashable symbols, a pandas Series or
            Categorical): the states are then the sorted labels, or a Categorical's own category order, and
            ``classes_`` records them (docs/math.md §7.9).
        y : array (n,), optional
            Next tokens of mtdlearn's design matrix ``X`` (codes or labels, encoded together with ``X``).
        lengths : int array (B,), optional
            hmmlearn convention: lengths of the sequences concatenated in ``X``.
        sample_weight : array, optional
            Non-negative finite weights, either

            - one per sequence, shape (B,) (one per row of a design matrix, which is one per transition), or
            - one per token, in the layout of ``X``: shape (T,) for one sequence, (B, T) for rows, a list of
              (T_b,) arrays for a list, (N,) with ``lengths``. The weight at position t weighs the
              transition into ``X[t]``, t = max(order, burn_in)..T-1 of each sequence; the weights of the
              first positions condition nothing and are ignored.

            The fitted log-likelihood is ``sum_t w_t log P(x[t] | past)`` (docs/math.md §7.9), so integer
            weights give exactly the fit of the data with each (context, next) tuple repeated that often.
        """
        X, y, classes = _encode_xy(X, y)
        seqs, design = _sequences_from(X, y, lengths)
        n_states = check_classes_states(classes, self.n_states)
        sample_weight = _split_weights(_to_numpy(sample_weight), lengths, seqs, design)
        order, lags = self.order, self.lags
        if design and order is None and lags is None:
            order = seqs.shape[1] - 1
        if order is None and lags is None:
            raise ValueError("MTD: set order (or lags) to fit sequences")
        if design:
            L = seqs.shape[1] - 1
            M = max(lags) if lags is not None else order
            if M > L:
                raise ValueError(f"X has {L} lag columns, fewer than the max lag {M}")
            seqs = seqs[:, L - M :]  # keep the last M columns (lags M..1) and y
        start = None if self.burn_in is None else check_int(self.burn_in, "burn_in", minimum=0)
        if design and start is not None:
            raise ValueError("burn_in does not apply to a design matrix (each row is one transition)")
        f = _fit_impl(seqs, order, lags=lags, n_states=n_states, variant=self.variant,
                      independent=self.independent, restarts=self.restarts, init=self.init, tol=self.tol,
                      max_iter=self.max_iter, weights=sample_weight, rng=_rng_copy(self.random_state),
                      start=start, weights_name="sample_weight", classes=classes)
        self.fit_ = f
        self.model_ = f.model
        self.lam_, self.pi_, self.lam0_, self.p0_ = f.lam, f.pi, f.lam0, f.p0
        self.lags_, self.n_states_ = f.lags, f.n_states
        self.loglik_, self.n_iter_, self.converged_, self.monitor_ = f.loglik, f.n_iter, f.converged, f.monitor
        self._labels = classes
        self.classes_ = decode(np.arange(f.n_states), classes)
        self._train = (seqs, sample_weight)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ValueError("this MTD instance is not fitted yet: call fit first")

    def _start(self) -> int:
        return max(self.model_.order, 0 if self.burn_in is None else int(self.burn_in))

    def _codes(self, X: Any, name: str = "X") -> Any:
        """Labels -> codes with the labels of fit (an unseen label raises, naming it); codes unchanged."""
        if getattr(self, "_labels", None) is None:
            return X
        return encode(X, name, self._labels)[0]

    def _data(self, X: Any, y: Any, lengths: Any) -> Any:
        X = self._codes(X)
        y = None if y is None else self._codes(y, "y")
        seqs, design = _sequences_from(X, y, lengths)
        if design:
            L, M = seqs.shape[1] - 1, self.model_.order
            if M > L:
                raise ValueError(f"X has {L} lag columns, fewer than the max lag {M}")
            seqs = seqs[:, L - M :]
        return seqs

    # -- scoring -------------------------------------------------------------------------------------------
    def score_samples(self, X: Any, y: Any = None, lengths: Any = None) -> np.ndarray:
        """Log-likelihood of each sequence (of each row of a design matrix), each conditioned on its first
        ``max(order, burn_in)`` tokens; shape (n_sequences,)."""
        self._check_fitted()
        seqs = self._data(X, y, lengths)
        seq_list = _as_sequences(seqs)
        if len(seq_list) > 1 and len({s.shape[0] for s in seq_list}) == 1:
            Y = np.stack(seq_list)
            m = self.model_
            M = m.order
            ctx_t = np.arange(self._start(), Y.shape[1])
            out = np.zeros(Y.shape[0])
            for t in ctx_t:  # one vectorised pass per position (the rows are many, the positions few)
                p = m.predict_proba(Y[:, t - M : t])
                with np.errstate(divide="ignore"):
                    out += np.log(p[np.arange(Y.shape[0]), Y[:, t]])
            return out
        return np.array([self._loglik(s) for s in seq_list])

    def _loglik(self, seqs: Any, weights: Any = None) -> float:
        w_log, _ = self.model_._loglik_terms(seqs, weights, start=self._start())
        return float(np.sum(w_log))

    def score(self, X: Any, y: Any = None, lengths: Any = None, *, sample_weight: Any = None) -> float:
        """Total (weighted) log-likelihood of ``X`` under the fitted model (higher is better, as scikit-learn
        expects), every sequence conditioned on its first ``max(order, burn_in)`` tokens; ``sample_weight``
        as in :meth:`fit`."""
        self._check_fitted()
        seqs = self._data(X, y, lengths)
        w = _split_weights(_to_numpy(sample_weight), lengths, seqs, y is not None)
        if w is None:
            return self._loglik(seqs)
        data = _prepare(seqs, None, self.model_.lags, self.model_.n_states, w, self._start(), "sample_weight")
        return self._loglik_data(data)

    def _loglik_data(self, data) -> float:
        lay = _Layout(self.model_.n_states, len(self.model_.lags), self.model_.variant, self.model_.independent)
        theta = lay.pack(self.lam_, self.pi_, self.lam0_, self.p0_)
        s = np.einsum("uk,k->u", theta[lay.index(data)], theta[: lay.K])
        with np.errstate(divide="ignore"):
            return float(np.sum(data.w * np.log(s)))

    def _n_obs(self, X: Any, y: Any, lengths: Any) -> float:
        return _prepare(self._data(X, y, lengths), None, self.model_.lags, self.model_.n_states, None,
                        self._start()).N

    def aic(self, X: Any, y: Any = None, lengths: Any = None) -> float:
        """``-2 score(X) + 2 n_params``."""
        return -2.0 * self.score(X, y, lengths) + 2.0 * self.model_.n_params

    def bic(self, X: Any, y: Any = None, lengths: Any = None) -> float:
        """``-2 score(X) + log(n) n_params`` with n the number of transitions of ``X``."""
        return -2.0 * self.score(X, y, lengths) + math.log(self._n_obs(X, y, lengths)) * self.model_.n_params

    @property
    def n_params(self) -> int:
        """Identifiable parameter count of the fitted model (docs/math.md §7.6)."""
        self._check_fitted()
        return self.model_.n_params

    # -- prediction and simulation ---------------------------------------------------------------------------
    def predict_proba(self, X: Any) -> np.ndarray:
        """Law of the next symbol after each context; ``X`` (n, L) with L >= order, time last, codes or the
        labels of fit (an unseen label raises ``ValueError`` naming it). Returns (n, S): column ``i`` is the
        probability of ``classes_[i]``."""
        self._check_fitted()
        return self.model_.predict_proba(_to_numpy(self._codes(X)))

    def predict(self, X: Any) -> np.ndarray:
        """Most probable next symbol after each context (n, L); returns (n,) codes, or labels after a
        labelled fit."""
        return decode(np.argmax(self.predict_proba(X), axis=-1).astype(np.int64), getattr(self, "_labels", None))

    def sample(self, n: int, random_state: Any = None, *, init: Any = None) -> np.ndarray:
        """Simulate one chain of length n from the fitted model (see :meth:`MTDModel.sample`); labels after a
        labelled fit."""
        self._check_fitted()
        rs = self.random_state if random_state is None else random_state
        return decode(self.model_.sample(n, rng=_rng_copy(rs), init=init), getattr(self, "_labels", None))

    def summary(self) -> str:
        """A printable report of the fit, naming the variant (shared pi or lag-wise MTDg) and noting that
        mtdlearn's model is the lag-wise one."""
        self._check_fitted()
        f = self.fit_
        return summary_text(f, f.loglik, f.n_obs, f.converged, f.monitor.reason if f.monitor else None)

    # -- uncertainty -----------------------------------------------------------------------------------------
    def _inference(self):
        from .inference import observed_inference

        if getattr(self, "_inference_cache", None) is None or self._inference_cache[0] is not self.fit_:
            seqs, w = self._train
            data = _prepare(seqs, None, self.lags_, self.n_states_, w, self._start())
            lay = _Layout(data.S, len(data.lags), self.model_.variant, self.model_.independent)
            em = _EM(data, lay)
            theta = lay.pack(self.lam_, self.pi_, self.lam0_, self.p0_)
            self._inference_cache = (self.fit_, observed_inference(em, theta), lay, theta)
        return self._inference_cache[1:]

    def standard_errors(self) -> dict:
        """Standard errors of the fitted parameters from the observed information on the constrained space
        (exact Hessian; :mod:`mtdmath.fitting.inference`). ``inf`` marks a parameter the data do not identify
        (every lam and pi entry of a lag-wise model; rows of pi no transition uses); 0 an entry held at 0 on
        the boundary (docs/math.md §10).

        Returns
        -------
        dict with ``lam`` (k,), ``pi`` (S, S) or (k, S, S), and ``lam0``, ``p0`` when independent.
        """
        self._check_fitted()
        inf, lay, theta = self._inference()
        return lay.unpack(inf.se())

    def confidence_intervals(self, level: float = 0.95, *, method: str = "observed", n_boot: int = 200,
                             random_state: Any = None) -> dict:
        """Confidence intervals for lam and pi (and lam0, p0).

        ``method="observed"``: Wald intervals ``est -/+ z se`` from :meth:`standard_errors`, clipped to [0, 1]
        (an unidentified parameter gets [0, 1]; one held on the boundary a Wilson interval, docs/math.md §10). ``method="bootstrap"``: conditional parametric bootstrap:
        ``n_boot`` data sets simulated from the fit, each sequence continuing from its own first ``order``
        tokens, refitted from the fitted parameters (one start), percentile intervals. Returns a dict
        mapping each parameter name to ``(lower, upper)`` arrays of its shape.
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
            rng = as_rng(_rng_copy(self.random_state if random_state is None else random_state))
            seqs = _as_sequences(self._train[0])
            M = self._start()  # each bootstrap sequence continues from its own first M tokens
            draws = []
            for _ in range(n_boot):
                boot = [self.model_.sample(s.shape[0], rng=rng, prefix=s[:M]) for s in seqs]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    fb = _fit_impl(boot, None, lags=self.lags_, n_states=self.n_states_, variant=self.variant,
                                   independent=self.independent, restarts=1, init=self.fit_, tol=self.tol,
                                   max_iter=self.max_iter, weights=self._train[1], start=M)
                draws.append(lay.pack(fb.lam, fb.pi, fb.lam0, fb.p0))
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
        X = check_tokens(_to_numpy(self._codes(X)), self.n_states_, self.model_.order, name="X")
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n, L) (got shape {X.shape})")
        inf, lay, theta = self._inference()
        p = self.model_.predict_proba(X)
        lo, hi = predictive_interval(inf, self.lags_, X, p, level)
        return p, lo, hi


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:  # noqa: BLE001 - arrays, generators: treat as different
        return False


def _rng_copy(random_state: Any) -> Any:
    """An int seed or None is passed on; a Generator is used as is (scikit-learn semantics: it advances)."""
    return random_state
