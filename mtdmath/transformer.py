"""Compatibility module: the transformers live in :mod:`mtdmath.nn.transformer`.

``from mtdmath.transformer import MDTransformer`` keeps working.
"""
from .nn.transformer import (MD_CACHE_NAMES, MDConfig, MDTransformer, StandardConfig, StandardTransformer,
                             standard_cache_names)

__all__ = ["MDConfig", "StandardConfig", "MDTransformer", "StandardTransformer", "MD_CACHE_NAMES",
           "standard_cache_names"]
