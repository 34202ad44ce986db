"""The MTD model (docs/math.md §1): random transition matrices, sampling, lag factors, predictive law.

:func:`lag_factors` and :func:`predictive` run in the namespace and on the device of their data
(``tokens``/``pi``; see :mod:`mtdmath._xp`). The samplers draw with a NumPy ``Generator`` (the
draws are sequential in time) and return their tokens in ``pi``'s namespace and device.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _validate as validate
from . import _xp


def random_transition_matrix(S: int, *, concentration: float = 1.0, rng: Any = None) -> np.ndarray:
    """A random row-stochastic matrix whose rows are i.i.d. Dirichlet(concentration · 1_S).

    Parameters
    ----------
    S : int
        Vocabulary size, ``S >= 1``.
    concentration : float
        Dirichlet concentration β > 0 of every row (docs/math.md §1: rows ~ Dirichlet(β·1_S)).
    rng : Generator, int or None
        Seed or generator (``numpy.random.default_rng`` semantics).

    Returns
    -------
    pi : ndarray, shape (S, S)
        ``pi[a, b] = P(next = b | source token a)``; rows sum to 1.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> pi = mtdmath.random_transition_matrix(4, concentration=0.5, rng=0)
    >>> pi.shape
    (4, 4)
    >>> print(np.allclose(pi.sum(axis=1), 1.0))
    True
    """
    S = validate.check_int(S, "S", minimum=1)
    validate.check_alloc(S * S, 8, "S", f"an (S, S) matrix for S = {S}")
    concentration = validate.check_float(concentration, "concentration", positive=True)
    gen = validate.as_rng(rng)
    pi = gen.dirichlet(np.full(S, concentration), size=S)
    # renormalise: Dirichlet draws sum to 1 only up to rounding
    return pi / pi.sum(axis=1, keepdims=True)


def sample(pi: Any, lam: Any, T: int, *, rng: Any = None, init: Any = None) -> np.ndarray:
    """Sample MTD sequences: ``P(y[t] = b | y[:t]) = Σ_g lam[g-1] · pi[y[t-g], b]`` for t >= m.

    The latent lag ``Z_t ~ Categorical(lam)`` is drawn, then ``y[t] ~ pi[y[t - Z_t], :]``.

    Parameters
    ----------
    pi : array_like, shape (S, S)
        Row-stochastic transition matrix.
    lam : array_like, shape (m,) or (B, m)
        Lag weights on the simplex (one per sequence when 2-D).
    T : int
        Sequence length, ``T >= m``.
    rng : Generator, int or None
    init : array_like, shape (S,), optional
        Law of each of the first m tokens (i.i.d.); default uniform.

    Returns
    -------
    tokens : array of int64, shape ``lam.shape[:-1] + (T,)``
        In ``pi``'s namespace and on its device (NumPy for NumPy or list input).

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> y = mtdmath.sample(pi, np.array([0.7, 0.3]), 10, rng=1)
    >>> y.shape, y.dtype
    ((10,), dtype('int64'))
    >>> print(bool(((0 <= y) & (y < 3)).all()))
    True
    """
    space = _xp.data_space(pi)
    pi = _xp.to_numpy(validate.check_pi(pi, "pi")).astype(np.float64)
    S = pi.shape[0]
    lam = _xp.to_numpy(validate.check_lam(lam, "lam")).astype(np.float64)
    if lam.ndim > 2:
        raise ValueError(f"lam must have shape (m,) or (B, m) (got shape {lam.shape})")
    m = lam.shape[-1]
    T = validate.check_int(T, "T", minimum=m)
    validate.check_alloc(int(np.prod(lam.shape[:-1])) * T, 8 * 3, "T", f"{int(np.prod(lam.shape[:-1]))} sequences of length T = {T}")
    init = np.full(S, 1.0 / S) if init is None else \
        _xp.to_numpy(validate.check_prob_vector(init, "init", S)).astype(np.float64)
    if init.ndim != 1:
        raise ValueError(f"init must be a length-S vector (got shape {init.shape})")
    gen = validate.as_rng(rng)
    return _xp.from_numpy(_sample(pi, lam, T, gen, init), space, dtype=None)


def _sample(pi: np.ndarray, lam: np.ndarray, T: int, gen: np.random.Generator, init: np.ndarray) -> np.ndarray:
    """Unchecked sampler on validated float64 host arrays: pi (S, S), lam (..., m), init (S,).

    The rows of pi (and init) need only sum to 1 within their input dtype's rounding: the
    inverse-CDF draws divide by the last cumulative sum.
    """
    m = lam.shape[-1]
    batch_shape = lam.shape[:-1]
    lam2 = lam.reshape(-1, m)  # (B, m)
    B = lam2.shape[0]
    y = np.empty((B, T), dtype=np.int64)
    # first m tokens i.i.d. from init (inverse-CDF draws)
    y[:, :m] = _inverse_cdf(np.cumsum(init)[None, :], gen.random((B, m)))
    lam_cdf = np.cumsum(lam2, axis=1)  # (B, m)
    pi_cdf = np.cumsum(pi, axis=1)  # (S, S)
    rows = np.arange(B)
    for t in range(m, T):  # sampling is sequential in time by nature; vectorised over the batch
        g = _inverse_cdf(lam_cdf, gen.random((B, 1)))[:, 0]  # latent lag index g-1, (B,)
        src = y[rows, t - 1 - g]  # the source token y[t - Z_t]
        y[:, t] = _inverse_cdf(pi_cdf[src], gen.random((B, 1)))[:, 0]
    return y.reshape(batch_shape + (T,))


def _inverse_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index of the first cdf entry exceeding u, per row; cdf (R, K), u (R, L) -> (R, L)."""
    # rounding can leave cdf[-1] slightly off 1: dividing by it makes every trailing
    # zero-mass category's cdf exactly 1 > u, so a zero-probability category is never drawn
    cdf = cdf / cdf[:, -1:]
    return (u[:, :, None] >= cdf[:, None, :]).sum(axis=-1)


def sample_icl(pi: Any, alpha: Any, T: int, batch: int, *, rng: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The in-context task (docs/math.md §1): fixed pi, per-sequence ``lam ~ Dirichlet(alpha)``.

    Returns
    -------
    tokens : array of int64, shape (batch, T)
    lam : array, shape (batch, m)
        The latent lag weights of each sequence (never shown to a predictor).
        Both in ``pi``'s namespace and on its device; lam in pi's float dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> pi = mtdmath.random_transition_matrix(3, rng=0)
    >>> tokens, lam = mtdmath.sample_icl(pi, np.array([2.0, 1.0]), 20, 4, rng=1)
    >>> tokens.shape, lam.shape
    ((4, 20), (4, 2))
    >>> print(np.allclose(lam.sum(axis=-1), 1.0))
    True
    """
    space = _xp.data_space(pi)
    pi_np = _xp.to_numpy(validate.check_pi(pi, "pi")).astype(np.float64)
    alpha = validate.check_alpha(alpha, "alpha")
    batch = validate.check_int(batch, "batch", minimum=1)
    T = validate.check_int(T, "T", minimum=alpha.shape[0])
    validate.check_alloc(batch * T, 8 * 3, "T", f"batch = {batch} sequences of length T = {T}")
    gen = validate.as_rng(rng)
    lam = gen.dirichlet(alpha, size=batch)
    lam = lam / lam.sum(axis=1, keepdims=True)
    # pi is validated once, in its own dtype (a float16 pi's rows sum to 1 only within
    # float16 rounding, which a second check in the computing dtype would refuse)
    S = pi_np.shape[0]
    tokens = _sample(pi_np, lam, T, gen, np.full(S, 1.0 / S))
    return _xp.from_numpy(tokens, space, dtype=None), _xp.from_numpy(lam, space)


def lag_factors(tokens: Any, pi: Any, m: int) -> Any:
    """Lag factors ``C[..., i, g-1] = pi[y[m+i-g], y[m+i]]`` (docs/math.md §2).

    Parameters
    ----------
    tokens : array_like of int, shape (..., T), T >= m
    pi : array_like, shape (S, S)
    m : int
        Order, ``m >= 1``.

    Returns
    -------
    C : array, shape (..., T - m, m)
        Row i is transition i (into position m + i); column g-1 is lag g. In the namespace and
        on the device of ``tokens``/``pi``, in pi's float dtype (float16/bfloat16 as float32).

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> C = mtdmath.lag_factors(tokens, pi, 2)
    >>> C.shape
    (58, 2)
    >>> print(C[0, 0] == pi[tokens[1], tokens[2]], C[0, 1] == pi[tokens[0], tokens[2]])
    True True
    """
    m = validate.check_int(m, "m", minimum=1)
    space = _xp.data_space(tokens, pi)
    pi = validate.check_pi(pi, "pi", space)
    y = validate.check_tokens(tokens, pi.shape[0], m, "tokens", space)
    n = y.shape[-1] - m
    # the output and its flat index: (itemsize + 8) bytes per entry
    validate.check_alloc(int(np.prod(y.shape[:-1])) * n * m, 16, "m", f"lag factors of shape {tuple(y.shape[:-1]) + (n, m)}")
    return _lag_factors(y, pi, m, space.xp)


def _lag_factors(y: Any, pi: Any, m: int, xp: Any) -> Any:
    """Unchecked lag factors: one gather from the flattened pi; y (..., T) int64, pi (S, S).

    Fast path, torch: the windows of y are a view (``unfold``, reversed), and one advanced-indexing
    gather writes C in its final (..., n, m) layout (the generic route stacks m index slices first).
    """
    if _xp.is_torch_namespace(xp):
        n = y.shape[-1] - m
        src = y.unfold(-1, m, 1)[..., :n, :].flip(-1)  # (..., n, m): y[m+i-g] for g = 1..m
        return pi[src, y[..., m:].unsqueeze(-1)]
    S = pi.shape[0]
    T = y.shape[-1]
    n = T - m
    tgt = y[..., m:]  # (..., n)
    # lag g's source of transition i is y[m+i-g]: the slice y[m-g : T-g]; flat index src*S + tgt
    idx = xp.stack([y[..., m - g: T - g] * S + tgt for g in range(1, m + 1)], axis=-1)  # (..., n, m)
    flat = xp.take(xp.reshape(pi, (-1,)), xp.reshape(idx, (-1,)))
    return xp.reshape(flat, tuple(y.shape[:-1]) + (n, m))


def predictive(lam: Any, tokens: Any, pi: Any) -> Any:
    """Next-token law after ``tokens``: ``p[b] = Σ_g lam[g-1] · pi[y[T-g], b]``.

    Parameters
    ----------
    lam : array_like, shape (..., m)
        Lag weights; broadcasts against the batch shape of ``tokens``.
    tokens : array_like of int, shape (..., T), T >= m
    pi : array_like, shape (S, S)

    Returns
    -------
    p : array, shape (broadcast batch..., S)
        In the namespace, device and float dtype of ``tokens``/``pi``.

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> rng = np.random.default_rng(0)
    >>> pi = mtdmath.random_transition_matrix(3, rng=rng)
    >>> tokens = mtdmath.sample(pi, np.array([0.7, 0.3]), 60, rng=rng)
    >>> p = mtdmath.predictive(np.array([0.7, 0.3]), tokens, pi)
    >>> p.shape
    (3,)
    >>> print(round(float(p.sum()), 12))
    1.0
    """
    space = _xp.data_space(tokens, pi)
    xp = space.xp
    pi = validate.check_pi(pi, "pi", space)
    lam = validate.check_lam(lam, "lam", space=space)
    m = lam.shape[-1]
    y = validate.check_tokens(tokens, pi.shape[0], m, "tokens", space)
    from .likelihood import _broadcast_batch

    _broadcast_batch(lam, y, "lam", "tokens", 1, 1)
    T = y.shape[-1]
    last = y[..., T - m:]  # (..., m): y[T-m], ..., y[T-1] = lags m..1
    rows = xp.take(pi, xp.reshape(last, (-1,)), axis=0)  # (B*m, S)
    rows = xp.reshape(rows, tuple(last.shape) + (pi.shape[0],))  # (..., m, S), lag order m..1
    lam_rev = xp.flip(lam, axis=-1)[..., None]  # (..., m, 1): lag m first, as rows
    return xp.sum(lam_rev * rows, axis=-2)
