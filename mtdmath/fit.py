"""Compatibility module: the fitting code lives in :mod:`mtdmath.fitting`.

``from mtdmath.fit import fit, select_order, MTDFit`` keeps working; new code imports from
:mod:`mtdmath.fitting` (or :mod:`mtdmath`).
"""
from .fitting import ConvergenceMonitor, MTDFit, MTDModel, fit, select_order
# the private names the tests and old callers reach through this module
from .fitting.em import VARIANTS, _EM, _aggregate, _as_sequences, _check_lags, _Layout, _prepare, run_em  # noqa: F401
from .fitting.estimator import _fit_impl  # noqa: F401
from .fitting.model import MAX_DENSE_STATES, MAX_STATES, _n_params  # noqa: F401

__all__ = ["fit", "select_order", "MTDFit", "MTDModel", "ConvergenceMonitor"]


class _CallableModule(type(__import__("sys"))):
    """Importing ``mtdmath.fit`` as a submodule makes Python set the attribute ``mtdmath.fit`` to this
    module, shadowing the function :func:`mtdmath.fit`. Calling the module calls the function, so
    ``mtdmath.fit(y, 2)`` works whichever of the two the attribute holds."""

    def __call__(self, *args, **kwargs):
        return fit(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
