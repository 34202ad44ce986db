"""Conversion between :class:`~mtdmath.nn.StandardTransformer` and a TransformerLens model.

TransformerLens 4 removed ``HookedTransformer``; its replacement for a model built from a
config (no Hugging Face weights) is ``TransformerBridge`` around the TL-native architecture
(``transformer_lens.model_bridge.sources.native.boot``). That architecture is the same
function as :class:`StandardTransformer` when configured as below: learned absolute position
embeddings, pre-LayerNorm blocks (``nn.LayerNorm``, eps 1e-5, with gain and bias), causal
multi-head softmax attention scaled by ``1/sqrt(d_head)`` with biases on Q, K, V and O, an MLP
of width ``4·d_model`` with the exact (erf) GELU, a final LayerNorm and an untied unembedding
with a bias. TransformerLens has no dropout: the bridge equals the model in ``eval()`` mode.

The weights map one to one (the bridge keeps ``nn.Linear`` layouts; its ``W_Q`` property is the
per-head view ``[n_heads, d_model, d_head]``): ``attn.qkv`` splits into ``attn.q / k / v``,
``attn.proj`` is ``attn.o``, ``mlp.0 / mlp.2`` are ``mlp.in / mlp.out``, ``tok_emb / pos_emb``
are ``embed / pos_embed``, ``head`` is ``unembed``. The bridge's logits cover every position;
``StandardTransformer`` returns positions ``m-1 … T-1``, i.e. ``bridge(tokens)[:, m-1:]``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

# (key in StandardTransformer.state_dict(), key in the bridge's state_dict()) outside the blocks
_OUTER = (("tok_emb.weight", "embed.weight"), ("pos_emb.weight", "pos_embed.weight"),
          ("ln_final.weight", "ln_final.weight"), ("ln_final.bias", "ln_final.bias"),
          ("head.weight", "unembed.weight"), ("head.bias", "unembed.bias"))
# the same inside block l (attn.qkv is split into q, k, v separately)
_BLOCK = (("ln1.weight", "ln1.weight"), ("ln1.bias", "ln1.bias"), ("attn.proj.weight", "attn.o.weight"),
          ("attn.proj.bias", "attn.o.bias"), ("ln2.weight", "ln2.weight"), ("ln2.bias", "ln2.bias"),
          ("mlp.0.weight", "mlp.in.weight"), ("mlp.0.bias", "mlp.in.bias"),
          ("mlp.2.weight", "mlp.out.weight"), ("mlp.2.bias", "mlp.out.bias"))

#: What the TL-native config must say for the bridge to be a StandardTransformer (field, value).
_FIXED = {"normalization_type": "LN", "positional_embedding_type": "standard", "act_fn": "gelu",
          "attention_dir": "causal", "attn_only": False, "gated_mlp": False, "final_rms": False,
          "parallel_attn_mlp": False, "eps": 1e-5}


def import_lens() -> Any:
    try:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge.sources.native import boot
    except ImportError as err:  # the optional extra is missing
        raise ImportError("the TransformerLens bridge needs the optional extra: pip install 'mtdmath[lens]' "
                          f"(transformer-lens>=4.3) ({err})") from err
    return TransformerBridgeConfig, boot


def to_bridge(model: Any) -> Any:
    """The TransformerLens ``TransformerBridge`` computing ``model``'s logits at every position."""
    TransformerBridgeConfig, boot = import_lens()
    c = model.config
    ref = model.head.weight
    cfg = TransformerBridgeConfig(
        d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads, d_head=c.d_model // c.n_heads,
        d_mlp=4 * c.d_model, d_vocab=c.S, d_vocab_out=c.S, n_ctx=c.max_len, default_prepend_bos=False,
        use_attn_scale=True, attn_scale=-1.0,  # -1: divide the scores by sqrt(d_head), as StandardTransformer
        **_FIXED)
    bridge = boot(cfg, dtype=ref.dtype, device=ref.device)
    sd = model.state_dict()
    out = {new: sd[old] for old, new in _OUTER}
    D = c.d_model
    for l in range(c.n_layers):
        out |= {f"blocks.{l}.{new}": sd[f"blocks.{l}.{old}"] for old, new in _BLOCK}
        for i, name in enumerate("qkv"):  # rows [i·D, (i+1)·D) of qkv produce q, k, v
            out[f"blocks.{l}.attn.{name}.weight"] = sd[f"blocks.{l}.attn.qkv.weight"][i * D:(i + 1) * D]
            out[f"blocks.{l}.attn.{name}.bias"] = sd[f"blocks.{l}.attn.qkv.bias"][i * D:(i + 1) * D]
    bridge.load_state_dict(out, strict=True)
    return bridge.eval()


def check_bridge(bridge: Any, m: int) -> Any:
    """Refuse a bridge that is not a StandardTransformer (the message names ``model``)."""
    cfg = getattr(bridge, "cfg", None)
    if cfg is None or not callable(getattr(bridge, "state_dict", None)):
        raise ValueError(f"model must be a transformer_lens TransformerBridge (got {type(bridge).__name__})")
    if getattr(cfg, "architecture", None) != "TransformerLensNative":
        raise ValueError(f"model must be a TL-native TransformerBridge (transformer_lens.model_bridge.sources."
                         f"native.boot); got architecture {getattr(cfg, 'architecture', None)!r}")
    wrong = {k: getattr(cfg, k, None) for k, v in _FIXED.items() if getattr(cfg, k, None) != v}
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        wrong["d_head"] = cfg.d_head
    if cfg.d_mlp != 4 * cfg.d_model:
        wrong["d_mlp"] = cfg.d_mlp
    if cfg.d_vocab_out not in (-1, cfg.d_vocab):
        wrong["d_vocab_out"] = cfg.d_vocab_out
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        wrong["n_key_value_heads"] = cfg.n_key_value_heads
    if not cfg.use_attn_scale or (cfg.attn_scale > 0 and not math.isclose(cfg.attn_scale, math.sqrt(cfg.d_head))):
        wrong["attn_scale"] = cfg.attn_scale
    for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if getattr(cfg, cap, -1.0) > 0:
            wrong[cap] = getattr(cfg, cap)
    if wrong:
        raise ValueError(f"model is not a StandardTransformer: its config has {wrong} (a StandardTransformer has "
                         f"{_FIXED}, d_head = d_model/n_heads, d_mlp = 4·d_model, an untied unembedding of the "
                         f"same vocabulary, attention scaled by 1/sqrt(d_head), no soft caps)")
    return cfg


def from_bridge(cls: type, bridge: Any, m: int, dropout: float) -> Any:
    """The ``cls`` (StandardTransformer) with ``bridge``'s weights."""
    cfg = check_bridge(bridge, m)
    sd = bridge.state_dict()
    ref = sd["unembed.weight"]
    model = cls(cfg.d_vocab, m, n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                max_len=cfg.n_ctx, dropout=dropout, dtype=ref.dtype, device=ref.device)
    out = {old: sd[new] for old, new in _OUTER}
    for l in range(cfg.n_layers):
        out |= {f"blocks.{l}.{old}": sd[f"blocks.{l}.{new}"] for old, new in _BLOCK}
        for part in ("weight", "bias"):
            out[f"blocks.{l}.attn.qkv.{part}"] = torch.cat([sd[f"blocks.{l}.attn.{n}.{part}"] for n in "qkv"])
    model.load_state_dict(out, strict=True)
    return model
