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


# --- temporary adapters for in-flight modules (moved into mtdmath.nn before landing) ---
def _torch_space(x, device=None):
    import torch
    from . import _xp

    if isinstance(x, torch.Tensor):
        sp = _xp.data_space(x)
        return _xp.Space(sp.xp, device or sp.device, sp.dtype)
    from array_api_compat import array_namespace

    return _xp.Space(array_namespace(torch.empty(0)), device or torch.device("cpu"), torch.float64)


def check_tokens(tokens, S, m=None, name="tokens", *, device=None):
    from . import _validate as V

    return V.check_tokens(tokens, S, m, name, _torch_space(tokens, device))


def _check_pi(pi, name="pi", *, device=None):
    from . import _validate as V

    return V.check_pi(pi, name, _torch_space(pi, device))


def _check_alpha(alpha, name="alpha"):
    from . import _validate as V

    return V.check_alpha(alpha, name)


def _check_eta(eta, alpha):
    from .estimators import _check_eta as f

    return f(eta, alpha)
