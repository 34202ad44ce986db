"""``sweep``: a grid of independent train-and-evaluate jobs over any job field, locally, on Ray or on SLURM.

Each job (:class:`JobConfig`: the task, the model, the optimiser and the seed) trains one model
with :func:`mtdmath.nn.train` on the task of its seed and order, then evaluates it on fresh
sequences of length T-1 (contexts L = m … T-1, the trained ones): KL(p* ‖ p̂) vs L for the
trained model, the one-step MD construction and, for m <= 3, exact Bayes; for the disentangled
model also the attention band difference to the construction (``compare``'s number). Its result
(:class:`JobResult`) is written to ``OUT/jobs/<hash>.json``, where the hash is that of the job's
config: a rerun skips the jobs already done (resumable), and changing any field makes a new job.

The grid is the product of the axes: ``seeds``, ``orders``, ``Ts``, ``models`` and ``steps``
(shorthands for the job fields seed, m, T, model, steps) and ``axes``, a mapping from any other
job field (``lr``, ``weight_decay``, ``alpha``, ``concentration``, ``S``, ``n_layers``, …) to its
values; every other field is the sweep's own value for all jobs.

Backends:

- ``local`` (default) — a process pool of ``jobs`` workers on this machine;
- ``ray`` — one Ray task per job, asking for ``job_threads`` CPUs (and one GPU with
  ``--device cuda``); ``address`` connects to a running cluster (``ray start --head`` prints
  it, e.g. ``auto`` or ``HOST:6379``), without it Ray starts on this machine with ``jobs``
  CPUs. A cluster started by Ray >= 2.59 asks for a token: see :func:`connect_ray`;
- ``submitit`` — one SLURM job per job through submitit (``submitit_cluster``: ``slurm``, or
  ``local`` for submitit's local executor, the one CI tests).

Results return to the driver, which writes every file. Every job is a deterministic function of its
config (seeded streams, ``torch.set_num_threads`` fixed per job), so all backends give
bit-identical results. ``OUT/results.csv`` is the tidy table, one row per job and metric
(:func:`load_sweep` reads it into pandas); ``OUT/summary.csv`` (mean ± s.e. over seeds),
``OUT/sweep.md`` and ``OUT/sweep.png`` are read from it and from the job results.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

import numpy as np
import torch

import mtdmath

from . import common as exp_common
from .config import (Batch, Heads, Layers, NonNegativeFloat, NonNegativeInt, Order, PositiveFloat, Seed,
                     PriorConfig, Sequences, Steps, TaskConfig, Threads, Width, check_attention_size, check_heads, Length)

if TYPE_CHECKING:
    import pandas

BACKENDS = ("local", "ray", "submitit")
#: the job fields the sweep's shorthand axes set
SHORTHANDS = {"seeds": "seed", "orders": "m", "Ts": "T", "models": "model", "steps": "steps"}


@dataclass
class JobSettings:
    """The job fields a sweep sets once for every job (any of them can also be an axis)."""

    batch: Batch = field(default=64, metadata={"help": "sequences per step"})
    lr: Optional[PositiveFloat] = field(default=None, metadata={
        "help": "peak learning rate (AdamW, linear warm-up then cosine decay); null: 1e-2 for md, 1e-3 for std"})
    weight_decay: Optional[NonNegativeFloat] = field(default=None, metadata={
        "help": "AdamW weight decay; null: 0 for md, 0.01 for std"})
    warmup: NonNegativeInt = field(default=200, metadata={"help": "linear warm-up steps (capped at the job's steps)"})
    grad_clip: PositiveFloat = field(default=1.0, metadata={"help": "gradient-norm clipping threshold"})
    d_model: Width = field(default=32, metadata={"help": "width of standard models whose spec omits d"})
    n_heads: Heads = field(default=2, metadata={"help": "heads of standard models whose spec omits h"})
    n_layers: Layers = field(default=3, metadata={
        "help": "depth of standard models whose spec omits L (a depth axis: models [std], axes {n_layers: [2, 4]})"})
    n_eval: Sequences = field(default=200, metadata={"help": "evaluation sequences per job"})


@dataclass
class JobConfig(JobSettings, TaskConfig):
    """One training-and-evaluation job of a sweep (every field enters the hash).

    Examples
    --------
    >>> from mtdmath import experiments
    >>> job = experiments.JobConfig(m=2, T=17)
    >>> job.m, job.T
    (2, 17)
    """

    seed: Seed = field(default=0, metadata={"help": "fixes pi, the batches, the initial weights, the evaluation set"})
    model: str = field(default="md", metadata={"help": "model spec: md, mdsink, std:L=5,d=32,h=2, …"})
    steps: Steps = field(default=4000, metadata={"help": "optimiser steps"})
    device: Literal["cpu", "cuda"] = field(default="cpu", metadata={"help": "torch device of the job"})
    threads: Threads = field(default=1, metadata={"help": "torch threads of the job"})

    def validate(self) -> None:
        super().validate()
        check_heads(self.model, d_model=self.d_model, n_heads=self.n_heads)
        check_attention_size(batch=self.batch, T=self.T, heads=self.n_heads)

    def key(self) -> str:
        """16 hex digits of the SHA-256 of the config (canonical JSON)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def name(self) -> str:
        """The model's name (``md``, ``std4``, ``std3_d64_h4``)."""
        from mtdmath.nn import spec_name

        return spec_name(self.model, d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers)


#: the job fields that describe where a job runs, not what it computes (not axes)
PLACEMENT = ("device", "threads")


@dataclass
class JobResult:
    """The result of one job. KLs are in nats, averaged over the job's ``n_eval`` evaluation sequences.

    Examples
    --------
    >>> import torch
    >>> from pathlib import Path
    >>> from mtdmath import experiments
    >>> res = experiments.run_sweep(experiments.SweepConfig.quick(), Path('runs/sweep'), seed=0, device=torch.device('cpu'), progress=False)  # doctest: +SKIP
    >>> job = experiments.load_sweep('runs/sweep')  # doctest: +SKIP
    """

    key: str  #: the job's config hash (its file name)
    job: JobConfig
    name: str  #: the model's name (``md``, ``std3``)
    L: list[int]  #: context lengths evaluated, m … T-1
    kl_mean: dict[str, list[float]]  #: per curve (trained, construction, bayes): mean KL(p* ‖ p̂) at each L [nats]
    kl_se: dict[str, list[float]]  #: its standard error over sequences [nats]
    kl_final: dict[str, float]  #: mean KL at the longest context L = T-1 [nats]
    gap_final: float  #: KL(trained) − KL(construction) at L = T-1, paired over sequences, mean [nats]
    gap_final_se: float  #: its standard error [nats]
    loss: list[float]  #: training loss, window means [nats/token]
    loss_step: list[int]  #: the step of each loss point
    band_difference_max: Optional[float] = None  #: disentangled model only: largest absolute difference of the trained and constructed attention bands (layer 1 aligned)
    band_difference_mean: Optional[float] = None  #: its mean over rows and sequences
    train_s: float = 0.0  #: wall-clock training time [s] (machine dependent: not in the results table)
    total_s: float = 0.0  #: wall-clock time of the whole job [s]
    steps_per_s: float = 0.0  #: optimiser steps per second

    def metrics(self) -> dict[str, float]:
        """The job's scalar results, by metric name (the rows of the tidy table)."""
        out = {f"kl_final_{k}": v for k, v in self.kl_final.items()}
        out["gap_trained_minus_construction_final"] = self.gap_final
        out["final_train_loss"] = self.loss[-1]
        if self.band_difference_max is not None:
            out["band_difference_max"] = self.band_difference_max
            out["band_difference_mean"] = self.band_difference_mean
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobResult":
        return cls(**(d | {"job": JobConfig(**d["job"])}))


def run_job(job: dict[str, Any]) -> JobResult:
    """Run one job (a :class:`JobConfig` as a dict: picklable for any backend); returns its result."""
    from mtdmath.nn import ICLTask, model_from_spec, parse_model_spec
    from mtdmath.nn import train as nn_train

    from .compare import band_difference
    from .train import init_seed

    cfg = JobConfig(**job)
    torch.set_num_threads(cfg.threads)
    device = exp_common.resolve_device(cfg.device)
    t0 = time.perf_counter()
    pi, alpha = exp_common.make_task(cfg.seed, cfg.m, cfg.S, cfg.concentration, cfg.alpha)
    task = ICLTask(pi, alpha, cfg.T, device=device)
    name = cfg.name()
    model = model_from_spec(cfg.model, cfg.S, cfg.m, max_len=cfg.T, d_model=cfg.d_model, n_heads=cfg.n_heads,
                            n_layers=cfg.n_layers, generator=torch.Generator().manual_seed(init_seed(cfg.seed, name)))
    is_md = parse_model_spec(cfg.model)[0] == "md"
    lr = cfg.lr if cfg.lr is not None else (1e-2 if is_md else 1e-3)
    wd = cfg.weight_decay if cfg.weight_decay is not None else (0.0 if is_md else 0.01)
    hist = nn_train(model, task, steps=cfg.steps, batch_size=cfg.batch, lr=lr, warmup=min(cfg.warmup, cfg.steps),
                    weight_decay=wd, grad_clip=cfg.grad_clip, device=device,
                    seed=exp_common.torch_seed_for(cfg.seed, exp_common.KEY_TRAIN, cfg.m), log_every=max(1, cfg.steps // 20),
                    progress=False)
    train_s = time.perf_counter() - t0
    # evaluation: contexts up to T-1 (the trained ones), the evaluation stream of `compare`
    Te = cfg.T - 1
    tokens, lam = mtdmath.sample_icl(pi, alpha, Te, cfg.n_eval, rng=exp_common.rng_for(cfg.seed, exp_common.KEY_EVAL, cfg.m))
    p_true = exp_common.truth_all_prefixes(tokens, lam, pi)
    construction = mtdmath.nn.MDTransformer.construct(pi, alpha, dtype=torch.float64, device=device)
    preds = {"trained": exp_common.model_all_prefixes(model, tokens, device=device),
             "construction": exp_common.model_all_prefixes(construction, tokens, device=device)}
    if cfg.m <= 3:  # exact Bayes is cheap up to m = 3 at these lengths
        preds |= exp_common.estimator_all_prefixes(tokens, pi, alpha, ["bayes"])
    kls = {k: exp_common.kl_per_sequence(p_true, v) for k, v in preds.items()}
    mean, se = exp_common.curves(kls)
    gap, gap_se = exp_common.paired_diff(kls, "trained", "construction", cfg.m, Te, (Te,))[str(Te)]
    band = (band_difference(model.to(torch.float64), construction, tokens[:64], device=device)
            if is_md else None)
    return JobResult(key=cfg.key(), job=cfg, name=name, L=list(range(cfg.m, Te + 1)), kl_mean=mean, kl_se=se,
                     kl_final={k: float(v[:, -1].mean()) for k, v in kls.items()}, gap_final=gap, gap_final_se=gap_se,
                     loss=list(hist.loss), loss_step=list(hist.step),
                     band_difference_max=None if band is None else float(band.max),
                     band_difference_mean=None if band is None else float(band.layer1_aligned.mean),
                     train_s=round(train_s, 3), total_s=round(time.perf_counter() - t0, 3),
                     steps_per_s=round(hist.steps_per_s, 3))


@dataclass
class SweepConfig(JobSettings, PriorConfig):
    """Configuration of the ``sweep`` subcommand: the axes, the settings every job shares, the backend.

    The prior fields (S, concentration, alpha) and :class:`JobSettings` are every job's values
    unless an axis sets them.

    Examples
    --------
    >>> from mtdmath import experiments
    >>> cfg = experiments.SweepConfig.quick(seeds=(0, 1), models=('md', 'std:L=2'))
    >>> cfg.seeds, cfg.models, cfg.backend
    ((0, 1), ('md', 'std:L=2'), 'local')
    """

    seeds: tuple[Seed, ...] = field(default=(0, 1, 2), metadata={
        "help": "seeds (grid axis): each fixes pi, the batches, the initial weights, the evaluation set; "
                "the common --seed is not used"})
    orders: tuple[Order, ...] = field(default=(2,), metadata={"help": "MTD orders m (grid axis)"})
    Ts: tuple[Length, ...] = field(default=(65,), metadata={"help": "training sequence lengths T (grid axis)"})
    models: tuple[str, ...] = field(default=("md",), metadata={
        "help": "model specs (grid axis): md, std:L=5,d=32,h=2, …"})
    steps: tuple[Steps, ...] = field(default=(4000,), metadata={"help": "optimiser steps (grid axis)"})
    axes: dict[str, list[Any]] = field(default_factory=dict, metadata={
        "help": "more grid axes: any job field and its values, e.g. '{lr: [0.01, 0.003], alpha: [0.5, 1.0]}' "
                "(an axis named seed, m, T, model or steps replaces its shorthand)"})
    backend: Literal["local", "ray", "submitit"] = field(default="local", metadata={
        "help": "local (process pool), ray (a Ray cluster) or submitit (SLURM, or submitit's local executor)"})
    address: str = field(default="", metadata={
        "help": "Ray cluster address (auto, HOST:6379, ray://HOST:10001); empty: start Ray on this machine"})
    jobs: Threads = field(default=2, metadata={
        "help": "parallel workers (local), CPUs of a locally started Ray, or concurrent SLURM array tasks"})
    job_threads: Threads = field(default=1, metadata={"help": "torch threads (and Ray / SLURM CPUs) per job"})
    submitit_cluster: Literal["auto", "slurm", "local", "debug"] = field(default="auto", metadata={
        "help": "submitit executor: slurm, local (subprocesses on this machine), debug (in this process), "
                "auto (slurm where sbatch exists, else local)"})
    slurm_partition: str = field(default="", metadata={"help": "SLURM partition (empty: the cluster's default)"})
    slurm_time_min: Steps = field(default=60, metadata={"help": "SLURM time limit per job, minutes"})

    def validate(self) -> None:
        for name in SHORTHANDS:
            if not getattr(self, name):
                raise ValueError(f"{name} must have at least one entry")
        self.axes = {k: list(v) for k, v in dict(self.axes).items()}
        names = {f.name for f in dataclasses.fields(JobConfig)} - set(PLACEMENT)
        for k, v in self.axes.items():
            if k not in names:
                raise ValueError(f"axes: {k!r} is not a job field (one of {', '.join(sorted(names))})")
            if not isinstance(v, (list, tuple)) or not v:
                raise ValueError(f"axes: {k} must list at least one value (got {v!r})")
        if self.address and self.backend != "ray":
            raise ValueError(f"address is only used with --backend ray (got backend {self.backend!r})")
        try:
            self.grid("cpu")  # every job valid before any runs
        except ValueError as e:
            raise ValueError(f"a job of the grid is invalid: {e}") from None

    @classmethod
    def quick(cls, **kw: Any) -> "SweepConfig":
        base = dict(seeds=(0, 1, 2), orders=(2,), Ts=(17,), models=("md",), steps=(20,), batch=8, warmup=5,
                    d_model=16, n_eval=16)
        return cls(**(base | kw))

    def grid_axes(self) -> dict[str, list[Any]]:
        """The axes of the grid: job field -> values (the shorthands, then ``axes``)."""
        out = {job: list(getattr(self, short)) for short, job in SHORTHANDS.items()}
        return out | self.axes

    def grid(self, device: str) -> list[JobConfig]:
        """Every job of the grid, in a fixed order (the last axis fastest)."""
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(JobSettings)}
        base |= {f.name: getattr(self, f.name) for f in dataclasses.fields(PriorConfig)}
        axes = self.grid_axes()
        order = [k for k in axes if k != "seed"] + ["seed"]  # seed fastest: a group's jobs are adjacent
        return [JobConfig(**(base | dict(zip(order, vals))), device=device, threads=self.job_threads)
                for vals in itertools.product(*(axes[k] for k in order))]


# ----------------------------------------------------------------------------- backends
def run_local(jobs: list[Any], workers: int, on_done: Callable[[Any], None], fn: Callable[[dict], Any] = run_job
              ) -> None:
    """Run ``fn(asdict(job))`` for every job (a dataclass) on a process pool of ``workers``; ``on_done``
    receives each result as it arrives. ``fn`` is a module-level function (picklable)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if workers == 1:  # no pool: same results, easier to debug
        for j in jobs:
            on_done(fn(asdict(j)))
        return
    # spawn: a fresh interpreter per worker (forking a process that holds torch threads can hang)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futs = [pool.submit(fn, asdict(j)) for j in jobs]
        for f in as_completed(futs):
            on_done(f.result())


#: the Ray versions the backend is tested with (the ``ray`` extra's range)
RAY_AUTH_HINT = ("a cluster started by Ray >= 2.59 asks for a token: set RAY_AUTH_MODE=token and give the "
                 "cluster's token as RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token "
                 "(`ray get-auth-token` on the head node prints it)")


def _ray_token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def connect_ray(address: str, cpus: int) -> bool:
    """Connect to the Ray cluster at ``address``, or start one on this machine (``address`` empty).

    Token authentication (on by default for clusters started by Ray >= 2.59): where
    ``RAY_AUTH_MODE`` is unset and a token is at hand (``RAY_AUTH_TOKEN``, the file
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), token mode is switched on before connecting,
    as Ray does itself for ``address="auto"`` only. A failed connection is a
    :class:`~mtdmath.experiments.common.ConfigError` whose one line names ``RAY_AUTH_MODE``.

    Returns whether this call started Ray (then the caller shuts it down).
    """
    try:
        import ray
    except ImportError:
        raise exp_common.ConfigError('backend: ray is not installed (pip install "mtdmath[ray]")') from None
    if ray.is_initialized():
        return False
    if not address:
        # "local": a new instance even where another one (or a stale record of one) exists
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        return True
    if "RAY_AUTH_MODE" not in os.environ and _ray_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray reads its configuration once per process: refresh it, as its own address="auto" path does
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):  # another Ray layout: set RAY_AUTH_MODE=token before starting
            pass
    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as e:  # ConnectionError after Ray's ~20 s of InvalidAuthToken retries, AuthenticationError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise exp_common.ConfigError(f"backend ray: cannot connect to {address} ({first}); {RAY_AUTH_HINT}") from None
    return True


def run_ray(jobs: list[Any], *, address: str, cpus: int, on_done: Callable[[Any], None],
            fn: Callable[[dict], Any] = run_job) -> None:
    """Run ``fn(asdict(job))`` for every job as one Ray task asking for ``job.threads`` CPUs (and a GPU
    where ``job.device`` is "cuda"); ``on_done`` receives each result as it arrives."""
    import ray

    started = connect_ray(address, cpus)
    try:
        pending = {}
        for j in jobs:
            task = ray.remote(num_cpus=j.threads, num_gpus=1 if j.device == "cuda" else 0)(fn)
            pending[task.remote(asdict(j))] = j
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pending.pop(ref)
                on_done(ray.get(ref))
    finally:
        if started:
            ray.shutdown()


def run_jobs(jobs: list[dict[str, Any]]) -> list[JobResult]:
    """Run several jobs in turn in one process (a submitit task of the local executor)."""
    return [run_job(j) for j in jobs]


def _run_submitit(jobs: list[JobConfig], cfg: SweepConfig, folder: Path,
                  on_done: Callable[[JobResult], None]) -> None:
    try:
        import submitit
    except ImportError:
        raise exp_common.ConfigError('backend: submitit is not installed (pip install "mtdmath[slurm]")') from None
    cluster = None if cfg.submitit_cluster == "auto" else cfg.submitit_cluster
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    gpus = 1 if jobs and jobs[0].device == "cuda" else 0
    ex.update_parameters(timeout_min=cfg.slurm_time_min, cpus_per_task=cfg.job_threads, gpus_per_node=gpus,
                         name="mtdmath-sweep", slurm_array_parallelism=cfg.jobs,
                         **({"slurm_partition": cfg.slurm_partition} if cfg.slurm_partition else {}))
    if ex.cluster == "slurm":
        chunks = [[asdict(j)] for j in jobs]  # one array task per job; SLURM schedules `jobs` at a time
    else:
        # submitit's local executor starts every task at once: `jobs` tasks, each running its share in turn
        chunks = [[asdict(j) for j in jobs[i::cfg.jobs]] for i in range(min(cfg.jobs, len(jobs)))]
    submitted = ex.map_array(run_jobs, chunks)
    for job in submitit.helpers.as_completed(submitted):
        for res in job.result():
            on_done(res)


def job_path(out: Path, job: JobConfig) -> Path:
    return out / "jobs" / f"{job.key()}.json"


def load_result(path: Path) -> JobResult:
    """A job's result from its JSON file."""
    with open(path) as f:
        return JobResult.from_dict(json.load(f))


@dataclass
class SweepResult:
    """What one ``sweep`` run did and where its tables are.

    Examples
    --------
    >>> import torch
    >>> from pathlib import Path
    >>> from mtdmath import experiments
    >>> res = experiments.run_sweep(experiments.SweepConfig.quick(), Path('runs/sweep'), seed=0, device=torch.device('cpu'), progress=False)  # doctest: +SKIP
    >>> res.n_jobs, res.results_csv  # doctest: +SKIP
    """

    config: SweepConfig
    seed: int  #: the CLI's common --seed (not used: the grid's seeds are the seeds)
    meta: dict[str, Any]  #: run metadata (versions, git state, run_time_s [s])
    n_jobs: int  #: jobs of the grid
    n_run: int  #: jobs run by this call
    n_skipped: int  #: jobs found done (resumed)
    jobs: list[str]  #: the grid's config hashes, in grid order
    results_csv: str  #: the tidy table, one row per job and metric
    summary_csv: str  #: mean ± s.e. over seeds per group and metric
    figures: list[str]


def run(cfg: SweepConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> SweepResult:
    """Run the grid (skipping finished jobs); write ``results.csv``, ``summary.csv``, ``sweep.md``,
    ``sweep.png`` and ``sweep.json`` (this run's record).

    Examples
    --------
    >>> import torch
    >>> from pathlib import Path
    >>> from mtdmath import experiments
    >>> cfg = experiments.SweepConfig.quick(seeds=(0, 1))
    >>> res = experiments.run_sweep(cfg, Path('runs/sweep'), seed=0, device=torch.device('cpu'), progress=False)  # doctest: +SKIP
    >>> res.n_jobs, res.n_run  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    grid = cfg.grid(device.type)
    todo = [j for j in grid if not job_path(out, j).is_file()]
    with exp_common.run_meta(seed, device) as meta:
        bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc=f"sweep ({cfg.backend})",
                   disable=not progress)

        def on_done(res: JobResult) -> None:
            exp_common.write_json_atomic(out / "jobs" / f"{res.key}.json", res)
            bar.update(1)

        if todo:
            if cfg.backend == "local":
                run_local(todo, cfg.jobs, on_done)
            elif cfg.backend == "ray":
                run_ray(todo, address=cfg.address, cpus=cfg.jobs, on_done=on_done)
            else:
                _run_submitit(todo, cfg, out / "submitit", on_done)
        bar.close()
    results = [load_result(job_path(out, j)) for j in grid]
    axes = list(cfg.grid_axes())
    write_results(results, out / "results.csv")
    table = load_sweep(out / "results.csv")
    summary = summarize(table, [a for a in axes if a != "seed"])
    summary.to_csv(out / "summary.csv", index=False)
    (out / "sweep.md").write_text(markdown(summary, [a for a in axes if a != "seed"]))
    fig = _plot(results, [a for a in axes if a != "seed"], out / "sweep.png")
    res = SweepResult(config=cfg, seed=seed, meta=meta, n_jobs=len(grid), n_run=len(todo),
                      n_skipped=len(grid) - len(todo), jobs=[j.key() for j in grid],
                      results_csv="results.csv", summary_csv="summary.csv", figures=[fig.name])
    exp_common.write_json(out / "sweep.json", res)
    print(f"sweep: {len(todo)} jobs run, {len(grid) - len(todo)} skipped (done before)", file=sys.stderr)
    return res


# ----------------------------------------------------------------------------- tables
#: columns of the tidy table before the job fields
ID_COLUMNS = ("job", "model_name")


def write_results(results: list[JobResult], path: Path) -> Path:
    """The tidy table: one row per job and metric, with every job field as a column (CSV)."""
    fields = [f.name for f in dataclasses.fields(JobConfig)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*ID_COLUMNS, *fields, "metric", "value"])
        for r in results:
            job = asdict(r.job)
            for metric, value in r.metrics().items():
                # repr: the shortest text that reads back to the same float (the tables compare exactly)
                w.writerow([r.key, r.name, *("" if job[k] is None else job[k] for k in fields), metric, repr(value)])
    return path


def load_sweep(path: str | Path) -> "pandas.DataFrame":
    """The tidy results of a sweep as a pandas DataFrame, one row per job and metric.

    Parameters
    ----------
    path : str or Path
        The sweep's output directory, or its ``results.csv``.

    Returns
    -------
    pandas.DataFrame
        Columns ``job`` (the config hash), ``model_name``, every :class:`JobConfig` field (``seed``,
        ``m``, ``T``, ``model``, ``lr``, ``alpha``, …; empty ``lr``/``weight_decay`` mean the model
        kind's default), ``metric`` and ``value`` (KLs in nats).

    Examples
    --------
    >>> df = load_sweep("runs/sweep")  # doctest: +SKIP
    >>> df.pivot_table(index="lr", columns="metric", values="value")  # doctest: +SKIP
    """
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        p = p / "results.csv"
    if not p.is_file():
        raise ValueError(f"path: {p} is not a sweep's results.csv (run `sweep` first)")
    return pd.read_csv(p, float_precision="round_trip")  # the floats as written (repr), bit for bit


def summarize(table: "pandas.DataFrame", by: list[str]) -> "pandas.DataFrame":
    """Mean, standard error (ddof = 1; 0 for one seed) and number of seeds of every metric per group."""
    keys = [*by, "model_name", "metric"]
    g = table.groupby(keys, sort=False, dropna=False)["value"]
    out = g.agg(mean="mean", n="count").reset_index()
    sd = g.std(ddof=1).fillna(0.0).to_numpy()
    out["se"] = sd / np.sqrt(out["n"].to_numpy())
    return out


def markdown(summary: "pandas.DataFrame", by: list[str]) -> str:
    """One row per group: final-L KL of the trained model, construction, Bayes; the gap; band difference."""
    metrics = ["kl_final_trained", "kl_final_construction", "kl_final_bayes", "gap_trained_minus_construction_final",
               "band_difference_max", "band_difference_mean"]
    heads = ["KL trained (L = T-1)", "KL construction", "KL Bayes", "trained − construction",
             "band difference (layer 1 aligned): max", "mean"]
    cols = [*by, "model_name"]
    lines = ["| " + " | ".join(cols) + " | seeds | " + " | ".join(heads) + " |",
             "|" + "---|" * (len(cols) + 1 + len(heads))]
    for key, grp in summary.groupby(cols, sort=False, dropna=False):
        row = {r.metric: r for r in grp.itertuples()}
        n = next(iter(row.values())).n
        cells = [f"{row[k].mean:.4f} ± {row[k].se:.4f}" if k in row else "—" for k in metrics]
        lines.append("| " + " | ".join(map(str, key)) + f" | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nmean ± s.e. over seeds.\n"


def _plot(results: list[JobResult], by: list[str], path: Path) -> Path:
    """KL vs L of the trained models (mean ± s.e. over seeds), one panel per (m, T)."""
    plt = exp_common.pyplot()
    groups: dict[tuple, list[JobResult]] = {}
    for r in results:
        groups.setdefault(tuple(getattr(r.job, k) for k in by), []).append(r)
    panels = sorted({(r.job.m, r.job.T) for r in results})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (m, T) in zip(axes[0], panels):
        ref_done = False
        for key, rs in groups.items():
            if (rs[0].job.m, rs[0].job.T) != (m, T):
                continue
            L = np.asarray(rs[0].L)
            curves = ["trained"] + ([] if ref_done else [k for k in ("construction", "bayes") if k in rs[0].kl_mean])
            for k in curves:
                mu, se = exp_common.mean_se(np.array([r.kl_mean[k] for r in rs]))
                label = ", ".join(f"{a}={v}" for a, v in zip(by, key) if a not in ("m", "T")) if k == "trained" \
                    else exp_common.style(k)[0]
                color = None if k == "trained" else exp_common.style(k)[1]
                line, = ax.plot(L, mu, ":" if k == "construction" else "-", color=color, label=label)
                ax.fill_between(L, np.maximum(mu - se, 1e-12), mu + se, color=line.get_color(), alpha=0.2, lw=0)
            ref_done = True
        ax.set_yscale("log")
        ax.set_xlabel("context length L")
        ax.set_ylabel("KL(p* ‖ p̂) [nats]")
        ax.set_title(f"m = {m}, T = {T}: mean ± s.e. over seeds", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return exp_common.save_figure(fig, path)


__all__ = ["SweepConfig", "JobConfig", "JobResult", "SweepResult", "run", "run_job", "load_sweep", "summarize",
           "write_results", "connect_ray", "BACKENDS"]
