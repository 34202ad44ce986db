"""``mechanism``: is the step of a trained standard transformer a context-length-normalised MD step?

The criterion (written before the run) and the verdict are in ``docs/guide/mechanism.md``. For
every (order m, depth, training seed) a ``StandardTransformer`` is trained (or its checkpoint
reused), its matched step η(n) read from its output and ``c/(n+m+a)`` fitted to it; then

a. **within-context probes**: ridge probes from the residual stream after each block to four
   targets (centred log lag weights of adaptive-step MD, constant-step MD, exact Bayes and the
   running mean of the responsibilities), residuals and targets centred within each sequence,
   fitted on half of the sequences and scored (R²) on the other half; bootstrap standard errors
   of the differences of R² over the held-out sequences;
b. **head-by-head mean ablation** of every head's output (``attn.hook_z``): the change of the
   mean KL to the truth and of the slope B of 1/η on n;
c. **an added sink** of weight a' on the head whose ablation lowers B the most
   (:func:`mtdmath.nn.add_sink_hook`, docs/math.md §5.7): does the matched step move to
   c/(n+m+a+a')?
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtdmath
from mtdmath import nn

from . import common as exp_common
from .config import (Batch, Heads, Layers, Length, NonNegativeFloat, NonNegativeInt, Order, PositiveFloat,
                     PriorConfig, Sequences, Steps, Width, check_attention_size)
from .prefix_bayes import posterior_mean_all_prefixes

TARGETS = ("md_adaptive", "md_constant", "bayes", "running_mean")
#: the decisive sink weight of test (c) (docs/guide/mechanism.md)
DECISIVE_SINK = 16.0


@dataclass
class MechanismConfig(PriorConfig):
    """Configuration of the ``mechanism`` experiment (defaults: the committed run, about 25 min on 2 CPU cores).

    Examples
    --------
    >>> from mtdmath import experiments
    >>> cfg = experiments.MechanismConfig.quick()
    >>> cfg.orders, cfg.depths, cfg.n_seeds
    ((2,), (1, 2), 1)
    """

    orders: tuple[Order, ...] = field(default=(2, 3), metadata={"help": "MTD orders m (one task per order)"})
    depths: tuple[Layers, ...] = field(default=(3, 5), metadata={"help": "layers of the standard transformers"})
    n_seeds: Steps = field(default=3, metadata={"help": "training seeds per (order, depth)"})
    T: Length = field(default=33, metadata={"help": "training sequence length (evaluation: T - 1, the trained rows)"})
    d_model: Width = field(default=32, metadata={"help": "model width"})
    n_heads: Heads = field(default=2, metadata={"help": "attention heads per layer"})
    steps: Steps = field(default=1000, metadata={"help": "optimiser steps per model"})
    batch: Batch = field(default=32, metadata={"help": "sequences per optimiser step"})
    lr: PositiveFloat = field(default=3e-3, metadata={"help": "peak AdamW learning rate (cosine decay)"})
    weight_decay: NonNegativeFloat = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup: NonNegativeInt = field(default=50, metadata={"help": "linear warm-up steps"})
    n_eval: Sequences = field(default=512, metadata={"help": "evaluation sequences per order (half fit the probes)"})
    n_boot: Steps = field(default=1000, metadata={"help": "bootstrap resamples of the held-out sequences (ΔR² s.e.)"})
    sink_weights: tuple[PositiveFloat, ...] = field(default=(4.0, 16.0), metadata={
        "help": "weights a' of the added sink (test c); 16 is the decisive one"})

    def validate(self) -> None:
        if self.T < max(self.orders) + 5:
            raise ValueError(f"T must be >= max(orders) + 5 for a step fit at n >= 2 (got T={self.T}, "
                             f"orders={self.orders})")
        if min(self.orders) < 2:
            raise ValueError(f"orders must be >= 2: a step moves lam only for m >= 2 (got {self.orders})")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}")
        check_attention_size(batch=max(self.batch, self.n_eval), T=self.T, heads=self.n_heads, name="n_eval")

    @classmethod
    def quick(cls, **kw: Any) -> "MechanismConfig":
        base = dict(orders=(2,), depths=(1, 2), n_seeds=1, T=12, d_model=8, n_heads=2, steps=20, batch=8,
                    warmup=2, n_eval=16, n_boot=50)
        return cls(**(base | kw))


@dataclass
class ProbeLayer:
    """Within-context probes of one residual stream (test a)."""

    layer: int  #: block whose output is probed (0-based)
    r2: dict[str, float]  #: held-out R² per target
    #: ``"x-y"`` -> [mean, s.e.] of R²(x) − R²(y) (s.e. over bootstrap resamples of held-out sequences)
    diff: dict[str, list[float]]


@dataclass
class HeadAblation:
    """Mean ablation of one head (test b)."""

    layer: int
    head: int
    kl_change: list[float]  #: [mean, s.e.] paired KL(truth ‖ ablated) − KL(truth ‖ model), per-sequence means [nats]
    B: float  #: slope of 1/η on n of the ablated model (NaN: not fitted)
    B_ratio: float  #: B(ablated) / B(model)
    fit_kl: float  #: mean KL(ablated ‖ MD(η(n))) left at the matched step [nats]
    normalising: bool  #: B_ratio <= 0.5 and fit_kl <= 0.05


@dataclass
class SinkIntervention:
    """An added sink of weight a' on one head (test c)."""

    weight: float  #: a'
    eta: list[float]  #: matched step with the sink, at n of the model record
    predicted: list[float]  #: c/(n+m+a+a')
    median_rel_error: float  #: median over n >= 2 of |η'/predicted − 1|
    median_change: float  #: median over n >= 2 of |η'/η − 1| (the distance from "nothing changed")
    fit_kl: float  #: mean KL left at the matched step [nats]
    moves_as_predicted: bool  #: median_rel_error <= 0.10 and median_change > 0.20


@dataclass
class ModelMechanism:
    """Everything measured on one trained model."""

    name: str  #: ``std{L}_m{m}_seed{s}``
    m: int
    n_layers: int
    seed: int  #: training seed index
    final_loss: float  #: last logged training NLL [nats/token]
    train_time_s: float  #: wall clock of the training, over every session that built the checkpoint [s]
    reused: bool  #: the finished checkpoint was found and reused (no training in this run)
    kl: list[float]  #: [mean, s.e.] over sequences of the per-sequence mean KL(truth ‖ model) [nats]
    kl_bayes: list[float]  #: the same for exact Bayes on the same sequences [nats]
    n: list[int]  #: numbers of transitions of the matched step
    eta: list[float]  #: matched step η(n)
    eta_fit_kl: list[float]  #: mean KL(model ‖ MD(η(n))) left at each n [nats]
    c: float
    a: float
    c_se: float
    a_se: float
    B: float  #: slope of 1/η on n
    fit_r2: float  #: R² of c/(n+m+a) in η
    eta_constant: float  #: the constant step closest to the model (target md_constant)
    probes: list[ProbeLayer]
    probe_verdict: str  #: supports / against / undecided (last layer)
    ablations: list[HeadAblation]
    localisation: str  #: localised / distributed
    sink_head: list[int]  #: [layer, head] of the intervention
    sink_head_is_normalising: bool
    interventions: list[SinkIntervention]
    moves_as_predicted: bool  #: at the decisive a' = 16


@dataclass
class MechanismResult(exp_common.Result):
    """What ``mechanism`` measured (``mechanism.json``).

    Examples
    --------
    The committed run, read back (from a clone of the repository):

    >>> from pathlib import Path
    >>> from mtdmath import experiments
    >>> path = Path(experiments.__file__).parents[2] / "docs" / "figures" / "mechanism.json"
    >>> res = experiments.MechanismResult.read(path)
    >>> type(res.config).__name__, res.config.n_seeds
    ('MechanismConfig', 3)
    """

    config: MechanismConfig
    seed: int
    meta: dict[str, Any]
    pi: dict[str, np.ndarray]  #: per order m (as a string): the task's transition matrix
    alpha: dict[str, np.ndarray]
    models: dict[str, ModelMechanism]
    verdict: dict[str, Any]  #: per test: counts and outcome; the overall verdict
    figures: list[str] = field(default_factory=list)
    experiment: str = field(default="mechanism", init=False)


# ----------------------------------------------------------------------------- training (checkpoints reused)
def train_model(cfg: MechanismConfig, task: nn.ICLTask, n_layers: int, seed_index: int, path: Path, *,
                seed: int, device: torch.device, progress: bool) -> tuple[torch.nn.Module, float, float, bool]:
    """Train one model, resuming (or reusing) the training checkpoint at ``path``; returns the model
    (float64, eval), its last logged loss, its training wall clock (the history's, which a resumed
    run continues) and whether a finished checkpoint was reused."""
    m = task.m
    key = (m, n_layers, seed_index)
    gen = torch.Generator().manual_seed(exp_common.torch_seed_for(seed, exp_common.KEY_INIT, *key))
    model = nn.StandardTransformer(cfg.S, m, n_layers=n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                                   max_len=cfg.T, generator=gen)
    done = False
    if path.exists():
        _, info = nn.load_checkpoint(path, model=model, device=device)
        if info.get("task") != task:
            raise exp_common.ConfigError(f"checkpoint {path} was trained on another task: use a fresh --out")
        done = info.get("training", {}).get("step", 0) >= cfg.steps
        hist = nn.TrainHistory.from_dict(info["history"])
    if not done:
        hist = nn.train(model, task, steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr, schedule="cosine",
                        warmup=min(cfg.warmup, cfg.steps), weight_decay=cfg.weight_decay, device=device,
                        seed=exp_common.torch_seed_for(seed, exp_common.KEY_TRAIN, *key), log_every=max(1, cfg.steps // 30),
                        progress=progress, desc=path.stem, checkpoint=path,
                        checkpoint_every=max(1, cfg.steps // 5), resume=path if path.exists() else None)
    return model.to(device=device, dtype=torch.float64).eval(), float(hist.loss[-1]), float(hist.time[-1]), done


# ----------------------------------------------------------------------------- step fits
def _step_fit(probs: np.ndarray, tokens: np.ndarray, pi: np.ndarray, alpha: np.ndarray
              ) -> tuple[nn.MatchedStep, nn.AdaptiveFit | None]:
    """Matched step at every n and c/(n+m+a) fitted over n >= 2 off the search bounds."""
    ms = nn.matched_step(probs, tokens, pi, alpha)
    ok = (ms.n >= 2) & np.isfinite(ms.eta) & (ms.eta > 1.01e-4) & (ms.eta < 0.99e2)
    if ok.sum() < 3:
        return ms, None
    return ms, nn.fit_adaptive_step(ms.n[ok], ms.eta[ok], alpha.shape[0])


def _slope(fit: nn.AdaptiveFit | None) -> float:
    return float(fit.B) if fit is not None else math.nan


# ----------------------------------------------------------------------------- test (a): probes
def lam_targets(tokens: np.ndarray, pi: np.ndarray, alpha: np.ndarray, eta_adaptive: np.ndarray,
                eta_constant: float) -> dict[str, np.ndarray]:
    """Centred log lag weights of each target at every prefix row r = 1 … T-m, shape (B, T-m, m).

    ``eta_adaptive[r-1]`` is the adaptive step at n = r transitions.
    """
    m = alpha.shape[0]
    C = mtdmath.lag_factors(tokens, pi, m)  # (B, T-m, m)
    mu = alpha / alpha.sum()
    R = C.shape[1]
    out = {k: np.empty((tokens.shape[0], R, m)) for k in TARGETS}
    for r in range(1, R + 1):
        Cr = C[:, :r]
        out["md_adaptive"][:, r - 1] = mtdmath.mirror_descent(Cr, eta=float(eta_adaptive[r - 1]), steps=1, lam0=mu)
        out["md_constant"][:, r - 1] = mtdmath.mirror_descent(Cr, eta=float(eta_constant), steps=1, lam0=mu)
        out["running_mean"][:, r - 1] = mtdmath.em(Cr, steps=1, lam0=mu)  # mean responsibilities at μ
    out["bayes"] = posterior_mean_all_prefixes(C, alpha)[:, 1:]
    for k, v in out.items():
        lv = np.log(np.maximum(v, 1e-300))  # a weight of 0 (a lag that no transition supports) is floored
        out[k] = lv - lv.mean(axis=-1, keepdims=True)
    return out


def _centre(x: np.ndarray) -> np.ndarray:
    """Centre (B, R, k) over the positions of each sequence (the within-context transform)."""
    return x - x.mean(axis=1, keepdims=True)


def within_context_probes(resid: np.ndarray, targets: dict[str, np.ndarray], *, n_boot: int,
                          rng: np.random.Generator) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Held-out R² of within-context ridge probes and bootstrap s.e. of their differences.

    Parameters
    ----------
    resid : (B, R, D) residual stream at the probed rows
    targets : name -> (B, R, k)

    Returns
    -------
    r2 : name -> held-out R² (variance-weighted over the target's coordinates)
    diff : ``"x-y"`` -> [R²(x) − R²(y), s.e. over ``n_boot`` resamples of the held-out sequences]
    """
    from sklearn.linear_model import RidgeCV

    B = resid.shape[0]
    half = B // 2
    h = _centre(resid)
    mu_h, sd_h = h[:half].reshape(-1, h.shape[-1]).mean(0), h[:half].reshape(-1, h.shape[-1]).std(0) + 1e-12
    h = (h - mu_h) / sd_h
    sse, sst = {}, {}
    for k, z in targets.items():
        zc = _centre(z)
        probe = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(h[:half].reshape(-1, h.shape[-1]),
                                                            zc[:half].reshape(-1, zc.shape[-1]))
        pred = probe.predict(h[half:].reshape(-1, h.shape[-1])).reshape(zc[half:].shape)
        # per held-out sequence: the within-centred target has mean 0 in every sequence, so the
        # total sum of squares about 0 is exact and R² is 1 − Σ SSE / Σ SST over any set of sequences
        sse[k] = ((zc[half:] - pred) ** 2).sum(axis=(1, 2))
        sst[k] = (zc[half:] ** 2).sum(axis=(1, 2))
    r2 = {k: float(1.0 - sse[k].sum() / sst[k].sum()) for k in targets}
    idx = rng.integers(0, B - half, size=(n_boot, B - half))
    boot = {k: 1.0 - sse[k][idx].sum(1) / sst[k][idx].sum(1) for k in targets}
    names = list(targets)
    diff = {f"{x}-{y}": [r2[x] - r2[y], float(np.std(boot[x] - boot[y], ddof=1))]
            for i, x in enumerate(names) for y in names[i + 1:]}
    return r2, diff


def probe_verdict(layer: ProbeLayer) -> str:
    """The per-model outcome of test (a) (docs/guide/mechanism.md)."""
    def d(x: str, y: str) -> list[float]:
        if f"{x}-{y}" in layer.diff:
            return layer.diff[f"{x}-{y}"]
        v = layer.diff[f"{y}-{x}"]
        return [-v[0], v[1]]

    others = [t for t in TARGETS if t != "md_adaptive"]
    if any(d(t, "md_adaptive")[0] > max(2 * d(t, "md_adaptive")[1], 0.01) for t in others):
        return "against"
    beats = all(d("md_adaptive", t)[0] > max(2 * d("md_adaptive", t)[1], 0.01) for t in ("md_constant", "running_mean"))
    not_below_bayes = d("md_adaptive", "bayes")[0] > -2 * d("md_adaptive", "bayes")[1]
    return "supports" if beats and not_below_bayes else "undecided"


# ----------------------------------------------------------------------------- the run
@torch.no_grad()
def _probs(model: torch.nn.Module, tokens: torch.Tensor, hooks: list | None = None) -> np.ndarray:
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks or [])
    return torch.softmax(logits, -1).cpu().numpy()


def _kl_seq(p_true: np.ndarray, p: np.ndarray) -> np.ndarray:
    return exp_common.kl_per_sequence(p_true, p).mean(axis=1)  # (B,) per-sequence mean over contexts


@torch.no_grad()
def analyse(model: torch.nn.Module, tokens: np.ndarray, lam: np.ndarray, pi: np.ndarray, alpha: np.ndarray,
            cfg: MechanismConfig, *, rng: np.random.Generator, bayes_probs: np.ndarray | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Tests (a)-(c) on one model (float64, eval); returns the fields of :class:`ModelMechanism`."""
    from scipy.optimize import minimize_scalar

    m = alpha.shape[0]
    y = torch.as_tensor(tokens, device=next(model.parameters()).device)
    p_true = exp_common.truth_all_prefixes(tokens, lam, pi)
    probs = _probs(model, y)
    kl_model = _kl_seq(p_true, probs)
    ms, fit = _step_fit(probs, tokens, pi, alpha)
    B0 = _slope(fit)
    # the adaptive target: the fitted c/(n+m+a) where the fit has B > 0, else the matched step itself
    if fit is not None and math.isfinite(fit.c) and math.isfinite(fit.a):
        eta_ad = fit.c / (ms.n + m + fit.a)
    else:
        eta_ad = np.where(np.isfinite(ms.eta), ms.eta, np.nanmedian(ms.eta))
    eta_ad = np.clip(eta_ad, 1e-6, None)  # a fitted a below −m−n would give a negative step at small n

    plogp = np.sum(np.where(probs > 0, probs * np.log(np.maximum(probs, 1e-300)), 0.0), axis=-1)

    def const_kl(log_eta: float) -> float:
        q = mtdmath.md_predictive_all_prefixes(tokens, pi, alpha, eta=float(np.exp(log_eta)))
        return float(np.mean(plogp - np.sum(probs * np.log(np.maximum(q, 1e-300)), axis=-1)))

    eta_c = float(np.exp(minimize_scalar(const_kl, bounds=(np.log(1e-3), np.log(1e2)), method="bounded",
                                         options={"xatol": 1e-6}).x))

    # (a) probes at every block's output, rows n = 1 … T-m (positions t = m … T-1)
    targets = lam_targets(tokens, pi, alpha, eta_ad, eta_c)
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.config.n_layers)]
    _, cache = model.run_with_cache(y, names_filter=names)
    probes = []
    for l, nm in enumerate(names):
        resid = cache[nm][:, m:].cpu().numpy()  # (B, T-m, D)
        r2, diff = within_context_probes(resid, targets, n_boot=cfg.n_boot, rng=rng)
        probes.append(ProbeLayer(layer=l, r2=r2, diff=diff))

    # (b) mean ablation of each head's output
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(model.config.n_layers)]
    _, zc = model.run_with_cache(y, names_filter=z_names)
    ablations = []
    for l, nm in enumerate(z_names):
        for hd in range(model.config.n_heads):
            hook = nn.head_ablation_hook(hd, mean=zc[nm][:, hd].mean(0))
            pa = _probs(model, y, [(nm, hook)])
            d = _kl_seq(p_true, pa) - kl_model
            msa, fa = _step_fit(pa, tokens, pi, alpha)
            Ba = _slope(fa)
            ratio = Ba / B0 if math.isfinite(B0) and B0 > 0 and math.isfinite(Ba) else math.nan
            fit_kl = float(np.mean(msa.kl_left))
            ablations.append(HeadAblation(layer=l, head=hd, kl_change=[float(v) for v in exp_common.mean_se(d)], B=Ba,
                                          B_ratio=ratio, fit_kl=fit_kl,
                                          normalising=bool(math.isfinite(ratio) and ratio <= 0.5 and fit_kl <= 0.05)))
    n_norm = sum(a.normalising for a in ablations)
    localisation = "localised" if 1 <= n_norm <= 2 else "distributed"

    # (c) an added sink on the head whose ablation lowers B the most
    finite = [a for a in ablations if math.isfinite(a.B_ratio)]
    chosen = min(finite, key=lambda a: a.B_ratio) if finite else ablations[0]
    interventions = []
    sel = ms.n >= 2
    for w in cfg.sink_weights:
        hook = nn.add_sink_hook(float(w), heads=[chosen.head])
        ps = _probs(model, y, [(f"blocks.{chosen.layer}.attn.hook_pattern", hook)])
        mss = nn.matched_step(ps, tokens, pi, alpha)
        if fit is not None and math.isfinite(fit.c):
            pred = fit.c / (ms.n + m + fit.a + w)
            rel = float(np.nanmedian(np.abs(mss.eta[sel] / pred[sel] - 1.0)))
        else:
            pred, rel = np.full(ms.n.shape, np.nan), math.nan
        change = float(np.nanmedian(np.abs(mss.eta[sel] / ms.eta[sel] - 1.0)))
        interventions.append(SinkIntervention(
            weight=float(w), eta=mss.eta.tolist(), predicted=pred.tolist(), median_rel_error=rel,
            median_change=change, fit_kl=float(np.mean(mss.kl_left)),
            moves_as_predicted=bool(rel <= 0.10 and change > 0.20)))
    decisive = [iv for iv in interventions if iv.weight == DECISIVE_SINK] or interventions[-1:]
    kl_b = exp_common.mean_se(_kl_seq(p_true, bayes_probs)) if bayes_probs is not None else (math.nan, math.nan)
    nan = math.nan
    return dict(
        kl=[float(v) for v in exp_common.mean_se(kl_model)], kl_bayes=[float(v) for v in kl_b], n=ms.n.tolist(),
        eta=ms.eta.tolist(), eta_fit_kl=ms.kl_left.tolist(),
        c=fit.c if fit else nan, a=fit.a if fit else nan, c_se=fit.c_se if fit else nan,
        a_se=fit.a_se if fit else nan, B=B0, fit_r2=fit.r2 if fit else nan, eta_constant=eta_c,
        probes=probes, probe_verdict=probe_verdict(probes[-1]), ablations=ablations, localisation=localisation,
        sink_head=[chosen.layer, chosen.head], sink_head_is_normalising=chosen.normalising,
        interventions=interventions, moves_as_predicted=bool(decisive and decisive[0].moves_as_predicted))


def verdict(models: dict[str, ModelMechanism]) -> dict[str, Any]:
    """Counts and outcomes of tests (a)-(c) and the overall verdict (docs/guide/mechanism.md)."""
    N = len(models)
    hi = math.ceil(0.75 * N)  # 9 of 12
    lo = math.ceil(N / 3)  # 4 of 12
    pv = [r.probe_verdict for r in models.values()]
    a = {"supports": pv.count("supports"), "against": pv.count("against"), "undecided": pv.count("undecided")}
    a["outcome"] = "supports" if a["supports"] >= hi else "against" if a["against"] >= lo else "undecided"
    loc = [r.localisation for r in models.values()]
    b = {"localised": loc.count("localised"), "distributed": loc.count("distributed")}
    b["outcome"] = "supports" if b["localised"] >= hi else "against" if b["distributed"] >= lo else "undecided"
    mv = sum(r.moves_as_predicted for r in models.values())
    c = {"moves_as_predicted": mv, "of": N}
    c["outcome"] = "supports" if mv >= hi else "against" if mv <= N - hi else "mixed"
    if a["outcome"] == b["outcome"] == c["outcome"] == "supports":
        overall = "implements a context-length-normalised MD step"
    elif c["outcome"] == "against" or a["outcome"] == "against":
        overall = "does not implement a context-length-normalised MD step"
    else:
        overall = "partial"
    return {"a_probes": a, "b_ablation": b, "c_sink": c, "thresholds": {"supports_at_least": hi,
                                                                        "against_at_least": lo}, "overall": overall}


def run(cfg: MechanismConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> MechanismResult:
    """Train (or reuse) the models, run tests (a)-(c); write ``mechanism.json`` and ``mechanism.png``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from mtdmath import experiments
    >>> cfg = experiments.MechanismConfig.quick(depths=(1,))
    >>> res = experiments.run_mechanism(cfg, Path(tempfile.mkdtemp()), seed=0, device=torch.device("cpu"),
    ...                                 progress=False)
    >>> type(res).__name__
    'MechanismResult'
    """
    from tqdm.auto import tqdm

    ck = out / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    models: dict[str, ModelMechanism] = {}
    pis, alphas = {}, {}
    with exp_common.run_meta(seed, device) as meta:
        jobs = [(m, L, s) for m in cfg.orders for L in cfg.depths for s in range(cfg.n_seeds)]
        evals: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for m, L, s in tqdm(jobs, desc="mechanism", disable=not progress):
            pi, alpha = exp_common.make_task(seed, m, cfg.S, cfg.concentration, cfg.alpha)
            pis[str(m)], alphas[str(m)] = pi, alpha
            if m not in evals:
                # length T - 1: the training loss reaches positions up to T - 2 (the last position of a
                # training sequence has no next token), so the row of position T - 1 is never trained
                tokens, lam = mtdmath.sample_icl(pi, alpha, cfg.T - 1, cfg.n_eval, rng=exp_common.rng_for(seed, exp_common.KEY_EVAL, m))
                bayes = exp_common.estimator_all_prefixes(tokens, pi, alpha, ["bayes"])["bayes"]
                evals[m] = (tokens, lam, bayes)
            tokens, lam, bayes = evals[m]
            task = nn.ICLTask(pi, alpha, cfg.T, device=device)
            name = f"std{L}_m{m}_seed{s}"
            model, loss, secs, reused = train_model(cfg, task, L, s, ck / f"{name}{exp_common.CHECKPOINT_SUFFIX}", seed=seed,
                                            device=device, progress=progress)
            fields = analyse(model, tokens, lam, pi, alpha, cfg, rng=exp_common.rng_for(seed, exp_common.KEY_STEP, m, L, s),
                             bayes_probs=bayes)
            models[name] = ModelMechanism(name=name, m=m, n_layers=L, seed=s, final_loss=loss,
                                          train_time_s=round(secs, 3), reused=reused, **fields)
    res = MechanismResult(config=cfg, seed=seed, meta=meta, pi=pis, alpha=alphas, models=models,
                          verdict=verdict(models))
    res.figures = [_plot(res, out / "mechanism.png").name]
    res.write(out / "mechanism.json")
    (out / "mechanism.md").write_text(markdown(res))
    return res


# ----------------------------------------------------------------------------- report
def markdown(res: MechanismResult) -> str:
    """Tables of the three tests, one row per model, and the verdict."""
    lines = ["| model | KL model / Bayes [nats] | c ± s.e. | a ± s.e. | R² fit | last-layer R²: adaptive, constant, "
             "Bayes, running mean | ΔR² adaptive − constant | − Bayes | − running mean | (a) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res.models.values():
        p = r.probes[-1]
        d = p.diff
        lines.append(
            f"| {r.name} | {r.kl[0]:.4f} ± {r.kl[1]:.4f} / {r.kl_bayes[0]:.4f} | {r.c:.3f} ± {r.c_se:.3f} | "
            f"{r.a:.2f} ± {r.a_se:.2f} | {r.fit_r2:.3f} | "
            + ", ".join(f"{p.r2[t]:.3f}" for t in TARGETS)
            + f" | {d['md_adaptive-md_constant'][0]:+.4f} ± {d['md_adaptive-md_constant'][1]:.4f} | "
            f"{d['md_adaptive-bayes'][0]:+.4f} ± {d['md_adaptive-bayes'][1]:.4f} | "
            f"{d['md_adaptive-running_mean'][0]:+.4f} ± {d['md_adaptive-running_mean'][1]:.4f} | {r.probe_verdict} |")
    lines += ["", "| model | B (slope of 1/η) | per head (layer.head): B'/B, ΔKL ± s.e. | normalising heads | (b) |",
              "|---|---|---|---|---|"]
    for r in res.models.values():
        per = "; ".join(f"{a.layer}.{a.head}: {a.B_ratio:.2f}, {a.kl_change[0]:+.4f} ± {a.kl_change[1]:.4f}"
                        for a in r.ablations)
        norm = ", ".join(f"{a.layer}.{a.head}" for a in r.ablations if a.normalising) or "none"
        lines.append(f"| {r.name} | {r.B:.4f} | {per} | {norm} | {r.localisation} |")
    lines += ["", "| model | sink head | a' | median \\|η'/pred − 1\\| | median \\|η'/η − 1\\| | KL left | (c) |",
              "|---|---|---|---|---|---|---|"]
    for r in res.models.values():
        for iv in r.interventions:
            lines.append(f"| {r.name} | {r.sink_head[0]}.{r.sink_head[1]}"
                         f"{'' if r.sink_head_is_normalising else ' (not normalising)'} | {iv.weight:g} | "
                         f"{iv.median_rel_error:.3f} | {iv.median_change:.3f} | {iv.fit_kl:.4f} | "
                         f"{'moves as predicted' if iv.moves_as_predicted else 'does not'} |")
    v = res.verdict
    lines += ["", f"(a) probes: {v['a_probes']}; (b) ablation: {v['b_ablation']}; (c) sink: {v['c_sink']}.",
              f"Verdict: **{v['overall']}**.", ""]
    return "\n".join(lines)


def _plot(res: MechanismResult, path: Path) -> Path:
    plt = exp_common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15.0, 4.4))
    ax = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(res.models.values()):
        col = colors[i % len(colors)]
        n = np.asarray(r.n)
        ax.plot(n, r.eta, color=col, lw=1.2, label=r.name)
        big = [iv for iv in r.interventions if iv.weight == max(res.config.sink_weights)]
        if big:
            ax.plot(n, big[0].eta, ":", color=col, lw=1.2)
            ax.plot(n, big[0].predicted, "--", color=col, lw=0.8, alpha=0.6)
    ax.set_xlabel("n (transitions)")
    ax.set_ylabel("matched step η(n)")
    ax.set_yscale("log")
    ax.set_title(f"matched step (solid), with a sink a' = {max(res.config.sink_weights):g} (dotted),\n"
                 f"prediction c/(n+m+a+a') (dashed)", fontsize=8)
    ax.legend(fontsize=5, ncol=2)
    ax = axes[1]
    names = list(res.models)
    x = np.arange(len(names))
    for j, (other, mk) in enumerate((("md_constant", "o"), ("bayes", "s"), ("running_mean", "^"))):
        vals = [res.models[k].probes[-1].diff[f"md_adaptive-{other}"] for k in names]
        ax.errorbar(x + 0.2 * (j - 1), [v[0] for v in vals], yerr=[2 * v[1] for v in vals], fmt=mk, ms=4,
                    label=f"R²(adaptive MD) − R²({other})")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(x, names, rotation=70, fontsize=6)
    ax.set_ylabel("ΔR², last layer (±2 s.e.)")
    ax.set_title("(a) within-context probes", fontsize=8)
    ax.legend(fontsize=6)
    ax = axes[2]
    for i, k in enumerate(names):
        r = res.models[k]
        ratios = [a.B_ratio for a in r.ablations]
        ax.scatter(np.full(len(ratios), i), ratios, s=14, c=[a.layer for a in r.ablations], cmap="viridis")
    ax.axhline(0.5, color="tab:red", ls="--", lw=0.8, label="B'/B = 0.5 (normalising head)")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(x, names, rotation=70, fontsize=6)
    ax.set_ylabel("B'/B after mean-ablating one head (colour: layer)")
    ax.set_title("(b) head ablation: slope of 1/η on n", fontsize=8)
    ax.legend(fontsize=6)
    fig.suptitle(f"mechanism: {res.verdict['overall']}", fontsize=9)
    fig.tight_layout()
    return exp_common.save_figure(fig, path)


__all__ = ["MechanismConfig", "MechanismResult", "ModelMechanism", "ProbeLayer", "HeadAblation", "SinkIntervention",
           "run", "analyse", "within_context_probes", "lam_targets", "verdict"]
