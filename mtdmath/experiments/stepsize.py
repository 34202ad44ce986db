"""``stepsize``: the loss-optimal one-step MD step η_opt(L) against η* = 1/(1+α₀) (docs/math.md §3).

For each task setting (orders m = 2, 3, 5 with alpha = 1, a non-uniform alpha, a second pi) and
each context length L:

- η_opt(L) = :func:`mtdmath.optimal_step` at L (tuned on its own training sequences, bootstrap
  standard error from re-tuning on resampled training sequences);
- on a third, disjoint evaluation set (paired over the same sequences): the KL of one-step MD at
  η_opt(L) and at η*, of exact Bayes (:func:`mtdmath.posterior_mean`; skipped where the count
  lattice is too large, see ``bayes_budget``) and of the second-order one-step estimator
  :func:`mtdmath.corrected_one_step_md` (K.2);
- a weighted least-squares fit of ``1/η_opt`` against the number of transitions n = L − m for
  three forms, ``η = c/L``, ``η = c/(α₀ + n)`` and ``1/η = A + B·n``, each with χ²/dof (weights:
  the bootstrap standard error of 1/η_opt, ``σ(η)/η²``) and the p-value of χ² for its dof.

Writes ``stepsize.json`` (every plotted number) and ``stepsize.png``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from scipy import stats

import mtdmath
from mtdmath.stepsize import task_kl

from . import common as exp_common
from .config import FiniteFloat, Length, Order, PositiveFloat, PriorConfig, Sequences

#: the forms fitted to 1/η_opt against n = L − m (see :func:`fit_forms`)
FORMS = ("c/L", "c/(alpha0+n)", "A+B*n")


@dataclass
class StepsizeConfig(PriorConfig):
    """Configuration of the ``stepsize`` experiment (S, concentration, alpha:
    :class:`~mtdmath.experiments.config.PriorConfig`).

    Examples
    --------
    >>> from mtdmath import experiments
    >>> cfg = experiments.StepsizeConfig.quick(orders=(2,))
    >>> cfg.orders, cfg.Ls
    ((2,), (8, 12, 16, 24))
    """

    orders: tuple[Order, ...] = field(default=(2, 3, 5), metadata={"help": "MTD orders m (alpha = ALPHA·1_m each)"})
    Ls: tuple[Length, ...] = field(default=(8, 16, 32, 64, 128, 256), metadata={"help": "context lengths L"})
    nonuniform_alpha: tuple[PositiveFloat, ...] = field(default=(3.0, 1.0, 0.5), metadata={
        "help": "an extra setting with this non-uniform alpha (its order is its length; the API takes () for none)"})
    second_pi_concentration: FiniteFloat = field(default=2.0, metadata={
        "help": "an extra m = 2 setting with a second pi, rows ~ Dirichlet(this·1) from its own stream (<= 0: none)"})
    n_train: Sequences = field(default=512, metadata={"help": "sequences the step is tuned on (optimal_step)"})
    n_test: Sequences = field(default=512, metadata={"help": "held-out sequences of optimal_step"})
    n_eval: Sequences = field(default=512, metadata={
        "help": "a third, disjoint set on which η_opt, η*, Bayes and K.2 are compared (paired)"})
    n_boot: Sequences = field(default=200, metadata={
        "help": "bootstrap resamples for the standard error of η_opt (>= 2: the fit is weighted by them; the χ² "
                "p-values take these weights as known, so few resamples make them unreliable)"})
    bayes_budget: PositiveFloat = field(default=4e8, metadata={
        "help": "exact Bayes on min(n_eval, BUDGET / #count states) sequences at each L (the posterior mean sums "
                "over C(n+m-1, m-1) count states per sequence); skipped below 16 sequences"})

    def validate(self) -> None:
        if not self.orders or min(self.orders) < 2:
            raise ValueError(f"orders must be non-empty, each >= 2 (got {self.orders})")
        if not self.Ls:
            raise ValueError(f"Ls must be non-empty (got {self.Ls})")
        if len(self.nonuniform_alpha) == 1:
            raise ValueError(f"nonuniform_alpha must have >= 2 positive entries or be empty (got {self.nonuniform_alpha})")
        if self.S < 2:
            raise ValueError(f"S must be >= 2 (got {self.S})")

    @classmethod
    def quick(cls, **kw: Any) -> "StepsizeConfig":
        return cls(**(dict(orders=(2, 3), Ls=(8, 12, 16, 24), n_train=48, n_test=48, n_eval=48, n_boot=4,
                           nonuniform_alpha=(2.0, 0.5), bayes_budget=2e6) | kw))


@dataclass
class FormFit:
    """One weighted least-squares fit of ``1/η_opt`` against n (see :func:`fit_forms`)."""

    params: dict[str, float]  #: ``{"c": …}`` (η = c/L or c/(α₀+n)) or ``{"A": …, "B": …}`` (1/η = A + B·n)
    chi2: float  #: χ² of the weighted residuals (dimensionless)
    dof: int  #: lengths minus parameters
    chi2_dof: float  #: χ²/dof (NaN for dof = 0)
    p_value: float  #: P(χ²_dof >= chi2) (NaN for dof = 0)
    eta_fit: list[float]  #: the fitted step at each row's L
    #: standard errors of ``params`` from the weighted least-squares covariance ``(DᵀΣ⁻¹D)⁻¹`` with the
    #: bootstrap σ taken as known (empty in results written before they were recorded)
    params_se: dict[str, float] = field(default_factory=dict)


@dataclass
class HeldOutKL:
    """:func:`mtdmath.optimal_step`'s own held-out numbers at L (its test sequences)."""

    kl: list[float]  #: [mean, s.e.] KL at η_opt(L) [nats]
    kl_eta_star: list[float]  #: [mean, s.e.] KL at η* [nats]
    diff_se: float  #: s.e. of the paired difference of the two [nats]


@dataclass
class StepRow:
    """One context length L of one setting. KLs are KL(p* ‖ p̂) of the next token in nats, [mean, s.e.]
    over the evaluation sequences; ``a_minus_b`` are paired over the same sequences."""

    L: int  #: context length
    n: int  #: transitions in the context, L − m
    eta_opt: float  #: the loss-optimal one-step MD step at L
    eta_opt_se: float  #: its bootstrap standard error
    eta_star: float  #: η* = 1/(1+α₀)
    optimal_step_heldout: HeldOutKL
    md_eta_opt: list[float]  #: one-step MD at η_opt(L) [nats]
    md_eta_star: list[float]  #: one-step MD at η* [nats]
    k2: list[float]  #: the K.2 corrected one-step estimator [nats]
    k2_minus_md_eta_star: list[float]  #: paired [nats]
    k2_minus_md_eta_opt: list[float]  #: paired [nats]
    md_eta_opt_minus_md_eta_star: list[float]  #: paired [nats]
    n_bayes: int  #: sequences exact Bayes ran on (the first ones; 0: skipped)
    bayes: Optional[list[float]] = None  #: exact Bayes [nats] (None where skipped)
    md_eta_opt_minus_bayes: Optional[list[float]] = None  #: paired on the Bayes sequences [nats]
    md_eta_star_minus_bayes: Optional[list[float]] = None  #: paired on the Bayes sequences [nats]
    k2_minus_bayes: Optional[list[float]] = None  #: paired on the Bayes sequences [nats]


@dataclass
class SettingVerdict:
    """Plain statements on one setting (2 s.e. rules on paired differences; p >= 0.05 for a form)."""

    best_form: Optional[str]  #: the form with the smallest finite χ²/dof (None if none is finite)
    best_chi2_dof: Optional[float]  #: its χ²/dof
    best_form_acceptable: bool  #: its p-value is >= 0.05
    acceptable_forms: list[str]  #: every form with p >= 0.05
    k2_vs_md_eta_star: dict[str, str]  #: per L: "helps", "hurts" or "no significant difference"
    k2_vs_md_eta_opt: dict[str, str]  #: the same against MD at η_opt(L)


@dataclass
class SettingResult:
    """One task setting of ``stepsize``."""

    m: int  #: MTD order
    alpha: np.ndarray  #: Dirichlet prior (m,)
    alpha0: float  #: Σ alpha
    pi: np.ndarray  #: transition matrix (S, S)
    eta_star: float  #: η* = 1/(1+α₀)
    rows: list[StepRow]  #: one per context length, increasing L
    fit: dict[str, FormFit]  #: per form of :data:`FORMS`
    best_form: Optional[str]  #: the form with the smallest finite χ²/dof


@dataclass
class StepsizeResult(exp_common.Result):
    """What ``stepsize`` measured (``stepsize.json``)."""

    config: StepsizeConfig
    seed: int  #: base seed of every stream
    meta: dict[str, Any]  #: versions, git state, machine, run_time_s [s]
    results: dict[str, SettingResult]  #: per setting name (``m=2``, ``m=3 alpha=(3,1,0.5)``, …)
    forms: list[str]  #: the fitted forms, :data:`FORMS`
    verdict: dict[str, SettingVerdict] = field(default_factory=dict)  #: per setting name
    figures: list[str] = field(default_factory=list)  #: PNG files written next to the JSON
    experiment: str = field(default="stepsize", init=False)


def settings(cfg: StepsizeConfig, seed: int) -> list[dict[str, Any]]:
    """The task settings: ``{"name", "m", "pi", "alpha"}``; pi of order m is the one of
    ``estimators``/``train`` at this seed (the same stream), the second pi has its own stream."""
    out = []
    for m in cfg.orders:
        pi, alpha = exp_common.make_task(seed, m, cfg.S, cfg.concentration, cfg.alpha)
        out.append({"name": f"m={m}", "m": m, "pi": pi, "alpha": alpha})
    if cfg.nonuniform_alpha:
        m = len(cfg.nonuniform_alpha)
        pi, _ = exp_common.make_task(seed, m, cfg.S, cfg.concentration, cfg.alpha)
        out.append({"name": f"m={m} alpha=({','.join(f'{a:g}' for a in cfg.nonuniform_alpha)})", "m": m, "pi": pi,
                    "alpha": np.asarray(cfg.nonuniform_alpha, np.float64)})
    if cfg.second_pi_concentration > 0:
        pi = mtdmath.random_transition_matrix(cfg.S, concentration=cfg.second_pi_concentration,
                                        rng=exp_common.rng_for(seed, exp_common.KEY_PI, 2, 1))
        out.append({"name": f"m=2 pi2 (beta={cfg.second_pi_concentration:g})", "m": 2, "pi": pi,
                    "alpha": np.full(2, float(cfg.alpha))})
    return out


def fit_forms(n: np.ndarray, L: np.ndarray, eta: np.ndarray, eta_se: np.ndarray, alpha0: float) -> dict[str, FormFit]:
    """Weighted least-squares fits of ``y = 1/η_opt`` (σ_y = σ_η/η², the delta method).

    Forms
    -----
    ``c/L``          : η = c/L,        y = L/c        (one parameter)
    ``c/(alpha0+n)`` : η = c/(α₀+n),   y = (α₀+n)/c   (one parameter; c = 1 would be the Bayes count rate)
    ``A+B*n``        : y = A + B·n                    (two parameters)

    The p-value treats σ_y as known. It is estimated from the bootstrap resamples of
    :func:`mtdmath.optimal_step`, so with few resamples χ² is not χ²-distributed (each σ² has only
    ``n_boot − 1`` degrees of freedom) and the p-value is unreliable: the experiment uses 200.

    Returns
    -------
    dict form -> :class:`FormFit`; a form with dof = 0 gets NaN χ²/dof (:func:`best_form` picks one).
    """
    y = 1.0 / eta
    sy = eta_se / eta ** 2
    w = 1.0 / sy
    designs = {"c/L": L[:, None].astype(float), "c/(alpha0+n)": (alpha0 + n)[:, None].astype(float),
               "A+B*n": np.stack([np.ones_like(n, dtype=float), n.astype(float)], axis=1)}
    out: dict[str, FormFit] = {}
    for name, D in designs.items():
        Dw = D * w[:, None]
        beta, *_ = np.linalg.lstsq(Dw, y * w, rcond=None)
        resid = (y - D @ beta) / sy
        chi2 = float(resid @ resid)
        dof = len(y) - D.shape[1]
        beta_se = np.sqrt(np.diag(np.linalg.pinv(Dw.T @ Dw)))  # σ known (absolute), not rescaled by χ²/dof
        if name == "A+B*n":
            params = {"A": float(beta[0]), "B": float(beta[1])}
            params_se = {"A": float(beta_se[0]), "B": float(beta_se[1])}
        else:  # c = 1/β: delta method
            params = {"c": float(1.0 / beta[0])}
            params_se = {"c": float(beta_se[0] / beta[0] ** 2)}
        out[name] = FormFit(params=params, chi2=chi2, dof=int(dof),
                            chi2_dof=chi2 / dof if dof > 0 else float("nan"),
                            p_value=float(stats.chi2.sf(chi2, dof)) if dof > 0 else float("nan"),
                            eta_fit=(1.0 / (D @ beta)).tolist(), params_se=params_se)
    return out


def best_form(fit: dict[str, FormFit]) -> str | None:
    """The form with the smallest finite χ²/dof (None if none is finite)."""
    finite = {k: v.chi2_dof for k, v in fit.items() if np.isfinite(v.chi2_dof)}
    return min(finite, key=finite.get) if finite else None


def _n_count_states(n: int, m: int) -> int:
    """Count states of the exact posterior mean after n transitions: C(n+m-1, m-1)."""
    return math.comb(n + m - 1, m - 1)


def run(cfg: StepsizeConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> StepsizeResult:
    """Tune, evaluate, fit; write ``stepsize.json`` and ``stepsize.png``.

    Examples
    --------
    >>> import torch
    >>> from pathlib import Path
    >>> from mtdmath import experiments
    >>> cfg = experiments.StepsizeConfig.quick(orders=(2,))
    >>> res = experiments.run_stepsize(cfg, Path('runs/stepsize'), seed=0, device=torch.device('cpu'), progress=False)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    results: dict[str, SettingResult] = {}
    with exp_common.run_meta(seed, device) as meta:
        sets = settings(cfg, seed)
        jobs = [(i, s, L) for i, s in enumerate(sets) for L in cfg.Ls if L >= s["m"] + 1]
        rows: dict[str, list[StepRow]] = {s["name"]: [] for s in sets}
        for i, s, L in tqdm(jobs, desc="stepsize: η_opt(L)", disable=not progress):
            m, pi, alpha = s["m"], s["pi"], s["alpha"]
            r = mtdmath.optimal_step(pi, alpha, L=L, n_train=cfg.n_train, n_test=cfg.n_test, n_boot=cfg.n_boot,
                               rng=exp_common.rng_for(seed, exp_common.KEY_STEP, i, L))
            # a third set, disjoint from optimal_step's (its own stream): every estimator on the same sequences
            y, lam = mtdmath.sample_icl(pi, alpha, L + 1, cfg.n_eval, rng=exp_common.rng_for(seed, exp_common.KEY_STEP, i, L, 1))
            C = mtdmath.lag_factors(y[:, :L], pi, m)
            p_true = mtdmath.predictive(lam, y[:, :L], pi)
            kls = {"md_eta_opt": task_kl(y, lam, pi, alpha, r.eta, L=L),
                   "md_eta_star": task_kl(y, lam, pi, alpha, r.eta_star, L=L),
                   "k2": mtdmath.kl(p_true, mtdmath.predictive(mtdmath.corrected_one_step_md(C, alpha), y[:, :L], pi))}
            n_bayes = int(min(cfg.n_eval, cfg.bayes_budget // _n_count_states(L - m, m)))
            n_bayes = n_bayes if n_bayes >= 16 else 0

            def ms(v: np.ndarray) -> list[float]:
                return [float(a) for a in exp_common.mean_se(v)]

            row = StepRow(L=L, n=L - m, eta_opt=r.eta, eta_opt_se=r.eta_se, eta_star=r.eta_star,
                          optimal_step_heldout=HeldOutKL(kl=[r.kl, r.kl_se], kl_eta_star=[r.kl_eta_star, r.kl_eta_star_se],
                                                         diff_se=r.diff_se),
                          md_eta_opt=ms(kls["md_eta_opt"]), md_eta_star=ms(kls["md_eta_star"]), k2=ms(kls["k2"]),
                          k2_minus_md_eta_star=ms(kls["k2"] - kls["md_eta_star"]),
                          k2_minus_md_eta_opt=ms(kls["k2"] - kls["md_eta_opt"]),
                          md_eta_opt_minus_md_eta_star=ms(kls["md_eta_opt"] - kls["md_eta_star"]), n_bayes=n_bayes)
            if n_bayes:
                b = slice(0, n_bayes)  # the first n_bayes evaluation sequences
                kb = mtdmath.kl(p_true[b], mtdmath.predictive(mtdmath.posterior_mean(C[b], alpha), y[b, :L], pi))
                row.bayes = ms(kb)
                row.md_eta_opt_minus_bayes = ms(kls["md_eta_opt"][b] - kb)
                row.md_eta_star_minus_bayes = ms(kls["md_eta_star"][b] - kb)
                row.k2_minus_bayes = ms(kls["k2"][b] - kb)
            rows[s["name"]].append(row)
        for s in sets:
            rs = rows[s["name"]]
            alpha0 = float(np.sum(s["alpha"]))
            fit = fit_forms(np.array([r.n for r in rs]), np.array([r.L for r in rs]),
                            np.array([r.eta_opt for r in rs]), np.array([r.eta_opt_se for r in rs]), alpha0)
            results[s["name"]] = SettingResult(m=s["m"], alpha=s["alpha"], alpha0=alpha0, pi=s["pi"],
                                               eta_star=mtdmath.eta_bayes(s["alpha"]), rows=rs, fit=fit,
                                               best_form=best_form(fit))
    res = StepsizeResult(config=cfg, seed=seed, meta=meta, results=results, forms=list(FORMS), verdict=verdict(results))
    res.figures = [_plot(res, out / "stepsize.png").name]
    res.write(out / "stepsize.json")
    (out / "stepsize.md").write_text(markdown(res))
    return res


def markdown(res: StepsizeResult) -> str:
    """Markdown tables of a ``stepsize`` result (:meth:`StepsizeResult.read` reads its JSON): η_opt(L) ± s.e.
    per setting, the fits (χ²/dof, p), and the KLs of MD at η_opt / η*, K.2 and exact Bayes (mean ± s.e.)."""
    R = res.results
    names = list(R)
    Ls = sorted({row.L for r in R.values() for row in r.rows})
    lines = ["**η_opt(L)** (one-step MD from μ, tuned on held-out sequences; ± bootstrap s.e.)\n",
             "| setting | η* | " + " | ".join(f"L = {L}" for L in Ls) + " |", "|---|---|" + "---|" * len(Ls)]
    for n in names:
        by = {row.L: row for row in R[n].rows}
        lines.append(f"| {n} | {R[n].eta_star:.4f} | " + " | ".join(
            f"{by[L].eta_opt:.4f} ± {by[L].eta_opt_se:.4f}" if L in by else "–" for L in Ls) + " |")
    lines += ["", f"**Fits of 1/η_opt against n = L − m** (weighted by the bootstrap s.e. of η_opt from "
              f"{res.config.n_boot} resamples; χ²/dof, p-value of χ² with those weights taken as known; "
              "parameters ± their weighted least-squares s.e.)\n",
              "| setting | α₀ | c/L | c/(α₀+n) | A + B·n | form that holds (p ≥ 0.05) |", "|---|---|---|---|---|---|"]
    for n in names:
        f = R[n].fit

        def cell(k: str) -> str:
            se = f[k].params_se
            pr = ", ".join(f"{a} = {v:.3g}" + (f" ± {se[a]:.2g}" if a in se else "") for a, v in f[k].params.items())
            return f"{f[k].chi2_dof:.2f} (p = {f[k].p_value:.2g}; {pr})"

        ok = res.verdict[n].acceptable_forms
        lines.append(f"| {n} | {R[n].alpha0:g} | {cell('c/L')} | {cell('c/(alpha0+n)')} | {cell('A+B*n')} | "
                     f"{', '.join(ok) if ok else 'none'} |")
    lines += ["", "**KL(p* ‖ p̂)** on a third, disjoint set (nats, mean ± s.e.; exact Bayes on the first n_Bayes "
              "sequences where the count lattice allows)\n",
              "| setting | L | MD(η_opt(L)) | MD(η*) | K.2 corrected | exact Bayes (n_Bayes) | K.2 − MD(η*) (paired) |",
              "|---|---|---|---|---|---|---|"]
    for n in names:
        for row in R[n].rows:
            b = f"{row.bayes[0]:.4f} ± {row.bayes[1]:.4f} ({row.n_bayes})" if row.bayes is not None else "skipped"
            d = row.k2_minus_md_eta_star
            lines.append(f"| {n} | {row.L} | {row.md_eta_opt[0]:.4f} ± {row.md_eta_opt[1]:.4f} | "
                         f"{row.md_eta_star[0]:.4f} ± {row.md_eta_star[1]:.4f} | {row.k2[0]:.4f} ± "
                         f"{row.k2[1]:.4f} | {b} | {d[0]:+.4f} ± {d[1]:.4f} |")
    return "\n".join(lines) + "\n"


def verdict(results: dict[str, SettingResult]) -> dict[str, SettingVerdict]:
    """Per setting: the best form by χ²/dof and whether it is acceptable (p >= 0.05); where K.2 beats
    one-step MD at η* and at η_opt (paired mean difference below −2 s.e.) and where it loses (above +2 s.e.)."""
    def sig(d: list[float]) -> str:
        return "helps" if d[0] < -2 * d[1] else "hurts" if d[0] > 2 * d[1] else "no significant difference"

    out = {}
    for name, r in results.items():
        f, best = r.fit, r.best_form
        out[name] = SettingVerdict(
            best_form=best, best_chi2_dof=f[best].chi2_dof if best else None,
            best_form_acceptable=bool(best and f[best].p_value >= 0.05),
            acceptable_forms=[k for k in FORMS if np.isfinite(f[k].p_value) and f[k].p_value >= 0.05],
            k2_vs_md_eta_star={str(row.L): sig(row.k2_minus_md_eta_star) for row in r.rows},
            k2_vs_md_eta_opt={str(row.L): sig(row.k2_minus_md_eta_opt) for row in r.rows})
    return out


def _plot(res: StepsizeResult, path: Path) -> Path:
    plt = exp_common.pyplot()
    names = list(res.results)
    fig, axes = plt.subplots(2, len(names), figsize=(3.4 * len(names), 6.6), squeeze=False)
    for j, name in enumerate(names):
        r = res.results[name]
        rs = r.rows
        L = np.array([row.L for row in rs])
        eta = np.array([row.eta_opt for row in rs])
        se = np.array([row.eta_opt_se for row in rs])
        ax = axes[0][j]
        ax.errorbar(L, eta, yerr=se, fmt="o", color="black", ms=3, label="η_opt(L) ± s.e.")
        for form, ls in zip(FORMS, ("--", "-", ":")):
            f = r.fit[form]
            ax.plot(L, f.eta_fit, ls, lw=1.2, label=f"{form}: χ²/dof {f.chi2_dof:.2g}")
        ax.axhline(r.eta_star, color="tab:blue", lw=0.8, label="η* = 1/(1+α₀)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("context length L", fontsize=8)
        ax.set_ylabel("step", fontsize=8)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3, which="both")
        ax = axes[1][j]
        for key, label, color in (("md_eta_star", "1-step MD (η*)", "tab:blue"),
                                  ("md_eta_opt", "1-step MD (η_opt(L))", "tab:green"),
                                  ("k2", "K.2 corrected one-step", "tab:red"), ("bayes", "exact Bayes", "black")):
            pts = [(row.L, *getattr(row, key)) for row in rs if getattr(row, key) is not None]
            if not pts:
                continue
            if key == "bayes":  # say where exact Bayes ran on fewer sequences or not at all
                n_ev = max(row.n_bayes for row in rs)
                few = [f"L={row.L}: {row.n_bayes} seqs" if row.n_bayes else f"L={row.L}: skipped"
                       for row in rs if row.n_bayes < n_ev]
                label += f" ({'; '.join(few)})" if few else ""
            a = np.array(pts)
            ax.errorbar(a[:, 0], a[:, 1], yerr=a[:, 2], fmt="-o", ms=2.5, lw=1.1, color=color, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length L", fontsize=8)
        ax.set_ylabel("KL(p* ‖ p̂) [nats]", fontsize=8)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Loss-optimal one-step MD step vs L (top) and KL on held-out sequences (bottom)", fontsize=10)
    fig.tight_layout()
    return exp_common.save_figure(fig, path)
