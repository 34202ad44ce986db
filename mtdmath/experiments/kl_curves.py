"""``estimators``: KL to the ground truth vs context length for the estimators of lam (docs/math.md §3-6).

For each order m: draw pi once (rows ~ Dirichlet(concentration·1_S)), N sequences of length T
with their own lam* ~ Dirichlet(alpha), and after every prefix L = m … T compare the predictive
law of y[L] of each method with ``p* = Σ_g lam*_g pi[y[L-g], :]``:

- ``md1`` one-step MD from μ with η* = 1/(1+α₀) (Theorem 1), ``md2`` … ``md5`` k-step MD;
- ``em`` (``em_steps`` EM steps from μ), ``mle`` (EM/SQUAREM to a KKT gap < 1e-10);
- ``bayes`` the exact posterior mean (Pólya-urn forward recursion, docs/math.md §4);
- ``construction`` the three-layer transformer of docs/math.md §5 (``MDTransformer.construct``,
  float64), which must coincide with ``md1``: the largest difference of the two predictive laws
  is recorded and checked (``construction_vs_md1``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtdmath

from . import common as exp_common
from .config import MAX_ELEMENTS, Length, NonNegativeInt, Order, PositiveFloat, PriorConfig, Sequences

METHODS = ["bayes", "md1", "md2", "md3", "md4", "md5", "em", "mle"]


@dataclass
class EstimatorsConfig(PriorConfig):
    """Configuration of the ``estimators`` experiment (S, concentration, alpha:
    :class:`~mtdmath.experiments.config.PriorConfig`).

    Examples
    --------
    >>> from mtdmath import experiments
    >>> cfg = experiments.EstimatorsConfig.quick(orders=(2,), n_seqs=(8,))
    >>> cfg.orders, cfg.T, cfg.n_seqs
    ((2,), 16, (8,))
    """

    orders: tuple[Order, ...] = field(default=(2, 3, 5), metadata={"help": "MTD orders m, one panel each"})
    n_seqs: tuple[Sequences, ...] = field(default=(), metadata={
        "help": "sequences per order (one per --orders entry); default per order m: 500 for m <= 3, 200 for m = 4, "
                "48 for m >= 5 (exact Bayes at m = 5 costs ~1 s per sequence); with --smoke 16, 12, 6"})
    T: Length = field(default=64, metadata={"help": "sequence length: contexts L = m … T"})
    em_steps: NonNegativeInt = field(default=1, metadata={"help": "EM steps from the prior mean μ for the 'em' curve"})
    mle_tol: PositiveFloat = field(default=1e-10, metadata={"help": "KKT-gap tolerance of the MLE"})
    smoke: bool = field(default=False, metadata={
        "help": "smoke-test sizes for the per-order default of n_seqs (set by --quick)"})

    def validate(self) -> None:
        if not self.orders:
            raise ValueError(f"orders must be one or more integers >= 1 (got {self.orders})")
        if not self.n_seqs:
            self.n_seqs = tuple(default_n_seqs(m, quick=self.smoke) for m in self.orders)
        if len(self.orders) != len(self.n_seqs):
            raise ValueError(f"n_seqs must have one entry per order (orders={self.orders}, n_seqs={self.n_seqs})")
        if self.T < max(self.orders) + 1:
            raise ValueError(f"T must exceed every order (got T={self.T}, orders={self.orders})")
        if max(self.n_seqs) * self.T * self.S > MAX_ELEMENTS:
            raise ValueError(f"n_seqs × T × S = {max(self.n_seqs) * self.T * self.S:.3g} predictive probabilities "
                             f"per method exceeds {MAX_ELEMENTS:.3g}: lower n_seqs, T or S")

    @classmethod
    def quick(cls, **kw: Any) -> "EstimatorsConfig":
        return cls(**(dict(T=16, smoke=True) | kw))


@dataclass
class OrderCurves:
    """The curves of one order m: KL(p* ‖ p̂) in nats against the context length L."""

    m: int  #: MTD order
    n_seqs: int  #: sequences the means are over
    pi: np.ndarray  #: the task's transition matrix (S, S)
    alpha: np.ndarray  #: the Dirichlet prior of lam (m,)
    eta: float  #: η* = 1/(1+α₀), the step of one-step MD
    L: list[int]  #: context lengths m … T
    kl_mean: dict[str, list[float]]  #: per method: mean KL(p* ‖ p̂) at each L [nats]
    kl_se: dict[str, list[float]]  #: per method: its standard error over sequences [nats]
    table: dict[str, dict[str, list[float]]]  #: {L: {method: [mean, s.e.]}} at the table lengths [nats]
    construction_vs_md1: dict[str, float]  #: largest absolute difference of the construction's and md1's laws, and of their KL curves
    md1_minus_bayes: dict[str, list[float]]  #: paired KL(md1) − KL(bayes), {L: [mean, s.e.]} [nats]


@dataclass
class EstimatorsResult(exp_common.Result):
    """What ``estimators`` measured (``estimators.json``)."""

    config: EstimatorsConfig
    seed: int  #: base seed of every stream
    meta: dict[str, Any]  #: versions, git state, machine, run_time_s [s]
    results: dict[str, OrderCurves]  #: per order, keyed ``m=<m>``
    methods: list[str]  #: the curves' names
    labels: dict[str, str]  #: legend labels that say what was run (EM steps, MLE tolerance)
    figures: list[str]  #: PNG files written next to the JSON
    experiment: str = field(default="estimators", init=False)


def default_n_seqs(m: int, quick: bool = False) -> int:
    """Sequences per order when ``--n-seqs`` is not given: fewer where exact Bayes is costly."""
    if quick:
        return 16 if m <= 2 else 12 if m == 3 else 6
    return 500 if m <= 3 else 200 if m == 4 else 48


def run(cfg: EstimatorsConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> EstimatorsResult:
    """Run every order; write ``estimators.json`` and ``estimators.png`` under ``out``; return the result.

    Examples
    --------
    >>> import torch
    >>> from pathlib import Path
    >>> from mtdmath import experiments
    >>> cfg = experiments.EstimatorsConfig.quick(orders=(2,), n_seqs=(8,), T=8)
    >>> res = experiments.run_estimators(cfg, Path('est'), seed=0, device=torch.device('cpu'), progress=False)
    >>> sorted(p.name for p in Path('est').iterdir())
    ['estimators.json', 'estimators.png']
    """
    from tqdm.auto import tqdm

    results: dict[str, OrderCurves] = {}
    with exp_common.run_meta(seed, device) as meta:
        for m, N in tqdm(list(zip(cfg.orders, cfg.n_seqs)), desc="estimators: orders", disable=not progress):
            pi, alpha = exp_common.make_task(seed, m, cfg.S, cfg.concentration, cfg.alpha)
            tokens, lam = mtdmath.sample_icl(pi, alpha, cfg.T, N, rng=exp_common.rng_for(seed, exp_common.KEY_ESTIM, m))
            p_true = exp_common.truth_all_prefixes(tokens, lam, pi)
            preds = exp_common.estimator_all_prefixes(tokens, pi, alpha, METHODS, em_steps=cfg.em_steps,
                                             mle_tol=cfg.mle_tol, progress=progress, desc=f"m={m}")
            # the constructed transformer of docs/math.md §5, float64, on the same sequences
            model = mtdmath.nn.MDTransformer.construct(pi, alpha, dtype=torch.float64, device=device)
            preds["construction"] = exp_common.model_all_prefixes(model, tokens, device=device)
            kls = {k: exp_common.kl_per_sequence(p_true, v) for k, v in preds.items()}
            mean, se = exp_common.curves(kls)
            results[f"m={m}"] = OrderCurves(
                m=m, n_seqs=N, pi=pi, alpha=alpha, eta=mtdmath.eta_bayes(alpha), L=list(range(m, cfg.T + 1)),
                kl_mean=mean, kl_se=se, table=exp_common.table_at(kls, m, cfg.T),
                construction_vs_md1={
                    "max_abs_prob_diff": float(np.abs(preds["construction"] - preds["md1"]).max()),
                    "max_abs_kl_curve_diff": float(np.max(np.abs(np.asarray(mean["construction"]) - mean["md1"]))),
                },
                md1_minus_bayes=exp_common.paired_diff(kls, "md1", "bayes", m, cfg.T))
    labels = {"em": exp_common.em_label(cfg.em_steps), "mle": f"MLE (KKT gap < {cfg.mle_tol:g})"}
    fig_path = _plot(results, labels, out / "estimators.png")
    res = EstimatorsResult(config=cfg, seed=seed, meta=meta, results=results, methods=METHODS + ["construction"],
                           labels=labels, figures=[fig_path.name])
    res.write(out / "estimators.json")
    return res


def _plot(results: dict[str, OrderCurves], labels: dict[str, str], path: Path) -> Path:
    plt = exp_common.pyplot()
    keys = list(results)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        r = results[key]
        exp_common.plot_curves(ax, r.L, r.kl_mean, r.kl_se,
                      ["mle", "em", "md5", "md4", "md3", "md2", "md1", "construction", "bayes"], labels)
        ax.set_title(f"m = {r.m}  ({r.n_seqs} sequences)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=5, frameon=False)
    fig.suptitle("KL to the ground truth vs context length (mean ± s.e. over sequences)")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return exp_common.save_figure(fig, path)
