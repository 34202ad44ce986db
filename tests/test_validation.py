"""Every bad input raises ValueError naming the argument (and showing the bad value)."""
import numpy as np
import pytest

import mtdmath

PI = np.array([[0.5, 0.5], [0.2, 0.8]])
C = np.array([[0.5, 0.2], [0.3, 0.9], [0.1, 0.4]])
LAM = np.array([0.4, 0.6])
ALPHA = np.array([1.0, 2.0])
Y = np.array([0, 1, 1, 0, 1])


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones((2, 3)) / 3, r"pi must be a square"),
        (np.array([[0.5, np.nan], [0.2, 0.8]]), r"pi must be finite"),
        (np.array([[1.5, -0.5], [0.2, 0.8]]), r"pi must be nonnegative"),
        (np.array([[0.5, 0.6], [0.2, 0.8]]), r"pi: rows must sum to 1 \(got row sums of \[1\.1\]"),
    ],
)
def test_bad_pi(bad, match):
    with pytest.raises(ValueError, match=match):
        mtdmath.lag_factors(Y, bad, 2)
    with pytest.raises(ValueError, match="pi"):
        mtdmath.sample(bad, LAM, 5)
    with pytest.raises(ValueError, match="pi"):
        mtdmath.predictive(LAM, Y, bad)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([0.5, 0.6]), r"lam must lie on the simplex.*1\.1"),
        (np.array([-0.2, 1.2]), r"lam must be nonnegative"),
        (np.array([np.inf, 0.0]), r"lam must be finite"),
        (np.array([0.2, 0.3, 0.5]), r"lam has length 3"),
    ],
)
def test_bad_lam(bad, match):
    for f in (mtdmath.log_likelihood, mtdmath.gradient, mtdmath.hessian, mtdmath.responsibilities):
        with pytest.raises(ValueError, match=match):
            f(bad, C)


def test_bad_lam0_named_lam0():
    with pytest.raises(ValueError, match="lam0 must lie on the simplex"):
        mtdmath.mirror_descent(C, eta=0.1, lam0=[0.9, 0.9])
    with pytest.raises(ValueError, match="lam0"):
        mtdmath.em(C, lam0=[0.2, 0.3, 0.5])


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([1.0, 0.0]), r"alpha must be positive"),
        (np.array([1.0, -2.0]), r"alpha must be positive"),
        (np.array([1.0, np.nan]), r"alpha must be finite"),
        (np.array([[1.0, 2.0]]), r"alpha must be 1-D"),
        (np.array([1.0, 2.0, 3.0]), r"alpha has length 3"),
    ],
)
def test_bad_alpha(bad, match):
    for f in (mtdmath.one_step_md, mtdmath.posterior_mean, mtdmath.log_evidence):
        with pytest.raises(ValueError, match=match):
            f(C, bad)
    with pytest.raises(ValueError, match="alpha"):
        mtdmath.posterior_mean_mc(C, bad, samples=10)
    if bad.ndim == 1 and bad.shape[0] == 2:
        with pytest.raises(ValueError, match="alpha"):
            mtdmath.eta_bayes(bad)
        with pytest.raises(ValueError, match="alpha"):
            mtdmath.sample_icl(PI, bad, 5, 2)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([0, 1, 2, 0]), r"tokens must lie in \[0, 2\).*\[2\]"),
        (np.array([0, -1, 1]), r"tokens must lie in"),
        (np.array([0.0, 1.0, 1.0]), r"tokens must have an integer dtype"),
        (np.array([True, False, True]), r"tokens must have an integer dtype"),
        (np.array([1]), r"tokens must have length T >= m = 2"),
        (np.int64(1), r"tokens must have at least one axis"),
    ],
)
def test_bad_tokens(bad, match):
    with pytest.raises(ValueError, match=match):
        mtdmath.lag_factors(bad, PI, 2)
    with pytest.raises(ValueError, match="tokens"):
        mtdmath.predictive(LAM, bad, PI)


def test_bad_m_eta_steps_samples_T_S():
    with pytest.raises(ValueError, match="m must be >= 1"):
        mtdmath.lag_factors(Y, PI, 0)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        mtdmath.mirror_descent(C, eta=-0.1)
    with pytest.raises(ValueError, match="eta must be finite"):
        mtdmath.mirror_descent(C, eta=np.inf)
    with pytest.raises(ValueError, match="eta must be a real number"):
        mtdmath.mirror_descent(C, eta="big")
    with pytest.raises(ValueError, match="steps must be >= 0"):
        mtdmath.em(C, steps=-1)
    with pytest.raises(ValueError, match="steps must be an integer"):
        mtdmath.mirror_descent(C, eta=0.1, steps=1.5)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        mtdmath.posterior_mean_mc(C, ALPHA, samples=0)
    with pytest.raises(ValueError, match="T must be >= 2"):
        mtdmath.sample(PI, LAM, 1)
    with pytest.raises(ValueError, match="S must be >= 1"):
        mtdmath.random_transition_matrix(0)
    with pytest.raises(ValueError, match="concentration must be > 0"):
        mtdmath.random_transition_matrix(3, concentration=0.0)
    with pytest.raises(ValueError, match="init must have length 2"):
        mtdmath.sample(PI, LAM, 5, init=[1.0])
    with pytest.raises(ValueError, match="init must lie on the simplex"):
        mtdmath.sample(PI, LAM, 5, init=[0.7, 0.7])
    with pytest.raises(ValueError, match="rng must be"):
        mtdmath.sample(PI, LAM, 5, rng="seed")
    with pytest.raises(ValueError, match="tol must be > 0"):
        mtdmath.mle(C, tol=0.0)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        mtdmath.mle(C, max_steps=0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([0.5, 0.2]), r"C must have shape \(\.\.\., n, m\)"),
        (np.array([[0.5, np.nan]]), r"C must be finite"),
        (np.array([[0.5, -0.2]]), r"C must be nonnegative"),
    ],
)
def test_bad_C(bad, match):
    for f in (
        lambda c: mtdmath.log_likelihood(LAM, c),
        lambda c: mtdmath.gradient(LAM, c),
        lambda c: mtdmath.mirror_descent(c, eta=0.1),
        lambda c: mtdmath.em(c),
        lambda c: mtdmath.mle(c),
        lambda c: mtdmath.posterior_mean(c, ALPHA),
        lambda c: mtdmath.log_evidence(c, ALPHA),
    ):
        with pytest.raises(ValueError, match=match):
            f(bad)


def test_impossible_transition_named_C():
    Cz = np.array([[0.5, 0.2], [0.0, 0.0]])
    for f in (
        lambda: mtdmath.gradient(LAM, Cz),
        lambda: mtdmath.hessian(LAM, Cz),
        lambda: mtdmath.responsibilities(LAM, Cz),
        lambda: mtdmath.mirror_descent(Cz, eta=0.1),
        lambda: mtdmath.em(Cz),
        lambda: mtdmath.mle(Cz),
        lambda: mtdmath.one_step_md(Cz, ALPHA),
        lambda: mtdmath.posterior_mean(Cz, ALPHA),
        lambda: mtdmath.posterior_mean_mc(Cz, ALPHA, samples=5),
    ):
        with pytest.raises(ValueError, match=r"C has a transition with probability 0 under every lag"):
            f()
    assert mtdmath.log_likelihood(LAM, Cz) == -np.inf
    assert mtdmath.log_evidence(Cz, ALPHA) == -np.inf


@pytest.mark.parametrize("call, name", [
    (lambda: mtdmath.sample(np.eye(2), [1.0], 10**11), "T"),
    (lambda: mtdmath.sample_icl(np.eye(2), [1.0, 1.0], 10**6, 10**5), "T"),
    (lambda: mtdmath.random_transition_matrix(10**6), "S"),
    (lambda: mtdmath.lag_factors(np.zeros((10**4, 3000), dtype=np.int64), np.eye(2), 2000), "m"),
    (lambda: mtdmath.md_predictive_all_prefixes(np.zeros((10**5, 10**3), dtype=np.int64), np.eye(64), [1.0]), "tokens"),
])
def test_oversized_requests_are_refused_before_allocating(call, name):
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"^{name}: .* GiB, above the budget"):
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**31  # nothing near the refused size was allocated (the inputs themselves aside)


@pytest.mark.parametrize("call, names", [
    (lambda: mtdmath.log_likelihood(np.full((2, 2), 0.5), np.full((3, 4, 2), 0.5)), ("lam", "C")),
    (lambda: mtdmath.gradient(np.full((2, 2), 0.5), np.full((3, 4, 2), 0.5)), ("lam", "C")),
    (lambda: mtdmath.mirror_descent(np.full((3, 4, 2), 0.5), eta=0.1, lam0=np.full((2, 2), 0.5)), ("lam0", "C")),
    (lambda: mtdmath.kkt_gap(np.full((2, 2), 0.5), np.full((3, 4, 2), 0.5)), ("lam", "C")),
    (lambda: mtdmath.kl(np.full((2, 3), 1 / 3), np.full((3, 3), 1 / 3)), ("p", "q")),
    (lambda: mtdmath.predictive(np.full((2, 2), 0.5), np.zeros((3, 4), dtype=np.int64), PI), ("lam", "tokens")),
])
def test_batch_mismatch_names_both_arguments(call, names):
    with pytest.raises(ValueError, match=rf"{names[0]} and {names[1]} have batch shapes"):
        call()


@pytest.mark.parametrize("bad", [[[0.5, 0.5], [0.5]], "abc", [object(), object()], [0.5 + 1j, 0.5]])
def test_ragged_string_object_and_complex_arrays_are_refused(bad):
    with pytest.raises(ValueError, match="lam"):
        mtdmath.log_likelihood(bad, C)
    with pytest.raises(ValueError, match="C"):
        mtdmath.log_likelihood(LAM, [bad, bad])


@pytest.mark.parametrize("bad", ["0.5", True, 0.5 + 0j, np.array([[0.5, 0.5]]), None])  # a 1-D array is a schedule
def test_scalar_arguments_refuse_strings_bools_complex_arrays(bad):
    with pytest.raises(ValueError, match="eta"):
        mtdmath.mirror_descent(C, eta=bad)


def test_uint64_tokens_beyond_int64_are_reported_not_wrapped():
    y = np.array([0, 1, 2**63], dtype=np.uint64)
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 2\)"):
        mtdmath.lag_factors(y, PI, 1)


def test_alpha_whose_sum_overflows_is_named():
    for f in (lambda: mtdmath.one_step_md(C, [1e308, 1e308]), lambda: mtdmath.sample_icl(PI, [1e308, 1e308], 5, 2),
              lambda: mtdmath.md_predictive_all_prefixes(Y, PI, [1e308, 1e308])):
        with pytest.raises(ValueError, match="alpha: the sum"):
            f()


def test_half_precision_probabilities_are_accepted_with_their_own_tolerance():
    torch = pytest.importorskip("torch")
    pi16 = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype=torch.float16)
    C16 = mtdmath.lag_factors(np.array([0, 1, 2, 0, 1]), pi16, 2)  # rows sum to 1 ± 1e-3 in float16
    assert C16.dtype == torch.float32
    lam32 = np.array([0.3, 0.7], dtype=np.float32)  # a float32 lam sums to 1 ± 6e-8
    assert np.isfinite(float(mtdmath.log_likelihood(lam32, C16)))
    with pytest.raises(ValueError, match="pi: rows must sum to 1"):  # but a real violation is still caught
        mtdmath.lag_factors(np.array([0, 1, 2]), pi16 * 1.05, 1)  # tolerance 4·S·eps16 = 0.012 for S = 3
