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


@pytest.mark.parametrize("L, T, k", [(24, None, 1), (None, 12, 1), (None, 12, 2)])
def test_bootstrap_se_matches_retuning_every_resample(L, T, k):
    """The bootstrap s.e. of η_opt (one fine grid of per-sequence KLs serving every resample, each minimum
    refined by a parabola) against re-tuning each resample in full with scipy's bounded minimiser on its
    own objective, on the same resamples (same seed, same draw order). The fine route's error per
    resample is the parabola's (third-order in the 0.02 grid step: ~1e-4 in log η at most) and Brent's
    xatol here (1e-6); measured, the two s.e. agree to 1e-4 relative at L = 24 (a spread of 0.14 in log η),
    so 0.5 % leaves room for another platform's rounding, while a bootstrap grid as coarse as _tune's
    (step 0.5) misses by 10 %."""
    from scipy import optimize

    pi = mtdmath.random_transition_matrix(5, concentration=0.5, rng=11)
    alpha = np.array([1.0, 2.0])
    n, B = 48, 12
    res = optimal_step(pi, alpha, L=L, T=T, k=k, n_train=n, n_test=n, n_boot=B, rng=5)
    gen = np.random.default_rng(5)
    length = L + 1 if L is not None else T
    y, lam = mtdmath.sample_icl(pi, alpha, length, n, rng=gen)
    mtdmath.sample_icl(pi, alpha, length, n, rng=gen)  # the test set, drawn next
    etas = []
    for _ in range(B):
        i = gen.integers(0, n, n)
        gen.integers(0, n, n)  # the test-set resample, drawn between
        obj = lambda x: task_kl(y[i], lam[i], pi, alpha, [np.exp(x)] * k, k=k, L=L).mean()  # noqa: E731
        grid = np.log(res.eta_star) + np.linspace(-9.2, 6.9, 161)  # 1e-4 η* … 1e3 η*, as optimal_step
        j = int(np.argmin([obj(x) for x in grid]))
        r = optimize.minimize_scalar(obj, bounds=(grid[max(j - 1, 0)], grid[min(j + 1, 160)]), method="bounded",
                                     options={"xatol": 1e-6})
        etas.append(np.exp(r.x))
    want = np.std(etas, ddof=1)
    assert res.eta_se == pytest.approx(want, rel=0.005)


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
