"""``depth``: the trained standard transformers vs k-step MD (k = 1 … 5) vs exact Bayes.

The paper's claim: a deeper trained transformer does at least as well as more mirror-descent
steps; here the deepest standard model of the checkpoints (``std5`` by default) is compared with
every k-step MD curve (paired over the same sequences), and every other standard model is shown
alongside.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import mtdmath as M

from . import common as X
from .compare import load_models

MD_METHODS = ["md1", "md2", "md3", "md4", "md5"]


@dataclass
class DepthConfig:
    """Configuration of the ``depth`` experiment."""

    checkpoints: str = field(default="runs/train/checkpoints", metadata={
        "help": "directory of `train` checkpoints with at least one standard model (the deepest is compared)"})
    n_eval: int = field(default=1000, metadata={"help": "evaluation sequences (fresh, from the checkpoints' pi)"})
    T: int = field(default=64, metadata={"help": "evaluation sequence length: contexts L = m … T"})

    def __post_init__(self) -> None:
        if self.n_eval < 2:
            raise ValueError(f"n_eval must be >= 2 (got {self.n_eval})")
        if self.T < 2:
            raise ValueError(f"T must be >= 2 (got {self.T})")

    @classmethod
    def quick(cls, checkpoints: str = "runs/train/checkpoints", **kw: Any) -> "DepthConfig":
        return cls(**(dict(checkpoints=checkpoints, n_eval=16, T=16) | kw))


def run(cfg: DepthConfig, out: Path, *, seed: int, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Evaluate; write ``depth.json`` and ``depth.png``."""
    with X.run_meta(seed, device) as meta:
        models, _, pi, alpha = load_models(Path(cfg.checkpoints), device, required=("std",))
        std = [k for k in models if k != "md3"]  # sorted by depth
        deep = X.curve_name(std[-1])
        m = alpha.shape[0]
        # the same evaluation stream as `compare` at this seed: the same sequences
        tokens, lam = M.sample_icl(pi, alpha, cfg.T, cfg.n_eval, rng=X.rng_for(seed, X.KEY_EVAL, m))
        p_true = X.truth_all_prefixes(tokens, lam, pi)
        preds = X.estimator_all_prefixes(tokens, pi, alpha, MD_METHODS + ["bayes"], progress=progress, desc="depth")
        for name in std:
            preds[X.curve_name(name)] = X.model_all_prefixes(models[name], tokens, device=device)
        kls = {k: X.kl_per_sequence(p_true, v) for k, v in preds.items()}
        mean, se = X.curves(kls)
    T = cfg.T
    res = {
        "experiment": "depth", "config": cfg, "seed": seed, "meta": meta, "m": m, "pi": pi, "alpha": alpha,
        "L": list(range(m, T + 1)), "kl_mean": mean, "kl_se": se, "table": X.table_at(kls, m, T),
        "standard_models": [X.curve_name(k) for k in std], "deepest": deep,
        "deepest_minus_md": {k: X.paired_diff(kls, deep, k, m, T) for k in MD_METHODS},
        "deepest_minus_bayes": X.paired_diff(kls, deep, "bayes", m, T),
    }
    res["figures"] = [_plot(res, out / "depth.png").name]
    X.write_json(out / "depth.json", res)
    return res


def _plot(res: dict[str, Any], path: Path) -> Path:
    plt = X.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = ["md5", "md4", "md3", "md2", "md1"] + res["standard_models"] + ["bayes"]
    X.plot_curves(ax, res["L"], res["kl_mean"], res["kl_se"], methods)
    d = res["deepest_minus_md"]["md2"]
    last = max(d, key=int) if d else None
    sub = f"; {res['deepest']} − 2-step MD at L={last}: {d[last][0]:+.4f} ± {d[last][1]:.4f}" if last else ""
    ax.set_title(f"m = {res['m']}, {res['config'].n_eval} sequences{sub}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return X.save_figure(fig, path)
