"""``sweep``: a grid of independent training jobs (seeds × m × T × model spec × steps), locally or on Ray.

Each job (:class:`JobConfig`) trains one model with :func:`mtdmath.nn.train` on the task of its
seed and order, then evaluates it on fresh sequences of length T-1 (contexts L = m … T-1, the
trained ones): KL(p* ‖ p̂) vs L for the trained model, the one-step MD construction and, for
m <= 3, exact Bayes; for the disentangled model also the attention band difference to the
construction (``compare``'s number). Its result is written to ``OUT/jobs/<hash>.json``, where the
hash is that of the job's config: a rerun skips the jobs already done (resumable), and changing
any field makes a new job.

Backends:

- ``local`` (default) — a process pool of ``--jobs`` workers on this machine;
- ``ray`` — one Ray task per job, asking for ``--threads`` CPUs (and one GPU with
  ``--device cuda``); ``--address`` connects to a running cluster (``ray start --head`` prints
  it, e.g. ``auto`` or ``ray://host:10001``), without it Ray starts on this machine with
  ``--jobs`` CPUs. Results return to the driver, which writes every JSON, so the workers need no
  shared file system.

Every job is a deterministic function of its config (seeded streams, ``torch.set_num_threads``
fixed per job), so both backends give bit-identical results. ``OUT/sweep.json``,
``OUT/sweep.md`` and ``OUT/sweep.png`` aggregate the jobs: mean ± s.e. over seeds.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import mtdmath as M

from . import common as X

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class JobConfig:
    """One training-and-evaluation job of a sweep (every field enters the hash)."""

    seed: int
    m: int
    T: int
    model: str
    steps: int
    S: int = 8
    concentration: float = 0.5
    alpha: float = 1.0
    batch: int = 64
    lr: float = 0.0  # 0: the kind's default (1e-2 for md, 1e-3 for std)
    weight_decay: float = -1.0  # < 0: the kind's default (0 for md, 0.01 for std)
    warmup: int = 200
    d_model: int = 32
    n_heads: int = 2
    n_eval: int = 200
    device: str = "cpu"
    threads: int = 1

    def key(self) -> str:
        """16 hex digits of the SHA-256 of the config (canonical JSON)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (a :class:`JobConfig` as a dict: picklable for any backend); returns its result."""
    from mtdmath.nn import ICLTask, model_from_spec, parse_model_spec, spec_name
    from mtdmath.nn import train as nn_train

    from .compare import band_difference
    from .train import init_seed

    cfg = JobConfig(**job)
    torch.set_num_threads(cfg.threads)
    device = X.resolve_device(cfg.device)
    t0 = time.perf_counter()
    pi, alpha = X.make_task(cfg.seed, cfg.m, cfg.S, cfg.concentration, cfg.alpha)
    task = ICLTask(pi, alpha, cfg.T, device=device)
    name = spec_name(cfg.model, d_model=cfg.d_model, n_heads=cfg.n_heads)
    model = model_from_spec(cfg.model, cfg.S, cfg.m, max_len=cfg.T, d_model=cfg.d_model, n_heads=cfg.n_heads,
                            generator=torch.Generator().manual_seed(init_seed(cfg.seed, name)))
    is_md = parse_model_spec(cfg.model)[0] == "md"
    lr = cfg.lr if cfg.lr > 0 else (1e-2 if is_md else 1e-3)
    wd = cfg.weight_decay if cfg.weight_decay >= 0 else (0.0 if is_md else 0.01)
    hist = nn_train(model, task, steps=cfg.steps, batch_size=cfg.batch, lr=lr, warmup=min(cfg.warmup, cfg.steps),
                    weight_decay=wd, device=device, seed=X.torch_seed_for(cfg.seed, X.KEY_TRAIN, cfg.m),
                    log_every=max(1, cfg.steps // 20), progress=False)
    train_s = time.perf_counter() - t0
    # evaluation: contexts up to T-1 (the trained ones), the evaluation stream of `compare`
    Te = cfg.T - 1
    tokens, lam = M.sample_icl(pi, alpha, Te, cfg.n_eval, rng=X.rng_for(cfg.seed, X.KEY_EVAL, cfg.m))
    p_true = X.truth_all_prefixes(tokens, lam, pi)
    construction = M.MDTransformer.construct(pi, alpha, dtype=torch.float64, device=device)
    preds = {"trained": X.model_all_prefixes(model, tokens, device=device),
             "construction": X.model_all_prefixes(construction, tokens, device=device)}
    if cfg.m <= 3:  # exact Bayes is cheap up to m = 3 at these lengths
        preds |= X.estimator_all_prefixes(tokens, pi, alpha, ["bayes"])
    kls = {k: X.kl_per_sequence(p_true, v) for k, v in preds.items()}
    mean, se = X.curves(kls)
    result: dict[str, Any] = {
        "L": list(range(cfg.m, Te + 1)), "kl_mean": mean, "kl_se": se,
        "kl_final": {k: float(v[:, -1].mean()) for k, v in kls.items()},
        "gap_trained_minus_construction_final": X.paired_diff(kls, "trained", "construction", cfg.m, Te, (Te,))[str(Te)],
        "loss": hist.loss, "loss_step": hist.step,
    }
    if is_md:
        result["band_difference"] = band_difference(model.to(torch.float64), construction, tokens[:64], device=device)
    return {"key": cfg.key(), "job": asdict(cfg), "name": name, "result": result,
            "time": {"train_s": round(train_s, 3), "total_s": round(time.perf_counter() - t0, 3),
                     "steps_per_s": round(hist.steps_per_s, 3)}}


@dataclass
class SweepConfig:
    """Configuration of the ``sweep`` subcommand: the grid, the job settings and the backend."""

    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={
        "help": "seeds (grid axis): each fixes pi, the batches, the initial weights, the evaluation set; "
                "the common --seed is not used"})
    orders: tuple[int, ...] = field(default=(2,), metadata={"help": "MTD orders m (grid axis)"})
    Ts: tuple[int, ...] = field(default=(65,), metadata={"help": "training sequence lengths T (grid axis)"})
    models: tuple[str, ...] = field(default=("md",), metadata={
        "help": "model specs (grid axis): md, std:L=5,d=32,h=2, …"})
    steps: tuple[int, ...] = field(default=(4000,), metadata={"help": "optimiser steps (grid axis)"})
    S: int = field(default=8, metadata={"help": "vocabulary size"})
    batch: int = field(default=64, metadata={"help": "sequences per step"})
    warmup: int = field(default=200, metadata={"help": "linear warm-up steps (capped at the job's steps)"})
    d_model: int = field(default=32, metadata={"help": "width of standard models whose spec omits d"})
    n_heads: int = field(default=2, metadata={"help": "heads of standard models whose spec omits h"})
    n_eval: int = field(default=200, metadata={"help": "evaluation sequences per job"})
    backend: str = field(default="local", metadata={"help": "local (process pool) or ray"})
    address: str = field(default="", metadata={
        "help": "Ray cluster address (e.g. auto, ray://host:10001); empty: start Ray on this machine"})
    jobs: int = field(default=2, metadata={"help": "parallel workers (local), or CPUs of a locally started Ray"})
    job_threads: int = field(default=1, metadata={"help": "torch threads (and Ray CPUs) per job"})

    def __post_init__(self) -> None:
        from mtdmath.nn import parse_model_spec

        for name in ("seeds", "orders", "Ts", "models", "steps"):
            setattr(self, name, tuple(getattr(self, name)))
            if not getattr(self, name):
                raise ValueError(f"{name} must have at least one entry")
        for spec in self.models:
            parse_model_spec(spec)
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0 (got {self.seeds})")
        if any(m < 1 for m in self.orders):
            raise ValueError(f"orders must be >= 1 (got {self.orders})")
        if any(T < m + 2 for T in self.Ts for m in self.orders):
            raise ValueError(f"Ts must be >= m + 2 for every order (got Ts={self.Ts}, orders={self.orders})")
        if any(k < 1 for k in self.steps):
            raise ValueError(f"steps must be >= 1 (got {self.steps})")
        for name in ("S", "batch", "d_model", "n_heads", "jobs", "job_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_eval < 2:
            raise ValueError(f"n_eval must be >= 2 (got {self.n_eval})")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} (got {self.backend!r})")
        if self.address and self.backend != "ray":
            raise ValueError(f"address is only used with --backend ray (got backend {self.backend!r})")

    @classmethod
    def quick(cls, **kw: Any) -> "SweepConfig":
        base = dict(seeds=(0, 1, 2), orders=(2,), Ts=(17,), models=("md",), steps=(20,), batch=8, warmup=5,
                    d_model=16, n_eval=16)
        return cls(**(base | kw))

    def grid(self, device: str) -> list[JobConfig]:
        """Every job of the grid, in a fixed order (seed fastest)."""
        out = []
        for m, T, spec, k, seed in itertools.product(self.orders, self.Ts, self.models, self.steps, self.seeds):
            out.append(JobConfig(seed=seed, m=m, T=T, model=spec, steps=k, S=self.S, batch=self.batch,
                                 warmup=self.warmup, d_model=self.d_model, n_heads=self.n_heads, n_eval=self.n_eval,
                                 device=device, threads=self.job_threads))
        return out


# ----------------------------------------------------------------------------- backends
def _run_local(jobs: list[JobConfig], workers: int, on_done: Callable[[dict[str, Any]], None]) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if workers == 1:  # no pool: same results, easier to debug
        for j in jobs:
            on_done(run_job(asdict(j)))
        return
    # spawn: a fresh interpreter per worker (forking a process that holds torch threads can hang)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futs = [pool.submit(run_job, asdict(j)) for j in jobs]
        for f in as_completed(futs):
            on_done(f.result())


def _run_ray(jobs: list[JobConfig], *, address: str, cpus: int, on_done: Callable[[dict[str, Any]], None]) -> None:
    try:
        import ray
    except ImportError:
        raise X.ConfigError('backend: ray is not installed (pip install "mtdmath[ray]")') from None
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        pending = {}
        for j in jobs:
            task = ray.remote(num_cpus=j.threads, num_gpus=1 if j.device == "cuda" else 0)(run_job)
            pending[task.remote(asdict(j))] = j
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pending.pop(ref)
                on_done(ray.get(ref))
    finally:
        if started:
            ray.shutdown()


def job_path(out: Path, job: JobConfig) -> Path:
    return out / "jobs" / f"{job.key()}.json"


def run(cfg: SweepConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Run the grid (skipping finished jobs), then aggregate; writes ``sweep.json``, ``sweep.md``, ``sweep.png``.

    ``seed`` (the CLI's common ``--seed``) is not used: the grid's ``seeds`` are the seeds.
    """
    from tqdm.auto import tqdm

    grid = cfg.grid(device.type)
    todo = [j for j in grid if not job_path(out, j).is_file()]
    with X.run_meta(seed, device) as meta:
        bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc=f"sweep ({cfg.backend})",
                   disable=not progress)

        def on_done(res: dict[str, Any]) -> None:
            path = out / "jobs" / f"{res['key']}.json"
            tmp = path.with_suffix(".tmp")
            X.write_json(tmp, res)
            os.replace(tmp, path)  # atomic: an interrupted sweep leaves no half-written job
            bar.update(1)

        if todo:
            if cfg.backend == "local":
                _run_local(todo, cfg.jobs, on_done)
            else:
                _run_ray(todo, address=cfg.address, cpus=cfg.jobs, on_done=on_done)
        bar.close()
    results = [_load_json(job_path(out, j)) for j in grid]
    agg = aggregate(results)
    res = {"experiment": "sweep", "config": cfg, "seed": seed, "meta": meta, "n_jobs": len(grid),
           "n_run": len(todo), "n_skipped": len(grid) - len(todo), "jobs": [j.key() for j in grid],
           "groups": agg}
    fig = _plot(agg, out / "sweep.png")
    res["figures"] = [fig.name]
    X.write_json(out / "sweep.json", res)
    (out / "sweep.md").write_text(markdown(agg))
    print(f"sweep: {len(todo)} jobs run, {len(grid) - len(todo)} skipped (done before)", file=sys.stderr)
    return res


def _load_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Group jobs that differ only in the seed; mean ± s.e. over seeds of every curve and number."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        j = dict(r["job"])
        j.pop("seed")
        gid = f"m={j['m']} T={j['T']} {r['name']} steps={j['steps']}"
        groups.setdefault(gid, []).append(r)
    out = {}
    for gid, rs in groups.items():
        L = rs[0]["result"]["L"]
        curves = {}
        for k in rs[0]["result"]["kl_mean"]:
            mu, se = X.mean_se(np.array([r["result"]["kl_mean"][k] for r in rs]))
            curves[k] = {"mean": mu.tolist(), "se": se.tolist()}
        g = {"seeds": [r["job"]["seed"] for r in rs], "m": rs[0]["job"]["m"], "T": rs[0]["job"]["T"],
             "model": rs[0]["name"], "steps": rs[0]["job"]["steps"], "L": L, "kl_over_seeds": curves,
             "kl_final": {k: [float(x) for x in X.mean_se(np.array([r["result"]["kl_final"][k] for r in rs]))]
                          for k in rs[0]["result"]["kl_final"]},
             "gap_final": [float(x) for x in X.mean_se(np.array(
                 [r["result"]["gap_trained_minus_construction_final"][0] for r in rs]))]}
        if "band_difference" in rs[0]["result"]:
            g["band_difference_max"] = [float(x) for x in X.mean_se(np.array(
                [r["result"]["band_difference"]["max"] for r in rs]))]
            g["band_difference_mean"] = [float(x) for x in X.mean_se(np.array(
                [r["result"]["band_difference"]["layer1_aligned"]["mean"] for r in rs]))]
        g["train_s"] = [float(x) for x in X.mean_se(np.array([r["time"]["train_s"] for r in rs]))]
        out[gid] = g
    return out


def markdown(agg: dict[str, Any]) -> str:
    """One row per group: final-L KL of the trained model, construction, Bayes; the gap; band difference."""
    lines = ["| group | seeds | KL trained (L = T-1) | KL construction | KL Bayes | trained − construction | "
             "band difference (layer 1 aligned): max | mean |", "|---|---|---|---|---|---|---|---|"]

    def f(v: list[float] | None) -> str:
        return "—" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}"

    for gid, g in agg.items():
        k = g["kl_final"]
        lines.append(f"| {gid} | {len(g['seeds'])} | {f(k['trained'])} | {f(k['construction'])} | "
                     f"{f(k.get('bayes'))} | {f(g['gap_final'])} | {f(g.get('band_difference_max'))} | "
                     f"{f(g.get('band_difference_mean'))} |")
    return "\n".join(lines) + "\n\nmean ± s.e. over seeds.\n"


def _plot(agg: dict[str, Any], path: Path) -> Path:
    plt = X.pyplot()
    panels = sorted({(g["m"], g["T"]) for g in agg.values()})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (m, T) in zip(axes[0], panels):
        ref_done = False
        for gid, g in agg.items():
            if (g["m"], g["T"]) != (m, T):
                continue
            L = np.asarray(g["L"])
            keys = ["trained"] + ([] if ref_done else [k for k in ("construction", "bayes") if k in g["kl_over_seeds"]])
            for k in keys:
                c = g["kl_over_seeds"][k]
                mu, se = np.asarray(c["mean"]), np.asarray(c["se"])
                label = f"{g['model']}, {g['steps']} steps" if k == "trained" else X.style(k)[0]
                color = None if k == "trained" else X.style(k)[1]
                line, = ax.plot(L, mu, ":" if k == "construction" else "-", color=color, label=label)
                ax.fill_between(L, np.maximum(mu - se, 1e-12), mu + se, color=line.get_color(), alpha=0.2, lw=0)
            ref_done = True
        ax.set_yscale("log")
        ax.set_xlabel("context length L")
        ax.set_ylabel("KL(p* ‖ p̂) [nats]")
        ax.set_title(f"m = {m}, T = {T}: mean ± s.e. over seeds", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return X.save_figure(fig, path)


__all__ = ["SweepConfig", "JobConfig", "run", "run_job", "aggregate", "BACKENDS"]
