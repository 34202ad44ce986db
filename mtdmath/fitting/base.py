"""The one estimator base of the fitting package, in scikit-learn's ``BaseEstimator`` style.

:class:`SequenceEstimator` owns what every estimator shares: the constructor parameters (``get_params``,
``set_params``, ``repr``, ``sklearn.base.clone``), the data (every layout goes through the data layer
:mod:`._data` into :class:`~mtdmath.fitting.TransitionCounts`), the labels (``classes_``), the fitted check
(:class:`NotFittedError`), ``score``, ``score_samples``, AIC/BIC, ``predict_proba``, ``predict`` and
``sample``. A subclass supplies only how it reads its lags from its parameters and its fit on counts
(``_fit_law(counts)``, which returns a frozen law of :mod:`.laws` and a report); :meth:`SequenceEstimator.fit`
and :meth:`SequenceEstimator.fit_counts` set the fitted state from it.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from .._validate import as_rng, check_alloc, check_int, check_tokens
from ._data import Parsed, TransitionCounts, count, parse, to_numpy
from .symbols import decode, encode

class FallbackNotFittedError(ValueError, AttributeError):
    """Raised when a method that needs a fitted estimator is called before ``fit`` (as scikit-learn's), where
    scikit-learn is not installed."""


def not_fitted_error() -> type:
    """The class :class:`NotFittedError` names: scikit-learn's where it is installed (so that its checks
    recognise ours), else :class:`FallbackNotFittedError`. Looked up when first needed, not at import:
    importing scikit-learn costs about a second of CPU, more than a small fit."""
    try:
        from sklearn.exceptions import NotFittedError
    except ImportError:  # pragma: no cover - exercised only without scikit-learn
        return FallbackNotFittedError
    return NotFittedError


def __getattr__(name: str) -> Any:  # PEP 562: ``NotFittedError`` resolves on first use
    if name == "NotFittedError":
        return not_fitted_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:  # noqa: BLE001 - arrays, generators: treat as different
        return False


class SequenceEstimator:
    """Base of :class:`~mtdmath.fitting.MTD` and :class:`~mtdmath.fitting.MarkovChain`.

    scikit-learn conventions: parameters are the constructor's keyword arguments, stored unchanged and
    validated in ``fit``; ``fit`` returns ``self``; fitted attributes end in ``_``; methods that need a fit
    raise :class:`NotFittedError` before it.

    Fitted attributes (every subclass)
    ----------------------------------
    model_ : the fitted law (:class:`~mtdmath.fitting.MTDModel` or :class:`~mtdmath.fitting.ChainModel`)
    transition_counts_ : TransitionCounts
        The training data's aggregated transitions.
    classes_ : ndarray (S,)
        The states: labels in code order (sorted, or a Categorical's order), or ``0..S-1`` for integer data.
    n_symbols_ : int
    loglik_ : float
        Training log-likelihood.
    n_obs_ : float
        Number of (weighted) training transitions.
    n_dropped_ : int
        Training transitions dropped because their target or window held the ``missing`` symbol.
    """

    # -- parameters --------------------------------------------------------------------------------------------
    @classmethod
    def _get_param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments (``deep`` is accepted for scikit-learn; there are no sub-estimators)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> "SequenceEstimator":
        """Set constructor arguments; unknown names raise ``ValueError``. Returns self."""
        valid = set(self._get_param_names())
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"{type(self).__name__}.set_params: unknown parameter {key!r} "
                                 f"(valid: {sorted(valid)})")
            setattr(self, key, value)
        return self

    #: parameters a repr always shows (e.g. the variant, whose default differs from a peer's)
    _repr_always: tuple[str, ...] = ()

    def __repr__(self) -> str:
        default = type(self)()
        args = [f"{k}={v!r}" for k, v in self.get_params().items()
                if k in self._repr_always or not _same(v, getattr(default, k))]
        return f"{type(self).__name__}({', '.join(args)})"

    def __sklearn_tags__(self):  # pragma: no cover - only with scikit-learn installed
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False))

    def __sklearn_is_fitted__(self) -> bool:
        return "model_" in vars(self)

    def _check_fitted(self) -> None:
        if "model_" not in vars(self):
            raise not_fitted_error()(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")

    # -- what a subclass supplies ------------------------------------------------------------------------------
    def _lags(self, parsed: Parsed) -> tuple[int, ...]:
        """The lags of the fit, from the parameters (and the data, e.g. a design matrix's width)."""
        raise NotImplementedError

    def _validate_params(self) -> None:
        """Check the parameters (``ValueError`` naming one) before any work on the data."""

    def _fit_law(self, counts: TransitionCounts):
        """The subclass's fit on aggregated counts: returns ``(law, report)``, the report a dict of further
        fitted attributes (their names without the trailing underscore)."""
        raise NotImplementedError

    # -- fitting -----------------------------------------------------------------------------------------------
    def _start(self, order: int | None = None) -> int:
        """Tokens of every sequence the fit and the scores condition on: ``max(order, burn_in)``."""
        order = self.model_.order if order is None else order
        b = getattr(self, "burn_in", None)
        return max(order, 0 if b is None else int(b))

    def _burn_in(self, parsed: Parsed) -> int | None:
        b = getattr(self, "burn_in", None)
        if b is None:
            return None
        b = check_int(b, "burn_in", minimum=0)
        if parsed.design:
            raise ValueError("burn_in does not apply to a design matrix (each row is one transition)")
        return b

    def fit(self, X: Any, y: Any = None, lengths: Any = None, *, sample_weight: Any = None):
        """Fit on ``X``; returns self.

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
        self._validate_params()
        return self._fit_parsed(self._parse(X, y, lengths, sample_weight))

    def _parse(self, X: Any, y: Any = None, lengths: Any = None, sample_weight: Any = None, *,
               fitted: bool = False) -> Parsed:
        """``X`` parsed with this estimator's data options (``missing``, ``pad`` where the estimator has
        them); ``fitted``: in the fitted states and labels."""
        return parse(X, y, lengths, sample_weight, classes=self._labels if fitted else None, fitted=fitted,
                     missing=getattr(self, "missing", None), pad=getattr(self, "pad", None))

    def _fit_parsed(self, parsed: Parsed):
        """Fit on parsed data (every fitting entry point goes through here or :meth:`fit_counts`)."""
        self.fit_counts(count(parsed, self._lags(parsed), self.n_symbols, self._burn_in(parsed)))
        self._train = parsed
        return self

    def fit_counts(self, counts: TransitionCounts):
        """Fit on aggregated transition counts (:class:`~mtdmath.fitting.TransitionCounts`, e.g. merged with
        ``+`` from several data sets); returns self. The counts' lags must be the estimator's; ``burn_in``
        was applied when they were counted. Methods that re-simulate the training sequences (the bootstrap
        of ``confidence_intervals``) need :meth:`fit`."""
        self._validate_params()
        for key in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, key)  # a refit starts clean
        self.__dict__.pop("_inference_cache", None)
        law, report = self._fit_law(counts)
        self.model_ = law
        self.transition_counts_ = counts
        self.n_symbols_ = counts.n_symbols
        self.classes_ = decode(np.arange(counts.n_symbols), counts.classes)
        self.n_obs_ = counts.n_obs
        self.n_dropped_ = counts.n_dropped
        for key, value in report.items():
            setattr(self, key + "_", value)
        self._train = None
        return self

    @property
    def _labels(self) -> np.ndarray | None:
        return self.transition_counts_.classes

    # -- scores --------------------------------------------------------------------------------------------------
    def _counts_of(self, X: Any, y: Any = None, lengths: Any = None, sample_weight: Any = None
                   ) -> TransitionCounts:
        """``X`` in the fitted states (labels of fit; a token outside them raises), counted for the model's
        lags, every sequence conditioned on its first ``max(order, burn_in)`` tokens."""
        self._check_fitted()
        parsed = self._parse(X, y, lengths, sample_weight, fitted=True)
        S = self.n_symbols_
        if parsed.top >= S:
            raise ValueError(f"X holds the token {parsed.top}, outside this model's states 0..{S - 1}")
        return count(parsed, self.model_.count_lags, S, None if parsed.design else self._start())

    def score(self, X: Any, y: Any = None, lengths: Any = None, *, sample_weight: Any = None) -> float:
        """Total (weighted) log-likelihood of ``X`` under the fitted law (higher is better, as scikit-learn
        expects), every sequence conditioned on its first ``max(order, burn_in)`` tokens; ``sample_weight``
        as in :meth:`fit`; -inf when ``X`` holds a transition the law gives probability 0."""
        counts = self._counts_of(X, y, lengths, sample_weight)
        return self.model_.log_prob(counts)

    def score_samples(self, X: Any, y: Any = None, lengths: Any = None) -> np.ndarray:
        """Log-likelihood of each sequence (of each row of a design matrix), each conditioned on its first
        ``max(order, burn_in)`` tokens (with ``pad``: every token, after the null state); shape (n_sequences,).
        With ``missing``, data that hold a missing token raise ``ValueError`` (:meth:`score` drops their
        transitions)."""
        self._check_fitted()
        parsed = self._parse(X, y, lengths, fitted=True)
        # a missing token removes itself from the runs (or its row from a design matrix)
        cut = parsed.full_lengths is not None and sum(parsed.full_lengths) != sum(q.shape[0] for q in parsed.seqs)
        if cut or parsed.dropped_rows:
            raise ValueError("X holds missing tokens: score_samples scores whole sequences; use score, which "
                             "drops the transitions that touch them")
        law, M = self.model_, self.model_.order
        if parsed.top >= self.n_symbols_:
            raise ValueError(f"X holds the token {parsed.top}, outside this model's states 0..{self.n_symbols_ - 1}")
        seqs = parsed.sequences_for(M)
        start = M if parsed.design else self._start()
        if parsed.pad_code is not None:  # as count() reads them: the null state before every sequence
            seqs = [np.concatenate([np.full(start, parsed.pad_code, dtype=np.int64), s]) for s in seqs]
        out = np.zeros(len(seqs))
        by_length: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_length.setdefault(s.shape[0], []).append(i)
        for T, rows in by_length.items():  # one vectorised pass per position over the sequences of one length
            Y = np.stack([seqs[i] for i in rows])
            for t in range(start, T):  # a sequence with no transition scores 0
                p = law.predict_proba(Y[:, t - M : t])[np.arange(Y.shape[0]), Y[:, t]]
                with np.errstate(divide="ignore"):
                    out[rows] += np.log(p)
        return out

    @property
    def n_params(self) -> int:
        """Identifiable parameter count of the fitted law (docs/math.md §7.6, §7.8)."""
        self._check_fitted()
        return self.model_.n_params

    def aic(self, X: Any = None, y: Any = None, lengths: Any = None, *, boundary: str = "count") -> float:
        """``-2 loglik + 2 n_params``: of ``X`` when given, else of the training data.

        ``boundary="drop"`` (march's convention, docs/math.md eq-boundary-criteria) does not count the
        parameters the fit holds at 0 (:meth:`MTDModel.n_params_at_zero`); ``"count"`` (default) counts every
        identifiable parameter.
        """
        self._check_fitted()
        ll = self.loglik_ if X is None else self.score(X, y, lengths)
        return -2.0 * ll + 2.0 * self._criterion_params(boundary)

    def bic(self, X: Any = None, y: Any = None, lengths: Any = None, *, boundary: str = "count") -> float:
        """``-2 loglik + log(n) n_params``, n the number of transitions: of ``X`` when given, else of the
        training data; ``boundary`` as for :meth:`aic`."""
        self._check_fitted()
        k = self._criterion_params(boundary)
        if X is None:
            ll, n = self.loglik_, self.n_obs_
        else:
            c = self._counts_of(X, y, lengths)
            ll, n = self.model_.log_prob(c), c.n_obs
        return -2.0 * ll + math.log(n) * k

    def _criterion_params(self, boundary: str) -> int:
        """The parameter count of AIC/BIC: every identifiable one, or (``"drop"``) those not held at 0."""
        if boundary not in ("count", "drop"):
            raise ValueError(f'boundary must be "count" or "drop" (got {boundary!r})')
        if boundary == "count":
            return self.n_params
        return max(self.n_params - self.model_.n_params_at_zero(), 0)

    # -- prediction and simulation ---------------------------------------------------------------------------
    def _contexts(self, X: Any) -> np.ndarray:
        """Contexts (n, L), time last, as codes of the fitted states (``ValueError`` for other shapes)."""
        self._check_fitted()
        if self._labels is not None:
            X = encode(X, "X", self._labels)[0]
        try:
            arr = np.asarray(to_numpy(X))
        except (TypeError, ValueError):
            raise ValueError("X must be a 2-D array (n, L) of contexts (ragged or non-numeric input)") from None
        if arr.ndim != 2:
            raise ValueError(f"X must be 2-D (n, L): one context per row, time last (got shape {arr.shape})")
        return arr

    def predict_proba(self, X: Any) -> np.ndarray:
        """Law of the next symbol after each context; ``X`` (n, L) with L >= order, time last, codes or the
        labels of fit (an unseen label raises ``ValueError`` naming it). Returns (n, S): column ``i`` is the
        probability of ``classes_[i]``."""
        ctx = check_tokens(self._contexts(X), self.n_symbols_, self.model_.order or None, name="X")
        return self.model_.predict_proba(ctx)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable next symbol after each context (n, L); returns (n,) codes, or labels after a
        labelled fit."""
        return decode(np.argmax(self.predict_proba(X), axis=-1).astype(np.int64), self._labels)

    def sample(self, n: int, random_state: Any = None, *, init: Any = None) -> np.ndarray:
        """Simulate one chain of length n from the fitted law (the first ``order`` symbols i.i.d. from
        ``init``, default uniform); labels after a labelled fit."""
        self._check_fitted()
        n = check_int(n, "n", minimum=0)
        check_alloc(n, 8 * 3, "n", f"a chain of length n = {n}")
        if random_state is None:
            random_state = getattr(self, "random_state", None)
        return decode(self.model_.sample(n, rng=as_rng(random_state, "random_state"), init=init), self._labels)
