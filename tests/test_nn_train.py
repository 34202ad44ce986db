"""The public training API: train (resume, logs, evaluation, compiled forward), lr_schedule, model specs.

Independent routes: the training loss is recomputed from ``log_probs`` by a plain gather; the
schedule against its closed form; the seed contract by training twice; a resumed run against the
uninterrupted one (``torch.equal``: bit for bit); the evaluation callback's KL against the core's
one-step MD on the construction; the CSV and TensorBoard logs against the returned history.
Models are tiny and runs are a few dozen steps, so the file runs in seconds. Checkpoints are
tested in test_nn_checkpoints.py.
"""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from torch import nn

import mtdmath
from mtdmath.nn import (HeldOutKL, ICLTask, MDTransformer, StandardTransformer, TrainHistory, load_checkpoint,
                        lr_schedule, model_from_spec, parse_model_spec, spec_name, train)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def task() -> ICLTask:
    return ICLTask(mtdmath.random_transition_matrix(5, concentration=0.5, rng=0), [1.0, 1.0], T=12)


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
    """Any module with the contract trains: m and forward(tokens) -> logits (B, T-m+1, S)."""

    def __init__(self, S: int, m: int) -> None:
        super().__init__()
        self.m = m
        self.table = nn.Parameter(torch.zeros(S, S))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens[:, self.m - 1:]]


def test_any_module_with_the_contract_trains(task):
    model = _Bigram(task.S, task.m)
    h = train(model, task, steps=30, batch_size=32, lr=5e-2, schedule="constant", log_every=10, progress=False)
    assert h.loss[-1] < h.loss[0]


def test_train_rejects_bad_arguments(task):
    with pytest.raises(ValueError, match="m = 3"):
        train(MDTransformer(5, 3), task, steps=1, progress=False)
    # model and task must agree on S, m and the context length; the message names both
    for model, what in ((MDTransformer(4, 2), "S = 4.*S = 5"), (MDTransformer(3, 2), "S = 3.*S = 5"),
                        (StandardTransformer(5, 2, max_len=8), "T = 12.*max_len = 8")):
        with pytest.raises(ValueError, match=f"model and task disagree.*{what}"):
            train(model, task, steps=1, progress=False)
    for bad in ("gpu", "cuda:x", 3.5, True):
        with pytest.raises(ValueError, match="device"):
            train(_md(), task, steps=1, device=bad, progress=False)
    # the batch is sized before any work, under the public name
    with pytest.raises(ValueError, match="batch_size"):
        train(_md(), task, steps=1, batch_size=10**12, progress=False)
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
    assert spec_name("md") == "md" and spec_name("std:L=5") == "std5"
    assert spec_name("std:L=5,d=64,h=4") == "std5_d64_h4" and spec_name("std:L=5,d=64,h=4", d_model=64, n_heads=4) == "std5"
    assert spec_name(deep) == "std7_d8_h2"
    for bad in ("md4", "gpt", "std:L=0", "std:L=x", "std:w=3", "std:L"):
        with pytest.raises(ValueError, match="model spec"):
            parse_model_spec(bad)
    with pytest.raises(ValueError, match="d_model"):
        model_from_spec("std:d=10,h=4", 4, 2, max_len=10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_cuda(task):
    model = _md()
    h = train(model, task, steps=5, batch_size=8, device="cuda", log_every=1, progress=False)
    assert next(model.parameters()).device.type == "cuda" and all(np.isfinite(h.loss))


# ----------------------------------------------------------------------------- compiled forward
class _Counting(nn.Module):
    """Stands for a torch.compile wrapper: keeps the module as _orig_mod and counts forward calls."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module
        self.calls = 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self._orig_mod(tokens)


def test_train_calls_the_wrappers_forward(task):
    # the loss goes through model(tokens), so a compiled module's forward is what runs: a wrapper
    # that counts its calls is called once per step, and trains the wrapped module
    inner = _md(1)
    wrapped = _Counting(inner)
    before = [p.detach().clone() for p in inner.parameters()]
    train(wrapped, task, steps=7, batch_size=4, log_every=7, progress=False)
    assert wrapped.calls == 7
    assert any(not torch.equal(a, b) for a, b in zip(before, inner.parameters()))


def test_train_runs_a_torch_compiled_module(task, tmp_path):
    # a real torch.compile wrapper (the "eager" backend: dynamo traces the forward, no code generation, so
    # this runs in seconds): it trains to the same weights as the plain module (same arithmetic), dynamo
    # captured the forward as one graph, and the checkpoint holds the module itself
    import torch._dynamo

    torch._dynamo.reset()
    plain, inner = _md(2), _md(2)
    compiled = torch.compile(inner, backend="eager")
    h1 = train(plain, task, steps=3, batch_size=4, log_every=1, progress=False)
    torch._dynamo.utils.counters.clear()
    h2 = train(compiled, task, steps=3, batch_size=4, log_every=1, progress=False, checkpoint=tmp_path / "c.ckpt")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # the whole forward, no graph break
    assert h1.loss == pytest.approx(h2.loss, rel=1e-6, abs=0)  # float32, the same operations
    back, _ = load_checkpoint(tmp_path / "c.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), inner.parameters()))


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("kind", ["md", "std:L=2,d=8,h=2", "mdsink"])
def test_resume_is_bit_identical(kind, task, tmp_path):
    # N steps, a crash, a resume to 2N == 2N steps in one run, CPU float64, with the cosine schedule,
    # warm-up, clipping, weight decay and (for the standard model) dropout, whose RNG state must travel too
    N = 6
    kw = dict(steps=2 * N, batch_size=5, lr=1e-2, warmup=3, weight_decay=0.01, log_every=4, progress=False, seed=3)

    def fresh() -> nn.Module:
        if kind.startswith("std"):
            return StandardTransformer(task.S, task.m, n_layers=2, d_model=8, n_heads=2, max_len=task.T, dropout=0.1,
                                       dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        return model_from_spec(kind, task.S, task.m, max_len=task.T, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(4))

    whole = fresh()
    h_whole = train(whole, task, **kw)

    class Crash(Exception):
        pass

    def crash(*, step, **_):
        if step == N + 1:
            raise Crash

    first = fresh()
    with pytest.raises(Crash):
        train(first, task, checkpoint=tmp_path / "run.ckpt", checkpoint_every=N, callbacks=[crash], **kw)
    resumed = fresh()  # a new process would rebuild the model: the checkpoint restores everything
    h_res = train(resumed, task, resume=tmp_path / "run.ckpt", **kw)
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    assert h_res.step == h_whole.step and h_res.loss == h_whole.loss and h_res.lr == h_whole.lr
    # wrong case: resuming without the optimiser state (a plain model checkpoint) is refused
    from mtdmath.nn import save_checkpoint

    save_checkpoint(tmp_path / "plain.ckpt", whole, task=task)
    with pytest.raises(ValueError, match="resume"):
        train(fresh(), task, resume=tmp_path / "plain.ckpt", **kw)
    with pytest.raises(ValueError, match="steps"):
        train(fresh(), task, resume=tmp_path / "run.ckpt", **(kw | {"steps": N}))
    with pytest.raises(ValueError, match="task"):
        train(fresh(), ICLTask(task.pi, [1.0, 2.0], T=task.T), resume=tmp_path / "run.ckpt", **kw)


def test_resume_extends_a_finished_run_with_a_constant_schedule(task, tmp_path):
    # N + N with resume == 2N: the constant schedule does not depend on the total number of steps
    N = 5
    kw = dict(batch_size=4, lr=1e-2, schedule="constant", log_every=5, progress=False)
    whole, a, b = (MDTransformer(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
                   for _ in range(3))
    train(whole, task, steps=2 * N, **kw)
    train(a, task, steps=N, checkpoint=tmp_path / "n.ckpt", **kw)
    train(b, task, steps=2 * N, resume=tmp_path / "n.ckpt", **kw)
    assert all(torch.equal(x, y) for x, y in zip(whole.parameters(), b.parameters()))
    # wrong case: the second half started from scratch differs
    c = MDTransformer(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    train(c, task, steps=N, **kw)
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), whole.parameters()))


# ----------------------------------------------------------------------------- observable training
def test_held_out_kl_matches_the_core_on_the_construction(task):
    ev = HeldOutKL(task, every=3, batch_size=32, seed=1)
    md = MDTransformer.construct(task.pi, task.alpha)
    out = ev.evaluate(md)
    # the construction is one-step MD at eta*: its KL to that reference is rounding (~1e-16)
    assert abs(out["kl_md"]) < 1e-12
    # against exact Bayes, recomputed here by the core on each prefix
    y = ev.tokens.numpy()
    pi, alpha, m = task.pi.numpy(), task.alpha, task.m
    C = mtdmath.lag_factors(y, pi, m)
    p_md = mtdmath.md_predictive_all_prefixes(y, pi, alpha)
    kls = [mtdmath.kl(mtdmath.predictive(mtdmath.posterior_mean(C[:, :r], alpha), y[:, :m + r], pi), p_md[:, r])
           for r in range(y.shape[1] - m + 1)]
    assert out["kl_bayes"] == pytest.approx(float(np.mean(kls)), rel=1e-12)
    assert out["kl_bayes"] > 1e-4 and out["kl_adaptive"] > 0
    assert ev(step=2, model=md) is None and ev(step=3, model=md) == out


def test_csv_and_tensorboard_logs_hold_the_history(task, tmp_path):
    import csv

    ev = HeldOutKL(task, every=4, batch_size=16)
    model = _md(5)
    hist = train(model, task, steps=8, batch_size=4, log_every=4, callbacks=[ev], progress=False,
                 log_dir=tmp_path / "logs", tensorboard=importlib.util.find_spec("tensorboard") is not None)
    with open(tmp_path / "logs" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == hist.step == [4, 8]
    assert [float(r["loss"]) for r in rows] == hist.loss
    assert [float(r["kl_bayes"]) for r in rows] == hist.extra["kl_bayes"]
    assert not model.training
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed: the CSV log is checked, the TensorBoard one is not")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "logs"))
    acc.Reload()
    ev_kl = acc.Scalars("kl_md")
    assert [e.step for e in ev_kl] == [4, 8]
    assert [e.value for e in ev_kl] == pytest.approx(hist.extra["kl_md"], rel=1e-6)  # stored as float32


def test_callbacks_that_return_values_at_some_steps_stay_aligned(task):
    def sometimes(*, step, **_):
        return {"late": float(step)} if step > 4 else None

    hist = train(_md(), task, steps=8, batch_size=4, log_every=2, callbacks=[sometimes], progress=False)
    assert len(hist.extra["late"]) == len(hist.step) == 4
    assert np.isnan(hist.extra["late"][:2]).all() and hist.extra["late"][2:] == [5.5, 7.5]
