"""The three-layer MD transformer (docs/math.md §5) and the GPT baseline.

Independent routes: the NumPy core one prefix at a time (tests/prefix_reference.py) for the
outputs and attention maps of the constructed model; ``torch.nn.MultiheadAttention`` for the
attention of the baseline; perturbing future tokens for causality; an optimiser step for
gradient flow.

Tolerances (max abs error against the NumPy core, float64 reference):
- float64: 1e-10. Observed errors are ~1e-13 (rounding of sums of ≤ 64 responsibilities,
  amplified by η/μ in the layer-3 exponent); 1e-10 leaves room for η up to 10.
- float32: 1e-5. The layer-3 weights are ``softmax(log μ + η G/μ)``, so a rounding error δG of
  the float32 sum G (≈ T·6e-8) moves the output by about ``(η/μ_min)·δG``. This is the
  conditioning of the problem in float32, not of the implementation: at η/μ_min ≈ 200 any
  float32 evaluation is off by ~4e-5 at T = 64. The float32 property therefore draws η with
  ``η/μ_min <= 20`` — which contains the Bayes step η* = 1/(1+α₀) for every alpha >= 0.05
  (``η*/μ_g = α₀/((1+α₀)α_g) < 1/α_g``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, target
from hypothesis import strategies as st

import mtdmath
from mtdmath.nn import MDTransformer, StandardTransformer
from prefix_reference import numpy_prefix_md
from strategies import icl_batches

def _probs_attn(model, y):
    """Predictive law (B, T-m+1, S) and each layer's head-averaged pattern (B, T, T), read through the hooks."""
    logits, c = model.run_with_cache(y, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    return torch.softmax(logits, -1), [v.mean(1) for v in c.values()]


# these tensors are small: thread start-up costs more than it saves on a shared 2-core machine
torch.set_num_threads(1)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def _nll(model, y: torch.Tensor) -> torch.Tensor:
    """Summed NLL of tokens[:, m:] on rows 0 … T-m-1 (the last row predicts beyond the sequence)."""
    lp = model.log_probs(y)[:, :-1]  # (B, T-m, S)
    return -lp.gather(2, y[:, model.m:, None]).sum()


# ----------------------------------------------------------------------------- constructed model vs NumPy
#: cap on κ = η·n/μ_min, the conditioning of the layer-3 exponent (module docstring)
KAPPA = {torch.float64: 1e5, torch.float32: 100.0}


@st.composite
def etas(draw, alpha, n, kappa):
    """None (the Bayes step η* = 1/(1+α₀)) or η in [0, 10], both with η·max(n,1)/μ_min <= kappa."""
    mu_min = float(np.min(alpha) / np.sum(alpha))
    cap = kappa * mu_min / max(n, 1)
    if 1.0 / (1.0 + np.sum(alpha)) <= cap and draw(st.booleans()):
        return None
    return draw(st.floats(0.0, 1.0)) * min(10.0, cap)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
@given(data=st.data())
def test_construct_equals_numpy_one_step_md(dtype, tol, data):
    tokens, pi, alpha = data.draw(icl_batches())
    eta = data.draw(etas(alpha, tokens.shape[1] - alpha.shape[0], KAPPA[dtype]))
    model = MDTransformer.construct(pi, alpha, eta=eta, dtype=dtype)
    y = torch.as_tensor(tokens) if data.draw(st.booleans()) else tokens
    probs = torch.softmax(model(y), -1)
    _, want = numpy_prefix_md(tokens, pi, alpha, eta=eta)
    assert probs.dtype == dtype and probs.shape == want.shape
    err = np.abs(_np(probs) - want).max()
    err_log = np.abs(np.exp(_np(model.log_probs(y))) - want).max()
    target(max(err, err_log), label=f"{dtype} max abs error")
    assert err <= tol
    assert err_log <= tol


# ----------------------------------------------------------------------------- attention maps
@given(st.data())
def test_attention_maps_mean_what_section_5_says(data):
    tokens, pi, alpha = data.draw(icl_batches(max_T=40))
    eta = data.draw(etas(alpha, tokens.shape[1] - alpha.shape[0], KAPPA[torch.float64]))
    B, T = tokens.shape
    m = alpha.shape[0]
    mu = alpha / alpha.sum()
    _, (A1, A2, A3) = _probs_attn(MDTransformer.construct(pi, alpha, eta=eta), tokens)
    A1, A2, A3 = _np(A1), _np(A2), _np(A3)
    lam1, _ = numpy_prefix_md(tokens, pi, alpha, eta=eta)  # (B, T-m+1, m)

    # expected dense maps, built entry by entry from the NumPy core
    E1 = np.zeros((B, T, T))
    E3 = np.zeros((B, T, T))
    for b in range(B):
        gam = mtdmath.responsibilities(mu, mtdmath.lag_factors(tokens[b], pi, m))  # (T-m, m)
        for t in range(m, T):
            for g in range(1, m + 1):
                E1[b, t, t - g] = gam[t - m, g - 1]  # r_t = γ_{t-m}
        for t in range(m - 1, T):
            for g in range(1, m + 1):
                E3[b, t, t + 1 - g] = lam1[b, t - m + 1, g - 1]  # lag g = t+1-s
    assert np.abs(A1 - E1).max() <= 1e-10
    assert np.abs(A3 - E3).max() <= 1e-10
    # masked entries (outside the window, undefined rows) are exactly 0
    assert np.all(A1[E1 == 0] == 0) and np.all(A1[:, :m] == 0)
    assert np.all(A3[E3 == 0] == 0) and np.all(A3[:, : m - 1] == 0)
    # defined rows sum to 1
    np.testing.assert_allclose(A1[:, m:].sum(-1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(A3[:, m - 1:].sum(-1), 1.0, rtol=0, atol=1e-12)
    # layer 2: unnormalised causal weights, 1 for s <= t
    assert np.array_equal(A2, np.broadcast_to(np.tril(np.ones((T, T))), (B, T, T)))


# ----------------------------------------------------------------------------- zeros in pi
@given(st.data())
def test_zero_entries_of_pi_are_masked_not_nan(data):
    tokens, pi, alpha = data.draw(icl_batches(zeros=True))
    eta = data.draw(etas(alpha, tokens.shape[1] - alpha.shape[0], KAPPA[torch.float64]))
    m = alpha.shape[0]
    model = MDTransformer.construct(pi, alpha, eta=eta)
    y = torch.as_tensor(tokens)
    probs, (A1, _, _) = _probs_attn(model, y)
    _, want = numpy_prefix_md(tokens, pi, alpha, eta=eta)
    assert np.abs(_np(probs) - want).max() <= 1e-10
    # a key whose transition has probability 0 gets weight exactly 0
    zero_pi = pi[tokens[:, None, :], tokens[:, :, None]] == 0  # [b, t, s] = (pi[y_s, y_t] == 0)
    assert np.all(_np(A1)[zero_pi] == 0)
    # W1 = log pi with -inf exactly at the zeros
    W1 = _np(model.W1)
    assert np.array_equal(np.isneginf(W1), pi == 0)
    np.testing.assert_allclose(W1[pi > 0], np.log(pi[pi > 0]), rtol=1e-15, atol=0)
    # log-probabilities: -inf exactly where the probability is 0, and the NLL has finite gradients
    lp = model.log_probs(y)
    # the law is exactly 0 where no lag's source row of pi reaches the token (the float64 reference
    # can also underflow to 0 where the law is e^-700 or so, which log space keeps finite)
    src = np.lib.stride_tricks.sliding_window_view(tokens, m, axis=1)  # (B, T-m+1, m) sources of each row
    exact_zero = np.all(pi[src] == 0, axis=2)  # (B, T-m+1, S)
    assert np.array_equal(np.isneginf(_np(lp)), exact_zero)
    assert np.all(want[exact_zero] == 0)
    assert not torch.isnan(lp).any()
    loss = _nll(model, y)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_impossible_transition_raises_naming_tokens():
    pi = np.array([[1.0, 0.0], [0.5, 0.5]])
    model = MDTransformer.construct(pi, [1.0, 2.0])
    # 0 -> 0 -> 1: y[2] = 1 has pi[y[1], 1] = pi[0, 1] = 0 and pi[y[0], 1] = 0: no lag explains it
    with pytest.raises(ValueError, match="tokens"):
        model(np.array([[0, 0, 1]]))
    with pytest.raises(ValueError, match="tokens"):
        model.log_probs(np.array([[0, 0, 1]]))
    # one lag explains it: fine, and it gets all the weight
    probs, (A1, _, _) = _probs_attn(model, np.array([[1, 0, 1]]))
    assert A1[0, 2, 0] == 1.0 and A1[0, 2, 1] == 0.0  # lag 2 (key y[0] = 1) explains it
    assert torch.isfinite(probs).all()


def test_W1_softmax_over_keys_is_column_normalised_pi():
    # the identifiable part of W1 (docs/math.md §5): softmax over the key axis = pi normalised per column
    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(6, rng=rng)
    W1 = MDTransformer.construct(pi, [0.5, 1.0, 3.0]).W1
    np.testing.assert_allclose(_np(torch.softmax(W1, dim=0)), pi / pi.sum(axis=0), rtol=1e-14)
    assert MDTransformer(6, 3).W1.shape == (6, 6)


def test_construct_accepts_tensor_pi_dtype_and_device():
    rng = np.random.default_rng(1)
    pi = mtdmath.random_transition_matrix(4, rng=rng)
    alpha = np.array([0.3, 2.0])
    tokens = mtdmath.sample_icl(pi, alpha, 12, 2, rng=rng)[0]
    a = MDTransformer.construct(pi, alpha)(tokens)
    b = MDTransformer.construct(torch.tensor(pi), torch.tensor(alpha), device="cpu")(torch.tensor(tokens))
    c = MDTransformer.construct(torch.tensor(pi, dtype=torch.float32), alpha, dtype=torch.float32)(tokens)
    assert a.dtype == torch.float64 and c.dtype == torch.float32 and b.device.type == "cpu"
    assert torch.equal(a, b)
    assert np.abs(_np(c) - _np(a)).max() <= 1e-5


# ----------------------------------------------------------------------------- contract of both models
def _models(S, m, dtype=torch.float64, seed=0):
    g = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    return [
        MDTransformer(S, m, dtype=dtype, generator=g()),
        StandardTransformer(S, m, n_layers=2, d_model=16, n_heads=4, max_len=32, generator=g(), dtype=dtype),
    ]


@pytest.mark.parametrize("kind", [0, 1], ids=["md", "standard"])
def test_contract_shapes_rows_and_causality(kind):
    S, m, B, T = 5, 3, 3, 20
    model = _models(S, m)[kind]
    rng = np.random.default_rng(2)
    y = rng.integers(0, S, size=(B, T))
    probs, attn = _probs_attn(model, y)
    assert probs.shape == (B, T - m + 1, S) and probs.dtype == torch.float64
    np.testing.assert_allclose(_np(probs).sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(_np(model.log_probs(y)), np.log(_np(probs)), rtol=0, atol=1e-12)
    assert len(attn) == (3 if kind == 0 else 2)
    for A in attn:
        assert A.shape == (B, T, T)
        assert np.all(np.triu(_np(A), k=1) == 0)  # causal: no weight on future keys
    # causality, functionally: row r (prefix y[:m+r]) does not move when y[m+r:] changes
    for k in (m, 9, T - 1):
        y2 = y.copy()
        y2[:, k:] = (y[:, k:] + 1) % S
        p2 = _np(torch.softmax(model(y2), -1))
        np.testing.assert_allclose(p2[:, : k - m + 1], _np(probs)[:, : k - m + 1], rtol=0, atol=1e-12)
        assert np.abs(p2[:, k - m + 1] - _np(probs)[:, k - m + 1]).max() > 1e-6  # row of prefix y[:k+1] moves


def test_standard_attention_is_head_averaged_causal_attention():
    # independent route: torch.nn.MultiheadAttention with the same weights returns the
    # head-averaged weights and the same attention output
    S, m, B, T, D, H = 5, 2, 2, 11, 16, 4
    model = StandardTransformer(S, m, n_layers=2, d_model=D, n_heads=H, max_len=16,
                                generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.as_tensor(np.random.default_rng(3).integers(0, S, size=(B, T)))
    _, attn = _probs_attn(model, y)
    blk = model.blocks[0]
    mha = torch.nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(blk.attn.qkv.weight)
        mha.in_proj_bias.copy_(blk.attn.qkv.bias)
        mha.out_proj.weight.copy_(blk.attn.proj.weight)
        mha.out_proj.bias.copy_(blk.attn.proj.bias)
    x0 = blk.ln1(model.tok_emb(y) + model.pos_emb(torch.arange(T)))
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    out, w = mha(x0, x0, x0, attn_mask=future, need_weights=True, average_attn_weights=True)
    np.testing.assert_allclose(_np(attn[0]), _np(w), rtol=0, atol=1e-14)
    np.testing.assert_allclose(_np(blk.attn(x0)), _np(out), rtol=0, atol=1e-14)  # the fused (SDPA) path


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", [0, 1], ids=["md", "standard"])
def test_one_optimiser_step_lowers_the_loss(kind, seed):
    S, m, B, T = 6, 3, 8, 24
    pi = mtdmath.random_transition_matrix(S, rng=seed)
    tokens = torch.as_tensor(mtdmath.sample_icl(pi, [0.5, 1.0, 2.0], T, B, rng=seed)[0])
    model = _models(S, m, dtype=torch.float32, seed=seed)[kind]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss0 = _nll(model, tokens)
    opt.zero_grad()
    loss0.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if kind == 0:  # every weight of the 3-layer model is used (m = 3 > 1)
            assert p.grad.abs().max() > 0, name
    opt.step()
    with torch.no_grad():
        loss1 = _nll(model, tokens)
    assert loss1 < loss0


def test_log_probs_stay_finite_when_probabilities_underflow():
    # a learned model with extreme value logits: forward probabilities underflow to 0 in
    # float32, the log-space path stays finite and equals log p where p is representable
    model = MDTransformer(4, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.mirror_step.attn.value_logits.copy_(torch.tensor([0.0, -200.0, -50.0, -10.0]).expand(4, 4))
    y = np.random.default_rng(0).integers(0, 4, size=(2, 10))
    probs, lp = torch.softmax(model(y), -1), model.log_probs(y)
    assert (probs == 0).any()
    assert torch.isfinite(lp).all()
    pos = _np(probs) > 1e-30
    # float32 rounding of p costs ~1e-7 absolute in log p near 0, ~1e-7 relative for large |log p|
    np.testing.assert_allclose(_np(lp)[pos], np.log(_np(probs)[pos]), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kind", [0, 1], ids=["md", "standard"])
@pytest.mark.parametrize(
    "tokens",
    [
        np.array([[0, 1, 3, 1]]),  # out of range
        np.array([[0, -1, 2, 1]]),
        np.array([[0.0, 1.0, 2.0, 1.0]]),  # float dtype
        torch.tensor([[0.0, 1.0, 2.0, 1.0]]),
        torch.tensor([[True, False, True]]),
        np.array(1),  # a scalar (one sequence (T,) is accepted: tests/test_surface.py)
        np.zeros((1, 2, 4), dtype=np.int64),  # 3-D
        np.array([[0, 1]]),  # T < m
        [[0, 1, "a"]],
    ],
    ids=["high", "negative", "float-np", "float-torch", "bool", "0d", "3d", "short", "strings"],
)
def test_bad_tokens_raise(kind, tokens):
    model = _models(3, 3)[kind]
    for call in (model, model.log_probs):
        with pytest.raises(ValueError, match="tokens"):
            call(tokens)


def test_standard_rejects_context_longer_than_max_len():
    model = StandardTransformer(3, 1, max_len=8)
    with pytest.raises(ValueError, match="tokens"):
        model(np.zeros((1, 9), dtype=np.int64))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(pi=[[0.5, 0.6], [0.5, 0.5]]), "pi"),
        (dict(pi=[[1.5, -0.5], [0.5, 0.5]]), "pi"),
        (dict(pi=[[0.5, 0.5, 0.0]]), "pi"),
        (dict(pi=[[np.nan, 1.0], [0.5, 0.5]]), "pi"),
        (dict(alpha=[1.0, -1.0]), "alpha"),
        (dict(alpha=[1.0, 0.0]), "alpha"),
        (dict(alpha=[[1.0, 2.0]]), "alpha"),
        (dict(alpha=[np.inf, 1.0]), "alpha"),
        (dict(eta=-0.1), "eta"),
        (dict(eta=np.nan), "eta"),
        (dict(eta=[0.1, 0.2]), "eta"),
        (dict(eta="x"), "eta"),
    ],
)
def test_construct_bad_arguments_raise(kwargs, name):
    args = dict(pi=[[0.5, 0.5], [0.2, 0.8]], alpha=[1.0, 2.0]) | kwargs
    with pytest.raises(ValueError, match=name):
        MDTransformer.construct(**args)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: MDTransformer(0, 2), "S"),
        (lambda: MDTransformer(3, 0), "m"),
        (lambda: MDTransformer(3.0, 2), "S"),
        (lambda: StandardTransformer(3, 0), "m"),
        (lambda: StandardTransformer(3, 2, d_model=10, n_heads=4), "d_model"),
        (lambda: StandardTransformer(3, 2, n_layers=0), "n_layers"),
        (lambda: StandardTransformer(3, 2, dropout=1.5), "dropout"),
        (lambda: StandardTransformer(3, 5, max_len=4), "max_len"),
    ],
)
def test_bad_model_arguments_raise(make, name):
    with pytest.raises(ValueError, match=name):
        make()


# ----------------------------------------------------------------------------- CUDA parity
@CUDA
def test_cuda_parity_constructed_and_random_models():
    rng = np.random.default_rng(4)
    pi = mtdmath.random_transition_matrix(7, rng=rng)
    pi[pi < 0.05] = 0.0
    pi /= pi.sum(axis=1, keepdims=True)
    alpha = np.array([0.2, 1.0, 4.0])
    tokens = mtdmath.sample_icl(pi, alpha, 64, 4, rng=rng)[0]
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        cpu, gpu = (MDTransformer.construct(pi, alpha, dtype=dtype, device=d) for d in ("cpu", "cuda"))
        (pc, ac), (pg, ag) = _probs_attn(cpu, tokens), _probs_attn(gpu, tokens)
        assert pg.device.type == "cuda"
        assert np.abs(_np(pc) - _np(pg)).max() <= tol
        assert np.abs(_np(cpu.log_probs(tokens)) - _np(gpu.log_probs(tokens))).max() <= 10 * tol
        for a, b in zip(ac, ag):
            assert np.abs(_np(a) - _np(b)).max() <= tol
    for kind in (0, 1):  # same CPU generator -> same weights on both devices
        cpu = _models(7, 3, dtype=torch.float64, seed=5)[kind]
        gpu = _models(7, 3, dtype=torch.float64, seed=5)[kind].to("cuda")
        y = torch.as_tensor(tokens[:, :32])
        assert np.abs(_np(cpu(y)) - _np(gpu(y.cuda()))).max() <= 1e-12


def test_size_checks_cover_every_dimension_before_allocating():
    # each would need terabytes: refused before any allocation, naming the dimension that dominates
    for make, name in ((lambda: MDTransformer(5, 10**6), "m"), (lambda: MDTransformer(10**6, 2), "S"),
                       (lambda: StandardTransformer(5, 2, max_len=10**11, d_model=8, n_heads=2), "max_len"),
                       (lambda: StandardTransformer(5, 2, d_model=10**6, n_heads=1), "d_model")):
        with pytest.raises(ValueError, match=rf"^{name}: .*GiB"):
            make()
    model = MDTransformer(3, 2)
    with pytest.raises(ValueError, match=r"^tokens: .*\(B, T, T\)"):
        model(torch.zeros(1, 10**6, dtype=torch.int64))
