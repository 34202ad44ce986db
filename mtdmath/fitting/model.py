"""The MTD law as a validated parameter object (:class:`MTDModel`) and the fit report (:class:`MTDFit`).

:class:`MTDModel` holds only parameters (pi, lam, lags, and the optional order-0 component lam0, p0) and
what follows from them: the next-token law, the likelihood of data, simulation, the first-order embedding
and its stationary law. :class:`MTDFit` is an :class:`MTDModel` together with the report of the fit that
produced it (log-likelihood, information criteria, convergence).
"""
from __future__ import annotations

import bisect
import math
import warnings
from typing import Any, Sequence

import numpy as np

from .._validate import (as_rng, check_alloc, check_float, check_int, check_pi, check_prob_vector, check_tokens,
                         float_array)
from .em import ConvergenceMonitor, _as_sequences, _check_lags, _Layout, _prepare, _to_numpy
from .symbols import decode, encode

#: how every printed summary names the two variants (the peers' default model is the lag-wise one)
VARIANT_NAMES = {"shared": "shared pi: one transition matrix for every lag, Raftery's MTD",
                 "lagwise": "lag-wise: one matrix per lag, MTDg"}
PEER_NOTE = "mtdlearn's MTD is the lag-wise model (variant='lagwise'); mtdmath's default is variant='shared'"


def summary_text(model: "MTDModel", loglik: float, n_obs: float, converged: bool | None, reason: str | None) -> str:
    """The text of an MTD fit's summary (shared by :meth:`MTDFit.summary` and :meth:`MTD.summary`)."""
    classes = getattr(model, "classes", None)
    states = (", ".join(repr(c) for c in classes.tolist()) if classes is not None
              else f"codes 0..{model.n_states - 1}")
    k = model.n_params
    lines = [f"MTD fit, variant = {model.variant!r} ({VARIANT_NAMES[model.variant]})",
             f"  note: {PEER_NOTE}",
             f"  states (S = {model.n_states}): {states}",
             f"  lags {model.lags}, lam {np.array2string(np.round(model.lam, 4), separator=', ')}"
             + (f", lam0 {model.lam0:.4f} (order-0 component)" if model.independent else ""),
             f"  loglik {loglik:.4f} on {n_obs:g} transitions, n_params {k}, "
             f"AIC {-2 * loglik + 2 * k:.2f}, BIC {-2 * loglik + math.log(n_obs) * k:.2f}"]
    if converged is not None:
        lines.append(f"  converged {converged} (stopped by {reason})")
    return "\n".join(lines)

#: default largest state space S^max_lag for :meth:`MTDModel.stationary_distribution` and a sparse expanded
#: matrix
MAX_STATES = 200_000
#: default largest state space S^max_lag for a dense :meth:`MTDModel.expanded_matrix`
MAX_DENSE_STATES = 4096
#: stationary law: exact dense solve up to this many states, power iteration (then GMRES) above
_DENSE_SOLVE_STATES = 2000
_POWER_ITERS = 20_000


def _n_params(S: int, k: int, variant: str, independent: bool) -> int:
    """Generic number of identifiable parameters (rank of the Jacobian of the map from the parameters to the
    conditional law P(. | context) at a generic interior point):

    - shared:                 S(S-1) + k - 1            (pi rows, lam on the simplex; identifiable)
    - shared + independent:   S(S-1) + k - 1            (raw S(S-1) + k + S - 1, minus the S-dimensional
      invariance pi -> (pi - t 1 q^T)/(1-t), lam -> (1-t) lam, lam0 p0 -> lam0 p0 + t (1-lam0) q)
    - lagwise (+/- independent): (S-1)(1 + k(S-1))       (the products lam_j pi_j are identified only up to
      adding constant rows 1 c_j^T with sum_j c_j = 0; this is Lebre & Bourguignon's count, also mtdlearn's)
    """
    if variant == "lagwise":
        return (S - 1) * (1 + k * (S - 1))
    return S * (S - 1) + k - 1



class MTDModel:
    """An MTD law given by its parameters, validated on construction.

    ``P(y[t] = b | past) = lam0 * p0[b] + sum_j lam[j] * pi_j[y[t - lags[j]], b]`` (docs/math.md §1).

    Parameters
    ----------
    pi : array (S, S) or (k, S, S)
        One shared row-stochastic matrix, or one per lag (``pi[j]`` belongs to ``lags[j]``).
    lam : array (k,)
        Lag weights; ``lam.sum() + lam0 == 1``.
    lags : sequence of int, optional
        Distinct positive lags, default ``1..k``; stored sorted (give ``lam`` in the same sorted order).
    lam0, p0 : float and array (S,), optional
        Weight and law of the order-0 component; give both or neither.

    Raises
    ------
    ValueError
        Naming the argument, when a matrix row does not sum to 1, the weights are off the simplex, shapes
        disagree, or lags are not distinct positive integers.
    """

    def __init__(self, pi: Any, lam: Any, *, lags: Sequence[int] | None = None, lam0: float | None = None,
                 p0: Any = None):
        pi, lam, p0 = _to_numpy(pi), _to_numpy(lam), _to_numpy(p0)
        lam = float_array(lam, "lam")  # refuses complex, strings, objects, ragged lists, booleans
        if lam.ndim != 1 or lam.shape[0] < 1:
            raise ValueError(f"lam must be 1-D with length k >= 1 (got shape {lam.shape})")
        k = lam.shape[0]
        lags_t = _check_lags(None, lags) if lags is not None else tuple(range(1, k + 1))
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
        if (lam0 is None) != (p0 is None):
            raise ValueError("lam0 and p0 must be given together")
        if lam0 is not None:
            lam0 = check_float(lam0, "lam0", nonnegative=True)
            p0 = check_prob_vector(p0, "p0", S)
            check_prob_vector(np.append(lam, lam0), "lam with lam0")
        else:
            check_prob_vector(lam, "lam")
        self.pi = pi
        self.lam = lam
        self.lags = lags_t
        self.lam0 = lam0
        self.p0 = p0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(S={self.n_states}, lags={self.lags}, variant={self.variant!r}, "
                f"independent={self.independent})")

    def params(self) -> dict:
        """The parameters as a dict ``{"pi", "lam", "lags", "lam0", "p0"}`` (copies)."""
        return {"pi": self.pi.copy(), "lam": self.lam.copy(), "lags": self.lags, "lam0": self.lam0,
                "p0": None if self.p0 is None else self.p0.copy()}

    # -- derived quantities -------------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        return "lagwise" if self.pi.ndim == 3 else "shared"

    @property
    def independent(self) -> bool:
        return self.lam0 is not None

    @property
    def n_states(self) -> int:
        return int(self.pi.shape[-1])

    @property
    def order(self) -> int:
        return int(self.lags[-1])

    @property
    def n_params(self) -> int:
        """Generic identifiable parameter count (see ``_n_params`` for the derivation):
        shared: S(S-1)+k-1 (with or without the order-0 component); lagwise: (S-1)(1+k(S-1))."""
        return _n_params(self.n_states, len(self.lags), self.variant, self.independent)

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
            ``lam0 p0 + sum_j lam[j] pi_j[contexts[..., -lags[j]], :]`` (docs/math.md §1).
        """
        S = self.n_states
        c = check_tokens(_to_numpy(contexts), S, self.order, name="contexts")
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
            out += self.lam0 * self.p0
        return out

    def log_likelihood(self, sequences: Any, *, weights: Any = None) -> float:
        """Log-likelihood of ``sequences`` (same layouts as :func:`fit`), each conditioned on its first
        ``order`` tokens; -inf when the data are impossible under the model."""
        return float(np.sum(self._loglik_terms(sequences, weights)[0]))

    def _loglik_terms(self, sequences: Any, weights: Any = None, start: int | None = None):
        """(w_u log s_u per distinct tuple, aggregated data); ``start``: condition on that many first tokens."""
        seqs = _as_sequences(_to_numpy(sequences))
        top = max(int(s.max()) for s in seqs if s.size)
        if top >= self.n_states:
            raise ValueError(f"sequences hold the token {top}, outside this model's states 0..{self.n_states - 1}")
        data = _prepare(seqs, None, self.lags, self.n_states, _to_numpy(weights), start)
        lay = _Layout(self.n_states, len(self.lags), self.variant, self.independent)
        theta = lay.pack(self.lam, self.pi, self.lam0, self.p0)
        s = np.einsum("uk,k->u", theta[lay.index(data)], theta[: lay.K])
        with np.errstate(divide="ignore"):
            return data.w * np.log(s), data

    def sample(self, T: int, rng: Any = None, *, init: Any = None, prefix: Any = None) -> np.ndarray:
        """Simulate one chain of length T.

        The first ``order`` tokens are i.i.d. from ``init`` (default uniform, docs/math.md §1), or the given
        ``prefix`` (1-D, length >= order) starts the chain; afterwards each
        token is drawn from :meth:`predict_proba` of the tokens generated so far (latent lag first, then the
        row of that lag's matrix). A real chain: every token depends on the previously generated ones.

        Returns
        -------
        ndarray (T,) int64
        """
        T = check_int(T, "T", minimum=0)
        check_alloc(T, 8 * 3, "T", f"a chain of length T = {T}")
        rng = as_rng(rng)
        S, M = self.n_states, self.order
        init_p = np.full(S, 1.0 / S) if init is None else check_prob_vector(init, "init", S)
        y = np.empty(T, dtype=np.int64)
        if prefix is not None:
            # condition on given first tokens (the conditional parametric bootstrap keeps each sequence's start)
            pre = check_tokens(_to_numpy(prefix), S, name="prefix")
            if pre.ndim != 1 or pre.shape[0] < M or pre.shape[0] > T:
                raise ValueError(f"prefix must be 1-D with order = {M} <= length <= T = {T} (got shape {pre.shape})")
            y[: pre.shape[0]] = pre
            M = pre.shape[0]
        else:
            M0 = min(M, T)
            y[:M0] = rng.choice(S, size=M0, p=init_p)
        if T <= M:
            return y
        k = len(self.lags)
        weights = np.append(self.lam, self.lam0) if self.independent else self.lam
        weights = weights / weights.sum()
        z = rng.choice(weights.shape[0], size=T - M, p=weights)  # latent lags Z_t
        u = rng.random(T - M)
        pis = self._pis()
        # cumulative rows as Python lists: bisect on them is cheap in the unavoidable sequential loop
        cum = [[np.cumsum(pis[j][a]).tolist() for a in range(S)] for j in range(k)]
        cum0 = np.cumsum(self.p0).tolist() if self.independent else None
        lags = self.lags
        yl = y.tolist()
        for i in range(T - M):
            t = M + i
            zi = int(z[i])
            row = cum0 if zi == k else cum[zi][yl[t - lags[zi]]]
            b = bisect.bisect_right(row, float(u[i]))
            yl[t] = b if b < S else S - 1  # guards u ~ 1 against rounding of the last cumulative sum
        return np.asarray(yl, dtype=np.int64)

    # -- first-order embedding ----------------------------------------------------------------------------
    def _state_space(self, max_states: int, what: str) -> int:
        S, M = self.n_states, self.order
        n = S**M
        if n > max_states:
            raise ValueError(
                f"{what}: the max-lag state space has S^order = {S}^{M} = {n} states, above the limit "
                f"max_states = {max_states}; raise max_states if you have the memory"
            )
        return n

    def _expanded_sparse(self, n: int):
        import scipy.sparse as sp

        S, M = self.n_states, self.order
        states = np.arange(n)
        # digits of each state, oldest token first: state = sum_i y[t-M+1+i] S^(M-1-i)
        ctx = np.stack([(states // S ** (M - 1 - i)) % S for i in range(M)], axis=1)
        P = MTDModel.predict_proba(self, ctx)  # (n, S): law of the next token from each state (codes)
        nxt = (states % S ** (M - 1))[:, None] * S + np.arange(S)[None, :]  # drop oldest, append b
        return sp.csr_matrix((P.ravel(), (np.repeat(states, S), nxt.ravel())), shape=(n, n))

    def expanded_matrix(self, *, sparse: bool = False, max_states: int | None = None):
        """First-order embedding of the chain on the max-lag state space (Raftery 1985, §1.1).

        State ``(y[t-M+1], ..., y[t])`` (oldest first) has index ``sum_i y[t-M+1+i] S^(M-1-i)``; the entry
        ``[s, s']`` is P(s -> s'), non-zero only when s' = s shifted by one token. Returns a dense
        (S^M, S^M) array (limit ``max_states``, default 4096) or a scipy CSR matrix with ``sparse=True``
        (default limit 200000); a ``ValueError`` names the limit when S^M is above it."""
        if max_states is None:
            limit = MAX_STATES if sparse else MAX_DENSE_STATES
        else:
            limit = check_int(max_states, "max_states", 1)
        n = self._state_space(limit, "expanded_matrix")
        A = self._expanded_sparse(n)
        return A if sparse else A.toarray()

    def stationary_distribution(self, *, max_states: int = MAX_STATES) -> tuple[np.ndarray, np.ndarray]:
        """Stationary law of the chain on the max-lag state space and its one-token marginal.

        Solves ``p A = p, sum p = 1`` for the expanded matrix A: exactly (dense LU of
        ``I - A^T + 1 1^T / n``, nonsingular iff the stationary law is unique) when S^order <= 2000, else by
        power iteration of the lazy chain ``(I + A) / 2`` from the uniform law (sparse products only) to an
        L1 change < 1e-14, finished by GMRES on the same nonsingular system if that is slow. Raises
        ``ValueError`` when S^order exceeds ``max_states`` (naming the limit) or, for small state spaces,
        when the law is not unique (for large ones a reducible chain gives the limit from the uniform start).

        Returns
        -------
        joint : ndarray (S^order,)
            Indexed like :meth:`expanded_matrix`.
        marginal : ndarray (S,)
            Law of one token under stationarity.
        """
        max_states = check_int(max_states, "max_states", 1)
        n = self._state_space(max_states, "stationary_distribution")
        S = self.n_states
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


class MTDFit(MTDModel):
    """An :class:`MTDModel` fitted by :func:`mtdmath.fit`, with the report of the fit.

    Attributes
    ----------
    pi, lam, lags, lam0, p0
        The fitted parameters (see :class:`MTDModel`). A row of ``pi`` that no transition of the data uses
        is not identified; the fit returns it uniform.
    loglik : float
        Log-likelihood of the data, conditioned on each sequence's first ``order`` tokens.
    n_obs : float
        Number of (weighted) transitions used, the ``n`` of BIC.
    n_iter : int
        EM-map evaluations of the best restart (one SQUAREM iteration uses two or three).
    converged : bool
        The best restart met a stopping rule (``monitor.reason`` says which) before ``max_iter``.
    history : ndarray
        Log-likelihood at every accepted iterate of the best restart (nondecreasing).
    kkt_gap : float
        Sum over simplex blocks of the Frank-Wolfe gap ``max_j g_j - theta . g`` at the returned point, the max
        taken over the support (an entry that is exactly 0, e.g. pinned by an explicit start, stays 0 under EM).
    restart_logliks : ndarray
        Final log-likelihood of every restart, in start order (first = the ``init`` start).
    monitor : ConvergenceMonitor
        The monitor of the best restart.
    classes : ndarray (S,) or None
        The labels of the states when the data were labels (state ``i`` is ``classes[i]``; docs/math.md §7.9),
        None for integer codes. With labels, :meth:`predict_proba`, :meth:`log_likelihood` and :meth:`sample`
        take and return labels; :attr:`model` is the law on the codes.
    """

    def __init__(self, pi: Any, lam: Any, *, lags: Sequence[int] | None = None, lam0: float | None = None,
                 p0: Any = None, loglik: float, n_obs: float, n_iter: int = 0, converged: bool = False,
                 history: Any = (), kkt_gap: float = math.nan, restart_logliks: Any = (),
                 monitor: ConvergenceMonitor | None = None, classes: Any = None):
        super().__init__(pi, lam, lags=lags, lam0=lam0, p0=p0)
        if classes is not None:
            classes = np.asarray(classes, dtype=object)
            if classes.shape != (self.n_states,):
                raise ValueError(f"classes must hold one label per state ({self.n_states}) (got shape {classes.shape})")
        self.classes = classes
        loglik = float(loglik)
        if not math.isfinite(loglik):
            raise ValueError(f"loglik must be finite (got {loglik!r})")
        self.loglik = loglik
        self.n_obs = check_float(n_obs, "n_obs", positive=True)
        self.n_iter = check_int(n_iter, "n_iter", minimum=0)
        self.converged = bool(converged)
        self.history = np.asarray(history, dtype=np.float64)
        self.kkt_gap = float(kkt_gap)
        self.restart_logliks = np.asarray(restart_logliks, dtype=np.float64)
        self.monitor = monitor

    @classmethod
    def from_params(cls, pi: Any, lam: Any, *, lags: Sequence[int] | None = None, lam0: float | None = None,
                    p0: Any = None) -> MTDModel:
        """Deprecated: use ``MTDModel(pi, lam, ...)``; returns an :class:`MTDModel` (a law has no fit report)."""
        warnings.warn("MTDFit.from_params is deprecated: use mtdmath.MTDModel(pi, lam, ...)", DeprecationWarning,
                      stacklevel=2)
        return MTDModel(pi, lam, lags=lags, lam0=lam0, p0=p0)

    @property
    def model(self) -> MTDModel:
        """The fitted law alone."""
        return MTDModel(self.pi, self.lam, lags=self.lags, lam0=self.lam0, p0=self.p0)

    @property
    def aic(self) -> float:
        """-2 loglik + 2 n_params."""
        return -2.0 * self.loglik + 2.0 * self.n_params

    # -- labels -------------------------------------------------------------------------------------------
    def predict_proba(self, contexts: Any) -> np.ndarray:
        """As :meth:`MTDModel.predict_proba`; with labels, ``contexts`` holds labels and column ``i`` of the
        result is the probability of ``classes[i]``."""
        if self.classes is not None:
            contexts, _ = encode(contexts, "contexts", self.classes)
        return super().predict_proba(contexts)

    def log_likelihood(self, sequences: Any, *, weights: Any = None) -> float:
        """As :meth:`MTDModel.log_likelihood`; with labels, ``sequences`` holds labels."""
        if self.classes is not None:
            sequences, _ = encode(sequences, "sequences", self.classes)
        return super().log_likelihood(sequences, weights=weights)

    def sample(self, T: int, rng: Any = None, *, init: Any = None, prefix: Any = None) -> np.ndarray:
        """As :meth:`MTDModel.sample`; with labels, ``prefix`` and the returned chain hold labels."""
        if self.classes is not None and prefix is not None:
            prefix, _ = encode(prefix, "prefix", self.classes)
        return decode(super().sample(T, rng, init=init, prefix=prefix), self.classes)

    def __repr__(self) -> str:
        return (f"MTDFit(S={self.n_states}, lags={self.lags}, variant={self.variant!r} ({VARIANT_NAMES[self.variant]}), "
                f"independent={self.independent}, loglik={self.loglik:.6g})")

    def summary(self) -> str:
        """A printable report: the variant (shared pi or lag-wise MTDg; mtdlearn's model is the lag-wise one),
        the lags and weights, the states (labels), log-likelihood, n_params, AIC, BIC and convergence."""
        return summary_text(self, self.loglik, self.n_obs, self.converged,
                            self.monitor.reason if self.monitor is not None else None)

    __str__ = summary

    @property
    def bic(self) -> float:
        """-2 loglik + log(n_obs) n_params, n_obs = number of (weighted) transitions."""
        return -2.0 * self.loglik + math.log(self.n_obs) * self.n_params if self.n_obs > 0 else math.nan
