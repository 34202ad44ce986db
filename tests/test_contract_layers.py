"""The public contract (docs/guide/verification.md) for the fitting and torch layers.

``tests/test_contract.py`` draws inputs for every core function from the domains in ``mtdmath._api``; the
names of ``mtdmath.fitting`` and ``mtdmath.nn`` carry ``covered_by`` rows that point here instead. Each of
them has a property test below (``COVERAGE`` maps name -> test; a test fails when a covered name has none).
Hypothesis draws valid input at the edges: S = 1, 2, 3 and a declared but unused state, short and long
sequences, several sequences of different lengths, string labels, orders and sparse lags 1..3, per-sequence
weights with zeros, the shared and lag-wise variants; pi with exact zeros and alpha from 1e-300 to 1e300.
Each test checks the promises against an independent route where one exists (a plain Python count, the
core's ``md_predictive_all_prefixes``, the mixture formula by hand, the construction's own step).

CI (the ``ci`` profile) draws a few examples per test; ``MTDMATH_SLOW=1`` draws many more.
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mtdmath
from mtdmath import _api
from mtdmath.fitting import MTD, MarkovChain, MTDModel, TransitionCounts

torch = pytest.importorskip("torch")
from mtdmath import nn as mnn  # noqa: E402

SLOW = os.environ.get("MTDMATH_SLOW") == "1"
#: examples per test: the file runs in about a minute on one core in CI
EXAMPLES = 100 if SLOW else 12
#: ... fewer for the tests that fit several models or train per example
FEW = 25 if SLOW else 4
_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not SLOW)
_FEW = settings(_SETTINGS, max_examples=FEW)

#: a law's rows are sums of at most a few products of numbers in [0, 1]: each rounds by one ulp, so a row
#: sums to 1 within a few ulps (1e-12 is far above that and far below any real error)
SIMPLEX_TOL = 1e-12


def assert_simplex(p, axis=-1, what="law"):
    p = np.asarray(p, dtype=np.float64)
    assert np.all(np.isfinite(p)), f"{what} has non-finite entries"
    assert np.all(p >= 0), f"{what} has negative entries"
    np.testing.assert_allclose(p.sum(axis=axis), 1.0, rtol=0, atol=SIMPLEX_TOL, err_msg=f"{what} not on the simplex")


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------------------------
# drawn data for the fitting layer
# ---------------------------------------------------------------------------------------------------------
@st.composite
def fit_data(draw, max_T: int = 60, min_B: int = 1, max_B: int = 3, long: bool = False):
    """Valid data for every fitting entry point: a dict with the sequences (codes or labels), their weights,
    the lag set, the declared number of states and the estimator's options."""
    S = draw(st.integers(1, 3))
    lag_set = draw(st.sampled_from(["order", "lags"]))
    if lag_set == "order":
        order = draw(st.integers(1, 3))
        lags = tuple(range(1, order + 1))
    else:
        lags = tuple(sorted(draw(st.sets(st.integers(1, 3), min_size=1, max_size=3))))
        order = None
    top = max(lags)
    B = draw(st.integers(min_B, max_B))
    lengths = draw(st.lists(st.integers(top + 1, max_T), min_size=B, max_size=B))
    if long:  # one long sequence (sparingly: the fits are O(T))
        lengths[0] = draw(st.sampled_from([2_000, 10_000]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):  # from an MTD law with drawn zeros (structured transitions)
        law = MTDModel(mtdmath.random_transition_matrix(S, concentration=0.3, rng=rng), rng.dirichlet(np.ones(top)))
        seqs = [law.sample(T, rng=rng) for T in lengths]
    else:  # uniform tokens
        seqs = [rng.integers(0, S, T) for T in lengths]
    weights = None
    if B > 1 and draw(st.booleans()):
        # dyadic weights (exact sums), zeros included; at least one positive
        weights = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=B, max_size=B))
        if not any(weights):
            weights[0] = 1.0
    unused = draw(st.booleans())
    labels = not unused and draw(st.booleans())
    if labels:
        names = np.array(["a", "bb", "c"])
        seqs = [names[s] for s in seqs]
    return {"S": S, "seqs": seqs, "weights": weights, "lags": lags, "order": order,
            "n_symbols": S + 1 if unused else None, "labels": labels, "seed": seed,
            "variant": draw(st.sampled_from(["shared", "lagwise"])), "independent": draw(st.booleans())}


def _estimator(d: dict, **kw) -> MTD:
    lag_kw = {"order": d["order"]} if d["order"] is not None else {"lags": d["lags"]}
    # few restarts and a loose cap: the contract (finite, simplex, seeded) holds at any iterate, so the
    # property test need not run every fit to 1e-9
    opts = dict(n_symbols=d["n_symbols"], variant=d["variant"], independent=d["independent"], restarts=2,
                max_iter=400, random_state=d["seed"])
    opts.update(kw)
    return MTD(**lag_kw, **opts)


def _fit(est, d):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "EM", RuntimeWarning)  # a capped fit warns that max_iter ran out
        warnings.filterwarnings("ignore", ".*max_iter.*", RuntimeWarning)
        return est.fit(d["seqs"], sample_weight=d["weights"])


def _contexts(d: dict, est, n: int = 7) -> np.ndarray:
    """(n, max lag) contexts over every declared state (code or label)."""
    rng = np.random.default_rng(d["seed"] + 1)
    return est.classes_[rng.integers(0, est.n_symbols_, (n, max(d["lags"])))]


def _check_mtd(est, d):
    # a law's log-likelihood is <= 0; each transition's probability is a sum of at most 4 rounded terms
    # (lam_j pi, lam_indep p0), so it may exceed 1 by 4 eps and its log by as much
    assert np.isfinite(est.loglik_) and est.loglik_ <= 4 * np.finfo(float).eps * est.n_obs_
    law = est.model_
    lam = np.asarray(est.lam_)
    total = lam.sum() + (est.lam_indep_ if est.independent else 0.0)
    assert np.all(lam >= 0) and abs(total - 1.0) <= SIMPLEX_TOL
    pi = np.asarray(est.pi_)
    assert_simplex(pi, what="pi rows")  # an unused state's row is the uniform law
    X = _contexts(d, est)
    p = est.predict_proba(X)
    assert p.shape == (X.shape[0], est.n_symbols_)
    assert_simplex(p, what="predict_proba")
    # independent route: the mixture formula by hand on the codes
    codes = np.searchsorted(est.classes_, X) if d["labels"] else X
    pis = pi if pi.ndim == 3 else np.broadcast_to(pi, (len(law.count_lags),) + pi.shape)
    want = sum(lam[j] * pis[j][codes[:, X.shape[1] - lag]] for j, lag in enumerate(est.lags_))
    if est.independent:
        want = want + est.lam_indep_ * est.p0_
    np.testing.assert_allclose(p, want, rtol=0, atol=SIMPLEX_TOL)
    assert np.isfinite(est.score(d["seqs"], sample_weight=d["weights"]))
    h = np.asarray(est.history_)
    # EM climbs: each accepted iterate is at least the last, up to the rounding of a sum of n log terms
    assert np.all(np.diff(h) >= -1e-10 * np.abs(h[1:]).clip(1.0))
    assert est.monitor_.reason is not None or not est.converged_


# ---------------------------------------------------------------------------------------------------------
# fitting: estimators
# ---------------------------------------------------------------------------------------------------------
@_SETTINGS
@given(fit_data())
def test_mtd_fit_contract(d):
    before = copy.deepcopy((d["seqs"], d["weights"]))
    est = _fit(_estimator(d), d)
    _check_mtd(est, d)
    for a, b in zip(before[0], d["seqs"]):
        assert _same_bits(a, b), "fit changed its input"
    assert before[1] == d["weights"]
    again = _fit(_estimator(d), d)
    assert _same_bits(again.lam_, est.lam_) and _same_bits(again.pi_, est.pi_) and again.loglik_ == est.loglik_


@_FEW
@given(fit_data(long=True))
def test_fit_function_long_sequences(d):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        kw = {"order": d["order"]} if d["order"] is not None else {"lags": d["lags"]}
        est = mtdmath.fitting.fit(d["seqs"], **kw, n_symbols=d["n_symbols"], variant=d["variant"], independent=d["independent"],
                    restarts=1, max_iter=100, weights=d["weights"], rng=d["seed"])
    _check_mtd(est, d)


@_SETTINGS
@given(fit_data(max_T=40))
def test_mtd_inference_contract(d):
    est = _fit(_estimator(d), d)
    se = est.standard_errors()
    for name, v in se.items():
        v = np.asarray(v)
        assert not np.any(np.isnan(v)) and np.all(v >= 0), f"se of {name}"
    ci = est.confidence_intervals(0.9)
    pars = {"lam": est.lam_, "pi": est.pi_, **({"lam_indep": est.lam_indep_, "p0": est.p0_} if est.independent else {})}
    for name, (lo, hi) in ci.items():
        lo, hi, e = np.asarray(lo), np.asarray(hi), np.asarray(pars[name])
        assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)), name
        assert np.all((0 <= lo) & (lo <= e + 1e-15) & (e <= hi + 1e-15) & (hi <= 1)), name
    X = _contexts(d, est)
    p, lo, hi = est.predict_proba_interval(X)
    assert np.all((0 <= lo) & (lo <= p + 1e-15) & (p <= hi + 1e-15) & (hi <= 1))


def test_regression_an_unobserved_row_gets_the_interval_0_1():
    # found by test_mtd_inference_contract: lam_indep fitted to 0 leaves p0 unobserved; its floored Wilson interval
    # was [0, 1 - 3.7e-7] and missed the estimate p0 = (0, 1)
    est = MTD(1, independent=True, restarts=2, max_iter=400, random_state=0).fit([np.array([1, 1, 1]),
                                                                                  np.array([0, 0])])
    lo, hi = est.confidence_intervals(0.9)["p0"]
    assert est.lam_indep_ <= 1e-8
    assert np.array_equal(lo, [0.0, 0.0]) and np.array_equal(hi, [1.0, 1.0])


def test_regression_a_one_state_row_stays_on_the_face():
    # found by test_mtd_inference_contract: with S = 1 and lam_indep ~ 0, the face point zeroed p0's only entry, and
    # its interval [0, 0.99976] missed the estimate p0 = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        est = MTD(3, independent=True, restarts=2, max_iter=400, random_state=0).fit(
            [np.zeros(4, dtype=int)] * 3, sample_weight=[0.0, 0.0, 0.5])
    lo, hi = est.confidence_intervals(0.9)["p0"]
    assert est.p0_[0] == 1.0 and lo[0] <= 1.0 == hi[0]


@_SETTINGS
@given(fit_data())
def test_markov_chain_contract(d):
    order = max(d["lags"])
    before = copy.deepcopy(d["seqs"])
    est = MarkovChain(order, n_symbols=d["n_symbols"]).fit(d["seqs"], sample_weight=d["weights"])
    assert np.isfinite(est.loglik_) and est.loglik_ <= 0
    assert_simplex(est.transition_, what="transition rows")
    X = _contexts(d, est)
    assert_simplex(est.predict_proba(X), what="predict_proba")
    assert np.isfinite(est.score(d["seqs"], sample_weight=d["weights"]))
    # independent route: the maximum-likelihood log-likelihood by a plain count over the transitions
    counts, ctx_tot = defaultdict(float), defaultdict(float)
    w = d["weights"] or [1.0] * len(d["seqs"])
    for s, ws in zip(d["seqs"], w):
        for t in range(order, len(s)):
            c = tuple(s[t - order:t])
            counts[c, s[t]] += ws
            ctx_tot[c] += ws
    want = sum(v * np.log(v / ctx_tot[c]) for (c, _), v in counts.items() if v > 0)
    # sums of n float64 log terms in another order: relative rounding ~ n eps
    np.testing.assert_allclose(est.loglik_, want, rtol=1e-10, atol=1e-10)
    for a, b in zip(before, d["seqs"]):
        assert _same_bits(a, b)


def _tuples(counts: TransitionCounts) -> dict:
    return {tuple(map(int, c)) + (int(n),): float(x) for c, n, x in zip(counts.ctx, counts.nxt, counts.w)}


@_SETTINGS
@given(fit_data(max_T=30, min_B=2), st.data())
def test_transition_counts_add_equals_counting_the_union(d, data):
    seqs, lags = d["seqs"], d["lags"]
    cut = data.draw(st.integers(1, len(seqs) - 1))
    w = list(d["weights"] or [1.0] * len(seqs))
    for half in (slice(0, cut), slice(cut, None)):  # counting refuses all-zero weights (no data)
        if not any(w[half]):
            w[half.start or 0] = 1.0
    n_symbols = d["n_symbols"] or d["S"]
    if d["labels"]:  # labelled halves get their own classes: merge the codes
        code = {"a": 0, "bb": 1, "c": 2}
        seqs = [np.array([code[v] for v in s]) for s in seqs]
        n_symbols = 3
    a = TransitionCounts.from_sequences(seqs[:cut], lags=lags, n_symbols=n_symbols, sample_weight=w[:cut])
    b = TransitionCounts.from_sequences(seqs[cut:], lags=lags, n_symbols=n_symbols, sample_weight=w[cut:])
    total = a + b
    # independent route: a plain Python loop over the transitions of every sequence
    want = defaultdict(float)
    for s, ws in zip(seqs, w):
        for t in range(max(lags), len(s)):
            want[tuple(int(s[t - l]) for l in lags) + (int(s[t]),)] += ws
    want = {k: v for k, v in want.items() if v > 0}
    got = _tuples(total)
    assert got == want  # dyadic weights: every sum is exact
    assert total.n_obs == sum(want.values())
    assert _tuples(b + a) == want


@_SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**32 - 1), st.sampled_from(["shared", "lagwise"]))
def test_mtd_model_law_contract(S, k, seed, variant):
    rng = np.random.default_rng(seed)
    pi = mtdmath.random_transition_matrix(S, concentration=0.2, rng=rng)
    if variant == "lagwise":
        pi = np.stack([mtdmath.random_transition_matrix(S, concentration=0.2, rng=rng) for _ in range(k)])
    pi[pi < 1e-3] = 0.0  # exact zeros
    pi /= pi.sum(-1, keepdims=True)
    lam = rng.dirichlet(np.ones(k))
    lam[lam < 0.05] = 0.0
    lam /= lam.sum()
    law = MTDModel(pi.copy(), lam.copy())
    y = law.sample(200, rng=seed)
    assert _same_bits(y, law.sample(200, rng=seed))
    assert np.isfinite(law.log_likelihood(y))  # its own draws have positive probability
    X = rng.integers(0, S, (9, k))
    p = law.predict_proba(X)
    assert_simplex(p)
    pis = pi if pi.ndim == 3 else np.broadcast_to(pi, (k, S, S))
    want = sum(lam[j] * pis[j][X[:, k - 1 - j]] for j in range(k))
    np.testing.assert_allclose(p, want, rtol=0, atol=SIMPLEX_TOL)
    pi_st, _ = law.stationary_distribution()
    assert_simplex(pi_st, what="stationary distribution")


# ---------------------------------------------------------------------------------------------------------
# fitting: selection, tests, the paper's model
# ---------------------------------------------------------------------------------------------------------
def _select(select, d):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # capped fits
        return select(d["seqs"], max(d["lags"]), n_symbols=d["n_symbols"], variant=d["variant"], restarts=2,
                      max_iter=400, weights=d["weights"], rng=d["seed"])


@_FEW
@given(fit_data(max_T=80))
def test_select_order_loglik_nondecreasing(d):
    best, table = _select(mtdmath.fitting.select_order, d)
    ll = np.array([row["loglik"] for row in table])
    assert np.all(np.isfinite(ll))
    # nondecreasing by construction; a refit from the order-m law loses at most rounding
    assert np.all(np.diff(ll) >= -1e-9 * np.abs(ll[1:]).clip(1.0)), ll
    assert best.order in [row["order"] for row in table]
    _check_mtd(best, {**d, "lags": tuple(range(1, best.order + 1))})


@_FEW
@given(fit_data(max_T=80))
def test_select_lags_contract(d):
    best, table = _select(mtdmath.fitting.select_lags, d)
    assert set(best.lags_) <= set(range(1, max(d["lags"]) + 1))
    assert all(np.isfinite(row["loglik"]) for row in table)
    _check_mtd(best, {**d, "lags": best.lags_})


@_FEW
@given(fit_data(max_T=60))
def test_lr_test_and_compare_models_pvalues(d):
    k = max(d["lags"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        try:
            res = mtdmath.fitting.lr_test(MarkovChain(0, n_symbols=d["n_symbols"]), MarkovChain(k, n_symbols=d["n_symbols"]),
                            d["seqs"], sample_weight=d["weights"])
        except ValueError as e:  # a one-state chain has no parameter to test
            assert "df" in str(e)
            res = None
        cmp = mtdmath.fitting.compare_models([MarkovChain(0), MarkovChain(k), _estimator(d, n_symbols=d["n_symbols"])], d["seqs"],
                               sample_weight=d["weights"])
    if res is not None:
        assert 0.0 <= res.pvalue <= 1.0 and res.statistic >= 0 and np.isfinite(res.loglik_larger)
    table = cmp.to_dict()
    assert len(table["models"]) == 3
    for row in table["models"]:
        assert np.isfinite(row["loglik"]) and np.isfinite(row["bic"])
    for t in table["tests"]:
        assert 0.0 <= t["pvalue"] <= 1.0 and t["statistic"] >= 0


@_FEW
@given(st.integers(2, 3), st.integers(1, 2), st.integers(2, 4), st.integers(0, 2**32 - 1))
def test_fit_icl_finite_on_small_data(S, m, B, seed):
    rng = np.random.default_rng(seed)
    pi = mtdmath.random_transition_matrix(S, concentration=1.0, rng=rng)
    y, _ = mtdmath.sample_icl(pi, np.ones(m), 12, batch=B, rng=rng)
    y0 = np.array(y, copy=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        res = mtdmath.fitting.fit_icl(y, m, n_symbols=S, max_iter=30)
    assert _same_bits(y, y0)
    assert np.isfinite(res.objective)
    assert_simplex(res.pi, what="fit_icl pi")
    assert np.all(np.isfinite(res.alpha)) and np.all(res.alpha > 0)
    for se in (res.se_pi, res.se_alpha):
        assert not np.any(np.isnan(se)) and np.all(se >= 0)


# ---------------------------------------------------------------------------------------------------------
# torch: drawn tasks
# ---------------------------------------------------------------------------------------------------------
@st.composite
def tasks(draw, min_m: int = 1, max_T: int = 14):
    """(pi with exact zeros, alpha from 1e-300 to 1e300 with moderate mu = alpha / alpha_0, tokens, seed)."""
    S = draw(st.integers(1, 3))
    m = draw(st.integers(min_m, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.full(S, 0.5), size=S)
    if S > 1 and draw(st.booleans()):
        zero = rng.random((S, S)) < 0.4
        zero[np.arange(S), rng.integers(0, S, S)] = False  # each row keeps one positive entry
        pi[zero] = 0.0
        pi /= pi.sum(1, keepdims=True)
    scale = draw(st.sampled_from([1e-300, 1e-3, 1.0, 1e3, 1e300]))
    # a common scale keeps mu moderate: the construction's w_q = eta/mu stays well conditioned at any scale
    # (and at least ICLTask's documented minimum 1e-300, below which its Gamma draws underflow)
    alpha = np.maximum(scale * rng.uniform(0.2, 5.0, m), 1e-300)
    T = draw(st.integers(m + 2, max_T))
    B = draw(st.integers(2, 3))
    tokens, _ = mtdmath.sample_icl(pi, alpha, T, batch=B, rng=seed)
    return pi, alpha, np.asarray(tokens), seed


@_SETTINGS
@given(tasks())
def test_icl_task_sample_seeded_and_on_the_simplex(task):
    pi, alpha, _, seed = task
    t = mnn.ICLTask(pi, alpha, T=alpha.shape[0] + 3)
    y1, lam1 = t.sample(5, generator=torch.Generator().manual_seed(seed % 2**63))
    y2, lam2 = t.sample(5, generator=torch.Generator().manual_seed(seed % 2**63))
    assert torch.equal(y1, y2) and torch.equal(lam1, lam2)
    assert_simplex(lam1.numpy(), what="lam")
    y = y1.numpy()
    assert y.min() >= 0 and y.max() < pi.shape[0]
    # independent route: every drawn transition has positive probability under its own lam
    m = alpha.shape[0]
    lam = lam1.numpy()
    for b in range(y.shape[0]):
        for t_ in range(m, y.shape[1]):
            p = sum(lam[b, j] * pi[y[b, t_ - 1 - j], y[b, t_]] for j in range(m))
            assert p > 0


@_SETTINGS
@given(tasks())
def test_md_transformer_construct_equals_core_all_prefixes(task):
    pi, alpha, tokens, _ = task
    model = mnn.MDTransformer.construct(pi.copy(), alpha.copy(), dtype=torch.float64)
    probs = torch.softmax(model(torch.as_tensor(tokens)), -1).detach().numpy()
    want = np.asarray(mtdmath.md_predictive_all_prefixes(tokens, pi, alpha))  # default eta: eta* as construct
    assert probs.shape == want.shape
    # the construction is exact in float64 (docs/math.md §5): agreement to 1e-10
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-10)
    assert_simplex(probs, what="MDTransformer predictive")


@_SETTINGS
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 2), st.sampled_from([(8, 1), (8, 2), (12, 4)]),
       st.integers(0, 2**32 - 1))
def test_standard_transformer_logits_finite_and_seeded(S, m, n_layers, dh, seed):
    d, h = dh
    T = m + 5
    mk = lambda: mnn.StandardTransformer(S, m, n_layers=n_layers, d_model=d, n_heads=h, max_len=T,  # noqa: E731
                                          generator=torch.Generator().manual_seed(seed % 2**63))
    model, twin = mk(), mk()
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)
    y = torch.as_tensor(np.random.default_rng(seed).integers(0, S, (2, T)))
    y0 = y.clone()
    logits = model(y)
    assert torch.all(torch.isfinite(logits))
    assert logits.shape[-1] == S and logits.shape[0] == 2
    assert torch.equal(y, y0)


def _drawn_model(kind: str, pi, alpha, seed: int, dtype):
    if kind == "md":
        return mnn.MDTransformer.construct(pi, alpha, dtype=dtype)
    if kind == "mdsink":
        return mnn.MDTransformer.construct(pi, alpha, dtype=dtype, aggregation="softmax_sink", c=0.7, a=1.5)
    return mnn.StandardTransformer(pi.shape[0], alpha.shape[0], n_layers=1, d_model=8, n_heads=2, max_len=20,
                                   generator=torch.Generator().manual_seed(seed % 2**63), dtype=dtype)


@_SETTINGS
@given(tasks(), st.sampled_from(["md", "mdsink", "std"]), st.sampled_from([torch.float32, torch.float64]))
def test_checkpoint_round_trip_bit_for_bit(task, kind, dtype):
    pi, alpha, tokens, seed = task
    model = _drawn_model(kind, pi, alpha, seed, dtype)
    with tempfile.TemporaryDirectory() as tmp:  # hypothesis reruns the body: no function-scoped fixture
        path = mnn.save_checkpoint(Path(tmp) / "sub" / "m.safetensors", model, task=mnn.ICLTask(pi, alpha, T=20))
        loaded, meta = mnn.load_checkpoint(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    y = torch.as_tensor(tokens)
    assert torch.equal(model(y), loaded(y))


@_SETTINGS
@given(tasks(min_m=2), st.floats(0.0, 3.0))
def test_effective_step_recovers_the_constructed_step(task, eta):
    pi, alpha, tokens, _ = task
    model = mnn.MDTransformer.construct(pi, alpha, eta=eta)
    est = mnn.effective_step(model, tokens, pi, alpha)
    g = np.asarray(mtdmath.gradient(alpha / alpha.sum(), mtdmath.lag_factors(tokens, pi, alpha.shape[0])))
    if np.ptp(g, axis=-1).max() <= 1e-12:  # no spread of the gradient: the step is not identified
        assert not np.isinf(est.eta)
        return
    assert np.isfinite(est.eta)
    # the layer-3 regression is exact on the construction (r2 = 1): the step to rounding of the logits
    assert abs(est.eta - eta) <= 1e-8 * max(1.0, eta), (est.eta, eta)
    assert not np.isnan(est.eta_se)  # B >= 2


@_SETTINGS
@given(tasks(min_m=2, max_T=12), st.floats(0.05, 5.0), st.floats(0.0, 10.0))
def test_step_by_n_and_matched_step_on_the_sink_model(task, c, a):
    pi, alpha, tokens, _ = task
    m = alpha.shape[0]
    model = mnn.MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=c, a=a)
    sb = mnn.step_by_n(model, tokens, pi, alpha)
    want = c / (sb.n + m + a)
    ok = np.isfinite(sb.eta)
    assert np.all(np.isnan(sb.eta[~ok]))  # NaN (unidentified), never inf
    np.testing.assert_allclose(sb.eta[ok], want[ok], rtol=1e-7)
    probs = torch.softmax(model(torch.as_tensor(tokens)), -1)
    ms = mnn.matched_step(probs, tokens, pi, alpha)
    assert np.all(np.isfinite(ms.eta)) and np.all((ms.eta >= 1e-4) & (ms.eta <= 1e2))
    assert np.all(ms.kl_left >= -1e-12)  # a mean KL


@_SETTINGS
@given(st.floats(1e-3, 1e3), st.floats(0.0, 1e3), st.integers(1, 4),
       st.lists(st.integers(1, 10_000), min_size=2, max_size=30, unique=True), st.booleans())
def test_fit_adaptive_step_recovers_c_and_a_and_nan_for_a_constant_step(c, a, m, n, constant):
    n = np.array(sorted(n))
    eta = np.full(n.shape, c / (m + a + 1)) if constant else c / (n + m + a)
    n0, e0 = n.copy(), eta.copy()
    res = mnn.fit_adaptive_step(n, eta, m)
    assert _same_bits(n, n0) and _same_bits(eta, e0)
    if constant:  # documented: no decreasing step -> c and a are NaN
        assert np.isnan(res.c) and np.isnan(res.a)
        return
    # exact data on a line 1/eta = A + B n: least squares returns it up to the conditioning of the design
    np.testing.assert_allclose(res.c, c, rtol=1e-6)
    np.testing.assert_allclose(res.a + m, a + m, rtol=1e-6, atol=1e-6 * (a + m + c))
    assert np.all(np.isfinite(res.eta_fit))


def test_regression_step_by_n_is_nan_where_the_gradients_differ_by_rounding_only():
    # found by test_step_by_n_and_matched_step_on_the_sink_model: at n = 3 both sequences have the same
    # gradient in exact arithmetic; the regression on their rounding-level difference returned eta = -0.125
    # with R^2 = 1 (the step is c / (n + m + a) = 0.2)
    pi = np.array([[0.99616131, 0.00383869], [0.71933524, 0.28066476]])
    tokens = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    alpha = np.array([float.fromhex("0x1.5f2ccc76e35ccp+11"), float.fromhex("0x1.25058fe8dbf9ap+12")])
    model = mnn.MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=1.0, a=0.0)
    sb = mnn.step_by_n(model, tokens, pi, alpha)
    np.testing.assert_allclose(sb.eta[:2], [1 / 3, 1 / 4], rtol=1e-12)
    assert np.isnan(sb.eta[2]) and np.isnan(sb.r2[2])


def test_regression_adaptive_params_defaults_for_any_alpha():
    # found by test_adaptive_params_give_eta_star_at_n0: the default c = m/(1+α₀) gave a = c(1+α₀) - m
    # = -1.1e-16 by rounding, and a ValueError on valid input with every default
    c, a = mnn.adaptive_params([23.5])
    assert a == 0.0 and c == 1 / 24.5
    assert mnn.adaptive_params([23.5], c=1 / 24.5)[1] == 0.0  # the same c given explicitly


@_SETTINGS
@given(st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=4), st.one_of(st.none(), st.floats(0.0, 1e3)))
def test_adaptive_params_give_eta_star_at_n0(alpha, a):
    alpha = np.array(alpha)
    c, a2 = mnn.adaptive_params(alpha, a=a)
    m, eta_star = alpha.shape[0], 1.0 / (1.0 + alpha.sum())
    # eta(0) = c / (m + a) = eta* by the definition of the defaults (a few roundings)
    np.testing.assert_allclose(c / (m + a2), eta_star, rtol=1e-13)
    assert a2 >= 0 and c > 0


@st.composite
def specs(draw):
    kind = draw(st.sampled_from(["md", "mdsink", "std"]))
    if kind != "std":
        return kind, {}
    h = draw(st.sampled_from([1, 2]))
    kw = {"n_layers": draw(st.integers(1, 2)), "d_model": h * draw(st.sampled_from([4, 8])), "n_heads": h}
    return "std:" + ",".join(f"{k}={v}" for k, v in zip("Ldh", kw.values())), kw


@_SETTINGS
@given(specs(), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_model_from_spec_builds_what_the_spec_says(spec_kw, S, m, seed):
    spec, kw = spec_kw
    kind, parsed = mnn.parse_model_spec(spec)
    assert kind == ("std" if spec.startswith("std") else "md")
    assert parsed == (kw if kind == "std" else ({"aggregation": "softmax_sink"} if spec == "mdsink" else {}))
    model = mnn.model_from_spec(spec, S, m, max_len=m + 4, generator=torch.Generator().manual_seed(seed % 2**63))
    if kind == "std":
        assert (model.config.n_layers, model.config.d_model, model.config.n_heads) == tuple(kw.values())
    y = torch.as_tensor(np.random.default_rng(seed).integers(0, S, (2, m + 4)))
    assert torch.all(torch.isfinite(model(y)))


@_FEW
@given(st.sampled_from(["md", "std"]), st.integers(2, 3), st.integers(1, 2), st.integers(0, 2**16))
def test_train_seeded_and_finite(kind, S, m, seed):
    rng = np.random.default_rng(seed)
    pi, alpha = mtdmath.random_transition_matrix(S, rng=rng), np.ones(m)
    task = mnn.ICLTask(pi, alpha, T=m + 4)

    def run():
        model = mnn.model_from_spec(kind if kind == "md" else "std:L=1,d=8,h=2", S, m, max_len=m + 4,
                                    generator=torch.Generator().manual_seed(seed))
        hist = mnn.train(model, task, steps=3, batch_size=4, lr=1e-2, seed=seed, log_every=1, progress=False)
        return model, hist

    (m1, h1), (m2, h2) = run(), run()
    assert isinstance(h1, mnn.TrainHistory)
    assert np.all(np.isfinite(h1.loss)) and h1.loss == h2.loss and h1.step == h2.step
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------
# every covered name has a test here
# ---------------------------------------------------------------------------------------------------------
COVERAGE = {
    "fitting.fit": test_fit_function_long_sequences, "fitting.MTD": test_mtd_fit_contract,
    "fitting.ConvergenceMonitor": test_mtd_fit_contract, "fitting.MTDModel": test_mtd_model_law_contract,
    "fitting.select_order": test_select_order_loglik_nondecreasing, "fitting.select_lags": test_select_lags_contract,
    "fitting.fit_icl": test_fit_icl_finite_on_small_data, "fitting.ICLFit": test_fit_icl_finite_on_small_data,
    "fitting.MarkovChain": test_markov_chain_contract, "fitting.lr_test": test_lr_test_and_compare_models_pvalues,
    "fitting.LRTest": test_lr_test_and_compare_models_pvalues,
    "fitting.compare_models": test_lr_test_and_compare_models_pvalues,
    "fitting.ModelComparison": test_lr_test_and_compare_models_pvalues,
    "nn.MDTransformer": test_md_transformer_construct_equals_core_all_prefixes,
    "nn.StandardTransformer": test_standard_transformer_logits_finite_and_seeded,
    "nn.ICLTask": test_icl_task_sample_seeded_and_on_the_simplex, "nn.train": test_train_seeded_and_finite,
    "nn.TrainHistory": test_train_seeded_and_finite, "nn.save_checkpoint": test_checkpoint_round_trip_bit_for_bit,
    "nn.load_checkpoint": test_checkpoint_round_trip_bit_for_bit,
    "nn.model_from_spec": test_model_from_spec_builds_what_the_spec_says,
    "nn.parse_model_spec": test_model_from_spec_builds_what_the_spec_says,
    "nn.effective_step": test_effective_step_recovers_the_constructed_step,
    "nn.step_by_n": test_step_by_n_and_matched_step_on_the_sink_model,
    "nn.matched_step": test_step_by_n_and_matched_step_on_the_sink_model,
    "nn.fit_adaptive_step": test_fit_adaptive_step_recovers_c_and_a_and_nan_for_a_constant_step,
    "nn.adaptive_params": test_adaptive_params_give_eta_star_at_n0,
}


def test_every_name_covered_here_has_a_property_test():
    here = Path(__file__).name
    covered = {name for name, e in _api.API.items() if e.covered_by and here in e.covered_by}
    assert covered == set(COVERAGE), (covered ^ set(COVERAGE))
    assert all(callable(t) and t.__name__.startswith("test_") for t in COVERAGE.values())
