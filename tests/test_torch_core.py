"""The batched torch core against the NumPy core (MATH.md §2-3), including long contexts.

Independent route: every torch function is compared with its NumPy twin in mtdmath (a
separate implementation: NumPy, explicit gradient route for one-step MD where torch uses the
responsibilities, one prefix at a time for the all-prefix predictive).

Tolerance: float64 relative error ≤ 1e-10 per entry (``rtol=1e-10, atol=0``). Both sides are
log-space float64 computations; their differences are rounding of sums of at most 5000 terms
(≲ 1e-12 relative).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, target
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

import mtdmath as M
from mtdmath import MDTransformer
from mtdmath import torch_core as tc
from prefix_reference import md_well_conditioned, numpy_prefix_md, numpy_prefix_well_conditioned
from strategies import alphas, icl_batches, lag_factor_arrays, orders, seeds, sequences, simplex_points

torch.set_num_threads(1)  # small tensors on a shared 2-core machine

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
RTOL = 1e-10


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def _rel_err(got, want) -> float:
    """max |got - want| / |want| over entries (0 where both are 0)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    diff = np.abs(got - want)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(want))
    return float(rel.max()) if rel.size else 0.0


def _close(got: torch.Tensor, want, label: str) -> None:
    assert got.dtype == torch.float64
    err = _rel_err(_np(got), want)
    if currently_in_test_context():
        target(err, label=label)
    assert _np(got).shape == np.shape(want)
    assert err <= RTOL, (label, err)


# ----------------------------------------------------------------------------- function by function
@given(sequences(), st.booleans())
def test_lag_factors_equal_numpy(seq, as_tensor):
    tokens, pi, lam = seq
    m = lam.shape[-1]
    y = torch.as_tensor(tokens) if as_tensor else tokens
    C = tc.lag_factors(y, pi, m)
    assert C.dtype == torch.float64
    assert np.array_equal(_np(C), M.lag_factors(tokens, pi, m))  # a gather: exact
    C32 = tc.lag_factors(y, torch.tensor(pi, dtype=torch.float32), m)
    assert C32.dtype == torch.float32
    assert np.array_equal(_np(C32), M.lag_factors(tokens, pi, m).astype(np.float32))  # gather of rounded = rounded gather


@st.composite
def lam_and_C(draw, interior=0.05):
    m = draw(orders)
    C = draw(lag_factor_arrays(m=m))
    lam = draw(simplex_points(m, batch=C.shape[:-2] if draw(st.booleans()) else (), interior=interior))
    return lam, C


@given(lam_and_C(), st.booleans())
def test_log_likelihood_and_gradient_equal_numpy(lc, as_tensor):
    lam, C = lc
    Ct = torch.as_tensor(C) if as_tensor else C
    _close(tc.log_likelihood(lam, Ct), M.log_likelihood(lam, C), "log_likelihood")
    _close(tc.gradient(lam, Ct), M.gradient(lam, C), "gradient")


def test_log_likelihood_is_minus_inf_for_impossible_data_and_gradient_raises():
    C = np.array([[0.5, 0.2], [0.0, 0.0]])
    assert tc.log_likelihood([0.5, 0.5], C).item() == -np.inf == M.log_likelihood([0.5, 0.5], C)
    with pytest.raises(ValueError, match="C"):
        tc.gradient([0.5, 0.5], C)
    with pytest.raises(ValueError, match="lam"):  # lam puts no weight on the only lag that explains row 1
        tc.gradient([1.0, 0.0], np.array([[0.5, 0.2], [0.0, 0.3]]))


@given(lam_and_C(), st.floats(0.0, 5.0), st.integers(0, 4), st.booleans())
def test_mirror_descent_equals_numpy(lc, eta, steps, default_start):
    lam0, C = lc
    lam0 = None if default_start else lam0
    got = tc.mirror_descent(C, eta=eta, steps=steps, lam0=lam0)
    want = M.mirror_descent(C, eta=eta, steps=steps, lam0=lam0)
    # everywhere: finite, on the simplex (large steps collapse weights; no NaN, no overflow)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(_np(got).sum(-1), 1.0, rtol=0, atol=1e-12)
    # equal to NumPy wherever the steps are well conditioned (prefix_reference.md_well_conditioned)
    ok = md_well_conditioned(C, eta, steps, lam0)
    _close(got[ok], want[ok], "mirror_descent")


def test_mirror_descent_step_overflow_is_exact():
    # after 3 steps lam_0 ~ exp(-59643): the 4th gradient ~exp(1.9e6670) overflows any float.
    # Independent route: 60-digit mpmath (unbounded exponents). Step 4 is one-hot on lag 0.
    mp = pytest.importorskip("mpmath")
    lam0 = np.array([0.39235556, 0.58003382, 0.02761062])
    C = np.array([[1.2256551e-01, 5.23540829e-01, 4.05770728e-01],
                  [9.69183948e-01, 0.0, 1.15081313e-01],
                  [4.53619381e-13, 9.12531651e-01, 6.77722817e-01]])
    with mp.workdps(60):
        Cm = [[mp.mpf(float(x)) for x in row] for row in C]
        lam = [mp.mpf(float(x)) for x in lam0]
        for k in range(1, 5):
            s = [mp.fsum(c * l for c, l in zip(row, lam)) for row in Cm]
            z = [mp.log(lam[g]) + 4 * mp.fsum(row[g] / si for row, si in zip(Cm, s)) for g in range(3)]
            e = [mp.exp(zg - max(z)) for zg in z]
            lam = [x / mp.fsum(e) for x in e]
            got = _np(tc.mirror_descent(C, eta=4.0, steps=k, lam0=lam0))
            np.testing.assert_allclose(got, [float(x) for x in lam], rtol=1e-10, atol=0)
    assert got.tolist() == [1.0, 0.0, 0.0]


@given(lam_and_C(), st.integers(0, 5), st.booleans())
def test_em_equals_numpy(lc, steps, default_start):
    lam0, C = lc
    lam0 = None if default_start else lam0
    _close(tc.em(C, steps=steps, lam0=lam0), M.em(C, steps=steps, lam0=lam0), "em")


@given(st.data())
def test_one_step_md_equals_numpy(data):
    m = data.draw(orders)
    C = data.draw(lag_factor_arrays(m=m))
    alpha = data.draw(alphas(m=m, low=0.05))
    _close(tc.one_step_md(torch.as_tensor(C), alpha), M.one_step_md(C, alpha), "one_step_md")


# ----------------------------------------------------------------------------- all prefixes
@given(st.data())
def test_md_predictive_all_prefixes_equals_numpy(data):
    tokens, pi, alpha = data.draw(icl_batches(max_T=40))
    steps = data.draw(st.integers(0, 3))
    eta = data.draw(st.one_of(st.none(), st.floats(0.0, 3.0)))
    got = tc.md_predictive_all_prefixes(torch.as_tensor(tokens), pi, alpha, eta=eta, steps=steps)
    _, want = numpy_prefix_md(tokens, pi, alpha, eta=eta, steps=steps)
    assert got.shape == want.shape and torch.isfinite(got).all()
    np.testing.assert_allclose(_np(got).sum(-1), 1.0, rtol=0, atol=1e-12)
    ok = numpy_prefix_well_conditioned(tokens, pi, alpha, eta=eta, steps=steps)  # (B, T-m+1)
    _close(got[torch.as_tensor(ok)], want[ok], f"md_predictive_all_prefixes (steps={steps})")


@given(icl_batches(max_T=30))
def test_all_prefixes_one_step_is_the_constructed_transformer(case):
    # the contract between the two torch routes (each is also held to NumPy above)
    tokens, pi, alpha = case
    got = tc.md_predictive_all_prefixes(tokens, pi, alpha)
    want = MDTransformer.construct(pi, alpha)(tokens)
    assert np.abs(_np(got) - _np(want)).max() <= 1e-12


def test_all_prefixes_chunking_matches_unchunked(monkeypatch):
    # the k >= 2 path processes prefixes in chunks; force tiny chunks and compare with one chunk
    rng = np.random.default_rng(7)
    pi = M.random_transition_matrix(5, rng=rng)
    tokens = M.sample_icl(pi, [0.4, 1.0, 3.0], 50, 3, rng=rng)[0]
    whole = tc.md_predictive_all_prefixes(tokens, pi, [0.4, 1.0, 3.0], steps=3)
    monkeypatch.setattr(tc, "_CHUNK_ELEMENTS", 1)
    chunked = tc.md_predictive_all_prefixes(tokens, pi, [0.4, 1.0, 3.0], steps=3)
    assert _rel_err(_np(chunked), _np(whole)) <= 1e-13  # only the reduction lengths differ


def test_zero_transitions_and_order_one():
    rng = np.random.default_rng(8)
    pi = M.random_transition_matrix(4, rng=rng)
    # n = 0: every estimator returns its start, the predictive is the prior predictive
    C0 = np.zeros((2, 0, 3))
    mu = np.array([0.2, 0.3, 0.5])
    assert torch.equal(tc.mirror_descent(C0, eta=1.0, steps=3, lam0=mu), torch.tensor(mu).expand(2, 3))
    assert torch.equal(tc.em(C0, steps=3), torch.full((2, 3), 1 / 3, dtype=torch.float64))
    assert torch.allclose(tc.one_step_md(C0, [2.0, 3.0, 5.0]), torch.tensor(mu).expand(2, 3), rtol=1e-15, atol=0)
    assert tc.log_likelihood(mu, C0).tolist() == [0.0, 0.0]
    y = np.array([[1, 2, 0]])
    p = tc.md_predictive_all_prefixes(y, pi, [2.0, 3.0, 5.0], steps=2)
    np.testing.assert_allclose(_np(p)[0, 0], mu @ pi[[0, 2, 1]], rtol=1e-14)
    # m = 1: the weight is 1 whatever the data; the predictive is pi[y[t]]
    y = rng.integers(0, 4, size=(2, 9))
    for k in (0, 1, 3):
        np.testing.assert_allclose(_np(tc.md_predictive_all_prefixes(y, pi, [0.7], steps=k)), pi[y], rtol=1e-15)


# ----------------------------------------------------------------------------- long context
@pytest.fixture(scope="module")
def long_case():
    rng = np.random.default_rng(11)
    pi = M.random_transition_matrix(6, concentration=0.3, rng=rng)
    pi = np.maximum(pi, 1e-12)
    pi /= pi.sum(axis=1, keepdims=True)
    alpha = np.array([0.1, 0.5, 2.0])
    tokens = M.sample_icl(pi, alpha, 5003, 2, rng=rng)[0]  # n = 5000 transitions
    return tokens, pi, alpha


def test_long_context_n5000_no_overflow(long_case):
    tokens, pi, alpha = long_case
    m = 3
    mu = alpha / alpha.sum()
    C = M.lag_factors(tokens, pi, m)
    Ct = tc.lag_factors(tokens, pi, m)
    assert np.array_equal(_np(Ct), C)
    ll = tc.log_likelihood(mu, Ct)
    assert torch.isfinite(ll).all() and ll.max() < -1000  # large, not overflowed
    _close(ll, M.log_likelihood(mu, C), "log_likelihood n=5000")
    _close(tc.gradient(mu, Ct), M.gradient(mu, C), "gradient n=5000")
    for eta in (1e-3, 1.0):  # η∇ℓ is in the thousands for η = 1: exp would overflow outside log space
        lam = tc.mirror_descent(Ct, eta=eta, steps=3, lam0=mu)
        assert torch.isfinite(lam).all()
        _close(lam, M.mirror_descent(C, eta=eta, steps=3, lam0=mu), f"mirror_descent n=5000 eta={eta}")
    _close(tc.em(Ct, steps=5), M.em(C, steps=5), "em n=5000")
    # one-step MD: the exponent η*G/μ reaches ~2e3 here (κ ~ 1e4). Against 40-digit mpmath the
    # torch value (G = Σγ, a sum of terms in [0, 1]) is within ~1e-12; the NumPy core's
    # log-space gradient route is within ~1e-10 (1.03e-10 measured), so mpmath is the reference.
    mp = pytest.importorskip("mpmath")
    with mp.workdps(40):
        mu_mp = [mp.mpf(float(a)) / mp.fsum(mp.mpf(float(x)) for x in alpha) for a in alpha]
        eta = 1 / (1 + mp.fsum(mp.mpf(float(x)) for x in alpha))
        want = []
        for Cb in C:
            G = [mp.mpf(0)] * m
            for row in Cb:
                w = [mp.mpf(float(c)) * u for c, u in zip(row, mu_mp)]
                tot = mp.fsum(w)
                G = [g + x / tot for g, x in zip(G, w)]
            z = [mp.log(u) + eta * g / u for u, g in zip(mu_mp, G)]
            e = [mp.exp(x - max(z)) for x in z]
            want.append([float(x / mp.fsum(e)) for x in e])
    _close(tc.one_step_md(Ct, alpha), np.array(want), "one_step_md n=5000 vs mpmath")


@pytest.mark.parametrize("steps", [1, 2])
def test_long_context_all_prefixes(long_case, steps):
    tokens, pi, alpha = long_case
    tokens = tokens[:1] if steps == 2 else tokens  # the k >= 2 pass is O(T²): one sequence
    p = tc.md_predictive_all_prefixes(torch.as_tensor(tokens), pi, alpha, steps=steps)
    assert p.shape == (tokens.shape[0], 5001, 6)
    assert torch.isfinite(p).all()
    np.testing.assert_allclose(_np(p).sum(-1), 1.0, rtol=0, atol=1e-12)
    m = alpha.shape[0]
    for r in (0, 1, 37, 2500, 4999, 5000):  # row r: the prefix of length m + r
        y = tokens[:, : m + r]
        lam = M.k_step_md(M.lag_factors(y, pi, m), alpha, steps)
        _close(p[:, r], M.predictive(lam, y, pi), f"all prefixes n=5000 row {r}")


def test_long_context_float32_stays_finite(long_case):
    tokens, pi, alpha = long_case
    p = tc.md_predictive_all_prefixes(tokens, torch.tensor(pi, dtype=torch.float32), alpha)
    assert p.dtype == torch.float32 and torch.isfinite(p).all()
    np.testing.assert_allclose(_np(p).sum(-1), 1.0, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- dtype and device
@given(seeds)
def test_float32_results_and_agreement_with_float64(seed):
    rng = np.random.default_rng(seed)
    C = rng.uniform(0.05, 1.0, size=(3, 20, 4))
    lam = rng.dirichlet(np.ones(4))
    C32 = torch.tensor(C, dtype=torch.float32)
    pairs = [
        (tc.log_likelihood(lam, C32), M.log_likelihood(lam, C)),
        (tc.gradient(lam, C32), M.gradient(lam, C)),
        (tc.mirror_descent(C32, eta=0.05, steps=2, lam0=lam), M.mirror_descent(C, eta=0.05, steps=2, lam0=lam)),
        (tc.em(C32, steps=2), M.em(C, steps=2)),
        (tc.one_step_md(C32, [0.5, 1.0, 2.0, 4.0]), M.one_step_md(C, [0.5, 1.0, 2.0, 4.0])),
    ]
    for got, want in pairs:
        assert got.dtype == torch.float32
        # 20 terms of float32 rounding (6e-8 each) and a few steps: well under 1e-5 relative
        assert _rel_err(_np(got), want) <= 1e-5


@CUDA
def test_cuda_parity():
    rng = np.random.default_rng(12)
    pi = M.random_transition_matrix(7, rng=rng)
    alpha = np.array([0.2, 1.0, 4.0])
    tokens = torch.as_tensor(M.sample_icl(pi, alpha, 300, 3, rng=rng)[0])
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        pc = torch.tensor(pi, dtype=dtype)
        pg = pc.cuda()
        for k in (1, 2):
            a = tc.md_predictive_all_prefixes(tokens, pc, alpha, steps=k)
            b = tc.md_predictive_all_prefixes(tokens.cuda(), pg, alpha, steps=k)
            assert b.device.type == "cuda" and b.dtype == dtype
            assert _rel_err(_np(b), _np(a)) <= rtol
        C = tc.lag_factors(tokens, pc, 3)
        Cg = tc.lag_factors(tokens.cuda(), pg, 3)
        assert torch.equal(C, Cg.cpu())
        lam = alpha / alpha.sum()
        for f in (lambda c: tc.log_likelihood(lam, c), lambda c: tc.gradient(lam, c),
                  lambda c: tc.mirror_descent(c, eta=0.1, steps=3), lambda c: tc.em(c, steps=3),
                  lambda c: tc.one_step_md(c, alpha)):
            a, b = f(C), f(Cg)
            assert b.device.type == "cuda"
            assert _rel_err(_np(b), _np(a)) <= rtol


# ----------------------------------------------------------------------------- validation, same as NumPy
GOOD_C = np.array([[0.5, 0.2], [0.1, 0.3]])
PI = np.array([[0.5, 0.5], [0.2, 0.8]])
BAD = [
    # (function name, kwargs, argument named in the error)
    ("log_likelihood", dict(lam=[0.5, 0.5], C=[[0.5, -0.2]]), "C"),
    ("log_likelihood", dict(lam=[0.5, 0.5], C=[[0.5, np.nan]]), "C"),
    ("log_likelihood", dict(lam=[0.5, 0.5], C=[0.5, 0.2]), "C"),
    ("log_likelihood", dict(lam=[0.5, 0.6], C=GOOD_C), "lam"),
    ("log_likelihood", dict(lam=[1.5, -0.5], C=GOOD_C), "lam"),
    ("gradient", dict(lam=[0.2, 0.3, 0.5], C=GOOD_C), "lam"),
    ("gradient", dict(lam=[0.5, 0.5], C=[[0.5, 0.2], [0.0, 0.0]]), "C"),
    ("mirror_descent", dict(C=GOOD_C, eta=-1.0), "eta"),
    ("mirror_descent", dict(C=GOOD_C, eta=np.inf), "eta"),
    ("mirror_descent", dict(C=GOOD_C, eta=0.1, steps=-1), "steps"),
    ("mirror_descent", dict(C=GOOD_C, eta=0.1, steps=1.5), "steps"),
    ("mirror_descent", dict(C=GOOD_C, eta=0.1, lam0=[0.3, 0.3]), "lam0"),
    ("mirror_descent", dict(C=[[0.5, 0.0]], eta=0.1, lam0=[0.0, 1.0]), "lam0"),
    ("em", dict(C=GOOD_C, steps=-2), "steps"),
    ("em", dict(C=GOOD_C, lam0=[0.5]), "lam0"),
    ("one_step_md", dict(C=GOOD_C, alpha=[1.0, -1.0]), "alpha"),
    ("one_step_md", dict(C=GOOD_C, alpha=[1.0, 1.0, 1.0]), "alpha"),
    ("lag_factors", dict(tokens=[0, 1, 2], pi=PI, m=1), "tokens"),
    ("lag_factors", dict(tokens=[0.0, 1.0], pi=PI, m=1), "tokens"),
    ("lag_factors", dict(tokens=[0, 1], pi=PI, m=3), "tokens"),
    ("lag_factors", dict(tokens=[0, 1], pi=PI, m=0), "m"),
    ("lag_factors", dict(tokens=[0, 1], pi=[[0.5, 0.6], [0.2, 0.8]], m=1), "pi"),
    ("lag_factors", dict(tokens=[0, 1], pi=[[0.5, 0.5]], m=1), "pi"),
]


@pytest.mark.parametrize("fname, kwargs, name", BAD, ids=[f"{b[0]}-{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs_raise_like_numpy(fname, kwargs, name):
    with pytest.raises(ValueError, match=name):
        getattr(M, fname)(**kwargs)  # the NumPy core names the same argument
    with pytest.raises(ValueError, match=name):
        getattr(tc, fname)(**kwargs)
    as_tensors = {k: torch.tensor(v) if isinstance(v, (list, np.ndarray)) and k != "tokens" else v
                  for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=name):
        getattr(tc, fname)(**as_tensors)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(tokens=np.array([[0, 1, 2]])), "tokens"),
        (dict(tokens=torch.tensor([[0.0, 1.0]])), "tokens"),
        (dict(tokens=np.array([[0]])), "tokens"),  # T < m = 2
        (dict(pi=[[0.5, 0.6], [0.2, 0.8]]), "pi"),
        (dict(alpha=[1.0, 0.0]), "alpha"),
        (dict(eta=-0.5), "eta"),
        (dict(eta=np.nan), "eta"),
        (dict(steps=-1), "steps"),
        (dict(pi=[[1.0, 0.0], [0.0, 1.0]], tokens=np.array([[0, 0, 1]])), "tokens"),  # impossible
    ],
)
def test_md_predictive_all_prefixes_bad_inputs(kwargs, name):
    args = dict(tokens=np.array([[0, 1, 1, 0]]), pi=PI, alpha=[1.0, 2.0]) | kwargs
    with pytest.raises(ValueError, match=name):
        tc.md_predictive_all_prefixes(**args)
