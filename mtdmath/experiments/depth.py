"""``depth``: the trained 5-layer standard transformer vs k-step MD (k = 1 … 5) vs exact Bayes.

The paper's claim: a deeper trained transformer does at least as well as more mirror-descent
steps; here the 5-layer model is compared with 2-step MD (paired over the same sequences), and
the 3-layer standard model is shown alongside when its checkpoint exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import mtdmath as M

from . import common as X
from .compare import CURVE_NAME, load_models

MD_METHODS = ["md1", "md2", "md3", "md4", "md5"]


@dataclass
class DepthConfig:
    """Configuration of the ``depth`` experiment."""

    checkpoints: str = field(default="runs/train/checkpoints", metadata={
        "help": "directory holding std5.pt (and optionally std3.pt) from `train`"})
    n_eval: int = field(default=1000, metadata={"help": "evaluation sequences (fresh, from the checkpoints' pi)"})
    T: int = field(default=64, metadata={"help": "evaluation sequence length: contexts L = m … T"})

    def __post_init__(self) -> None:
        if self.n_eval < 2:
            raise ValueError(f"n_eval must be >= 2 (got {self.n_eval})")

    @classmethod
    def quick(cls, checkpoints: str = "runs/train/checkpoints") -> "DepthConfig":
        return cls(checkpoints=checkpoints, n_eval=16, T=16)


def run(cfg: DepthConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Evaluate; write ``depth.json`` and ``depth.png``."""
    with X.run_meta(seed, device) as meta:
        models, cks, pi, alpha = load_models(Path(cfg.checkpoints), device, required=("std5",))
        m = alpha.shape[0]
        # the same evaluation stream as `compare` at this seed: the same sequences
        tokens, lam = M.sample_icl(pi, alpha, cfg.T, cfg.n_eval, rng=X.rng_for(seed, X.KEY_EVAL, m))
        p_true = X.truth_all_prefixes(tokens, lam, pi)
        preds = X.estimator_all_prefixes(tokens, pi, alpha, MD_METHODS + ["bayes"], progress=progress, desc="depth")
        for kind in ("std3", "std5"):
            if kind in models:
                preds[CURVE_NAME[kind]] = X.model_all_prefixes(models[kind], tokens, device=device)
        kls = {k: X.kl_per_sequence(p_true, v) for k, v in preds.items()}
        mean, se = X.curves(kls)
    T = cfg.T
    res = {
        "experiment": "depth", "config": cfg, "seed": seed, "meta": meta, "m": m, "pi": pi, "alpha": alpha,
        "L": list(range(m, T + 1)), "kl_mean": mean, "kl_se": se, "table": X.table_at(kls, m, T),
        "std5_minus_md": {k: X.paired_diff(kls, "std5", k, m, T) for k in MD_METHODS},
        "std5_minus_bayes": X.paired_diff(kls, "std5", "bayes", m, T),
    }
    res["figures"] = [_plot(res, out / "depth.png").name]
    X.write_json(out / "depth.json", res)
    return res


def _plot(res: dict[str, Any], path: Path) -> Path:
    plt = X.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = [k for k in ("md5", "md4", "md3", "md2", "md1", "std3", "std5", "bayes") if k in res["kl_mean"]]
    X.plot_curves(ax, res["L"], res["kl_mean"], res["kl_se"], methods)
    d = res["std5_minus_md"]["md2"]
    last = max(d, key=int) if d else None
    sub = f"; 5-layer − 2-step MD at L={last}: {d[last][0]:+.4f} ± {d[last][1]:.4f}" if last else ""
    ax.set_title(f"m = {res['m']}, {res['config'].n_eval} sequences{sub}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return X.save_figure(fig, path)
