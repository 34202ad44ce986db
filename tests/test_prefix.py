"""mtdmath.prefix.md_predictive_all_prefixes (NumPy, all prefixes at once) against the NumPy core one prefix at a time.

Independent route: tests/prefix_reference.numpy_prefix_md loops over the prefixes and calls
lag_factors, k_step_md (log-space mirror descent from μ) and predictive on each — no cumulative
sum, no bincount, no shared indexing. Tolerance: both are float64 and differ only in summation
order (a cumulative sum against a fresh sum per prefix, softmax against log-space normalisation),
so the probabilities agree to ~1e-15 per step; atol 1e-11 / rtol 1e-9 leaves room for k up to
3 steps at n <= 40 with steps η∇ℓ up to ~n/μ_min, while a wrong lag, prefix or step is off by
far more.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mtdmath as M
from mtdmath.prefix import md_predictive_all_prefixes
from prefix_reference import numpy_prefix_md, numpy_prefix_well_conditioned
from strategies import icl_batches


@given(icl_batches(max_T=40), st.sampled_from([0, 1, 1, 2, 3]))
def test_matches_core_prefix_by_prefix(case, steps):
    tokens, pi, alpha = case
    got = md_predictive_all_prefixes(tokens, pi, alpha, steps=steps)
    # everywhere: probability vectors (large steps collapse weights; no NaN, no overflow)
    assert np.all(got >= 0)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)
    _, ref = numpy_prefix_md(tokens, pi, alpha, steps=steps)
    assert got.shape == ref.shape
    # equal to the core wherever the steps are well conditioned: for k >= 2, a step η∇ℓ = κ
    # turns a relative rounding error ε of ∇ℓ into ~κε in log lam (prefix_reference), so two
    # correct float64 routes agree to 1e-9 only for κ <= 1e5
    ok = numpy_prefix_well_conditioned(tokens, pi, alpha, steps=steps)
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-9, atol=1e-11)


@settings(max_examples=20)
@given(icl_batches(max_T=30), st.floats(0.0, 3.0))
def test_explicit_step_size(case, eta):
    tokens, pi, alpha = case
    _, ref = numpy_prefix_md(tokens, pi, alpha, eta=eta, steps=1)
    np.testing.assert_allclose(md_predictive_all_prefixes(tokens, pi, alpha, eta=eta), ref, rtol=1e-9, atol=1e-11)


def test_matches_torch_core():
    """The torch twin gives the same rows (float64)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    pi = M.random_transition_matrix(6, concentration=0.5, rng=rng)
    alpha = np.array([0.5, 2.0, 1.0])
    y, _ = M.sample_icl(pi, alpha, 30, 4, rng=rng)
    a = md_predictive_all_prefixes(y, pi, alpha)
    b = M.torch_core.md_predictive_all_prefixes(torch.as_tensor(y), torch.as_tensor(pi), alpha).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_batch_shapes_and_edges():
    rng = np.random.default_rng(1)
    pi = M.random_transition_matrix(4, rng=rng)
    alpha = np.array([1.0, 3.0])
    y = rng.integers(0, 4, size=(2, 3, 9))
    p = md_predictive_all_prefixes(y, pi, alpha)
    assert p.shape == (2, 3, 8, 4)
    np.testing.assert_allclose(p[1, 2], md_predictive_all_prefixes(y[1, 2], pi, alpha), rtol=1e-14)
    # T = m: a single row, the prior predictive
    mu = alpha / alpha.sum()
    p0 = md_predictive_all_prefixes(y[0, 0, :2], pi, alpha)
    np.testing.assert_allclose(p0, [mu[0] * pi[y[0, 0, 1]] + mu[1] * pi[y[0, 0, 0]]], rtol=1e-14)


def test_bad_input_and_impossible_data():
    pi = np.array([[0.0, 1.0], [1.0, 0.0]])
    alpha = np.ones(1)
    with pytest.raises(ValueError, match="impossible"):
        md_predictive_all_prefixes(np.array([0, 0, 1]), pi, alpha)
    with pytest.raises(ValueError, match="tokens"):
        md_predictive_all_prefixes(np.array([0, 2]), pi, alpha)
    with pytest.raises(ValueError, match="alpha"):
        md_predictive_all_prefixes(np.array([0, 1]), pi, np.array([-1.0]))
    with pytest.raises(ValueError, match="steps"):
        md_predictive_all_prefixes(np.array([0, 1]), pi, alpha, steps=-1)
    with pytest.raises(ValueError, match="eta"):
        md_predictive_all_prefixes(np.array([0, 1]), pi, alpha, eta=-0.5)
    with pytest.raises(ValueError, match="pi"):
        md_predictive_all_prefixes(np.array([0, 1]), np.ones((2, 2)), alpha)


def test_torch_twin_is_differentiable_in_pi():
    """torch_core.md_predictive_all_prefixes keeps autograd through pi (no in-place op on the
    graph): its gradient matches central finite differences (torch.autograd.gradcheck, float64)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    y = torch.as_tensor(rng.integers(0, 4, size=(2, 9)))
    pi = torch.as_tensor(M.random_transition_matrix(4, rng=rng)).requires_grad_(True)
    for steps in (0, 1, 2):
        assert torch.autograd.gradcheck(
            lambda p: M.torch_core.md_predictive_all_prefixes(y, p / p.sum(1, keepdim=True), [1.0, 2.0, 0.5], steps=steps),
            (pi,), eps=1e-6, atol=1e-7)
