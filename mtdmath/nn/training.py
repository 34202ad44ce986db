"""Training on the in-context MTD task: :func:`train` (resumable, logged) and model specs.

The loss is the next-token cross-entropy of ``tokens[:, m:]`` on the model's logits rows
``0 … T-m-1`` (the last row predicts beyond the sequence), averaged over batch and positions.
Any ``nn.Module`` with the library's forward contract trains: an attribute ``m`` and
``forward(tokens) -> logits (B, T-m+1, S)``. The loss calls the module itself, so a
``torch.compile``'d module trains compiled. Checkpoints are in :mod:`mtdmath.nn.checkpoints`.

Model specs name a model in one string (used by the CLI):

- ``md`` (alias ``md3``) — :class:`~mtdmath.nn.transformer.MDTransformer` (named ``md``: ``md3`` was its
  name before, and ``md1`` … ``md9`` name the k-step mirror-descent curves of the experiments);
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
import torch.nn.functional as F
from torch import nn

from .. import _validate as validate
from .task import ICLTask
from .transformer import MDTransformer, StandardTransformer

__all__ = ["train", "TrainHistory", "parse_model_spec", "model_from_spec", "spec_name", "lr_schedule"]

SCHEDULES = ("cosine", "constant", "linear")


# ----------------------------------------------------------------------------- schedules
def lr_schedule(schedule: str, *, steps: int, warmup: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at step ``k`` (0-based): linear warm-up over ``warmup``
    steps, then ``cosine`` decay to 0, ``linear`` decay to 0, or ``constant``.

    Examples
    --------
    >>> from mtdmath import nn
    >>> f = nn.lr_schedule('cosine', steps=100, warmup=10)
    >>> print([round(f(k), 3) for k in (0, 5, 10, 55, 99)])
    [0.1, 0.6, 1.0, 0.5, 0.0]
    """
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

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> task = nn.ICLTask(pi, alpha, T=12)
    >>> model = nn.StandardTransformer(3, 2, n_layers=1, d_model=8, n_heads=1, max_len=16, generator=torch.Generator().manual_seed(0))
    >>> hist = nn.train(model, task, steps=10, batch_size=8, log_every=5, progress=False)
    >>> type(hist).__name__, hist.step, len(hist.loss)
    ('TrainHistory', [5, 10], 2)
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

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TrainHistory":
        """The history :meth:`as_dict` gave (as a checkpoint stores it)."""
        d = dict(d or {})
        base = {k: list(d.pop(k, [])) for k in ("step", "loss", "lr", "time")}
        sps = d.pop("steps_per_s", float("nan"))
        return cls(**base, extra={k: list(v) for k, v in d.items()}, steps_per_s=float(sps))

    def add_point(self, step: int, window: dict[str, list[float]], lr: float, time: float) -> None:
        """Append a logged point: the means of ``window`` (``loss`` and the callbacks' keys); a key
        missing from this window, or new in it, gets NaN at the points that lack it."""
        n = len(self.step)
        self.step.append(step)
        self.loss.append(sum(window["loss"]) / len(window["loss"]))
        self.lr.append(lr)
        self.time.append(time)
        for key in sorted(set(self.extra) | set(window) - {"loss"}):
            vals = window.get(key, [])
            col = self.extra.setdefault(key, [float("nan")] * n)
            col.append(sum(vals) / len(vals) if vals else float("nan"))

    def rows(self) -> list[dict[str, float]]:
        """One dict per logged point (step, loss, lr, time and the extra columns): the CSV log's rows."""
        return [{"step": s, "loss": l, "lr": r, "time": t, **{k: v[i] for k, v in self.extra.items()}}
                for i, (s, l, r, t) in enumerate(zip(self.step, self.loss, self.lr, self.time))]


def _nll(model: nn.Module, y: torch.Tensor, m: int) -> torch.Tensor:
    """Next-token cross-entropy of ``y[:, m:]`` on the logits rows ``0 … T-m-1`` (through ``model.forward``)."""
    logits = model(y)[:, :-1]  # (B, T-m, S): row r predicts y[m+r]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, m:].reshape(-1))


def _check_model_task(module: nn.Module, task: ICLTask) -> None:
    """The model and the task agree on m, S and the context length (messages name both)."""
    for attr in ("S", "m"):
        mv = getattr(module, attr, None)
        if mv is not None and int(mv) != getattr(task, attr):
            raise ValueError(f"model and task disagree: the model has {attr} = {int(mv)}, the task {attr} = "
                             f"{getattr(task, attr)}")
    max_len = getattr(getattr(module, "config", None), "max_len", None)
    if max_len is not None and task.T > max_len:
        raise ValueError(f"model and task disagree: the task's sequences have T = {task.T} tokens, above the model's "
                         f"max_len = {max_len}")


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    out = {"data": gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        out |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return out


def _set_rng_state(state: dict[str, torch.Tensor], gen: torch.Generator) -> None:
    gen.set_state(state["data"])
    torch.set_rng_state(state["torch"])
    cuda = [state[k] for k in sorted(state) if k.startswith("cuda")]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


class _Logs:
    """The CSV log (always, when a log folder is given) and TensorBoard scalars (optional)."""

    def __init__(self, log_dir: Path | None, tensorboard: bool) -> None:
        self.csv = None if log_dir is None else log_dir / "train_log.csv"
        self.writer = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(log_dir))

    def write(self, hist: "TrainHistory") -> None:
        if self.csv is None:
            return
        import csv

        rows = hist.rows()
        # rewritten whole at each point (it is small), so a column that appears later has its header
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        if self.writer is not None:
            for k, v in rows[-1].items():
                if k != "step" and math.isfinite(v):
                    self.writer.add_scalar(k, v, rows[-1]["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(model: nn.Module, task: ICLTask, *, steps: int, batch_size: int = 64, lr: float = 1e-3,
          schedule: str = "cosine", warmup: int = 0, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
          device: torch.device | str | None = None, seed: int = 0, log_every: int = 50,
          callbacks: Sequence[Callable[..., dict[str, float] | None]] | None = None,
          progress: bool = True, desc: str = "train", checkpoint: str | Path | None = None,
          checkpoint_every: int | None = None, resume: str | Path | None = None,
          log_dir: str | Path | None = None, tensorboard: bool = False) -> TrainHistory:
    """Train ``model`` in place on fresh batches of ``task`` (online), with AdamW.

    Parameters
    ----------
    model : nn.Module
        ``forward(tokens) -> logits (B, T-m+1, S)`` (row r predicts ``y[m+r]``) and an attribute
        ``m``; its ``m`` (and ``S``, and ``config.max_len`` where it has them) must fit ``task``.
        The loss calls ``model(tokens)``, so a ``torch.compile(model)`` trains compiled.
    task : ICLTask
        Batches are drawn on ``device`` by a ``torch.Generator`` seeded with ``seed``.
    steps, batch_size : int
        Optimiser steps (in all, counting those before a ``resume``) and sequences per step.
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
        Seed of the data generator and of dropout (training runs on a fork of torch's global
        generator, so the caller's state is left as it was); the initial weights are the model's own.
    log_every : int
        Steps per logged point.
    callbacks : sequence of callables, optional
        Each is called after every optimiser step as ``cb(step=k, model=model, tokens=y, lam=lam,
        loss=float)`` (k is 1-based; tokens (B, T), lam (B, m) on the device). A callback that
        returns a dict of floats has them averaged over the window and logged in
        ``history.extra`` (NaN at points whose window returned none); one that returns None logs
        nothing. :class:`~mtdmath.nn.HeldOutKL` evaluates every k steps on a fixed batch.
    progress : bool
        Show a tqdm bar with the current loss.
    checkpoint : path, optional
        Save a training checkpoint (weights, optimiser, scheduler and RNG states, step, history)
        here every ``checkpoint_every`` steps and at the end.
    checkpoint_every : int, optional
        Default: ``steps`` (only at the end).
    resume : path, optional
        A training checkpoint to continue from: the weights, optimiser, scheduler, RNG states,
        step count and history are restored, and training runs from its step + 1 to ``steps``,
        so that an interrupted run resumed gives the weights of the uninterrupted run bit for bit
        (on the same device). The task must be the checkpoint's.
    log_dir : path, optional
        Folder of the CSV log ``train_log.csv`` (one row per logged point: step, loss, lr, time
        and the callbacks' values), rewritten at every point.
    tensorboard : bool
        Also write TensorBoard scalars to ``log_dir`` (needs the ``tensorboard`` package).

    Returns
    -------
    TrainHistory

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> task = nn.ICLTask(pi, alpha, T=12)
    >>> model = nn.StandardTransformer(3, 2, n_layers=1, d_model=8, n_heads=1, max_len=16, generator=torch.Generator().manual_seed(0))
    >>> hist = nn.train(model, task, steps=20, batch_size=16, lr=1e-2, log_every=10, progress=False)
    >>> hist.step
    [10, 20]
    >>> print(hist.loss[-1] < hist.loss[0])
    True
    """
    from tqdm.auto import tqdm

    module = getattr(model, "_orig_mod", model)  # a torch.compile wrapper keeps its module here
    if not isinstance(model, nn.Module) or not hasattr(module, "m"):
        raise ValueError(f"model must be an nn.Module with an attribute m and forward(tokens) -> logits "
                         f"(got {type(model).__name__})")
    if not isinstance(task, ICLTask):
        raise ValueError(f"task must be an ICLTask (got {type(task).__name__})")
    _check_model_task(module, task)
    steps = validate.check_int(steps, "steps", minimum=1)
    batch_size = validate.check_int(batch_size, "batch_size", minimum=1)
    log_every = validate.check_int(log_every, "log_every", minimum=1)
    warmup = validate.check_int(warmup, "warmup", minimum=0)
    lr = validate.check_float(lr, "lr", positive=True)
    weight_decay = validate.check_float(weight_decay, "weight_decay", nonnegative=True)
    if grad_clip is not None:
        grad_clip = validate.check_float(grad_clip, "grad_clip", positive=True)
    factor = lr_schedule(schedule, steps=steps, warmup=min(warmup, steps))
    seed = validate.check_int(seed, "seed", minimum=0)
    checkpoint_every = steps if checkpoint_every is None else validate.check_int(checkpoint_every, "checkpoint_every", 1)
    for name, p in (("checkpoint", checkpoint), ("resume", resume), ("log_dir", log_dir)):
        if p is not None and not isinstance(p, (str, Path)):
            raise ValueError(f"{name} must be a path or None (got {type(p).__name__})")
    if tensorboard and log_dir is None:
        raise ValueError("tensorboard=True needs a log_dir to write to")
    dev = validate.check_torch_device(device, "device")
    params = list(model.parameters())
    if not params:
        raise ValueError(f"model has no parameters to train ({type(module).__name__})")
    device = dev if dev is not None else params[0].device
    # the batch: (B, T) tokens, the (B, T-m+1, S) logits and their gradient, (B, T, T) attention (as MDTransformer)
    validate.check_alloc(batch_size * task.T * (3 * task.S + 6 + 8 * task.T), 8, "batch_size",
                  f"a batch of {batch_size} sequences of length T = {task.T} with S = {task.S} logits each")
    info = None
    if resume is not None:
        from .checkpoints import load_checkpoint

        _, info = load_checkpoint(resume, model=module, device=device)
        if "training" not in info:
            raise ValueError(f"resume: {resume} is a model checkpoint without training state (save it with train's "
                             f"checkpoint=)")
        if info["task"] is None or info["task"] != task:
            raise ValueError(f"resume: {resume} was trained on another task ({info['task']}), not {task}")
        if info["training"]["step"] >= steps:
            raise ValueError(f"steps = {steps} is not beyond the checkpoint's step {info['training']['step']} "
                             f"(resume: {resume})")
        if info["training"]["state"].get("batch_size") != batch_size:
            raise ValueError(f"batch_size = {batch_size} differs from the resumed run's "
                             f"{info['training']['state'].get('batch_size')} (resume: {resume})")
    model.to(device).train()
    task = task.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    hist = TrainHistory()
    win: dict[str, list[float]] = {"loss": []}
    start = 1
    if info is not None:
        tr = info["training"]
        opt.load_state_dict(tr["optimizer"])
        sched.load_state_dict(tr["scheduler"])
        hist = TrainHistory.from_dict(info["history"])
        win = {k: list(v) for k, v in tr["state"]["window"].items()}
        start = tr["step"] + 1
    # dropout draws from torch's global generator: training runs on a fork of it, seeded from
    # ``seed`` (a stream apart from the data's), so a seed fixes the run and the caller's state is kept
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed ^ 0x5DEECE66D)
        if info is not None:
            _set_rng_state(info["training"]["rng"], gen)
        logs = _Logs(Path(log_dir) if log_dir is not None else None, tensorboard)
        m = int(module.m)
        t_run = time.perf_counter()
        t0 = t_run - (hist.time[-1] if hist.time else 0.0)  # times continue those of a resumed run
        bar = tqdm(range(start, steps + 1), desc=desc, disable=not progress, initial=start - 1, total=steps)
        for k in bar:
            y, lam = task.sample(batch_size, generator=gen)
            loss = _nll(model, y, m)
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
                hist.add_point(k, win, float(sched.get_last_lr()[0]), round(time.perf_counter() - t0, 4))
                bar.set_postfix(loss=f"{hist.loss[-1]:.4f}")
                logs.write(hist)
                win = {"loss": []}
            if checkpoint is not None and (k % checkpoint_every == 0 or k == steps):
                from .checkpoints import save_checkpoint

                state = {"batch_size": batch_size, "window": win}
                save_checkpoint(checkpoint, module, task=task, history=hist,
                                training={"step": k, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                          "rng": _rng_state(gen, device), "state": state})
    bar.close()
    logs.close()
    hist.steps_per_s = (steps - start + 1) / max(time.perf_counter() - t_run, 1e-12)
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

    Examples
    --------
    >>> from mtdmath import nn
    >>> nn.parse_model_spec('std:L=5,d=32,h=2')
    ('std', {'n_layers': 5, 'd_model': 32, 'n_heads': 2})
    >>> nn.parse_model_spec('mdsink')
    ('md', {'aggregation': 'softmax_sink'})
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

    Examples
    --------
    >>> import torch
    >>> from mtdmath import nn
    >>> model = nn.model_from_spec('std:L=2,d=16,h=2', 5, 3, max_len=32)
    >>> type(model).__name__, model.config.n_layers, model.config.d_model
    ('StandardTransformer', 2, 16)
    >>> type(nn.model_from_spec('md', 5, 3, max_len=32)).__name__
    'MDTransformer'
    """
    kind, kw = parse_model_spec(spec)
    if kind == "md":
        return MDTransformer(S, m, dtype=dtype, device=device, generator=generator, **kw)
    args = {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads} | kw
    return StandardTransformer(S, m, **args, max_len=max_len, generator=generator, dtype=dtype, device=device)


def spec_name(model_or_spec: nn.Module | str, **defaults: int) -> str:
    """A file-safe canonical name: ``md`` for the disentangled model, ``mdsink`` for it with the
    softmax-sink layer 2, ``std{L}`` for a standard model of width and heads equal to ``defaults``
    (``d_model``, ``n_heads``), else ``std{L}_d{D}_h{H}``.

    Examples
    --------
    >>> from mtdmath import nn
    >>> nn.spec_name('std:L=5,d=32,h=2', d_model=32, n_heads=2)
    'std5'
    >>> nn.spec_name('std:L=5,d=64,h=4', d_model=32, n_heads=2)
    'std5_d64_h4'
    >>> nn.spec_name('md')
    'md'
    """
    if isinstance(model_or_spec, str):
        kind, kw = parse_model_spec(model_or_spec)
        if kind == "md":
            return "mdsink" if kw.get("aggregation") == "softmax_sink" else "md"
        cfg = {"n_layers": 3, "d_model": 32, "n_heads": 2} | defaults | kw
    elif isinstance(model_or_spec, MDTransformer):
        return "mdsink" if model_or_spec.aggregation == "softmax_sink" else "md"
    else:
        cfg = asdict(model_or_spec.config)
    base = {"d_model": 32, "n_heads": 2} | {k: v for k, v in defaults.items() if k in ("d_model", "n_heads")}
    if cfg["d_model"] == base["d_model"] and cfg["n_heads"] == base["n_heads"]:
        return f"std{cfg['n_layers']}"
    return f"std{cfg['n_layers']}_d{cfg['d_model']}_h{cfg['n_heads']}"
