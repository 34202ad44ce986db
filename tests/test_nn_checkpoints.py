"""Checkpoints: safetensors + JSON metadata + a whole-file SHA-256; every corruption is refused.

Independent routes: a round trip against the original model (``torch.equal`` on every weight and
on the outputs); corruption by flipping every byte of a real file (two different flips per
position), truncation at many lengths, a forged newer format, non-finite weights, a torch pickle
of mtdmath 0.1.0 (refused, then converted and compared with the model it held). The file must
never be unpickled: ``safetensors`` reads it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import mtdmath
from mtdmath.nn import (ICLTask, MDTransformer, convert_checkpoint, load_checkpoint,
                        model_from_spec, save_checkpoint, train)
from mtdmath.nn import checkpoints as CK

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def task() -> ICLTask:
    return ICLTask(mtdmath.random_transition_matrix(5, concentration=0.5, rng=0), [1.0, 1.0], T=12)


@pytest.mark.parametrize("kind", ["md", "mdsink", "std:L=2,d=8,h=2"])
def test_round_trip_is_exact(kind, task, tmp_path):
    model = model_from_spec(kind, task.S, task.m, max_len=task.T, generator=torch.Generator().manual_seed(4))
    hist = train(model, task, steps=3, batch_size=4, log_every=1, progress=False)
    path = save_checkpoint(tmp_path / "a" / "m.ckpt", model, task=task, history=hist, extra={"note": "x", "k": [1, 2]})
    import safetensors.torch

    safetensors.torch.load_file(path)  # a plain safetensors file: no pickle inside
    back, info = load_checkpoint(path)
    assert type(back) is type(model) and back.config == model.config
    sd, sd2 = model.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    y, _ = task.sample(3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(y), model.eval()(y))
    assert info["task"] == task and info["history"]["loss"] == hist.loss
    assert info["extra"] == {"note": "x", "k": [1, 2]} and info["format"] == CK.FORMAT
    b64, _ = load_checkpoint(path, dtype=torch.float64)
    assert next(b64.parameters()).dtype == torch.float64


def test_every_single_byte_flip_is_refused(tmp_path):
    # a small checkpoint of the construction (S = 3, m = 2, zeros in pi, with a task): every byte of
    # the file, flipped two ways (all bits, and the lowest bit), must be refused with a ValueError
    # naming path -- a corrupt file never loads with different weights
    pi = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 0.4, 0.6]])
    model = MDTransformer.construct(pi, [1.0, 2.0])
    path = save_checkpoint(tmp_path / "c.ckpt", model, task=ICLTask(pi, [1.0, 2.0], T=6), extra={"a": 1})
    data = path.read_bytes()
    load_checkpoint(path)  # the intact file loads
    bad = tmp_path / "bad.ckpt"
    refused = 0
    for i in range(len(data)):
        for mask in (0xFF, 0x01):
            corrupt = bytearray(data)
            corrupt[i] ^= mask
            bad.write_bytes(bytes(corrupt))
            with pytest.raises(ValueError, match="path"):
                load_checkpoint(bad)
            refused += 1
    assert refused == 2 * len(data) and len(data) > 1000


def test_truncated_files_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.ckpt", MDTransformer(3, 2))
    data = path.read_bytes()
    bad = tmp_path / "t.ckpt"
    for n in sorted({0, 1, 7, 8, 9, 20, len(data) // 2, len(data) - 8, len(data) - 1}):
        bad.write_bytes(data[:n])
        with pytest.raises(ValueError, match="path.*(truncated|corrupt|not an mtdmath)"):
            load_checkpoint(bad)
    bad.write_bytes(data + b"\x00")  # one byte appended
    with pytest.raises(ValueError, match="path"):
        load_checkpoint(bad)


def test_other_files_are_refused(tmp_path):
    for content in (b"", b"hello world", json.dumps({"a": 1}).encode(), b"\x10" + b"\x00" * 7 + b"{}" + b" " * 14):
        (tmp_path / "x").write_bytes(content)
        with pytest.raises(ValueError, match="path"):
            load_checkpoint(tmp_path / "x")
    import safetensors.torch

    safetensors.torch.save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")  # not ours
    with pytest.raises(ValueError, match="path.*not an mtdmath checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="path.*does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="path"):
        load_checkpoint(123)


def test_a_newer_format_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(CK, "FORMAT", CK.FORMAT + 1)
    path = save_checkpoint(tmp_path / "future.ckpt", MDTransformer(3, 2))  # a valid file of the next format
    monkeypatch.undo()
    with pytest.raises(ValueError, match=f"path.*format {CK.FORMAT + 1}, newer"):
        load_checkpoint(path)


def test_non_finite_weights_are_refused_unless_asked(tmp_path):
    model = MDTransformer(3, 2, dtype=torch.float64)
    with torch.no_grad():
        model.responsibility.attn.token_score.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite.*allow_nonfinite"):
        save_checkpoint(tmp_path / "nan.ckpt", model)
    path = save_checkpoint(tmp_path / "nan.ckpt", model, allow_nonfinite=True)
    with pytest.raises(ValueError, match="path.*token_score holds non-finite"):
        load_checkpoint(path)
    back, _ = load_checkpoint(path, allow_nonfinite=True)
    assert torch.isnan(back.responsibility.attn.token_score).all()


def test_extra_must_be_json(tmp_path):
    for extra in ({"a": np.zeros(2)}, {"a": torch.zeros(2)}, {"a": object()}, {1j: 1}):
        with pytest.raises(ValueError, match="extra must be JSON-serialisable"):
            save_checkpoint(tmp_path / "x.ckpt", MDTransformer(3, 2), extra=extra)
    assert not (tmp_path / "x.ckpt").exists()  # refused before anything is written
    with pytest.raises(ValueError, match="extra must be a dict"):
        save_checkpoint(tmp_path / "x.ckpt", MDTransformer(3, 2), extra=[1])
    with pytest.raises(ValueError, match="task"):
        save_checkpoint(tmp_path / "x.ckpt", MDTransformer(3, 2), task="nope")


def test_a_users_module_saves_and_loads_into_a_fresh_instance(tmp_path):
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = 2
            self.lin = nn.Linear(3, 4)

    a = Mine()
    path = save_checkpoint(tmp_path / "mine.ckpt", a, extra={"why": "test"})
    b, info = load_checkpoint(path, model=Mine())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert info["class"] == "Mine" and info["extra"] == {"why": "test"}
    with pytest.raises(ValueError, match="path.*not an mtdmath transformer.*model="):
        load_checkpoint(path)
    # mismatched: the weights do not fit another module
    with pytest.raises(ValueError, match="path.*do not fit"):
        load_checkpoint(path, model=nn.Linear(3, 5))
    with pytest.raises(ValueError, match="path.*do not fit"):
        load_checkpoint(save_checkpoint(tmp_path / "md.ckpt", MDTransformer(3, 2)), model=MDTransformer(4, 2))
    with pytest.raises(ValueError, match="model"):
        save_checkpoint(tmp_path / "x.ckpt", "not a module")


def test_old_pickles_are_refused_then_converted(tmp_path, task):
    # an mtdmath 0.1.0 checkpoint: torch.save of a dict with the flat parameter names
    model = MDTransformer(5, 2, generator=torch.Generator().manual_seed(3))
    flat = {old: model.state_dict()[new] for old, new in CK._RENAMES_MD.items() if new in model.state_dict()}
    flat["pi_zero"] = model.pi_zero
    old = {"format": 2, "class": "MDTransformer", "config": {"S": 5, "m": 2, "aggregation": "sum"}, "dtype": "float32",
           "state_dict": flat, "task": task.to_dict(), "history": {"loss": [1.0]}, "extra": {"seed": 0}}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="path.*torch.save pickle.*0.1.0.*convert_checkpoint"):
        load_checkpoint(tmp_path / "old.pt")
    new = convert_checkpoint(tmp_path / "old.pt", tmp_path / "new.ckpt")
    back, info = load_checkpoint(new)
    y, _ = task.sample(3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(y), model(y))
    assert info["task"] == task and info["extra"] == {"seed": 0}
    with pytest.raises(ValueError, match="old_path"):
        convert_checkpoint(new, tmp_path / "again.ckpt")  # not a 0.1.0 file
