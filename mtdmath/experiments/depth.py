"""``depth``: the trained standard transformers vs k-step MD (k = 1 … 5) vs exact Bayes.

The paper's claim: a deeper trained transformer does at least as well as more mirror-descent
steps; here the deepest standard model of the checkpoints (``std5`` by default) is compared with
every k-step MD curve (paired over the same sequences), and every other standard model is shown
alongside. Two families of k-step MD baselines:

- ``md{k}``: η* = 1/(1+α₀) at every step. For k >= 2 its first-order coefficient is k·η*, so it is
  not first-order consistent with Bayes (docs/math.md §3) and overshoots at long contexts: a weak
  baseline, kept (labelled so) because it is the paper's;
- ``md{k}_tuned`` (constant step) and ``md{k}_sched`` (one step per step, k >= 2): steps tuned by
  :func:`mtdmath.optimal_step` on held-out sequences of the task for the training objective of the
  checkpoints (mean KL over the contexts m … T_train − 1), the objective the transformers were
  trained on: the fair baselines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtdmath
from mtdmath.nn import MDTransformer

from . import common as exp_common
from .compare import load_models
from .config import Config, Length, NonNegativeInt, Sequences

MD_METHODS = ["md1", "md2", "md3", "md4", "md5"]
TUNED = [f"md{k}_tuned" for k in range(1, 6)]
SCHED = [f"md{k}_sched" for k in range(2, 6)]
LABELS = {**{f"md{k}": f"{k}-step MD (η* each step{'; not 1st-order consistent' if k > 1 else ''})" for k in range(1, 6)},
          **{f"md{k}_tuned": f"{k}-step MD (tuned constant step)" for k in range(1, 6)},
          **{f"md{k}_sched": f"{k}-step MD (tuned schedule)" for k in range(2, 6)}}


@dataclass
class DepthConfig(Config):
    """Configuration of the ``depth`` experiment.

    Examples
    --------
    >>> from mtdmath import experiments
    >>> cfg = experiments.DepthConfig.quick(checkpoints='runs/train/checkpoints')
    >>> cfg.n_eval, cfg.T
    (16, 16)
    """

    checkpoints: str = field(default="runs/train/checkpoints", metadata={
        "help": "directory of `train` checkpoints with at least one standard model (the deepest is compared)"})
    n_eval: Sequences = field(default=1000, metadata={"help": "evaluation sequences (fresh, from the checkpoints' pi)"})
    T: Length = field(default=64, metadata={"help": "evaluation sequence length: contexts L = m … T"})
    # 1024 as in `compare`: on 256 sequences the tuned step of the training objective is biased
    # low by about its bootstrap s.e. (the argmin of a noisy mean of heavy-tailed per-sequence KLs)
    tune_n_train: Sequences = field(default=1024, metadata={
        "help": "sequences optimal_step tunes each k-step MD step on (and as many held out)"})
    tune_n_boot: NonNegativeInt = field(default=3, metadata={
        "help": "bootstrap resamples for the s.e. of the tuned constant steps"})
    schedules: bool = field(default=True, metadata={"help": "also tune a per-step schedule for k = 2 … 5 (no bootstrap)"})

    @classmethod
    def quick(cls, checkpoints: str = "runs/train/checkpoints", **kw: Any) -> "DepthConfig":
        return cls(**(dict(checkpoints=checkpoints, n_eval=16, T=16, tune_n_train=8, tune_n_boot=2) | kw))


@dataclass
class TunedStep:
    """A k-step MD step tuned by :func:`mtdmath.optimal_step` for the training objective."""

    k: int  #: MD steps
    schedule: bool  #: one step per MD step (True) or one constant step
    eta: Any  #: the tuned step: a float, or k floats for a schedule
    eta_se: Any  #: its bootstrap standard error (NaN without bootstrap)
    sum_eta: float  #: the total step, k·η or Σ η_i (the first-order coefficient)
    heldout_train_objective_kl: list[float]  #: [mean, s.e.] held-out training-objective KL at the tuned step [nats]
    heldout_train_objective_kl_eta_star: list[float]  #: the same at η* [nats]


@dataclass
class DepthResult(exp_common.Result):
    """What ``depth`` measured (``depth.json``). KLs are KL(p* ‖ p̂) in nats; paired differences are
    ``{L: [mean, s.e.]}`` over the same evaluation sequences."""

    config: DepthConfig
    seed: int  #: base seed of the evaluation and tuning streams
    meta: dict[str, Any]  #: versions, git state, machine, run_time_s [s]
    m: int  #: MTD order of the checkpoints' task
    pi: np.ndarray  #: the checkpoints' transition matrix (S, S)
    alpha: np.ndarray  #: the checkpoints' Dirichlet prior (m,)
    L: list[int]  #: context lengths m … T
    kl_mean: dict[str, list[float]]  #: per curve: mean KL at each L [nats]
    kl_se: dict[str, list[float]]  #: its standard error over sequences [nats]
    table: dict[str, dict[str, list[float]]]  #: {L: {curve: [mean, s.e.]}} at the table lengths [nats]
    labels: dict[str, str]  #: legend labels of the MD baselines
    train_objective_T: int  #: the steps are tuned for the mean KL over contexts m … this
    tuned_steps: dict[str, TunedStep]  #: per baseline (``md{k}_tuned``, ``md{k}_sched``)
    eta_star: float  #: η* = 1/(1+α₀)
    standard_models: list[str]  #: curve names of the standard models, shallow to deep
    deepest: str  #: the deepest standard model's curve name
    deepest_minus_md: dict[str, dict[str, list[float]]]  #: per baseline: paired KL(deepest) − KL(baseline)
    deepest_minus_bayes: dict[str, list[float]]  #: paired KL(deepest) − KL(Bayes)
    mean_over_L: dict[str, list[float]]  #: per curve: [mean, s.e.] of the per-sequence mean KL over every L
    deepest_minus_md_mean_over_L: dict[str, list[float]]  #: the same, paired against each baseline and Bayes
    standing: dict[str, Any] = field(default_factory=dict)  #: better / worse / tied per baseline (see :func:`standing`)
    figures: list[str] = field(default_factory=list)  #: PNG files written next to the JSON
    experiment: str = field(default="depth", init=False)


def run(cfg: DepthConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> DepthResult:
    """Evaluate; write ``depth.json`` and ``depth.png``.

    Examples
    --------
    >>> import torch
    >>> from pathlib import Path
    >>> from mtdmath import experiments
    >>> cfg = experiments.DepthConfig.quick(checkpoints='runs/train/checkpoints')  # written by run_train
    >>> res = experiments.run_depth(cfg, Path('runs/depth'), seed=0, device=torch.device('cpu'), progress=False)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    with exp_common.run_meta(seed, device) as meta:
        models, infos, pi, alpha = load_models(Path(cfg.checkpoints), device, required=("std",))
        std = [k for k, v in models.items() if not isinstance(v, MDTransformer)]  # sorted by depth
        deep = std[-1]
        m = alpha.shape[0]
        # the same evaluation stream as `compare` at this seed: the same sequences
        tokens, lam = mtdmath.sample_icl(pi, alpha, cfg.T, cfg.n_eval, rng=exp_common.rng_for(seed, exp_common.KEY_EVAL, m))
        p_true = exp_common.truth_all_prefixes(tokens, lam, pi)
        preds = exp_common.estimator_all_prefixes(tokens, pi, alpha, MD_METHODS + ["bayes"], progress=progress, desc="depth")
        for name in std:
            preds[name] = exp_common.model_all_prefixes(models[name], tokens, device=device)
        # the steps tuned for the training objective of the deepest model (contexts m … T_train − 1)
        T_obj = infos[std[-1]]["task"].T - 1
        tuned: dict[str, TunedStep] = {}
        jobs = [(k, False) for k in range(1, 6)] + ([(k, True) for k in range(2, 6)] if cfg.schedules else [])
        for k, sched in tqdm(jobs, desc="depth: tuning k-step MD steps", disable=not progress):
            r = mtdmath.optimal_step(pi, alpha, T=T_obj, k=k, schedule=sched, n_train=cfg.tune_n_train,
                               n_test=cfg.tune_n_train, n_boot=0 if sched else cfg.tune_n_boot,
                               rng=exp_common.rng_for(seed, exp_common.KEY_STEP, m, 1000 + 10 * k + int(sched)))
            key = f"md{k}_{'sched' if sched else 'tuned'}"
            tuned[key] = TunedStep(k=k, schedule=sched, eta=r.eta, eta_se=r.eta_se,
                                   sum_eta=float(np.sum(r.eta) if sched else k * r.eta),
                                   heldout_train_objective_kl=[r.kl, r.kl_se],
                                   heldout_train_objective_kl_eta_star=[r.kl_eta_star, r.kl_eta_star_se])
            preds[key] = mtdmath.md_predictive_all_prefixes(tokens, pi, alpha, eta=r.eta if sched else float(r.eta), steps=k)
        kls = {k: exp_common.kl_per_sequence(p_true, v) for k, v in preds.items()}
        mean, se = exp_common.curves(kls)
    T = cfg.T
    baselines = MD_METHODS + [k for k in TUNED + SCHED if k in kls]
    res = DepthResult(
        config=cfg, seed=seed, meta=meta, m=m, pi=pi, alpha=alpha, L=list(range(m, T + 1)), kl_mean=mean, kl_se=se,
        table=exp_common.table_at(kls, m, T), labels={k: LABELS[k] for k in baselines}, train_objective_T=T_obj,
        tuned_steps=tuned, eta_star=mtdmath.eta_bayes(alpha), standard_models=list(std), deepest=deep,
        deepest_minus_md={k: exp_common.paired_diff(kls, deep, k, m, T) for k in baselines},
        deepest_minus_bayes=exp_common.paired_diff(kls, deep, "bayes", m, T),
        # the train-objective mean over every context (L = m … T) on the evaluation set, paired
        mean_over_L={k: [float(a) for a in exp_common.mean_se(v.mean(axis=1))] for k, v in kls.items()},
        deepest_minus_md_mean_over_L={k: [float(a) for a in exp_common.mean_se((kls[deep] - kls[k]).mean(axis=1))]
                                      for k in baselines + ["bayes"]})
    res.standing = standing(res)
    res.figures = [_plot(res, out / "depth.png").name]
    res.write(out / "depth.json")
    return res


def standing(res: DepthResult) -> dict[str, Any]:
    """Where the deepest model stands against each baseline at each table L: ``better`` / ``worse``
    where the paired difference is beyond 2 s.e., else ``tied``; and the best tuned baseline per L."""
    def word(d: list[float]) -> str:
        return "better" if d[0] < -2 * d[1] else "worse" if d[0] > 2 * d[1] else "tied"

    per = {b: {L: word(d) for L, d in v.items()} for b, v in res.deepest_minus_md.items()}
    fair = [k for k in res.table[next(iter(res.table))] if k.endswith(("_tuned", "_sched"))] if res.table else []
    best = {L: min(fair, key=lambda k: row[k][0]) for L, row in res.table.items()} if fair else {}
    return {"per_baseline": per, "best_tuned_baseline": best,
            "mean_over_L": {b: word(d) for b, d in res.deepest_minus_md_mean_over_L.items()}}


def _plot(res: DepthResult, path: Path) -> Path:
    plt = exp_common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.4), sharey=True)
    labels = res.labels
    d = res.deepest_minus_md
    last = max(d["md2"], key=int) if d["md2"] else None
    panels = ((axes[0], ["md5", "md4", "md3", "md2", "md1"], "η* at every step (not first-order consistent for k ≥ 2)"),
              (axes[1], [k for k in TUNED + SCHED if k in res.kl_mean], "steps tuned on held-out sequences "
                                                                         "for the training objective"))
    for ax, md, title in panels:
        exp_common.plot_curves(ax, res.L, res.kl_mean, res.kl_se, md + res.standard_models + ["bayes"], labels)
        ref = "md2" if "tuned" not in title else "md2_tuned"
        sub = (f"\n{res.deepest} − {labels.get(ref, ref)} at L={last}: {d[ref][last][0]:+.4f} ± {d[ref][last][1]:.4f}"
               if last and ref in d else "")
        ax.set_title(f"m = {res.m}, {res.config.n_eval} sequences; {title}{sub}", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return exp_common.save_figure(fig, path)
