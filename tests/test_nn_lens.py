"""The TransformerLens bridge: StandardTransformer <-> a TL-native TransformerBridge (the ``lens`` extra).

Independent route: TransformerLens's own TL-native transformer (its attention, LayerNorm, MLP and
embedding code, not ours) run on the mapped weights must give the same logits and the same
activations at every hook point both models name. The per-head layout is checked against
TransformerLens's ``W_Q`` property ([n_heads, d_model, d_head]); a bridge of a different
architecture (tanh GELU, rotary) must be refused, and the same weights under tanh GELU must give
different logits (the comparison can fail).
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

pytest.importorskip("transformer_lens.model_bridge.sources.native")
from transformer_lens.config import TransformerBridgeConfig  # noqa: E402
from transformer_lens.model_bridge.sources.native import boot  # noqa: E402

import mtdmath  # noqa: E402
from mtdmath.nn import StandardTransformer  # noqa: E402

torch.set_num_threads(1)

S, m, T, B = 5, 3, 17, 4
# float64: both routes perform the same sums in different orders and fusions (SDPA, einsum-free
# matmuls, LayerNorm's variance); each op is exact to ~1e-16 relative and two to three layers of
# LayerNorm and softmax amplify that by at most ~1e2 on logits of size O(1-10): 1e-10 has room
# for that and would still catch any wrong weight (changes of order 1e-2 and more).
TOL64 = 1e-10
# float32: the same argument at eps32 = 1.2e-7 and ~1e2 amplification on these logits of size
# at most ~3 gives ~4e-5.
TOL32 = 5e-5


def _tokens(seed=0, b=B, t=T):
    rng = np.random.default_rng(seed)
    pi = mtdmath.random_transition_matrix(S, concentration=0.7, rng=rng)
    alpha = rng.uniform(0.3, 2.0, size=m)
    return torch.as_tensor(mtdmath.sample_icl(pi, alpha, t, b, rng=rng)[0])


def _model(dtype=torch.float64, seed=7, scale=0.3, **kw):
    """A random StandardTransformer; ``scale`` adds weights beyond GPT-2's tiny initialisation so
    that every layer (LayerNorm gains and biases included) moves the logits."""
    g = torch.Generator().manual_seed(seed)
    kw = {"n_layers": 2, "d_model": 12, "n_heads": 3, "max_len": 24, **kw}
    model = StandardTransformer(S, m, generator=g, dtype=dtype, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return model


def _trained(dtype=torch.float64, steps=5):
    """The model after a few Adam steps on the next-token loss (weights no longer at any init)."""
    model = _model(dtype, scale=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    y = _tokens(seed=1, b=16)
    for _ in range(steps):
        opt.zero_grad()
        lp = model.log_probs(y)  # (B, T-m+1, S), row r predicts y[m+r]
        loss = -lp[:, :-1].gather(-1, y[:, m:, None]).mean()
        loss.backward()
        opt.step()
    return model


def _assert_state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("which", ["random", "trained"])
def test_bridge_logits_equal_float64(which):
    model = _trained() if which == "trained" else _model()
    y = _tokens()
    bridge = model.to_transformer_lens()
    ours = model(y)  # (B, T-m+1, S): positions m-1 ... T-1
    full = bridge(y)  # (B, T, S): every position
    assert full.shape == (B, T, S) and full.dtype == torch.float64
    assert ours.abs().max() > 1.0  # logits that are not all ~0 (a comparison of something)
    torch.testing.assert_close(full[:, m - 1:], ours, rtol=0, atol=TOL64)
    # the way back: the same state bit for bit, and equal logits
    back = StandardTransformer.from_transformer_lens(bridge, m)
    _assert_state_equal(model, back)
    assert torch.equal(back(y), ours)


def test_bridge_logits_equal_float32():
    model = _trained(torch.float32)
    y = _tokens()
    bridge = model.to_transformer_lens()
    assert bridge(y).dtype == torch.float32
    torch.testing.assert_close(bridge(y)[:, m - 1:], model(y), rtol=0, atol=TOL32)


def test_bridge_built_by_transformer_lens_round_trips():
    """The other direction: a bridge booted (and initialised) by TransformerLens itself."""
    cfg = TransformerBridgeConfig(d_model=12, n_layers=2, n_heads=3, d_head=4, d_mlp=48, act_fn="gelu",
                                  normalization_type="LN", positional_embedding_type="standard", d_vocab=S,
                                  d_vocab_out=S, n_ctx=24, default_prepend_bos=False, eps=1e-5, seed=3)
    bridge = boot(cfg, dtype=torch.float64)
    with torch.no_grad():  # non-trivial LayerNorm and bias values as well
        g = torch.Generator().manual_seed(3)
        for p in bridge.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model = StandardTransformer.from_transformer_lens(bridge, m)
    y = _tokens(seed=2)
    torch.testing.assert_close(model(y), bridge(y)[:, m - 1:], rtol=0, atol=TOL64)
    again = model.to_transformer_lens()
    sa, sb = bridge.state_dict(), again.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bridge_per_head_weights():
    """TransformerLens's W_Q[h] ([d_model, d_head]) is head h's slice of our fused qkv projection."""
    model = _model()
    bridge = model.to_transformer_lens()
    D, H = 12, 3
    d = D // H
    for l in range(2):
        attn = model.blocks[l].attn
        W, b = attn.qkv.weight.detach(), attn.qkv.bias.detach()
        tl = bridge.blocks[l].attn
        for i, (Wn, bn) in enumerate([("W_Q", "b_Q"), ("W_K", "b_K"), ("W_V", "b_V")]):
            assert getattr(tl, Wn).shape == (H, D, d)
            for h in range(H):
                rows = slice(i * D + h * d, i * D + (h + 1) * d)
                assert torch.equal(getattr(tl, Wn)[h], W[rows].T)
                assert torch.equal(getattr(tl, bn)[h], b[rows])
        Wo = attn.proj.weight.detach()  # (D, D): column block h is head h's output map
        assert tl.W_O.shape == (H, d, D)
        for h in range(H):
            assert torch.equal(tl.W_O[h], Wo[:, h * d:(h + 1) * d].T)


def _same_names(n_layers):
    """(our hook name, TransformerLens hook name, map from ours to TL's layout)."""
    heads = lambda x: x.transpose(1, 2)  # noqa: E731  ours (B, H, T, d) -> TL (B, T, H, d)
    same = lambda x: x  # noqa: E731
    out = [("hook_embed", "hook_embed", same), ("hook_pos_embed", "hook_pos_embed", lambda x: x[None])]
    for l in range(n_layers):
        p = f"blocks.{l}."
        out += [(p + n, p + n, same) for n in ("hook_resid_pre", "attn.hook_pattern", "hook_attn_out",
                                               "hook_resid_mid", "hook_mlp_out", "hook_resid_post")]
        # ours is the LayerNorm's output (after gain and bias, as HookedTransformer 3's hook_normalized);
        # the bridge's hook_normalized is before gain and bias, its hook_out after
        out += [(p + f"{ln}.hook_normalized", p + f"{ln}.hook_out", same) for ln in ("ln1", "ln2")]
        out += [(p + f"attn.hook_{n}", p + f"attn.hook_{n}", heads) for n in "qkvz"]
        # our attn.hook_scores has no counterpart: in transformer-lens 4.3 the TL-native bridge's
        # attn.hook_attn_scores records the softmaxed pattern (checked below), not the scores
    return out + [("ln_final.hook_normalized", "ln_final.hook_out", same), ("hook_logits", "hook_unembed", same)]


def test_bridge_hooks_and_cache_agree():
    model = _trained()
    bridge = model.to_transformer_lens()
    y = _tokens()
    with torch.no_grad():
        _, ours = model.run_with_cache(y)
        _, theirs = bridge.run_with_cache(y)
    pairs = _same_names(2)
    # every hook of ours but the scores has a TL counterpart
    assert {a for a, _, _ in pairs} == {n for n in ours if not n.endswith("attn.hook_scores")}
    for a, b, to_tl in pairs:
        x = to_tl(ours[a]).expand_as(theirs[b])
        torch.testing.assert_close(x, theirs[b], rtol=0, atol=TOL64, msg=f"{a} vs {b}")
    for l in range(2):
        for ln in ("ln1", "ln2"):  # the bridge's hook_normalized is our LayerNorm output before its affine map
            mod = getattr(model.blocks[l], ln)
            torch.testing.assert_close(theirs[f"blocks.{l}.{ln}.hook_normalized"] * mod.weight + mod.bias,
                                       ours[f"blocks.{l}.{ln}.hook_normalized"], rtol=0, atol=TOL64)
        # the attention patterns, explicitly
        pat = ours[f"blocks.{l}.attn.hook_pattern"]
        assert pat.shape == (B, 3, T, T)
        torch.testing.assert_close(pat, theirs[f"blocks.{l}.attn.hook_pattern"], rtol=0, atol=TOL64)
        torch.testing.assert_close(torch.softmax(ours[f"blocks.{l}.attn.hook_scores"], -1),
                                   theirs[f"blocks.{l}.attn.hook_attn_scores"], rtol=0, atol=TOL64)


def test_bridge_of_a_dropout_model_is_its_eval_mode():
    model = _model(dropout=0.2)
    bridge = model.to_transformer_lens()
    y = _tokens()
    torch.testing.assert_close(bridge(y)[:, m - 1:], model.eval()(y), rtol=0, atol=TOL64)
    back = StandardTransformer.from_transformer_lens(bridge, m, dropout=0.2)
    assert back.config.dropout == 0.2
    _assert_state_equal(model, back)


def test_other_architectures_are_refused_and_would_differ():
    model = _model()
    bridge = model.to_transformer_lens()
    base = dict(d_model=12, n_layers=2, n_heads=3, d_head=4, d_mlp=48, normalization_type="LN", d_vocab=S,
                d_vocab_out=S, n_ctx=24, default_prepend_bos=False, eps=1e-5)
    tanh = boot(TransformerBridgeConfig(act_fn="gelu_new", positional_embedding_type="standard", **base),
                dtype=torch.float64)
    tanh.load_state_dict(bridge.state_dict(), strict=True)
    y = _tokens()
    # the wrong case: the same weights under the tanh GELU give logits that the tolerance tells apart
    assert (tanh(y) - bridge(y)).abs().max() > 1e3 * TOL64
    with pytest.raises(ValueError, match="act_fn"):
        StandardTransformer.from_transformer_lens(tanh, m)
    rot = boot(TransformerBridgeConfig(act_fn="gelu", positional_embedding_type="rotary", **base),
               dtype=torch.float64)
    with pytest.raises(ValueError, match="positional_embedding_type"):
        StandardTransformer.from_transformer_lens(rot, m)
    with pytest.raises(ValueError, match="TransformerBridge"):
        StandardTransformer.from_transformer_lens(model, m)
    with pytest.raises(ValueError, match="m"):
        StandardTransformer.from_transformer_lens(bridge, 100)  # m > max_len = n_ctx
