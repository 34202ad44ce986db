"""Torch parts of mtdmath: the transformers, the on-device in-context task, training and checkpoints.

- :class:`MDTransformer` (the three-layer mirror-descent construction of docs/math.md §5) and
  :class:`StandardTransformer` (GPT baseline), both with a named activation cache
  (``forward(tokens, return_cache=True)``);
- :class:`ICLTask` — batches of the in-context MTD task drawn in torch on the model's device;
- :func:`train`, :class:`TrainHistory`, :func:`save_checkpoint`, :func:`load_checkpoint`;
- :func:`model_from_spec`, :func:`parse_model_spec` — models named by strings such as
  ``md`` or ``std:L=5,d=32,h=2``;
- :func:`effective_step` — the MD step an ``MDTransformer``'s layer 3 implements;
  :func:`step_by_n`, :func:`matched_step` and :func:`fit_adaptive_step` — the step as a function
  of the number of transitions n, for the context-adaptive ``aggregation="softmax_sink"`` model
  (step ``c/(n+m+a)``, :func:`adaptive_params`, docs/math.md §5.6) and for any model's output.
"""
from .probe import AdaptiveFit, EffectiveStep, StepByN, effective_step, fit_adaptive_step, matched_step, step_by_n
from .task import ICLTask
from .training import (TrainHistory, load_checkpoint, lr_schedule, model_from_spec, parse_model_spec, save_checkpoint,
                    spec_name, train)
from .transformer import (AGGREGATIONS, MD_CACHE_NAMES, MD_SINK_CACHE_NAMES, MDConfig, MDTransformer, StandardConfig,
                          StandardTransformer, adaptive_params, md_cache_names, standard_cache_names)

__all__ = ["MDTransformer", "StandardTransformer", "MDConfig", "StandardConfig", "MD_CACHE_NAMES",
           "standard_cache_names", "ICLTask", "train", "TrainHistory", "save_checkpoint", "load_checkpoint",
           "model_from_spec", "parse_model_spec", "spec_name", "lr_schedule", "effective_step", "EffectiveStep",
           "AGGREGATIONS", "MD_SINK_CACHE_NAMES", "md_cache_names", "adaptive_params", "step_by_n", "matched_step",
           "fit_adaptive_step", "StepByN", "AdaptiveFit"]
