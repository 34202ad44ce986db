"""Checkpoints: tensors in safetensors (no pickle), JSON metadata, a SHA-256 over the whole file.

A checkpoint is one safetensors file. Its tensors are the model's state dict (``model/<name>``),
the task's pi and alpha (``task/pi``, ``task/alpha``) and, for a training checkpoint, the
optimiser's state tensors (``optim/<param index>/<key>``) and the random-number states
(``rng/data``: the batch generator, ``rng/torch``: torch's global CPU generator, ``rng/cuda<i>``).
Its safetensors metadata holds two strings: ``mtdmath``, a JSON document (format version, model
class and config, dtype, task length, history, ``extra``, step count, optimiser and scheduler
settings), and ``sha256``, the SHA-256 of the whole file with those 64 characters set to ``0``.
So any change of any byte is detected: in the tensors, in the metadata, in the safetensors
header, or in the hash itself.

:func:`load_checkpoint` refuses, with a ``ValueError`` naming ``path`` and what is wrong, a file
that is missing, truncated, not a checkpoint, of a newer format, corrupt (hash mismatch),
inconsistent with its model class, or holding non-finite weights (unless
``allow_nonfinite=True``). Checkpoints of mtdmath 0.1.0 (``torch.save`` pickles) are refused with
a pointer to :func:`convert_checkpoint`, which converts them once.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _validate as validate
from .task import ICLTask
from .transformer import MDTransformer, StandardTransformer

__all__ = ["save_checkpoint", "load_checkpoint", "convert_checkpoint", "FORMAT"]

#: Version of the checkpoint format this mtdmath writes and reads (0.1.0 wrote torch pickles,
#: versions 1 and 2; :func:`convert_checkpoint` converts them).
FORMAT = 3
_CLASSES = {"MDTransformer": MDTransformer, "StandardTransformer": StandardTransformer}
_HASH_KEY = b'"sha256":"'
_ZERO_HASH = "0" * 64
#: the largest header safetensors itself accepts
_MAX_HEADER = 100_000_000


def _module(model: Any) -> nn.Module:
    """The module itself, also behind ``torch.compile`` (whose wrapper keeps it as ``_orig_mod``)."""
    return getattr(model, "_orig_mod", model)


def _json(value: Any, name: str) -> str:
    try:
        return json.dumps(value, allow_nan=True, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be JSON-serialisable (numbers, strings, lists, dicts): {err}") from None


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what}: {k} holds non-finite values (pass allow_nonfinite=True to accept them)")


def save_checkpoint(path: str | Path, model: nn.Module, *, task: ICLTask | None = None, history: Any = None,
                    extra: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
                    allow_nonfinite: bool = False) -> Path:
    """Save ``model`` (weights, config, dtype), its ``task``, ``history`` and ``extra`` to ``path``.

    Parameters
    ----------
    path : str or Path
        The file to write (its folder is created).
    model : nn.Module
        An :class:`MDTransformer`, a :class:`StandardTransformer` (rebuilt from their config by
        :func:`load_checkpoint`) or a module of your own: its state dict is saved with its class
        name, and ``load_checkpoint(path, model=fresh_instance)`` loads it back into an instance
        you build with the same shapes. A ``torch.compile`` wrapper is saved as its module.
    task : ICLTask, optional
    history : TrainHistory or dict, optional
    extra : dict, optional
        JSON-serialisable (numbers, strings, lists, dicts); anything else is refused here.
    training : dict, optional
        What :func:`mtdmath.nn.train` saves to resume: ``step``, ``optimizer`` and ``scheduler``
        state dicts, ``rng`` (name -> uint8 state tensor) and ``state`` (JSON-serialisable).
    allow_nonfinite : bool
        Save weights that hold NaN or inf (refused by default).

    Returns
    -------
    Path

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> task = nn.ICLTask(pi, alpha, T=12)
    >>> path = nn.save_checkpoint('md.ckpt', nn.MDTransformer.construct(pi, alpha), task=task, extra={'seed': 0})
    >>> model, info = nn.load_checkpoint(path)
    >>> type(model).__name__, info['extra']['seed']
    ('MDTransformer', 0)
    """
    import safetensors.torch

    if not isinstance(path, (str, Path)):
        raise ValueError(f"path must be a file path (got {type(path).__name__})")
    module = _module(model)
    if not isinstance(module, nn.Module):
        raise ValueError(f"model must be an nn.Module (got {type(model).__name__})")
    if task is not None and not isinstance(task, ICLTask):
        raise ValueError(f"task must be an ICLTask or None (got {type(task).__name__})")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"extra must be a dict (got {type(extra).__name__})")
    if hasattr(history, "as_dict"):
        history = history.as_dict()
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()}
    if not state:
        raise ValueError(f"model has no parameters or buffers to save ({type(module).__name__})")
    if not allow_nonfinite:
        _check_finite(state, "model")
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    config = getattr(module, "config", None)
    meta: dict[str, Any] = {
        "format": FORMAT, "class": type(module).__name__, "module": type(module).__module__,
        "config": asdict(config) if is_dataclass(config) else None,
        "dtype": str(floats[0]).removeprefix("torch.") if floats else None,
        "task_T": task.T if task is not None else None, "history": history, "extra": extra or {},
    }
    _json(meta["extra"], "extra")
    _json(meta["history"], "history")
    tensors = {f"model/{k}": v for k, v in state.items()}
    if task is not None:
        d = task.to_dict()
        tensors |= {"task/pi": d["pi"].to(torch.float64).contiguous(),
                    "task/alpha": d["alpha"].to(torch.float64).contiguous()}
    if training is not None:
        opt = training["optimizer"]
        groups, opt_scalars = opt["param_groups"], {}
        for i, st in opt["state"].items():
            for key, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optim/{i}/{key}"] = v.detach().to("cpu").clone().contiguous()
                else:
                    opt_scalars[f"{i}/{key}"] = v
        tensors |= {f"rng/{k}": v.to("cpu").contiguous() for k, v in training["rng"].items()}
        if not allow_nonfinite:
            _check_finite({k: v for k, v in tensors.items() if k.startswith("optim/")}, "optimizer")
        meta["training"] = {"step": int(training["step"]), "param_groups": groups, "optim_scalars": opt_scalars,
                            "scheduler": training["scheduler"], "state": training.get("state", {})}
        _json(meta["training"], "training")
    header = {"mtdmath": _json(meta, "the checkpoint metadata"), "sha256": _ZERO_HASH}
    data = bytearray(safetensors.torch.save(tensors, metadata=header))
    at = _hash_position(bytes(data))
    data[at:at + 64] = hashlib.sha256(data).hexdigest().encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bytes(data))
    tmp.replace(path)  # never leave a half-written checkpoint under the final name
    return path


def _hash_position(data: bytes) -> int:
    """Offset of the 64 hash characters in the header (exactly one ``"sha256":"`` key there)."""
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n]
    at = header.find(_HASH_KEY)
    if at < 0 or header.find(_HASH_KEY, at + 1) >= 0:
        raise ValueError("no single sha256 field in the header")
    return 8 + at + len(_HASH_KEY)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Validated metadata and tensors of a checkpoint file; ValueError naming ``path`` otherwise."""
    import safetensors.torch

    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    # torch.save writes a zip (PK\x03\x04) or, with the legacy serialisation, a pickle (\x80, protocol);
    # as a safetensors header length either would exceed the file
    if (data[:4] == b"PK\x03\x04" or data[:1] == b"\x80") and n > len(data) - 8:
        raise ValueError(f"path: {path} is a torch.save pickle (the checkpoint format of mtdmath 0.1.0), which this "
                         f"version does not unpickle; convert it once with "
                         f"mtdmath.nn.convert_checkpoint(old_path, new_path)")
    if len(data) < 8:
        raise ValueError(f"path: {path} is truncated ({len(data)} bytes; a checkpoint starts with an 8-byte "
                         f"header length)")
    if n > min(len(data) - 8, _MAX_HEADER):
        raise ValueError(f"path: {path} is truncated or corrupt (its header claims {n} bytes; the file has "
                         f"{len(data) - 8} after the length)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
        meta_s = header["__metadata__"]["mtdmath"]
        stored = header["__metadata__"]["sha256"]
        meta = json.loads(meta_s)
        fmt = meta["format"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"path: {path} is not an mtdmath checkpoint or its header is corrupt "
                         f"({type(err).__name__}: {err})") from None
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise ValueError(f"path: {path} has an invalid format version {fmt!r}")
    if fmt > FORMAT:
        raise ValueError(f"path: {path} has checkpoint format {fmt}, newer than the format {FORMAT} this mtdmath "
                         f"reads: upgrade mtdmath to load it")
    if fmt < FORMAT:
        raise ValueError(f"path: {path} has checkpoint format {fmt}; convert it with mtdmath.nn.convert_checkpoint")
    if not (isinstance(stored, str) and re.fullmatch(r"[0-9a-f]{64}", stored)):
        raise ValueError(f"path: {path} is corrupt: its sha256 field is not 64 hexadecimal digits")
    try:
        at = _hash_position(data)
    except ValueError as err:
        raise ValueError(f"path: {path} is corrupt: {err}") from None
    zeroed = bytearray(data)
    zeroed[at:at + 64] = _ZERO_HASH.encode()
    actual = hashlib.sha256(zeroed).hexdigest()
    if actual != stored or data[at:at + 64] != stored.encode():
        raise ValueError(f"path: {path} is corrupt or was modified: its SHA-256 is {actual}, the checkpoint "
                         f"records {stored}")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as err:  # safetensors raises its own error type for a malformed payload
        raise ValueError(f"path: {path}: its tensors cannot be read ({err})") from None
    return meta, tensors


def _build(meta: dict[str, Any], path: Path, dtype: torch.dtype) -> nn.Module:
    name, cfg = meta.get("class"), meta.get("config")
    if name not in _CLASSES or str(meta.get("module")).split(".")[0] != "mtdmath" or not isinstance(cfg, dict):
        raise ValueError(f"path: {path} holds a {meta.get('module')}.{name}, not an mtdmath transformer: pass a "
                         f"freshly built instance as model= to load its weights into")
    try:
        if name == "MDTransformer":
            return MDTransformer(cfg["S"], cfg["m"], dtype=dtype, aggregation=cfg.get("aggregation", "sum"))
        return StandardTransformer(**cfg, dtype=dtype)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"path: {path} has an invalid {name} config {cfg!r} ({err})") from None


def load_checkpoint(path: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                    model: nn.Module | None = None, allow_nonfinite: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_checkpoint`, after checking the file's SHA-256.

    Parameters
    ----------
    path : file
    device, dtype : optional
        Where and in which dtype to put the model (default: CPU, the saved dtype).
    model : nn.Module, optional
        Load the weights into this module instead of rebuilding the saved class (required for
        a module of your own; its state dict must have the saved names and shapes).
    allow_nonfinite : bool
        Accept weights that hold NaN or inf (refused by default).

    Returns
    -------
    model : nn.Module in eval mode
    info : dict
        ``task`` (an ICLTask on ``device``, or None), ``history``, ``extra``, ``config``,
        ``class``, ``format`` and, for a training checkpoint, ``training`` (what
        :func:`mtdmath.nn.train` resumes from).

    Raises
    ------
    ValueError
        Naming ``path`` and what is wrong: a missing, truncated, corrupt or modified file (hash
        mismatch), a newer format, an mtdmath 0.1.0 pickle, tensors that do not fit the model,
        non-finite weights.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> tokens, lam = mtdmath.sample_icl(pi, alpha, 12, 8, rng=1)
    >>> path = nn.save_checkpoint('md.ckpt', nn.MDTransformer.construct(pi, alpha))
    >>> model, info = nn.load_checkpoint(path, dtype=torch.float64)
    >>> print(np.allclose(torch.softmax(model(tokens), -1).detach().numpy(), mtdmath.md_predictive_all_prefixes(tokens, pi, alpha), atol=1e-10))
    True
    """
    if not isinstance(path, (str, Path)):
        raise ValueError(f"path must be a file path (got {path!r})")
    if dtype is not None:
        dtype = validate.check_torch_dtype(dtype)
    device = validate.check_torch_device(device)
    if model is not None and not isinstance(_module(model), nn.Module):
        raise ValueError(f"model must be an nn.Module or None (got {type(model).__name__})")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: the checkpoint {path} does not exist")
    meta, tensors = _read(path)
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    if not allow_nonfinite:
        _check_finite(state, f"path: {path}")
    saved_dtype = getattr(torch, str(meta.get("dtype")), None)
    if not isinstance(saved_dtype, torch.dtype):
        raise ValueError(f"path: {path} records an invalid dtype {meta.get('dtype')!r}")
    target = _module(model) if model is not None else _build(meta, path, saved_dtype)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"path: {path}: its tensors do not fit the model: {err}") from None
    target = target.to(device=device, dtype=dtype or saved_dtype).eval()
    task = None
    if "task/pi" in tensors:
        try:
            task = ICLTask(tensors["task/pi"], tensors["task/alpha"], int(meta["task_T"]), device=device)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"path: {path} holds an invalid task ({err})") from None
    info = {"task": task, "history": meta.get("history"), "extra": meta.get("extra", {}), "config": meta.get("config"),
            "class": meta.get("class"), "format": meta["format"]}
    if "training" in meta:
        try:
            info["training"] = _training_state(meta["training"], tensors)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"path: {path} holds an invalid training state ({type(err).__name__}: {err})") from None
    return (model if model is not None else target), info


def _training_state(tr: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What :func:`mtdmath.nn.train` resumes from: optimiser state dict, scheduler, RNG states, step."""
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, i, key = k.split("/", 2)
            opt_state.setdefault(int(i), {})[key] = v
    for k, v in tr.get("optim_scalars", {}).items():
        i, key = k.split("/", 1)
        opt_state.setdefault(int(i), {})[key] = v
    return {"step": int(tr["step"]), "optimizer": {"state": opt_state, "param_groups": tr["param_groups"]},
            "scheduler": tr["scheduler"], "state": tr.get("state", {}),
            "rng": {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}}


# ----------------------------------------------------------------------------- mtdmath 0.1.0 files
_RENAMES_MD = {"w1": "blocks.0.attn.token_score", "b1": "blocks.0.attn.lag_bias", "v1": "blocks.0.attn.lag_value",
               "q_bias": "blocks.2.attn.q_bias", "w_q": "blocks.2.attn.w_q", "k3": "blocks.2.attn.lag_key",
               "value_logits": "blocks.2.attn.value_logits", "sink_logit": "blocks.1.attn.sink_logit",
               "sink_off": "blocks.1.attn.sink_off"}


def convert_checkpoint(old_path: str | Path, new_path: str | Path) -> Path:
    """Convert a checkpoint of mtdmath 0.1.0 (a ``torch.save`` file) to the current format.

    The old file is read with ``torch.load(weights_only=True)`` (tensors, numbers, strings,
    lists and dicts only; no code runs); its parameters are renamed to the role-named layout.
    Only convert files you trust: the old format carries no hash, so corruption is not detected.

    Returns
    -------
    Path of the new checkpoint.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import mtdmath
    >>> from mtdmath import nn
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> alpha = np.array([2.0, 1.0])
    >>> model = nn.MDTransformer.construct(pi, alpha, dtype=torch.float32)
    >>> old = {'kind': 'md3', 'init': {'S': 3, 'm': 2}, 'state_dict': model.state_dict(), 'pi': pi.tolist(), 'alpha': alpha.tolist()}
    >>> torch.save(old, 'md.pt')  # a file of mtdmath 0.1.0
    >>> new = nn.convert_checkpoint('md.pt', 'md.ckpt')
    >>> type(nn.load_checkpoint(new)[0]).__name__
    'MDTransformer'
    """
    if not isinstance(old_path, (str, Path)) or not Path(old_path).is_file():
        raise ValueError(f"old_path: the checkpoint {old_path!r} does not exist")
    old_path = Path(old_path)
    try:
        ck = torch.load(old_path, map_location="cpu", weights_only=True)
        if "format" not in ck and "kind" in ck:  # the first format: one dict per trained model kind
            ck = {"class": "MDTransformer" if ck["kind"] == "md3" else "StandardTransformer", "config": dict(ck["init"]),
                  "dtype": "float32", "state_dict": ck["state_dict"],
                  "task": {"pi": ck["pi"], "alpha": ck["alpha"], "T": ck.get("config", {}).get("T", 65)},
                  "history": ck.get("loss_curve"), "extra": {}}
        name, cfg, sd = ck["class"], dict(ck["config"]), ck["state_dict"]
        dtype = getattr(torch, ck["dtype"])
        if name == "MDTransformer":
            model = MDTransformer(cfg["S"], cfg["m"], dtype=dtype, aggregation=cfg.get("aggregation", "sum"))
            sd = {_RENAMES_MD.get(k, k): v for k, v in sd.items()}
        else:
            model = StandardTransformer(**cfg, dtype=dtype)
            sd = {k.replace("ln_f.", "ln_final.", 1) if k.startswith("ln_f.") else k: v for k, v in sd.items()}
        model.load_state_dict(sd)
        task = ICLTask.from_dict(ck["task"]) if ck.get("task") is not None else None
    except Exception as err:  # anything unreadable in a file of the old format
        raise ValueError(f"old_path: {old_path} is not a readable mtdmath 0.1.0 checkpoint ({type(err).__name__}: "
                         f"{err})") from None
    return save_checkpoint(new_path, model, task=task, history=ck.get("history"),
                           extra=json.loads(json.dumps(ck.get("extra") or {}, default=str)))
