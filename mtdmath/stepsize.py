"""The loss-optimal mirror-descent step (docs/math.md §3): tuned on sampled tasks, reported on held-out ones.

η* = 1/(1+α₀) is the step that matches the Bayes posterior mean to first order (Theorem 1); it is
not the step that minimises the next-token loss at a finite context length. :func:`optimal_step`
finds the constant step (or a per-step schedule) of k-step MD from μ that minimises the expected
``KL(true next-token law ‖ MD predictive)``, either at one context length L or averaged over the
prefixes L = m..T of sequences of length T (what a transformer trained on such sequences
minimises), on sequences drawn from the in-context task (pi, alpha).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _validate as validate
from . import _xp
from .estimators import eta_bayes, k_step_md, md_predictive_all_prefixes
from .likelihood import kl
from .model import lag_factors, predictive, sample_icl

__all__ = ["StepResult", "optimal_step", "task_kl"]


@dataclass
class StepResult:
    """Result of :func:`optimal_step`.

    Attributes
    ----------
    eta : float or ndarray of shape (k,)
        The tuned step (a schedule when ``schedule=True``).
    eta_se : float or ndarray
        Its bootstrap standard error (re-tuned on resampled training sequences).
    kl, kl_se : float
        Mean KL (nats) at ``eta`` on the held-out sequences, and its bootstrap standard error.
    kl_eta_star, kl_eta_star_se : float
        The same at the constant step η* = 1/(1+α₀).
    diff_se : float
        Bootstrap standard error of the paired difference ``kl - kl_eta_star`` (same sequences).
    eta_star : float
    L, T, k : int or None
        The context length (or the length T of the training objective) and the number of steps.
    n_train, n_test : int
    """

    eta: Any
    eta_se: Any
    kl: float
    kl_se: float
    kl_eta_star: float
    kl_eta_star_se: float
    diff_se: float
    eta_star: float
    L: int | None
    T: int | None
    k: int
    n_train: int
    n_test: int
    history: list = field(default_factory=list)


def _true_next(tokens: np.ndarray, pi: np.ndarray, lam: np.ndarray, m: int, L: int | None) -> np.ndarray:
    """The true next-token law ``Σ_g lam_g pi[y[t+1-g]]`` after the prefix of length L (B, S), or
    after every prefix of length m..T (B, T-m+1, S): one gather, no loop over sequences."""
    if L is not None:
        return predictive(lam, tokens[:, :L], pi)
    B, T = tokens.shape
    src = np.stack([tokens[:, m - g: T + 1 - g] for g in range(1, m + 1)])  # (m, B, T-m+1)
    w = np.broadcast_to(lam.T[:, :, None], src.shape)
    out = _xp.weighted_rows(src.reshape(m, -1), np.ascontiguousarray(w).reshape(m, -1), pi, _xp.numpy_namespace())
    return out.reshape(B, T - m + 1, -1)


def task_kl(tokens: Any, lam: Any, pi: Any, alpha: Any, eta: Any, *, k: int = 1, L: int | None = None) -> np.ndarray:
    """Per-sequence KL (nats) of k-step MD from μ with step ``eta`` to the true next-token law.

    ``L`` given: at the prefix of length L (``tokens[:, :L]`` predicts ``tokens[:, L]``); else the
    mean over every prefix of length m..T (the training objective of sequences of length T).

    Returns
    -------
    ndarray, shape (B,)
    """
    tokens = np.asarray(_xp.to_numpy(tokens))
    pi = np.asarray(_xp.to_numpy(pi), dtype=np.float64)
    lam = np.asarray(_xp.to_numpy(lam), dtype=np.float64)
    alpha = validate.check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    p_true = _true_next(tokens, pi, lam, m, L)
    if L is not None:
        p_md = predictive(k_step_md(lag_factors(tokens[:, :L], pi, m), alpha, k, eta=eta), tokens[:, :L], pi)
        return kl(p_true, p_md)
    p_md = md_predictive_all_prefixes(tokens, pi, alpha, eta=eta, steps=k)
    return kl(p_true, p_md).mean(axis=-1)


def _tune(objective, k: int, schedule: bool, eta_star: float) -> np.ndarray:
    """Minimise the objective over log η in [log(1e-4 η*), log(1e3 η*)]: a grid, then Brent
    (constant step) or L-BFGS-B from the best grid point (schedule)."""
    from scipy import optimize  # imported on use: scipy.optimize costs ~0.2 s at import mtdmath

    lo, hi = math.log(1e-4 * eta_star), math.log(1e3 * eta_star)
    grid = np.linspace(lo, hi, 29)
    vals = [objective(np.full(k, math.exp(x))) for x in grid]
    j = int(np.argmin(vals))
    a, b = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(lambda x: objective(np.full(k, math.exp(x))), bounds=(a, b), method="bounded",
                                   options={"xatol": 1e-4})
    best = np.full(k, math.exp(res.x))
    if schedule and k > 1:
        res2 = optimize.minimize(lambda x: objective(np.exp(x)), np.log(best), method="L-BFGS-B",
                                 bounds=[(lo, hi)] * k)
        if res2.fun <= objective(best):
            best = np.exp(res2.x)
    return best


#: the bootstrap's fine grid about the full-sample minimiser, in log η: ±0.5 (inside one step, 0.58, of
#: the coarse grid of _tune, so a resample whose minimum lies beyond it is re-tuned from scratch) in
#: steps of 0.02; the parabola through the three points about each minimum refines it to well below the
#: bootstrap spread of log η_opt (0.01-0.1 at 512 sequences, L = 8…256; tests/test_stepsize.py compares
#: the standard error with re-tuning every resample in full)
_BOOT_HALF_WIDTH, _BOOT_STEP = 0.5, 0.02


def _boot_tune_constant(per_seq, eta: float, boot_idx: list, retune) -> list[float]:
    """The minimiser of every bootstrap resample's objective (a constant step), from one evaluation of
    the per-sequence objective on a fine grid of log η about the full-sample minimiser ``eta``.

    A resample's objective is the mean of the per-sequence KLs with its multiplicities, so the
    per-sequence values at each grid point serve every resample (``counts @ F``): the cost is one
    tuning's worth of evaluations, not one per resample. Each minimum is refined by the vertex of the
    parabola through the grid point and its two neighbours; a minimum on the grid's edge is re-tuned by
    ``retune(indices)`` (the full grid and Brent), as every resample was before.
    """
    offsets = np.arange(-_BOOT_HALF_WIDTH, _BOOT_HALF_WIDTH + _BOOT_STEP / 2, _BOOT_STEP)
    F = np.stack([per_seq(eta * math.exp(g)) for g in offsets], axis=1)  # (n_train, G)
    n_train = F.shape[0]
    out = []
    for i in boot_idx:
        v = np.bincount(i, minlength=n_train) @ F / n_train
        j = int(np.argmin(v))
        curv = v[j - 1] - 2 * v[j] + v[j + 1] if 0 < j < len(v) - 1 else 0.0
        if not curv > 0:  # on the edge, or flat to rounding: the full tuning
            out.append(retune(i))
            continue
        x = offsets[j] + _BOOT_STEP * (v[j - 1] - v[j + 1]) / (2 * curv)
        out.append(eta * math.exp(x))
    return out


def optimal_step(pi: Any, alpha: Any, *, L: int | None = None, T: int | None = None, k: int = 1,
                 schedule: bool = False, n_train: int = 512, n_test: int = 512, n_boot: int = 50,
                 rng: Any = None) -> StepResult:
    """The step of k-step MD from μ that minimises the expected KL to the true next-token law.

    Sequences are drawn from the in-context task (``sample_icl``: lam ~ Dirichlet(alpha) per
    sequence); the step is tuned on ``n_train`` of them and the KL reported on ``n_test``
    disjoint ones. Every evaluation is vectorised over the sequences.

    Parameters
    ----------
    pi : array_like, shape (S, S)
    alpha : array_like, shape (m,)
    L : int, optional
        Tune at this context length (the prefix of length L predicts token L), L >= m.
    T : int, optional
        Tune on the training objective: the mean KL over the prefixes of length m..T of
        sequences of length T. Exactly one of L and T is given.
    k : int
        Number of MD steps, >= 1.
    schedule : bool
        Tune one step size per step (k values) instead of a constant step.
    n_train, n_test : int
        Sequences to tune on and to report on.
    n_boot : int
        Bootstrap resamples for the standard errors (0: none, reported as NaN). A constant step is
        re-tuned on every resample from one fine grid of per-sequence KLs about the full-sample
        minimiser (refined by a parabola; a resample whose minimum leaves the grid is re-tuned in full),
        so resamples are cheap; a schedule is re-tuned in full on each.
    rng : Generator, int or None

    Returns
    -------
    StepResult

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> pi = mtdmath.random_transition_matrix(4, concentration=0.5, rng=0)
    >>> res = mtdmath.optimal_step(pi, np.array([1.0, 1.0]), L=8, n_train=64, n_test=64, n_boot=0, rng=1)
    >>> print(round(float(res.eta), 3), round(mtdmath.eta_bayes(np.array([1.0, 1.0])), 3))
    0.238 0.333
    """
    pi = _xp.to_numpy(validate.check_pi(pi, "pi")).astype(np.float64)
    # validated in its own dtype (a float32 pi sums to 1 within float32 rounding); the sampling and
    # the KL run in float64 on rows that sum to 1 in float64
    pi = pi / pi.sum(axis=1, keepdims=True)
    alpha = validate.check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    k = validate.check_int(k, "k", minimum=1)
    if (L is None) == (T is None):
        raise ValueError("give exactly one of L (a context length) and T (the training objective over L = m..T)")
    if L is not None:
        L = validate.check_int(L, "L", minimum=m)
    else:
        T = validate.check_int(T, "T", minimum=m)
    n_train = validate.check_int(n_train, "n_train", minimum=2)
    n_test = validate.check_int(n_test, "n_test", minimum=2)
    n_boot = validate.check_int(n_boot, "n_boot", minimum=0)
    schedule = validate.check_bool(schedule, "schedule")
    gen = validate.as_rng(rng)
    length = (L + 1) if L is not None else T
    # the sampled tokens of the larger draw and the (n, T, S) predictive laws of its KL
    length_name = "L" if L is not None else "T"
    for count, name in ((n_train, "n_train"), (n_test, "n_test")):
        validate.check_alloc(count * length * (3 + 2 * pi.shape[0]), 8, f"{name}, {length_name}",
                      f"{name} = {count} sequences of length {length} over S = {pi.shape[0]} tokens")
    y_tr, lam_tr = sample_icl(pi, alpha, length, n_train, rng=gen)
    y_te, lam_te = sample_icl(pi, alpha, length, n_test, rng=gen)
    e_star = eta_bayes(alpha)

    def per_seq(y, lam, eta):
        return task_kl(y, lam, pi, alpha, list(eta), k=k, L=L)

    def tune(y, lam):
        return _tune(lambda eta: float(per_seq(y, lam, eta).mean()), k, schedule, e_star)

    eta = tune(y_tr, lam_tr)
    kl_opt = per_seq(y_te, lam_te, eta)
    kl_star = per_seq(y_te, lam_te, np.full(k, e_star))
    boot_idx, boot_kl, boot_star, boot_diff = [], [], [], []
    for _ in range(n_boot):
        boot_idx.append(gen.integers(0, n_train, n_train))
        j = gen.integers(0, n_test, n_test)
        boot_kl.append(kl_opt[j].mean())
        boot_star.append(kl_star[j].mean())
        boot_diff.append((kl_opt[j] - kl_star[j]).mean())
    if schedule and k > 1:
        boot_eta = [tune(y_tr[i], lam_tr[i]) for i in boot_idx]
    else:
        boot_eta = [np.full(k, e) for e in _boot_tune_constant(
            lambda e: per_seq(y_tr, lam_tr, np.full(k, e)), float(eta[0]), boot_idx,
            lambda i: float(tune(y_tr[i], lam_tr[i])[0]))]
    se = (lambda x: np.std(np.asarray(x), axis=0, ddof=1)) if n_boot >= 2 else (lambda x: np.nan)
    out_eta = eta if schedule else float(eta[0])
    eta_se = se(boot_eta)
    if not schedule and n_boot >= 2:
        eta_se = float(eta_se[0])
    return StepResult(eta=out_eta, eta_se=eta_se, kl=float(kl_opt.mean()), kl_se=float(se(boot_kl)),
                      kl_eta_star=float(kl_star.mean()), kl_eta_star_se=float(se(boot_star)),
                      diff_se=float(se(boot_diff)), eta_star=e_star, L=L, T=T, k=k, n_train=n_train, n_test=n_test)



# --------------------------------------------------------------------------- the predicted step law
# docs/math.md, "The predicted step law" (anchors math-step-law…): as n -> inf with eta = c/n, one MD step
# from mu tends to softmax(log mu + c·gbar(lam*)); c_inf minimises the limiting expected KL, B = 1/c_inf;
# the intercept A = 1 + alpha0 makes eta(0) = eta*.

#: largest S^m for which the stationary law of the m-token window is computed exactly; above it the
#: limits are averages along simulated chains
MAX_EXACT_STATES = 2**17
#: power iteration of the window chain: stop at an L1 change below this, fail after this many steps
_POWER_TOL = 1e-13
_POWER_ITERS = 2_000
#: entries of one batched work array (lag-weight samples times S^(m+1)); bounds the memory
_CHUNK_ENTRIES = 2**22


@dataclass(frozen=True)
class PredictedStep:
    """Result of :func:`predicted_step`: the zero-parameter step law ``η(n) = 1/(A + B·n)``.

    Attributes
    ----------
    c_inf : float
        The limiting step constant: ``n·η_opt(n) → c_inf`` as the number of transitions n → ∞
        (docs/math.md, eq-step-law-cinf); ``inf`` when ``regime`` is "flat" or "unbounded".
    c_inf_se : float
        Its Monte Carlo standard error (sandwich estimate over the sampled lag weights λ*, and over the
        sampled windows where those are sampled); ``inf`` where the curvature of the risk at the minimiser
        is not resolved and in the "unbounded" regime, 0 in the "flat" one.
    A : float
        Intercept ``1 + α₀``: ``η(0) = η* = 1/(1+α₀)`` (Theorem 1's step).
    B, B_se : float
        Slope ``1/c_inf`` (0 when ``c_inf`` is inf) and its standard error ``c_inf_se / c_inf²``.
    eta_star : float
        ``η* = 1/(1+α₀)``.
    n_samples : int
        Lag-weight samples λ* ~ Dirichlet(α) behind the estimate.
    exact_windows : bool
        True when the expectation over the stationary law of the m-token window is an exact sum (only λ*
        is sampled), False when windows were sampled too.
    regime : {"interior", "unbounded", "flat"}
        Where the limiting risk R∞(c) has its infimum (docs/math.md, "Where the infimum lies"): at a finite
        ``c_inf``; as c → ∞ (B = 0, η ≡ η*); or nowhere in particular, every step giving the same predictor
        (one lag, one token, identical rows of pi, λ* = μ to float64 resolution: B = 0, η ≡ η*).
    """

    c_inf: float
    c_inf_se: float
    A: float
    B: float
    B_se: float
    eta_star: float
    n_samples: int
    exact_windows: bool
    regime: str = "interior"

    def eta(self, n: Any) -> Any:
        """The step ``1/(A + B·n)`` after n >= 0 transitions (a float for a scalar, else an ndarray).

        Usable as the per-prefix step of :func:`mtdmath.md_predictive_all_prefixes`
        (``eta=result.eta``)."""
        a = np.asarray(n, dtype=np.float64)
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"n must be finite and >= 0 (got {a[~(np.isfinite(a) & (a >= 0))].ravel()[:6]})")
        out = 1.0 / (self.A + self.B * a)
        return float(out) if out.ndim == 0 else out


def window_tokens(S: int, m: int) -> np.ndarray:
    """All S^m windows of m tokens, shape (S^m, m); column g-1 is the token at lag g (``y[t+1-g]``).

    Window w has index ``Σ_i y[t-m+1+i] S^(m-1-i)`` (oldest token first), the indexing of
    ``MTDModel.expanded_matrix``; so lag g is base-S digit m-g of w."""
    w = np.arange(S**m)
    digits = (w[:, None] // S ** np.arange(m - 1, -1, -1)[None, :]) % S  # oldest first
    return np.ascontiguousarray(digits[:, ::-1])


def _stationary_windows(Pi: np.ndarray, lam: np.ndarray, S: int, m: int) -> np.ndarray:
    """Stationary law of the window chain for every row of ``lam`` (K, m): shape (K, S^m).

    ``Pi`` (S^m, m, S) is ``pi[token at lag g of window w, b]``. The chain moves (d0, rest) -> (rest, b)
    with probability ``Σ_g lam_g Pi[w, g-1, b]``. Power iteration from the uniform law, batched over
    the rows of ``lam``; a row stops once its L1 change is below _POWER_TOL. A row that has not converged
    after _POWER_ITERS steps (a periodic chain, or one that mixes slowly: a transition probability of
    1e-8 takes ~1e8 steps) gets the stationary law by a sparse direct solve of ``ρ(P − I) = 0, Σρ = 1``;
    a chain without a unique stationary law (reducible) is then an error naming pi."""
    K, n = lam.shape[0], S**m
    P = np.einsum("wgb,kg->kwb", Pi, lam).reshape(K, S, n // S, S)  # (k, oldest token, rest, next)
    p = np.full((K, n), 1.0 / n)
    active = np.arange(K)
    for _ in range(_POWER_ITERS):
        q = np.einsum("kar,karb->krb", p[active].reshape(-1, S, n // S), P[active]).reshape(-1, n)
        delta = np.abs(q - p[active]).sum(axis=1)
        p[active] = q
        active = active[delta >= _POWER_TOL]
        if active.size == 0:
            return p
    for k in active:
        p[k] = _stationary_direct(P[k].reshape(n, S), S)
    return p


def _stationary_direct(P: np.ndarray, S: int) -> np.ndarray:
    """The stationary law of the window chain with next-token laws ``P`` (S^m, S), by a sparse LU solve."""
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    n = P.shape[0]
    rows = np.repeat(np.arange(n), S)
    cols = ((np.arange(n) % (n // S))[:, None] * S + np.arange(S)[None, :]).ravel()  # (rest, b)
    A = sparse.coo_matrix((P.ravel(), (cols, rows)), shape=(n, n)).tolil()  # (P^T)
    A.setdiag(A.diagonal() - 1.0)
    A[n - 1, :] = np.ones(n)  # one balance equation is redundant: replaced by the normalisation
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a singular matrix (a reducible chain) is an error below, not a warning
        try:
            rho = spsolve(A.tocsc(), rhs)
        except Exception:  # noqa: BLE001 - scipy's MatrixRankWarning or a LinAlgError alike
            rho = np.full(n, np.nan)
    # a stationary law is >= 0; the solve's rounding may leave entries of size n·eps·max below 0
    if not np.all(np.isfinite(rho)) or rho.min() < -1e-9 * rho.max():
        raise ValueError(f"pi: the window chain did not converge within {_POWER_ITERS} power iterations and has no "
                         "unique stationary law (reducible); the law of large numbers behind the step law needs one")
    rho = np.clip(rho, 0.0, None)
    return rho / rho.sum()


def _gbar_terms(Pw: np.ndarray, lam: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``Σ_b p*(b|w) Pi[w, g, b] / s_μ(w, b)`` for windows ``Pw`` (K, W, m, S): shape (K, W, m).

    ``p*(b|w) = Σ_h lam_h Pi[w,h,b]``, ``s_μ = Σ_h μ_h Pi[w,h,b]``; a next token impossible under every
    lag (s_μ = 0, hence p* = 0) never occurs and contributes 0."""
    p_star = np.einsum("kwgb,kg->kwb", Pw, lam)
    s_mu = np.einsum("kwgb,g->kwb", Pw, mu)
    ratio = np.divide(p_star, s_mu, out=np.zeros_like(p_star), where=s_mu > 0)
    return np.einsum("kwgb,kwb->kwg", Pw, ratio)


def limit_gradient(pi: Any, alpha: Any, lam: Any, *, chain_length: int = 20_000, max_states: int = MAX_EXACT_STATES,
                   rng: Any = None) -> np.ndarray:
    """The law-of-large-numbers limit ``ḡ(λ) = lim ∇ℓ(μ)/n`` along an MTD chain with lag weights λ.

    ``∇ℓ(μ)_g = Σ_i C[i,g]/s_i(μ)`` (docs/math.md eq-loglik) at the prior mean μ = α/α₀; along a chain with
    weights λ its average over n transitions tends almost surely to the expectation under the stationary
    law of the m-token window w and the next token b ~ p*(·|w) (docs/math.md eq-step-law-gbar):
    ``ḡ_g(λ) = E_w Σ_b p*(b|w) π[w_g, b] / Σ_h μ_h π[w_h, b]``.

    Parameters
    ----------
    pi : array_like, shape (S, S)
    alpha : array_like, shape (m,)
        Dirichlet prior (only μ = α/α₀ enters).
    lam : array_like, shape (m,) or (K, m)
        Lag weights on the simplex.
    chain_length : int
        Transitions of the simulated chain when S^m > ``max_states``.
    max_states : int
        Exact (the stationary law of the S^m windows, by power iteration) when S^m <= this; else the
        average along one simulated chain of ``chain_length`` transitions per row of ``lam``.
    rng : Generator, int or None
        Used only for simulated chains.

    Returns
    -------
    ndarray, shape (m,) or (K, m)
        ``μ·ḡ(λ) = 1`` (the limit of eq-euler-identity at μ, divided by n) and ``λ·ḡ(λ) >= 1``.

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath import random_transition_matrix
    >>> from mtdmath.stepsize import limit_gradient
    >>> pi = random_transition_matrix(4, concentration=1.0, rng=0)
    >>> lam = np.array([0.7, 0.3])
    >>> g = limit_gradient(pi, np.ones(2), lam)
    >>> g.shape, round(float(np.full(2, 0.5) @ g), 12), bool(lam @ g >= 1)
    ((2,), 1.0, True)
    """
    pi = _xp.to_numpy(validate.check_pi(pi, "pi")).astype(np.float64)
    # validated in its own dtype (a float32 pi sums to 1 within float32 rounding); rows that sum to 1 in
    # float64, else the power iteration's total mass drifts by that rounding every step and never settles
    pi = pi / pi.sum(axis=1, keepdims=True)
    alpha = validate.check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    lam_a = np.asarray(_xp.to_numpy(lam), dtype=np.float64)
    one = lam_a.ndim == 1
    lam_a = np.atleast_2d(lam_a)
    if lam_a.ndim != 2 or lam_a.shape[1] != m:
        raise ValueError(f"lam must have shape (m,) or (K, m) with m = {m} (got shape {np.shape(lam)})")
    for row in lam_a:
        validate.check_prob_vector(row, "lam", m)
    chain_length = validate.check_int(chain_length, "chain_length", minimum=1)
    max_states = validate.check_int(max_states, "max_states", minimum=1)
    _, _, gbar = _limit_windows(pi, alpha / alpha.sum(), lam_a, 1, max_states, chain_length, validate.as_rng(rng))
    return gbar[0] if one else gbar


def _limit_windows(pi: np.ndarray, mu: np.ndarray, lam: np.ndarray, n_windows: int, max_states: int,
                   chain_length: int, gen: np.random.Generator):
    """The windows over which the limits are expectations, for each row of ``lam`` (K, m).

    Returns ``(tokens (K, W, m) or (1, W, m), weights (K, W), gbar (K, m))``.

    - S^m <= max_states: ``gbar`` exact, from the stationary law of the windows. The KL expectation is
      the exact sum over all S^m windows when S^m <= n_windows, else over ``n_windows`` i.i.d. draws from
      that exact law (weights 1/W: unbiased, the KL being linear in the window law).
    - S^m > max_states: one simulated chain per row, started from i.i.d. uniform tokens; ``gbar`` is its
      empirical ``∇ℓ(μ)/n`` over ``chain_length`` transitions, the windows are ``n_windows`` windows
      spread evenly along it (weights 1/W).
    """
    S, m = pi.shape[0], mu.shape[0]
    K = lam.shape[0]
    if S**m <= max_states:
        tok = window_tokens(S, m)
        Pi = pi[tok]  # (S^m, m, S)
        per = max(1, _CHUNK_ENTRIES // (S ** (m + 1) * max(m, 1)))
        gbar = np.empty((K, m))
        laws = np.empty((K, S**m))
        for i in range(0, K, per):
            sl = slice(i, i + per)
            laws[sl] = _stationary_windows(Pi, lam[sl], S, m)
            terms = _gbar_terms(Pi[None], lam[sl], mu)  # (k, S^m, m)
            gbar[sl] = np.einsum("kw,kwg->kg", laws[sl], terms)
        if S**m <= n_windows:
            return tok[None], laws, gbar
        idx = np.stack([gen.choice(S**m, size=n_windows, p=row / row.sum()) for row in laws])
        return tok[idx], np.full((K, n_windows), 1.0 / n_windows), gbar
    from .model import sample

    y = sample(pi, lam, chain_length + m, rng=gen)
    C = lag_factors(y, pi, m)
    s = C @ mu
    gbar = (C / s[..., None]).mean(axis=1)
    ends = np.linspace(m, chain_length + m - 1, n_windows).round().astype(np.int64)  # predict y[t], t = end
    offs = np.arange(1, m + 1)
    tok = y[:, ends[:, None] - offs[None, :]]  # (K, W, m): lag g at column g-1
    return tok, np.full((K, n_windows), 1.0 / n_windows), gbar


def _risk_parts(pi: np.ndarray, mu: np.ndarray, lam: np.ndarray, tok: np.ndarray, weights: np.ndarray,
                gbar: np.ndarray):
    """Per-sample limiting risk ``R_k(c) = R_k(0) + D_k(c)`` and its derivative (docs/math.md eq-step-law-risk).

    ``R_k(c) = Σ_w weights[k,w] KL(p*_k(·|w) ‖ p̂_c(·|w))`` with ``p̂_c = Σ_g λ^c_g π[w_g]`` and
    ``λ^c = softmax(log μ + c ḡ_k)``; ``dλ^c/dc = λ^c ⊙ (ḡ_k − λ^c·ḡ_k)``. ``c = inf`` is the limit
    ``λ^∞ ∝ μ`` on the lags of largest ḡ_k. Returns ``(R0 (K,), f)``, ``f(c) -> (D (K,), R' (K,))``.

    The change ``D_k(c) = −Σ_w Σ_b weights·p* log1p(Δ_c/s_μ)``, ``Δ_c = p̂_c − s_μ`` (with
    ``λ^c − μ = μ·expm1(u − log Σ_h μ_h e^{u_h})``), is what c is chosen by: formed as a difference of two
    KLs it would be lost in their rounding when λ* is close to μ (weak evidence). A next token with
    ``p* > 0`` but ``s_μ = 0`` (possible only where a tiny μ_g meets a tiny π entry and both underflow)
    is left out of both parts."""
    from scipy.special import logsumexp, xlogy  # x·log y with 0·log 0 = 0

    S, m = pi.shape[0], mu.shape[0]
    K, W = weights.shape
    shared = tok.shape[0] == 1
    per = max(1, _CHUNK_ENTRIES // (W * m * S))
    log_mu = np.log(mu)
    gmax = gbar.max(axis=1, keepdims=True)
    centre = gbar @ mu  # μ·ḡ = 1 up to rounding: the shift that keeps u small for small c
    spread = np.max(np.abs(gbar - centre[:, None]), axis=1)

    def windows(sl):
        k = sl.stop - sl.start
        Pw = np.broadcast_to(pi[tok[0]][None], (k, W, m, S)) if shared else pi[tok[sl]]
        ps = np.einsum("kwgb,kg->kwb", Pw, lam[sl])
        s_mu = np.einsum("kwgb,g->kwb", Pw, mu)
        wps = np.where(s_mu > 0, weights[sl][:, :, None] * ps, 0.0)
        return Pw, ps, wps, np.where(wps > 0, s_mu, 1.0)

    R0 = np.empty(K)
    for i in range(0, K, per):
        sl = slice(i, min(i + per, K))
        _, ps, wps, s_mu = windows(sl)
        R0[sl] = np.einsum("kwb->k", xlogy(wps, np.where(wps > 0, ps, 1.0) / s_mu))

    def f(c: float):
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            if c == math.inf:
                top = gbar == gmax
                lc = np.where(top, mu, 0.0)
                lc /= lc.sum(axis=1, keepdims=True)
                dlam = lc - mu
                dl = np.zeros_like(lc)
            else:
                small = c * spread < 1.0
                u = np.where(small[:, None], c * (gbar - centre[:, None]), c * (gbar - gmax))
                log_z = np.where(small, np.log1p(np.sum(mu * np.expm1(np.where(small[:, None], u, 0.0)), axis=1)),
                                 logsumexp(log_mu + u, axis=1))
                dlam = mu * np.expm1(u - log_z[:, None])
                lc = mu + dlam
                dl = lc * (gbar - np.sum(lc * gbar, axis=1, keepdims=True))
            D, dR = np.empty(K), np.empty(K)
            for i in range(0, K, per):
                sl = slice(i, min(i + per, K))
                Pw, _, wps, s_mu = windows(sl)
                delta = np.einsum("kwgb,kg->kwb", Pw, dlam[sl])
                dph = np.einsum("kwgb,kg->kwb", Pw, dl[sl])
                # p* > 0 with p̂_c = 0 (λ^∞ dropping a lag p* needs) is an infinite risk, not NaN
                D[sl] = -np.einsum("kwb->k", np.where(wps > 0, wps * np.log1p(np.maximum(delta / s_mu, -1.0)), 0.0))
                p_hat = s_mu + delta
                dR[sl] = -np.einsum("kwb->k", np.where(wps > 0, wps * dph / np.where(p_hat > 0, p_hat, 1.0), 0.0))
        return D, dR

    return R0, f


def predicted_step(pi: Any, alpha: Any, *, n_samples: int = 512, n_windows: int = 4096,
                   max_states: int = MAX_EXACT_STATES, chain_length: int = 20_000, rng: Any = None) -> PredictedStep:
    """The zero-parameter step law ``η(n) = 1/((1 + α₀) + n/c_inf)`` of one-step MD from μ.

    As the number of transitions n → ∞ with η = c/n, one MD step from the prior mean μ tends to
    ``softmax(log μ + c·ḡ(λ*))`` (:func:`limit_gradient`), and the expected next-token loss of one-step
    MD tends to ``R∞(c) = E_{λ*~Dir(α)} E_w KL(p*(·|w) ‖ p̂_c(·|w))`` over the stationary law of the
    m-token window w. ``c_inf = argmin R∞`` (so ``n·η_opt(n) → c_inf``, B = 1/c_inf is exact as
    n → ∞); the intercept ``A = 1 + α₀`` makes ``η(0) = η*`` (Theorem 1's step) — a boundary condition,
    not a derived limit (docs/math.md, "The predicted step law").

    The expectation over λ* is a Monte Carlo average over ``n_samples`` draws; for each draw ḡ is exact
    (the stationary law of the S^m windows) when S^m <= ``max_states``, and the KL expectation is an
    exact sum over the S^m windows when S^m <= ``n_windows``, else an average over ``n_windows``
    windows drawn from that exact law. Above ``max_states`` both come from a simulated chain of
    ``chain_length`` transitions per draw. ``c_inf`` minimises the sample mean of R∞ over log c
    (a grid, extended towards an edge that holds the minimum, then Brent); its standard error is the
    M-estimator sandwich ``sd(R_k'(ĉ)) / (√K · R̄''(ĉ))``.

    ``R∞'(0) = −E Var_μ ḡ(λ*) <= 0``, so the infimum is never at c → 0: it is at a finite c
    (``regime="interior"``), or at c → ∞ (``"unbounded"``, e.g. α → 0, λ* at the vertices), or R∞ is constant
    (``"flat"``: m = 1, S = 1, identical rows of pi, or λ* = μ to float64 resolution, α₀ ≳ 1e32). The last two
    give ``c_inf = inf``, ``B = 0`` and the constant law ``η(n) = η*``.

    Parameters
    ----------
    pi : array_like, shape (S, S)
        Row-stochastic transition matrix (irreducible and aperiodic for the limits to hold).
    alpha : array_like, shape (m,)
        Dirichlet prior of the lag weights (m = 1 gives the flat law). Every ``alpha_g / α₀`` must be
        a normal float64 (>= 2.2e-308), as for every estimator started from the prior mean μ.
    n_samples : int
        Draws of λ* ~ Dirichlet(α), >= 2.
    n_windows : int
        Windows per draw for the KL expectation when S^m > n_windows, >= 1.
    max_states : int
        Largest S^m with an exact stationary law.
    chain_length : int
        Transitions per simulated chain when S^m > ``max_states``, >= 1.
    rng : Generator, int or None

    Returns
    -------
    PredictedStep
        ``c_inf``, ``c_inf_se``, ``A``, ``B``, ``B_se``, ``regime`` and the law ``eta(n)``.

    Raises
    ------
    ValueError
        For bad arguments (naming the argument), a prior mean that underflows (naming alpha), or a window
        chain without a unique stationary law (naming pi).

    Examples
    --------
    >>> import numpy as np
    >>> import mtdmath
    >>> pi = mtdmath.random_transition_matrix(4, concentration=1.0, rng=0)
    >>> alpha = np.ones(2)
    >>> r = mtdmath.predicted_step(pi, alpha, n_samples=64, rng=0)
    >>> r.A, r.eta(0) == mtdmath.eta_bayes(alpha)
    (3.0, True)
    >>> y, lam = mtdmath.sample_icl(pi, alpha, 32, 4, rng=1)
    >>> mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=r.eta).shape
    (4, 31, 4)
    """
    from scipy import optimize

    pi = _xp.to_numpy(validate.check_pi(pi, "pi")).astype(np.float64)
    # validated in its own dtype (a float32 pi sums to 1 within float32 rounding); rows that sum to 1 in
    # float64, else the power iteration's total mass drifts by that rounding every step and never settles
    pi = pi / pi.sum(axis=1, keepdims=True)
    alpha = validate.check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    n_samples = validate.check_int(n_samples, "n_samples", minimum=2)
    n_windows = validate.check_int(n_windows, "n_windows", minimum=1)
    max_states = validate.check_int(max_states, "max_states", minimum=1)
    chain_length = validate.check_int(chain_length, "chain_length", minimum=1)
    # the law is one MD step from μ: a μ_g that underflows to 0 is refused as by every estimator started there
    mu = validate.check_prior_mean(alpha, "alpha")
    S = pi.shape[0]
    exact = S**m <= max_states
    W = S**m if S**m <= min(n_windows, max_states) else n_windows
    validate.check_alloc(min(n_samples, max(1, _CHUNK_ENTRIES // (W * m * S))) * W * m * S * 4 + n_samples * W * (m + 1),
                  8, "n_windows", f"the window arrays of {n_samples} samples")
    if exact:
        validate.check_alloc(S**m * (m * S + n_samples), 8, "max_states", f"the stationary laws of {S**m} windows")
    else:
        validate.check_alloc(n_samples * (chain_length + m) * (2 * m + 1), 8, "chain_length",
                      f"{n_samples} chains of {chain_length} transitions")
    gen = validate.as_rng(rng)
    alpha0 = float(alpha.sum())
    with np.errstate(under="ignore"):
        lam = gen.dirichlet(alpha, size=n_samples)
    lam = np.clip(lam, np.finfo(np.float64).tiny, None)
    lam /= lam.sum(axis=1, keepdims=True)
    tok, weights, gbar = _limit_windows(pi, mu, lam, n_windows, max_states, chain_length, gen)

    def law(c, c_se, regime):
        B, B_se = (0.0, 0.0 if c_se == 0 else math.inf) if c == math.inf else (1.0 / c, c_se / c**2)
        return PredictedStep(c_inf=c, c_inf_se=c_se, A=1.0 + alpha0, B=B, B_se=B_se, eta_star=float(eta_bayes(alpha)),
                             n_samples=n_samples, exact_windows=bool(S**m <= min(n_windows, max_states)),
                             regime=regime)

    # flat (eq-step-law-flat): ḡ_k constant over the lags for every draw, to within its rounding (a sum of
    # nonnegative terms over the windows, the next tokens and the lags: relative error below that count x eps)
    terms = (S**m if exact else chain_length) + S + m + 4
    spread = gbar.max(axis=1) - gbar.min(axis=1)
    if np.all(spread <= 2 * terms * np.finfo(np.float64).eps * gbar.max(axis=1)):
        return law(math.inf, 0.0, "flat")
    R0, risk = _risk_parts(pi, mu, lam, tok, weights, gbar)
    obj = lambda x: float(risk(math.exp(x))[0].mean())  # noqa: E731
    # the grid on [1e-3, 1e4] (log-spacing 0.56 brackets the smooth minimum), extended by 7 decades at a time
    # towards an edge that holds the minimum: down to where c·(spread of ḡ) < 1e-4 (R is linear in c there,
    # with slope R∞'(0) = −E Var_μ ḡ < 0, so the minimum is above), up to 1e300, where the softmax has
    # saturated (c·gap > 1e300·eps far exceeds the log-range of μ, at most 709)
    step = (math.log(1e4) - math.log(1e-3)) / 28
    floor = math.log(1e-4 / spread.max())
    grid = list(np.linspace(math.log(1e-3), math.log(1e4), 29))
    vals = [obj(x) for x in grid]
    while True:
        j = int(np.argmin(vals))
        if j == 0 and grid[0] > floor:
            new = grid[0] - step * np.arange(28, 0, -1)
            grid, vals = list(new) + grid, [obj(x) for x in new] + vals
        elif j == len(grid) - 1 and grid[-1] < math.log(1e300):
            new = grid[-1] + step * np.arange(1, 29)
            grid, vals = grid + list(new), vals + [obj(x) for x in new]
        else:
            break
    # the limit c -> inf (λ^∞: μ restricted to the lags of largest ḡ): the infimum when no finite c beats it
    # beyond rounding (relative to the size of the risk)
    d_inf = float(risk(math.inf)[0].mean())
    if d_inf <= min(vals) + 64 * np.finfo(np.float64).eps * (abs(d_inf) + float(R0.mean())):
        return law(math.inf, math.inf, "unbounded")
    res = optimize.minimize_scalar(obj, bounds=(grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]),
                                   method="bounded", options={"xatol": 1e-7})
    c = math.exp(res.x)
    # sandwich standard error of the M-estimator argmin mean_k R_k(c): sd(R_k'(c)) / (sqrt(K) |mean R''(c)|);
    # a curvature not resolved by the central difference (<= 0) gives an infinite standard error
    h = 1e-4 * c
    d2 = (risk(c + h)[1].mean() - risk(c - h)[1].mean()) / (2 * h)
    sd = float(np.std(risk(c)[1], ddof=1))
    c_se = sd / math.sqrt(n_samples) / float(d2) if d2 > 0 and math.isfinite(d2) else math.inf
    return law(c, c_se if math.isfinite(c_se) else math.inf, "interior")


#: the named steps an estimator or a construction accepts as ``eta`` (besides numbers and functions of n)
NAMED_STEPS = ("predicted",)
#: the seed of ``eta="predicted"``: the named step is a fixed function of (pi, alpha), the same every call
PREDICTED_SEED = 0


def step_law(eta: Any, pi: Any, alpha: Any) -> PredictedStep | None:
    """The step law behind a named ``eta``: ``"predicted"`` is ``predicted_step(pi, alpha, rng=0)`` (its
    default sample sizes), a :class:`PredictedStep` is itself; anything else is None (not a law).

    A string other than the names of :data:`NAMED_STEPS` is a ValueError naming ``eta``."""
    if isinstance(eta, PredictedStep):
        return eta
    if isinstance(eta, str):
        if eta not in NAMED_STEPS:
            raise ValueError(f"eta must be a number, a schedule, a function of n, a PredictedStep or one of "
                             f"{NAMED_STEPS} (got {eta!r})")
        return predicted_step(pi, alpha, rng=PREDICTED_SEED)
    return None


__all__ += ["PredictedStep", "predicted_step", "limit_gradient", "window_tokens"]
