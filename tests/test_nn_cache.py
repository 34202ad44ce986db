"""Named activation caches of both transformers: the cache is what the forward pass used.

Each test recomputes the model's output from the cached tensors alone (plus the weights), one
layer at a time by a route written independently of the forward code (explicit loops over lags,
``torch.cumsum`` for the aggregation, ``nn.functional.layer_norm``), and checks every cached tensor
on the way. float64 throughout; tolerance 1e-12: the recomputation does the same arithmetic in a
different order, so the differences are rounding (observed ~1e-16). A corrupted cache entry must
fail the same check (the wrong case).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mtdmath
from mtdmath.nn import MD_CACHE_NAMES, MDTransformer, StandardTransformer, standard_cache_names

torch.set_num_threads(1)
TOL = 1e-12


def _softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of masked logits (-inf = masked); all-masked rows give 0."""
    finite = torch.isfinite(scores)
    out = torch.zeros_like(scores)
    rows = finite.any(-1)
    s = scores[rows]
    out[rows] = torch.softmax(s, dim=-1)
    return out


def _md_recompute(model: MDTransformer, y: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """Output of the MD transformer from its cache; asserts every intermediate on the way."""
    B, T = y.shape
    m, S = model.m, model.S
    e = torch.nn.functional.one_hot(y, S).double()
    assert torch.equal(cache["hook_embed"], e)
    P1 = cache["blocks.0.attn.hook_pattern"][:, 0]
    assert (P1 - _softmax_rows(cache["blocks.0.attn.hook_scores"][:, 0])).abs().max() <= TOL
    r = torch.zeros(B, T, m, dtype=torch.float64)
    for t in range(m, T):
        for g in range(1, m + 1):
            r[:, t] += P1[:, t, t - g, None] * model.responsibility.attn.lag_value[g - 1]
    assert (cache["blocks.0.hook_r"] - r).abs().max() <= TOL
    G = torch.cumsum(cache["blocks.0.hook_r"], dim=1)
    assert (cache["blocks.1.hook_G"] - G).abs().max() <= TOL
    l3 = model.mirror_step.attn
    logits = (l3.q_bias + cache["blocks.1.hook_G"] @ l3.w_q) @ l3.lag_key.T
    assert (cache["blocks.2.attn.hook_lag_logits"] - logits).abs().max() <= TOL
    sc3 = cache["blocks.2.attn.hook_scores"][:, 0]
    for t in range(m - 1, T):
        for j in range(m):
            assert torch.equal(sc3[:, t, t - j], cache["blocks.2.attn.hook_lag_logits"][:, t, j])
    P3 = cache["blocks.2.attn.hook_pattern"][:, 0]
    assert (P3 - _softmax_rows(sc3)).abs().max() <= TOL
    vals = torch.softmax(l3.value_logits, dim=-1)[y]  # (B, T, S): row of the source token
    assert (cache["blocks.2.attn.hook_v"] - vals).abs().max() <= TOL
    p = P3 @ cache["blocks.2.attn.hook_v"]
    assert (cache["blocks.2.hook_p"] - p).abs().max() <= TOL
    z = torch.zeros(B, T, m, dtype=torch.float64)
    want = torch.cat([e, cache["blocks.0.hook_r"], cache["blocks.1.hook_G"], cache["blocks.2.hook_p"]], -1)
    assert torch.equal(cache["blocks.2.hook_resid_post"], want)
    assert torch.equal(cache["blocks.0.hook_resid_post"],
                       torch.cat([e, cache["blocks.0.hook_r"], z, torch.zeros(B, T, S, dtype=torch.float64)], -1))
    return p[:, m - 1:]


@pytest.mark.parametrize("constructed", [True, False], ids=["constructed", "random"])
def test_md_cache_recomputes_the_output(constructed):
    rng = np.random.default_rng(0)
    S, m = 5, 3
    pi = mtdmath.random_transition_matrix(S, rng=rng)
    alpha = np.array([0.5, 1.0, 2.0])
    y = torch.as_tensor(mtdmath.sample_icl(pi, alpha, 14, 3, rng=rng)[0])
    model = (MDTransformer.construct(pi, alpha) if constructed
             else MDTransformer(S, m, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    logits, cache = model.run_with_cache(y)
    probs = torch.softmax(logits, -1)
    assert list(cache) == list(MD_CACHE_NAMES)
    B, T = y.shape
    for name, doc in MD_CACHE_NAMES.items():
        # the documented shape, symbol by symbol
        dims = {"B": B, "T": T, "S": S, "m": m, "1": 1, "S+2m+S": 2 * S + 2 * m}
        shape = tuple(dims[d.strip()] for d in doc[1:doc.index(")")].split(","))
        assert tuple(cache[name].shape) == shape, name
    with torch.no_grad():
        assert (_md_recompute(model, y, cache) - probs).abs().max() <= TOL
    # the plain forward (layer 3 in log space on its band) agrees to rounding
    assert (torch.softmax(model(y), -1) - probs).abs().max() <= TOL
    # wrong case: a corrupted G fails the check
    bad = dict(cache)
    bad["blocks.1.hook_G"] = cache["blocks.1.hook_G"] * 1.01
    with pytest.raises(AssertionError), torch.no_grad():
        _md_recompute(model, y, bad)


def test_md_cache_carries_gradients():
    model = MDTransformer(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.as_tensor(np.random.default_rng(0).integers(0, 4, size=(2, 9)))
    _, cache = model.run_with_cache(y)
    cache["blocks.1.hook_G"].sum().backward()
    assert model.responsibility.attn.token_score.grad is not None and model.responsibility.attn.token_score.grad.abs().max() > 0


def _std_recompute(model: StandardTransformer, y: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
    B, T = y.shape
    D, H = model.config.d_model, model.config.n_heads
    d = D // H
    assert torch.equal(cache["hook_embed"], model.tok_emb.weight[y])
    assert torch.equal(cache["hook_pos_embed"], model.pos_emb.weight[:T])
    x = cache["hook_embed"] + cache["hook_pos_embed"]
    for l, blk in enumerate(model.blocks):
        c = {k.removeprefix(f"blocks.{l}."): v for k, v in cache.items() if k.startswith(f"blocks.{l}.")}
        assert (c["hook_resid_pre"] - x).abs().max() <= TOL
        h = torch.nn.functional.layer_norm(c["hook_resid_pre"], (D,), blk.ln1.weight, blk.ln1.bias, blk.ln1.eps)
        assert (c["ln1.hook_normalized"] - h).abs().max() <= TOL
        W, b = blk.attn.qkv.weight, blk.attn.qkv.bias
        for i, key in enumerate(("q", "k", "v")):
            want = (c["ln1.hook_normalized"] @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D]).view(B, T, H, d)
            assert (c[f"attn.hook_{key}"] - want.permute(0, 2, 1, 3)).abs().max() <= TOL
        sc = torch.einsum("bhqd,bhkd->bhqk", c["attn.hook_q"], c["attn.hook_k"]) / math.sqrt(d)
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        assert torch.all(torch.isneginf(c["attn.hook_scores"][..., future]))
        assert (c["attn.hook_scores"][..., ~future] - sc[..., ~future]).abs().max() <= TOL
        assert (c["attn.hook_pattern"] - _softmax_rows(c["attn.hook_scores"])).abs().max() <= TOL
        assert (c["attn.hook_z"] - c["attn.hook_pattern"] @ c["attn.hook_v"]).abs().max() <= TOL
        merged = c["attn.hook_z"].permute(0, 2, 1, 3).reshape(B, T, D)
        assert (c["hook_attn_out"] - blk.attn.proj(merged)).abs().max() <= TOL
        assert (c["hook_resid_mid"] - (c["hook_resid_pre"] + c["hook_attn_out"])).abs().max() <= TOL
        assert (c["hook_mlp_out"] - blk.mlp(blk.ln2(c["hook_resid_mid"]))).abs().max() <= TOL
        x = c["hook_resid_mid"] + c["hook_mlp_out"]
        assert (c["hook_resid_post"] - x).abs().max() <= TOL
    xf = torch.nn.functional.layer_norm(x, (D,), model.ln_final.weight, model.ln_final.bias,
                                        model.ln_final.eps)
    assert (cache["ln_final.hook_normalized"] - xf).abs().max() <= TOL
    assert (cache["hook_logits"] - model.head(xf)).abs().max() <= TOL
    return torch.softmax(cache["hook_logits"][:, model.m - 1:], dim=-1)


def test_standard_cache_recomputes_the_output():
    S, m, B, T = 5, 2, 2, 11
    model = StandardTransformer(S, m, n_layers=3, d_model=12, n_heads=3, max_len=16, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(3))
    y = torch.as_tensor(np.random.default_rng(3).integers(0, S, size=(B, T)))
    logits, cache = model.run_with_cache(y)
    probs = torch.softmax(logits, -1)
    names = standard_cache_names(3)
    assert list(cache) == list(names)  # every hook point, in the order of the forward pass
    assert cache["blocks.1.attn.hook_pattern"].shape == (B, 3, T, T)  # per head, [batch, head, query, key]
    with torch.no_grad():
        assert (_std_recompute(model, y, cache) - probs).abs().max() <= TOL
    # the plain forward (fused attention) agrees to rounding
    assert (torch.softmax(model(y), -1) - probs).abs().max() <= TOL
    bad = dict(cache)
    bad["blocks.2.attn.hook_pattern"] = cache["blocks.2.attn.hook_pattern"].flip(1)  # heads swapped
    with pytest.raises(AssertionError), torch.no_grad():
        _std_recompute(model, y, bad)
