"""``phase``: where the zero-parameter step law is as good as the per-L optimal step (docs/math.md §11).

The law ``η(n) = 1/((1+α₀) + n/c∞)`` (:func:`mtdmath.predicted_step`, docs/math.md eq-step-law) has no
fitted parameter. This experiment measures what it loses against the loss-optimal one-step MD step
η_opt(L) (:func:`mtdmath.optimal_step`, tuned per context length) over a grid of tasks, and compares the
steps that small trained models learn with the prediction.

1. **Phase diagram.** A cell is (m, α₀, β, S): alpha = (α₀/m)·1_m, rows of pi ~ Dirichlet(β·1_S). For each of
   ``tasks`` pi drawn per cell and each L of ``Ls``: η_opt(L) is tuned on ``n_train`` sequences; on
   ``n_eval`` fresh ones the per-sequence KL of one-step MD at the law's η(L − m) minus the KL at η_opt(L)
   (paired over the same sequences) — the *gap*. A cell's gap is its largest over L (the mean over its tasks
   of the per-task mean gap; the standard error combines the per-task ones, the tasks held fixed). A cell
   passes when that gap is <= ``tolerance``.
2. **Trained steps.** The fixed-step ``md`` model (one learned constant step) and the softmax-sink
   ``mdsink`` model (learned η(n) = c/(n+m+a)) trained on the task of ``train_m`` at each T of ``train_Ts``
   with ``train_seeds`` seeds. The sink model's learned line ``1/η = A + B·n`` (from the layer-3 step at every
   n, :func:`mtdmath.nn.step_by_n`) against the law's ``A = 1+α₀`` and ``B = 1/c∞``; the fixed model's learned
   step (:func:`mtdmath.nn.effective_step`) against the loss-optimal *constant* step of the training
   objective (``optimal_step(T=T)``: the law is a function of n, which a constant step cannot follow).
   Mean ± standard error over seeds; "within two s.e." uses the combined error of both sides.

Every cell and every trained model is a job (a dataclass; its result in ``OUT/jobs/<hash>.json``, so a rerun
skips finished jobs) run on a local process pool or on Ray through the sweep's backends
(:func:`mtdmath.experiments.sweep.run_local`, :func:`~mtdmath.experiments.sweep.run_ray`). Writes
``phase.json`` (every plotted number), ``phase.png`` and ``phase.md``.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch

import mtdmath
from mtdmath.stepsize import task_kl

from . import common as exp_common
from .config import (Batch, Length, NonNegativeInt, Order, PositiveFloat, PriorConfig, Sequences, Steps,
                     Threads, Vocab)

#: the stream key of this experiment (``common`` uses 1-6, ``adaptive`` 7)
KEY_PHASE = 11
#: the trained model pair: the fixed-step and the softmax-sink disentangled transformer
TRAINED = {"fixed": "md", "sink": "mdsink"}


@dataclass
class PhaseConfig(PriorConfig):
    """Configuration of the ``phase`` experiment. The grid: ``orders`` × ``alpha0s`` × ``concentrations`` ×
    ``sizes``; the trained models use the prior fields (S, concentration, alpha) with order ``train_m``.

    Examples
    --------
    >>> from mtdmath import experiments
    >>> cfg = experiments.PhaseConfig.quick(orders=(2,))
    >>> cfg.orders, cfg.alpha0s, cfg.tolerance
    ((2,), (1.0,), 0.0005)
    """

    orders: tuple[Order, ...] = field(default=(2, 3, 5), metadata={"help": "MTD orders m of the grid"})
    alpha0s: tuple[PositiveFloat, ...] = field(default=(0.5, 2.0, 8.0), metadata={
        "help": "prior strengths α₀ of the grid: alpha = (α₀/m)·1_m"})
    concentrations: tuple[PositiveFloat, ...] = field(default=(0.5, 2.0), metadata={
        "help": "row concentrations β of the grid: rows of pi ~ Dirichlet(β·1_S)"})
    sizes: tuple[Vocab, ...] = field(default=(4, 8), metadata={"help": "vocabulary sizes S of the grid"})
    tasks: Steps = field(default=2, metadata={"help": "pi drawn per cell (the gap is averaged over them)"})
    Ls: tuple[Length, ...] = field(default=(8, 16, 32, 64, 128), metadata={
        "help": "context lengths L at which the law is compared with η_opt(L) (those >= m + 1)"})
    n_train: Sequences = field(default=1024, metadata={"help": "sequences η_opt(L) is tuned on"})
    n_eval: Sequences = field(default=1024, metadata={"help": "fresh sequences of the paired KL gap"})
    tolerance: PositiveFloat = field(default=5e-4, metadata={"help": "a cell passes when its gap is <= this [nats]"})
    n_samples: Steps = field(default=64, metadata={"help": "predicted_step: draws of λ*"})
    n_windows: Steps = field(default=1024, metadata={"help": "predicted_step: windows per draw above S^m = this"})
    max_states: Steps = field(default=4096, metadata={
        "help": "predicted_step: exact stationary laws up to S^m = this, simulated chains above"})
    chain_length: Steps = field(default=5000, metadata={"help": "predicted_step: transitions per simulated chain"})
    train_m: Order = field(default=2, metadata={"help": "order of the trained models' task"})
    train_Ts: tuple[Length, ...] = field(default=(17, 33, 65, 129), metadata={
        "help": "training sequence lengths T of the trained models"})
    train_seeds: NonNegativeInt = field(default=3, metadata={"help": "seeds per trained model and T (0: none)"})
    train_steps: Steps = field(default=800, metadata={"help": "optimiser steps of each trained model"})
    batch: Batch = field(default=32, metadata={"help": "sequences per optimiser step"})
    lr: PositiveFloat = field(default=1e-2, metadata={"help": "peak learning rate (AdamW, warm-up, cosine)"})
    warmup: NonNegativeInt = field(default=100, metadata={"help": "linear warm-up steps"})
    n_probe: Sequences = field(default=256, metadata={"help": "sequences the learned steps are read on"})
    n_boot: Sequences = field(default=200, metadata={"help": "bootstrap resamples of the constant-step optimum"})
    backend: Literal["local", "ray"] = field(default="local", metadata={
        "help": "local (a process pool of JOBS workers) or ray (one Ray task per job)"})
    jobs: Threads = field(default=2, metadata={"help": "parallel workers (local) or CPUs of a locally started Ray"})
    address: str = field(default="", metadata={"help": "Ray cluster address; empty: start Ray on this machine"})

    def validate(self) -> None:
        for name in ("orders", "alpha0s", "concentrations", "sizes", "Ls"):
            if not getattr(self, name):
                raise ValueError(f"{name} must have at least one entry")
        if min(self.orders) < 2:
            raise ValueError(f"orders must be >= 2 (got {self.orders}): with one lag every step is the same")
        if min(self.sizes) < 2:
            raise ValueError(f"sizes must be >= 2 (got {self.sizes})")
        if max(self.Ls) < max(self.orders) + 1:
            raise ValueError(f"Ls must hold an L >= m + 1 for every order (got Ls={self.Ls}, orders={self.orders})")
        if self.train_seeds and min(self.train_Ts, default=0) < self.train_m + 3:
            raise ValueError(f"train_Ts must be >= train_m + 3 (got {self.train_Ts}, train_m={self.train_m})")
        if self.train_seeds and not self.train_Ts:
            raise ValueError("train_Ts must have at least one entry when train_seeds > 0")
        if self.address and self.backend != "ray":
            raise ValueError(f"address is only used with --backend ray (got backend {self.backend!r})")

    @classmethod
    def quick(cls, **kw: Any) -> "PhaseConfig":
        base = dict(orders=(2, 3), alpha0s=(1.0,), concentrations=(1.0,), sizes=(3,), tasks=2, Ls=(6, 12),
                    n_train=64, n_eval=64, n_samples=16, n_windows=64, train_Ts=(9, 13), train_seeds=2,
                    train_steps=20, batch=8, warmup=5, n_probe=16, n_boot=2, jobs=1)
        return cls(**(base | kw))


# --------------------------------------------------------------------------- jobs
@dataclass
class CellJob:
    """One cell of the phase diagram (every field enters the hash)."""

    seed: int
    m: int
    alpha0: float
    concentration: float
    S: int
    tasks: int
    Ls: tuple[int, ...]
    n_train: int
    n_eval: int
    n_samples: int
    n_windows: int
    max_states: int
    chain_length: int
    kind: str = "cell"
    device: str = "cpu"  #: where the job runs (the sweep backends read it)
    threads: int = 1

    def keys(self, task: int, *more: int) -> tuple[int, ...]:
        """Stream keys of this cell's task: by value, so that adding cells leaves the others' draws alone."""
        return (KEY_PHASE, 1, self.m, self.S, round(self.concentration * 1e6), round(self.alpha0 * 1e6), task, *more)


@dataclass
class TrainJob:
    """One trained model (every field enters the hash)."""

    seed: int
    train_seed: int
    spec: str
    m: int
    S: int
    concentration: float
    alpha: float
    T: int
    steps: int
    batch: int
    lr: float
    warmup: int
    n_probe: int
    kind: str = "train"
    device: str = "cpu"
    threads: int = 1


def job_key(job: CellJob | TrainJob) -> str:
    """16 hex digits of the SHA-256 of the job (canonical JSON)."""
    return hashlib.sha256(json.dumps(asdict(job), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LawRecord:
    """The law of one task: :class:`mtdmath.stepsize.PredictedStep`'s numbers."""

    c_inf: float
    c_inf_se: float
    A: float
    B: float
    B_se: float
    regime: str


@dataclass
class GapAtL:
    """One context length of one cell: mean over the cell's tasks (each a mean over ``n_eval`` sequences)."""

    L: int
    n: int  #: transitions, L − m
    eta_law: list[float]  #: the law's η(n) per task
    eta_opt: list[float]  #: η_opt(L) per task
    kl_opt: list[float]  #: [mean, s.e.] KL of one-step MD at η_opt(L) [nats]
    gap: list[float]  #: [mean, s.e.] KL(law) − KL(η_opt(L)), paired [nats]
    gap_eta_star: list[float]  #: [mean, s.e.] KL(η*) − KL(η_opt(L)), paired: what the constant η* loses [nats]


@dataclass
class CellResult(exp_common.Result):
    """One cell: the laws of its tasks, the gap at every L, and the verdict."""

    key: str
    m: int
    alpha0: float
    concentration: float
    S: int
    laws: list[LawRecord]
    rows: list[GapAtL]
    gap: list[float]  #: [mean, s.e.] at the L of the largest mean gap [nats]
    gap_L: int  #: that L
    passed: bool  #: gap <= tolerance (the point estimate)
    significantly_above: bool  #: gap − 2 s.e. > tolerance
    seconds: float


def run_cell(d: dict[str, Any]) -> CellResult:
    """Run one cell (a :class:`CellJob` as a dict: picklable for any backend)."""
    job = CellJob(**(d | {"Ls": tuple(d["Ls"])}))
    torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    alpha = np.full(job.m, job.alpha0 / job.m)
    eta_star = mtdmath.eta_bayes(alpha)
    laws, per_L = [], {}
    for t in range(job.tasks):
        pi = mtdmath.random_transition_matrix(job.S, concentration=job.concentration,
                                              rng=exp_common.rng_for(job.seed, *job.keys(t)))
        law = mtdmath.predicted_step(pi, alpha, n_samples=job.n_samples, n_windows=job.n_windows,
                                     max_states=job.max_states, chain_length=job.chain_length,
                                     rng=exp_common.rng_for(job.seed, *job.keys(t, 1)))
        laws.append(LawRecord(c_inf=law.c_inf, c_inf_se=law.c_inf_se, A=law.A, B=law.B, B_se=law.B_se,
                              regime=law.regime))
        for L in (L for L in job.Ls if L >= job.m + 1):
            opt = mtdmath.optimal_step(pi, alpha, L=L, n_train=job.n_train, n_test=2, n_boot=0,
                                       rng=exp_common.rng_for(job.seed, *job.keys(t, 2, L)))
            y, lam = mtdmath.sample_icl(pi, alpha, L + 1, job.n_eval, rng=exp_common.rng_for(job.seed, *job.keys(t, 3, L)))
            eta_law = law.eta(L - job.m)
            k_law = task_kl(y, lam, pi, alpha, eta_law, L=L)
            k_opt = task_kl(y, lam, pi, alpha, opt.eta, L=L)
            k_star = task_kl(y, lam, pi, alpha, eta_star, L=L)
            per_L.setdefault(L, []).append((eta_law, opt.eta, exp_common.mean_se(k_opt), exp_common.mean_se(k_law - k_opt),
                                            exp_common.mean_se(k_star - k_opt)))
    rows = []
    for L, recs in per_L.items():
        def pooled(j: int) -> list[float]:  # mean over the tasks; s.e. with the tasks held fixed
            ms = np.array([r[j] for r in recs], dtype=np.float64)
            return [float(ms[:, 0].mean()), float(math.sqrt((ms[:, 1] ** 2).sum()) / len(recs))]

        rows.append(GapAtL(L=L, n=L - job.m, eta_law=[float(r[0]) for r in recs], eta_opt=[float(r[1]) for r in recs],
                           kl_opt=pooled(2), gap=pooled(3), gap_eta_star=pooled(4)))
    worst = max(rows, key=lambda r: r.gap[0])
    return CellResult(key=job_key(job), m=job.m, alpha0=job.alpha0, concentration=job.concentration, S=job.S,
                      laws=laws, rows=rows, gap=worst.gap, gap_L=worst.L, passed=False, significantly_above=False,
                      seconds=round(time.perf_counter() - t0, 3))


@dataclass
class TrainResult:
    """One trained model: its learned step (the constant step, or the line 1/η = A + B·n of the sink model)."""

    key: str
    spec: str
    T: int
    train_seed: int
    eta: Optional[float] = None  #: fixed model: the learned constant step (effective_step)
    eta_se: Optional[float] = None  #: its clustered standard error over the probe sequences
    A: Optional[float] = None  #: sink model: the learned 1/η(0) …
    B: Optional[float] = None  #: … and slope, from the layer-3 step at every n (fit_adaptive_step)
    c: Optional[float] = None
    a: Optional[float] = None
    r2: Optional[float] = None  #: R² of the fitted c/(n+m+a) (sink) or of the layer-3 regression (fixed)
    final_loss: float = math.nan
    train_s: float = math.nan


def run_train(d: dict[str, Any]) -> TrainResult:
    """Train one model (a :class:`TrainJob` as a dict) and read its learned step on fresh sequences."""
    from mtdmath.nn import ICLTask, effective_step, fit_adaptive_step, model_from_spec, step_by_n
    from mtdmath.nn import train as nn_train

    job = TrainJob(**d)
    torch.set_num_threads(job.threads)
    pi, alpha = exp_common.make_task(job.seed, job.m, job.S, job.concentration, job.alpha)
    task = ICLTask(pi, alpha, job.T)
    gen = torch.Generator().manual_seed(exp_common.torch_seed_for(job.seed, KEY_PHASE, 4, job.T, job.train_seed,
                                                         zlib.crc32(job.spec.encode())))
    model = model_from_spec(job.spec, job.S, job.m, max_len=job.T, generator=gen)
    t0 = time.perf_counter()
    # the fixed and the sink model of one (T, seed) see the same batches
    hist = nn_train(model, task, steps=job.steps, batch_size=job.batch, lr=job.lr, schedule="cosine",
                    warmup=min(job.warmup, job.steps), weight_decay=0.0, grad_clip=1.0,
                    seed=exp_common.torch_seed_for(job.seed, KEY_PHASE, 3, job.T, job.train_seed), log_every=max(1, job.steps // 20),
                    progress=False)
    secs = time.perf_counter() - t0
    model = model.to(dtype=torch.float64).eval()
    y, _ = mtdmath.sample_icl(pi, alpha, job.T, job.n_probe,
                              rng=exp_common.rng_for(job.seed, KEY_PHASE, 5, job.T, job.train_seed))
    out = TrainResult(key=job_key(job), spec=job.spec, T=job.T, train_seed=job.train_seed,
                      final_loss=float(hist.loss[-1]), train_s=round(secs, 3))
    if model.aggregation == "softmax_sink":
        sb = step_by_n(model, y, pi, alpha)
        ok = np.isfinite(sb.eta) & (sb.eta > 0)
        if ok.sum() >= 3:
            f = fit_adaptive_step(sb.n[ok], sb.eta[ok], job.m)
            out.A, out.B, out.c, out.a, out.r2 = (float(v) for v in (f.A, f.B, f.c, f.a, f.r2))
    else:
        e = effective_step(model, y, pi, alpha)
        out.eta, out.eta_se, out.r2 = float(e.eta), float(e.eta_se), float(e.r2)
    return out


def run_phase_job(d: dict[str, Any]) -> CellResult | TrainResult:
    """Run a cell or a trained model (the function the backends call)."""
    return run_cell(d) if d["kind"] == "cell" else run_train(d)


# --------------------------------------------------------------------------- result
@dataclass
class SeedStat:
    """Mean ± standard error over seeds (NaN s.e. for one seed)."""

    values: list[float]
    mean: float
    se: float


@dataclass
class LearnedVsPredicted:
    """One T: the learned step against the prediction (within two combined standard errors?)."""

    T: int
    quantity: str  #: "eta (fixed)", "B (sink)" or "A (sink)"
    learned: SeedStat
    predicted: float
    predicted_se: float
    z: float  #: (learned mean − predicted) / combined s.e.
    within_2se: Optional[bool]  #: None where the combined s.e. is not finite


@dataclass
class PhaseResult(exp_common.Result):
    """What ``phase`` measured (``phase.json``).

    Examples
    --------
    The committed run of the default config, read back (from a clone of the repository):

    >>> from pathlib import Path
    >>> from mtdmath import experiments
    >>> path = Path(experiments.__file__).parents[2] / "docs" / "figures" / "phase.json"
    >>> res = experiments.PhaseResult.read(path)
    >>> res.n_cells, res.n_pass, len(res.failing) == res.n_cells - res.n_pass
    (36, 22, True)
    """

    config: PhaseConfig
    seed: int
    meta: dict[str, Any]
    cells: list[CellResult]
    pass_rate: float  #: share of cells with gap <= tolerance
    n_pass: int
    n_cells: int
    failing: list[str]  #: the failing cells, one line each (m, α₀, β, S, gap ± s.e., L, regimes)
    train_law: Optional[LawRecord] = None  #: the law of the trained models' task
    train_constant_opt: dict[str, list[float]] = field(default_factory=dict)  #: per T: [η_opt(T), s.e.]
    trained: list[TrainResult] = field(default_factory=list)
    learned_vs_predicted: list[LearnedVsPredicted] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    experiment: str = field(default="phase", init=False)


def grid_jobs(cfg: PhaseConfig, seed: int) -> list[CellJob | TrainJob]:
    """Every job of the run: the cells (largest S^m first), then the trained models (largest T first)."""
    cells = [CellJob(seed=seed, m=m, alpha0=a0, concentration=b, S=S, tasks=cfg.tasks, Ls=tuple(cfg.Ls),
                     n_train=cfg.n_train, n_eval=cfg.n_eval, n_samples=cfg.n_samples, n_windows=cfg.n_windows,
                     max_states=cfg.max_states, chain_length=cfg.chain_length)
             for m in cfg.orders for a0 in cfg.alpha0s for b in cfg.concentrations for S in cfg.sizes]
    # the cells of large S^m first: the pool's last jobs are then the short ones
    cells.sort(key=lambda c: -c.S ** c.m)
    trains = [TrainJob(seed=seed, train_seed=j, spec=spec, m=cfg.train_m, S=cfg.S, concentration=cfg.concentration,
                       alpha=cfg.alpha, T=T, steps=cfg.train_steps, batch=cfg.batch, lr=cfg.lr, warmup=cfg.warmup,
                       n_probe=cfg.n_probe)
              for T in sorted(cfg.train_Ts, reverse=True) for j in range(cfg.train_seeds) for spec in TRAINED.values()]
    return [*cells, *trains]  # the phase diagram first


def _load(path: Path, kind: str) -> CellResult | TrainResult:
    with open(path) as f:
        d = json.load(f)
    return CellResult.from_dict(d) if kind == "cell" else TrainResult(**d)


def _seed_stat(v: list[float]) -> SeedStat:
    a = np.asarray(v, dtype=np.float64)
    return SeedStat(values=[float(x) for x in a], mean=float(a.mean()),
                    se=float(a.std(ddof=1) / math.sqrt(a.size)) if a.size >= 2 else math.nan)


def _compare(T: int, quantity: str, learned: SeedStat, pred: float, pred_se: float) -> LearnedVsPredicted:
    se = math.sqrt(learned.se ** 2 + pred_se ** 2)
    z = (learned.mean - pred) / se if math.isfinite(se) and se > 0 else math.nan
    return LearnedVsPredicted(T=T, quantity=quantity, learned=learned, predicted=float(pred), predicted_se=float(pred_se),
                              z=float(z), within_2se=bool(abs(z) <= 2) if math.isfinite(z) else None)




def _fail_reason(c: CellResult) -> str:
    regimes = sorted({law.regime for law in c.laws})
    row = next(r for r in c.rows if r.L == c.gap_L)
    ratio = np.mean(np.asarray(row.eta_law) / np.asarray(row.eta_opt))
    return (f"m={c.m} α₀={c.alpha0:g} β={c.concentration:g} S={c.S}: gap {c.gap[0]:.2e} ± {c.gap[1]:.1e} at "
            f"L={c.gap_L} (η_law/η_opt = {ratio:.2f}; regime {', '.join(regimes)}; c∞ = "
            f"{', '.join(f'{law.c_inf:.3g}' for law in c.laws)})")


def run(cfg: PhaseConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> PhaseResult:
    """Run every cell and trained model (skipping the finished ones); write ``phase.json``, ``phase.png``
    and ``phase.md``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from mtdmath import experiments
    >>> cfg = experiments.PhaseConfig.quick(orders=(2,), train_Ts=(9,), train_seeds=1)
    >>> res = experiments.run_phase(cfg, Path(tempfile.mkdtemp()), seed=0, device=torch.device("cpu"),
    ...                             progress=False)
    >>> res.n_cells, len(res.learned_vs_predicted)
    (1, 1)
    """
    from tqdm.auto import tqdm

    from .sweep import run_local, run_ray

    jobs = grid_jobs(cfg, seed)
    paths = {job_key(j): out / "jobs" / f"{job_key(j)}.json" for j in jobs}
    todo = [j for j in jobs if not paths[job_key(j)].is_file()]
    with exp_common.run_meta(seed, device) as meta:
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"phase ({cfg.backend})", disable=not progress)

        def on_done(res: CellResult | TrainResult) -> None:
            exp_common.write_json_atomic(paths[res.key], res)
            bar.update(1)

        if todo:
            if cfg.backend == "local":
                run_local(todo, cfg.jobs, on_done, fn=run_phase_job)
            else:
                run_ray(todo, address=cfg.address, cpus=cfg.jobs, on_done=on_done, fn=run_phase_job)
        bar.close()
        done = [_load(paths[job_key(j)], j.kind) for j in jobs]
        cells = [r for r in done if isinstance(r, CellResult)]
        cells.sort(key=lambda c: (c.m, c.alpha0, c.concentration, c.S))
        for c in cells:
            c.passed = bool(c.gap[0] <= cfg.tolerance)
            c.significantly_above = bool(c.gap[0] - 2 * c.gap[1] > cfg.tolerance)
        res = PhaseResult(config=cfg, seed=seed, meta=meta, cells=cells, n_cells=len(cells),
                          n_pass=sum(c.passed for c in cells), pass_rate=float(np.mean([c.passed for c in cells])),
                          failing=[_fail_reason(c) for c in cells if not c.passed])
        trained = [r for r in done if isinstance(r, TrainResult)]
        if trained:
            _trained_summary(cfg, seed, res, trained)
    res.figures = [_plot(res, out / "phase.png").name]
    res.write(out / "phase.json")
    (out / "phase.md").write_text(markdown(res))
    print(f"phase: {len(todo)} jobs run, {len(jobs) - len(todo)} skipped (done before); pass rate "
          f"{res.n_pass}/{res.n_cells}", file=sys.stderr)
    return res


def _trained_summary(cfg: PhaseConfig, seed: int, res: PhaseResult, trained: list[TrainResult]) -> None:
    """The law and the constant-step optimum of the trained task, and the learned-vs-predicted table."""
    pi, alpha = exp_common.make_task(seed, cfg.train_m, cfg.S, cfg.concentration, cfg.alpha)
    law = mtdmath.predicted_step(pi, alpha, n_samples=max(cfg.n_samples, 256), n_windows=cfg.n_windows,
                                 max_states=cfg.max_states, chain_length=cfg.chain_length,
                                 rng=exp_common.rng_for(seed, KEY_PHASE, 6))
    res.train_law = LawRecord(c_inf=law.c_inf, c_inf_se=law.c_inf_se, A=law.A, B=law.B, B_se=law.B_se,
                              regime=law.regime)
    res.trained = sorted(trained, key=lambda r: (r.T, r.spec, r.train_seed))
    for T in sorted(cfg.train_Ts):
        opt = mtdmath.optimal_step(pi, alpha, T=T, n_train=cfg.n_train, n_test=cfg.n_eval, n_boot=cfg.n_boot,
                                   rng=exp_common.rng_for(seed, KEY_PHASE, 7, T))
        res.train_constant_opt[str(T)] = [float(opt.eta), float(opt.eta_se)]
        fixed = [r.eta for r in res.trained if r.T == T and r.spec == TRAINED["fixed"] and r.eta is not None]
        sink = [r for r in res.trained if r.T == T and r.spec == TRAINED["sink"] and r.B is not None]
        if fixed:
            res.learned_vs_predicted.append(_compare(T, "eta (fixed)", _seed_stat(fixed), opt.eta, opt.eta_se))
        if sink:
            res.learned_vs_predicted.append(_compare(T, "B (sink)", _seed_stat([r.B for r in sink]), law.B, law.B_se))
            res.learned_vs_predicted.append(_compare(T, "A (sink)", _seed_stat([r.A for r in sink]), law.A, 0.0))


# --------------------------------------------------------------------------- tables and figure
def markdown(res: PhaseResult) -> str:
    """Markdown tables: every cell's gap (± s.e.) and verdict, the failing cells, the learned-vs-predicted table."""
    tol = res.config.tolerance
    lines = [f"**Phase diagram**: KL(one-step MD at the law's η(L−m)) − KL(at η_opt(L)), largest over L, mean ± s.e. "
             f"(paired over sequences, {res.config.tasks} pi per cell); pass: <= {tol:g} nats. "
             f"**{res.n_pass}/{res.n_cells} cells pass ({100 * res.pass_rate:.0f} %).**\n",
             "| m | α₀ | β | S | regime | c∞ | gap [nats] | at L | KL(η_opt) at that L | η* − η_opt gap | pass |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in res.cells:
        row = next(r for r in c.rows if r.L == c.gap_L)
        regimes = ", ".join(sorted({law.regime for law in c.laws}))
        cinf = ", ".join(f"{law.c_inf:.3g}" for law in c.laws)
        lines.append(f"| {c.m} | {c.alpha0:g} | {c.concentration:g} | {c.S} | {regimes} | {cinf} | "
                     f"{c.gap[0]:+.1e} ± {c.gap[1]:.1e} | {c.gap_L} | {row.kl_opt[0]:.4f} | "
                     f"{row.gap_eta_star[0]:+.1e} | {'yes' if c.passed else 'NO'} |")
    if res.failing:
        lines += ["", "**Failing cells**\n", *[f"- {f}" for f in res.failing]]
    if res.learned_vs_predicted:
        law = res.train_law
        lines += ["", f"**Learned vs predicted steps** (m = {res.config.train_m}, S = {res.config.S}, β = "
                      f"{res.config.concentration:g}, alpha = {res.config.alpha:g}·1; law: A = {law.A:g}, B = "
                      f"{law.B:.4f} ± {law.B_se:.4f}; fixed model against the constant-step optimum η_opt(T); mean ± s.e. "
                      f"over {res.config.train_seeds} seeds)\n",
                  "| T | quantity | learned | predicted | z | within 2 s.e.? |", "|---|---|---|---|---|---|"]
        for r in res.learned_vs_predicted:
            w = "–" if r.within_2se is None else ("yes" if r.within_2se else "no")
            lines.append(f"| {r.T} | {r.quantity} | {r.learned.mean:.4f} ± {r.learned.se:.4f} | "
                         f"{r.predicted:.4f} ± {r.predicted_se:.4f} | {r.z:+.1f} | {w} |")
    return "\n".join(lines) + "\n"


def _plot(res: PhaseResult, path: Path) -> Path:
    plt = exp_common.pyplot()
    cfg = res.config
    cols = [(b, S) for b in cfg.concentrations for S in cfg.sizes]
    n_rows = len(cfg.orders) + (1 if res.learned_vs_predicted else 0)
    fig, axes = plt.subplots(n_rows, len(cols), figsize=(3.2 * len(cols), 2.6 * n_rows), squeeze=False)
    for i, m in enumerate(cfg.orders):
        for j, (b, S) in enumerate(cols):
            ax = axes[i][j]
            cs = sorted((c for c in res.cells if c.m == m and c.concentration == b and c.S == S), key=lambda c: c.alpha0)
            a0 = np.array([c.alpha0 for c in cs])
            g = np.array([c.gap for c in cs])
            if len(cs):
                ax.errorbar(a0, g[:, 0], yerr=2 * g[:, 1], fmt="o", color="black", ms=3, capsize=2,
                            label="law − η_opt(L) (largest over L), ± 2 s.e.")
                bad = [c.passed is False for c in cs]
                ax.plot(a0[bad], g[bad, 0], "x", color="tab:red", ms=8, label="fails")
            ax.axhline(cfg.tolerance, color="tab:red", lw=0.8, ls="--", label=f"tolerance {cfg.tolerance:g}")
            ax.axhline(0, color="gray", lw=0.5)
            ax.set_xscale("log")
            ax.set_xticks(list(cfg.alpha0s), [f"{a:g}" for a in cfg.alpha0s])
            ax.minorticks_off()
            ax.set_title(f"m={m}, β={b:g}, S={S}", fontsize=8)
            ax.set_xlabel("α₀", fontsize=7)
            ax.set_ylabel("KL gap [nats]", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=5)
    if res.learned_vs_predicted:
        quantities = ["eta (fixed)", "B (sink)", "A (sink)"]
        for j in range(len(cols)):
            ax = axes[-1][j]
            if j >= len(quantities):
                ax.axis("off")
                continue
            rs = [r for r in res.learned_vs_predicted if r.quantity == quantities[j]]
            if not rs:
                ax.axis("off")
                continue
            T = np.array([r.T for r in rs])
            ax.errorbar(T, [r.learned.mean for r in rs], yerr=[2 * r.learned.se for r in rs], fmt="o", color="black",
                        ms=3, capsize=2, label="learned (mean ± 2 s.e. over seeds)")
            ax.errorbar(T * 1.04, [r.predicted for r in rs], yerr=[2 * r.predicted_se for r in rs], fmt="s",
                        color="tab:blue", ms=3, capsize=2,
                        label="η_opt(T), constant step" if quantities[j] == "eta (fixed)" else "law")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(cfg.train_Ts), [str(t) for t in sorted(cfg.train_Ts)])
            ax.minorticks_off()
            ax.set_title(f"trained: {quantities[j]}", fontsize=8)
            ax.set_xlabel("training length T", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=5)
    fig.suptitle(f"Zero-parameter step law vs the per-L optimum: {res.n_pass}/{res.n_cells} cells within "
                 f"{cfg.tolerance:g} nats", fontsize=10)
    fig.tight_layout()
    return exp_common.save_figure(fig, path)
