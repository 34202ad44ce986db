"""Shared pieces of the experiments: seeds, the task, per-prefix predictors, KL curves, I/O, run metadata.

Conventions (docs/math.md §6):

- a sequence y of length T gives contexts of length L = m … T; the predictors' row r = L - m is
  the law of ``y[L]`` given ``y[:L]`` (the rows of ``MDTransformer.forward``);
- the ground truth of row r is ``p* = Σ_g lam*_g pi[y[L-g], :]`` with the sequence's own lam*;
- the curve of a method is ``KL(p* ‖ p̂)`` averaged over sequences, with the standard error over
  sequences ``std(ddof=1) / sqrt(N)``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
import types
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import mtdmath

class ConfigError(ValueError):
    """A configuration error found when a run starts (a missing checkpoint, a backend that is not
    installed): the CLI prints it as one ``error:`` line and exits with status 2."""


#: the suffix of the checkpoints the experiments write (:func:`mtdmath.nn.save_checkpoint` writes
#: safetensors); directories are also searched for ``.pt``, the name earlier runs gave the same files
CHECKPOINT_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIXES = (CHECKPOINT_SUFFIX, ".pt")


def read_checkpoint(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """:func:`mtdmath.nn.load_checkpoint` in float64 on ``device``; a file that does not load (corrupt,
    truncated, foreign) is a :class:`ConfigError` naming it, whatever the loader raised."""
    from mtdmath.nn import load_checkpoint

    try:
        return load_checkpoint(path, device=device, dtype=torch.float64)
    except Exception as e:  # noqa: BLE001 - the CLI turns any failure to load into one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"checkpoints: cannot load {path} ({type(e).__name__}: {first})") from None


# --------------------------------------------------------------------------- seeds
#: stream keys: every random stream is ``default_rng([seed, KEY, ...])``, so the experiments
#: share pi (same seed, order and vocabulary) while their data streams never overlap
KEY_PI, KEY_EVAL, KEY_TRAIN, KEY_INIT, KEY_ESTIM, KEY_STEP = 1, 2, 3, 4, 5, 6

#: context lengths of the results table
TABLE_L = (16, 32, 64)


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A NumPy generator for the stream ``(seed, *keys)`` (independent streams per key tuple)."""
    return np.random.default_rng([int(seed), *map(int, keys)])


def torch_seed_for(seed: int, *keys: int) -> int:
    """A 63-bit torch seed for the stream ``(seed, *keys)``."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def make_task(seed: int, m: int, S: int, concentration: float, alpha_value: float) -> tuple[np.ndarray, np.ndarray]:
    """The in-context task of docs/math.md §1: pi with rows ~ Dirichlet(concentration·1_S), alpha = alpha_value·1_m.

    pi depends on (seed, m) only (and S, concentration), so ``estimators`` and ``train`` at the
    same seed and order see the same pi.
    """
    pi = mtdmath.random_transition_matrix(S, concentration=concentration, rng=rng_for(seed, KEY_PI, m))
    return pi, np.full(m, float(alpha_value))


# --------------------------------------------------------------------------- device, threads
def resolve_device(device: str) -> torch.device:
    """``cpu`` or ``cuda``; a clear error if CUDA is asked for and absent."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' (got {device!r})")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    return torch.device(device)


# --------------------------------------------------------------------------- per-prefix predictors
def truth_all_prefixes(tokens: np.ndarray, lam: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """``p*`` for every context length L = m … T: ``Σ_g lam*_g pi[y[L-g], :]``, shape (B, T-m+1, S).

    Formed with :func:`mtdmath.predictive` one prefix at a time (the NumPy core's own route).
    """
    m, T = lam.shape[-1], tokens.shape[-1]
    return np.stack([mtdmath.predictive(lam, tokens[:, :L], pi) for L in range(m, T + 1)], axis=1)


def estimator_all_prefixes(tokens: np.ndarray, pi: np.ndarray, alpha: np.ndarray, methods: list[str], *,
                           em_steps: int = 1, mle_tol: float = 1e-10, progress: bool = False,
                           desc: str = "estimators") -> dict[str, np.ndarray]:
    """Predictive law after every prefix for NumPy-core estimators of lam (docs/math.md §3-4).

    Parameters
    ----------
    tokens : int ndarray (B, T)
    pi : (S, S); alpha : (m,)
    methods : list of str
        ``"md1"`` … ``"md9"`` (k-step MD from μ with η* = 1/(1+α₀)), ``"em"`` (``em_steps`` EM
        steps from μ), ``"mle"`` (:func:`mtdmath.mle`), ``"bayes"`` (exact posterior mean,
        all prefixes in one forward pass).
    em_steps : int
    mle_tol : float
        KKT-gap tolerance of the MLE: ``ℓ(MLE) - ℓ(lam) <= n·tol``, far below the KL scale.

    Returns
    -------
    dict method -> ndarray (B, T-m+1, S); row r is the law of ``y[m+r]`` given ``y[:m+r]``,
    computed with :func:`mtdmath.predictive` from that prefix's lam.
    """
    from tqdm.auto import tqdm

    from .prefix_bayes import posterior_mean_all_prefixes

    m, (B, T) = alpha.shape[0], tokens.shape
    C = mtdmath.lag_factors(tokens, pi, m)  # (B, T-m, m); a prefix of r transitions uses C[:, :r]
    n_rows = T - m + 1
    lams: dict[str, np.ndarray] = {k: np.empty((B, n_rows, m)) for k in methods}
    md_ks = sorted(int(k[2:]) for k in methods if k.startswith("md"))
    mu = alpha / alpha.sum()
    eta = mtdmath.eta_bayes(alpha)
    if "bayes" in methods:
        with tqdm(total=B, desc=f"{desc}: exact Bayes", disable=not progress, leave=False) as bar:
            lams["bayes"] = posterior_mean_all_prefixes(C, alpha, progress=bar.update)
    for r in tqdm(range(n_rows), desc=f"{desc}: MD/EM/MLE per prefix", disable=not progress, leave=False):
        Cr = C[:, :r]
        if md_ks:
            lam = mtdmath.k_step_md(Cr, alpha, 0)  # μ
            for k in range(1, max(md_ks) + 1):
                # k-step MD = one more MD step (η*) from the (k-1)-step iterate (docs/math.md §3)
                lam = mtdmath.mirror_descent(Cr, eta=eta, steps=1, lam0=lam)
                if k in md_ks:
                    lams[f"md{k}"][:, r] = lam
        if "em" in methods:
            lams["em"][:, r] = mtdmath.em(Cr, steps=em_steps, lam0=mu)
        if "mle" in methods:
            lams["mle"][:, r] = mtdmath.mle(Cr, tol=mle_tol)
    out = {}
    for k in methods:
        # predictive of row r from the prefix y[:m+r] (docs/math.md §1)
        out[k] = np.stack([mtdmath.predictive(lams[k][:, r], tokens[:, : m + r], pi) for r in range(n_rows)], axis=1)
    return out


@torch.no_grad()
def model_all_prefixes(model: torch.nn.Module, tokens: np.ndarray, *, device: torch.device,
                       batch: int = 256) -> np.ndarray:
    """A transformer's predictive after every prefix, evaluated in float64, (B, T-m+1, S) ndarray
    (``exp`` of :meth:`log_probs`, which every model of :mod:`mtdmath.nn` has)."""
    model = model.to(device=device, dtype=torch.float64).eval()
    outs = []
    for a in range(0, tokens.shape[0], batch):
        y = torch.as_tensor(tokens[a : a + batch], device=device)
        outs.append(model.log_probs(y).exp().cpu().numpy())
    return np.concatenate(outs, axis=0)


# --------------------------------------------------------------------------- KL curves
def kl_per_sequence(p_true: np.ndarray, p_hat: np.ndarray) -> np.ndarray:
    """``KL(p* ‖ p̂)`` in float64 with :func:`mtdmath.kl`, shape (B, T-m+1)."""
    return mtdmath.kl(np.asarray(p_true, np.float64), np.asarray(p_hat, np.float64))


def mean_se(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over sequences, ``std(ddof=1)/sqrt(N)`` (0 for N = 1)."""
    x = np.asarray(x, np.float64)
    N = x.shape[axis]
    se = x.std(axis=axis, ddof=1) / np.sqrt(N) if N > 1 else np.zeros_like(x.mean(axis=axis))
    return x.mean(axis=axis), se


def curves(kls: dict[str, np.ndarray]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per-method mean and standard-error curves (lists, JSON-ready) from per-sequence KLs (B, R)."""
    mean, se = {}, {}
    for k, v in kls.items():
        mu_, s_ = mean_se(v, axis=0)
        mean[k], se[k] = mu_.tolist(), s_.tolist()
    return mean, se


def table_at(kls: dict[str, np.ndarray], m: int, T: int, Ls: tuple[int, ...] = TABLE_L) -> dict[str, dict[str, list[float]]]:
    """``{L: {method: [mean, se]}}`` at the context lengths Ls that exist (m <= L <= T)."""
    out: dict[str, dict[str, list[float]]] = {}
    for L in Ls:
        if m <= L <= T:
            out[str(L)] = {k: [float(a) for a in mean_se(v[:, L - m])] for k, v in kls.items()}
    return out


def paired_diff(kls: dict[str, np.ndarray], a: str, b: str, m: int, T: int,
                Ls: tuple[int, ...] = TABLE_L) -> dict[str, list[float]]:
    """``KL_a - KL_b`` at each L, paired over the same sequences: ``{L: [mean, se]}``."""
    return {str(L): [float(x) for x in mean_se(kls[a][:, L - m] - kls[b][:, L - m])]
            for L in Ls if m <= L <= T}


# --------------------------------------------------------------------------- I/O and metadata
def package_versions() -> dict[str, str]:
    import matplotlib
    import scipy
    import tqdm

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "torch": torch.__version__, "matplotlib": matplotlib.__version__, "tqdm": tqdm.__version__,
            "mtdmath": mtdmath.__version__}


def _git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": None, "dirty": None}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@contextmanager
def run_meta(seed: int, device: torch.device) -> Iterator[dict[str, Any]]:
    """Collects the metadata of one run; ``run_time_s`` (wall clock) is filled in on exit."""
    meta: dict[str, Any] = {
        "seed": int(seed), "device": str(device), "versions": package_versions(), "git": _git_state(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "command": " ".join(["python -m mtdmath.experiments", *sys.argv[1:]]), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": _loadavg(),
    }
    t0 = time.perf_counter()
    yield meta
    meta["run_time_s"] = round(time.perf_counter() - t0, 3)
    meta["loadavg_end"] = _loadavg()


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _dumps(x: Any, level: int = 0) -> str:
    """JSON text: dicts one key per line; a list of scalars on one line, a matrix one row per line."""
    ind, ind1 = " " * level, " " * (level + 1)
    if isinstance(x, dict):
        if not x:
            return "{}"
        items = [f"{ind1}{json.dumps(k)}: {_dumps(v, level + 1)}" for k, v in x.items()]
        return "{\n" + ",\n".join(items) + "\n" + ind + "}"
    if isinstance(x, list) and x and all(isinstance(v, list) for v in x) and \
            all(not isinstance(w, (dict, list)) for v in x for w in v):
        return "[\n" + ",\n".join(ind1 + json.dumps(v, separators=(", ", ": ")) for v in x) + "\n" + ind + "]"
    if isinstance(x, list) and any(isinstance(v, (dict, list)) for v in x):
        return "[\n" + ",\n".join(ind1 + _dumps(v, level + 1) for v in x) + "\n" + ind + "]"
    return json.dumps(x, separators=(", ", ": "))


def write_json(path: Path, obj: dict[str, Any]) -> Path:
    """Write ``obj`` as JSON (NumPy arrays and dataclasses converted; floats at full precision,
    ``NaN``/``Infinity`` as Python's json writes them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _jsonable(obj)
    text = _dumps(data)
    # the layout is lossless (compared as canonical text, so NaN compares equal to itself)
    assert json.dumps(json.loads(text), sort_keys=True) == json.dumps(data, sort_keys=True)
    path.write_text(text + "\n")
    return path


def write_json_atomic(path: Path, obj: Any) -> Path:
    """:func:`write_json` to a temporary file, then renamed: an interrupted run leaves no half-written file."""
    tmp = path.with_suffix(".tmp")
    write_json(tmp, obj)
    os.replace(tmp, path)
    return path


@dataclasses.dataclass
class Result:
    """Base of the experiments' typed results: :func:`write_json` writes one, :meth:`read` reads it back."""

    def write(self, path: Path) -> Path:
        """Write this result as JSON (the one writer, :func:`write_json`)."""
        return write_json(path, self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """The result from its JSON dict (configs and nested results rebuilt from their types)."""
        return _from_dict(cls, d)

    @classmethod
    def read(cls, path: Path) -> Any:
        """The result written to ``path`` by :meth:`write`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _from_dict(tp: Any, v: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(v, dict):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _from_dict(hints[f.name], v[f.name]) for f in dataclasses.fields(tp)
                     if f.init and f.name in v})
    if tp is np.ndarray:
        return np.asarray(v)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: None, or an X
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if v is None else _from_dict(args[0], v) if len(args) == 1 else v
    if origin is dict:
        vt = typing.get_args(tp)[1]
        return {k: _from_dict(vt, x) for k, x in v.items()}
    if origin is list and typing.get_args(tp):
        return [_from_dict(typing.get_args(tp)[0], x) for x in v]
    return v


def save_figure(fig: Any, path: Path, dpi: int = 90) -> Path:
    """Save a matplotlib figure as a small PNG (Agg) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: plotting style per curve (label, colour, line style): ``md1`` … ``md9`` are k-step MD, trained models
#: are keyed by their checkpoint names (``md``, ``mdsink``, ``std5``, see :func:`mtdmath.nn.spec_name`)
STYLE = {
    "bayes": ("exact Bayes", "black", "-"),
    "md1": ("1-step MD (η*)", "tab:blue", "-"),
    "md1_eta_train": ("1-step MD (η_train: tuned on the training objective)", "tab:green", "--"),
    "construction": ("constructed transformer", "tab:cyan", ":"),
    "md2": ("2-step MD", "tab:purple", "-"),
    "md3": ("3-step MD", "tab:pink", "-"),
    "md4": ("4-step MD", "tab:brown", "-"),
    "md5": ("5-step MD", "tab:olive", "-"),
    **{f"md{k}_tuned": (f"{k}-step MD (tuned constant step)", c, "-")
       for k, c in zip(range(1, 6), ("#08519c", "#3182bd", "#6baed6", "#31a354", "#a1d99b"))},
    **{f"md{k}_sched": (f"{k}-step MD (tuned schedule)", c, "--")
       for k, c in zip(range(2, 6), ("#3182bd", "#6baed6", "#31a354", "#a1d99b"))},
    "em": ("EM", "tab:orange", "--"),
    "mle": ("MLE", "tab:red", "--"),
    "md": ("trained disentangled (3 layers)", "tab:green", "-"),
    "std3": ("trained standard (3 layers)", "tab:gray", "-"),
    "std5": ("trained standard (5 layers)", "darkgoldenrod", "-"),
}


def style(key: str, labels: dict[str, str] | None = None) -> tuple[str, Any, str]:
    """(label, colour, line style) of a curve; standard models of any depth get a generated label.

    ``labels`` overrides the label (e.g. ``{"em": "EM (3 steps)"}``: labels say what was run).
    """
    if key in STYLE:
        label, color, ls = STYLE[key]
    else:
        import re

        mt = re.fullmatch(r"std(\d+)(?:_d(\d+)_h(\d+))?", key)
        if mt:
            extra = f", d={mt.group(2)}, h={mt.group(3)}" if mt.group(2) else ""
            label, color, ls = f"trained standard ({mt.group(1)} layers{extra})", None, "-"
        else:
            label, color, ls = key, None, "-"
    return (labels or {}).get(key, label), color, ls


def em_label(steps: int) -> str:
    """``EM (1 step)``, ``EM (5 steps)``: the label says how many EM steps were run."""
    return f"EM ({steps} step{'s' if steps != 1 else ''})"


def plot_curves(ax: Any, L: list[int], mean: dict[str, list[float]], se: dict[str, list[float]],
                methods: list[str], labels: dict[str, str] | None = None) -> None:
    """KL-vs-L lines with ±1 standard-error bands, log y axis."""
    for k in methods:
        label, color, ls = style(k, labels)
        mu_, s_ = np.asarray(mean[k]), np.asarray(se[k])
        lw = 2.5 if k == "construction" else 1.4
        ax.plot(L, mu_, ls, color=color, label=label, lw=lw)
        ax.fill_between(L, np.maximum(mu_ - s_, 1e-12), mu_ + s_, color=color, alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("context length L")
    ax.set_ylabel("KL(p* ‖ p̂) [nats]")
    ax.grid(alpha=0.3, which="both")
