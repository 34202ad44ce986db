"""Online and out-of-core fitting on mergeable counts: ``MTD.partial_fit``, ``TransitionCounts`` addition, and
the guide's map-reduce example on a local Ray instance (docs/guide/fitting.md)."""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import mtdmath
from mtdmath.fitting import MTD, MTDModel, TransitionCounts

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "fitting.md"
PI = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]])


def batches(n_batches=4, seed=0):
    law = MTDModel(PI, [0.5, 0.3, 0.2])
    rng = np.random.default_rng(seed)
    return [[law.sample(int(rng.integers(40, 200)), rng=rng) for _ in range(int(rng.integers(1, 4)))]
            for _ in range(n_batches)]


def same_counts(a: TransitionCounts, b: TransitionCounts) -> None:
    """Equal tuples and, to 1e-12 relative (the sums differ only in their order), equal weights."""
    assert a.lags == b.lags and a.n_symbols == b.n_symbols
    np.testing.assert_array_equal(a.ctx, b.ctx)
    np.testing.assert_array_equal(a.nxt, b.nxt)
    np.testing.assert_allclose(a.w, b.w, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_is_associative_and_commutative_and_counts_the_union(seed):
    rng = np.random.default_rng(seed)
    parts = [TransitionCounts.from_sequences(b, lags=(1, 3), n_symbols=3,
                                             sample_weight=rng.uniform(0.1, 2.0, len(b)))
             for b in batches(3, seed)]
    a, b, c = parts
    same_counts((a + b) + c, a + (b + c))
    same_counts(a + b, b + a)
    # the independent route: count the union of the sequences at once
    seqs = [s for bt in batches(3, seed) for s in bt]
    rng = np.random.default_rng(seed)
    w = np.concatenate([rng.uniform(0.1, 2.0, len(bt)) for bt in batches(3, seed)])
    same_counts((a + b) + c, TransitionCounts.from_sequences(seqs, lags=(1, 3), n_symbols=3, sample_weight=w))
    assert ((a + b) + c).n_obs == pytest.approx(a.n_obs + b.n_obs + c.n_obs, rel=1e-12)


def test_merge_refuses_counts_of_other_lags_or_states():
    a = TransitionCounts.from_sequences([0, 1, 2, 1], lags=(1,), n_symbols=3)
    with pytest.raises(ValueError, match="lags"):
        a + TransitionCounts.from_sequences([0, 1, 2, 1], lags=(1, 2), n_symbols=3)
    with pytest.raises(ValueError, match="n_symbols"):
        a + TransitionCounts.from_sequences([0, 1, 2, 1], lags=(1,), n_symbols=4)


@pytest.mark.parametrize("params", [dict(order=3), dict(lags=(1, 3), burn_in=4)])
def test_partial_fit_equals_the_fit_on_all_batches(params):
    bts = batches(4, seed=3)
    online = MTD(n_symbols=3, random_state=0, restarts=3, **params)
    for bt in bts:
        assert online.partial_fit(bt) is online
    offline = MTD(n_symbols=3, random_state=0, restarts=3, **params).fit([s for bt in bts for s in bt])
    same_counts(online.transition_counts_, offline.transition_counts_)
    assert online.n_obs_ == offline.n_obs_
    # the fits agree to the fit's tolerance: both stop at a relative log-likelihood change below tol = 1e-9
    # on the same counts; the counts are equal to 1e-12, so EM takes the same path
    assert online.loglik_ == pytest.approx(offline.loglik_, rel=1e-9)
    np.testing.assert_allclose(online.lam_, offline.lam_, atol=1e-8)
    np.testing.assert_allclose(online.pi_, offline.pi_, atol=1e-8)
    # and the last partial fit is a fit: its log-likelihood is the score of all the data
    assert online.score([s for bt in bts for s in bt]) == pytest.approx(online.loglik_, rel=1e-12)


def test_partial_fit_warm_start_climbs_from_the_previous_fit():
    bts = batches(3, seed=5)
    full = MTD(2, n_symbols=3, random_state=0)
    warm = MTD(2, n_symbols=3, random_state=0)
    for bt in bts:
        full.partial_fit(bt)
        warm.partial_fit(bt, warm_start=True)
    # one start from a nearby point reaches the same maximum here (the likelihood is unimodal on these data);
    # the tolerance is the fit's (relative log-likelihood change < 1e-9)
    assert warm.loglik_ == pytest.approx(full.loglik_, rel=1e-8)
    assert warm.restarts == 10 and warm.init == "counts"  # the parameters are left as they were
    assert warm.restart_logliks_.shape == (1,)


def test_partial_fit_refuses_a_new_state_and_changed_lags():
    est = MTD(1).partial_fit([0, 1, 0, 1, 1])
    with pytest.raises(ValueError, match="n_symbols"):
        est.partial_fit([0, 2, 1])
    est.set_params(order=2)
    with pytest.raises(ValueError, match="lags"):
        est.partial_fit([0, 1, 1, 0])
    with pytest.raises(ValueError, match="warm_start"):
        MTD(1).partial_fit([0, 1, 0], warm_start="yes")


def test_partial_fit_keeps_the_labels_of_the_first_batch():
    est = MTD(1, random_state=0).partial_fit(list("abba"))
    est.partial_fit(list("ba"))
    ref = MTD(1, random_state=0).fit([list("abba"), list("ba")])
    assert est.classes_.tolist() == ["a", "b"]
    same_counts(est.transition_counts_, ref.transition_counts_)
    with pytest.raises(ValueError):
        est.partial_fit(list("abc"))


def guide_block(marker: str) -> tuple[str, str]:
    """The python block of the fitting guide that contains ``marker`` and the output block shown after it."""
    blocks = re.findall(r"```python\n(.*?)```\s*```text\n(.*?)```", GUIDE.read_text(), flags=re.S)
    hits = [b for b in blocks if marker in b[0]]
    assert len(hits) == 1, f"the guide must hold one python block with {marker!r}, followed by its output"
    return hits[0]


def test_ray_map_reduce_example_of_the_guide():
    """The guide's Ray example (map: count each shard; reduce: sum; fit once) runs on a local Ray instance,
    and its fit equals the fit on the concatenated shards."""
    pytest.importorskip("ray")
    code, shown = guide_block("ray.init(")
    # the blocks before it in the guide import numpy as np and define law: run the one that defines law first
    ns: dict = {"np": np}
    exec(compile(guide_block("partial_fit(batch)")[0], str(GUIDE), "exec"), ns)  # noqa: S102
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore", DeprecationWarning)
        exec(compile(code, str(GUIDE), "exec"), ns)  # noqa: S102 - the guide's own example
    assert out.getvalue().strip() == shown.strip()
    shards, total, est = ns["shards"], ns["total"], ns["est"]
    ref = MTD(**{k: v for k, v in est.get_params().items()}).fit([s for shard in shards for s in shard])
    same_counts(total, ref.transition_counts_)
    assert est.loglik_ == pytest.approx(ref.loglik_, rel=1e-9)  # the fit's tolerance
    np.testing.assert_allclose(est.lam_, ref.lam_, atol=1e-8)
    import ray

    assert not ray.is_initialized()  # the example shuts its instance down


def test_merged_fit_with_pi_frozen_is_the_core_mle():
    """A second route for the merged fit: with pi frozen at the truth, the lam of fit_counts on merged counts is
    the core's mtdmath.mle on the lag factors of the sequences (docs/math.md §2)."""
    bts = batches(2, seed=7)
    seqs = [s for bt in bts for s in bt]
    counts = sum((TransitionCounts.from_sequences(bt, lags=(1, 2, 3), n_symbols=3) for bt in bts[1:]),
                 TransitionCounts.from_sequences(bts[0], lags=(1, 2, 3), n_symbols=3))
    from mtdmath.fitting.mtd import em_fit

    law, _ = em_fit(counts, init={"pi": PI, "lam": np.ones(3) / 3}, freeze_pi=True, restarts=1, tol=1e-13)
    C = np.concatenate([mtdmath.lag_factors(s, PI, 3) for s in seqs])
    # both maximise the same concave function of lam; the MLE to its KKT tolerance 1e-12
    np.testing.assert_allclose(law.lam, mtdmath.mle(C), atol=1e-6)


@pytest.mark.parametrize("option", [{"missing": -1}, {"pad": 9}])
def test_partial_fit_keeps_the_missing_and_pad_conventions(option):
    """Batches with missing tokens (or padded) fit like fit on all batches: the same dropped count, transitions
    and weights (the counts are equal, so the fits agree to the fit's tolerance, 1e-8 as above)."""
    rng = np.random.default_rng(3)
    X = [rng.integers(0, 3, 60) for _ in range(4)]
    if "missing" in option:
        X[0][10] = -1
        X[3][30] = -1
    online = MTD(2, random_state=0, **option)
    online.partial_fit(X[:2]).partial_fit(X[2:])
    offline = MTD(2, random_state=0, **option).fit(X)
    # two missing tokens, each the target or in the window of 3 transitions (order 2): 6 dropped
    assert online.n_dropped_ == offline.n_dropped_ == (6 if "missing" in option else 0)
    assert online.n_obs_ == offline.n_obs_
    np.testing.assert_allclose(online.lam_, offline.lam_, atol=1e-8)
