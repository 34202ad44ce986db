"""``train``: train transformers from scratch on the in-context MTD task (MATH.md §1, §5).

The task: pi is drawn once (the same pi as ``estimators`` at this seed and order); every
sequence draws its own lam ~ Dirichlet(alpha). Fresh batches every step (online), the same
batch stream for every model. Loss: next-token cross-entropy on the targets ``y[m:]``
(``log_probs`` rows 0 … T-m-1); AdamW, linear warm-up then cosine decay to 0, gradient
clipping.

Models (``--models``):

- ``md3``  — :class:`mtdmath.MDTransformer`, the disentangled three-layer architecture of
  MATH.md §5 with random learnable weights (the construction is one point of its parameter space);
- ``std3``, ``std5`` — :class:`mtdmath.StandardTransformer` (GPT-style) with 3 and 5 layers.

Sequences are ``T = 65`` tokens long by default so that the prediction after a context of
length L = 64 (position 63) is trained; ``compare`` and ``depth`` evaluate L up to 64.

Each model is saved to ``OUT/checkpoints/<name>.pt`` with its constructor arguments, weights,
pi, alpha, the training config and its loss curve. The loss curve is also compared with the
NLL of the one-step MD construction on the same batches (the "construction" reference line).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtdmath as M
from mtdmath.torch_core import md_predictive_all_prefixes

from . import common as X

MODEL_KINDS = ("md3", "std3", "std5")


@dataclass
class TrainConfig:
    """Configuration of the ``train`` experiment."""

    models: tuple[str, ...] = field(default=MODEL_KINDS, metadata={"help": "models to train: md3 std3 std5"})
    m: int = field(default=2, metadata={"help": "MTD order of the task"})
    S: int = field(default=8, metadata={"help": "vocabulary size"})
    concentration: float = field(default=0.5, metadata={"help": "Dirichlet concentration β of the rows of pi"})
    alpha: float = field(default=1.0, metadata={"help": "Dirichlet prior of lam: alpha = ALPHA · 1_m"})
    T: int = field(default=65, metadata={"help": "training sequence length (contexts up to T-1 are trained)"})
    batch: int = field(default=64, metadata={"help": "sequences per step"})
    steps_md: int = field(default=4000, metadata={"help": "optimiser steps of the disentangled model"})
    steps_std: int = field(default=5000, metadata={"help": "optimiser steps of each standard model"})
    lr_md: float = field(default=1e-2, metadata={"help": "peak learning rate of the disentangled model"})
    lr_std: float = field(default=1e-3, metadata={"help": "peak learning rate of the standard models"})
    wd_md: float = field(default=0.0, metadata={
        "help": "AdamW weight decay of the disentangled model (0: decay would shrink W1 = log pi towards 0)"})
    wd_std: float = field(default=0.01, metadata={"help": "AdamW weight decay of the standard models"})
    warmup: int = field(default=200, metadata={"help": "linear warm-up steps (then cosine decay to 0)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clipping threshold"})
    d_model: int = field(default=32, metadata={"help": "width of the standard models"})
    n_heads: int = field(default=2, metadata={"help": "attention heads per layer of the standard models"})
    log_every: int = field(default=50, metadata={"help": "steps per point of the loss curve (window mean)"})

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        bad = [k for k in self.models if k not in MODEL_KINDS]
        if bad or not self.models:
            raise ValueError(f"models must be a non-empty subset of {MODEL_KINDS} (got {self.models})")
        if self.T < self.m + 2:
            raise ValueError(f"T must be >= m + 2 (got T={self.T}, m={self.m})")
        for name in ("batch", "steps_md", "steps_std", "log_every", "d_model", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")

    @classmethod
    def quick(cls) -> "TrainConfig":
        return cls(T=17, batch=8, steps_md=30, steps_std=20, warmup=5, d_model=16, n_heads=2, log_every=5)


def build_model(kind: str, S: int, m: int, *, max_len: int, d_model: int, n_heads: int,
                generator: torch.Generator | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A fresh model of ``kind`` and the keyword arguments that rebuild it."""
    if kind == "md3":
        init = {"S": S, "m": m}
        return M.MDTransformer(S, m, generator=generator), init
    n_layers = {"std3": 3, "std5": 5}[kind]
    init = {"S": S, "m": m, "n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "max_len": max_len}
    return M.StandardTransformer(**init, generator=generator), init


def load_checkpoint(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`run`; returns (model in float64 on ``device``, checkpoint dict)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    cls = M.MDTransformer if ck["kind"] == "md3" else M.StandardTransformer
    model = cls(**ck["init"])
    model.load_state_dict(ck["state_dict"])
    return model.to(device=device, dtype=torch.float64).eval(), ck


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


def train_one(kind: str, cfg: TrainConfig, pi: np.ndarray, alpha: np.ndarray, *, seed: int,
              device: torch.device, progress: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one model; returns it and its record (init kwargs, loss curve, timings)."""
    from tqdm.auto import tqdm

    idx = MODEL_KINDS.index(kind)
    gen = torch.Generator().manual_seed(X.torch_seed_for(seed, X.KEY_INIT, idx))
    model, init = build_model(kind, cfg.S, cfg.m, max_len=cfg.T, d_model=cfg.d_model, n_heads=cfg.n_heads,
                              generator=gen)
    model = model.to(device)
    is_md = kind == "md3"
    steps, lr, wd = (cfg.steps_md, cfg.lr_md, cfg.wd_md) if is_md else (cfg.steps_std, cfg.lr_std, cfg.wd_std)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(min(cfg.warmup, steps), steps))
    data_rng = X.rng_for(seed, X.KEY_TRAIN, cfg.m)  # the same batch stream for every model
    pi_t = torch.as_tensor(pi, dtype=torch.float64, device=device)
    m = cfg.m
    curve = {"step": [], "loss": [], "construction_nll": [], "lr": []}
    win_loss, win_ref = [], []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=f"train {kind}", disable=not progress)
    for step in bar:
        y_np, _ = M.sample_icl(pi, alpha, cfg.T, cfg.batch, rng=data_rng)
        y = torch.as_tensor(y_np, device=device)
        tgt = y[:, m:, None]  # (B, T-m, 1)
        lp = model.log_probs(y)[:, :-1]  # (B, T-m, S): row r predicts y[m+r]
        loss = -lp.gather(2, tgt).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():  # NLL of the one-step MD construction (MATH.md §5) on the same batch
            p_ref = md_predictive_all_prefixes(y, pi_t, alpha)[:, :-1]
            ref = -torch.log(p_ref.gather(2, tgt)).mean()
        win_loss.append(float(loss.detach()))
        win_ref.append(float(ref))
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            curve["step"].append(step + 1)
            curve["loss"].append(float(np.mean(win_loss)))
            curve["construction_nll"].append(float(np.mean(win_ref)))
            curve["lr"].append(float(sched.get_last_lr()[0]))
            bar.set_postfix(loss=f"{curve['loss'][-1]:.4f}", excess=f"{curve['loss'][-1] - curve['construction_nll'][-1]:+.4f}")
            win_loss, win_ref = [], []
    bar.close()
    seconds = time.perf_counter() - t0
    record = {"kind": kind, "init": init, "steps": steps, "lr": lr, "weight_decay": wd,
              "n_params": sum(p.numel() for p in model.parameters()), "train_time_s": round(seconds, 3),
              "loss_curve": curve}
    return model, record


def run(cfg: TrainConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Train every model of ``cfg.models``; write checkpoints, ``train.json`` and ``train_loss.png``."""
    pi, alpha = X.make_task(seed, cfg.m, cfg.S, cfg.concentration, cfg.alpha)
    records = {}
    ck_dir = out / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    with X.run_meta(seed, device) as meta:
        for kind in cfg.models:
            model, rec = train_one(kind, cfg, pi, alpha, seed=seed, device=device, progress=progress)
            ck = {"kind": kind, "init": rec["init"], "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                  "pi": torch.as_tensor(pi), "alpha": torch.as_tensor(alpha), "config": asdict(cfg), "seed": seed,
                  "loss_curve": rec["loss_curve"], "train_time_s": rec["train_time_s"]}
            torch.save(ck, ck_dir / f"{kind}.pt")
            rec["checkpoint"] = str((ck_dir / f"{kind}.pt"))
            records[kind] = rec
    fig = _plot(records, out / "train_loss.png")
    res = {"experiment": "train", "config": cfg, "seed": seed, "meta": meta, "pi": pi, "alpha": alpha,
           "models": records, "figures": [fig.name]}
    X.write_json(out / "train.json", res)
    return res


def _plot(records: dict[str, Any], path: Path) -> Path:
    plt = X.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = {"md3": "trained_md3", "std3": "std3", "std5": "std5"}
    for kind, rec in records.items():
        label, color, _ = X.STYLE[names[kind]]
        c = rec["loss_curve"]
        axes[0].plot(c["step"], c["loss"], color=color, label=label)
        axes[1].plot(c["step"], np.asarray(c["loss"]) - np.asarray(c["construction_nll"]), color=color, label=label)
    first = next(iter(records.values()))["loss_curve"]
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
    return X.save_figure(fig, path)
