"""mtdmath: numerically verified mathematics of mixture transition distribution (MTD) models.

Implements, verifies and extends "Transformers Learn Latent Mixture Models In-Context via
Mirror Descent" (D'Angelo & Flammarion, ICLR 2026). The formulas are those of docs/math.md.
"""
from .bayes import log_evidence, n_count_states, posterior_mean, posterior_mean_mc
from .estimators import (corrected_one_step_md, em, eta_bayes, k_step_md, kkt_gap, md_predictive_all_prefixes,
                         mirror_descent, mle, one_step_md)
from .fitting import (ConvergenceMonitor, ICLFit, LRTest, MarkovChain, ModelComparison, MTD, MTDModel,
                      compare_models, fit, fit_icl, lr_test, select_lags, select_order)
from .likelihood import gradient, hessian, kl, log_likelihood, responsibilities
from .model import lag_factors, predictive, random_transition_matrix, sample, sample_icl
from .stepsize import optimal_step, predicted_step

# The torch parts load on first use (PEP 562): importing torch takes ~1.5 s, and the NumPy
# core, the fitting code and proofs_check do not need it.
_LAZY = {"torch_core": (".torch_core", None), "nn": (".nn", None),
         **{name: (".nn", name) for name in ("MDTransformer", "StandardTransformer", "ICLTask", "train",
                                              "TrainHistory", "save_checkpoint", "load_checkpoint",
                                              "model_from_spec", "parse_model_spec", "effective_step", "step_by_n",
                                              "matched_step", "fit_adaptive_step", "adaptive_params")}}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module, __name__)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"

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
    "torch_core",
    "nn",
    "MDTransformer",
    "StandardTransformer",
    "ICLTask",
    "train",
    "TrainHistory",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_spec",
    "parse_model_spec",
    "effective_step",
    "step_by_n",
    "matched_step",
    "fit_adaptive_step",
    "adaptive_params",
    "fit",
    "select_order",
    "select_lags",
    "MTD",
    "MTDModel",
    "ConvergenceMonitor",
    "fit_icl",
    "ICLFit",
    "MarkovChain",
    "lr_test",
    "compare_models",
    "LRTest",
    "ModelComparison",
]
