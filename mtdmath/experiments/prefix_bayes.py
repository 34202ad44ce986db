"""Exact Bayes posterior mean of lam after *every* prefix of a sequence, in one forward pass.

The Pólya-urn forward recursion of docs/math.md §4 visits every prefix on its way to the end: after
step i its weights ``W_{i}[k]`` define the posterior given the first i transitions, a mixture of
Dirichlet(alpha + k) with weights ``W_i[k]``, so

    E[lam_g | first i transitions] = Σ_k W_i[k] (alpha_g + k_g) / ((α₀ + i) Σ_k W_i[k]).

Evaluating that at every level costs about as much as the recursion itself, so the whole
all-prefix curve of the evaluation protocol (docs/math.md §6) costs about one call of
:func:`mtdmath.posterior_mean` on the full sequence, instead of T of them.

The levels are those of :class:`mtdmath.bayes.PolyaLevels`, the library's one implementation
of the recursion (padded count-state layout, rescaled levels); here its moments are taken after
every level instead of the last only. It is checked against :func:`mtdmath.posterior_mean`
applied to each truncated prefix (and, for m = 2, against quadrature) in
``tests/test_experiments.py``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _validate as validate
from ..bayes import DEFAULT_MAX_BYTES, PolyaLevels, levels_bytes

__all__ = ["posterior_mean_all_prefixes"]


def posterior_mean_all_prefixes(C: Any, alpha: Any, *, chunk: int = 8, progress: Any = None,
                                max_bytes: float = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Exact ``E[lam | first r transitions]`` for r = 0 … n, for a batch of sequences.

    Parameters
    ----------
    C : array_like, shape (B, n, m)
        Lag factors of the whole sequences (docs/math.md §2); no all-zero row.
    alpha : array_like, shape (m,)
        Dirichlet prior of lam.
    chunk : int
        Sequences processed together (the working memory is about
        ``8 · chunk · binom(n+m-2, m-2) · (n+1)`` float64 numbers).
    progress : callable, optional
        Called with the number of sequences finished after each chunk (e.g. ``tqdm.update``).
    max_bytes : float
        Memory budget (bytes, > 0) of the result and of one chunk's recursion; above it a
        ``ValueError`` is raised before anything is allocated (the count states grow like
        ``binom(n+m-1, m-1)``: n = 20000 transitions with m = 4 lags need terabytes).

    Returns
    -------
    post : ndarray, shape (B, n+1, m)
        Row r is the posterior mean given transitions 0 … r-1 (row 0 is the prior mean μ), i.e.
        given the prefix ``y[:m+r]``.

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath.experiments import posterior_mean_all_prefixes
    >>> post = posterior_mean_all_prefixes(np.array([[[0.5, 0.1], [0.2, 0.4]]]), np.ones(2))
    >>> post.shape
    (1, 3, 2)
    >>> post[0, 0].tolist()  # no transition seen: the prior mean
    [0.5, 0.5]
    """
    max_bytes = validate.check_float(max_bytes, "max_bytes", positive=True)
    C = validate.check_C(C, "C")
    alpha = validate.check_alpha(alpha, "alpha")
    validate.check_same_m(C.shape[-1], alpha.shape[0], "alpha")
    chunk = validate.check_int(chunk, "chunk", minimum=1)
    if C.ndim != 3:
        raise ValueError(f"C must have shape (B, n, m) (got shape {tuple(C.shape)})")
    B, n, m = C.shape
    need = 8 * B * (n + 1) * m + levels_bytes(min(chunk, max(B, 1)), n, m)
    if need > max_bytes:
        raise ValueError(f"C: the posterior after every prefix needs about {need / 2**30:.3g} GiB for B = {B}, "
                         f"n = {n}, m = {m} (chunk = {chunk}), above max_bytes = {max_bytes / 2**30:.3g} GiB; "
                         "raise max_bytes, lower chunk or shorten the sequences")
    C = np.asarray(C, dtype=np.float64)
    out = np.empty((B, n + 1, m))
    for a in range(0, B, chunk):
        rec = PolyaLevels(C[a: a + chunk], alpha, max_bytes)
        for L in rec:
            out[a: a + chunk, L] = rec.moments()[0]
        if progress is not None:
            progress(min(chunk, B - a))
    return out
