"""Deprecated: the torch twin of the core is retired; the shared core serves every backend.

``mtdmath.mirror_descent(C_tensor, ...)`` and the other public functions accept torch tensors
(CPU or CUDA) and return tensors on the same device. This module re-exports them for one release.
"""
import warnings

from .estimators import em, md_predictive_all_prefixes, mirror_descent, one_step_md
from .likelihood import gradient, log_likelihood
from .model import lag_factors

warnings.warn("mtdmath.torch_core is deprecated: call mtdmath.<function> with torch tensors instead",
              DeprecationWarning, stacklevel=2)

__all__ = ["lag_factors", "log_likelihood", "gradient", "mirror_descent", "em", "one_step_md",
           "md_predictive_all_prefixes"]

