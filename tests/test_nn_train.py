"""The public training API: train, lr_schedule, model specs, save_checkpoint / load_checkpoint.

Independent routes: the training loss is recomputed from ``log_probs`` by a plain gather; the
schedule against its closed form; a checkpoint round trip against the original model
(``torch.equal`` on every weight and on the outputs: exact); the seed contract by training twice.
Models are tiny and runs are a few dozen steps, so the file runs in seconds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import mtdmath as M
from mtdmath.nn import (ICLTask, MDTransformer, StandardTransformer, TrainHistory, load_checkpoint, lr_schedule,
                        model_from_spec, parse_model_spec, save_checkpoint, spec_name, train)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def task() -> ICLTask:
    return ICLTask(M.random_transition_matrix(5, concentration=0.5, rng=0), [1.0, 1.0], T=12)


def _md(seed: int = 0) -> MDTransformer:
    return MDTransformer(5, 2, generator=torch.Generator().manual_seed(seed))


def test_train_lowers_the_loss_and_records_history(task):
    model = _md()
    y, _ = task.sample(256, generator=torch.Generator().manual_seed(99))  # a held-out batch
    with torch.no_grad():
        before = -model.log_probs(y)[:, :-1].gather(2, y[:, 2:, None]).mean()
    hist = train(model, task, steps=40, batch_size=16, lr=3e-2, warmup=5, log_every=10, progress=False)
    with torch.no_grad():
        after = -model.log_probs(y)[:, :-1].gather(2, y[:, 2:, None]).mean()
    assert after < before - 0.05  # 40 Adam steps at lr 3e-2 move the NLL by ~0.2 nats here
    assert isinstance(hist, TrainHistory) and hist.step == [10, 20, 30, 40]
    assert len(hist.loss) == len(hist.lr) == len(hist.time) == 4
    assert all(np.isfinite(hist.loss)) and hist.time == sorted(hist.time) and hist.steps_per_s > 0
    f = lr_schedule("cosine", steps=40, warmup=5)
    np.testing.assert_allclose(hist.lr, [3e-2 * f(k) for k in (10, 20, 30, 40)], rtol=1e-12)
    assert not model.training


def test_lr_schedule_closed_forms():
    f = lr_schedule("cosine", steps=110, warmup=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.0, abs=1e-15)
    g = lr_schedule("linear", steps=110, warmup=10)
    assert g(60) == pytest.approx(0.5)
    assert lr_schedule("constant", steps=5, warmup=0)(4) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_schedule("step", steps=5, warmup=0)


def test_seed_fixes_the_run_and_callbacks_are_logged(task):
    seen = []

    def cb(*, step, model, tokens, lam, loss):
        seen.append(step)
        assert tokens.shape == (8, task.T) and lam.shape == (8, task.m)
        return {"batch_tokens_mean": float(tokens.double().mean())}

    runs = []
    for seed in (1, 1, 2):
        model = _md()
        h = train(model, task, steps=6, batch_size=8, lr=1e-2, seed=seed, log_every=3, callbacks=[cb],
                  progress=False)
        runs.append((model, h))
    assert seen == [1, 2, 3, 4, 5, 6] * 3
    assert runs[0][1].loss == runs[1][1].loss and runs[0][1].loss != runs[2][1].loss
    for (a, b) in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(a, b)
    assert len(runs[0][1].extra["batch_tokens_mean"]) == 2


class _Bigram(nn.Module):
    """Any module with the contract trains: m and log_probs (B, T-m+1, S)."""

    def __init__(self, S: int, m: int) -> None:
        super().__init__()
        self.m = m
        self.table = nn.Parameter(torch.zeros(S, S))

    def log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.table[tokens[:, self.m - 1:]], dim=-1)


def test_any_module_with_the_contract_trains(task):
    model = _Bigram(task.S, task.m)
    h = train(model, task, steps=30, batch_size=32, lr=5e-2, schedule="constant", log_every=10, progress=False)
    assert h.loss[-1] < h.loss[0]


def test_train_rejects_bad_arguments(task):
    with pytest.raises(ValueError, match="m = 3"):
        train(MDTransformer(5, 3), task, steps=1, progress=False)
    with pytest.raises(ValueError, match="model"):
        train(nn.Linear(2, 2), task, steps=1, progress=False)
    with pytest.raises(ValueError, match="task"):
        train(_md(), "task", steps=1, progress=False)
    for kw, name in ((dict(steps=0), "steps"), (dict(steps=1, lr=0.0), "lr"), (dict(steps=1, batch_size=0), "batch_size"),
                     (dict(steps=1, schedule="exp"), "schedule"), (dict(steps=1, seed=-1), "seed")):
        with pytest.raises(ValueError, match=name):
            train(_md(), task, progress=False, **kw)


# ----------------------------------------------------------------------------- specs
def test_model_specs():
    assert parse_model_spec("md") == ("md", {}) == parse_model_spec("md3")
    assert parse_model_spec("std:L=5,d=32,h=2") == ("std", {"n_layers": 5, "d_model": 32, "n_heads": 2})
    assert parse_model_spec("std5") == ("std", {"n_layers": 5})
    assert parse_model_spec("std:n_layers=7") == ("std", {"n_layers": 7})
    deep = model_from_spec("std:L=7,d=8,h=2", 4, 2, max_len=10)
    assert isinstance(deep, StandardTransformer) and len(deep.blocks) == 7 and deep.config.d_model == 8
    assert isinstance(model_from_spec("md", 4, 2, max_len=10), MDTransformer)
    assert spec_name("md") == "md3" and spec_name("std:L=5") == "std5"
    assert spec_name("std:L=5,d=64,h=4") == "std5_d64_h4" and spec_name("std:L=5,d=64,h=4", d_model=64, n_heads=4) == "std5"
    assert spec_name(deep) == "std7_d8_h2"
    for bad in ("md4", "gpt", "std:L=0", "std:L=x", "std:w=3", "std:L"):
        with pytest.raises(ValueError, match="model spec"):
            parse_model_spec(bad)
    with pytest.raises(ValueError, match="d_model"):
        model_from_spec("std:d=10,h=4", 4, 2, max_len=10)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", ["md", "std:L=2,d=8,h=2"])
def test_checkpoint_round_trip_is_exact(kind, task, tmp_path):
    model = model_from_spec(kind, task.S, task.m, max_len=task.T, generator=torch.Generator().manual_seed(4))
    hist = train(model, task, steps=3, batch_size=4, log_every=1, progress=False)
    path = save_checkpoint(tmp_path / "a" / "m.pt", model, task=task, history=hist, extra={"note": "x"})
    torch.load(path, weights_only=True)  # only safe types inside
    back, info = load_checkpoint(path)
    assert type(back) is type(model) and back.config == model.config
    sd, sd2 = model.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    y, _ = task.sample(3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(y), model.eval()(y))
    assert info["task"] == task and info["history"]["loss"] == hist.loss and info["extra"] == {"note": "x"}
    b64, _ = load_checkpoint(path, dtype=torch.float64)
    assert next(b64.parameters()).dtype == torch.float64


def test_checkpoint_of_the_first_format_loads(tmp_path, task):
    model = _md(3)
    old = {"kind": "md3", "init": {"S": 5, "m": 2}, "state_dict": model.state_dict(), "pi": task.pi,
           "alpha": torch.as_tensor(task.alpha), "config": {"T": 12}, "seed": 0, "loss_curve": {"loss": [1.0]},
           "train_time_s": 1.0}
    torch.save(old, tmp_path / "md3.pt")
    back, info = load_checkpoint(tmp_path / "md3.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), back.parameters()))
    assert info["task"] == task


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="model"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="task"):
        save_checkpoint(tmp_path / "x.pt", _md(), task="nope")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_cuda(task):
    model = _md()
    h = train(model, task, steps=5, batch_size=8, device="cuda", log_every=1, progress=False)
    assert next(model.parameters()).device.type == "cuda" and all(np.isfinite(h.loss))
