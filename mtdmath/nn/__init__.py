"""Torch parts of mtdmath: the transformers, the on-device in-context task, training and checkpoints.

- :class:`MDTransformer` (the three-layer mirror-descent construction of docs/math.md §5) and
  :class:`StandardTransformer` (GPT baseline), both with a named activation cache
  (``forward(tokens, return_cache=True)``);
- :class:`ICLTask` — batches of the in-context MTD task drawn in torch on the model's device;
- :func:`train`, :class:`TrainHistory`, :func:`save_checkpoint`, :func:`load_checkpoint`;
- :func:`model_from_spec`, :func:`parse_model_spec` — models named by strings such as
  ``md`` or ``std:L=5,d=32,h=2``;
- :func:`effective_step` — the MD step an ``MDTransformer``'s layer 3 implements.
"""
from .probe import EffectiveStep, effective_step
from .task import ICLTask
from .training import (TrainHistory, load_checkpoint, lr_schedule, model_from_spec, parse_model_spec, save_checkpoint,
                    spec_name, train)
from .transformer import (MD_CACHE_NAMES, MDConfig, MDTransformer, StandardConfig, StandardTransformer,
                          standard_cache_names)

__all__ = ["MDTransformer", "StandardTransformer", "MDConfig", "StandardConfig", "MD_CACHE_NAMES",
           "standard_cache_names", "ICLTask", "train", "TrainHistory", "save_checkpoint", "load_checkpoint",
           "model_from_spec", "parse_model_spec", "spec_name", "lr_schedule", "effective_step", "EffectiveStep"]
