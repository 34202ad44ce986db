"""Group ``attention``: StandardTransformer forward + backward against the context length T.

One training step's worth of work (forward, cross-entropy, backward; no optimiser) of a
StandardTransformer (3 layers, d_model 64, 4 heads, S = 16, batch 64, float32) at
T = 33, 65, 129, 257, on the fused path (``F.scaled_dot_product_attention``, what ``train`` runs)
and on the explicit path (the (B, H, T, T) matrices formed, as when the pattern is hooked).

The growth exponent is the least-squares slope of log time on log T over the four lengths,
measured in one run with the lengths interleaved round by round (so a load change hits every
length alike), each length's time the best of its rounds. The target: the fused path grows at most
as T^1.3 (the T² attention term is a small part of the work up to T = 257; the explicit path,
whose T² matrices are written, read and differentiated, grows faster). The exponents and the
explicit/fused ratio at T = 257 are in ``extra_info``; pytest-benchmark times the fused step at
T = 257. The measurement runs on one torch thread: the exponent is a property of the work, and on
a shared machine the intra-op thread pool's waits inflate the small lengths most (with the default
threads next to other processes the small-T times were as long as the large ones).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtdmath.nn import StandardTransformer

TS = (33, 65, 129, 257)
B, S, M_ORDER = 64, 16, 2
ROUNDS = 5
TARGET_EXPONENT = 1.3


def _model() -> StandardTransformer:
    return StandardTransformer(S, M_ORDER, n_layers=3, d_model=64, n_heads=4, max_len=max(TS),
                               generator=torch.Generator().manual_seed(0))


def _step(model: StandardTransformer, y: torch.Tensor, explicit: bool) -> None:
    hooks = [(lambda n: n.endswith("attn.hook_pattern"), lambda x, hook: None)] if explicit else []
    logits = model.run_with_hooks(y, fwd_hooks=hooks)[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, S), y[:, M_ORDER:].reshape(-1))
    model.zero_grad(set_to_none=True)
    loss.backward()


def _exponent(times: dict[int, float]) -> float:
    T = np.array(sorted(times), dtype=float)
    return float(np.polyfit(np.log(T), np.log([times[t] for t in sorted(times)]), 1)[0])


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_standard_transformer_step_scaling(benchmark, one_thread):
    model = _model().train()
    gen = torch.Generator().manual_seed(1)
    data = {T: torch.randint(S, (B, T), generator=gen) for T in TS}
    # the fused and the explicit step agree (float32; see tests/test_nn_hooks.py for the bound)
    y = data[TS[0]]
    with torch.no_grad():
        assert (model(y) - model.run_with_hooks(y, fwd_hooks=[(lambda n: n.endswith("hook_pattern"),
                                                             lambda x, hook: None)])).abs().max() < 2e-5
    best = {(T, ex): float("inf") for T in TS for ex in (False, True)}
    for ex in (False, True):  # warm-up: allocator and kernels
        _step(model, data[max(TS)], ex)
    for _ in range(ROUNDS):
        for T in TS:
            for ex in (False, True):
                t0 = time.perf_counter()
                _step(model, data[T], ex)
                best[T, ex] = min(best[T, ex], time.perf_counter() - t0)
    fused = {T: best[T, False] for T in TS}
    explicit = {T: best[T, True] for T in TS}
    k_fused, k_explicit = _exponent(fused), _exponent(explicit)
    ratio = explicit[max(TS)] / fused[max(TS)]
    benchmark.extra_info.update({
        "exponent_fused": round(k_fused, 3), "exponent_explicit": round(k_explicit, 3),
        "explicit_over_fused_at_T257": round(ratio, 3), "target_exponent": TARGET_EXPONENT,
        "best_s_fused": {str(T): round(v, 5) for T, v in fused.items()},
        "best_s_explicit": {str(T): round(v, 5) for T, v in explicit.items()},
        "batch": B, "torch_threads": torch.get_num_threads(),
    })
    print(f"\nStandardTransformer forward+backward, B = {B}, T = {TS}: time ~ T^{k_fused:.2f} fused (SDPA), "
          f"T^{k_explicit:.2f} explicit; explicit/fused at T = {max(TS)}: {ratio:.2f}x")
    benchmark.pedantic(_step, args=(model, data[max(TS)], False), rounds=3, warmup_rounds=1)
    assert k_fused <= TARGET_EXPONENT, (k_fused, fused)
