"""Training on the in-context MTD task: :func:`train`, model specs, checkpoints.

The loss is the next-token cross-entropy of ``tokens[:, m:]`` on the model's ``log_probs`` rows
``0 … T-m-1`` (the last row predicts beyond the sequence), averaged over batch and positions.
Any ``nn.Module`` with the library's forward contract trains: an attribute ``m`` and a method
``log_probs(tokens) -> (B, T-m+1, S)``.

Model specs name a model in one string (used by the CLI):

- ``md`` (alias ``md3``) — :class:`~mtdmath.nn.transformer.MDTransformer`;
- ``mdsink`` (alias ``md:agg=softmax_sink``) — the same with layer 2 as softmax attention with an
  attention sink (``aggregation="softmax_sink"``: a learnable sink score and layer-3 scale, the
  context-adaptive step c/(n+m+a) of docs/math.md §5.6);
- ``std:L=5,d=32,h=2`` — :class:`~mtdmath.nn.transformer.StandardTransformer` with ``n_layers``
  L, ``d_model`` d and ``n_heads`` h (keys also by their long names; omitted ones take the
  defaults passed to :func:`model_from_spec`); ``std3`` / ``std5`` are aliases of ``std:L=3`` /
  ``std:L=5``.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .. import _validate as V
from .task import ICLTask
from .transformer import MDConfig, MDTransformer, StandardConfig, StandardTransformer

__all__ = ["train", "TrainHistory", "save_checkpoint", "load_checkpoint", "parse_model_spec", "model_from_spec",
           "spec_name", "lr_schedule"]

SCHEDULES = ("cosine", "constant", "linear")


# ----------------------------------------------------------------------------- schedules
def lr_schedule(schedule: str, *, steps: int, warmup: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at step ``k`` (0-based): linear warm-up over ``warmup``
    steps, then ``cosine`` decay to 0, ``linear`` decay to 0, or ``constant``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES} (got {schedule!r})")

    def f(k: int) -> float:
        if k < warmup:
            return (k + 1) / warmup
        frac = min(1.0, (k - warmup) / max(1, steps - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * frac))
        if schedule == "linear":
            return 1.0 - frac
        return 1.0

    return f


# ----------------------------------------------------------------------------- history
@dataclass
class TrainHistory:
    """What :func:`train` records, one entry per logged point (every ``log_every`` steps and the last).

    ``loss`` is the mean training loss over the steps since the previous point (nats/token),
    ``lr`` the learning rate after the point's last step, ``time`` the wall-clock seconds since
    the start; ``extra`` holds the window means of what the callbacks returned.
    """

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    steps_per_s: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "loss": self.loss, "lr": self.lr, "time": self.time, **self.extra,
                "steps_per_s": self.steps_per_s}


def _nll(model: nn.Module, y: torch.Tensor) -> torch.Tensor:
    m = int(model.m)
    lp = model.log_probs(y)[:, :-1]  # (B, T-m, S): row r predicts y[m+r]
    return -lp.gather(2, y[:, m:, None]).mean()


def train(model: nn.Module, task: ICLTask, *, steps: int, batch_size: int = 64, lr: float = 1e-3,
          schedule: str = "cosine", warmup: int = 0, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
          device: torch.device | str | None = None, seed: int = 0, log_every: int = 50,
          callbacks: Sequence[Callable[..., dict[str, float] | None]] | None = None,
          progress: bool = True, desc: str = "train") -> TrainHistory:
    """Train ``model`` in place on fresh batches of ``task`` (online), with AdamW.

    Parameters
    ----------
    model : nn.Module
        Has ``m`` and ``log_probs(tokens) -> (B, T-m+1, S)``; its ``m`` must equal ``task.m``.
    task : ICLTask
        Batches are drawn on ``device`` by a ``torch.Generator`` seeded with ``seed``.
    steps, batch_size : int
        Optimiser steps and sequences per step.
    lr, schedule, warmup :
        Peak learning rate and its schedule (:func:`lr_schedule`: ``cosine``, ``linear``,
        ``constant``, after ``warmup`` linear warm-up steps).
    weight_decay : float
        AdamW decoupled weight decay.
    grad_clip : float or None
        Gradient-norm clipping threshold (None: no clipping).
    device : torch device, optional
        Where the model is moved and batches are drawn (default: the model's device).
    seed : int
        Seed of the data generator (the initial weights are the model's own).
    log_every : int
        Steps per logged point.
    callbacks : sequence of callables, optional
        Each is called after every optimiser step as ``cb(step=k, model=model, tokens=y, lam=lam,
        loss=float)`` (k is 1-based; tokens (B, T), lam (B, m) on the device). A callback that
        returns a dict of floats has them averaged over the window and logged in
        ``history.extra`` under their keys.
    progress : bool
        Show a tqdm bar with the current loss.

    Returns
    -------
    TrainHistory
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module) or not hasattr(model, "log_probs") or not hasattr(model, "m"):
        raise ValueError(f"model must be an nn.Module with attributes m and log_probs (got {type(model).__name__})")
    if not isinstance(task, ICLTask):
        raise ValueError(f"task must be an ICLTask (got {type(task).__name__})")
    if int(model.m) != task.m:
        raise ValueError(f"task has order m = {task.m} but the model has m = {model.m}")
    steps = V.check_int(steps, "steps", minimum=1)
    batch_size = V.check_int(batch_size, "batch_size", minimum=1)
    log_every = V.check_int(log_every, "log_every", minimum=1)
    warmup = V.check_int(warmup, "warmup", minimum=0)
    lr = V.check_float(lr, "lr", positive=True)
    weight_decay = V.check_float(weight_decay, "weight_decay", nonnegative=True)
    if grad_clip is not None:
        grad_clip = V.check_float(grad_clip, "grad_clip", positive=True)
    factor = lr_schedule(schedule, steps=steps, warmup=min(warmup, steps))
    seed = V.check_int(seed, "seed", minimum=0)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model.to(device).train()
    task = task.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    hist = TrainHistory()
    win: dict[str, list[float]] = {"loss": []}
    t0 = time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress)
    for k in bar:
        y, lam = task.sample(batch_size, generator=gen)
        loss = _nll(model, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        lv = float(loss.detach())
        win["loss"].append(lv)
        for cb in callbacks or ():
            extra = cb(step=k, model=model, tokens=y, lam=lam, loss=lv)
            for key, v in (extra or {}).items():
                win.setdefault(key, []).append(float(v))
        if k % log_every == 0 or k == steps:
            hist.step.append(k)
            hist.loss.append(sum(win["loss"]) / len(win["loss"]))
            hist.lr.append(float(sched.get_last_lr()[0]))
            hist.time.append(round(time.perf_counter() - t0, 4))
            for key, vals in win.items():
                if key != "loss":
                    hist.extra.setdefault(key, []).append(sum(vals) / len(vals))
            bar.set_postfix(loss=f"{hist.loss[-1]:.4f}")
            win = {"loss": []}
    bar.close()
    hist.steps_per_s = steps / max(time.perf_counter() - t0, 1e-12)
    model.eval()
    return hist


# ----------------------------------------------------------------------------- model specs
_STD_KEYS = {"L": "n_layers", "n_layers": "n_layers", "d": "d_model", "d_model": "d_model",
             "h": "n_heads", "n_heads": "n_heads"}
_ALIASES = {"md3": "md", "std3": "std:L=3", "std5": "std:L=5", "mdsink": "md:agg=softmax_sink",
            "md:agg=sum": "md"}


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"md"`` -> ("md", {}); ``"mdsink"`` / ``"md:agg=softmax_sink"`` -> ("md", {"aggregation":
    "softmax_sink"}); ``"std:L=5,d=32,h=2"`` -> ("std", {"n_layers": 5, "d_model": 32, "n_heads": 2}).

    Raises a ValueError naming ``model spec`` for anything else.
    """
    if not isinstance(spec, str):
        raise ValueError(f"model spec must be a string such as 'md' or 'std:L=5,d=32,h=2' (got {spec!r})")
    s = _ALIASES.get(spec.strip(), spec.strip())
    if s == "md":
        return "md", {}
    if s == "md:agg=softmax_sink":
        return "md", {"aggregation": "softmax_sink"}
    m = re.fullmatch(r"std(?::(.*))?", s)
    if not m:
        raise ValueError(f"model spec {spec!r} is not 'md', 'mdsink' or 'std:L=..,d=..,h=..' (e.g. "
                         f"'std:L=5,d=32,h=2')")
    kw: dict[str, int] = {}
    for part in filter(None, (m.group(1) or "").split(",")):
        key, eq, val = part.partition("=")
        if not eq or key.strip() not in _STD_KEYS:
            raise ValueError(f"model spec {spec!r}: {part!r} is not one of L=, d=, h= (n_layers, d_model, n_heads)")
        try:
            v = int(val)
        except ValueError:
            raise ValueError(f"model spec {spec!r}: {key.strip()} must be an integer (got {val!r})") from None
        if v < 1:
            raise ValueError(f"model spec {spec!r}: {key.strip()} must be >= 1 (got {v})")
        kw[_STD_KEYS[key.strip()]] = v
    return "std", kw


def model_from_spec(spec: str, S: int, m: int, *, max_len: int, d_model: int = 32, n_heads: int = 2,
                    n_layers: int = 3, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> nn.Module:
    """A fresh model of ``spec`` (see the module docstring) for vocabulary S and order m.

    ``d_model``, ``n_heads``, ``n_layers`` are the defaults of a ``std`` spec that omits them;
    ``max_len`` is the longest context of a standard model. Raises ValueError on a bad spec.
    """
    kind, kw = parse_model_spec(spec)
    if kind == "md":
        return MDTransformer(S, m, dtype=dtype, device=device, generator=generator, **kw)
    args = {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads} | kw
    return StandardTransformer(S, m, **args, max_len=max_len, generator=generator, dtype=dtype, device=device)


def spec_name(model_or_spec: nn.Module | str, **defaults: int) -> str:
    """A file-safe canonical name: ``md3`` for the disentangled model, ``mdsink`` for it with the
    softmax-sink layer 2, ``std{L}`` for a standard model of width and heads equal to ``defaults``
    (``d_model``, ``n_heads``), else ``std{L}_d{D}_h{H}``."""
    if isinstance(model_or_spec, str):
        kind, kw = parse_model_spec(model_or_spec)
        if kind == "md":
            return "mdsink" if kw.get("aggregation") == "softmax_sink" else "md3"
        cfg = {"n_layers": 3, "d_model": 32, "n_heads": 2} | defaults | kw
    elif isinstance(model_or_spec, MDTransformer):
        return "mdsink" if model_or_spec.aggregation == "softmax_sink" else "md3"
    else:
        cfg = asdict(model_or_spec.config)
    base = {"d_model": 32, "n_heads": 2} | {k: v for k, v in defaults.items() if k in ("d_model", "n_heads")}
    if cfg["d_model"] == base["d_model"] and cfg["n_heads"] == base["n_heads"]:
        return f"std{cfg['n_layers']}"
    return f"std{cfg['n_layers']}_d{cfg['d_model']}_h{cfg['n_heads']}"


# ----------------------------------------------------------------------------- checkpoints
_CLASSES = {"MDTransformer": (MDTransformer, MDConfig), "StandardTransformer": (StandardTransformer, StandardConfig)}
_FORMAT = 2


def save_checkpoint(path: str | Path, model: nn.Module, *, task: ICLTask | None = None,
                    history: TrainHistory | dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (weights, config, dtype), its ``task`` (pi, alpha, T), ``history`` and ``extra``.

    The file loads with ``torch.load(..., weights_only=True)``: only tensors, numbers, strings,
    lists and dicts. :func:`load_checkpoint` rebuilds the same model bit for bit.
    """
    name = type(model).__name__
    if name not in _CLASSES or not isinstance(model, _CLASSES[name][0]):
        raise ValueError(f"model must be an MDTransformer or a StandardTransformer (got {type(model).__name__})")
    if task is not None and not isinstance(task, ICLTask):
        raise ValueError(f"task must be an ICLTask or None (got {type(task).__name__})")
    if isinstance(history, TrainHistory):
        history = history.as_dict()
    dtype = next(model.parameters()).dtype
    ck = {"format": _FORMAT, "class": name, "config": asdict(model.config), "dtype": str(dtype).removeprefix("torch."),
          "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
          "task": task.to_dict() if task is not None else None, "history": history, "extra": extra or {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, path)
    return path


def load_checkpoint(path: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_checkpoint`.

    Parameters
    ----------
    path : file
    device, dtype : optional
        Where and in which dtype to put the model (default: CPU, the saved dtype).

    Returns
    -------
    model : nn.Module in eval mode
    info : dict with ``task`` (an ICLTask on ``device``, or None), ``history``, ``extra``,
        ``config`` and ``class``.

    Checkpoints of the earlier ``train`` experiment (keys ``kind``/``init``/``pi``/``alpha``) load too.
    """
    if not isinstance(path, (str, Path)):
        raise ValueError(f"path must be a file path (got {path!r})")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: the checkpoint {path} does not exist")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if "format" not in ck and "kind" in ck:  # the first format: one dict per trained model kind
        name = "MDTransformer" if ck["kind"] == "md3" else "StandardTransformer"
        cfg = dict(ck["init"])
        task_d = {"pi": ck["pi"], "alpha": ck["alpha"], "T": ck.get("config", {}).get("T", cfg.get("max_len", 65))}
        ck = {"class": name, "config": cfg, "dtype": "float32", "state_dict": ck["state_dict"], "task": task_d,
              "history": ck.get("loss_curve"), "extra": {k: ck[k] for k in ("seed", "config", "train_time_s") if k in ck}}
    if ck.get("class") not in _CLASSES:
        raise ValueError(f"checkpoint: {path} holds an unknown model class {ck.get('class')!r}")
    cls, _ = _CLASSES[ck["class"]]
    cfg = dict(ck["config"])
    saved_dtype = getattr(torch, ck["dtype"])
    if cls is MDTransformer:
        # checkpoints saved before the aggregation option have none: the "sum" model
        model = MDTransformer(cfg["S"], cfg["m"], dtype=saved_dtype, aggregation=cfg.get("aggregation", "sum"))
    else:
        model = StandardTransformer(**cfg, dtype=saved_dtype)
    model.load_state_dict(ck["state_dict"])
    model = model.to(device=device, dtype=dtype or saved_dtype).eval()
    task = ICLTask.from_dict(ck["task"], device=device) if ck.get("task") is not None else None
    return model, {"task": task, "history": ck.get("history"), "extra": ck.get("extra", {}), "config": cfg,
                   "class": ck["class"]}
