"""``train``: train transformers from scratch on the in-context MTD task (docs/math.md §1, §5).

The task: pi is drawn once (the same pi as ``estimators`` at this seed and order); every
sequence draws its own lam ~ Dirichlet(alpha). Fresh batches every step (online), drawn in torch
on the training device by :class:`mtdmath.nn.ICLTask`, the same batch stream for every model.
Training is :func:`mtdmath.nn.train`: next-token cross-entropy on the targets ``y[m:]``, AdamW,
linear warm-up then cosine decay to 0, gradient clipping.

Models (``--models``) are specs (:func:`mtdmath.nn.model_from_spec`):

- ``md`` (alias ``md3``) — :class:`mtdmath.nn.MDTransformer`, the disentangled three-layer architecture of
  docs/math.md §5 with random learnable weights (the construction is one point of its parameter space);
- ``std:L=5,d=32,h=2`` — :class:`mtdmath.nn.StandardTransformer` (GPT-style) of any depth L, width d
  and heads h (omitted keys: ``--d-model``, ``--n-heads``); ``std3``, ``std5`` are ``std:L=3``, ``std:L=5``.

Sequences are ``T = 65`` tokens long by default so that the prediction after a context of
length L = 64 (position 63) is trained; ``compare`` and ``depth`` evaluate L up to 64.

Each model is saved with :func:`mtdmath.nn.save_checkpoint` to ``OUT/checkpoints/<name>.safetensors``
(``md``, ``std{L}`` or ``std{L}_d{D}_h{H}``): weights, config, the task (pi, alpha, T), its loss
curve. The loss curve is also compared with the NLL of the one-step MD construction on the same
batches (the "construction" reference line).
"""
from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtdmath.nn import ICLTask, model_from_spec, parse_model_spec, save_checkpoint, spec_name
from mtdmath.nn import train as nn_train
from mtdmath import md_predictive_all_prefixes

from . import common as exp_common
from .config import (Batch, Heads, NonNegativeFloat, NonNegativeInt, PositiveFloat, Steps, TaskConfig, Width,
                     check_attention_size, check_heads)

DEFAULT_MODELS = ("md", "std:L=3", "std:L=5")


@dataclass
class TrainConfig(TaskConfig):
    """Configuration of the ``train`` experiment (the task fields S, concentration, alpha, m, T are
    :class:`~mtdmath.experiments.config.TaskConfig`'s).

    Examples
    --------
    >>> from mtdmath import experiments
    >>> cfg = experiments.TrainConfig.quick(models=('md', 'std:L=2'))
    >>> cfg.names(), cfg.T
    (['md', 'std2'], 17)
    """

    models: tuple[str, ...] = field(default=DEFAULT_MODELS, metadata={
        "help": "model specs: md (the disentangled 3-layer model), std:L=5,d=32,h=2 (a standard model of any "
                "depth L, width d, heads h; omitted keys: --d-model, --n-heads); std3/std5 = std:L=3/std:L=5"})
    batch: Batch = field(default=64, metadata={"help": "sequences per step"})
    steps_md: Steps = field(default=4000, metadata={"help": "optimiser steps of the disentangled model"})
    steps_std: Steps = field(default=5000, metadata={"help": "optimiser steps of each standard model"})
    lr_md: PositiveFloat = field(default=1e-2, metadata={"help": "peak learning rate of the disentangled model"})
    lr_std: PositiveFloat = field(default=1e-3, metadata={"help": "peak learning rate of the standard models"})
    wd_md: NonNegativeFloat = field(default=0.0, metadata={
        "help": "AdamW weight decay of the disentangled model (0: decay would shrink W1 = log pi towards 0)"})
    wd_std: NonNegativeFloat = field(default=0.01, metadata={"help": "AdamW weight decay of the standard models"})
    warmup: NonNegativeInt = field(default=200, metadata={"help": "linear warm-up steps (then cosine decay to 0)"})
    grad_clip: PositiveFloat = field(default=1.0, metadata={"help": "gradient-norm clipping threshold"})
    d_model: Width = field(default=32, metadata={"help": "width of the standard models whose spec omits d"})
    n_heads: Heads = field(default=2, metadata={
        "help": "attention heads per layer of the standard models whose spec omits h"})
    log_every: Steps = field(default=50, metadata={"help": "steps per point of the loss curve (window mean)"})
    reference: bool = field(default=True, metadata={
        "help": "also log the one-step MD construction's NLL on every batch (the reference line; costs 15-35 %% "
                "of the CPU step time)"})

    def validate(self) -> None:
        super().validate()
        if not self.models:
            raise ValueError("models must name at least one model spec (e.g. md std:L=5,d=32,h=2)")
        for spec in self.models:
            check_heads(spec, d_model=self.d_model, n_heads=self.n_heads)  # also a ValueError for a bad spec
        names = self.names()
        if len(set(names)) != len(names):
            raise ValueError(f"models must be distinct (got {self.models}, i.e. {names})")
        check_attention_size(batch=self.batch, T=self.T, heads=max(
            [parse_model_spec(s)[1].get("n_heads", self.n_heads) for s in self.models] + [1]))

    def names(self) -> list[str]:
        """Checkpoint names of the models, in order (``md``, ``std3``, ``std5_d64_h4`` …)."""
        return [spec_name(s, d_model=self.d_model, n_heads=self.n_heads) for s in self.models]

    @classmethod
    def quick(cls, **kw: Any) -> "TrainConfig":
        base = dict(T=17, batch=8, steps_md=30, steps_std=20, warmup=5, d_model=16, n_heads=2, log_every=5)
        return cls(**(base | kw))


@dataclass
class ModelRecord:
    """One trained model of ``train``."""

    name: str  #: checkpoint name (``md``, ``std5``, ``std7_d64_h4``)
    spec: str  #: the model spec it was built from
    model_config: dict[str, Any]  #: the model's own config (layers, width, heads, …)
    steps: int  #: optimiser steps
    lr: float  #: peak learning rate
    weight_decay: float  #: AdamW weight decay
    n_params: int  #: trainable parameters
    train_time_s: float  #: wall-clock training time [s]
    steps_per_s: float  #: optimiser steps per second
    #: lists ``step``, ``loss`` [nats/token] (window means), ``lr``, ``time`` [s], ``construction_nll``
    #: [nats/token]; the float ``steps_per_s`` (:meth:`mtdmath.nn.TrainHistory.as_dict`)
    loss_curve: dict[str, Any]
    checkpoint: str = ""  #: the checkpoint file


@dataclass
class TrainResult(exp_common.Result):
    """What ``train`` did (``train.json``)."""

    config: TrainConfig
    seed: int  #: base seed (pi, batches, initial weights)
    meta: dict[str, Any]  #: versions, git state, machine, run_time_s [s]
    pi: np.ndarray  #: the task's transition matrix (S, S)
    alpha: np.ndarray  #: the Dirichlet prior of lam (m,)
    models: dict[str, ModelRecord]  #: per checkpoint name
    figures: list[str]  #: PNG files written next to the JSON
    experiment: str = field(default="train", init=False)


def init_seed(seed: int, name: str) -> int:
    """Seed of a model's initial weights: a stream per (seed, model name), stable across model lists."""
    return exp_common.torch_seed_for(seed, exp_common.KEY_INIT, zlib.crc32(name.encode()))


def train_one(spec: str, cfg: TrainConfig, task: ICLTask, *, seed: int, device: torch.device,
              progress: bool) -> tuple[torch.nn.Module, ModelRecord]:
    """Train one model; returns it and its record (spec, config, loss curve, timings)."""
    name = spec_name(spec, d_model=cfg.d_model, n_heads=cfg.n_heads)
    gen = torch.Generator().manual_seed(init_seed(seed, name))
    model = model_from_spec(spec, cfg.S, cfg.m, max_len=cfg.T, d_model=cfg.d_model, n_heads=cfg.n_heads,
                            generator=gen)
    is_md = parse_model_spec(spec)[0] == "md"
    steps, lr, wd = (cfg.steps_md, cfg.lr_md, cfg.wd_md) if is_md else (cfg.steps_std, cfg.lr_std, cfg.wd_std)
    callbacks = []
    if cfg.reference:
        pi_t = task.pi.to(device)
        m = cfg.m

        @torch.no_grad()
        def construction_nll(*, tokens: torch.Tensor, **_: Any) -> dict[str, float]:
            # NLL of the one-step MD construction (docs/math.md §5) on the same batch
            p_ref = md_predictive_all_prefixes(tokens, pi_t, task.alpha)[:, :-1]
            return {"construction_nll": float(-torch.log(p_ref.gather(2, tokens[:, m:, None])).mean())}

        callbacks.append(construction_nll)
    data_seed = exp_common.torch_seed_for(seed, exp_common.KEY_TRAIN, cfg.m)  # the same batch stream for every model
    t0 = time.perf_counter()
    hist = nn_train(model, task, steps=steps, batch_size=cfg.batch, lr=lr, schedule="cosine",
                    warmup=min(cfg.warmup, steps), weight_decay=wd, grad_clip=cfg.grad_clip, device=device,
                    seed=data_seed, log_every=cfg.log_every, callbacks=callbacks, progress=progress,
                    desc=f"train {name}")
    seconds = time.perf_counter() - t0
    curve = hist.as_dict()
    record = ModelRecord(name=name, spec=spec, model_config=asdict(model.config), steps=steps, lr=lr,
                         weight_decay=wd, n_params=sum(p.numel() for p in model.parameters()),
                         train_time_s=round(seconds, 3), steps_per_s=round(hist.steps_per_s, 3), loss_curve=curve)
    return model, record


def run(cfg: TrainConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> TrainResult:
    """Train every model of ``cfg.models``; write checkpoints, ``train.json`` and ``train_loss.png``.

    Examples
    --------
    >>> import torch
    >>> from pathlib import Path
    >>> from mtdmath import experiments
    >>> cfg = experiments.TrainConfig.quick(models=('md', 'std:L=2'))
    >>> res = experiments.run_train(cfg, Path('runs/train'), seed=0, device=torch.device('cpu'), progress=False)  # doctest: +SKIP
    >>> sorted(p.name for p in Path('runs/train/checkpoints').iterdir())  # doctest: +SKIP
    ['md.safetensors', 'std2.safetensors']
    """
    pi, alpha = exp_common.make_task(seed, cfg.m, cfg.S, cfg.concentration, cfg.alpha)
    task = ICLTask(pi, alpha, cfg.T, device=device)
    records = {}
    ck_dir = out / "checkpoints"
    with exp_common.run_meta(seed, device) as meta:
        for spec in cfg.models:
            model, rec = train_one(spec, cfg, task, seed=seed, device=device, progress=progress)
            path = save_checkpoint(ck_dir / f"{rec.name}{exp_common.CHECKPOINT_SUFFIX}", model, task=task, history=rec.loss_curve,
                                   extra={"seed": seed, "spec": spec, "train_config": asdict(cfg),
                                          "train_time_s": rec.train_time_s})
            rec.checkpoint = str(path)
            records[rec.name] = rec
    fig = _plot(records, out / "train_loss.png")
    res = TrainResult(config=cfg, seed=seed, meta=meta, pi=pi, alpha=alpha, models=records, figures=[fig.name])
    res.write(out / "train.json")
    return res


def _plot(records: dict[str, ModelRecord], path: Path) -> Path:
    plt = exp_common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for kind, rec in records.items():
        label, color, _ = exp_common.style(kind)
        c = rec.loss_curve
        axes[0].plot(c["step"], c["loss"], color=color, label=label)
        if "construction_nll" in c:
            axes[1].plot(c["step"], np.asarray(c["loss"]) - np.asarray(c["construction_nll"]), color=color,
                         label=label)
    first = next(iter(records.values())).loss_curve
    if "construction_nll" in first:
        axes[0].plot(first["step"], first["construction_nll"], ":", color="tab:cyan", lw=2,
                     label="one-step MD construction (same batches)")
    axes[0].set_ylabel("training NLL [nats/token]")
    axes[1].axhline(0.0, color="tab:cyan", ls=":", lw=2)
    axes[1].set_ylabel("NLL − construction NLL")
    axes[1].set_yscale("symlog", linthresh=1e-2)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Training loss (window means); reference: the one-step MD construction on the same batches")
    fig.tight_layout()
    return exp_common.save_figure(fig, path)
