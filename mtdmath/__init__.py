"""mtdmath: numerically verified mathematics of mixture transition distribution (MTD) models.

Implements, verifies and extends "Transformers Learn Latent Mixture Models In-Context via
Mirror Descent" (D'Angelo & Flammarion, ICLR 2026). The formulas are those of MATH.md.
"""
from .bayes import log_evidence, n_states, posterior_mean, posterior_mean_mc
from .estimators import em, eta_bayes, k_step_md, kkt_gap, mirror_descent, mle, one_step_md
from .fit import MTDFit, fit, select_order
from .likelihood import gradient, hessian, kl, log_likelihood, responsibilities
from .model import lag_factors, predictive, random_transition_matrix, sample, sample_icl
from .prefix import md_predictive_all_prefixes
from . import torch_core
from .transformer import MDTransformer, StandardTransformer

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
    "k_step_md",
    "posterior_mean",
    "log_evidence",
    "posterior_mean_mc",
    "md_predictive_all_prefixes",
    "n_states",
    "torch_core",
    "MDTransformer",
    "StandardTransformer",
    "fit",
    "select_order",
    "MTDFit",
]
