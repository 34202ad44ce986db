"""Shared Hypothesis strategies for mtdmath tests.

Sizes follow the project's test plan: S in 2..12, m in 1..5, n in 0..60, asymmetric alpha
including values below 1, transition matrices with near-zero entries, and batch shapes.
Arrays are drawn from a NumPy generator seeded by Hypothesis (shrinks on the seed and the
shape parameters, not on individual entries), which keeps examples cheap and reproducible.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

BATCH_SHAPES = [(), (1,), (3,), (2, 2)]

seeds = st.integers(min_value=0, max_value=2**32 - 1)
vocab_sizes = st.integers(min_value=2, max_value=12)
orders = st.integers(min_value=1, max_value=5)
lengths_n = st.integers(min_value=0, max_value=60)
batch_shapes = st.sampled_from(BATCH_SHAPES)


def _pick(draw, value, default):
    """Parameters of the composite strategies may be None (use default), a strategy, or a value."""
    if value is None:
        value = default
    return draw(value) if isinstance(value, st.SearchStrategy) else value


def make_pi(rng: np.random.Generator, S: int, kind: str) -> np.ndarray:
    """A row-stochastic (S, S) matrix. kind: 'dirichlet' (β=1), 'sparse' (β=0.1, near-zero
    entries), 'tiny' (some entries forced down to ~1e-12), 'peaked' (near-deterministic rows)."""
    if kind == "dirichlet":
        pi = rng.dirichlet(np.ones(S), size=S)
    elif kind == "sparse":
        pi = rng.dirichlet(np.full(S, 0.1), size=S)
    elif kind == "tiny":
        pi = rng.dirichlet(np.ones(S), size=S)
        mask = rng.random((S, S)) < 0.3
        pi = np.where(mask, 1e-12 * rng.random((S, S)), pi)
    elif kind == "peaked":
        pi = np.full((S, S), 1e-9) + np.eye(S)[rng.permutation(S)]
    else:
        raise ValueError(kind)
    return pi / pi.sum(axis=1, keepdims=True)


pi_kinds = st.sampled_from(["dirichlet", "sparse", "tiny", "peaked"])


@st.composite
def transition_matrices(draw, S=None):
    S = draw(vocab_sizes) if S is None else S
    rng = np.random.default_rng(draw(seeds))
    return make_pi(rng, S, draw(pi_kinds))


@st.composite
def alphas(draw, m=None, low=0.1, high=20.0):
    """Asymmetric Dirichlet concentrations, log-uniform in [low, high] (values below 1 included)."""
    m = draw(orders) if m is None else m
    rng = np.random.default_rng(draw(seeds))
    return np.exp(rng.uniform(np.log(low), np.log(high), size=m))


@st.composite
def simplex_points(draw, m, batch=(), interior=0.0):
    """Points on Δ_m (shape batch + (m,)); interior > 0 keeps every weight >= interior/m."""
    rng = np.random.default_rng(draw(seeds))
    conc = draw(st.sampled_from([0.2, 1.0, 5.0]))
    lam = rng.dirichlet(np.full(m, conc), size=batch or None)
    lam = (1 - interior) * lam + interior / m
    return lam / lam.sum(axis=-1, keepdims=True)


@st.composite
def lag_factor_arrays(draw, m=None, n=None, batch=None, well_conditioned=False):
    """Lag factors C (batch + (n, m)) with entries in [0, 1], near-zero and zero entries, no
    all-zero row. well_conditioned keeps entries in [0.05, 1] (for finite differences)."""
    m = _pick(draw, m, orders)
    n = _pick(draw, n, lengths_n)
    batch = _pick(draw, batch, batch_shapes)
    rng = np.random.default_rng(draw(seeds))
    shape = batch + (n, m)
    if well_conditioned:
        return rng.uniform(0.05, 1.0, size=shape)
    C = rng.random(shape)
    tiny = rng.random(shape) < 0.2
    zero = rng.random(shape) < 0.15
    C = np.where(tiny, 1e-12 * rng.random(shape), C)
    C = np.where(zero, 0.0, C)
    # every transition must be possible under some lag
    if C.size:
        g = rng.integers(0, m, size=batch + (n,))
        np.put_along_axis(C, g[..., None], rng.uniform(1e-3, 1.0, size=batch + (n, 1)), axis=-1)
    return C


@st.composite
def sequences(draw, S=None, m=None, T=None, batch=None):
    """(tokens, pi, lam) with tokens sampled from the MTD model itself."""
    import mtdmath

    S = draw(vocab_sizes) if S is None else S
    m = draw(orders) if m is None else m
    T = draw(st.integers(min_value=m, max_value=m + 60)) if T is None else T
    batch = draw(st.sampled_from([(), (1,), (3,)])) if batch is None else batch
    rng = np.random.default_rng(draw(seeds))
    pi = make_pi(rng, S, draw(pi_kinds))
    lam = rng.dirichlet(np.ones(m), size=batch or None)
    tokens = mtdmath.sample(pi, lam, T, rng=rng)
    return tokens, pi, lam


@st.composite
def icl_batches(draw, max_T=64, zeros=False, alpha_low=0.05):
    """(tokens (B, T), pi, alpha) for the transformer tests: S in 2..12, m in 1..5, T in m..max_T,
    B in 1..4, asymmetric alpha in [alpha_low, 20]. Tokens are uniform when pi > 0 everywhere
    (so near-zero entries of pi enter C), else sampled from the in-context task. ``zeros``
    sets about 30% of pi to exactly 0 (the largest entry of each row kept); tokens are then
    sampled from the task, so every transition is possible under its own lag."""
    import mtdmath

    S, m = draw(vocab_sizes), draw(orders)
    T = draw(st.integers(min_value=m, max_value=max_T))
    B = draw(st.integers(min_value=1, max_value=4))
    alpha = draw(alphas(m=m, low=alpha_low))
    rng = np.random.default_rng(draw(seeds))
    pi = make_pi(rng, S, draw(pi_kinds))
    if zeros:
        keep = np.eye(S, dtype=bool)[pi.argmax(axis=1)] | (rng.random((S, S)) >= 0.3)
        pi = np.where(keep, pi, 0.0)
        pi = pi / pi.sum(axis=1, keepdims=True)
    if not zeros and pi.min() > 0 and draw(st.booleans()):
        tokens = rng.integers(0, S, size=(B, T))
    else:
        tokens = mtdmath.sample_icl(pi, alpha, T, B, rng=rng)[0]
    return tokens, pi, alpha
