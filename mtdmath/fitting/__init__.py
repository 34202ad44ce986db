"""Fitting MTD models when pi is unknown.

- :mod:`.em`: sufficient statistics (aggregated transition tuples), the exact E/M steps, the batched EM loop
  through the library's one SQUAREM, and :class:`ConvergenceMonitor`.
- :mod:`.model`: :class:`MTDModel` (a validated law) and :class:`MTDFit` (a law with its fit report).
- :mod:`.estimator`: :func:`fit` and the scikit-learn style estimator :class:`MTD` (with standard errors,
  Wald and bootstrap intervals from :mod:`.inference`).
- :mod:`.selection`: :func:`select_order`, :func:`select_lags`.
- :mod:`.icl`: :func:`fit_icl`, the paper's model (shared pi, lam ~ Dirichlet(alpha) per sequence).
- :mod:`.baselines`: :class:`MarkovChain` (the saturated order-m chain; order 0 is the independence model),
  :func:`lr_test`, :func:`compare_models`.
- :mod:`.symbols`: labels (strings, pandas Categoricals) to codes and back.
"""
from .baselines import LRTest, MarkovChain, ModelComparison, compare_models, lr_test
from .em import ConvergenceMonitor
from .estimator import MTD, fit
from .icl import ICLFit, fit_icl
from .model import MTDFit, MTDModel
from .selection import select_lags, select_order

__all__ = ["ConvergenceMonitor", "ICLFit", "LRTest", "MTD", "MTDFit", "MTDModel", "MarkovChain", "ModelComparison",
           "compare_models", "fit", "fit_icl", "lr_test", "select_lags", "select_order"]
