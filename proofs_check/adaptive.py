"""Context-adaptive mirror descent in a transformer (docs/math.md §5.6, A.1), checked.

Run ``python -m proofs_check.adaptive [--json PATH]``. One row:

A.1  layer 2 as softmax attention with equal scores over the positions s <= t plus a sink key of
     score ``log a`` and value 0 outputs ``G_t/(t+1+a)``; layer 3 with query
     ``log μ + c·(that)/μ`` is then one MD step from μ of size ``η(n) = c/(n+m+a)``, n = t+1-m.

Routes:

1. symbolic in n, a, c (SymPy, positive symbols): the layer-2 softmax weight of a position,
   ``e⁰/(Σ_{s=0}^{t} e⁰ + e^{log a})`` with ``t = n+m-1``, minus ``1/(n+m+a)`` cancels to 0; so
   layer 3's coefficient of ∇ℓ(μ), ``c·weight``, minus the candidate η(n) cancels to 0 (also
   with the sink masked out, a = 0);
2. symbolic through the whole forward pass for small (m, n), every quantity a symbol (lag factors
   C, prior alpha, c, a): layer-1 softmax responsibilities, the layer-2 softmax with the sink,
   the layer-3 logits; their lag differences minus those of ``log μ + η(n) ∇ℓ(μ)`` cancel to 0
   (softmax depends on its logits only through those differences);
3. numeric: ``MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=, a=)`` in float64
   against one MD step per prefix through the core (``one_step_md`` with the candidate step,
   then ``predictive``), m = 2, 3, 5, several (c, a) including a = 0.

The check takes the candidate step as an argument; ``c/(n+a)`` (the step without the m) must FAIL
(tests/test_proofs_check.py).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import numpy as np
import sympy as sp

from ._report import CheckResult, Claim, Verdict, main as _main

TITLE = "Context-adaptive MD step of a softmax-sink layer 2 (docs/math.md §5.6, A.1)"

#: (m, n) of the symbolic forward-pass route (n transitions: prefix of length n + m)
A1_CASES = ((2, 1), (2, 2), (2, 3), (3, 1), (3, 2))


def adaptive_step(n: Any, m: Any, c: Any, a: Any) -> Any:
    """docs/math.md §5.6: the step of one MD step taken by the softmax-sink transformer, ``c/(n+m+a)``."""
    return c / (n + m + a)


def _softmax(scores: Sequence[Any]) -> list[Any]:
    """Symbolic softmax, ``exp(s_k)/Σ_j exp(s_j)`` (positive symbols make exp(log x) = x exact)."""
    e = [sp.exp(s) for s in scores]
    tot = sp.Add(*e)
    return [sp.powsimp(x / tot) for x in e]


def _layer2_weight_general(m: int, sink: bool) -> tuple[sp.Expr, sp.Symbol, sp.Symbol]:
    """Weight of one position s <= t under layer 2, t = n+m-1 symbolic: (weight, n, a)."""
    n, a = sp.symbols("n a", positive=True)
    s = sp.Symbol("s", integer=True, nonnegative=True)
    t = n + m - 1
    denom = sp.summation(sp.exp(sp.Integer(0)), (s, 0, t)) + (sp.exp(sp.log(a)) if sink else 0)
    return sp.exp(sp.Integer(0)) / denom, n, a


def _forward_logit_gap(m: int, n: int, step: Callable, sink: bool) -> list[sp.Expr]:
    """Lag differences of (layer-3 logits of the softmax-sink transformer) − (log μ + η(n) ∇ℓ(μ)), symbolic."""
    C = [[sp.Symbol(f"C{i}_{g}", positive=True) for g in range(m)] for i in range(n)]
    alpha = [sp.Symbol(f"alpha{g}", positive=True) for g in range(m)]
    c, a = sp.Symbol("c", positive=True), (sp.Symbol("a", positive=True) if sink else sp.Integer(0))
    a0 = sp.Add(*alpha)
    mu = [x / a0 for x in alpha]
    # layer 1: softmax over the m lags of score log C[i, g] + log μ_g (the responsibilities r of position m+i)
    r = [_softmax([sp.log(C[i][g]) + sp.log(mu[g]) for g in range(m)]) for i in range(n)]
    # the positions 0..t, t = n+m-1: r = 0 before position m (no transition ends there)
    rs = [[sp.Integer(0)] * m for _ in range(m)] + r
    # layer 2: softmax over [sink (score log a), positions (score 0)]; the sink's value is 0
    scores = ([sp.log(a)] if sink else []) + [sp.Integer(0)] * len(rs)
    w = _softmax(scores)[1 if sink else 0:]
    Gbar = [sp.Add(*[w[s] * rs[s][g] for s in range(len(rs))]) for g in range(m)]
    z3 = [sp.log(mu[g]) + c * Gbar[g] / mu[g] for g in range(m)]
    # one MD step from μ: log μ + η(n) ∇ℓ(μ), ∇ℓ(μ)_g = Σ_i C[i, g]/(C[i]·μ)
    grad = [sp.Add(*[C[i][g] / sp.Add(*[C[i][h] * mu[h] for h in range(m)]) for i in range(n)]) for g in range(m)]
    eta = step(sp.Integer(n), sp.Integer(m), c, a)
    zmd = [sp.log(mu[g]) + eta * grad[g] for g in range(m)]
    d = [z3[g] - zmd[g] for g in range(m)]
    return [sp.cancel(sp.together(d[g] - d[0])) for g in range(1, m)]


def _numeric_gap(step: Callable, seed: int) -> tuple[float, list[str]]:
    """max |MDTransformer(softmax_sink) − one MD step with the candidate step| over prefixes and cases."""
    import torch

    import mtdmath
    from mtdmath.nn import MDTransformer

    rng = np.random.default_rng(seed)
    worst, cases = 0.0, []
    for m in (2, 3, 5):
        pi = mtdmath.random_transition_matrix(6, concentration=0.5, rng=rng)
        alpha = rng.uniform(0.5, 3.0, m)
        y, _ = mtdmath.sample_icl(pi, alpha, 24, 4, rng=rng)
        for c, a in ((float(rng.uniform(0.5, 6.0)), float(rng.uniform(0.1, 12.0))), (float(rng.uniform(0.5, 6.0)), 0.0)):
            model = MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=c, a=a, dtype=torch.float64)
            with torch.no_grad():
                got = torch.softmax(model(torch.as_tensor(y)), dim=-1).numpy()  # forward returns the logits
            T = y.shape[1]
            for r in range(T - m + 1):  # prefix y[:m+r], n = r transitions
                C = mtdmath.lag_factors(y[:, :m + r], pi, m)
                try:
                    eta = float(step(r, m, c, a))
                except ZeroDivisionError:
                    eta = float("nan")
                if not (np.isfinite(eta) and eta >= 0):  # the candidate is not a step here: a failure, not a crash
                    worst = float("inf")
                    continue
                lam = mtdmath.one_step_md(C, alpha, eta=eta)
                want = mtdmath.predictive(lam, y[:, :m + r], pi)
                worst = max(worst, float(np.abs(got[:, r] - want).max()))
            cases.append(f"m={m} c={c:.3g} a={a:.3g}")
    return worst, cases


def check_adaptive_step(step: Callable[[Any, Any, Any, Any], Any] = adaptive_step,
                        cases: Sequence[tuple[int, int]] = A1_CASES, tol: float = 1e-12, seed: int = 31) -> CheckResult:
    """A.1 with the candidate ``step(n, m, c, a)`` (default ``c/(n+m+a)``).

    1. For m = 2, 3, 5 and symbolic n, a, c: layer-2 weight − 1/(n+m+a) = 0 and
       c·weight − step(n, m, c, a) = 0 (with the sink, and with the sink masked: a = 0).
    2. For each (m, n) in ``cases`` (all symbols): the lag differences of layer-3 logits minus
       the MD logits with η = step(n, m, c, a) are exactly 0, with and without the sink.
    3. Numeric: max |transformer − core MD with the candidate step| <= ``tol`` (float64 rounding
       of a handful of operations on O(1) numbers; measured ~2e-16).
    """
    v = Verdict()
    c = sp.Symbol("c", positive=True)
    for m in (2, 3, 5):
        for sink in (True, False):
            w, n, a = _layer2_weight_general(m, sink)
            aa = a if sink else sp.Integer(0)
            v.require(sp.cancel(w - 1 / (n + m + aa)) == 0,
                      f"m={m}{'' if sink else ' (no sink)'}: layer-2 weight {w} ≠ 1/(n+m+a)")
            diff = sp.cancel(sp.together(c * w - step(n, sp.Integer(m), c, aa)))
            v.require(diff == 0, lambda m=m, sink=sink, diff=diff: f"m={m}{'' if sink else ' (a=0)'}: "
                      f"c·(layer-2 weight) − candidate η(n) = {sp.factor(diff)} ≠ 0 (symbolic n)")
    for m, n_tr in cases:
        for sink in (True, False):
            gaps = _forward_logit_gap(m, n_tr, step, sink)
            v.require(all(g == 0 for g in gaps), lambda m=m, n_tr=n_tr, sink=sink, gaps=gaps: (
                f"(m,n)=({m},{n_tr}){'' if sink else ' a=0'}: layer-3 logits − MD logits with the candidate step "
                f"differ between lags by {sp.factor(gaps[0])}"))
    worst, ncases = _numeric_gap(step, seed)
    v.require(worst <= tol, f"numeric: max |MDTransformer(softmax_sink) − MD(candidate step)| = {worst:.2e} > {tol:g}")
    v.data["numeric_max_abs_diff"] = worst
    v.note("symbolic n, a, c (m = 2, 3, 5): layer-2 weight = 1/(n+m+a) and c·weight = the candidate; "
           "whole forward pass symbolic for (m,n) in " + ", ".join(f"({m},{n})" for m, n in cases) +
           f", with and without the sink: logit differences = MD's exactly; MDTransformer vs core MD per prefix "
           f"({len(ncases)} cases, m = 2, 3, 5, incl. a = 0): max diff {worst:.1e}")
    return v.result()


CLAIMS = [
    Claim("A.1", "Softmax layer 2 with a sink (score log a, value 0) outputs G_t/(t+1+a); with layer 3 at scale c "
                 "the transformer is one MD step of size c/(n+m+a) (symbolic in n, a, c; forward pass symbolic for "
                 "small (m,n); MDTransformer numerically)",
          "symbolic + numeric", check_adaptive_step),
]


def main(argv: Sequence[str] | None = None) -> int:
    return _main(CLAIMS, TITLE, argv, prog="python -m proofs_check.adaptive")


if __name__ == "__main__":
    sys.exit(main())
