"""The predicted step law at n → 0 (docs/math.md, "The predicted step law", S.1), checked.

Run ``python -m proofs_check.step_law [--json PATH]``. One row:

S.1  the law ``η(n) = 1/(A + n/c)`` with the intercept ``A = 1 + α₀`` has ``η(0) = η*`` and
     ``n·η(n) → c`` as n → ∞; on the no-evidence path of Theorem 1 the first-order (in ε) term of
     one MD step from μ with step η(ν) differs from that of the exact posterior mean by
     ``(η(ν) − η*)(diag μ − μμᵀ)D``, which vanishes as ν → 0.

Routes:

1. symbolic in α_g > 0, c > 0 and the law's argument ν >= 0 (SymPy ``limit``):
   ``lim_{ν→0} η(ν) − 1/(1+α₀) = 0`` and ``lim_{ν→∞} ν·η(ν) = c``;
2. exact ε-expansion for small (m, n), every quantity a symbol (α_g, the path's d[i, g], c, ν): the
   posterior mean ``E[λ Π_i C[i]·λ] / E[Π_i C[i]·λ]`` with ``C[i, g] = 1 + ε d[i, g]``, expanded
   into Dirichlet moments (no series assumption), and one MD step from μ with ``η = η(ν)``; their
   ε-coefficients (``sympy.diff`` at ε = 0) differ by exactly ``(η(ν) − η*)(diag μ − μμᵀ)D`` and the
   difference tends to 0 as ν → 0;
3. numeric through the library: :func:`mtdmath.predicted_step` returns the candidate intercept and
   ``eta(0) = eta_bayes(alpha)`` to rounding.

The check takes the intercept ``A(α₀, m)`` as an argument; ``A = α₀`` and ``A = 1 + α₀ + m`` must
FAIL (tests/test_proofs_check.py). Only the n → 0 end is a theorem: the slope 1/c∞ is a large-n limit
computed numerically (tests/test_predicted_step.py), and the intercept is a boundary condition, not
the intercept of the large-n asymptote (docs/math.md, math-step-law-exactness).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import numpy as np
import sympy as sp

from ._report import CheckResult, Claim, Verdict, main as _main
from .first_order import dirichlet_moment

TITLE = "The predicted step law at n → 0 (docs/math.md, The predicted step law, S.1)"

#: (m, n) of the exact ε-expansion route
S1_CASES = ((2, 1), (2, 2), (3, 1))


def step_law_intercept(alpha0: Any, m: Any) -> Any:
    """docs/math.md eq-step-law: the intercept of ``1/η(n) = A + n/c∞``, ``A = 1 + α₀`` (so η(0) = η*)."""
    return 1 + alpha0


def _law(nu: Any, c: Any, alpha0: Any, m: Any, intercept: Callable) -> Any:
    return 1 / (intercept(alpha0, m) + nu / c)


def _posterior_first_order(m: int, n: int, alpha: Sequence[sp.Symbol], d: Sequence[Sequence[sp.Symbol]],
                           eps: sp.Symbol) -> list[sp.Expr]:
    """ε-coefficient of the exact posterior mean ``E[λ_g Π_i s_i(λ)]/E[Π_i s_i(λ)]``, s_i = Σ_h λ_h(1+ε d[i,h]).

    The product is expanded into monomials λ^k and each replaced by its Dirichlet moment."""
    lam = sp.symbols(f"l0:{m}")
    prod = sp.Integer(1)
    for i in range(n):
        prod *= sp.Add(*[lam[h] * (1 + eps * d[i][h]) for h in range(m)])

    def expect(poly_expr: sp.Expr) -> sp.Expr:
        P = sp.Poly(sp.expand(poly_expr), *lam)
        return sp.Add(*[coef * dirichlet_moment(list(alpha), list(k)) for k, coef in P.terms()])

    Z = expect(prod)
    return [sp.cancel(sp.diff(expect(lam[g] * prod) / Z, eps).subs(eps, 0)) for g in range(m)]


def _md_first_order(m: int, n: int, alpha: Sequence[sp.Symbol], d: Sequence[Sequence[sp.Symbol]], eps: sp.Symbol,
                    eta: sp.Expr) -> list[sp.Expr]:
    """ε-coefficient of one MD step from μ, ``softmax(log μ + η ∇ℓ(μ))``, ∇ℓ(μ)_g = Σ_i C[i,g]/(C[i]·μ)."""
    a0 = sp.Add(*alpha)
    mu = [a / a0 for a in alpha]
    grad = [sp.Add(*[(1 + eps * d[i][g]) / sp.Add(*[mu[h] * (1 + eps * d[i][h]) for h in range(m)])
                     for i in range(n)]) for g in range(m)]
    w = [mu[g] * sp.exp(eta * grad[g]) for g in range(m)]
    tot = sp.Add(*w)
    # at ε = 0 every gradient entry is n (μ sums to 1), so the exponentials are one common factor exp(ηn)
    # that cancel removes; no simplify needed
    return [sp.cancel(sp.together(sp.diff(x / tot, eps).subs(eps, 0))) for x in w]


def check_step_law(intercept: Callable[[Any, Any], Any] = step_law_intercept,
                   cases: Sequence[tuple[int, int]] = S1_CASES, tol: float = 1e-15) -> CheckResult:
    """S.1 with the candidate ``intercept(α₀, m)`` (default ``1 + α₀``).

    1. For m = 2, 3, 5 with symbolic α_g, c, ν: ``lim_{ν→0} η(ν) = 1/(1+α₀)`` and ``lim_{ν→∞} ν η(ν) = c``.
    2. For each (m, n) in ``cases``: the ε-coefficients of the exact posterior mean and of one MD step with
       η(ν) differ by exactly ``(η(ν) − η*)(diag μ − μμᵀ)D``, and that difference → 0 as ν → 0.
    3. Numeric: ``predicted_step(pi, alpha).A == intercept(α₀, m)`` and ``|eta(0) − eta_bayes| <= tol``
       (one division in float64: relative error ~1e-16 on a step <= 1).
    """
    v = Verdict()
    c, nu = sp.Symbol("c", positive=True), sp.Symbol("nu", nonnegative=True)
    for m in (2, 3, 5):
        alpha = sp.symbols(f"alpha1:{m + 1}", positive=True)
        a0 = sp.Add(*alpha)
        eta = _law(nu, c, a0, m, intercept)
        at0 = sp.simplify(sp.limit(eta, nu, 0) - 1 / (1 + a0))
        v.require(at0 == 0, lambda m=m, at0=at0: f"m={m}: η(0) − η* = {sp.factor(at0)} ≠ 0")
        slope = sp.simplify(sp.limit(nu * eta, nu, sp.oo) - c)
        v.require(slope == 0, lambda m=m, slope=slope: f"m={m}: lim n·η(n) − c = {slope} ≠ 0")
    eps = sp.Symbol("epsilon")
    for m, n in cases:
        alpha = sp.symbols(f"alpha1:{m + 1}", positive=True)
        d = [[sp.Symbol(f"d{i}_{g}", real=True) for g in range(m)] for i in range(n)]
        a0 = sp.Add(*alpha)
        mu = [a / a0 for a in alpha]
        D = [sp.Add(*[d[i][g] for i in range(n)]) for g in range(m)]
        muD = sp.Add(*[mu[h] * D[h] for h in range(m)])
        eta = _law(nu, c, a0, m, intercept)
        post = _posterior_first_order(m, n, alpha, d, eps)
        md = _md_first_order(m, n, alpha, d, eps, eta)
        for g in range(m):
            gap = md[g] - post[g]
            form = sp.cancel(sp.together(gap - (eta - 1 / (1 + a0)) * mu[g] * (D[g] - muD)))
            v.require(form == 0, lambda m=m, n=n, g=g, form=form: (
                f"(m,n)=({m},{n}) lag {g + 1}: first-order gap − (η(ν) − η*)(diag μ − μμᵀ)D = {sp.factor(form)}"))
            # the gap is a rational function of ν whose denominator does not vanish at ν = 0 (A > 0): its limit
            # is its value there
            lim = sp.cancel(sp.together(gap.subs(nu, 0)))
            v.require(lim == 0, lambda m=m, n=n, g=g, lim=lim: (
                f"(m,n)=({m},{n}) lag {g + 1}: first-order gap of MD at η(ν→0) vs the posterior mean is "
                f"{sp.factor(lim)} ≠ 0"))
    import mtdmath

    worst = 0.0
    for m, seed in ((2, 0), (3, 1)):
        rng = np.random.default_rng(seed)
        pi = mtdmath.random_transition_matrix(3, concentration=1.0, rng=rng)
        alpha = rng.uniform(0.5, 3.0, m)
        r = mtdmath.predicted_step(pi, alpha, n_samples=8, rng=rng)
        want = float(intercept(float(alpha.sum()), m))
        v.require(abs(r.A - want) <= tol * want, f"numeric m={m}: predicted_step A = {r.A!r} ≠ candidate {want!r}")
        worst = max(worst, abs(r.eta(0) - mtdmath.eta_bayes(alpha)))
    v.require(worst <= tol, f"numeric: |predicted_step(...).eta(0) − eta_bayes(alpha)| = {worst:.2e} > {tol:g}")
    v.data["numeric_eta0_abs_diff"] = worst
    v.note("symbolic α, c, ν (m = 2, 3, 5): lim_{ν→0} η(ν) = η*, lim ν·η(ν) = c; exact posterior mean vs MD at η(ν), "
           "(m,n) in " + ", ".join(f"({m},{n})" for m, n in cases) + ": first-order gap = (η(ν) − η*)(diag μ − μμᵀ)D "
           f"→ 0 as ν → 0; predicted_step: A = candidate, |η(0) − η*| = {worst:.1e}")
    return v.result()


CLAIMS = [
    Claim("S.1", "The predicted step law 1/η(n) = (1+α₀) + n/c∞: η(0) = η* and n·η(n) → c∞ (symbolic); one MD step "
                 "at η(n) matches the exact posterior mean to first order in ε as n → 0 (exact expansion for small "
                 "(m,n)); predicted_step numerically",
          "symbolic + numeric", check_step_law),
]


def main(argv: Sequence[str] | None = None) -> int:
    return _main(CLAIMS, TITLE, argv, prog="python -m proofs_check.step_law")


if __name__ == "__main__":
    sys.exit(main())
