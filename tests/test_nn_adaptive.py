"""The context-adaptive MDTransformer (aggregation="softmax_sink", docs/math.md §5.6) and its probes.

Independent routes: one MD step per prefix through the NumPy core (``mirror_descent`` from μ on
``lag_factors(y[:m+r])`` with the step c/(n+m+a), then ``predictive``), and the vectorised core
``md_predictive_all_prefixes`` with a per-prefix step (a function of n and a (1, T-m+1) array);
the layer-2 weights against the closed forms 1/(t+1+a) and a/(t+1+a); a wrong step c/(n+a) that
must differ; the fitted (c, a) against the values used to build the data and the delta-method
standard errors against a Monte Carlo spread.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import mtdmath

torch = pytest.importorskip("torch")
from mtdmath.nn import (MD_CACHE_NAMES, MD_SINK_CACHE_NAMES, MDTransformer, adaptive_params, fit_adaptive_step,  # noqa: E402
                        load_checkpoint, matched_step, model_from_spec, parse_model_spec, save_checkpoint, spec_name,
                        step_by_n)

torch.set_num_threads(1)


def _task(m: int, seed: int, S: int = 6, zeros: bool = False):
    rng = np.random.default_rng(seed)
    pi = mtdmath.random_transition_matrix(S, concentration=0.5, rng=rng)
    if zeros:  # a zero per row, away from the diagonal, keeps every transition possible under some lag
        pi[np.arange(S), (np.arange(S) + 2) % S] = 0.0
        pi /= pi.sum(1, keepdims=True)
    alpha = rng.uniform(0.5, 3.0, m)
    y, _ = mtdmath.sample_icl(pi, alpha, 30, 5, rng=rng)
    return pi, alpha, y


def _md_per_prefix(y, pi, alpha, step):
    """Route 1: one MD step from μ at every prefix y[:m+r] (n = r transitions) with step(n), (B, T-m+1, S)."""
    m = alpha.shape[0]
    mu = alpha / alpha.sum()
    rows = []
    for r in range(y.shape[1] - m + 1):
        C = mtdmath.lag_factors(y[:, :m + r], pi, m)
        lam = mtdmath.mirror_descent(C, eta=step(r), steps=1, lam0=mu)
        rows.append(mtdmath.predictive(lam, y[:, :m + r], pi))
    return np.stack(rows, axis=1)


def _probs(model, y):
    with torch.no_grad():
        return torch.softmax(model(torch.as_tensor(y)), -1).numpy()


CASES = [(2, 2.0, 3.0, False), (3, 0.8, 0.0, False), (5, 4.0, 11.5, True), (2, 1.5, None, True), (3, None, 2.5, False)]


@pytest.mark.parametrize("m, c, a, zeros", CASES)
def test_softmax_sink_is_one_md_step_with_the_adaptive_step_at_every_prefix(m, c, a, zeros):
    pi, alpha, y = _task(m, seed=m + (7 if zeros else 0), zeros=zeros)
    c_, a_ = adaptive_params(alpha, c=c, a=a)
    model = MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=c, a=a)
    got = _probs(model, y)
    want = _md_per_prefix(y, pi, alpha, lambda n: c_ / (n + m + a_))
    # both routes evaluate the same softmax in float64 (~1e-16 relative); 1e-10 leaves room for the
    # different summation orders of a few hundred terms, far below any modelling difference
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
    # the vectorised core with a per-prefix step: a function of n, and the (1, T-m+1) array
    f = mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=lambda n: c_ / (n + m + a_), steps=1)
    np.testing.assert_allclose(got, f, rtol=1e-10, atol=0)
    arr = (c_ / (np.arange(y.shape[1] - m + 1) + m + a_))[None]
    np.testing.assert_allclose(got, mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=arr, steps=1), rtol=1e-10, atol=0)
    # a wrong candidate, the step without the m in its denominator, must differ
    wrong = _md_per_prefix(y, pi, alpha, lambda n: c_ / (n + a_) if n + a_ > 0 else 10.0 * c_)
    assert np.abs(got - wrong).max() > 1e-3


def test_default_sink_makes_the_first_step_bayes_consistent():
    alpha = np.array([1.0, 2.0, 0.5])
    c, a = adaptive_params(alpha, c=2.0)
    assert a == pytest.approx(2.0 * (1 + alpha.sum()) - 3, rel=1e-15)
    assert c / (0 + 3 + a) == pytest.approx(mtdmath.eta_bayes(alpha), rel=1e-14)  # η(0) = η*
    c2, a2 = adaptive_params(alpha, a=4.0)
    assert c2 / (3 + a2) == pytest.approx(mtdmath.eta_bayes(alpha), rel=1e-14)
    c3, a3 = adaptive_params(alpha)
    assert a3 == 0.0 and c3 / 3 == pytest.approx(mtdmath.eta_bayes(alpha), rel=1e-14)


@pytest.mark.parametrize("a", [0.0, 0.37, 25.0])
def test_layer2_weights_are_exactly_one_over_t_plus_one_plus_a(a):
    pi, alpha, y = _task(2, seed=3)
    model = MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=1.2, a=a)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.as_tensor(y))
    assert list(cache) == list(MD_SINK_CACHE_NAMES)
    B, T = y.shape
    t = np.arange(T)[:, None]
    s = np.arange(T)[None, :]
    want = np.where(s <= t, 1.0 / (t + 1 + a), 0.0)
    pat = cache["blocks.1.attn.hook_pattern"].numpy()
    sink = cache["blocks.1.attn.hook_sink"].numpy()
    assert pat.shape == (B, 1, T, T) and sink.shape == (B, 1, T)
    # a softmax of T+1 terms in float64: ~1e-16 per entry
    np.testing.assert_allclose(pat, np.broadcast_to(want, pat.shape), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sink, np.broadcast_to(a / (np.arange(T) + 1 + a), sink.shape), rtol=0, atol=1e-12)
    if a == 0:
        assert np.all(sink == 0.0) and np.isneginf(cache["blocks.1.attn.hook_scores"].numpy()[..., 0]).all()
    np.testing.assert_allclose(pat.sum(-1) + sink, 1.0, atol=1e-12)
    r = cache["blocks.0.hook_r"].numpy()
    np.testing.assert_allclose(cache["blocks.1.hook_G"].numpy(), np.cumsum(r, axis=1) / (np.arange(T)[:, None] + 1 + a),
                               rtol=1e-12, atol=1e-15)


def test_gradients_are_finite_learnable_and_constructed():
    pi, alpha, y = _task(3, seed=5, zeros=True)
    yt = torch.as_tensor(y)
    learn = MDTransformer(6, 3, aggregation="softmax_sink", dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    built = MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=1.0, a=0.0)
    built2 = MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=1.0, a=3.0)
    for model in (learn, built, built2):
        model.zero_grad()
        loss = -model.log_probs(yt)[:, :-1].gather(2, yt[:, 3:, None]).mean()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert float(learn.sink_logit.grad.abs()) > 0  # the sink score is learned
    assert float(built2.sink_logit.grad.abs()) > 0
    assert float(built.sink_logit.grad) == 0.0  # a = 0: the sink is masked out, no gradient reaches it
    # log_probs is the log of forward
    np.testing.assert_allclose(built2.log_probs(yt).exp().detach().numpy(), _probs(built2, y), rtol=1e-12, atol=1e-300)


def test_the_sum_model_is_unchanged():
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    plain, sink = MDTransformer(5, 2, generator=gen()), MDTransformer(5, 2, aggregation="softmax_sink", generator=gen())
    # the sum model has no new parameter or buffer; the sink model draws the same layer-1/3 weights
    l1, l3 = "blocks.0.attn.", "blocks.2.attn."
    assert set(plain.state_dict()) == {l1 + "token_score", l1 + "lag_bias", l1 + "lag_value", l3 + "q_bias", l3 + "w_q",
                                       l3 + "lag_key", l3 + "value_logits", "pi_zero"}
    assert set(sink.state_dict()) - set(plain.state_dict()) == {"blocks.1.attn.sink_logit", "blocks.1.attn.sink_off"}
    for k, v in plain.state_dict().items():
        assert torch.equal(v, sink.state_dict()[k]), k
    pi, alpha, y = _task(2, seed=1)
    model = MDTransformer.construct(pi, alpha)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.as_tensor(y))
    assert list(cache) == list(MD_CACHE_NAMES)
    np.testing.assert_allclose(_probs(model, y), mtdmath.md_predictive_all_prefixes(y, pi, alpha), rtol=1e-10, atol=0)


def test_construct_and_init_validate_their_arguments():
    pi, alpha, _ = _task(2, seed=0)
    with pytest.raises(ValueError, match=r"^c: .*|c must be > 0"):
        MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=0.0)
    with pytest.raises(ValueError, match=r"\bc\b.*a = c\(1\+α₀\) - m .* < 0"):
        MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=0.1)  # 0.1·(1+α₀) < m
    with pytest.raises(ValueError, match=r"\ba must be >= 0"):
        MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=1.0, a=-0.5)
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match=r"\ba must be finite"):
            MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=1.0, a=bad)
        with pytest.raises(ValueError, match=r"\bc must be finite"):
            MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=bad)
    with pytest.raises(ValueError, match=r"\bc sets the context-adaptive step"):
        MDTransformer.construct(pi, alpha, c=1.0)
    with pytest.raises(ValueError, match=r"\beta is the constant step"):
        MDTransformer.construct(pi, alpha, aggregation="softmax_sink", eta=0.2, c=1.0)
    for bad in ("softmax", "SUM", 3, None):
        with pytest.raises(ValueError, match=r"\baggregation must be one of"):
            MDTransformer(3, 2, aggregation=bad)
        if bad is None:  # construct's default: "sum", or the aggregation a step law (eta="predicted") needs
            assert MDTransformer.construct(pi, alpha, aggregation=None).aggregation == "sum"
            continue
        with pytest.raises(ValueError, match=r"\baggregation must be one of"):
            MDTransformer.construct(pi, alpha, aggregation=bad)
    with pytest.raises(ValueError, match="sink_weight"):
        _ = MDTransformer.construct(pi, alpha).sink_weight
    assert MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=2.0, a=0.0).sink_weight == 0.0
    assert MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=2.0, a=1.5).sink_weight == pytest.approx(1.5)


def test_specs_and_checkpoint_round_trip(tmp_path):
    assert parse_model_spec("mdsink") == ("md", {"aggregation": "softmax_sink"})
    assert parse_model_spec("md:agg=softmax_sink") == ("md", {"aggregation": "softmax_sink"})
    assert parse_model_spec("md:agg=sum") == ("md", {})
    assert spec_name("mdsink") == "mdsink" and spec_name("md") == "md"
    model = model_from_spec("mdsink", 5, 2, max_len=12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert isinstance(model, MDTransformer) and model.aggregation == "softmax_sink" and spec_name(model) == "mdsink"
    pi, alpha, y = _task(2, seed=2, S=5)
    for mdl in (model, MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=1.0, a=0.0)):
        path = save_checkpoint(tmp_path / "s.ckpt", mdl)
        back, info = load_checkpoint(path)
        assert info["config"]["aggregation"] == "softmax_sink" and back.aggregation == "softmax_sink"
        assert torch.equal(_t(back, y), _t(mdl, y))  # bit for bit, incl. the sink_off mask


def _t(model, y):
    with torch.no_grad():
        return model(torch.as_tensor(y))


# ----------------------------------------------------------------------------- probes
def test_step_by_n_and_matched_step_recover_the_adaptive_step():
    pi, alpha, y = _task(3, seed=9)
    c, a = 1.7, 4.2
    model = MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=c, a=a)
    sb = step_by_n(model, y, pi, alpha)
    np.testing.assert_array_equal(sb.n, np.arange(1, y.shape[1] - 2))
    # the logits are log μ + η(n)∇ℓ exactly in float64: the per-n slope is η(n) to rounding
    np.testing.assert_allclose(sb.eta, c / (sb.n + 3 + a), rtol=1e-10)
    assert np.all(sb.r2 > 1 - 1e-12)
    ms = matched_step(_probs(model, y), y, pi, alpha)
    # bounded Brent on log η near a quadratic minimum: |Δη|/η ~ sqrt(machine eps) ~ 1e-8
    np.testing.assert_allclose(ms.eta, c / (ms.n + 3 + a), rtol=1e-5)
    assert np.all(ms.kl_left < 1e-12)
    f = fit_adaptive_step(sb.n, sb.eta, 3)
    assert f.c == pytest.approx(c, rel=1e-9) and f.a == pytest.approx(a, rel=1e-9) and f.r2 > 1 - 1e-12
    # the fixed-step model: matched step constant in n; the adaptive form cannot describe it as decreasing
    fixed = MDTransformer.construct(pi, alpha, eta=0.3)
    ms0 = matched_step(_probs(fixed, y), y, pi, alpha)
    np.testing.assert_allclose(ms0.eta, 0.3, rtol=1e-5)
    # a wrong form: the constructed adaptive step is not constant (matched steps span a range)
    assert ms.eta.max() / ms.eta.min() > 2


def test_fit_adaptive_step_standard_errors_match_a_monte_carlo_spread():
    rng = np.random.default_rng(0)
    n = np.array([6, 14, 30, 62, 126, 254], dtype=float)
    c, a, m = 5.0, 9.0, 2
    eta = c / (n + m + a)
    se = 0.03 * eta
    fits = [fit_adaptive_step(n, eta + se * rng.standard_normal(n.size), m, eta_se=se) for _ in range(400)]
    cs, as_ = np.array([f.c for f in fits]), np.array([f.a for f in fits])
    # 400 draws: the sample sd is within ~±7 % (±2 s.e.) of the truth; 25 % leaves room for the delta method's
    # linearisation at 3 % noise
    assert np.median([f.c_se for f in fits]) == pytest.approx(cs.std(), rel=0.25)
    assert np.median([f.a_se for f in fits]) == pytest.approx(as_.std(), rel=0.25)
    assert abs(np.mean(cs) - c) < 4 * cs.std() / np.sqrt(400) + 0.02 * c  # bias of 1/B is second order
    for bad, match in (((n, -eta), "eta must be finite and > 0"), ((n[:1], eta[:1]), "n and eta")):
        with pytest.raises(ValueError, match=match):
            fit_adaptive_step(*bad, m)


def test_probe_bad_input():
    pi, alpha, y = _task(2, seed=0)
    model = MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=1.0)
    p = _probs(model, y)
    with pytest.raises(ValueError, match=r"\bprobs must have shape"):
        matched_step(p[:, :-1], y, pi, alpha)
    with pytest.raises(ValueError, match=r"\bbounds"):
        matched_step(p, y, pi, alpha, bounds=(1.0, 0.5))
    with pytest.raises(ValueError, match=r"\bmodel must be an nn.Module"):
        step_by_n(object(), y, pi, alpha)
    with pytest.raises(ValueError, match=r"\bmodel must have a layer-3 hook"):
        step_by_n(torch.nn.Linear(2, 2), y, pi, alpha)
    with pytest.raises(ValueError, match=r"\btokens"):
        step_by_n(model, y[:1], pi, alpha)
