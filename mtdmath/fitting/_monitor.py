"""The convergence monitor of an EM run (hmmlearn's ``ConvergenceMonitor`` role): records the accepted
log-likelihoods and decides when the run stops (the rules are in the class docstring)."""
from __future__ import annotations

import math
import warnings
from typing import Any

from .._validate import check_float, check_int

#: relative drop of the log-likelihood between iterations that the convergence monitor reports
MONITOR_RTOL = 1e-10


class ConvergenceMonitor:
    """Tracks one EM run and decides when it has converged (hmmlearn's ``ConvergenceMonitor`` role).

    Stopping rule (``tol`` relative to ``max(|loglik|, 1)``), checked after every accepted iterate:

    - ``"kkt"``: the last change of the log-likelihood is below ``tol`` *and* the gain that one Frank-Wolfe
      line step per simplex block would still bring (quadratic model of the KKT gap, see
      :meth:`mtdmath.fitting._em.EM.predicted_gain`) is below ``tol``. A stalled likelihood alone is not enough: slow EM also
      stalls, far from the maximum.
    - ``"flat"``: the log-likelihood gained less than ``tol`` over the last ``window`` accepted iterates. This
      ends runs on flat ridges and near saddles on the boundary (a lag weight creeping to 0 under EM's
      multiplicative update), where the KKT test can need thousands of further steps for a gain below
      ``tol`` in total. The KKT gap at the returned point stays reported (``MTD.kkt_gap_``).
    - ``"max_iter"``: ``max_iter`` EM-map evaluations were spent; the fit warns.

    Attributes
    ----------
    tol : float
    max_iter : int
        Largest number of EM-map evaluations (one SQUAREM iteration uses two or three).
    window : int
    history : list of float
        Log-likelihood of every accepted iterate (nondecreasing: SQUAREM here is monotone).
    n_evals : int
        EM-map evaluations used.
    reason : str or None
        ``"kkt"``, ``"flat"``, ``"max_iter"`` once stopped.

    Examples
    --------
    >>> from mtdmath import fitting
    >>> mon = fitting.ConvergenceMonitor(tol=1e-6, max_iter=100)
    >>> no_gain = lambda: 0.0  # the Frank-Wolfe gain left, asked for only once the likelihood stalls
    >>> [mon.check(ll, no_gain) for ll in (-10.0, -9.0, -9.0)]
    [False, False, True]
    >>> mon.converged, mon.reason, mon.iter
    (True, 'kkt', 2)
    >>> print(mon.report())
    ConvergenceMonitor: 2 iterates, 0 EM evaluations, loglik -9, stopped by kkt
    """

    def __init__(self, tol: float, max_iter: int, window: int = 10):
        self.tol = check_float(tol, "tol", positive=True)
        self.max_iter = check_int(max_iter, "max_iter", minimum=1)
        self.window = check_int(window, "window", minimum=1)
        self.history: list[float] = []
        self.n_evals = 0
        self.reason: str | None = None

    @property
    def converged(self) -> bool:
        """True when the run stopped by the KKT or the flat rule (not by ``max_iter``)."""
        return self.reason in ("kkt", "flat")

    @property
    def iter(self) -> int:
        """Number of accepted iterates after the start."""
        return max(len(self.history) - 1, 0)

    def _scale(self) -> float:
        return max(abs(self.history[-1]), 1.0)

    def check(self, ll: float, gain: Any) -> bool:
        """Record the accepted log-likelihood ``ll`` and return True when the run should stop.

        ``gain`` is a callable returning the predicted Frank-Wolfe gain at the current point, called only
        when the likelihood has stalled (it costs about one E-step)."""
        if self.history and ll < self.history[-1] - MONITOR_RTOL * max(abs(self.history[-1]), 1.0):
            warnings.warn(f"log-likelihood decreased from {self.history[-1]!r} to {ll!r}", RuntimeWarning,
                          stacklevel=4)
        self.history.append(float(ll))
        if len(self.history) < 2:  # the start point
            return False
        scale = self._scale()
        rel = (self.history[-1] - self.history[-2]) / scale
        if abs(rel) < self.tol and gain() <= self.tol * scale:
            self.reason = "kkt"
            return True
        h = self.history
        if len(h) > self.window and (h[-1] - h[-1 - self.window]) < self.tol * scale:
            self.reason = "flat"
            return True
        return False

    def report(self) -> str:
        """One line: iterations, evaluations, final log-likelihood and why the run stopped."""
        ll = self.history[-1] if self.history else math.nan
        return (f"ConvergenceMonitor: {self.iter} iterates, {self.n_evals} EM evaluations, loglik {ll:.10g}, "
                f"stopped by {self.reason or 'nothing yet'}")

    def __repr__(self) -> str:
        return (f"ConvergenceMonitor(tol={self.tol!r}, max_iter={self.max_iter}, window={self.window}, "
                f"n_evals={self.n_evals}, reason={self.reason!r})")
