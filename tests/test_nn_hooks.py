"""Hook points: reading (run_with_cache), patching and ablation (run_with_hooks), fused vs explicit attention.

Independent routes: zero-ablating the mirror step of the construction is compared with the
predictive at the prior mean μ computed by the core (``mtdmath.predictive`` with lam = μ on each
prefix); the fused attention (``F.scaled_dot_product_attention``) with the explicit softmax path
that the hooks force; a patch with an activation's own value with the unpatched call (bit for
bit), and a patch with a different value must change the output (the wrong case).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mtdmath
from mtdmath.nn import HookPoint, MDTransformer, StandardTransformer, md_cache_names, standard_cache_names

torch.set_num_threads(1)


def _setup(S=5, m=3, T=13, B=3, seed=0):
    rng = np.random.default_rng(seed)
    pi = mtdmath.random_transition_matrix(S, concentration=0.7, rng=rng)
    alpha = rng.uniform(0.3, 2.0, size=m)
    y = torch.as_tensor(mtdmath.sample_icl(pi, alpha, T, B, rng=rng)[0])
    return pi, alpha, y


def _models(S, m, T):
    pi, alpha, _ = _setup(S, m)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    return {
        "md-construct": MDTransformer.construct(pi, alpha),
        "md-random": MDTransformer(S, m, dtype=torch.float64, generator=gen()),
        "mdsink-construct": MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=2.0, a=3.0),
        "std": StandardTransformer(S, m, n_layers=2, d_model=12, n_heads=3, max_len=T, dtype=torch.float64,
                                   generator=gen()),
    }


MODELS = ["md-construct", "md-random", "mdsink-construct", "std"]


@pytest.mark.parametrize("kind", MODELS)
def test_every_hook_point_is_a_named_submodule(kind):
    model = _models(5, 3, 13)[kind]
    names = (standard_cache_names(2) if kind == "std"
             else md_cache_names("softmax_sink" if kind.startswith("mdsink") else "sum"))
    assert model.hook_names == list(names)
    modules = dict(model.named_modules())
    for n in names:  # reachable by torch (and nnsight) under the same dotted name
        assert isinstance(modules[n], HookPoint) and modules[n].name == n


@pytest.mark.parametrize("kind", MODELS)
def test_patching_a_hook_with_its_own_value_leaves_the_logits_bit_identical(kind):
    _, _, y = _setup()
    model = _models(5, 3, 13)[kind]
    plain = model(y)
    ref, _ = model.run_with_cache(y)
    for name in model.hook_names:
        got = {}

        def read(x, hook):
            got["own"] = x.clone()  # the value of this very path (a hook in attention forces the explicit one)

        reads = model.run_with_hooks(y, fwd_hooks=[(name, read)])
        patched = model.run_with_hooks(y, fwd_hooks=[(name, lambda x, hook: got["own"])])
        assert torch.equal(patched, reads), name
        with model.hooks([(name, lambda x, hook: None)]):
            assert model.hook_dict[name].has_hooks()
        assert not any(hp.has_hooks() for hp in model.hook_dict.values())  # hooks are removed after the call
        if torch.equal(reads, plain):
            assert torch.equal(patched, plain), name
        else:  # the fused / log-space path and the explicit one differ by rounding only
            assert (patched - plain)[torch.isfinite(plain)].abs().max() <= 1e-12, name
    # the explicit path, fully hooked, gives the cache's logits
    assert torch.equal(model.run_with_hooks(y, fwd_hooks=[(lambda n: True, lambda x, hook: None)]), ref)


@pytest.mark.parametrize("kind", MODELS)
def test_patching_a_different_value_changes_the_logits(kind):
    # the wrong case of the test above: the hooks do replace what flows downstream
    _, _, y = _setup()
    model = _models(5, 3, 13)[kind]
    ref, cache = model.run_with_cache(y)
    moved = 0
    for name in model.hook_names:
        if name.endswith("hook_sink"):
            continue  # the sink's value is 0: its weight only shapes the pattern, which is hooked separately
        # not a constant shift, which a softmax would ignore
        c = cache[name]
        bumped = c + torch.linspace(0.1, 1.0, c.numel(), dtype=c.dtype).reshape(c.shape)
        out = model.run_with_hooks(y, fwd_hooks=[(name, lambda x, hook, b=bumped: b)])
        moved += int(not torch.equal(torch.nan_to_num(out), torch.nan_to_num(ref)))
        assert not torch.equal(torch.nan_to_num(out), torch.nan_to_num(ref)), name
    assert moved > 0


@pytest.mark.parametrize("aggregation", ["sum", "softmax_sink"])
def test_zero_ablating_the_mirror_step_gives_the_prediction_at_mu(aggregation):
    pi, alpha, y = _setup(S=6, m=3, T=15, B=4, seed=1)
    m = alpha.shape[0]
    kw = dict(aggregation="softmax_sink", c=2.5, a=1.5) if aggregation == "softmax_sink" else {}
    model = MDTransformer.construct(pi, alpha, **kw)
    zero = lambda x, hook: torch.zeros_like(x)  # noqa: E731
    mu = alpha / alpha.sum()
    tokens = y.numpy()
    # the core, prefix by prefix: the predictive law under the prior mean lam = μ
    want = np.stack([mtdmath.predictive(np.broadcast_to(mu, (y.shape[0], m)), tokens[:, :m + r], pi)
                     for r in range(y.shape[1] - m + 1)], axis=1)
    for name in ("blocks.2.attn.hook_step", "blocks.1.hook_G"):
        with torch.no_grad():
            p = torch.softmax(model.run_with_hooks(y, fwd_hooks=[(name, zero)]), -1).numpy()
        assert np.abs(p - want).max() <= 1e-12, name  # float64, the same sums in another order
    # wrong case: the intact model takes the step, and differs from μ after the first transition
    with torch.no_grad():
        p = torch.softmax(model(y), -1).numpy()
    assert np.abs(p[:, 1:] - want[:, 1:]).max() > 1e-3


def test_ablating_one_position_of_layer_1_changes_only_later_rows():
    # ablation with position resolution: zeroing r_t at one t (the responsibility of one transition)
    # leaves every row before t unchanged and moves the rows from t on (G is causal)
    pi, alpha, y = _setup(seed=2)
    model = MDTransformer.construct(pi, alpha)
    m, t = 3, 7

    def drop(x, hook):
        x = x.clone()
        x[:, t] = 0.0
        return x

    with torch.no_grad():
        base, out = model(y), model.run_with_hooks(y, fwd_hooks=[("blocks.0.hook_r", drop)])
    rows_before = t - (m - 1)  # row r is position m-1+r
    assert torch.equal(out[:, :rows_before], base[:, :rows_before])
    assert (out[:, rows_before:] - base[:, rows_before:]).abs().max() > 1e-6


def test_run_with_cache_filters_and_hooks_see_a_hook_object():
    _, _, y = _setup()
    model = _models(5, 3, 13)["std"]
    _, c1 = model.run_with_cache(y, names_filter="blocks.1.hook_resid_post")
    _, c2 = model.run_with_cache(y, names_filter=["hook_embed", "blocks.0.attn.hook_z"])
    _, c3 = model.run_with_cache(y, names_filter=lambda n: n.endswith("hook_pattern"))
    assert list(c1) == ["blocks.1.hook_resid_post"] and list(c2) == ["hook_embed", "blocks.0.attn.hook_z"]
    assert list(c3) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    seen = []
    model.run_with_hooks(y, fwd_hooks=[(lambda n: n.endswith("hook_q"), lambda x, hook: seen.append(hook.name))])
    assert seen == ["blocks.0.attn.hook_q", "blocks.1.attn.hook_q"]
    # torch's own forward hooks reach the same modules (what nnsight and other tools use)
    got = {}
    h = model.blocks[1].attn.hook_z.register_forward_hook(lambda mod, args, out: got.setdefault("z", out))
    try:
        model(y)
    finally:
        h.remove()
    assert got["z"].shape == (3, 3, 13, 4)
    for bad in (3, [1, 2]):
        with pytest.raises(ValueError, match="names_filter"):
            model.run_with_cache(y, names_filter=bad)
    with pytest.raises(ValueError, match="unknown hook name 'blocks.9.hook_resid_post'"):
        model.run_with_hooks(y, fwd_hooks=[("blocks.9.hook_resid_post", lambda x, hook: None)])
    with pytest.raises(ValueError, match="fwd_hooks"):
        model.run_with_hooks(y, fwd_hooks=[("hook_embed",)])


def test_patched_activations_carry_gradients():
    _, _, y = _setup()
    model = _models(5, 3, 13)["md-random"]
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    out = model.run_with_hooks(y, fwd_hooks=[("blocks.1.hook_G", lambda x, hook: scale * x)])
    out[torch.isfinite(out)].sum().backward()
    assert scale.grad is not None and scale.grad != 0


# ----------------------------------------------------------------------------- fused vs explicit attention
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_fused_and_explicit_attention_agree(dtype, tol):
    # float64: both are exact softmax attention up to rounding (observed 9e-15 on logits up to 5.5).
    # float32: the fused kernel scales and accumulates in another order; on logits up to ~8 (float32 ulp
    # 9.5e-7 there) through 3 blocks the paths differ by ~5 ulp (observed 4.6e-6): 2e-5 is ~20 ulp
    S, m, T, B = 7, 2, 40, 4
    model = StandardTransformer(S, m, n_layers=3, d_model=32, n_heads=4, max_len=T, dtype=dtype,
                                generator=torch.Generator().manual_seed(11))
    with torch.no_grad():  # larger weights than the init, so that attention is far from uniform
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(20.0)
    y = torch.as_tensor(np.random.default_rng(5).integers(0, S, size=(B, T)))
    with torch.no_grad():
        fused = model(y)
        explicit, cache = model.run_with_cache(y, names_filter=lambda n: n.endswith("hook_pattern"))
    assert max(float(c.max()) for c in cache.values()) > 0.5  # attention is peaked, not uniform
    assert (fused - explicit).abs().max() <= tol
    # wrong case: attention without the causal mask differs
    with torch.no_grad():
        blk = model.blocks[0].attn
        x = torch.randn(B, T, 32, dtype=dtype, generator=torch.Generator().manual_seed(0))
        q, k, v = (z.view(B, T, 4, 8).transpose(1, 2) for z in blk.qkv(x).split(32, dim=2))
        acausal = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        causal = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (acausal - causal).abs().max() > 1e-3


def test_fused_attention_trains_like_the_explicit_one():
    # gradients through both paths agree (float64), so training on the fused path is the same model
    S, m, T, B = 5, 2, 16, 3
    model = StandardTransformer(S, m, n_layers=2, d_model=8, n_heads=2, max_len=T, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(2))
    y = torch.as_tensor(np.random.default_rng(1).integers(0, S, size=(B, T)))
    g = []
    for hooks in ([], [(lambda n: n.endswith("hook_pattern"), lambda x, hook: None)]):
        model.zero_grad()
        model.run_with_hooks(y, fwd_hooks=hooks).logsumexp(-1).sum().backward()
        g.append([p.grad.clone() for p in model.parameters()])
    assert max(float((a - b).abs().max()) for a, b in zip(*g)) <= 1e-12
