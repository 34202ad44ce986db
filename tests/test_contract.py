"""The core contract, as one property test over the public API (docs/guide/verification.md).

Every function with a row in :data:`mtdmath._api.API` (the table the docs' API reference is
generated from) is called on valid inputs that Hypothesis draws from the *domains* its row gives
its arguments: extreme alpha (1e-300 ... 1e300), probabilities down to 1e-300 (1e-30 in float32)
and exact zeros in pi and lam, S = 1 and 2, m = 1, empty batches, n = 0, on NumPy, torch
float32/float64 and array-api-strict. Each call is held to:

- the promises of its row (finite, on the simplex, -inf exactly where the data are impossible,
  never NaN, tokens in range and possible, equal to a brute-force evaluation), each decided by an
  independent route (log-space sums with SciPy, explicit loops), never by the library itself;
- its inputs are left unchanged (bit for bit);
- the same int seed gives the same bits;
- NumPy: its peak allocation (tracemalloc) stays within the row's budget;
- torch float32 runs within a time ratio of float64 on the same draw (so a tolerance that the
  dtype cannot reach, iterating to a step limit, shows up as a ratio, not as a timing).

CI (the ``ci`` profile) draws a few examples per function; ``MTDMATH_SLOW=1`` draws many more.
One test runs the linear-cost functions once at n = 10^5.
"""
from __future__ import annotations

import importlib
import inspect
import math
import os
import time
import tracemalloc
from dataclasses import dataclass, fields, is_dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import mtdmath
from mtdmath import _api
from mtdmath.experiments import posterior_mean_all_prefixes

from backends import NUMPY, STRICT, TORCH32, TORCH64, torch, array_api_strict

SLOW = os.environ.get("MTDMATH_SLOW") == "1"
#: examples per function: the CI suite covers every function in about a minute on two cores
EXAMPLES = 200 if SLOW else 12
#: ... fewer for the functions that sample and tune many times per call
FEWER = {"optimal_step": 40 if SLOW else 3}

#: torch float32 may take this many times the float64 time, plus a fixed slack for timer noise and
#: small calls on a busy machine; a float32 loop that runs to a step limit costs 100-10000x
TIME_RATIO, TIME_SLACK_S = 10.0, 0.5

BACKENDS = [b for b, ok in ((NUMPY, True), (TORCH64, torch is not None), (TORCH32, torch is not None),
                            (STRICT, array_api_strict is not None)) if ok]

#: the functions the property test calls (every row without ``covered_by``, plus the extras)
CORE = {name: e for name, e in {**_api.API, **_api.EXTRA}.items() if e.covered_by is None}


def _function(name: str):
    if name.startswith("experiments."):
        return posterior_mean_all_prefixes
    return getattr(mtdmath, name)


# ----------------------------------------------------------------------------- the table is complete
def _is_public(name: str) -> bool:
    """A name of ``mtdmath.__all__``, or ``NAMESPACE.NAME`` with NAME in that namespace's ``__all__``."""
    if "." not in name:
        return name in mtdmath.__all__
    namespace, _, attr = name.partition(".")
    return attr in importlib.import_module(f"mtdmath.{namespace}").__all__


def test_every_public_name_has_a_row():
    missing = [name for name in mtdmath.__all__ if name not in _api.API]
    assert not missing, f"public names without a row in mtdmath._api.API: {missing}"
    stale = [name for name in _api.API if not _is_public(name)]
    assert not stale, f"rows of mtdmath._api.API for names that are not public: {stale}"
    for name, e in _api.API.items():
        assert e.section in _api.SECTIONS, (name, e.section)
        assert e.covered_by or e.args, f"{name}: a core row must give its arguments' domains"


@pytest.mark.parametrize("name", sorted(CORE))
def test_rows_match_the_signatures(name):
    """Every drawn argument is a real parameter, and every required parameter is drawn."""
    e = CORE[name]
    params = inspect.signature(_function(name)).parameters
    assert set(e.args) <= set(params), (name, set(e.args) - set(params))
    required = {p for p, v in params.items() if v.default is inspect.Parameter.empty
                and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}
    assert required <= set(e.args), (name, required - set(e.args))
    assert set(e.args.values()) <= set(_api.DOMAINS), (name, set(e.args.values()) - set(_api.DOMAINS))
    assert set(e.promises) <= set(_api.PROMISES), (name, set(e.promises) - set(_api.PROMISES))
    assert set(e.args.values()) <= set(DRAWN), f"{name}: no draw for {set(e.args.values()) - set(DRAWN)}"


# ----------------------------------------------------------------------------- drawing a problem
@dataclass
class Problem:
    """One consistent set of valid inputs (float64 NumPy; converted per backend at the call)."""

    S: int
    m: int
    n: int
    batch: tuple
    pi: np.ndarray
    alpha: np.ndarray
    lam: np.ndarray
    lam_pos: np.ndarray
    tokens: np.ndarray
    C: np.ndarray
    p: np.ndarray
    q: np.ndarray
    eta: float
    steps: int
    seed: int
    concentration: float
    L: int
    count: int
    n_boot: int

    @property
    def T(self) -> int:
        return self.n + self.m

    def sizes(self) -> dict:
        return {"B": math.prod(self.batch), "n": self.n, "m": self.m, "S": self.S, "T": self.T, "steps": self.steps}


def _tiny(float32: bool) -> float:
    """The smallest probabilities drawn: 1e-300 in float64; in float32 1e-30 (1e-300 is 0 there,
    and a row of pi or C must stay nonzero after the cast)."""
    return 1e-30 if float32 else 1e-300


def _simplex(rng, shape, tiny, zeros=True):
    """Points of the simplex with exact zeros (the largest weight kept) and tiny weights."""
    x = rng.dirichlet(np.full(shape[-1], rng.choice([0.05, 1.0, 5.0])), size=shape[:-1] or None)
    x = np.reshape(x, shape)
    if x.size and zeros:
        keep = x == x.max(axis=-1, keepdims=True)
        x = np.where(keep | (rng.random(shape) > 0.3), x, 0.0)
        x = np.where(~keep & (x > 0) & (rng.random(shape) < 0.3), tiny * rng.uniform(1, 10, shape), x)
    return x / x.sum(axis=-1, keepdims=True) if x.size else x


def _alpha(rng, m, kind):
    if kind == "moderate":
        return np.exp(rng.uniform(np.log(0.05), np.log(20), m))
    if kind == "tiny":
        return np.full(m, 1e-300)
    if kind == "huge":
        return np.full(m, 1e300)
    return 10.0 ** rng.uniform(-300, 300, m)  # "extreme": each entry anywhere in 1e-300 ... 1e300


def _sample_tokens(rng, pi, lam, T):
    """MTD sequences by direct simulation (not the library's sampler): y[t] ~ pi[y[t - g]], g ~ lam."""
    batch, m = lam.shape[:-1], lam.shape[-1]
    lam2 = lam.reshape(-1, m)
    B, S = lam2.shape[0], pi.shape[0]
    y = np.zeros((B, T), dtype=np.int64)
    y[:, :m] = rng.integers(0, S, (B, m))
    for b in range(B):
        g = rng.choice(m, size=T, p=lam2[b]) + 1
        u = rng.random(T)
        cdf = np.cumsum(pi, axis=1)
        cdf /= cdf[:, -1:]
        for t in range(m, T):
            y[b, t] = min(int(np.searchsorted(cdf[y[b, t - g[t]]], u[t], side="right")), S - 1)
    return y.reshape(batch + (T,))


def _brute_lag_factors(tokens, pi, m):
    """C[..., i, g-1] = pi[y[m+i-g], y[m+i]] by an explicit loop over lags."""
    T = tokens.shape[-1]
    C = np.zeros(tokens.shape[:-1] + (T - m, m))
    for g in range(1, m + 1):
        C[..., g - 1] = pi[tokens[..., m - g: T - g], tokens[..., m:]]
    return C


@st.composite
def problems(draw, max_n: int, float32: bool):
    tiny = _tiny(float32)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    S = draw(st.sampled_from([1, 2, 3, 5]))
    m = draw(st.sampled_from([1, 2, 3, 4]))
    n = draw(st.sampled_from([0, 1, 2, 7, 23, 40])) if max_n >= 40 else draw(st.integers(0, max_n))
    n = min(n, max_n)
    batch = draw(st.sampled_from([(), (0,), (2,), (1, 2)]))
    pi_kind = draw(st.sampled_from(["dirichlet", "zeros"]))
    pi = _simplex(rng, (S, S), tiny, zeros=pi_kind == "zeros")
    alpha = _alpha(rng, m, draw(st.sampled_from(["moderate", "extreme", "tiny", "huge"])))
    lam = _simplex(rng, batch + (m,), tiny)
    lam_pos = lam + np.where(lam == 0, tiny, 0.0)  # positive: every transition possible under it
    lam_pos = lam_pos / lam_pos.sum(axis=-1, keepdims=True) if lam.size else lam
    tokens = _sample_tokens(rng, pi, lam, n + m)
    if draw(st.booleans()):  # lag factors of the sampled tokens
        C = _brute_lag_factors(tokens, pi, m)
    else:  # lag factors drawn directly: zeros, tiny entries, one positive entry per row
        shape = batch + (n, m)
        C = rng.random(shape)
        C = np.where(rng.random(shape) < 0.3, tiny * rng.uniform(1, 10, shape), C)
        C = np.where(rng.random(shape) < 0.3, 0.0, C)
        if C.size:
            g = rng.integers(0, m, batch + (n, 1))
            np.put_along_axis(C, g, rng.uniform(1e-3, 1, batch + (n, 1)), axis=-1)
    p = _simplex(rng, batch + (S,), tiny)
    q = 0.5 * p + 0.5 * _simplex(rng, batch + (S,), tiny)  # positive wherever p is
    q = q / q.sum(axis=-1, keepdims=True) if q.size else q
    steps = draw(st.integers(0, 3))
    eta = draw(st.sampled_from([0.0, 1e-12, None, 0.7, 1e3]))
    eta = 1 / (1 + alpha.sum()) if eta is None else eta
    return Problem(S=S, m=m, n=n, batch=batch, pi=pi, alpha=alpha, lam=lam, lam_pos=lam_pos, tokens=tokens, C=C,
                   p=p, q=q, eta=eta, steps=steps, seed=draw(st.integers(0, 2**31)),
                   concentration=draw(st.sampled_from([1e-3, 0.3, 1.0, 1e3])), L=m + draw(st.integers(0, 4)),
                   count=draw(st.integers(2, 4)), n_boot=draw(st.sampled_from([0, 2])))


#: how each domain becomes an argument: (problem, backend, function name) -> value
DRAWN = {
    "S": lambda z, bk, f: z.S,
    "m": lambda z, bk, f: z.m,
    "n": lambda z, bk, f: z.n,
    "T": lambda z, bk, f: z.T,
    "B": lambda z, bk, f: max(1, math.prod(z.batch)),
    "concentration": lambda z, bk, f: z.concentration,
    "seed": lambda z, bk, f: z.seed,
    "pi": lambda z, bk, f: bk.asarray(z.pi),
    "alpha": lambda z, bk, f: z.alpha,
    "lam": lambda z, bk, f: bk.asarray(z.lam),
    "lam_rows": lambda z, bk, f: bk.asarray(z.lam.reshape((math.prod(z.batch), z.m)) if len(z.batch) > 1 else z.lam),
    "lam_pos": lambda z, bk, f: bk.asarray(z.lam_pos),
    "tokens": lambda z, bk, f: bk.asarray(z.tokens),
    "C": lambda z, bk, f: bk.asarray(z.C),
    "C_exact": lambda z, bk, f: bk.asarray(z.C),
    "C_3d": lambda z, bk, f: bk.asarray(z.C.reshape((math.prod(z.batch),) + z.C.shape[-2:])),
    # a schedule (one step size per step) where the function takes a number of steps
    "eta": lambda z, bk, f: [z.eta * (j + 1) for j in range(z.steps)]
    if f in ("mirror_descent", "k_step_md", "md_predictive_all_prefixes") and z.steps >= 2 else z.eta,
    "steps": lambda z, bk, f: z.steps,
    "k": lambda z, bk, f: z.steps,
    "p": lambda z, bk, f: bk.asarray(z.p),
    "q": lambda z, bk, f: bk.asarray(z.q),
    "L": lambda z, bk, f: z.L,
    "count": lambda z, bk, f: z.count,
    "n_boot": lambda z, bk, f: z.n_boot,
    "samples": lambda z, bk, f: 16,
    "max_bytes": lambda z, bk, f: 2**30,
}


# ----------------------------------------------------------------------------- the checks
def _host(x):
    """A bit-exact NumPy copy of an array argument (None for scalars)."""
    if isinstance(x, np.ndarray):
        return x.copy()
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().copy()
    if array_api_strict is not None and type(x).__module__.startswith("array_api_strict"):
        return np.asarray(mtdmath._xp.to_numpy(x)).copy()
    return None


def _bits(out):
    """The result as a flat list of NumPy arrays, for bit-for-bit comparison."""
    if isinstance(out, tuple):
        return [a for o in out for a in _bits(o)]
    if is_dataclass(out):
        return [a for f in fields(out) for a in _bits(getattr(out, f.name))]
    if isinstance(out, (list,)):
        return [np.asarray(out, dtype=float)]
    h = _host(out)
    return [h] if h is not None else [np.asarray(out)]


def _same_bits(a, b) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype and
                                    np.array_equal(x, y, equal_nan=x.dtype.kind in "fc") for x, y in zip(a, b))


def _log_grad_ref(lam, C):
    """log ∇ℓ_g = logsumexp_i(log C[i,g] - log s_i), log s_i = logsumexp_g(log C[i,g] + log lam_g), float64."""
    with np.errstate(divide="ignore"):
        lC, ll = np.log(C), np.log(lam)
    log_s = logsumexp(lC + ll[..., None, :], axis=-1)
    return logsumexp(lC - log_s[..., None], axis=-2), log_s, lC


def _check_simplex(x, m, eps, what):
    assert np.all(np.isfinite(x)), f"{what}: not finite: {x[~np.isfinite(x)][:5]}"
    assert np.all(x >= 0), f"{what}: negative entries {x[x < 0][:5]}"
    if x.size:
        # rounding: a softmax or a ratio of sums is exact to a few eps per term
        np.testing.assert_allclose(x.sum(axis=-1), 1.0, atol=16 * max(m, 2) * eps, err_msg=what)


def _possible(lam, C):
    """Whether every transition has a lag with C[i,g] > 0 and lam_g > 0 (exact, no products)."""
    return np.all(np.any((C > 0) & (lam[..., None, :] > 0), axis=-1), axis=-1)


def _check(name, e, z, bk, out, args):
    """The promises of the row on this result, each by an independent route."""
    P = set(e.promises)
    eps = bk.eps
    has_arrays = any(d in ("pi", "lam", "lam_pos", "tokens", "C", "C_exact", "p", "q") for d in e.args.values())
    parts = out if isinstance(out, tuple) else (out,)
    if name == "predicted_step":
        _check_step_law(out, z)
        return
    if is_dataclass(out):  # optimal_step
        assert math.isfinite(float(np.max(out.eta))) and np.all(np.asarray(out.eta) > 0), out.eta
        for f in ("kl", "kl_eta_star"):
            assert math.isfinite(getattr(out, f)) and getattr(out, f) >= -1e-12, (f, getattr(out, f))
        return
    if name == "n_count_states":
        # count the vectors k in N^m with |k| = n by dynamic programming over the lags
        ways = np.zeros(z.n + 1, dtype=object)
        ways[0] = 1  # no lag: only the empty vector, of sum 0
        for _ in range(z.m):  # one more lag: sum over its count
            ways = np.cumsum(ways)
        assert out == ways[z.n] and isinstance(out, int)
        return
    if name == "eta_bayes":
        assert 0 < out <= 1 and math.isfinite(out)
        assert math.isclose(out, 1 / (1 + math.fsum(z.alpha)), rel_tol=1e-15)
        return
    vals = []
    for part in parts:
        integer = (_host(part) is not None and _host(part).dtype.kind in "iu")
        if name == "random_transition_matrix":
            vals.append(np.asarray(part, dtype=np.float64))
        elif has_arrays and not name.startswith("experiments."):  # the experiments answer in NumPy
            vals.append(bk.check(part, integer=integer) if not integer else bk.to_numpy(part).astype(np.int64))
        else:
            vals.append(np.asarray(mtdmath._xp.to_numpy(part), dtype=np.float64))
    C = bk.round_trip(z.C)
    lam = bk.round_trip(z.lam)
    if "tokens" in P:
        y = vals[0].astype(np.int64)
        lam_used = vals[1] if len(vals) > 1 else lam
        assert y.shape[-1] == z.T and np.all((y >= 0) & (y < z.S))
        Cy = _brute_lag_factors(y, bk.round_trip(z.pi), z.m)
        assert np.all(_possible(lam_used if lam_used.ndim == Cy.ndim - 1 else lam_used, Cy)), \
            "a sampled transition has probability 0 under (pi, lam)"
    if "simplex" in P:
        x = vals[-1] if "tokens" in P else vals[0]
        _check_simplex(x, z.m, eps, name)
    if "finite" in P:
        for v in vals:
            assert np.all(np.isfinite(v)), f"{name}: not finite {v[~np.isfinite(v)][:5]}"
    if "nonneg" in P:
        assert np.all(vals[0] >= -16 * eps), f"{name}: negative {vals[0][vals[0] < 0][:5]}"
    if "exact" in P:
        if name == "lag_factors":
            np.testing.assert_array_equal(vals[0], bk.round_trip(_brute_lag_factors(z.tokens, bk.round_trip(z.pi), z.m)))
        elif name == "predictive":
            pi = bk.round_trip(z.pi)
            want = sum(lam[..., g - 1, None] * pi[z.tokens[..., z.T - g]] for g in range(1, z.m + 1))
            np.testing.assert_allclose(vals[0], want, rtol=8 * z.m * eps, atol=1e-300)
    if "loglik" in P:
        _, log_s, _ = _log_grad_ref(lam, C)
        ok = _possible(lam, C)
        assert not np.any(np.isnan(vals[0]))
        assert np.all(np.isfinite(vals[0][ok])), f"log_likelihood not finite where possible: {vals[0][ok]}"
        assert np.all(vals[0][~ok] == -np.inf)
        # and it is the log-space sum itself (relative to the terms' size: rounding of n logs)
        if np.all(ok):
            ref = log_s.sum(axis=-1)
            np.testing.assert_allclose(vals[0], ref, rtol=64 * eps * max(z.n, 1) ** 0.5 + 1e-6 * bk.float32,
                                       atol=64 * eps * (np.abs(log_s).sum(axis=-1).max(initial=0) + z.n) + 1e-300)
    if "derivative" in P:
        v = vals[0]
        assert not np.any(np.isnan(v)), f"{name}: NaN"
        fmax = math.log(np.finfo(bk.float_dtype).max)
        lg, log_s, lC = _log_grad_ref(lam, C)
        if name == "hessian":
            ref = logsumexp(lC[..., :, :, None] + lC[..., :, None, :] - 2 * log_s[..., None, None], axis=-3)
        else:
            ref = lg if name == "gradient" else (lg.max(axis=-1) - math.log(max(z.n, 1)) if z.n else np.zeros(lg.shape[:-1]))
        small = ref < fmax - 2  # exact value well inside the dtype's range: the result must be finite
        assert np.all(np.isfinite(v[small])), f"{name}: inf where the exact value is finite: {ref[small & ~np.isfinite(v)][:5]}"


def _check_step_law(out, z):
    """predicted_step's result: c∞ in (0, inf] (inf exactly when the law is flat in n), A = 1 + α₀ and
    B = 1/c∞ finite and >= 0, standard errors never NaN, and the law η(n) = 1/(A + Bn) positive, at most
    η* = 1/(1+α₀) and non-increasing in n (the method, evaluated at a few n up to 10^12)."""
    alpha0 = math.fsum(z.alpha)
    assert out.c_inf > 0 and not math.isnan(out.c_inf), out
    assert math.isfinite(out.A) and math.isclose(out.A, 1 + alpha0, rel_tol=4e-16 * z.m), (out.A, alpha0)
    assert math.isfinite(out.B) and out.B >= 0, out
    assert (out.B == 0) == (out.c_inf == math.inf), out
    if out.c_inf < math.inf:  # the slope is the reciprocal of the constant (one rounding)
        assert math.isclose(out.B, 1 / out.c_inf, rel_tol=2.3e-16), out
    for se in (out.c_inf_se, out.B_se):
        assert se >= 0 and not math.isnan(se), out
    assert math.isclose(out.eta_star, 1 / (1 + alpha0), rel_tol=4e-16 * z.m)
    n = np.array([0.0, 1.0, 7.0, 1e3, 1e6, 1e12])
    eta = np.asarray(out.eta(n))
    assert np.all(np.isfinite(eta)) and np.all(eta > 0), eta
    assert eta[0] == out.eta(0) and math.isclose(eta[0], out.eta_star, rel_tol=4e-16), (eta[0], out.eta_star)
    assert np.all(np.diff(eta) <= 0), eta


def _call(name, e, z, bk):
    fn = _function(name)
    args = {a: DRAWN[d](z, bk, name) for a, d in e.args.items()}
    return fn, args


def _expect_refusal(name, e, z, bk):
    """A documented refusal on valid-shaped input: impossible data under lam, or MC without draws."""
    P = set(e.promises)
    if "refuses_mu_underflow" in P and np.any(z.alpha / z.alpha.sum() < np.finfo(np.float64).smallest_normal):
        return "alpha"
    if "refuses_impossible" in P and z.n and math.prod(z.batch):
        return "lam" if not np.all(_possible(bk.round_trip(z.lam), bk.round_trip(z.C))) else None
    return None


def _invoke(fn, args, measure: bool):
    """(result, ValueError or None, seconds, peak bytes traced or None)."""
    if measure:
        tracemalloc.start()
    t0 = time.perf_counter()
    out, err, peak = None, None, None
    try:
        out = fn(**args)
    except ValueError as e:
        err = e
    finally:
        elapsed = time.perf_counter() - t0
        if measure:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    return out, err, elapsed, peak


def _run_contract(name, z, bk):
    e = CORE[name]
    fn, args = _call(name, e, z, bk)
    before = {a: _host(v) for a, v in args.items()}
    refuse = _expect_refusal(name, e, z, bk)
    budget = e.budget(z.sizes()) if (e.budget is not None and bk is NUMPY) else None
    first = None
    if budget is not None:
        # a first call loads what a process loads once (modules, compiled kernels), outside the
        # measurement; the measured call then repeats it, and must give the same bits
        first = _invoke(fn, args, False)
    out, err, elapsed, peak = _invoke(fn, args, budget is not None)
    if err is not None:
        msg = str(err)
        if refuse:
            assert msg.startswith(refuse), msg  # names the public argument
            return
        if "refuses_mc" in e.promises and ("alpha" in msg or msg.startswith("C, alpha")):
            return
        if "refuses_range" in e.promises and msg.startswith("alpha: the exact recursion's weights") and \
                z.alpha.min() / z.alpha.sum() < 1e-280:
            return  # allowed only where a Pólya factor alpha_g/(α₀+i) can leave the float64 range
        raise err
    assert not refuse, f"{name} accepted {refuse} where the contract says it refuses it"
    if budget is not None:
        assert peak <= budget, f"{name}: peak allocation {peak} bytes above its budget {budget:.0f} ({z.sizes()})"
    # inputs unchanged, bit for bit
    for a, v in args.items():
        if before[a] is not None:
            after = _host(v)
            assert after.dtype == before[a].dtype and np.array_equal(after, before[a], equal_nan=True), \
                f"{name} changed its argument {a}"
    _check(name, e, z, bk, out, args)
    if first is not None:  # the same inputs (and seed) give the same bits
        assert _same_bits(_bits(out), _bits(first[0])), f"{name}: the same inputs gave different bits"
    elif "seeded" in e.promises:
        assert _same_bits(_bits(out), _bits(fn(**args))), f"{name}: the same seed gave different bits"
    if bk is TORCH32:
        # both dtypes timed on a second call: a first call may load modules or compile for its dtype
        _, _, elapsed, _ = _invoke(fn, args, False)
        fn64, args64 = _call(name, e, z, TORCH64)
        _invoke(fn64, args64, False)
        _, err64, t64, _ = _invoke(fn64, args64, False)
        if err64 is None:
            assert elapsed <= TIME_RATIO * t64 + TIME_SLACK_S, \
                f"{name}: torch float32 took {elapsed:.3f} s, float64 {t64:.3f} s"


_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not SLOW,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much])


@pytest.mark.parametrize("name", sorted(CORE))
def test_contract(name):
    e = CORE[name]

    @settings(_SETTINGS, max_examples=FEWER.get(name, EXAMPLES))
    @given(data=st.data())
    def run(data):
        bk = data.draw(st.sampled_from(BACKENDS), label="backend")
        z = data.draw(problems(e.max_n, bk.float32), label="problem")
        _run_contract(name, z, bk)

    run()


LONG = sorted(name for name, e in CORE.items() if e.max_n >= 100_000)


@pytest.mark.parametrize("name", LONG)
def test_contract_at_a_long_context(name):
    """n = 10^5 transitions, S = 2, m = 2, one sequence: the linear-cost functions, once each (the
    samplers, sequential in time by nature, at n = 10^4)."""
    rng = np.random.default_rng(11)
    n, m, S = (10_000 if name.startswith("sample") else 100_000), 2, 2
    pi = np.array([[0.9, 0.1], [1e-300, 1.0 - 1e-300]])
    lam = np.array([0.999, 0.001])
    tokens = _sample_tokens(rng, pi, lam[None], n + m)
    C = _brute_lag_factors(tokens, pi, m)
    z = Problem(S=S, m=m, n=n, batch=(1,), pi=pi, alpha=np.array([1e-300, 3.0]), lam=lam[None], lam_pos=lam[None],
                tokens=tokens, C=C, p=np.array([[0.5, 0.5]]), q=np.array([[1e-300, 1.0]]) + [[0.5, -0.5]], eta=0.7,
                steps=2, seed=3, concentration=1.0, L=m + 2, count=2, n_boot=0)
    _run_contract(name, z, NUMPY)
