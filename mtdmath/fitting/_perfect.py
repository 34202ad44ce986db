"""Exact draws from the stationary law of an MTD chain by coupling from the past (docs/math.md §10.1).

The MTD structure makes coupling from the past cheap: every transition is driven by one past symbol
(the latent lag) or by none (the order-0 component), so the set of values a position can take over every
starting window is the image of the set of values at ONE earlier position. Tracking these per-position
sets (at most S symbols each) detects coalescence exactly, without enumerating the S^M windows. A
minorisation of each lag's matrix (its column minima) moves mass to the order-0 component, so a chain
whose matrices share a common floor coalesces quickly even when it has no order-0 component; hdMTD's
``perfectSample`` needs ``lam_indep > 0`` and covers the case where that is all there is.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .._validate import as_rng, check_alloc, check_int
from .laws import MTDModel

__all__ = ["minorised_components", "perfect_sample"]


def _check_law(pi: Any, lam: Any, lags: Sequence[int] | None, lam_indep: Any, p0: Any):
    """Validated (pis (k, S, S), lam (k,), lags tuple, lam_indep float, p0 (S,)) of the law of docs/math.md §1.2,
    through the fitting package's law object (one validation for every use of these parameters)."""
    if lags is not None and not isinstance(lags, (str, bytes)) and np.ndim(lags) == 1 and \
            all(isinstance(l, (int, np.integer)) for l in lags) and list(lags) != sorted(lags):
        # the law stores lags sorted and lam in the given order: refuse rather than pair them wrongly
        raise ValueError(f"lags must be increasing, with lam in the same order (got {lags!r})")
    law = MTDModel(pi, lam, lags=lags, lam_indep=lam_indep, p0=p0)
    k, S = len(law.lags), law.n_symbols
    pis = law.pi if law.pi.ndim == 3 else np.broadcast_to(law.pi, (k, S, S))
    lam_indep_v = 0.0 if law.lam_indep is None else float(law.lam_indep)
    p0_v = np.full(S, 1.0 / S) if law.p0 is None else np.asarray(law.p0, dtype=np.float64)
    return np.asarray(pis, dtype=np.float64), np.asarray(law.lam, dtype=np.float64), law.lags, lam_indep_v, p0_v


def minorised_components(pi: Any, lam: Any, *, lags: Sequence[int] | None = None, lam_indep: float | None = None,
                         p0: Any = None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Rewrite an MTD law so that the mass every row of a lag's matrix shares sits in the order-0 component.

    With ``f_j[b] = min_a pi_j[a, b]`` and ``r_j = sum_b f_j[b]`` (docs/math.md §10.1),
    ``pi_j[a, :] = f_j + (1 - r_j) R_j[a, :]`` and the law is unchanged when written as
    ``w0 q0 + sum_j w[j] R_j[y[t - lags[j]], :]`` with ``w0 = lam_indep + sum_j lam[j] r_j``,
    ``w0 q0 = lam_indep p0 + sum_j lam[j] f_j`` and ``w[j] = lam[j] (1 - r_j)``.

    Parameters
    ----------
    pi : array (S, S) or (k, S, S)
        One shared row-stochastic matrix or one per lag.
    lam : array (k,)
        Lag weights, ``lam.sum() + lam_indep == 1``.
    lags : sequence of k increasing positive int, optional
        Default ``1..k``.
    lam_indep, p0 : float and array (S,), optional
        The order-0 component (both or neither).

    Returns
    -------
    w0 : float
        Weight of the (enlarged) order-0 component.
    q0 : ndarray (S,)
        Its law (uniform when ``w0 == 0``, where it is never used).
    w : ndarray (k,)
        Residual lag weights; ``w0 + w.sum() == 1``.
    R : ndarray (k, S, S)
        Residual row-stochastic matrices (``pi_j`` itself where ``r_j == 1``, with weight 0).

    Examples
    --------
    >>> import numpy as np
    >>> w0, q0, w, R = minorised_components(np.array([[0.9, 0.1], [0.2, 0.8]]), [1.0])
    >>> round(w0, 12), q0.round(6).tolist(), w.round(12).tolist()
    (0.3, [0.666667, 0.333333], [0.7])
    """
    pis, lam, _, lam_indep, p0 = _check_law(pi, lam, lags, lam_indep, p0)
    S = pis.shape[-1]
    floor = pis.min(axis=1)  # (k, S): f_j
    r = floor.sum(axis=1)
    mass0 = lam_indep * p0 + lam @ floor
    w0 = float(lam_indep + lam @ r)
    q0 = mass0 / w0 if w0 > 0 else np.full(S, 1.0 / S)
    w = lam * (1.0 - r)
    R = np.array(pis)
    live = r < 1.0 - 1e-12  # r_j = 1: every row equals f_j, the lag carries no residual mass
    R[live] = (pis[live] - floor[live][:, None, :]) / (1.0 - r[live])[:, None, None]
    return w0, q0, np.clip(w, 0.0, None), R


def _inverse_cdf(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index b with cum[..., b-1] <= u < cum[..., b] (last index when rounding leaves u >= cum[..., -1])."""
    S = cum.shape[-1]
    return np.minimum((cum <= u[..., None]).sum(axis=-1), S - 1)


def perfect_sample(pi: Any, lam: Any, size: int, *, lags: Sequence[int] | None = None, lam_indep: float | None = None,
                   p0: Any = None, length: int | None = None, rng: Any = None,
                   max_steps: int = 65_536) -> np.ndarray:
    """Exact draws from the stationary law of an MTD chain (coupling from the past, docs/math.md §10.1).

    The law is ``P(y[t] = b | past) = lam_indep p0[b] + sum_j lam[j] pi_j[y[t - lags[j]], b]`` (docs/math.md
    §1.2). Each of the ``size`` draws is an independent Propp-Wilson run on the minorised components of
    :func:`minorised_components`: innovations (component, uniform) are drawn for times -1, -2, ...; from
    horizon T (doubled up to ``max_steps``) the set of values each position can take over every start is
    propagated forwards; when the last M = max(lags) positions are single values, that window is an exact
    draw of the stationary law. With ``length > M`` the chain then runs forwards from it (a stationary chain
    stays stationary), so every row is a stationary stretch of the chain.

    Parameters
    ----------
    pi, lam, lags, lam_indep, p0
        The law, as for :func:`minorised_components`.
    size : int
        Number of independent draws.
    length : int, optional
        Tokens per draw, default M = max(lags) (the stationary M-window). With ``length < M`` the last
        ``length`` tokens of the window are returned.
    rng : numpy Generator, int seed or None
        The same seed gives the same draws.
    max_steps : int
        Largest horizon T tried.

    Returns
    -------
    ndarray (size, length) int64
        Row i: ``(y[t - length + 1], ..., y[t])`` oldest first, so a row of length M indexes
        ``MTDModel.expanded_matrix`` states by ``sum_i row[i] S^(M-1-i)``.

    Raises
    ------
    ValueError
        Naming the argument on bad input, and naming ``max_steps`` when some draw has not coalesced within
        ``max_steps`` steps (a periodic or reducible law never coalesces).

    Examples
    --------
    >>> import numpy as np
    >>> pi = np.array([[0.8, 0.2], [0.3, 0.7]])
    >>> x = perfect_sample(pi, [0.6, 0.4], 5, rng=0)
    >>> x.shape, x.dtype.name
    ((5, 2), 'int64')
    >>> bool(np.array_equal(x, perfect_sample(pi, [0.6, 0.4], 5, rng=0)))
    True
    """
    pis, lam_v, lags_t, lam_indep_v, p0_v = _check_law(pi, lam, lags, lam_indep, p0)
    size = check_int(size, "size", minimum=0)
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    M = lags_t[-1]
    length = M if length is None else check_int(length, "length", minimum=1)
    S, k = pis.shape[-1], len(lags_t)
    check_alloc(size * max(length, M), 8, "size", f"{size} draws of {max(length, M)} tokens")
    rng = as_rng(rng)
    w0, q0, w, R = minorised_components(pis, lam_v, lags=lags_t, lam_indep=lam_indep_v, p0=p0_v)
    weights = np.append(w, w0)
    weights /= weights.sum()
    # component c < k: residual of lag lags[c]; c == k: the order-0 component (a constant map of any source)
    cum = np.concatenate([np.cumsum(R, axis=-1), np.broadcast_to(np.cumsum(q0), (1, S, S))])
    src_lag = np.asarray(lags_t + (lags_t[0],), dtype=np.int64)
    out = np.empty((size, M), dtype=np.int64)
    if size:
        comp = np.empty((size, 0), dtype=np.int8 if k < 127 else np.int64)
        unif = np.empty((size, 0))
        pending = np.arange(size)  # draws not coalesced yet; comp and unif hold their rows only
        T = min(max(2 * M, 16), max_steps)
        while True:
            grow = T - comp.shape[1]  # innovations for times -(old T)-1 .. -T, drawn once and then kept
            # a component index (1 byte) and a uniform (8 bytes) per pending draw and time
            check_alloc(pending.size * T, 9, "max_steps", f"innovations for {pending.size} draws x {T} steps")
            comp = np.concatenate([comp, rng.choice(k + 1, size=(pending.size, grow), p=weights).astype(comp.dtype)],
                                  axis=1)
            unif = np.concatenate([unif, rng.random((pending.size, grow))], axis=1)
            done = np.zeros(pending.size, dtype=bool)
            # rows in chunks: the step's (rows, S, S) inverse-CDF table stays below about 32 MiB
            chunk = max(1, 2**22 // (S * S))
            for a in range(0, pending.size, chunk):
                d, window = _coalesce(comp[a:a + chunk], unif[a:a + chunk], T, M, S, cum, src_lag)
                done[a:a + chunk] = d
                out[pending[a:a + chunk][d]] = window[d]
            pending, comp, unif = pending[~done], comp[~done], unif[~done]
            if pending.size == 0:
                break
            if T >= max_steps:
                raise ValueError(f"max_steps = {max_steps}: {pending.size} of {size} draws did not coalesce "
                                 "(a periodic or reducible law never does; raise max_steps if the chain only "
                                 "mixes slowly)")
            T = min(2 * T, max_steps)
    if length <= M:
        return out[:, M - length:]
    chain = np.empty((size, length), dtype=np.int64)
    chain[:, :M] = out
    rows = np.arange(size)
    for t in range(M, length):
        c = rng.choice(k + 1, size=size, p=weights)
        u = rng.random(size)
        src = chain[rows, t - src_lag[c]]
        chain[:, t] = _inverse_cdf(cum[c, src], u)
    return chain


def _coalesce(comp: np.ndarray, unif: np.ndarray, T: int, M: int, S: int, cum: np.ndarray,
              src_lag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the set-valued chain from horizon T to time -1 for each draw (rows of ``comp``, ``unif``).

    Innovation column s belongs to time -1-s. Returns (coalesced (n,) bool, window (n, M) of times -M..-1,
    valid where coalesced)."""
    n = comp.shape[0]
    rows = np.arange(n)
    sets = np.ones((M, n, S), dtype=bool)  # circular buffer: slot t % M holds the set at step t (start: all)
    for t in range(T):
        s = T - 1 - t
        c = comp[:, s].astype(np.int64)
        src = sets[(t - src_lag[c]) % M, rows]  # (n, S): the set at the source position of each draw
        vals = _inverse_cdf(cum[c], unif[:, s][:, None].repeat(S, 1))  # (n, S): image of each source symbol
        new = np.zeros(n * S, dtype=bool)
        new[(rows[:, None] * S + vals)[src]] = True  # image of the source set
        sets[t % M] = new.reshape(n, S)
    last = sets[[(T - M + i) % M for i in range(M)]]  # (M, n, S): times -M..-1, oldest first
    done = (last.sum(axis=2) == 1).all(axis=0)
    return done, last.argmax(axis=2).T
