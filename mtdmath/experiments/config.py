"""The configuration layer of the experiments: constrained field types, the shared task config,
and the command-line parser built from the config dataclasses with jsonargparse.

Every config is a dataclass whose fields carry their constraint in their type (a bounded number
type of :mod:`jsonargparse.typing`, a ``Literal`` of choices, an ``Optional`` of one of those);
:func:`check_fields` validates any config against its annotations, so a config checks its ranges
without code of its own, whether it comes from Python, a YAML file or the command line. Only the
conditions that tie fields together (``T >= m + 2``, heads that divide the width) are written in
a config's ``validate``.

The parser (:func:`build_parser`) gives each subcommand ``--config FILE.yaml``, ``--print_config``
(the full resolved config, which reruns the experiment as ``--config``), and one option per field
under its field name (``--lr_md``) and its dashed alias (``--lr-md``).
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from jsonargparse.typing import restricted_number_type

#: human description of each bounded type (what an error message says the value must be)
DESCRIPTIONS: dict[type, str] = {}

#: the largest allocation a config may ask for before any work: attention scores
#: batch · heads · T² and evaluation arrays sequences · T · S, in float64 elements (8 GiB)
MAX_ELEMENTS = 2**30


def bounded(name: str, base: type, lo: float | None = None, hi: float | None = None, *,
            lo_open: bool = False, hi_open: bool = False, text: str) -> type:
    """A number type that accepts ``lo (<|<=) v (<|<=) hi`` only (NaN never), for field annotations."""
    restr = []
    if lo is not None:
        restr.append((">" if lo_open else ">=", base(lo)))
    if hi is not None:
        restr.append(("<" if hi_open else "<=", base(hi)))
    tp = restricted_number_type(name, base, restr)
    DESCRIPTIONS[tp] = text
    return tp


PositiveFloat = bounded("PositiveFiniteFloat", float, 0.0, math.inf, lo_open=True, hi_open=True,
                        text="a finite number > 0")
NonNegativeFloat = bounded("NonNegativeFiniteFloat", float, 0.0, math.inf, hi_open=True,
                           text="a finite number >= 0")
FiniteFloat = bounded("FiniteFloat", float, -math.inf, math.inf, lo_open=True, hi_open=True, text="a finite number")
#: vocabulary sizes: pi is S × S and the transformers' embeddings S wide
Vocab = bounded("VocabSize", int, 1, 4096, text="an integer in 1 … 4096")
#: MTD orders: exact Bayes sums over C(n+m-1, m-1) count states
Order = bounded("MTDOrder", int, 1, 64, text="an integer in 1 … 64")
#: sequence and context lengths: attention is T × T
Length = bounded("SequenceLength", int, 2, 4096, text="an integer in 2 … 4096")
#: sequences per optimiser step
Batch = bounded("BatchSize", int, 1, 65536, text="an integer in 1 … 65536")
#: counts of sequences (evaluation, tuning sets): at least 2 for a standard error
Sequences = bounded("SequenceCount", int, 2, 10**6, text="an integer in 2 … 1000000")
#: optimiser steps, logging periods, bootstrap resamples
Steps = bounded("StepCount", int, 1, 10**8, text="an integer in 1 … 100000000")
NonNegativeInt = bounded("NonNegativeCount", int, 0, 10**8, text="an integer in 0 … 100000000")
Width = bounded("ModelWidth", int, 1, 8192, text="an integer in 1 … 8192")
Heads = bounded("AttentionHeads", int, 1, 256, text="an integer in 1 … 256")
Layers = bounded("LayerCount", int, 1, 512, text="an integer in 1 … 512")
Seed = bounded("Seed", int, 0, 2**32 - 1, text="an integer in 0 … 4294967295")
Threads = bounded("ThreadCount", int, 1, 1024, text="an integer in 1 … 1024")


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def _check_value(name: str, tp: Any, v: Any) -> None:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _check_value(name, inner[0], v)
        return
    if origin in (tuple, list):
        for x in v:
            _check_value(name, typing.get_args(tp)[0], x)
        return
    if origin is Literal:
        if v not in typing.get_args(tp):
            raise ValueError(f"{name} must be one of {', '.join(map(repr, typing.get_args(tp)))} (got {v!r})")
        return
    if tp in DESCRIPTIONS:
        try:
            ok = not isinstance(v, bool) and tp(v) == v
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{name} must be {DESCRIPTIONS[tp]} (got {v!r})")


def check_fields(cfg: Any) -> None:
    """Validate every field of the dataclass ``cfg`` against its annotated constraint.

    Raises
    ------
    ValueError
        Naming the field and the allowed range, e.g. ``lr_md must be a finite number > 0 (got inf)``.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        # plain builtins: the parser hands out instances of the bounded types (float and int
        # subclasses) that pickle by class, and YAML gives lists where the configs hold tuples
        v = _plain(getattr(cfg, f.name))
        object.__setattr__(cfg, f.name, v)
        _check_value(f.name, hints[f.name], v)


def _plain(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, (list, tuple)):
        return tuple(_plain(x) for x in v)
    if isinstance(v, dict):
        return {k: _plain(x) if not isinstance(x, list) else [_plain(y) for y in x] for k, x in v.items()}
    return v


class Config:
    """Base of the experiment configs: fields checked against their types, then ``validate``."""

    def __post_init__(self) -> None:
        check_fields(self)
        self.validate()

    def validate(self) -> None:
        """Conditions that tie fields together (the ranges are in the field types)."""

    @classmethod
    def quick(cls, **kw: Any) -> Any:
        """The sub-minute smoke config (explicit ``kw`` win)."""
        return cls(**kw)


# --------------------------------------------------------------------------- the shared task
@dataclass
class PriorConfig(Config):
    """The task's vocabulary and priors (docs/math.md §1), shared by every experiment that draws a task.

    Examples
    --------
    >>> from mtdmath import experiments
    >>> experiments.PriorConfig(S=4, alpha=2.0)
    PriorConfig(S=4, concentration=0.5, alpha=2.0)
    """

    S: Vocab = field(default=8, metadata={"help": "vocabulary size"})
    concentration: PositiveFloat = field(default=0.5, metadata={
        "help": "Dirichlet concentration β of the rows of pi: rows ~ Dirichlet(β·1_S)"})
    alpha: PositiveFloat = field(default=1.0, metadata={"help": "Dirichlet prior of lam: alpha = ALPHA · 1_m"})


@dataclass
class TaskConfig(PriorConfig):
    """The in-context task of one order m and sequence length T (docs/math.md §1).

    Examples
    --------
    >>> from mtdmath import experiments
    >>> experiments.TaskConfig(S=4, m=3, T=33)
    TaskConfig(S=4, concentration=0.5, alpha=1.0, m=3, T=33)
    """

    m: Order = field(default=2, metadata={"help": "MTD order of the task"})
    T: Length = field(default=65, metadata={"help": "training sequence length (contexts up to T-1 are trained)"})

    def validate(self) -> None:
        if self.T < self.m + 2:
            raise ValueError(f"T must be >= m + 2 (got T={self.T}, m={self.m})")


def check_attention_size(*, batch: int, T: int, heads: int, name: str = "batch") -> None:
    """Refuse a config whose attention scores (batch · heads · T²) exceed :data:`MAX_ELEMENTS`."""
    n = batch * heads * T * T
    if n > MAX_ELEMENTS:
        raise ValueError(f"{name} × heads × T² = {batch} × {heads} × {T}² = {n:.3g} attention scores exceeds "
                         f"{MAX_ELEMENTS:.3g}: lower {name} or T")


def check_heads(spec: str, *, d_model: int, n_heads: int, n_layers: int = 3) -> None:
    """A standard model's heads must divide its width (checked per spec, before any allocation)."""
    from mtdmath.nn import parse_model_spec

    kind, kw = parse_model_spec(spec)
    if kind == "std":
        d, h = kw.get("d_model", d_model), kw.get("n_heads", n_heads)
        if d % h:
            raise ValueError(f"n_heads={h} does not divide d_model={d} (model spec {spec!r})")


# --------------------------------------------------------------------------- errors in one line
_KEY = re.compile(r'Parser key "([^"]+)"')
_TYPE = re.compile(r"Not of type (\w+)")
_GIVEN = re.compile(r"Given value: (.*)|Got value: (.*)|Not of type \w+: (\S+) does not")


def one_line(msg: str) -> str:
    """A jsonargparse error as one line: ``lr_md must be a finite number > 0 (got inf)``."""
    key = _KEY.search(msg)
    given = _GIVEN.search(msg)
    value = next((g for g in given.groups() if g), None) if given else None
    tp = _TYPE.search(msg)
    if key and tp:
        desc = next((d for t, d in DESCRIPTIONS.items() if t.__name__ == tp.group(1)), None)
        if desc:
            return f"{key.group(1)} must be {desc}" + (f" (got {value.strip()})" if value else "")
    lit = re.search(r"Expected a typing\.Literal\[(.*?)\]", msg)
    if key and lit:
        return f"{key.group(1)} must be one of {lit.group(1)}" + (f" (got {value.strip()})" if value else "")
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    return "; ".join(lines)


__all__ = ["Config", "PriorConfig", "TaskConfig", "check_fields", "bounded", "one_line", "PositiveFloat",
           "NonNegativeFloat", "FiniteFloat", "Vocab", "Order", "Length", "Batch", "Sequences", "Steps",
           "NonNegativeInt", "Width", "Heads", "Layers", "Seed", "Threads", "Optional", "Literal"]
