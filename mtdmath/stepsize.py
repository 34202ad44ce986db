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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _validate as V
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
    alpha = V.check_alpha(alpha, "alpha")
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
        Bootstrap resamples for the standard errors (0: none, reported as NaN).
    rng : Generator, int or None

    Returns
    -------
    StepResult
    """
    pi = _xp.to_numpy(V.check_pi(pi, "pi")).astype(np.float64)
    # validated in its own dtype (a float32 pi sums to 1 within float32 rounding); the sampling and
    # the KL run in float64 on rows that sum to 1 in float64
    pi = pi / pi.sum(axis=1, keepdims=True)
    alpha = V.check_alpha(alpha, "alpha")
    m = alpha.shape[0]
    k = V.check_int(k, "k", minimum=1)
    if (L is None) == (T is None):
        raise ValueError("give exactly one of L (a context length) and T (the training objective over L = m..T)")
    if L is not None:
        L = V.check_int(L, "L", minimum=m)
    else:
        T = V.check_int(T, "T", minimum=m)
    n_train = V.check_int(n_train, "n_train", minimum=2)
    n_test = V.check_int(n_test, "n_test", minimum=2)
    n_boot = V.check_int(n_boot, "n_boot", minimum=0)
    schedule = V.check_bool(schedule, "schedule")
    gen = V.as_rng(rng)
    length = (L + 1) if L is not None else T
    # the sampled tokens of the larger draw and the (n, T, S) predictive laws of its KL
    length_name = "L" if L is not None else "T"
    for count, name in ((n_train, "n_train"), (n_test, "n_test")):
        V.check_alloc(count * length * (3 + 2 * pi.shape[0]), 8, f"{name}, {length_name}",
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
    boot_eta, boot_kl, boot_star, boot_diff = [], [], [], []
    for _ in range(n_boot):
        i = gen.integers(0, n_train, n_train)
        boot_eta.append(tune(y_tr[i], lam_tr[i]))
        j = gen.integers(0, n_test, n_test)
        boot_kl.append(kl_opt[j].mean())
        boot_star.append(kl_star[j].mean())
        boot_diff.append((kl_opt[j] - kl_star[j]).mean())
    se = (lambda x: np.std(np.asarray(x), axis=0, ddof=1)) if n_boot >= 2 else (lambda x: np.nan)
    out_eta = eta if schedule else float(eta[0])
    eta_se = se(boot_eta)
    if not schedule and n_boot >= 2:
        eta_se = float(eta_se[0])
    return StepResult(eta=out_eta, eta_se=eta_se, kl=float(kl_opt.mean()), kl_se=float(se(boot_kl)),
                      kl_eta_star=float(kl_star.mean()), kl_eta_star_se=float(se(boot_star)),
                      diff_se=float(se(boot_diff)), eta_star=e_star, L=L, T=T, k=k, n_train=n_train, n_test=n_test)
