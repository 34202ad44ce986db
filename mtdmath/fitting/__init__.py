"""Fitting MTD models when pi is unknown (scikit-learn style).

The object model (docs/guide/fitting.md):

- data: :mod:`._data` turns every layout (sequences, ``lengths``, labels, weights, design matrices) into
  :class:`TransitionCounts`, which merge with ``+``;
- laws: :mod:`.laws` holds the frozen laws :class:`MTDModel` and :class:`ChainModel`;
- estimators: :mod:`.base` is the one estimator base (parameters, labels, scores, AIC/BIC,
  :class:`NotFittedError`); :class:`MTD` (:mod:`.mtd`, EM in :mod:`._em`, :class:`ConvergenceMonitor`
  in :mod:`._monitor`) and :class:`MarkovChain` (:mod:`.baselines`) supply only their fit on counts;
  :func:`fit` is ``MTD(...).fit(...)``;
- :mod:`.inference`: standard errors and intervals; :mod:`.selection`: :func:`select_order`,
  :func:`select_lags`; :mod:`.baselines`: :func:`lr_test`, :func:`compare_models`; :mod:`.icl`:
  :func:`fit_icl`, the paper's model (shared pi, lam ~ Dirichlet(alpha) per sequence), whose
  :meth:`ICLFit.posterior_lam` gives each sequence's posterior lam (:class:`PosteriorLam`, :mod:`._posterior`).
"""
from ._data import TransitionCounts
from ._monitor import ConvergenceMonitor
from ._posterior import PosteriorLam
from .baselines import LRTest, MarkovChain, ModelComparison, compare_models, lr_test
from .mtd import MTD, fit
from .icl import ICLFit, fit_icl
from .laws import ChainModel, MTDModel
from .selection import select_lags, select_order

__all__ = ["ChainModel", "ConvergenceMonitor", "ICLFit", "LRTest", "MTD", "MTDModel", "MarkovChain",
           "ModelComparison", "NotFittedError", "PosteriorLam", "TransitionCounts", "compare_models", "fit", "fit_icl", "lr_test",
           "select_lags", "select_order"]


def __getattr__(name: str):  # PEP 562: NotFittedError is scikit-learn's class, imported only when first used
    if name == "NotFittedError":
        from .base import not_fitted_error

        return not_fitted_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
