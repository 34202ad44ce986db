"""effective_step: the step a constructed model implements is recovered exactly; a layer 3 that is
not an MD step (different steps per lag) is detected by R² < 1."""
import numpy as np
import pytest

import mtdmath

torch = pytest.importorskip("torch")
from mtdmath.nn import MDTransformer, StandardTransformer, effective_step  # noqa: E402


@pytest.mark.parametrize("m, eta", [(2, None), (2, 0.05), (3, 0.3), (5, 1.7)])
def test_construction_step_is_recovered(m, eta):
    rng = np.random.default_rng(m)
    pi = mtdmath.random_transition_matrix(6, concentration=0.5, rng=rng)
    alpha = rng.uniform(0.5, 3.0, m)
    tokens = mtdmath.sample_icl(pi, alpha, 40, 8, rng=rng)[0]
    model = MDTransformer.construct(pi, alpha, eta=eta)
    res = effective_step(model, tokens, pi, alpha)
    want = mtdmath.eta_bayes(alpha) if eta is None else eta
    # the logits are exactly log μ + η ∇ℓ in float64: the fit recovers η to rounding (~1e-14)
    assert abs(res.eta - want) <= 1e-10 * max(1.0, want)
    assert res.r2 > 1 - 1e-12
    np.testing.assert_allclose(res.eta_by_n, want, rtol=1e-9)


def test_a_layer_3_that_is_not_one_md_step_is_detected():
    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(6, concentration=0.5, rng=rng)
    alpha = np.array([1.0, 2.0, 0.5])
    tokens = mtdmath.sample_icl(pi, alpha, 60, 16, rng=rng)[0]
    model = MDTransformer.construct(pi, alpha)
    with torch.no_grad():
        model.mirror_step.attn.w_q.mul_(torch.diag(torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64)).diag())  # a step per lag
    res = effective_step(model, tokens, pi, alpha)
    assert res.r2 < 0.99


def test_bad_input():
    pi = mtdmath.random_transition_matrix(3, rng=0)
    model = MDTransformer.construct(pi, [1.0, 1.0])
    with pytest.raises(ValueError, match="alpha has length 3 but the model has order m = 2"):
        effective_step(model, np.zeros((2, 9), dtype=np.int64), pi, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="tokens"):
        effective_step(model, np.zeros((2, 3), dtype=np.int64), pi, [1.0, 1.0])


class _OutputOnly(torch.nn.Module):
    """A model the probe only sees through log_probs (no hook points): the output route."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.m = inner, inner.m

    def log_probs(self, tokens):
        return self.inner.log_probs(tokens)


def _noisy(pi, alpha):
    """The construction with a different step per lag: not one MD step, so the fit has residuals."""
    model = MDTransformer.construct(pi, alpha)
    with torch.no_grad():
        model.mirror_step.attn.w_q.mul_(torch.tensor([1.0, 1.6, 0.7], dtype=torch.float64))
    return model


def test_the_output_route_recovers_the_construction_step():
    # an independent route to the same η: the step of the one-step MD predictive closest to the output
    rng = np.random.default_rng(3)
    pi = mtdmath.random_transition_matrix(5, concentration=0.5, rng=rng)
    alpha = np.array([0.7, 1.5, 1.0])
    tokens = mtdmath.sample_icl(pi, alpha, 30, 8, rng=rng)[0]
    for eta in (0.1, 0.6):
        res = effective_step(_OutputOnly(MDTransformer.construct(pi, alpha, eta=eta)), tokens, pi, alpha)
        # bounded Brent on log η near a quadratic minimum: |Δη|/η ~ sqrt(eps) ~ 1e-8; 1e-5 leaves room
        assert res.method == "output" and res.eta == pytest.approx(eta, rel=1e-5)
        assert res.r2 > 1 - 1e-9 and res.eta_se < 1e-5 * eta
        np.testing.assert_allclose(res.eta_by_n, eta, rtol=1e-5)
    # any module with log_probs is accepted, e.g. a standard transformer
    std = StandardTransformer(5, 3, n_layers=1, d_model=8, n_heads=2, max_len=30, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(0))
    res = effective_step(std, tokens, pi, alpha)
    assert res.method == "output" and 1e-4 <= res.eta <= 1e2 and np.isfinite(res.eta_se)
    with pytest.raises(ValueError, match="model must be an MDTransformer or have log_probs"):
        effective_step(torch.nn.Linear(2, 2), tokens, pi, alpha)


@pytest.mark.parametrize("route", ["layer3", "output"])
def test_standard_errors_match_the_spread_over_independent_batches(route):
    # the clustered s.e. of one batch against the standard deviation of η̂ over K independent batches
    rng = np.random.default_rng(5)
    pi = mtdmath.random_transition_matrix(5, concentration=0.5, rng=rng)
    alpha = np.array([1.0, 2.0, 0.5])
    model = _noisy(pi, alpha)
    if route == "output":
        model = _OutputOnly(model)
    K = 40
    fits = [effective_step(model, mtdmath.sample_icl(pi, alpha, 24, 12, rng=rng)[0], pi, alpha, bins=1) for _ in range(K)]
    etas, ses = np.array([f.eta for f in fits]), np.array([f.eta_se for f in fits])
    assert all(f.method == route for f in fits)
    # K = 40 batches: the sample sd is within ~±22 % (2 s.e.) of the truth; a sandwich estimate from 12
    # clusters scatters by ~±20 % more. A 0.55–1.8 band catches an s.e. that ignores the clustering
    # (several times smaller here) or one off by a factor of 2
    ratio = np.median(ses) / etas.std(ddof=1)
    assert 0.55 < ratio < 1.8, ratio


def test_construction_standard_error_is_rounding():
    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(6, concentration=0.5, rng=rng)
    alpha = np.array([1.0, 2.0])
    res = effective_step(MDTransformer.construct(pi, alpha), mtdmath.sample_icl(pi, alpha, 30, 6, rng=rng)[0], pi, alpha)
    assert res.eta_se < 1e-12
    one = effective_step(MDTransformer.construct(pi, alpha), mtdmath.sample_icl(pi, alpha, 30, 1, rng=rng)[0], pi, alpha)
    assert np.isnan(one.eta_se)  # one sequence: no clustered s.e.


def test_fit_adaptive_step_of_a_constant_step_is_nan():
    from mtdmath.nn import fit_adaptive_step

    res = fit_adaptive_step(np.arange(1, 40), np.full(39, 0.3), 3)
    assert np.isnan(res.c) and np.isnan(res.a) and np.isnan(res.c_se) and np.isnan(res.a_se)
    # wrong case: a decreasing step is fitted
    n = np.arange(1, 40)
    res = fit_adaptive_step(n, 2.0 / (n + 3 + 1.5), 3)
    assert res.c == pytest.approx(2.0, rel=1e-10) and res.a == pytest.approx(1.5, rel=1e-9)
