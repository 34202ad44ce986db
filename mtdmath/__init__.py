"""mtdmath: numerically verified mathematics of mixture transition distribution (MTD) models.

Implements, verifies and extends "Transformers Learn Latent Mixture Models In-Context via
Mirror Descent" (D'Angelo & Flammarion, ICLR 2026). The formulas are those of docs/math.md.
"""
from .bayes import log_evidence, n_count_states, posterior_mean, posterior_mean_mc
from .estimators import (corrected_one_step_md, em, eta_bayes, k_step_md, kkt_gap, md_predictive_all_prefixes,
                         mirror_descent, mle, one_step_md)
from .likelihood import gradient, hessian, kl, log_likelihood, responsibilities
from .model import lag_factors, predictive, random_transition_matrix, sample, sample_icl
from .stepsize import optimal_step, predicted_step

# The namespaces load on first use (PEP 562): mtdmath.nn and mtdmath.experiments import torch,
# which is slow to import, and the NumPy core, proofs_check and the fitting code do not need it.
_NAMESPACES = ("fitting", "nn", "experiments")


def __getattr__(name: str):
    if name in _NAMESPACES:
        import importlib

        return importlib.import_module(f".{name}", __name__)  # the import binds it as an attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMESPACES))


__version__ = "0.1.0"

# The core maths, plus the namespace that needs no torch. mtdmath.nn and mtdmath.experiments stay
# out of __all__ so that ``from mtdmath import *`` never imports torch; they are attributes all the same.
__all__ = [
    "random_transition_matrix",
    "sample",
    "sample_icl",
    "lag_factors",
    "predictive",
    "log_likelihood",
    "gradient",
    "hessian",
    "responsibilities",
    "kl",
    "mirror_descent",
    "em",
    "mle",
    "kkt_gap",
    "eta_bayes",
    "one_step_md",
    "corrected_one_step_md",
    "optimal_step",
    "predicted_step",
    "k_step_md",
    "posterior_mean",
    "log_evidence",
    "posterior_mean_mc",
    "md_predictive_all_prefixes",
    "n_count_states",
    "fitting",
]
