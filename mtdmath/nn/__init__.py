"""Torch parts of mtdmath: the transformers, the on-device in-context task, training and checkpoints.

- :class:`MDTransformer` (the three-layer mirror-descent construction of docs/math.md §5) and
  :class:`StandardTransformer` (GPT baseline): ``forward(tokens) -> logits``, identity hook points
  at every named activation, ``run_with_cache`` and ``run_with_hooks`` (patching, ablation);
- :class:`ICLTask` — batches of the in-context MTD task drawn in torch on the model's device;
- :func:`train` (resumable, with a CSV / TensorBoard log and :class:`HeldOutKL` evaluation),
  :class:`TrainHistory`, :func:`save_checkpoint`, :func:`load_checkpoint` (safetensors + SHA-256);
- :func:`model_from_spec`, :func:`parse_model_spec` — models named by strings such as
  ``md`` or ``std:L=5,d=32,h=2``;
- :func:`effective_step` — the MD step an ``MDTransformer``'s layer 3 implements;
  :func:`step_by_n`, :func:`matched_step` and :func:`fit_adaptive_step` — the step as a function
  of the number of transitions n, for the context-adaptive ``aggregation="softmax_sink"`` model
  (step ``c/(n+m+a)``, :func:`adaptive_params`, docs/math.md §5.6) and for any model's output;
- :func:`head_ablation_hook` and :func:`add_sink_hook` — hooks for ``run_with_hooks`` that ablate
  one head's output or add an attention sink to a head (docs/math.md §5.7).
"""
from .._optional import require

require("torch", extra="torch", feature="mtdmath.nn")

from .probe import AdaptiveFit, EffectiveStep, MatchedStep, StepByN, effective_step, fit_adaptive_step, matched_step, step_by_n
from .task import ICLTask
from .checkpoints import convert_checkpoint, load_checkpoint, save_checkpoint
from .evaluation import HeldOutKL
from .hooks import HookedModule, HookPoint
from .interventions import add_sink_hook, head_ablation_hook
from .training import TrainHistory, lr_schedule, model_from_spec, parse_model_spec, spec_name, train
from .transformer import (AGGREGATIONS, MD_CACHE_NAMES, MD_SINK_CACHE_NAMES, MDConfig, MDTransformer, StandardConfig,
                          StandardTransformer, adaptive_params, md_cache_names, standard_cache_names)

__all__ = ["MDTransformer", "StandardTransformer", "MDConfig", "StandardConfig", "MD_CACHE_NAMES",
           "standard_cache_names", "ICLTask", "train", "TrainHistory", "save_checkpoint", "load_checkpoint",
           "model_from_spec", "parse_model_spec", "spec_name", "lr_schedule", "effective_step", "EffectiveStep",
           "AGGREGATIONS", "MD_SINK_CACHE_NAMES", "md_cache_names", "adaptive_params", "step_by_n", "matched_step",
           "fit_adaptive_step", "StepByN", "MatchedStep", "AdaptiveFit", "HookPoint", "HookedModule", "HeldOutKL",
           "convert_checkpoint", "head_ablation_hook", "add_sink_hook"]
