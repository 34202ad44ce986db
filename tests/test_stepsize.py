"""The loss-optimal step (mtdmath.stepsize): the objective against a loop over sequences, the tuned
step against a brute-force grid, held-out reporting, seeds and bad input."""
import numpy as np
import pytest

import mtdmath
from mtdmath.stepsize import optimal_step, task_kl


def _loop_kl(tokens, lam, pi, alpha, eta, k, L):
    """Per-sequence KL by a Python loop over sequences and prefixes (the independent route)."""
    m = len(alpha)
    out = []
    for y, l in zip(tokens, lam):
        Ls = [L] if L is not None else range(m, len(y) + 1)
        vals = []
        for t in Ls:
            pre = y[:t]
            p_true = sum(l[g - 1] * pi[pre[t - g]] for g in range(1, m + 1))
            lam_md = mtdmath.k_step_md(mtdmath.lag_factors(pre, pi, m), alpha, k, eta=eta)
            p_md = mtdmath.predictive(lam_md, pre, pi)
            vals.append(float(np.sum(p_true * np.log(p_true / p_md))))
        out.append(np.mean(vals))
    return np.array(out)


@pytest.mark.parametrize("k, L", [(1, 12), (2, 9), (1, None), (2, None)])
def test_task_kl_matches_a_loop(k, L):
    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(4, concentration=0.7, rng=rng)
    alpha = np.array([1.5, 0.5, 1.0])
    tokens, lam = mtdmath.sample_icl(pi, alpha, 14, 5, rng=rng)
    eta = [0.2] * k
    got = task_kl(tokens, lam, pi, alpha, eta, k=k, L=L)
    # two float64 routes of a sum of <= 12 KL terms: rounding only, 1e-10 relative leaves room
    # for the κ = η∇ℓ amplification of k = 2 (prefix_reference.md_well_conditioned)
    np.testing.assert_allclose(got, _loop_kl(tokens, lam, pi, alpha, eta, k, L), rtol=1e-10, atol=1e-14)


def test_optimal_step_beats_every_grid_step_on_the_training_objective():
    pi = mtdmath.random_transition_matrix(5, concentration=0.5, rng=1)
    alpha = np.array([1.0, 2.0])
    res = optimal_step(pi, alpha, L=24, n_train=64, n_test=64, n_boot=4, rng=2)
    # the same training sequences (same seed, same draw order) on a brute-force grid
    gen = np.random.default_rng(2)
    y, lam = mtdmath.sample_icl(pi, alpha, 25, 64, rng=gen)
    obj = lambda e: task_kl(y, lam, pi, alpha, [e], L=24).mean()  # noqa: E731
    grid = res.eta_star * np.geomspace(1e-3, 1e2, 200)
    best = min(obj(e) for e in grid)
    assert obj(res.eta) <= best + 1e-12  # a local refinement of the best grid point
    # reported on the disjoint test sequences, with a bootstrap error
    assert np.isfinite(res.kl) and res.kl_se > 0 and res.eta_se > 0
    # the loss-optimal step is not η*: at L = 24 it is smaller (one step at η* overshoots)
    assert res.eta < res.eta_star and res.kl <= res.kl_eta_star + 3 * res.diff_se


def test_schedule_and_training_objective_and_seeds():
    pi = mtdmath.random_transition_matrix(4, rng=3)
    alpha = np.array([1.0, 1.0, 2.0])
    a = optimal_step(pi, alpha, T=16, k=2, schedule=True, n_train=32, n_test=32, n_boot=0, rng=4)
    b = optimal_step(pi, alpha, T=16, k=2, schedule=True, n_train=32, n_test=32, n_boot=0, rng=4)
    assert a.eta.shape == (2,) and np.array_equal(a.eta, b.eta) and a.kl == b.kl
    assert np.isnan(a.kl_se)
    c = optimal_step(pi, alpha, T=16, k=2, n_train=32, n_test=32, n_boot=0, rng=4)  # constant step
    gen = np.random.default_rng(4)
    y, lam = mtdmath.sample_icl(pi, alpha, 16, 32, rng=gen)
    train = lambda e: task_kl(y, lam, pi, alpha, list(e), k=2).mean()  # noqa: E731
    assert train(a.eta) <= train([c.eta, c.eta]) + 1e-12  # a schedule is at least as good as a constant


@pytest.mark.parametrize("kwargs, name", [
    (dict(), "exactly one of L"), (dict(L=5, T=9), "exactly one of L"), (dict(L=1), "L"),
    (dict(T=9, k=0), "k"), (dict(T=9, n_train=1), "n_train"), (dict(T=9, n_boot=-1), "n_boot"),
])
def test_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optimal_step(np.eye(2) * 0.5 + 0.25, [1.0, 1.0], **kwargs)
