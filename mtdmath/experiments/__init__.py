"""Experiments reproducing the paper's figures (docs/math.md §6).

``python -m mtdmath.experiments SUBCOMMAND`` with SUBCOMMAND one of

- ``estimators`` — KL to the ground truth vs context length for k-step MD, EM, MLE, exact Bayes
  and the constructed transformer (:mod:`.kl_curves`);
- ``train`` — train the disentangled and standard transformers (:mod:`.train`);
- ``compare`` — trained vs constructed vs one-step MD; attention maps; learned W1 (:mod:`.compare`);
- ``depth`` — the standard models (the deepest compared) vs k-step MD vs Bayes (:mod:`.depth`);
- ``stepsize`` — the loss-optimal one-step MD step η_opt(L) vs η*, fits of 1/η_opt(n), and the
  K.2 corrected one-step estimator against MD and Bayes (:mod:`.stepsize`);
- ``adaptive`` — the context-adaptive MD step c/(n+m+a) of a softmax layer 2 with an attention
  sink: fitted, constructed, trained and compared with the loss-optimal steps (:mod:`.adaptive`);
- ``phase`` — the zero-parameter step law against the per-L optimal step over a grid of tasks (a
  phase diagram), and the steps learned by trained fixed-step and softmax-sink models (:mod:`.phase`);
- ``mechanism`` — inside trained standard transformers: within-context probes, head-by-head
  ablation and an added attention sink, judged against docs/guide/mechanism.md (:mod:`.mechanism`);
- ``sweep`` — a grid over any job field (seeds, orders, T, model specs, steps, learning rate,
  weight decay, alpha, …) on a local pool, Ray or SLURM, into a tidy table (:mod:`.sweep`,
  :func:`load_sweep`);
- ``all`` — estimators, stepsize, train, compare and depth with the default configs, plus a
  summary of the targets and hypotheses and the git commit (and dirty flag) of each.

Each experiment has a config dataclass (:mod:`.config`: constrained field types, the shared
:class:`TaskConfig`); the functions ``run_*`` take it, an output directory, a seed and a torch
device, and return the run's result (written to JSON).
"""
from .._optional import require

for _module in ("torch", "jsonargparse", "matplotlib"):
    require(_module, extra="experiments", feature="mtdmath.experiments")
del _module

from .adaptive import AdaptiveConfig
from .adaptive import run as run_adaptive
from .cli import main, run_all
from .config import PriorConfig, TaskConfig
from .compare import CompareConfig
from .compare import run as run_compare
from .depth import DepthConfig
from .depth import run as run_depth
from .kl_curves import EstimatorsConfig
from .kl_curves import run as run_estimators
from .phase import PhaseConfig, PhaseResult
from .phase import run as run_phase
from .mechanism import MechanismConfig, MechanismResult
from .mechanism import run as run_mechanism
from .prefix_bayes import posterior_mean_all_prefixes
from .stepsize import StepsizeConfig
from .stepsize import run as run_stepsize
from .sweep import JobConfig, JobResult, SweepConfig, SweepResult, load_sweep
from .sweep import run as run_sweep
from .train import TrainConfig
from .train import run as run_train

__all__ = [
    "main", "run_all",
    "EstimatorsConfig", "TrainConfig", "CompareConfig", "DepthConfig", "SweepConfig", "StepsizeConfig",
    "run_estimators", "run_train", "run_compare", "run_depth", "run_sweep", "run_stepsize",
    "AdaptiveConfig", "run_adaptive", "PhaseConfig", "PhaseResult", "run_phase", "PriorConfig", "TaskConfig",
    "JobConfig", "JobResult", "SweepResult", "load_sweep",
    "posterior_mean_all_prefixes", "MechanismConfig", "MechanismResult", "run_mechanism",
]
