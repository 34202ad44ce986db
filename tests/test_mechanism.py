"""The mechanism experiment and its hooks (docs/guide/mechanism.md, docs/math.md §5.7).

Independent routes: the hooks are compared with a forward pass of a ``StandardTransformer``
written out by hand from its weights with ``torch.nn.functional`` (the added sink as an explicit
extra key of value 0 and score ``log a' + log mean exp(scores)``; ablating every head as attention
outputs replaced by zeros before the projection); the probes with synthetic targets whose R² is
known (an exact linear function of the features behind a per-sequence offset, and pure noise).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mtdmath
from mtdmath import nn
from mtdmath.experiments import MechanismConfig, MechanismResult, main
from mtdmath.experiments.mechanism import TARGETS, ProbeLayer, probe_verdict, verdict, within_context_probes

torch.set_num_threads(1)


def _model(n_layers=2, S=5, m=2, d=12, heads=3, T=11, seed=3):
    """A float64 standard transformer whose every parameter (biases and LayerNorm gains included) is random."""
    model = nn.StandardTransformer(S, m, n_layers=n_layers, d_model=d, n_heads=heads, max_len=T, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model.eval()


def _tokens(S=5, T=11, B=4, seed=0):
    return torch.as_tensor(np.random.default_rng(seed).integers(0, S, size=(B, T)))


def _hand_forward(model, y, *, sink=None, zero_heads=False):
    """The model's logits computed from its weights: ``sink = (layer, head, a')`` adds an explicit key
    of value 0 and score log a' + log mean_s exp(score) to that head; ``zero_heads`` replaces every
    head's output by 0 before the projection."""
    cfg = model.config
    B, T = y.shape
    H, D = cfg.n_heads, cfg.d_model
    dh = D // H
    x = model.tok_emb.weight[y] + model.pos_emb.weight[:T]
    for l, blk in enumerate(model.blocks):
        h = F.layer_norm(x, (D,), blk.ln1.weight, blk.ln1.bias, blk.ln1.eps)
        qkv = h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
        q, k, v = (u.reshape(B, T, H, dh).permute(0, 2, 1, 3) for u in qkv.split(D, dim=-1))
        z = torch.zeros(B, H, T, dh, dtype=x.dtype)
        for hd in range(H):
            for t in range(T):
                sc = torch.einsum("bd,bsd->bs", q[:, hd, t], k[:, hd, : t + 1]) / math.sqrt(dh)  # (B, t+1)
                vals = v[:, hd, : t + 1]
                if sink is not None and sink[:2] == (l, hd):
                    a = sink[2]
                    extra = math.log(a) + torch.logsumexp(sc, -1, keepdim=True) - math.log(t + 1)
                    sc = torch.cat([sc, extra], dim=-1)
                    vals = torch.cat([vals, torch.zeros(B, 1, dh, dtype=x.dtype)], dim=1)  # its value is 0
                w = torch.softmax(sc, -1)
                z[:, hd, t] = torch.einsum("bs,bsd->bd", w, vals)
        if zero_heads:
            z = torch.zeros_like(z)
        att = z.permute(0, 2, 1, 3).reshape(B, T, D) @ blk.attn.proj.weight.T + blk.attn.proj.bias
        x = x + att
        h2 = F.layer_norm(x, (D,), blk.ln2.weight, blk.ln2.bias, blk.ln2.eps)
        mlp = blk.mlp
        x = x + (F.gelu(h2 @ mlp[0].weight.T + mlp[0].bias) @ mlp[2].weight.T + mlp[2].bias)
    xf = F.layer_norm(x, (D,), model.ln_final.weight, model.ln_final.bias, model.ln_final.eps)
    return (xf @ model.head.weight.T + model.head.bias)[:, cfg.m - 1:]


# float64 forward passes of the same arithmetic in a different order (explicit loops vs batched
# matmuls, SDPA vs softmax): rounding differences of a few ulp through 2 blocks, far below 1e-10
TOL = 1e-10


@torch.no_grad()
def test_hand_forward_is_the_model():  # the reference itself, before it checks the hooks
    model, y = _model(), _tokens()
    torch.testing.assert_close(_hand_forward(model, y), model(y), rtol=TOL, atol=TOL)


@torch.no_grad()
def test_a_sink_of_weight_zero_changes_nothing():
    model, y = _model(), _tokens()
    ident = model.run_with_hooks(y, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda x, hook: x)])
    zero = model.run_with_hooks(y, fwd_hooks=[("blocks.1.attn.hook_pattern", nn.add_sink_hook(0.0))])
    assert torch.equal(zero, ident)  # the same explicit path, scaled by exactly 1
    torch.testing.assert_close(zero, model(y), rtol=TOL, atol=TOL)  # and the fused path


@pytest.mark.parametrize("layer, head, weight", [(0, 1, 4.0), (1, 2, 16.0), (1, 0, 0.5)])
@torch.no_grad()
def test_the_sink_hook_is_an_added_key_of_value_zero(layer, head, weight):
    model, y = _model(), _tokens()
    hooked = model.run_with_hooks(y, fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern",
                                                 nn.add_sink_hook(weight, heads=[head]))])
    torch.testing.assert_close(hooked, _hand_forward(model, y, sink=(layer, head, weight)), rtol=TOL, atol=TOL)
    # the wrong case: another weight is another model
    assert not torch.allclose(hooked, _hand_forward(model, y, sink=(layer, head, weight + 1.0)), rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_the_sink_of_equal_scores_is_one_over_n_plus_a():  # docs/math.md §5.7 for uniform attention
    pattern = torch.tril(torch.ones(6, 6, dtype=torch.float64))
    pattern = (pattern / pattern.sum(-1, keepdim=True))[None, None]
    out = nn.add_sink_hook(3.0)(pattern)
    n = torch.arange(1, 7, dtype=torch.float64)
    torch.testing.assert_close(out[0, 0].sum(-1), n / (n + 3.0), rtol=1e-15, atol=0)
    torch.testing.assert_close(out[0, 0, 5, 0], torch.tensor(1 / 9, dtype=torch.float64), rtol=1e-15, atol=0)


@torch.no_grad()
def test_ablating_every_head_equals_zero_attention_outputs_by_hand():
    model, y = _model(), _tokens()
    H = model.config.n_heads
    hooks = [(f"blocks.{l}.attn.hook_z", nn.head_ablation_hook(h)) for l in range(2) for h in range(H)]
    torch.testing.assert_close(model.run_with_hooks(y, fwd_hooks=hooks), _hand_forward(model, y, zero_heads=True),
                               rtol=TOL, atol=TOL)
    # one head only is not all of them
    one = model.run_with_hooks(y, fwd_hooks=hooks[:1])
    assert not torch.allclose(one, _hand_forward(model, y, zero_heads=True), rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_mean_ablation_of_a_single_sequence_is_the_identity():
    model, y = _model(), _tokens(B=1)
    _, cache = model.run_with_cache(y, names_filter="blocks.0.attn.hook_z")
    mean = cache["blocks.0.attn.hook_z"][:, 1].mean(0)  # the mean over one sequence is that sequence
    out = model.run_with_hooks(y, fwd_hooks=[("blocks.0.attn.hook_z", nn.head_ablation_hook(1, mean=mean))])
    torch.testing.assert_close(out, model(y), rtol=TOL, atol=TOL)
    other = model.run_with_hooks(y, fwd_hooks=[("blocks.0.attn.hook_z", nn.head_ablation_hook(1, mean=mean + 1.0))])
    assert not torch.allclose(other, model(y), rtol=1e-6, atol=1e-6)


def test_hooks_refuse_a_head_beyond_the_model():
    model, y = _model(), _tokens()
    with pytest.raises(ValueError, match="head"):
        model.run_with_hooks(y, fwd_hooks=[("blocks.0.attn.hook_z", nn.head_ablation_hook(3))])
    with pytest.raises(ValueError, match="heads"):
        model.run_with_hooks(y, fwd_hooks=[("blocks.0.attn.hook_pattern", nn.add_sink_hook(1.0, heads=[5]))])


def test_within_context_probes_recover_a_known_r2():
    rng = np.random.default_rng(0)
    B, R, D = 200, 20, 6
    h = rng.normal(size=(B, R, D))
    offset = 50.0 * rng.normal(size=(B, 1, 2))  # a per-sequence offset: removed by the within-context centring
    exact = h @ rng.normal(size=(D, 2)) + offset
    noise = rng.normal(size=(B, R, 2))
    r2, diff = within_context_probes(h, {"exact": exact, "noise": noise}, n_boot=200, rng=rng)
    # ridge with a cross-validated penalty on 2000 rows and 6 features: shrinkage costs < 1e-3 of R²
    assert r2["exact"] > 0.999
    # noise: held-out R² of a 6-feature probe is ~ −6/2000 ± a few 1e-3
    assert abs(r2["noise"]) < 0.02
    m, se = diff["exact-noise"]
    assert m == pytest.approx(r2["exact"] - r2["noise"]) and 0 < se < 0.05


def _layer(d_const, d_bayes, d_run, se=0.001):
    diff = {"md_adaptive-md_constant": [d_const, se], "md_adaptive-bayes": [d_bayes, se],
            "md_adaptive-running_mean": [d_run, se], "md_constant-bayes": [0.0, se],
            "md_constant-running_mean": [0.0, se], "bayes-running_mean": [0.0, se]}
    return ProbeLayer(layer=0, r2={t: 0.5 for t in TARGETS}, diff=diff)


@pytest.mark.parametrize("d, expected", [((0.05, 0.0, 0.05), "supports"), ((0.05, -0.02, 0.05), "against"),
                                         ((0.005, 0.0, 0.05), "undecided"), ((-0.03, 0.0, 0.05), "against"),
                                         ((0.05, -0.0015, 0.05), "supports")])
def test_probe_verdict_follows_the_written_criterion(d, expected):
    assert probe_verdict(_layer(*d)) == expected


def test_quick_run_end_to_end_and_reuses_its_checkpoints(tmp_path):
    out = tmp_path / "mech"
    res = main(["mechanism", "--quick", "--out", str(out), "--no-progress"])
    assert isinstance(res, MechanismResult)
    back = MechanismResult.read(out / "mechanism.json")
    assert list(back.models) == ["std1_m2_seed0", "std2_m2_seed0"]
    for r in back.models.values():
        assert len(r.probes) == r.n_layers and len(r.ablations) == r.n_layers * 2
        assert [iv.weight for iv in r.interventions] == [4.0, 16.0]
        for p in r.probes:
            assert all(np.isfinite(v[1]) and v[1] > 0 for v in p.diff.values())
        assert r.train_time_s > 0 and not r.reused
    assert back.verdict == verdict(back.models)
    assert (out / "mechanism.png").is_file() and (out / "mechanism.md").is_file()
    again = main(["mechanism", "--quick", "--out", str(out), "--no-progress"])
    for name, r in again.models.items():
        assert r.reused and r.train_time_s == back.models[name].train_time_s  # reused, not retrained
        assert r.eta == back.models[name].eta and r.kl == back.models[name].kl


def test_config_refuses_order_one():
    with pytest.raises(ValueError, match="orders"):
        MechanismConfig(orders=(1,))
