"""``adaptive``: the context-adaptive MD step c/(n+m+a) of a softmax-sink layer 2 (docs/math.md §5.6).

On the in-context task of ``train`` (the same pi at this seed and order):

1. **(c, a) fitted two ways.** (i) to the loss-optimal one-step steps η_opt(L) of the ``stepsize``
   experiment (its JSON, or recomputed with :func:`mtdmath.optimal_step` when the JSON's task is
   not this one), by weighted least squares of ``1/η = (m+a)/c + n/c`` (:func:`mtdmath.nn.fit_adaptive_step`,
   delta-method s.e.); the same fit to the per-L optimal steps of this experiment's own fit set,
   at every L. (ii) directly, by minimising the training objective — the mean KL(p* ‖ p̂) over the
   prefixes L = m … T of fresh sequences (the expected next-token loss minus an entropy no step
   changes) — over (c, a) (L-BFGS-B), with bootstrap s.e. over sequences; also the Bayes-consistent
   one-parameter form a = c(1+α₀) − m, and η_train, the best constant step, on the same sequences.
2. **KL across L** on a disjoint evaluation set (paired): the constructed softmax-sink transformer
   (``MDTransformer.construct(..., aggregation="softmax_sink")``, the model itself) at those (c, a);
   one-step MD at η*, at η_train and at η_opt(L) (tuned per L on the fit set); exact Bayes; k-step
   MD with a constant step tuned for the training objective (:func:`mtdmath.optimal_step`).
3. **Trained models.** The learnable softmax-sink model (``mdsink``: learnable sink score and
   layer-3 scale) and the fixed-step ``md`` model, trained from scratch on the same seeds, batch
   streams and configuration, for a paired comparison: the learned a (``exp(sink_logit)``), the
   layer-3 step at each n (:func:`mtdmath.nn.step_by_n`) and the fit of c/(n+m+a) to it (R²);
   KL(adaptive trained) − KL(fixed trained) at the table lengths, paired over sequences per seed
   and pooled over seeds.
4. **Standard transformers.** The one-step MD step closest to a trained ``StandardTransformer``'s
   output at each n (:func:`mtdmath.nn.matched_step`) from the given checkpoints, and the fit of
   c/(n+m+a) to it.

Writes ``adaptive.json`` (every plotted number), ``adaptive.png`` and ``adaptive.md``; checkpoints
under ``OUT/checkpoints/seed{j}/``.
"""
from __future__ import annotations

import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar

import mtdmath
from mtdmath.nn import (AdaptiveFit, ICLTask, MDTransformer, fit_adaptive_step, matched_step, model_from_spec, save_checkpoint,
                        step_by_n)
from mtdmath.nn import train as nn_train
from mtdmath.nn.probe import _kl_rows, _neg_entropy, _OneStepPrefixes

from . import common as exp_common
from .config import (Batch, Length, NonNegativeInt, PositiveFloat, Seed, Sequences, Steps, TaskConfig,
                     check_attention_size)
from .prefix_bayes import posterior_mean_all_prefixes
from .stepsize import StepsizeResult

#: the stream key of this experiment (``common`` uses 1-6)
KEY_ADAPT = 7
#: the trained model pair: fixed-step (sum aggregation) and adaptive (softmax sink)
PAIR = {"fixed": "md", "adaptive": "mdsink"}

LABELS = {
    "md1": "1-step MD (η*)", "md1_eta_train": "1-step MD (η_train, constant, tuned on the objective)",
    "md1_eta_opt_L": "1-step MD (η_opt(L), tuned per L)", "bayes": "exact Bayes",
    "adaptive_stepsize_fit": "adaptive construction, (c, a) fitted to η_opt(L) of `stepsize`",
    "adaptive_direct": "adaptive construction, (c, a) minimising the objective",
    "adaptive_consistent": "adaptive construction, a = c(1+α₀) − m (η(0) = η*), c minimising the objective",
    "trained_fixed": "trained md (fixed step), mean over seeds", "trained_adaptive": "trained mdsink (adaptive), mean over seeds",
}
COLORS = {"md1": "tab:blue", "md1_eta_train": "tab:green", "md1_eta_opt_L": "darkgreen", "bayes": "black",
          "adaptive_stepsize_fit": "tab:orange", "adaptive_direct": "tab:red", "adaptive_consistent": "tab:pink",
          "trained_fixed": "tab:olive", "trained_adaptive": "tab:purple"}


@dataclass
class AdaptiveConfig(TaskConfig):
    """Configuration of the ``adaptive`` experiment (S, concentration, alpha, m, T:
    :class:`~mtdmath.experiments.config.TaskConfig`).

    Examples
    --------
    >>> from mtdmath import experiments
    >>> cfg = experiments.AdaptiveConfig.quick()
    >>> cfg.m, cfg.T, cfg.seeds
    (2, 20, (0, 1))
    """

    T: Length = field(default=128, metadata={
        "help": "longest context L evaluated and trained (training sequences have T+1 tokens, the objective is L = m..T)"})
    n_fit: Sequences = field(default=1024, metadata={"help": "sequences the steps and (c, a) are fitted on"})
    n_eval: Sequences = field(default=1000, metadata={"help": "disjoint evaluation sequences (every KL, paired)"})
    n_boot: Sequences = field(default=20, metadata={
        "help": "bootstrap resamples of the fit set for the s.e. of (c, a), η_train, η_opt(L)"})
    stepsize_json: str = field(default="docs/figures/stepsize.json", metadata={
        "help": "the `stepsize` run whose η_opt(L) (setting m=M) fit (i) uses; recomputed when missing, empty or of another task"})
    stepsize_Ls: tuple[Length, ...] = field(default=(8, 16, 32, 64, 128, 256), metadata={
        "help": "context lengths of η_opt(L) when it is recomputed"})
    stepsize_n: Sequences = field(default=512, metadata={
        "help": "n_train = n_test of optimal_step when η_opt(L) is recomputed"})
    k_tuned: tuple[Steps, ...] = field(default=(2, 3), metadata={
        "help": "k of the k-step MD baselines with a tuned constant step"})
    k_n_train: Sequences = field(default=256, metadata={"help": "sequences optimal_step tunes the k-step MD steps on"})
    seeds: tuple[Seed, ...] = field(default=(0, 1, 2), metadata={
        "help": "training seeds (initial weights and batch stream)"})
    steps: Steps = field(default=2500, metadata={"help": "optimiser steps of each trained model"})
    batch: Batch = field(default=64, metadata={"help": "sequences per step"})
    lr: PositiveFloat = field(default=1e-2, metadata={
        "help": "peak learning rate (AdamW, cosine, no weight decay: as `train`'s md)"})
    warmup: NonNegativeInt = field(default=200, metadata={"help": "linear warm-up steps"})
    grad_clip: PositiveFloat = field(default=1.0, metadata={"help": "gradient-norm clipping threshold"})
    n_probe: Sequences = field(default=256, metadata={"help": "evaluation sequences given to step_by_n / matched_step"})
    std_checkpoints: tuple[str, ...] = field(default=("runs/paper/train/checkpoints/std3.safetensors",
                                                      "runs/paper/train/checkpoints/std5.safetensors"), metadata={
        "help": "trained StandardTransformer checkpoints probed for an n-dependent step (missing ones are skipped)"})
    table_L: tuple[Length, ...] = field(default=(16, 32, 64, 128), metadata={"help": "context lengths of the tables"})

    def validate(self) -> None:
        if self.m < 2:
            raise ValueError(f"m must be >= 2: a step moves lam only for m >= 2 (got {self.m})")
        if self.S < 2:
            raise ValueError(f"S must be >= 2 (got {self.S})")
        if self.T < self.m + 3:
            raise ValueError(f"T must be >= m + 3 (got T={self.T}, m={self.m})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct integers >= 0, at least one (got {self.seeds})")
        if any(k < 2 for k in self.k_tuned):
            raise ValueError(f"k_tuned must hold k >= 2 (got {self.k_tuned})")
        if not self.table_L or any(not self.m <= L <= self.T for L in self.table_L):
            raise ValueError(f"table_L must be non-empty, each in m..T = {self.m}..{self.T} (got {self.table_L})")
        if not self.stepsize_Ls or any(L < self.m + 1 for L in self.stepsize_Ls):
            raise ValueError(f"stepsize_Ls must be non-empty, each >= m + 1 (got {self.stepsize_Ls})")
        check_attention_size(batch=self.batch, T=self.T + 1, heads=1)

    @classmethod
    def quick(cls, **kw: Any) -> "AdaptiveConfig":
        return cls(**(dict(S=4, T=20, n_fit=48, n_eval=32, n_boot=3, stepsize_json="", stepsize_Ls=(6, 12, 20),
                           stepsize_n=24, k_tuned=(2,), k_n_train=16, seeds=(0, 1), steps=15, batch=8, warmup=3,
                           n_probe=16, std_checkpoints=(), table_L=(8, 16, 20)) | kw))


# ----------------------------------------------------------------------------- typed results
#: curve keys of the constructions and the trained pair (``kl_mean``, ``table``, :class:`PairedDiff`)
DIRECT, CONSISTENT, STEPSIZE_FIT = "adaptive_direct", "adaptive_consistent", "adaptive_stepsize_fit"
ETA_TRAIN, ETA_OPT_L = "md1_eta_train", "md1_eta_opt_L"


@dataclass
class EtaOptCurve:
    """Loss-optimal one-step MD steps η_opt(L) ± s.e. at context lengths L (n = L − m transitions)."""

    L: list[int]  #: context lengths
    n: list[int]  #: transitions, L − m
    eta: np.ndarray  #: η_opt(L) (dimensionless step)
    se: np.ndarray  #: its bootstrap standard error
    source: str = ""  #: where they come from (a `stepsize` JSON, or recomputed and why)


@dataclass
class DirectFit:
    """(c, a) of η(n) = c/(n+m+a) minimising the training objective (mean KL over L = m … T)."""

    c: float  #: step numerator
    a: float  #: step offset (>= 0), in transitions
    objective: float  #: the objective at (c, a) on the fit set [nats]
    c_se: float  #: bootstrap s.e. of c
    a_se: float  #: bootstrap s.e. of a
    cov_ca: np.ndarray  #: bootstrap covariance of (c, a), (2, 2)
    bootstrap: np.ndarray  #: the bootstrap (c, a) pairs, (n_boot, 2)
    A: float  #: (m+a)/c, the intercept of 1/η = A + B·n
    B: float  #: 1/c, its slope


@dataclass
class ConsistentFit:
    """c minimising the objective with a = c(1+α₀) − m (so η(0) = η*)."""

    c: float  #: step numerator
    a: float  #: c(1+α₀) − m (clipped at 0)
    objective: float  #: the objective at (c, a) [nats]
    c_se: float  #: bootstrap s.e. of c


@dataclass
class ConstantStep:
    """η_train: the constant step minimising the objective."""

    eta: float  #: the step
    se: float  #: its bootstrap s.e.
    objective: float  #: the objective at η_train [nats]


@dataclass
class StepFits:
    """The fits of :func:`fit_steps` on the fit set."""

    direct: DirectFit
    consistent: ConsistentFit
    eta_train: ConstantStep
    eta_opt_L: EtaOptCurve  #: the optimal step of each row n >= 1 alone


@dataclass
class ConstructedModel:
    """The softmax-sink construction at one (c, a)."""

    c: float  #: step numerator
    a: float  #: step offset
    max_abs_diff_vs_core: Optional[float] = None  #: max |p̂(model) − p̂(core, step c/(n+m+a))| (probability)
    n: Optional[np.ndarray] = None  #: transitions at which the layer-3 step was read
    eta_layer3: Optional[np.ndarray] = None  #: the layer-3 step at each n (:func:`mtdmath.nn.step_by_n`)
    skipped: Optional[str] = None  #: why it was not built (c <= 0 or a < 0)


@dataclass
class StepRecord:
    """The step of a trained model at each n of the probe sequences."""

    n: np.ndarray  #: transitions in the context
    eta_layer3: np.ndarray  #: layer-3 step at each n (:func:`mtdmath.nn.step_by_n`)
    r2_layer3_by_n: np.ndarray  #: R² of one step describing layer 3 at each n
    eta_matched: np.ndarray  #: one-step MD step closest to the output at each n (:func:`mtdmath.nn.matched_step`)
    matched_kl_left: np.ndarray  #: KL left at the matched step at each n [nats]
    eta_layer3_spread: Optional[float]  #: std/mean of the positive layer-3 steps (None if none)
    fit_layer3: Optional[AdaptiveFit] = None  #: c/(n+m+a) fitted to the layer-3 step (>= 3 positive steps)
    a_param: Optional[float] = None  #: the learned sink weight a = exp(sink_logit) (softmax-sink model)


@dataclass
class TrainedModel:
    """One trained model of one training seed."""

    spec: str  #: model spec (``md``, ``mdsink``)
    checkpoint: str  #: its checkpoint file
    train_time_s: float  #: wall-clock training time [s]
    loss_curve: dict[str, Any]  #: :meth:`mtdmath.nn.TrainHistory.as_dict`
    step: Optional[StepRecord] = None


@dataclass
class TrainedDiff:
    """KL(trained adaptive) − KL(trained fixed), paired over the evaluation sequences; ``{L: [mean, s.e.]}`` [nats]."""

    pooled: dict[str, list[float]]  #: the per-sequence mean of the seeds' differences
    per_seed: dict[str, dict[str, list[float]]]  #: per training seed
    over_seeds: dict[str, list[float]]  #: mean ± s.e. of the seed means


@dataclass
class PairedDiff:
    """KL(a) − KL(b) of two curves, paired over the evaluation sequences."""

    a: str  #: curve key
    b: str  #: curve key
    per_L: dict[str, list[float]]  #: ``{L: [mean, s.e.]}`` [nats]


@dataclass
class SeedStat:
    """One number over the training seeds."""

    values: list[float]  #: per seed (NaN where not defined)
    mean: float  #: over the finite values
    se: float  #: their standard error (NaN for fewer than 2)


@dataclass
class LearnedStep:
    """The fit of c/(n+m+a) to the trained models' layer-3 steps, over seeds."""

    c: SeedStat
    a: SeedStat
    r2: SeedStat  #: R² of the fit in η
    A: SeedStat  #: (m+a)/c
    B: SeedStat  #: 1/c
    eta_layer3_spread: list[Optional[float]]  #: per seed, std/mean of the layer-3 step
    a_param: Optional[SeedStat] = None  #: the learned sink weight (softmax-sink model)


@dataclass
class StandardProbe:
    """The matched one-step MD step of a trained StandardTransformer at each n."""

    checkpoint: str  #: its file
    skipped: Optional[str] = None  #: why it was not probed
    T: Optional[int] = None  #: the longest trained context
    n: Optional[np.ndarray] = None  #: transitions
    eta_matched: Optional[np.ndarray] = None  #: matched step at each n
    matched_kl_left: Optional[np.ndarray] = None  #: KL left at the matched step [nats]
    pi: Optional[np.ndarray] = None  #: the checkpoint's task (S, S)
    alpha: Optional[np.ndarray] = None  #: the checkpoint's prior (m,)
    fit: Optional[AdaptiveFit] = None  #: c/(n+m+a) fitted to the matched step


@dataclass
class AdaptiveVerdict:
    """Plain statements per table L (2 s.e. rules on paired differences: lower / higher / no significant difference)."""

    trained_adaptive_vs_trained_fixed: dict[str, str]
    stepsize_fit_chi2_dof: float  #: χ²/dof of fit (i)
    own_eta_opt_fit_chi2_dof: float  #: χ²/dof of fit (i')
    adaptive_construction_vs_constant_eta_train: Optional[dict[str, str]] = None
    adaptive_construction_vs_per_L_tuned: Optional[dict[str, str]] = None


@dataclass
class AdaptiveResult(exp_common.Result):
    """What ``adaptive`` measured (``adaptive.json``). KLs are KL(p* ‖ p̂) in nats on the evaluation set;
    curve keys are those of :data:`LABELS` (and ``md{k}_tuned``)."""

    config: AdaptiveConfig
    seed: int  #: base seed of every stream
    meta: dict[str, Any]  #: versions, git state, machine, run_time_s [s]
    m: int  #: MTD order
    pi: np.ndarray  #: transition matrix (S, S)
    alpha: np.ndarray  #: Dirichlet prior (m,)
    alpha0: float  #: Σ alpha
    eta_star: float  #: η* = 1/(1+α₀)
    L: list[int]  #: context lengths m … T
    labels: dict[str, str]  #: legend label per curve key
    stepsize_eta_opt: EtaOptCurve  #: η_opt(L) that fit (i) uses
    fit_stepsize: AdaptiveFit  #: fit (i): c/(n+m+a) to η_opt(L) of `stepsize`
    fit_own_eta_opt_L: AdaptiveFit  #: fit (i'): the same to this fit set's η_opt at every L
    fits: StepFits  #: fits (ii) on the training objective
    k_step_eta: dict[str, float]  #: per k: the tuned constant step of k-step MD
    constructed: dict[str, ConstructedModel]  #: per construction curve key
    kl_mean: dict[str, list[float]]  #: per curve: mean KL at each L [nats]
    kl_se: dict[str, list[float]]  #: its standard error over sequences [nats]
    table: dict[str, dict[str, list[float]]]  #: {L: {curve: [mean, s.e.]}} [nats]
    objective_eval: dict[str, list[float]]  #: per curve: [mean, s.e.] of the mean KL over L = m … T [nats]
    paired_adaptive_minus_fixed_trained: TrainedDiff
    paired: list[PairedDiff]  #: other paired differences
    trained: dict[str, dict[str, TrainedModel]]  #: per training seed, per role (``fixed``, ``adaptive``)
    learned: dict[str, LearnedStep]  #: per role
    standard: dict[str, StandardProbe]  #: per checkpoint stem
    phase_times_s: dict[str, float]  #: wall clock per phase [s]
    verdict: Optional[AdaptiveVerdict] = None
    figures: list[str] = field(default_factory=list)  #: PNG files written next to the JSON
    experiment: str = field(default="adaptive", init=False)

    def paired_diff(self, a: str, b: str) -> Optional[PairedDiff]:
        """The paired difference KL(a) − KL(b), if it was measured."""
        return next((d for d in self.paired if (d.a, d.b) == (a, b)), None)


# ----------------------------------------------------------------------------- the objective
class PrefixObjective:
    """One-step MD from μ with a per-prefix step on a fixed set of sequences, vectorised for fitting.

    Precomputes ∇ℓ(μ) of every prefix (B, R, m), the rows of pi each lag mixes (B, R, m, S) and the
    true law p* (B, R, S), R = T − m + 1 (row r: the prefix of length m + r, n = r transitions), so
    that a step vector ``eta (R,)`` costs one softmax and one contraction; ``kl(eta)`` equals
    ``kl(p*, md_predictive_all_prefixes(tokens, pi, alpha, eta=eta[None]))`` (tests check it).
    """

    def __init__(self, tokens: np.ndarray, lam: np.ndarray, pi: np.ndarray, alpha: np.ndarray) -> None:
        m = alpha.shape[0]
        self.m, self.alpha = m, alpha
        self.md = _OneStepPrefixes(tokens, pi, alpha)  # ∇ℓ(μ) (B, R, m) and the mixed rows of pi
        self.p_true = exp_common.truth_all_prefixes(tokens, lam, pi)  # (B, R, S)
        self.neg_entropy = _neg_entropy(self.p_true)
        self.B, self.R = self.md.grad.shape[:2]

    def kl(self, eta: np.ndarray, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Per-sequence KL(p* ‖ p̂) at the rows ``rows`` for the step ``eta`` (one per selected row): (B, r)."""
        return _kl_rows(self.p_true[:, rows], self.neg_entropy[:, rows], self.md.predictive(eta, rows))

    def objective(self, eta: np.ndarray, w: np.ndarray | None = None) -> float:
        """The training objective: the mean over rows and (weighted) sequences of the KL."""
        per_seq = self.kl(eta).mean(axis=1)
        return float(per_seq.mean() if w is None else per_seq @ w / w.sum())

    def adaptive_eta(self, c: float, a: float) -> np.ndarray:
        """``c/(n+m+a)`` for n = 0 … R-1."""
        return c / (np.arange(self.R) + self.m + a)


def _fit_direct(obj: PrefixObjective, w: np.ndarray | None, start: tuple[float, float]) -> tuple[float, float, float]:
    """(c, a, objective) minimising the objective over log c and a >= 0 (L-BFGS-B, numerical gradient)."""
    def f(x: np.ndarray) -> float:
        return obj.objective(obj.adaptive_eta(float(np.exp(x[0])), float(x[1])), w)

    x0 = np.array([np.log(start[0]), max(start[1], 0.0)])
    best = minimize(f, x0, method="L-BFGS-B", bounds=[(np.log(1e-3), np.log(1e4)), (0.0, 1e5)],
                    options={"ftol": 1e-13, "gtol": 1e-10, "maxiter": 500})
    return float(np.exp(best.x[0])), float(best.x[1]), float(best.fun)


def _fit_consistent(obj: PrefixObjective, w: np.ndarray | None, alpha0: float) -> tuple[float, float, float]:
    """(c, a, objective) with a = c(1+α₀) − m: one parameter, c >= m/(1+α₀) (bounded Brent on log c)."""
    m = obj.m
    lo = np.log(m / (1 + alpha0))

    def f(u: float) -> float:
        c = float(np.exp(u))
        return obj.objective(obj.adaptive_eta(c, max(c * (1 + alpha0) - m, 0.0)), w)

    r = minimize_scalar(f, bounds=(lo, lo + np.log(1e4)), method="bounded", options={"xatol": 1e-9})
    c = float(np.exp(r.x))
    return c, max(c * (1 + alpha0) - m, 0.0), float(r.fun)


def _fit_constant(obj: PrefixObjective, w: np.ndarray | None, rows: slice | np.ndarray = slice(None)) -> float:
    """The constant step minimising the mean KL over ``rows`` (bounded Brent on log η)."""
    def f(u: float) -> float:
        per = obj.kl(np.full(obj.R, np.exp(u))[rows], rows).mean(axis=1)
        return float(per.mean() if w is None else per @ w / w.sum())

    r = minimize_scalar(f, bounds=(np.log(1e-5), np.log(1e2)), method="bounded", options={"xatol": 1e-9})
    return float(np.exp(r.x))


def fit_steps(obj: PrefixObjective, alpha: np.ndarray, *, n_boot: int, rng: np.random.Generator,
              start: tuple[float, float], progress: bool = False) -> StepFits:
    """Direct (c, a), the consistent c, η_train and η_opt(L) at every row n >= 1, each with a bootstrap s.e."""
    from tqdm.auto import tqdm

    alpha0 = float(alpha.sum())
    c, a, fval = _fit_direct(obj, None, start)
    cc, ca, cval = _fit_consistent(obj, None, alpha0)
    et = _fit_constant(obj, None)
    eval_ = obj.objective(np.full(obj.R, et))
    rows = np.arange(1, obj.R)
    per_L = np.array([_fit_constant(obj, None, np.array([r])) for r in rows])
    boots: dict[str, list] = {"direct": [], "consistent": [], "eta_train": [], "eta_opt_L": []}
    for _ in tqdm(range(n_boot), desc="adaptive: bootstrap of the fits", disable=not progress, leave=False):
        w = rng.multinomial(obj.B, np.full(obj.B, 1.0 / obj.B)).astype(np.float64)
        boots["direct"].append(_fit_direct(obj, w, (c, a))[:2])
        boots["consistent"].append(_fit_consistent(obj, w, alpha0)[0])
        boots["eta_train"].append(_fit_constant(obj, w))
        boots["eta_opt_L"].append([_fit_constant(obj, w, np.array([r])) for r in rows])
    bd = np.asarray(boots["direct"])
    cov = np.cov(bd.T, ddof=1)
    return StepFits(
        direct=DirectFit(c=c, a=a, objective=fval, c_se=float(np.sqrt(cov[0, 0])), a_se=float(np.sqrt(cov[1, 1])),
                         cov_ca=cov, bootstrap=bd, A=(obj.m + a) / c, B=1.0 / c),
        consistent=ConsistentFit(c=cc, a=ca, objective=cval, c_se=float(np.std(boots["consistent"], ddof=1))),
        eta_train=ConstantStep(eta=et, se=float(np.std(boots["eta_train"], ddof=1)), objective=eval_),
        eta_opt_L=EtaOptCurve(L=(rows + obj.m).tolist(), n=rows.tolist(), eta=per_L,
                              se=np.std(np.asarray(boots["eta_opt_L"]), axis=0, ddof=1),
                              source="each row of the fit set alone, bootstrap s.e."))


# ----------------------------------------------------------------------------- η_opt(L) of `stepsize`
def stepsize_eta_opt(cfg: AdaptiveConfig, pi: np.ndarray, alpha: np.ndarray, seed: int, progress: bool
                     ) -> EtaOptCurve:
    """η_opt(L) ± s.e. of the ``stepsize`` run (its JSON) when it is this task, else recomputed."""
    from tqdm.auto import tqdm

    path = Path(cfg.stepsize_json) if cfg.stepsize_json else None
    name = f"m={cfg.m}"
    if path is not None and path.is_file():
        r = StepsizeResult.read(path).results.get(name)
        if r is not None and np.allclose(r.pi, pi, rtol=0, atol=1e-12) and np.allclose(r.alpha, alpha):
            rows = r.rows
            return EtaOptCurve(L=[x.L for x in rows], n=[x.n for x in rows], eta=np.array([x.eta_opt for x in rows]),
                               se=np.array([x.eta_opt_se for x in rows]), source=str(path))
        why = "its task differs from this one" if r is not None else f"it has no setting {name!r}"
    else:
        why = "no file given" if path is None else f"{path} does not exist"
    Ls = [L for L in cfg.stepsize_Ls if L >= cfg.m + 1]
    eta, se = [], []
    for L in tqdm(Ls, desc="adaptive: η_opt(L) (optimal_step)", disable=not progress, leave=False):
        r = mtdmath.optimal_step(pi, alpha, L=L, n_train=cfg.stepsize_n, n_test=cfg.stepsize_n, n_boot=max(cfg.n_boot, 2),
                           rng=exp_common.rng_for(seed, KEY_ADAPT, 10, L))
        eta.append(r.eta)
        se.append(r.eta_se)
    return EtaOptCurve(L=Ls, n=[L - cfg.m for L in Ls], eta=np.asarray(eta), se=np.asarray(se),
                       source=f"recomputed with optimal_step ({why})")


# ----------------------------------------------------------------------------- training
def _train_pair(cfg: AdaptiveConfig, pi: np.ndarray, alpha: np.ndarray, seed: int, j: int, out: Path,
                device: torch.device, progress: bool) -> dict[str, tuple[MDTransformer, TrainedModel]]:
    """Train the fixed and the adaptive model of training seed j on the same batch stream: per role,
    the model (float64, eval mode) and its record."""
    task = ICLTask(pi, alpha, cfg.T + 1, device=device)
    data_seed = exp_common.torch_seed_for(seed, KEY_ADAPT, 3, j)
    out_models = {}
    for role, spec in PAIR.items():
        gen = torch.Generator().manual_seed(exp_common.torch_seed_for(seed, KEY_ADAPT, 4, j, zlib.crc32(spec.encode())))
        model = model_from_spec(spec, cfg.S, cfg.m, max_len=cfg.T + 1, generator=gen)
        t0 = time.perf_counter()
        hist = nn_train(model, task, steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr, schedule="cosine",
                        warmup=min(cfg.warmup, cfg.steps), weight_decay=0.0, grad_clip=cfg.grad_clip, device=device,
                        seed=data_seed, log_every=max(1, cfg.steps // 50), progress=progress,
                        desc=f"adaptive: train {spec} seed {j}")
        secs = time.perf_counter() - t0
        path = save_checkpoint(out / "checkpoints" / f"seed{j}" / f"{spec}{exp_common.CHECKPOINT_SUFFIX}", model, task=task, history=hist,
                               extra={"seed": seed, "train_seed": j, "spec": spec, "train_time_s": round(secs, 3)})
        out_models[role] = (model.to(dtype=torch.float64).eval(),
                            TrainedModel(spec=spec, checkpoint=str(path), train_time_s=round(secs, 3),
                                         loss_curve=hist.as_dict()))
    return out_models


def _step_record(model: MDTransformer, tokens: np.ndarray, probs: np.ndarray, pi: np.ndarray, alpha: np.ndarray
                 ) -> StepRecord:
    """Layer-3 step at each n (step_by_n), the matched step of the output, and the c/(n+m+a) fits."""
    m = alpha.shape[0]
    sb = step_by_n(model, tokens, pi, alpha)
    ms = matched_step(probs, tokens, pi, alpha)
    ok = np.isfinite(sb.eta) & (sb.eta > 0)
    return StepRecord(n=sb.n, eta_layer3=sb.eta, r2_layer3_by_n=sb.r2, eta_matched=ms.eta, matched_kl_left=ms.kl_left,
                      eta_layer3_spread=float(np.std(sb.eta[ok]) / np.mean(sb.eta[ok])) if ok.any() else None,
                      fit_layer3=fit_adaptive_step(sb.n[ok], sb.eta[ok], m) if ok.sum() >= 3 else None,
                      a_param=float(model.sink_weight) if model.aggregation == "softmax_sink" else None)


def load_standard(paths: tuple[str, ...], device: torch.device) -> list[tuple[Path, Any]]:
    """Each checkpoint of ``paths`` read (model, info), or None where the file is missing; a file that
    does not load is a :class:`~mtdmath.experiments.common.ConfigError` (read before any training)."""
    return [(Path(p), exp_common.read_checkpoint(Path(p), device) if Path(p).is_file() else None) for p in paths]


def probe_standard(loaded: list[tuple[Path, Any]], device: torch.device, n_probe: int, seed: int
                   ) -> dict[str, StandardProbe]:
    """The matched one-step MD step of each trained StandardTransformer at each n, and its c/(n+m+a) fit
    (``loaded`` from :func:`load_standard`)."""
    out: dict[str, StandardProbe] = {}
    for k, (path, read) in enumerate(loaded):
        if read is None:
            out[path.stem] = StandardProbe(checkpoint=str(path), skipped="checkpoint not found")
            continue
        model, info = read
        task = info["task"]
        if task is None or isinstance(model, MDTransformer):
            out[path.stem] = StandardProbe(checkpoint=str(path), skipped="not a StandardTransformer with a saved task")
            continue
        pi_s, alpha_s = task.pi.cpu().numpy(), np.asarray(task.alpha, np.float64)
        T_s = int(task.T) - 1  # the longest trained context
        y, _ = mtdmath.sample_icl(pi_s, alpha_s, T_s, n_probe, rng=exp_common.rng_for(seed, KEY_ADAPT, 20, k))
        probs = exp_common.model_all_prefixes(model, y, device=device)
        ms = matched_step(probs, y, pi_s, alpha_s)
        ok = np.isfinite(ms.eta) & (ms.eta > 0)
        out[path.stem] = StandardProbe(
            checkpoint=str(path), T=T_s, n=ms.n, eta_matched=ms.eta, matched_kl_left=ms.kl_left, pi=pi_s, alpha=alpha_s,
            fit=fit_adaptive_step(ms.n[ok], ms.eta[ok], alpha_s.shape[0]) if ok.sum() >= 3 else None)
    return out


# ----------------------------------------------------------------------------- run
def run(cfg: AdaptiveConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> AdaptiveResult:
    """Fit, evaluate, train, probe; write ``adaptive.json``, ``adaptive.png`` and ``adaptive.md``.

    Examples
    --------
    >>> import torch
    >>> from pathlib import Path
    >>> from mtdmath import experiments
    >>> cfg = experiments.AdaptiveConfig.quick()
    >>> res = experiments.run_adaptive(cfg, Path('runs/adaptive'), seed=0, device=torch.device('cpu'), progress=False)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    m, T = cfg.m, cfg.T
    standard = load_standard(cfg.std_checkpoints, device)  # a corrupt file stops the run before any work
    with exp_common.run_meta(seed, device) as meta:
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        pi, alpha = exp_common.make_task(seed, m, cfg.S, cfg.concentration, cfg.alpha)
        alpha0, eta_star = float(alpha.sum()), mtdmath.eta_bayes(alpha)
        # (i) η_opt(L) of `stepsize`, fitted by 1/η = (m+a)/c + n/c
        ss = stepsize_eta_opt(cfg, pi, alpha, seed, progress)
        fit_i = fit_adaptive_step(np.asarray(ss.n), ss.eta, m, eta_se=ss.se)
        times["stepsize_eta_opt"] = time.perf_counter() - t0
        # (ii) the training objective on a fit set
        t1 = time.perf_counter()
        y_fit, lam_fit = mtdmath.sample_icl(pi, alpha, T, cfg.n_fit, rng=exp_common.rng_for(seed, KEY_ADAPT, 1))
        obj = PrefixObjective(y_fit, lam_fit, pi, alpha)
        start = (fit_i.c, fit_i.a) if np.isfinite(fit_i.c) and fit_i.c > 0 and fit_i.a >= 0 else (5.0, 10.0)
        fits = fit_steps(obj, alpha, n_boot=cfg.n_boot, rng=exp_common.rng_for(seed, KEY_ADAPT, 5), start=start, progress=progress)
        eo = fits.eta_opt_L
        fit_own = fit_adaptive_step(np.asarray(eo.n), eo.eta, m, eta_se=eo.se)
        times["fits"] = time.perf_counter() - t1

        # tuned k-step MD (constant step, training objective)
        t1 = time.perf_counter()
        k_steps = {}
        for k in tqdm(cfg.k_tuned, desc="adaptive: tuned k-step MD", disable=not progress, leave=False):
            r = mtdmath.optimal_step(pi, alpha, T=T, k=k, n_train=cfg.k_n_train, n_test=cfg.k_n_train, n_boot=0,
                               rng=exp_common.rng_for(seed, KEY_ADAPT, 6, k))
            k_steps[k] = r.eta
        times["k_step_tuning"] = time.perf_counter() - t1

        # evaluation set: every method on the same sequences
        t1 = time.perf_counter()
        y_ev, lam_ev = mtdmath.sample_icl(pi, alpha, T, cfg.n_eval, rng=exp_common.rng_for(seed, KEY_ADAPT, 2))
        p_true = exp_common.truth_all_prefixes(y_ev, lam_ev, pi)
        R = T - m + 1
        preds: dict[str, np.ndarray] = {
            "md1": mtdmath.md_predictive_all_prefixes(y_ev, pi, alpha, eta=eta_star),
            "md1_eta_train": mtdmath.md_predictive_all_prefixes(y_ev, pi, alpha, eta=fits.eta_train.eta),
            # row 0 has ∇ℓ = 0: any step gives μ there
            "md1_eta_opt_L": mtdmath.md_predictive_all_prefixes(y_ev, pi, alpha, eta=np.concatenate([[eta_star], eo.eta])[None]),
        }
        for k, e in k_steps.items():
            preds[f"md{k}_tuned"] = mtdmath.md_predictive_all_prefixes(y_ev, pi, alpha, eta=e, steps=k)
        post = posterior_mean_all_prefixes(mtdmath.lag_factors(y_ev, pi, m), alpha)  # (B, R, m)
        preds["bayes"] = np.stack([mtdmath.predictive(post[:, r], y_ev[:, :m + r], pi) for r in range(R)], axis=1)
        constructed: dict[str, ConstructedModel] = {}
        for key, (c, a) in {STEPSIZE_FIT: (fit_i.c, fit_i.a), DIRECT: (fits.direct.c, fits.direct.a),
                            CONSISTENT: (fits.consistent.c, fits.consistent.a)}.items():
            rec = ConstructedModel(c=c, a=a)
            if np.isfinite(c) and c > 0 and np.isfinite(a) and a >= 0:
                model = MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=c, a=a, device=device)
                preds[key] = exp_common.model_all_prefixes(model, y_ev, device=device, batch=64)
                core = mtdmath.md_predictive_all_prefixes(y_ev, pi, alpha, eta=lambda n, c=c, a=a: c / (n + m + a))
                rec.max_abs_diff_vs_core = float(np.abs(preds[key] - core).max())
                sb = step_by_n(model, y_ev[:cfg.n_probe], pi, alpha)
                rec.n, rec.eta_layer3 = sb.n, sb.eta
            else:
                rec.skipped = "not realisable: needs c > 0 and a >= 0"
            constructed[key] = rec
        times["evaluation"] = time.perf_counter() - t1

        # trained pairs
        t1 = time.perf_counter()
        trained: dict[str, dict[str, TrainedModel]] = {}
        kls_seed: dict[str, dict[int, np.ndarray]] = {"fixed": {}, "adaptive": {}}
        for j in cfg.seeds:
            pair = _train_pair(cfg, pi, alpha, seed, j, out, device, progress)
            trained[str(j)] = {}
            for role, (model, tm) in pair.items():
                probs = exp_common.model_all_prefixes(model, y_ev, device=device, batch=64)
                kls_seed[role][j] = exp_common.kl_per_sequence(p_true, probs)
                tm.step = _step_record(model, y_ev[:cfg.n_probe], probs[:cfg.n_probe], pi, alpha)
                trained[str(j)][role] = tm
        times["training"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        std = probe_standard(standard, device, cfg.n_probe, seed)
        times["standard_probe"] = time.perf_counter() - t1

        kls = {k: exp_common.kl_per_sequence(p_true, v) for k, v in preds.items()}
        kls["trained_fixed"] = np.mean([kls_seed["fixed"][j] for j in cfg.seeds], axis=0)
        kls["trained_adaptive"] = np.mean([kls_seed["adaptive"][j] for j in cfg.seeds], axis=0)
        mean, se = exp_common.curves(kls)
        Ls = tuple(cfg.table_L)
        seed_means = {str(L): [float(np.mean(kls_seed["adaptive"][j][:, L - m] - kls_seed["fixed"][j][:, L - m]))
                               for j in cfg.seeds] for L in Ls}
        paired = TrainedDiff(
            pooled=exp_common.paired_diff(kls, "trained_adaptive", "trained_fixed", m, T, Ls),
            per_seed={str(j): exp_common.paired_diff({"a": kls_seed["adaptive"][j], "f": kls_seed["fixed"][j]}, "a", "f", m, T, Ls)
                      for j in cfg.seeds},
            over_seeds={L: [float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")]
                        for L, v in seed_means.items()})
        pairs = [("trained_adaptive", DIRECT), ("trained_fixed", ETA_TRAIN), (DIRECT, ETA_TRAIN), (DIRECT, ETA_OPT_L),
                 (CONSISTENT, DIRECT), (DIRECT, "bayes"), (STEPSIZE_FIT, DIRECT),
                 *[(DIRECT, f"md{k}_tuned") for k in k_steps]]
        vs = [PairedDiff(a=a_, b=b_, per_L=exp_common.paired_diff(kls, a_, b_, m, T, Ls)) for a_, b_ in pairs
              if a_ in kls and b_ in kls]
        # mean KL over all the trained contexts L = m..T (the objective, on the evaluation set)
        objective_eval = {k: [float(x) for x in exp_common.mean_se(v.mean(axis=1))] for k, v in kls.items()}
        learned = _learned_summary(trained)

    res = AdaptiveResult(
        config=cfg, seed=seed, meta=meta, m=m, pi=pi, alpha=alpha, alpha0=alpha0, eta_star=eta_star,
        L=list(range(m, T + 1)), labels=_labels(k_steps), stepsize_eta_opt=ss, fit_stepsize=fit_i,
        fit_own_eta_opt_L=fit_own, fits=fits, k_step_eta={str(k): v for k, v in k_steps.items()},
        constructed=constructed, kl_mean=mean, kl_se=se, table=exp_common.table_at(kls, m, T, Ls), objective_eval=objective_eval,
        paired_adaptive_minus_fixed_trained=paired, paired=vs, trained=trained, learned=learned, standard=std,
        phase_times_s={k: round(v, 2) for k, v in times.items()})
    res.verdict = verdict(res)
    res.figures = [_plot(res, out / "adaptive.png").name]
    res.write(out / "adaptive.json")
    (out / "adaptive.md").write_text(markdown(res))
    d = fits.direct
    print(f"adaptive: direct fit c = {d.c:.4f} ± {d.c_se:.4f}, a = {d.a:.3f} ± {d.a_se:.3f}; "
          f"stepsize fit c = {fit_i.c:.4f} ± {fit_i.c_se:.4f}, a = {fit_i.a:.3f} ± {fit_i.a_se:.3f}", file=sys.stderr)
    return res


def _labels(k_steps: dict[int, float]) -> dict[str, str]:
    return LABELS | {f"md{k}_tuned": f"{k}-step MD (constant step tuned on the objective)" for k in k_steps}


def _learned_summary(trained: dict[str, dict[str, TrainedModel]]) -> dict[str, LearnedStep]:
    """Per role: the fitted (c, a, R²) of c/(n+m+a) to the layer-3 step, the sink parameter, over seeds."""
    def agg(v: list[Optional[float]]) -> SeedStat:
        x = np.array([np.nan if e is None else e for e in v], dtype=np.float64)
        ok = x[np.isfinite(x)]
        return SeedStat(values=x.tolist(), mean=float(ok.mean()) if ok.size else float("nan"),
                        se=float(ok.std(ddof=1) / np.sqrt(ok.size)) if ok.size > 1 else float("nan"))

    out: dict[str, LearnedStep] = {}
    for role in PAIR:
        recs = [trained[j][role].step for j in trained]
        fl = [r.fit_layer3 for r in recs]
        out[role] = LearnedStep(c=agg([f.c if f else None for f in fl]), a=agg([f.a if f else None for f in fl]),
                                r2=agg([f.r2 if f else None for f in fl]), A=agg([f.A if f else None for f in fl]),
                                B=agg([f.B if f else None for f in fl]),
                                eta_layer3_spread=[r.eta_layer3_spread for r in recs],
                                a_param=agg([r.a_param for r in recs]) if role == "adaptive" else None)
    return out


def verdict(res: AdaptiveResult) -> AdaptiveVerdict:
    """Plain statements with the numbers behind them (2 s.e. rules on paired differences)."""
    def sig(d: PairedDiff | None) -> dict[str, str] | None:
        return None if d is None else {L: ("lower" if v[0] < -2 * v[1] else "higher" if v[0] > 2 * v[1]
                                           else "no significant difference") for L, v in d.per_L.items()}

    return AdaptiveVerdict(
        trained_adaptive_vs_trained_fixed=sig(PairedDiff("trained_adaptive", "trained_fixed",
                                                         res.paired_adaptive_minus_fixed_trained.pooled)),
        stepsize_fit_chi2_dof=res.fit_stepsize.chi2_dof, own_eta_opt_fit_chi2_dof=res.fit_own_eta_opt_L.chi2_dof,
        adaptive_construction_vs_constant_eta_train=sig(res.paired_diff(DIRECT, ETA_TRAIN)),
        adaptive_construction_vs_per_L_tuned=sig(res.paired_diff(DIRECT, ETA_OPT_L)))


# ----------------------------------------------------------------------------- outputs
def _fmt(v: list[float], nd: int = 4) -> str:
    return f"{v[0]:.{nd}f} ± {v[1]:.{nd}f}"


def _fmt_diff(v: list[float]) -> str:
    """A paired difference: fixed point, or scientific where it is below the fixed point's resolution."""
    if max(abs(v[0]), abs(v[1])) < 1e-3:
        return f"{v[0]:+.1e} ± {v[1]:.1e}"
    return f"{v[0]:+.4f} ± {v[1]:.4f}"


def markdown(res: AdaptiveResult) -> str:
    """Markdown tables of an ``adaptive`` result (:meth:`AdaptiveResult.read` reads its JSON)."""
    lab = res.labels
    fi, fo = res.fit_stepsize, res.fit_own_eta_opt_L
    d, cs, et = res.fits.direct, res.fits.consistent, res.fits.eta_train
    m = res.m
    lines = ["**Fitted (c, a) of the adaptive step η(n) = c/(n+m+a)** (m = %d, α₀ = %g, η* = %.4f)\n" % (m, res.alpha0, res.eta_star),
             "| fit | c | a | A = (m+a)/c | B = 1/c | χ²/dof | note |", "|---|---|---|---|---|---|---|",
             f"| (i) WLS of 1/η_opt(L), `stepsize` run ({len(res.stepsize_eta_opt.L)} lengths) | {fi.c:.3f} ± {fi.c_se:.3f} | "
             f"{fi.a:.2f} ± {fi.a_se:.2f} | {fi.A:.3f} ± {fi.A_se:.3f} | {fi.B:.4f} ± {fi.B_se:.4f} | "
             f"{fi.chi2_dof:.2f} | delta-method s.e. |",
             f"| (i') WLS of 1/η_opt(L), every L = {m + 1}…{res.L[-1]} of the fit set | {fo.c:.3f} ± {fo.c_se:.3f} | "
             f"{fo.a:.2f} ± {fo.a_se:.2f} | {fo.A:.3f} ± {fo.A_se:.3f} | {fo.B:.4f} ± {fo.B_se:.4f} | "
             f"{fo.chi2_dof:.2f} | bootstrap s.e. of η_opt(L), delta-method s.e. |",
             f"| (ii) minimising the training objective over (c, a) | {d.c:.3f} ± {d.c_se:.3f} | {d.a:.2f} ± {d.a_se:.2f} | "
             f"{d.A:.3f} | {d.B:.4f} | – | bootstrap s.e. over sequences |",
             f"| (ii) with a = c(1+α₀) − m (η(0) = η*) | {cs.c:.3f} ± {cs.c_se:.3f} | {cs.a:.2f} | "
             f"{(m + cs.a) / cs.c:.3f} | {1 / cs.c:.4f} | – | one parameter |",
             "", f"η_train (best constant step on the same objective) = {et.eta:.4f} ± {et.se:.4f}.", ""]
    tab = res.table
    Ls = list(tab)
    order = ["bayes", "md1", "md1_eta_train", "md1_eta_opt_L", *[k for k in tab[Ls[0]] if k.endswith("_tuned")],
             "adaptive_stepsize_fit", "adaptive_direct", "adaptive_consistent", "trained_fixed", "trained_adaptive"]
    lines += ["**KL(p* ‖ p̂)** on the evaluation set (nats, mean ± s.e. over sequences; trained: per-sequence mean over seeds)\n",
              "| method | " + " | ".join(f"L = {L}" for L in Ls) + " | mean over L = m…T |", "|---|" + "---|" * (len(Ls) + 1)]
    for k in order:
        if k in tab[Ls[0]]:
            lines.append(f"| {lab.get(k, k)} | " + " | ".join(_fmt(tab[L][k]) for L in Ls) + f" | {_fmt(res.objective_eval[k])} |")
    pr = res.paired_adaptive_minus_fixed_trained
    lines += ["", "**KL(trained adaptive) − KL(trained fixed)**, paired over the same sequences (nats, mean ± s.e.)\n",
              "| | " + " | ".join(f"L = {L}" for L in Ls) + " |", "|---|" + "---|" * len(Ls),
              "| pooled over seeds (per-sequence mean of the seeds' differences) | " + " | ".join(_fmt_diff(pr.pooled[L]) for L in Ls) + " |",
              "| over seeds (mean ± s.e. of the seed means) | " + " | ".join(_fmt_diff(pr.over_seeds[L]) for L in Ls) + " |"]
    for j, v in pr.per_seed.items():
        lines.append(f"| seed {j} | " + " | ".join(_fmt_diff(v[L]) for L in Ls) + " |")
    lines += ["", "**Other paired differences** (nats, mean ± s.e.)\n", "| difference | " + " | ".join(f"L = {L}" for L in Ls) + " |",
              "|---|" + "---|" * len(Ls)]
    for pd in res.paired:
        lines.append(f"| {pd.a} − {pd.b} | " + " | ".join(_fmt_diff(pd.per_L[L]) for L in Ls) + " |")
    le = res.learned
    lines += ["", "**Trained models: the layer-3 step at each n and the fit of c/(n+m+a)** (mean ± s.e. over seeds "
              "of one task setting; the R² is set by the architecture — a sink model's step depends on n through "
              "1/(n+m+a) whatever its weights, a fixed-step model's not at all — so only the learned (c, a) are "
              "evidence)\n",
              "| model | c (fit) | a (fit) | R² of c/(n+m+a) | a = exp(sink_logit) | relative spread of η(n) |", "|---|---|---|---|---|---|"]
    for role in PAIR:
        r = le[role]
        ap = _fmt([r.a_param.mean, r.a_param.se], 2) if r.a_param is not None else "–"
        lines.append(f"| {PAIR[role]} | {_fmt([r.c.mean, r.c.se], 3)} | {_fmt([r.a.mean, r.a.se], 2)} | "
                     f"{_fmt([r.r2.mean, r.r2.se], 4)} | {ap} | "
                     + ", ".join(f"{x:.3f}" for x in r.eta_layer3_spread if x is not None) + " |")
    lines.append(f"| objective optimum (ii) | {_fmt([d.c, d.c_se], 3)} | {_fmt([d.a, d.a_se], 2)} | – | – | – |")
    if res.standard:
        lines += ["", "**Trained standard transformers: the matched one-step MD step at each n** (one checkpoint each, one "
                  "task: no spread over seeds; output-level only — any near-Bayes predictor's matched step falls with n)\n",
                  "| model | n range | η(n) first → last | c (fit) | a (fit) | R² | mean KL left at the matched step |",
                  "|---|---|---|---|---|---|---|"]
        for k, r in res.standard.items():
            if r.skipped is not None:
                lines.append(f"| {k} | skipped: {r.skipped} | | | | | |")
                continue
            nan = float("nan")
            ft = r.fit
            eta = np.asarray(r.eta_matched)
            lines.append(f"| {k} | 1…{r.n[-1]} | {eta[0]:.3f} → {eta[-1]:.4f} | {ft.c if ft else nan:.3f} | "
                         f"{ft.a if ft else nan:.2f} | {ft.r2 if ft else nan:.3f} | {float(np.mean(r.matched_kl_left)):.4f} |")
    lines += ["", "Phase times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res.phase_times_s.items()) +
              f"; total {res.meta['run_time_s']:.0f} s.", ""]
    return "\n".join(lines)


def _plot(res: AdaptiveResult, path: Path) -> Path:
    plt = exp_common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    L = np.asarray(res.L)
    lab = res.labels
    ax = axes[0]
    keys = [k for k in ["bayes", "md1", "md1_eta_train", "md1_eta_opt_L", *sorted(k for k in res.kl_mean if k.endswith("_tuned")),
                        "adaptive_stepsize_fit", "adaptive_direct", "adaptive_consistent", "trained_fixed", "trained_adaptive"]
            if k in res.kl_mean]
    for k in keys:
        mu, s = np.asarray(res.kl_mean[k]), np.asarray(res.kl_se[k])
        ls = "--" if k.startswith("trained") else ":" if k.endswith("_tuned") else "-"
        ax.plot(L, mu, ls, color=COLORS.get(k), lw=1.3, label=lab.get(k, k))
        ax.fill_between(L, np.maximum(mu - s, 1e-12), mu + s, color=COLORS.get(k), alpha=0.12, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length L")
    ax.set_ylabel("KL(p* ‖ p̂) [nats]")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"KL vs L (m = {res.m}, {res.config.n_eval} sequences)", fontsize=9)

    ax = axes[1]
    m = res.m
    eo = res.fits.eta_opt_L
    ax.errorbar(np.asarray(eo.n), eo.eta, yerr=eo.se, fmt="o", ms=2, color="darkgreen", lw=0.6,
                label="η_opt(L) of the fit set ± s.e.")
    ss = res.stepsize_eta_opt
    ax.errorbar(np.asarray(ss.n), ss.eta, yerr=ss.se, fmt="s", ms=4, color="black", mfc="none",
                label="η_opt(L), `stepsize` run")
    n = np.arange(1, max(int(np.max(ss.n)), L[-1] - m) + 1)
    for key, f, color in (("(i) fit to `stepsize` η_opt", res.fit_stepsize, "tab:orange"),
                          ("(ii) objective optimum", res.fits.direct, "tab:red"),
                          ("(ii) η(0) = η*", res.fits.consistent, "tab:pink")):
        ax.plot(n, f.c / (n + m + f.a), color=color, lw=1.5, label=f"{key}: c = {f.c:.2f}, a = {f.a:.1f}")
    ax.axhline(res.eta_star, color="tab:blue", lw=0.8, label="η*")
    ax.axhline(res.fits.eta_train.eta, color="tab:green", lw=0.8, ls="--", label="η_train (constant)")
    for j, pair in res.trained.items():
        for role, color in (("fixed", "tab:olive"), ("adaptive", "tab:purple")):
            st = pair[role].step
            e = np.asarray(st.eta_layer3, dtype=float)
            e = np.where(e > 0, e, np.nan)  # log axis: a non-positive slope is not a step
            ax.plot(np.asarray(st.n), e, color=color, lw=0.8, alpha=0.8,
                    label=f"trained {PAIR[role]} (layer 3, each seed)" if j == next(iter(res.trained)) else None)
    for k, r in res.standard.items():
        if r.skipped is None:
            ax.plot(np.asarray(r.n), r.eta_matched, lw=0.9, label=f"trained {k} (matched step of its output)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("transitions in the context n = L − m")
    ax.set_ylabel("step η(n)")
    lo = min(float(np.nanmin(eo.eta)), float(np.min(ss.eta)))
    ax.set_ylim(lo / 4, 1.5 * max(res.eta_star, float(np.nanmax(eo.eta))))
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    ax.set_title("the step as a function of n", fontsize=9)

    ax = axes[2]
    pr = res.paired_adaptive_minus_fixed_trained
    for b, color, label in ((ETA_TRAIN, "tab:red", "adaptive construction (ii) − MD(η_train)"),
                            (ETA_OPT_L, "darkgreen", "adaptive construction (ii) − MD(η_opt(L))")):
        pd = res.paired_diff(DIRECT, b)
        if pd is not None:
            v = pd.per_L
            Ls = [int(x) for x in v]
            a = np.array([v[str(x)] for x in Ls])
            ax.errorbar(Ls, a[:, 0], yerr=2 * a[:, 1], fmt="-o", ms=3, color=color, label=label + " (±2 s.e.)")
    Ls = [int(x) for x in pr.pooled]
    a = np.array([pr.pooled[str(x)] for x in Ls])
    ax.errorbar(Ls, a[:, 0], yerr=2 * a[:, 1], fmt="-s", ms=3, color="tab:purple", label="trained mdsink − trained md (±2 s.e.)")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length L")
    ax.set_ylabel("paired KL difference [nats]")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    ax.set_title("paired differences", fontsize=9)
    fig.suptitle("Context-adaptive MD step c/(n+m+a) (softmax layer 2 with an attention sink, docs/math.md §5.6)", fontsize=10)
    fig.tight_layout()
    return exp_common.save_figure(fig, path)
