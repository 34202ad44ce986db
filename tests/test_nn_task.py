"""ICLTask: the on-device torch sampler has the law of ``mtdmath.sample_icl`` (docs/math.md §1).

Independent routes: the Beta marginals of Dirichlet(alpha) (scipy.stats.beta, one-sample KS)
and ``sample_icl``'s own lam (two-sample KS); for tokens, the exact MTD transition law
``P(y[t] = j | context) = Σ_g lam_g pi[y[t-g], j]`` (chi-square on the transition counts of each
context, valid for Markov chains: Anderson & Goodman 1957), and ``sample_icl``'s tokens
(chi-square test of homogeneity on the joint law of the last two tokens).

Thresholds: every test is deterministic (fixed seeds); a correct sampler passes at p > 1e-3
(the chance that a fixed seed of a correct sampler falls below is 0.1 %), and each test has a
deliberately wrong sampler or law that it rejects at p < 1e-8 with the same sample size.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import mtdmath
from mtdmath.nn import ICLTask
from mtdmath.nn.task import dirichlet

torch.set_num_threads(1)

P_OK, P_WRONG = 1e-3, 1e-8


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("alpha", [[0.3, 2.5], [1.0, 1.0, 1.0], [0.05, 4.0, 0.7]], ids=["small", "flat", "tiny"])
def test_lam_is_dirichlet(alpha):
    alpha = np.asarray(alpha)
    a0 = alpha.sum()
    pi = mtdmath.random_transition_matrix(3, rng=0)
    N = 20_000
    _, lam = ICLTask(pi, alpha, T=len(alpha) + 1).sample(N, generator=_gen(1))
    lam = lam.numpy()
    assert lam.shape == (N, len(alpha)) and np.all(lam >= 0) and np.allclose(lam.sum(1), 1.0, atol=1e-12)
    _, lam_ref = mtdmath.sample_icl(pi, alpha, len(alpha) + 1, N, rng=2)
    for g in range(len(alpha)):
        # marginal of Dirichlet(alpha): Beta(alpha_g, a0 - alpha_g)
        assert stats.kstest(lam[:, g], stats.beta(alpha[g], a0 - alpha[g]).cdf).pvalue > P_OK
        assert stats.ks_2samp(lam[:, g], lam_ref[:, g]).pvalue > P_OK
    # wrong case: the same test rejects Beta marginals of a perturbed alpha
    wrong = stats.beta(alpha[0] * 1.3, a0 - alpha[0]).cdf
    assert stats.kstest(lam[:, 0], wrong).pvalue < P_WRONG


def test_dirichlet_tiny_alpha_has_no_nan():
    # every Gamma draw of a row underflows at alpha = 1e-3 in linear space; the log-space route does not
    d = dirichlet(torch.tensor([1e-3, 1e-3], dtype=torch.float64), 5000, _gen(0))
    assert torch.isfinite(d).all() and torch.allclose(d.sum(1), torch.ones(5000, dtype=torch.float64))
    # nearly one-hot, each lag with probability alpha_g / a0 = 1/2
    assert (d.max(1).values > 0.999).float().mean() > 0.99
    assert abs(float((d[:, 0] > 0.5).double().mean()) - 0.5) < 0.03  # 5 s.e. of a proportion at n = 5000


def _transition_chi2(tokens: np.ndarray, lam: np.ndarray, pi: np.ndarray) -> float:
    """p-value of the pooled chi-square of transition counts per context against the MTD law."""
    S, m = pi.shape[0], lam.shape[0]
    T = tokens.shape[1]
    probs = {}
    counts: dict[tuple[int, ...], np.ndarray] = {}
    for t in range(m, T):
        ctx = tokens[:, t - m:t]  # (N, m): y[t-m] … y[t-1]
        for row, nxt in zip(map(tuple, ctx), tokens[:, t]):
            counts.setdefault(row, np.zeros(S))[nxt] += 1
    stat, dof = 0.0, 0
    for ctx, c in counts.items():
        # lag g is the source y[t-g] = ctx[m-g]
        p = sum(lam[g - 1] * pi[ctx[m - g]] for g in range(1, m + 1))
        probs[ctx] = p
        keep = p > 0
        assert np.all(c[~keep] == 0), "a zero-probability token was drawn"
        E = c.sum() * p[keep]
        stat += float(((c[keep] - E) ** 2 / E).sum())
        dof += int(keep.sum()) - 1
    return float(stats.chi2.sf(stat, dof))


def test_tokens_follow_the_mtd_transition_law():
    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(3, concentration=1.0, rng=rng)
    pi[0, 2] = 0.0  # a zero entry: never drawn
    pi /= pi.sum(1, keepdims=True)
    lam = np.array([0.3, 0.7])
    task = ICLTask(pi, [1.0, 1.0], T=40)
    y, lam_t = task.sample(3000, generator=_gen(3), lam=lam)
    assert y.dtype == torch.int64 and y.shape == (3000, 40)
    np.testing.assert_array_equal(lam_t.numpy(), np.broadcast_to(lam, (3000, 2)))
    y = y.numpy()
    assert _transition_chi2(y, lam, pi) > P_OK
    # the first m tokens are i.i.d. uniform, as sample()'s default init
    assert stats.chisquare(np.bincount(y[:, :2].ravel(), minlength=3)).pvalue > P_OK
    # wrong case: the same counts against the swapped lag weights are rejected
    assert _transition_chi2(y, lam[::-1].copy(), pi) < P_WRONG


def test_joint_law_matches_sample_icl():
    pi = mtdmath.random_transition_matrix(4, concentration=0.7, rng=5)
    alpha = np.array([0.5, 2.0])
    N, T = 20_000, 12
    y, _ = ICLTask(pi, alpha, T).sample(N, generator=_gen(7))
    y_ref, _ = mtdmath.sample_icl(pi, alpha, T, N, rng=8)

    def joint(tok):  # counts of (y[T-2], y[T-1]): 16 cells
        return np.bincount(tok[:, -2] * 4 + tok[:, -1], minlength=16)

    a, b = joint(y.numpy()), joint(y_ref)
    keep = (a + b) > 0
    assert stats.chi2_contingency(np.stack([a[keep], b[keep]])).pvalue > P_OK
    # wrong case: sample_icl with the lag weights' prior reversed differs detectably
    y_bad, _ = mtdmath.sample_icl(pi, alpha[::-1].copy(), T, N, rng=8)
    c = joint(y_bad)
    keep = (a + c) > 0
    assert stats.chi2_contingency(np.stack([a[keep], c[keep]])).pvalue < P_WRONG


def test_seeded_and_on_the_task_device():
    pi = mtdmath.random_transition_matrix(5, rng=1)
    task = ICLTask(pi, [1.0, 2.0, 0.5], T=20)
    y1, l1 = task.sample(8, generator=_gen(11))
    y2, l2 = task.sample(8, generator=_gen(11))
    y3, _ = task.sample(8, generator=_gen(12))
    assert torch.equal(y1, y2) and torch.equal(l1, l2) and not torch.equal(y1, y3)
    assert y1.device.type == "cpu" and task.to("cpu") is task
    assert ICLTask.from_dict(task.to_dict()) == task


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(pi=[[0.5, 0.6], [0.5, 0.5]]), "pi"),
        (dict(alpha=[1.0, -1.0]), "alpha"),
        (dict(alpha=[1.0, 0.0]), "alpha"),
        (dict(T=2), "T"),
        (dict(T=2.5), "T"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    args = dict(pi=[[0.5, 0.5], [0.2, 0.8]], alpha=[1.0, 2.0], T=5) | kwargs
    with pytest.raises(ValueError, match=name):
        ICLTask(**args)


def test_bad_sample_arguments_raise():
    task = ICLTask([[0.5, 0.5], [0.2, 0.8]], [1.0, 2.0], T=5)
    with pytest.raises(ValueError, match="batch"):
        task.sample(0)
    with pytest.raises(ValueError, match="lam"):
        task.sample(2, lam=[0.5, 0.6])
    with pytest.raises(ValueError, match="lam"):
        task.sample(2, lam=[1.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sampling_stays_on_device_and_has_the_law():
    pi = mtdmath.random_transition_matrix(3, rng=0)
    lam = np.array([0.3, 0.7])
    task = ICLTask(pi, [1.0, 1.0], T=40, device="cuda")
    y, l = task.sample(3000, generator=torch.Generator(device="cuda").manual_seed(3), lam=lam)
    assert y.device.type == "cuda" and l.device.type == "cuda"
    assert _transition_chi2(y.cpu().numpy(), lam, pi) > P_OK
    with pytest.raises(ValueError, match="generator"):
        task.sample(2, generator=_gen(0))


def test_alpha_too_small_for_the_sampler_is_refused():
    # log(U)/alpha overflows below ALPHA_MIN: refused with a message naming alpha; at ALPHA_MIN the draws
    # are the one-hot limit of the Dirichlet law (each lag with probability 1/3 here)
    from mtdmath.nn.task import ALPHA_MIN

    pi = mtdmath.random_transition_matrix(4, rng=0)
    with pytest.raises(ValueError, match=r"^alpha entries must be >= 1e-300"):
        ICLTask(pi, [1e-310] * 3, T=20)
    _, lam = ICLTask(pi, [ALPHA_MIN] * 3, T=20).sample(600, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(lam).all() and torch.equal(lam.max(1).values, torch.ones(600))
    counts = np.bincount(lam.argmax(1).numpy(), minlength=3)
    assert np.all(np.abs(counts - 200) < 5 * np.sqrt(600 * (1 / 3) * (2 / 3)))  # 5 sd of a binomial count
