"""Frozen laws, one per family: :class:`MTDModel` (the MTD law) and :class:`ChainModel` (the saturated
order-m Markov chain).

A law holds only parameters and what follows from them: the next-token law (``predict_proba``), the
log-likelihood of transition counts (``log_prob``) or of sequences (``log_likelihood``), simulation
(``sample``, through the one sampler :func:`draw_chain`), the identifiable parameter count ``n_params``, the
first-order embedding on the max-lag state space and its stationary law. Laws work on integer codes
``0..S-1`` (labels are the estimators' business), copy their inputs and are immutable: their arrays are
read-only and their attributes cannot be rebound.
"""
from __future__ import annotations

import bisect
from typing import Any, Callable, Sequence

import numpy as np

from .._validate import (SUM_TOL, as_rng, check_alloc, check_float, check_int, check_pi, check_prob_vector, check_tokens,
                         float_array)
from ._data import TransitionCounts, check_lags, count, parse, to_numpy
from ._em import Layout, mixture_prob

#: default largest state space S^max_lag for :meth:`MTDModel.stationary_distribution` and a sparse expanded
#: matrix
MAX_STATES = 200_000
#: default largest state space S^max_lag for a dense :meth:`MTDModel.expanded_matrix`
MAX_DENSE_STATES = 4096
#: a fitted parameter at most this is "estimated at 0" for AIC/BIC with ``boundary="drop"``: EM sets an entry no
#: transition uses to exactly 0, and one whose constrained maximum is 0 shrinks geometrically far below this
ZERO_PARAM_TOL = 1e-8
#: stationary law: exact dense solve up to this many states, power iteration (then GMRES) above
_DENSE_SOLVE_STATES = 2000
_POWER_ITERS = 20_000


def mtd_n_params(S: int, k: int, variant: str, independent: bool) -> int:
    """Generic number of identifiable parameters of an MTD (rank of the Jacobian of the map from the
    parameters to the conditional law P(. | context) at a generic interior point; docs/math.md §7.6):

    - shared:                 S(S-1) + k - 1            (pi rows, lam on the simplex; identifiable)
    - shared + independent:   S(S-1) + k - 1            (raw S(S-1) + k + S - 1, minus the S-dimensional
      invariance pi -> (pi - t 1 q^T)/(1-t), lam -> (1-t) lam, lam_indep p0 -> lam_indep p0 + t (1-lam_indep) q)
    - lagwise (+/- independent): (S-1)(1 + k(S-1))       (the products lam_j pi_j are identified only up to
      adding constant rows 1 c_j^T with sum_j c_j = 0; this is Lebre & Bourguignon's count, also mtdlearn's)
    """
    if variant == "lagwise":
        return (S - 1) * (1 + k * (S - 1))
    return S * (S - 1) + k - 1


def _frozen(a: Any) -> np.ndarray:
    """A read-only copy (never a view of the caller's array)."""
    out = np.array(a, dtype=np.float64, copy=True)
    out.setflags(write=False)
    return out


def draw_chain(T: int, order: int, n_symbols: int, rng: Any, init: Any, prefix: Any,
               row: Callable[[list, int, int], list], latent: Callable[[Any, int], Any] | None = None
               ) -> np.ndarray:
    """The one sampler of the fitting package: a chain of length T whose first ``order`` tokens are i.i.d.
    from ``init`` (default uniform) or the given ``prefix`` (1-D, ``order <= length <= T``), and whose token
    ``t`` is the inverse-CDF draw of ``row(tokens so far, t, i)``, a cumulative next-token law (a Python list,
    cheap to bisect in the unavoidable sequential loop; ``i`` counts the drawn tokens). ``latent(rng, n)``,
    if given, draws the latent variables of the n steps before their uniforms. Returns (T,) int64."""
    T = check_int(T, "T", minimum=0)
    check_alloc(T, 8 * 3, "T", f"a chain of length T = {T}")
    rng = as_rng(rng)
    S, M = n_symbols, order
    init_p = np.full(S, 1.0 / S) if init is None else check_prob_vector(init, "init", S)
    y = np.empty(T, dtype=np.int64)
    if prefix is not None:
        # condition on given first tokens (the conditional parametric bootstrap keeps each sequence's start)
        pre = check_tokens(to_numpy(prefix), S, name="prefix")
        if pre.ndim != 1 or pre.shape[0] < M or pre.shape[0] > T:
            raise ValueError(f"prefix must be 1-D with order = {M} <= length <= T = {T} (got shape {pre.shape})")
        y[: pre.shape[0]] = pre
        M = pre.shape[0]
    else:
        M0 = min(M, T)
        y[:M0] = rng.choice(S, size=M0, p=init_p)
    if T <= M:
        return y
    if latent is not None:
        latent(rng, T - M)
    u = rng.random(T - M)
    yl = y.tolist()
    for i in range(T - M):
        t = M + i
        b = bisect.bisect_right(row(yl, t, i), float(u[i]))
        yl[t] = b if b < S else S - 1  # guards u ~ 1 against rounding of the last cumulative sum
    return np.asarray(yl, dtype=np.int64)


class _Law:
    """What every law derives from its next-token law: immutability, the first-order embedding on the
    max-lag state space and its stationary law. Subclasses define ``n_symbols``, ``order``, ``predict_proba``."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: build a new law instead of setting {name!r}")

    def _simplex_blocks(self) -> list[np.ndarray]:
        """The law's parameters as probability vectors (each 1-D, summing to 1)."""
        raise NotImplementedError

    def n_params_at_zero(self, tol: float = ZERO_PARAM_TOL) -> int:
        """Number of free parameters the law holds at 0 (docs/math.md eq-boundary-criteria): in each simplex
        block of size s (lam with lam_indep, a row of pi, p0, a row of a chain's transition), the entries
        ``<= tol``, at most ``s - 1`` per block (march's convention for AIC/BIC)."""
        tol = check_float(tol, "tol", nonnegative=True)
        return int(sum(min(int((b <= tol).sum()), b.shape[0] - 1) for b in self._simplex_blocks()))

    def _state_space(self, max_states: int, what: str, dense: bool) -> int:
        S, M = self.n_symbols, self.order
        n = S**M
        if n > max_states:
            raise ValueError(
                f"{what}: the max-lag state space has S^order = {S}^{M} = {n} states, above the limit "
                f"max_states = {max_states}; raise max_states if you have the memory")
        # the sparse matrix holds n S entries (value, column, row index); a dense solve n^2
        check_alloc(n * S, 8 * 3, "max_states", f"the expanded matrix on {n} states")
        if dense:
            check_alloc(n * n, 8 * 2, "max_states", f"the dense {n} x {n} expanded matrix")
        return n

    def _expanded_sparse(self, n: int):
        import scipy.sparse as sp

        S, M = self.n_symbols, self.order
        states = np.arange(n)
        # digits of each state, oldest token first: state = sum_i y[t-M+1+i] S^(M-1-i)
        ctx = np.stack([(states // S ** (M - 1 - i)) % S for i in range(M)], axis=1)
        P = self.predict_proba(ctx)  # (n, S): law of the next token from each state
        nxt = (states % S ** (M - 1))[:, None] * S + np.arange(S)[None, :] if M else np.zeros((n, S), np.int64)
        return sp.csr_matrix((P.ravel(), (np.repeat(states, S), nxt.ravel())), shape=(n, n))

    def expanded_matrix(self, *, sparse: bool = False, max_states: int | None = None):
        """First-order embedding of the chain on the max-lag state space (Raftery 1985, §1.1).

        State ``(y[t-M+1], ..., y[t])`` (oldest first) has index ``sum_i y[t-M+1+i] S^(M-1-i)``; the entry
        ``[s, s']`` is P(s -> s'), non-zero only when s' = s shifted by one token. Returns a dense
        (S^M, S^M) array (limit ``max_states``, default 4096) or a scipy CSR matrix with ``sparse=True``
        (default limit 200000); a ``ValueError`` names the limit when S^M is above it, before any
        allocation."""
        if max_states is None:
            limit = MAX_STATES if sparse else MAX_DENSE_STATES
        else:
            limit = check_int(max_states, "max_states", 1)
        n = self._state_space(limit, "expanded_matrix", dense=not sparse)
        A = self._expanded_sparse(n)
        return A if sparse else A.toarray()

    def stationary_distribution(self, *, max_states: int = MAX_STATES) -> tuple[np.ndarray, np.ndarray]:
        """Stationary law of the chain on the max-lag state space and its one-token marginal.

        Solves ``p A = p, sum p = 1`` for the expanded matrix A: exactly (dense LU of
        ``I - A^T + 1 1^T / n``, nonsingular iff the stationary law is unique) when S^order <= 2000, else by
        power iteration of the lazy chain ``(I + A) / 2`` from the uniform law (sparse products only) to an
        L1 change < 1e-14, finished by GMRES on the same nonsingular system if that is slow. Raises
        ``ValueError`` before any allocation when S^order exceeds ``max_states`` (naming the limit) or the
        memory budget, and, for small state spaces, when the law is not unique (for large ones a reducible
        chain gives the limit from the uniform start).

        Returns
        -------
        joint : ndarray (S^order,)
            Indexed like :meth:`expanded_matrix`.
        marginal : ndarray (S,)
            Law of one token under stationarity.
        """
        max_states = check_int(max_states, "max_states", 1)
        S = self.n_symbols
        n = self._state_space(max_states, "stationary_distribution", dense=S**self.order <= _DENSE_SOLVE_STATES)
        AT = self._expanded_sparse(n).T.tocsr()
        if n <= _DENSE_SOLVE_STATES:
            B = np.eye(n) - AT.toarray() + 1.0 / n
            try:
                p = np.linalg.solve(B, np.full(n, 1.0 / n))
            except np.linalg.LinAlgError:  # exactly singular: several stationary laws
                p = np.full(n, np.nan)
        else:
            p = np.full(n, 1.0 / n)
            for _ in range(_POWER_ITERS):
                q = AT @ p
                delta = float(np.abs(q - p).sum())
                p = 0.5 * (p + q)
                if delta < 1e-14:
                    break
            else:
                import scipy.sparse.linalg as spl

                op = spl.LinearOperator((n, n), matvec=lambda x: x - AT @ x + x.sum() / n, dtype=np.float64)
                p, _ = spl.gmres(op, np.full(n, 1.0 / n), x0=p, rtol=1e-13, atol=0.0, restart=50, maxiter=1000)
        ok = np.all(np.isfinite(p)) and float(np.abs(AT @ p - p).sum()) <= 1e-9 and p.min() >= -1e-9
        if not ok:
            raise ValueError("stationary_distribution: the chain has no unique stationary law (reducible chain)"
                             " or the solver did not converge")
        p = np.clip(p, 0.0, None)
        p /= p.sum()
        marginal = np.bincount(np.arange(n) % S, weights=p, minlength=S)
        return p, marginal

    def log_likelihood(self, sequences: Any, *, weights: Any = None) -> float:
        """Log-likelihood of ``sequences`` (integer codes, any layout of :func:`~mtdmath.fitting.fit`), each
        conditioned on its first ``order`` tokens; -inf when the data are impossible under the law."""
        p = parse(sequences, sample_weight=weights, fitted=True, name="sequences", weight_name="weights")
        if p.top >= self.n_symbols:
            raise ValueError(f"sequences hold the token {p.top}, outside this law's states 0..{self.n_symbols - 1}")
        return self.log_prob(count(p, self.count_lags, self.n_symbols))


class MTDModel(_Law):
    """The MTD law, given by its parameters, validated and copied on construction, immutable.

    ``P(y[t] = b | past) = lam_indep * p0[b] + sum_j lam[j] * pi_j[y[t - lags[j]], b]`` (docs/math.md §1).

    Parameters
    ----------
    pi : array (S, S) or (k, S, S)
        One shared row-stochastic matrix, or one per lag (``pi[j]`` belongs to ``lags[j]``).
    lam : array (k,)
        Lag weights; ``lam.sum() + lam_indep == 1``.
    lags : sequence of int, optional
        Distinct positive lags, default ``1..k``; stored sorted (give ``lam`` in the same sorted order).
    lam_indep, p0 : float and array (S,), optional
        Weight and law of the order-0 component; give both or neither.

    Raises
    ------
    ValueError
        Naming the argument, when a matrix row does not sum to 1, the weights are off the simplex, shapes
        disagree, or lags are not distinct positive integers.

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath.fitting import MTDModel
    >>> law = MTDModel(np.array([[0.9, 0.1], [0.2, 0.8]]), [0.7, 0.3])
    >>> law.predict_proba([[0, 1]]).round(2)  # lag 1 is the last token: 0.7 pi[1] + 0.3 pi[0]
    array([[0.41, 0.59]])
    """

    def __init__(self, pi: Any, lam: Any, *, lags: Sequence[int] | None = None, lam_indep: float | None = None,
                 p0: Any = None):
        pi, lam, p0 = to_numpy(pi), to_numpy(lam), to_numpy(p0)
        lam = float_array(lam, "lam")  # refuses complex, strings, objects, ragged lists, booleans
        if lam.ndim != 1 or lam.shape[0] < 1:
            raise ValueError(f"lam must be 1-D with length k >= 1 (got shape {lam.shape})")
        k = lam.shape[0]
        lags_t = check_lags(None, lags) if lags is not None else tuple(range(1, k + 1))
        if len(lags_t) != k:
            raise ValueError(f"lags must have one entry per lam weight ({k}) (got {lags!r})")
        pi = float_array(pi, "pi")
        if pi.ndim == 3:
            if pi.shape[0] != k:
                raise ValueError(f"pi must have shape (k={k}, S, S) for a lag-wise model (got {pi.shape})")
            pi = np.stack([check_pi(pi[j], f"pi[{j}]") for j in range(k)])
        else:
            pi = check_pi(pi, "pi")
        S = pi.shape[-1]
        if (lam_indep is None) != (p0 is None):
            raise ValueError("lam_indep and p0 must be given together")
        if lam_indep is not None:
            lam_indep = check_float(lam_indep, "lam_indep", nonnegative=True)
            p0 = _frozen(check_prob_vector(p0, "p0", S))
            check_prob_vector(np.append(lam, lam_indep), "lam with lam_indep")
        else:
            check_prob_vector(lam, "lam")
        for name, value in (("pi", _frozen(pi)), ("lam", _frozen(lam)), ("lags", lags_t), ("lam_indep", lam_indep),
                            ("p0", p0)):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return (f"MTDModel(S={self.n_symbols}, lags={self.lags}, variant={self.variant!r}, "
                f"independent={self.independent})")

    def params(self) -> dict:
        """The parameters as a dict ``{"pi", "lam", "lags", "lam_indep", "p0"}`` (writable copies)."""
        return {"pi": self.pi.copy(), "lam": self.lam.copy(), "lags": self.lags, "lam_indep": self.lam_indep,
                "p0": None if self.p0 is None else self.p0.copy()}

    # -- derived quantities -------------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        return "lagwise" if self.pi.ndim == 3 else "shared"

    @property
    def independent(self) -> bool:
        return self.lam_indep is not None

    @property
    def n_symbols(self) -> int:
        return int(self.pi.shape[-1])

    @property
    def order(self) -> int:
        return int(self.lags[-1])

    @property
    def count_lags(self) -> tuple[int, ...]:
        """The lags whose tuples :meth:`log_prob` reads."""
        return self.lags

    @property
    def n_params(self) -> int:
        """Generic identifiable parameter count (:func:`mtd_n_params`): shared S(S-1)+k-1 (with or without
        the order-0 component); lagwise (S-1)(1+k(S-1))."""
        return mtd_n_params(self.n_symbols, len(self.lags), self.variant, self.independent)

    @property
    def layout(self) -> Layout:
        """The EM parameter layout of this law (:mod:`mtdmath.fitting._em`)."""
        return Layout(self.n_symbols, len(self.lags), self.variant, self.independent)

    @property
    def theta(self) -> np.ndarray:
        """The parameters packed in :attr:`layout` (a new array)."""
        return self.layout.pack(self.lam, self.pi, self.lam_indep, self.p0)

    def _simplex_blocks(self) -> list[np.ndarray]:
        head = [np.append(self.lam, self.lam_indep) if self.independent else self.lam]
        return head + list(self.pi.reshape(-1, self.n_symbols)) + ([self.p0] if self.independent else [])

    def _pis(self) -> np.ndarray:
        """(k, S, S) per-lag matrices (a shared pi repeated)."""
        k = len(self.lags)
        return self.pi if self.pi.ndim == 3 else np.broadcast_to(self.pi, (k,) + self.pi.shape)

    # -- prediction ---------------------------------------------------------------------------------------
    def predict_proba(self, contexts: Any) -> np.ndarray:
        """Law of the next token after each context.

        Parameters
        ----------
        contexts : int array (..., L), L >= order
            Token histories, time last; only the last ``order`` tokens matter (``contexts[..., -l]`` is lag l).

        Returns
        -------
        ndarray (..., S)
            ``lam_indep p0 + sum_j lam[j] pi_j[contexts[..., -lags[j]], :]`` (docs/math.md §1).
        """
        S = self.n_symbols
        c = check_tokens(to_numpy(contexts), S, self.order, name="contexts")
        if self.variant == "shared" and not self.independent:
            # the core's predictive, with lam spread over lags 1..order (zero weight on lags not in the model)
            from ..model import predictive

            lam_full = np.zeros(self.order)
            lam_full[np.asarray(self.lags) - 1] = self.lam
            return predictive(lam_full, c, self.pi)
        pis = self._pis()
        out = np.zeros(c.shape[:-1] + (S,))
        for j, l in enumerate(self.lags):
            out += self.lam[j] * pis[j][c[..., -l]]
        if self.independent:
            out += self.lam_indep * self.p0
        return out

    def log_prob(self, counts: TransitionCounts) -> float:
        """Log-likelihood ``sum_u w_u log s_u`` of transition counts (lags equal to :attr:`lags`); -inf when
        a counted transition is impossible under the law."""
        return float(np.sum(self.log_prob_terms(counts)))

    def log_prob_terms(self, counts: TransitionCounts) -> np.ndarray:
        """(U,) ``w_u log s_u`` per distinct tuple of ``counts``."""
        if counts.lags != self.lags or counts.n_symbols != self.n_symbols:
            raise ValueError(f"counts have lags {counts.lags} and {counts.n_symbols} states; this law has lags "
                             f"{self.lags} and {self.n_symbols} states")
        s = mixture_prob(self.layout, self.theta, counts)
        with np.errstate(divide="ignore"):
            return counts.w * np.log(s)

    def sample(self, T: int, rng: Any = None, *, init: Any = None, prefix: Any = None) -> np.ndarray:
        """Simulate one chain of length T.

        The first ``order`` tokens are i.i.d. from ``init`` (default uniform, docs/math.md §1), or the given
        ``prefix`` (1-D, length >= order) starts the chain; afterwards each token is drawn from the mixture
        of the generated past: latent lag first, then the row of that lag's matrix (:func:`draw_chain`).

        Returns
        -------
        ndarray (T,) int64
        """
        S, k = self.n_symbols, len(self.lags)
        weights = np.append(self.lam, self.lam_indep) if self.independent else self.lam
        weights = weights / weights.sum()
        cum = [[np.cumsum(self._pis()[j][a]).tolist() for a in range(S)] for j in range(k)]
        cum0 = np.cumsum(self.p0).tolist() if self.independent else None
        lags = self.lags
        z: list = []

        def latent(g: np.random.Generator, n: int) -> None:  # the latent lags Z_t of the n steps
            z.extend(g.choice(weights.shape[0], size=n, p=weights).tolist())

        def row(yl: list, t: int, i: int) -> list:
            zi = z[i]
            return cum0 if zi == k else cum[zi][yl[t - lags[zi]]]

        return draw_chain(T, self.order, S, rng, init, prefix, row, latent)

    def perfect_sample(self, n: int, rng: Any = None, *, length: int | None = None,
                       max_steps: int = 65_536) -> np.ndarray:
        """Exact draws from the stationary law of the chain, by coupling from the past (docs/math.md §10.1;
        hdMTD's ``perfectSample``).

        Each row is an independent draw of the stationary M-window (M = ``order``), or, with ``length > M``, a
        stationary stretch of the chain that starts from one. Unlike :meth:`sample`, no burn-in is needed:
        the first token of each row already has the stationary law.

        Parameters
        ----------
        n : int
            Number of independent draws.
        rng : numpy Generator, int seed or None
        length : int, optional
            Tokens per draw, default M; with ``length < M`` the last ``length`` tokens of the window.
        max_steps : int
            Largest backward horizon tried.

        Returns
        -------
        ndarray (n, length) int64
            Oldest token first; a row of length M indexes :meth:`stationary_distribution`'s joint law by
            ``sum_i row[i] S^(M-1-i)``.

        Raises
        ------
        ValueError
            Naming ``max_steps`` when a draw has not coalesced by then (a periodic or reducible chain never
            does), or the argument on bad input.

        Examples
        --------
        >>> import numpy as np
        >>> from mtdmath.fitting import MTDModel
        >>> law = MTDModel(np.array([[0.8, 0.2], [0.3, 0.7]]), [0.6, 0.4])
        >>> x = law.perfect_sample(2000, rng=0)
        >>> x.shape, round(float(x[:, -1].mean()), 1), law.stationary_distribution()[1].round(1).tolist()
        ((2000, 2), 0.4, [0.6, 0.4])
        """
        from ._perfect import perfect_sample  # the module builds on this class

        n = check_int(n, "n", minimum=0)
        width = self.order if length is None else max(check_int(length, "length", minimum=1), self.order)
        check_alloc(n * width, 8, "n", f"{n} draws of {width} tokens")
        return perfect_sample(self.pi, self.lam, n, lags=self.lags, lam_indep=self.lam_indep, p0=self.p0, length=length,
                              rng=rng, max_steps=max_steps)

    def oscillations(self) -> np.ndarray:
        """Oscillation of each lag (docs/math.md §10.2; hdMTD's ``oscillations``): the largest total-variation
        change of the next-token law when only the symbol at that lag changes,
        ``lam[j] * max_{b, c} dTV(pi_j[b, :], pi_j[c, :])``.

        Returns
        -------
        ndarray (k,)
            One entry per lag of :attr:`lags`, in that order. On a fitted law (``MTD.model_``) this is the
            plug-in estimate; hdMTD's count-based estimate is ``mtdmath.fitting._lagselect``'s
            ``estimate_oscillations``.

        Examples
        --------
        >>> import numpy as np
        >>> from mtdmath.fitting import MTDModel
        >>> MTDModel(np.array([[0.9, 0.1], [0.2, 0.8]]), [0.75, 0.25], lags=(1, 4)).oscillations().round(12).tolist()
        [0.525, 0.175]
        """
        from ._lagselect import oscillations

        return oscillations(self.pi, self.lam)


class ChainModel(_Law):
    """The law of a saturated order-m Markov chain (``order=0``: i.i.d. tokens), frozen.

    ``P(y[t] = b | y[t-1], ..., y[t-m]) = transition[i, b]`` for the context whose code is ``contexts[i]``
    (code ``sum_l y[t-l] S^(m-l)``: lag 1 most significant); a context not listed gets the uniform law.

    Parameters
    ----------
    transition : array (n_ctx, S)
        Row-stochastic next-token laws.
    order : int
        m >= 0.
    contexts : int array (n_ctx,), optional
        Strictly increasing context codes of the rows; default every context ``0..S^m - 1`` in order.

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath.fitting import ChainModel
    >>> law = ChainModel(np.array([[0.9, 0.1], [0.5, 0.5]]), order=1)
    >>> law.sample(6, rng=0).shape
    (6,)
    """

    def __init__(self, transition: Any, order: int, *, contexts: Any = None):
        order = check_int(order, "order", minimum=0)
        P = float_array(to_numpy(transition), "transition")
        if P.ndim != 2 or P.shape[0] < 1 or P.shape[1] < 1:
            raise ValueError(f"transition must be 2-D (n_ctx, S) (got shape {P.shape})")
        if not np.all(np.isfinite(P)) or np.any(P < 0) or np.any(np.abs(P.sum(axis=1) - 1.0) > SUM_TOL):
            raise ValueError("transition must hold finite non-negative rows that sum to 1")
        S = P.shape[1]
        if contexts is None:
            if P.shape[0] != S**order:
                raise ValueError(f"transition must have S^order = {S**order} rows when contexts is not given "
                                 f"(got {P.shape[0]})")
            codes = np.arange(P.shape[0], dtype=np.int64)
        else:
            codes = np.array(to_numpy(contexts), dtype=np.int64, copy=True)
            if codes.shape != (P.shape[0],) or np.any(np.diff(codes) <= 0) or codes.min() < 0 or \
                    codes.max() >= S**order:
                raise ValueError(f"contexts must be {P.shape[0]} strictly increasing codes in [0, S^order) "
                                 f"(got {contexts!r})")
        codes.setflags(write=False)
        for name, value in (("transition", _frozen(P)), ("order", order), ("contexts", codes)):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"ChainModel(S={self.n_symbols}, order={self.order}, {self.contexts.shape[0]} contexts)"

    @property
    def n_symbols(self) -> int:
        return int(self.transition.shape[1])

    def _simplex_blocks(self) -> list[np.ndarray]:
        return list(self.transition)

    @property
    def count_lags(self) -> tuple[int, ...]:
        return tuple(range(1, self.order + 1))

    @property
    def n_params(self) -> int:
        """``S^m (S - 1)``: the free parameters of the saturated chain (docs/math.md §7.8)."""
        return self.n_symbols**self.order * (self.n_symbols - 1)

    def context_codes(self, contexts: np.ndarray) -> np.ndarray:
        """(n,) codes of token contexts (n, L), L >= order, time last (lag 1 = last column)."""
        S = self.n_symbols
        c = np.zeros(contexts.shape[0], dtype=np.int64)
        for l in range(1, self.order + 1):
            c = c * S + contexts[:, -l]
        return c

    def rows(self, codes: np.ndarray) -> np.ndarray:
        """(n, S) law after each context code; uniform for a context not listed."""
        S = self.n_symbols
        pos = np.minimum(np.searchsorted(self.contexts, codes), self.contexts.shape[0] - 1)
        found = self.contexts[pos] == codes
        return np.where(found[:, None], self.transition[pos], 1.0 / S)

    def predict_proba(self, contexts: Any) -> np.ndarray:
        """Law of the next token after each context (n, L), L >= order, time last. Returns (n, S)."""
        c = check_tokens(to_numpy(contexts), self.n_symbols, self.order or None, name="contexts")
        if c.ndim != 2:
            raise ValueError(f"contexts must be 2-D (n, L) (got shape {c.shape})")
        return self.rows(self.context_codes(c))

    def log_prob_terms(self, counts: TransitionCounts) -> np.ndarray:
        """(U,) ``w_u log P(next | context)`` per distinct tuple of counts with lags ``1..order``."""
        if counts.lags != self.count_lags or counts.n_symbols != self.n_symbols:
            raise ValueError(f"counts have lags {counts.lags} and {counts.n_symbols} states; this chain needs lags "
                             f"{self.count_lags} and {self.n_symbols} states")
        codes = self.context_codes(counts.ctx[:, ::-1]) if self.order else np.zeros(len(counts), np.int64)
        p = self.rows(codes)[np.arange(len(counts)), counts.nxt]
        with np.errstate(divide="ignore"):
            return counts.w * np.log(p)

    def log_prob(self, counts: TransitionCounts) -> float:
        """Log-likelihood of transition counts (lags ``1..order``); -inf for an impossible transition."""
        return float(np.sum(self.log_prob_terms(counts)))

    def sample(self, T: int, rng: Any = None, *, init: Any = None, prefix: Any = None) -> np.ndarray:
        """Simulate one chain of length T: the first ``order`` tokens i.i.d. from ``init`` (default uniform) or
        ``prefix``, then each from the law after the previous ``order`` (:func:`draw_chain`). Returns (T,)."""
        S, m = self.n_symbols, self.order
        codes = self.contexts.tolist()
        cum = np.cumsum(self.transition, axis=1).tolist()
        uniform = np.cumsum(np.full(S, 1.0 / S)).tolist()

        def row(yl: list, t: int, i: int) -> list:
            c = 0
            for l in range(1, m + 1):
                c = c * S + yl[t - l]
            j = bisect.bisect_left(codes, c)
            return cum[j] if j < len(codes) and codes[j] == c else uniform

        return draw_chain(T, m, S, rng, init, prefix, row)


__all__ = ["MTDModel", "ChainModel", "mtd_n_params", "draw_chain", "MAX_STATES", "MAX_DENSE_STATES"]
