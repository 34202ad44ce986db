"""``compare``: trained models vs the construction vs one-step MD, from the ``train`` checkpoints.

On fresh evaluation sequences of the checkpoints' task (same pi and alpha):

- KL(p* ‖ p̂) vs L (MATH.md §6) for the trained models, the constructed transformer
  (``MDTransformer.construct``), one-step MD and exact Bayes (NumPy core); the trained
  disentangled model's gap to the construction, paired over sequences;
- the attention maps of the trained and the constructed disentangled models on one sequence,
  side by side (layer 2 is the fixed causal all-ones aggregation in both);
- the learned ``W1`` after a softmax over the key axis (``softmax(W1, dim=0)``, one distribution
  over source tokens a per query token b) against column-normalised pi (MATH.md §5), with the
  per-query KL ``KL(pi[:, b]/Σ_a pi[a, b] ‖ softmax(W1)[:, b])`` averaged over b.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtdmath as M

from . import common as X
from .train import MODEL_KINDS, load_checkpoint

#: names of the trained models in the curves
CURVE_NAME = {"md3": "trained_md3", "std3": "std3", "std5": "std5"}


@dataclass
class CompareConfig:
    """Configuration of the ``compare`` experiment."""

    checkpoints: str = field(default="runs/train/checkpoints", metadata={
        "help": "directory holding md3.pt / std3.pt / std5.pt from `train` (those present are used; md3.pt is required)"})
    n_eval: int = field(default=1000, metadata={"help": "evaluation sequences (fresh, from the checkpoints' pi)"})
    T: int = field(default=64, metadata={"help": "evaluation sequence length: contexts L = m … T"})
    attention_T: int = field(default=64, metadata={"help": "length of the sequence whose attention maps are shown"})

    def __post_init__(self) -> None:
        if self.n_eval < 2:
            raise ValueError(f"n_eval must be >= 2 (got {self.n_eval})")

    @classmethod
    def quick(cls, checkpoints: str = "runs/train/checkpoints") -> "CompareConfig":
        return cls(checkpoints=checkpoints, n_eval=16, T=16, attention_T=16)


def load_models(ck_dir: Path, device: torch.device, required: tuple[str, ...] = ("md3",)):
    """Load the checkpoints present in ``ck_dir``; check they share one task (pi, alpha)."""
    models, cks = {}, {}
    for kind in MODEL_KINDS:
        p = ck_dir / f"{kind}.pt"
        if p.exists():
            models[kind], cks[kind] = load_checkpoint(p, device)
    missing = [k for k in required if k not in models]
    if missing:
        raise ValueError(f"checkpoints: {ck_dir} lacks {', '.join(k + '.pt' for k in missing)} (run `train` first)")
    ref = next(iter(cks.values()))
    for k, ck in cks.items():
        if not (torch.equal(ck["pi"], ref["pi"]) and torch.equal(ck["alpha"], ref["alpha"])):
            raise ValueError(f"checkpoints: {k}.pt was trained on a different task (pi/alpha) than the others")
    return models, cks, ref["pi"].numpy(), ref["alpha"].numpy()


def w1_vs_pi(W1: np.ndarray, pi: np.ndarray) -> dict[str, Any]:
    """Learned W1 (softmax over the key axis 0) vs column-normalised pi; per-query KLs and their mean.

    Both matrices are returned transposed, ``[query b, key a]``, so each *row* is one distribution
    (the displayed rows; "row KL" in the figure title).
    """
    W = torch.as_tensor(W1, dtype=torch.float64)
    learned = torch.softmax(W, dim=0).numpy().T  # [b, a]
    target = (pi / pi.sum(axis=0, keepdims=True)).T  # [b, a]
    row_kl = M.kl(target, learned)
    return {"learned_softmax_W1_T": learned, "colnorm_pi_T": target, "row_kl": row_kl, "mean_row_kl": float(row_kl.mean())}


def run(cfg: CompareConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Evaluate; write ``compare.json``, ``compare_kl.png``, ``compare_attention.png``, ``compare_w1.png``."""
    from tqdm.auto import tqdm

    with X.run_meta(seed, device) as meta:
        models, cks, pi, alpha = load_models(Path(cfg.checkpoints), device)
        m = alpha.shape[0]
        tokens, lam = M.sample_icl(pi, alpha, cfg.T, cfg.n_eval, rng=X.rng_for(seed, X.KEY_EVAL, m))
        p_true = X.truth_all_prefixes(tokens, lam, pi)
        preds = X.estimator_all_prefixes(tokens, pi, alpha, ["md1", "bayes"], progress=progress, desc="compare")
        construction = M.MDTransformer.construct(pi, alpha, dtype=torch.float64, device=device)
        preds["construction"] = X.model_all_prefixes(construction, tokens, device=device)
        for kind, model in tqdm(models.items(), desc="compare: trained models", disable=not progress):
            preds[CURVE_NAME[kind]] = X.model_all_prefixes(model, tokens, device=device)
        kls = {k: X.kl_per_sequence(p_true, v) for k, v in preds.items()}
        mean, se = X.curves(kls)

        # attention maps on one fresh sequence of length attention_T (its own stream, not the evaluation set)
        y_att, _ = M.sample_icl(pi, alpha, cfg.attention_T, 1, rng=X.rng_for(seed, X.KEY_EVAL, m, 1))
        with torch.no_grad():
            y_t = torch.as_tensor(y_att, device=device)
            _, att_tr = models["md3"](y_t, return_attention=True)
            _, att_co = construction(y_t, return_attention=True)
        attention = {"tokens": y_att[0], "trained_md3": [a[0].cpu().numpy().round(6) for a in att_tr],
                     "construction": [a[0].cpu().numpy().round(6) for a in att_co]}
        w1 = w1_vs_pi(models["md3"].W1.detach().cpu().numpy(), pi)

    T = cfg.T
    res = {
        "experiment": "compare", "config": cfg, "seed": seed, "meta": meta, "m": m, "pi": pi, "alpha": alpha,
        "L": list(range(m, T + 1)), "kl_mean": mean, "kl_se": se, "table": X.table_at(kls, m, T),
        "gap_trained_md3_minus_construction": X.paired_diff(kls, "trained_md3", "construction", m, T),
        "gap_trained_md3_minus_bayes": X.paired_diff(kls, "trained_md3", "bayes", m, T),
        "construction_vs_md1_max_abs_prob_diff": float(np.abs(preds["construction"] - preds["md1"]).max()),
        "w1": w1, "attention": attention,
        "train_time_s": {k: ck["train_time_s"] for k, ck in cks.items()},
    }
    figs = [_plot_kl(res, out / "compare_kl.png"), _plot_attention(attention, out / "compare_attention.png"),
            _plot_w1(w1, out / "compare_w1.png")]
    res["figures"] = [f.name for f in figs]
    X.write_json(out / "compare.json", res)
    return res


def _plot_kl(res: dict[str, Any], path: Path) -> Path:
    plt = X.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = [k for k in ("std3", "std5", "trained_md3", "md1", "construction", "bayes") if k in res["kl_mean"]]
    X.plot_curves(ax, res["L"], res["kl_mean"], res["kl_se"], methods)
    g = res["gap_trained_md3_minus_construction"]
    last = max(g, key=int) if g else None
    sub = f"; trained − construction at L={last}: {g[last][0]:+.4f} ± {g[last][1]:.4f}" if last else ""
    ax.set_title(f"m = {res['m']}, {res['config'].n_eval} sequences{sub}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return X.save_figure(fig, path)


def _plot_attention(att: dict[str, Any], path: Path) -> Path:
    plt = X.pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 7))
    titles = ["layer 1: responsibilities", "layer 2: aggregation (fixed)", "layer 3: mirror step"]
    for row, key in enumerate(("construction", "trained_md3")):
        for j in range(3):
            A = np.asarray(att[key][j])
            ax = axes[row][j]
            vmax = max(1.0, float(A.max())) if j == 1 else 1.0
            im = ax.imshow(A, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{'constructed' if row == 0 else 'trained'} — {titles[j]}", fontsize=8)
            ax.set_xlabel("key position s", fontsize=7)
            ax.set_ylabel("query position t", fontsize=7)
            ax.tick_params(labelsize=6)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
    fig.suptitle(f"Attention of the disentangled transformer, one sequence of length {len(att['tokens'])}")
    fig.tight_layout()
    return X.save_figure(fig, path)


def _plot_w1(w1: dict[str, Any], path: Path) -> Path:
    plt = X.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8))
    for ax, key, title in ((axes[0], "colnorm_pi_T", "column-normalised pi"),
                           (axes[1], "learned_softmax_W1_T", "learned softmax(W1, key axis)")):
        A = np.asarray(w1[key])
        im = ax.imshow(A, cmap="magma", vmin=0.0, vmax=float(max(np.max(w1["colnorm_pi_T"]), np.max(w1["learned_softmax_W1_T"]))))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("key (source) token a")
        ax.set_ylabel("query (target) token b")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    fig.suptitle(f"W1 of the trained disentangled model: mean row KL(pi ‖ learned) = {w1['mean_row_kl']:.4f} nats",
                 fontsize=10)
    fig.tight_layout()
    return X.save_figure(fig, path)
