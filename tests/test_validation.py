"""Every bad input raises ValueError naming the argument (and showing the bad value)."""
import numpy as np
import pytest

import mtdmath as M

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
        M.lag_factors(Y, bad, 2)
    with pytest.raises(ValueError, match="pi"):
        M.sample(bad, LAM, 5)
    with pytest.raises(ValueError, match="pi"):
        M.predictive(LAM, Y, bad)


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
    for f in (M.log_likelihood, M.gradient, M.hessian, M.responsibilities):
        with pytest.raises(ValueError, match=match):
            f(bad, C)


def test_bad_lam0_named_lam0():
    with pytest.raises(ValueError, match="lam0 must lie on the simplex"):
        M.mirror_descent(C, eta=0.1, lam0=[0.9, 0.9])
    with pytest.raises(ValueError, match="lam0"):
        M.em(C, lam0=[0.2, 0.3, 0.5])


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
    for f in (M.one_step_md, M.posterior_mean, M.log_evidence):
        with pytest.raises(ValueError, match=match):
            f(C, bad)
    with pytest.raises(ValueError, match="alpha"):
        M.posterior_mean_mc(C, bad, samples=10)
    if bad.ndim == 1 and bad.shape[0] == 2:
        with pytest.raises(ValueError, match="alpha"):
            M.eta_bayes(bad)
        with pytest.raises(ValueError, match="alpha"):
            M.sample_icl(PI, bad, 5, 2)


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
        M.lag_factors(bad, PI, 2)
    with pytest.raises(ValueError, match="tokens"):
        M.predictive(LAM, bad, PI)


def test_bad_m_eta_steps_samples_T_S():
    with pytest.raises(ValueError, match="m must be >= 1"):
        M.lag_factors(Y, PI, 0)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        M.mirror_descent(C, eta=-0.1)
    with pytest.raises(ValueError, match="eta must be finite"):
        M.mirror_descent(C, eta=np.inf)
    with pytest.raises(ValueError, match="eta must be a real number"):
        M.mirror_descent(C, eta="big")
    with pytest.raises(ValueError, match="steps must be >= 0"):
        M.em(C, steps=-1)
    with pytest.raises(ValueError, match="steps must be an integer"):
        M.mirror_descent(C, eta=0.1, steps=1.5)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        M.posterior_mean_mc(C, ALPHA, samples=0)
    with pytest.raises(ValueError, match="T must be >= 2"):
        M.sample(PI, LAM, 1)
    with pytest.raises(ValueError, match="S must be >= 1"):
        M.random_transition_matrix(0)
    with pytest.raises(ValueError, match="concentration must be > 0"):
        M.random_transition_matrix(3, concentration=0.0)
    with pytest.raises(ValueError, match="init must have length 2"):
        M.sample(PI, LAM, 5, init=[1.0])
    with pytest.raises(ValueError, match="init must lie on the simplex"):
        M.sample(PI, LAM, 5, init=[0.7, 0.7])
    with pytest.raises(ValueError, match="rng must be"):
        M.sample(PI, LAM, 5, rng="seed")
    with pytest.raises(ValueError, match="tol must be > 0"):
        M.mle(C, tol=0.0)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        M.mle(C, max_steps=0)


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
        lambda c: M.log_likelihood(LAM, c),
        lambda c: M.gradient(LAM, c),
        lambda c: M.mirror_descent(c, eta=0.1),
        lambda c: M.em(c),
        lambda c: M.mle(c),
        lambda c: M.posterior_mean(c, ALPHA),
        lambda c: M.log_evidence(c, ALPHA),
    ):
        with pytest.raises(ValueError, match=match):
            f(bad)


def test_impossible_transition_named_C():
    Cz = np.array([[0.5, 0.2], [0.0, 0.0]])
    for f in (
        lambda: M.gradient(LAM, Cz),
        lambda: M.hessian(LAM, Cz),
        lambda: M.responsibilities(LAM, Cz),
        lambda: M.mirror_descent(Cz, eta=0.1),
        lambda: M.em(Cz),
        lambda: M.mle(Cz),
        lambda: M.one_step_md(Cz, ALPHA),
        lambda: M.posterior_mean(Cz, ALPHA),
        lambda: M.posterior_mean_mc(Cz, ALPHA, samples=5),
    ):
        with pytest.raises(ValueError, match=r"C has a transition with probability 0 under every lag"):
            f()
    assert M.log_likelihood(LAM, Cz) == -np.inf
    assert M.log_evidence(Cz, ALPHA) == -np.inf
