"""effective_step: the step a constructed model implements is recovered exactly; a layer 3 that is
not an MD step (different steps per lag) is detected by R² < 1."""
import numpy as np
import pytest

import mtdmath as M

torch = pytest.importorskip("torch")
from mtdmath.nn import MDTransformer, effective_step  # noqa: E402


@pytest.mark.parametrize("m, eta", [(2, None), (2, 0.05), (3, 0.3), (5, 1.7)])
def test_construction_step_is_recovered(m, eta):
    rng = np.random.default_rng(m)
    pi = M.random_transition_matrix(6, concentration=0.5, rng=rng)
    alpha = rng.uniform(0.5, 3.0, m)
    tokens = M.sample_icl(pi, alpha, 40, 8, rng=rng)[0]
    model = MDTransformer.construct(pi, alpha, eta=eta)
    res = effective_step(model, tokens, pi, alpha)
    want = M.eta_bayes(alpha) if eta is None else eta
    # the logits are exactly log μ + η ∇ℓ in float64: the fit recovers η to rounding (~1e-14)
    assert abs(res.eta - want) <= 1e-10 * max(1.0, want)
    assert res.r2 > 1 - 1e-12
    np.testing.assert_allclose(res.eta_by_n, want, rtol=1e-9)


def test_a_layer_3_that_is_not_one_md_step_is_detected():
    rng = np.random.default_rng(0)
    pi = M.random_transition_matrix(6, concentration=0.5, rng=rng)
    alpha = np.array([1.0, 2.0, 0.5])
    tokens = M.sample_icl(pi, alpha, 60, 16, rng=rng)[0]
    model = MDTransformer.construct(pi, alpha)
    with torch.no_grad():
        model.mirror_step.attn.w_q.mul_(torch.diag(torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64)).diag())  # a step per lag
    res = effective_step(model, tokens, pi, alpha)
    assert res.r2 < 0.99


def test_bad_input():
    pi = M.random_transition_matrix(3, rng=0)
    model = MDTransformer.construct(pi, [1.0, 1.0])
    with pytest.raises(ValueError, match="alpha has length 3 but the model has order m = 2"):
        effective_step(model, np.zeros((2, 9), dtype=np.int64), pi, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="tokens"):
        effective_step(model, np.zeros((2, 3), dtype=np.int64), pi, [1.0, 1.0])
