"""Derivatives of the MTD log-likelihood and the Hessian bounds H1, H2 (docs/math.md §2), checked.

Run ``python -m proofs_check.hessian [--json PATH]``. One row per claim:

H.1  ``sympy.diff`` of ``log(c·lam)`` gives the closed-form gradient ``c/s`` and Hessian
     ``-c cᵀ/s²`` (m = 1..5; per transition — the sum over transitions is linear)
H.2  H1: ``‖c‖² ≤ m`` on [0,1]^m, ``s ≥ c_min``, ``‖c cᵀ‖_op = ‖c‖²`` (characteristic
     polynomial, m ≤ 4), hence ``‖∇²f‖_op ≤ n m / c_min²``
H.3  H2: ``S² - ‖c‖²`` has only nonnegative coefficients (m ≤ 8), ``s(u) = S/m``, hence
     ``‖∇²f(u)‖_op ≤ n m²``, attained by n identical one-hot rows (one-hot rows on different lags
     give less: rows e₁, e₂ at m = 2 give 4 < n·m² = 8)
H.4  numerically through ``mtdmath.hessian``: no case out of 10⁴ exceeds either bound; the H2
     bound is attained; the Hessian is negative semidefinite

As in :mod:`proofs_check.first_order`, each check takes its candidate formulas as keyword
arguments (defaults: docs/math.md), so a wrong candidate — a Hessian with the wrong sign, a missing
square, a bound that is too small — is reported as FAIL.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import numpy as np
import sympy as sp

from ._report import CheckResult, Claim, Verdict, main as _main

TITLE = "Derivatives and Hessian bounds of the MTD log-likelihood (docs/math.md §2)"

# ---------------------------------------------------------------------------------------------
# Candidates (docs/math.md §2), for one transition with lag factors c and s = c·lam
# ---------------------------------------------------------------------------------------------


def gradient_formula(c: Sequence[Any], lam: Sequence[Any]) -> list[Any]:
    """``∇ log(c·lam)_g = c_g / s``."""
    s = sum(cg * lg for cg, lg in zip(c, lam))
    return [cg / s for cg in c]


def hessian_formula(c: Sequence[Any], lam: Sequence[Any]) -> list[list[Any]]:
    """``∇² log(c·lam) = -c cᵀ / s²``."""
    s = sum(cg * lg for cg, lg in zip(c, lam))
    return [[-cg * ch / s**2 for ch in c] for cg in c]


def norm_sq_bound(m: Any) -> Any:
    """H1 step 1: ``‖c‖² ≤ m`` when every ``0 ≤ c_g ≤ 1``."""
    return m


def s_lower_bound(c_min: Any) -> Any:
    """H1 step 2: ``s = c·lam ≥ c_min`` on the simplex when every ``c_g ≥ c_min``."""
    return c_min


def rank_one_opnorm(c: Sequence[Any]) -> Any:
    """H1 step 3: ``‖c cᵀ‖_op = ‖c‖²``."""
    return sum(cg * cg for cg in c)


def h1_bound(n: Any, m: Any, c_min: Any) -> Any:
    """(H1) ``‖∇²f(lam)‖_op ≤ n m / c_min²`` for ``c_min ≤ C[i,g] ≤ 1``."""
    return n * m / c_min**2


def gram_upper(c: Sequence[Any]) -> Any:
    """H2 step: ``‖c‖² ≤ S²`` with ``S = Σ_g c_g`` (c ≥ 0)."""
    return sum(c) ** 2


def h2_bound(n: Any, m: Any) -> Any:
    """(H2) ``‖∇²f(u)‖_op ≤ n m²`` at the uniform point, tight."""
    return n * m**2


def _is_zero(expr: Any) -> bool:
    return sp.cancel(sp.together(sp.sympify(expr))) == 0


# ---------------------------------------------------------------------------------------------
# H.1  derivatives
# ---------------------------------------------------------------------------------------------


def check_derivatives(gradient: Callable = gradient_formula, hessian: Callable = hessian_formula,
                      ms: Sequence[int] = range(1, 6), seed: int = 21) -> CheckResult:
    """``sympy.diff`` of ``log(c·lam)`` (symbolic c_g, lam_g > 0) equals the candidates exactly.

    Second route: float central finite differences of f = ``log(c·lam)`` itself at random
    points (h = 1e-5 for the gradient; the 4-point mixed difference with h = 1e-4 for the
    Hessian), relative agreement 1e-5: truncation is O(h²) ~ 1e-8 relative and rounding
    ~1e-16/h² ~ 1e-8 for the Hessian, so 1e-5 leaves a wide margin while a wrong sign or a
    missing square (errors of order 1) cannot pass.
    """
    v = Verdict()
    rng = np.random.default_rng(seed)
    worst_fd = 0.0
    for m in ms:
        c = sp.symbols(f"c1:{m + 1}", positive=True)
        lam = sp.symbols(f"lambda1:{m + 1}", positive=True)
        f = sp.log(sum(cg * lg for cg, lg in zip(c, lam)))
        g_sym = [sp.diff(f, lg) for lg in lam]
        H_sym = [[sp.diff(f, lg, lh) for lh in lam] for lg in lam]
        g_c, H_c = gradient(list(c), list(lam)), hessian(list(c), list(lam))
        v.require(all(_is_zero(a - b) for a, b in zip(g_sym, g_c)), f"m={m}: gradient ≠ diff(log(c·lam))")
        v.require(all(_is_zero(H_sym[i][j] - H_c[i][j]) for i in range(m) for j in range(m)),
                  f"m={m}: Hessian ≠ diff(log(c·lam), 2)")
        # finite differences of f = log(c·lam), independent of sympy.diff
        for _ in range(3):
            c_n = rng.uniform(0.05, 1.0, size=m)
            l_n = rng.dirichlet(np.ones(m))
            fn = lambda x: np.log(c_n @ x)  # noqa: E731
            E = np.eye(m)
            h1, h2 = 1e-5, 1e-4
            g_fd = np.array([(fn(l_n + h1 * E[k]) - fn(l_n - h1 * E[k])) / (2 * h1) for k in range(m)])
            H_fd = np.array([[(fn(l_n + h2 * (E[a] + E[b])) - fn(l_n + h2 * (E[a] - E[b]))
                               - fn(l_n - h2 * (E[a] - E[b])) + fn(l_n - h2 * (E[a] + E[b]))) / (4 * h2 * h2)
                              for b in range(m)] for a in range(m)])
            g_n = np.array(gradient(list(c_n), list(l_n)), dtype=float)
            H_n = np.array(hessian(list(c_n), list(l_n)), dtype=float)
            err = max(np.max(np.abs(g_fd - g_n)) / np.max(np.abs(g_fd)),
                      np.max(np.abs(H_fd - H_n)) / np.max(np.abs(H_fd)))
            worst_fd = max(worst_fd, float(err))
    v.require(worst_fd < 1e-5, f"finite differences disagree with the candidates (max rel. err {worst_fd:.2e})")
    v.note(f"m={min(ms)}..{max(ms)}: sympy.diff(log(c·lam)) = c/s and -ccᵀ/s² exactly; "
           f"finite differences agree (max rel. err {worst_fd:.1e})")
    return v.result()


# ---------------------------------------------------------------------------------------------
# H.2  the three facts behind H1
# ---------------------------------------------------------------------------------------------


def check_h1(norm_sq: Callable = norm_sq_bound, s_lower: Callable = s_lower_bound,
             opnorm: Callable = rank_one_opnorm, bound: Callable = h1_bound,
             ms_norm: Sequence[int] = range(1, 9), ms_charpoly: Sequence[int] = range(1, 5),
             seed: int = 22) -> CheckResult:
    """H1 as symbolic facts, each checked for the candidate:

    (a) ``‖c‖² ≤ norm_sq(m)`` on [0,1]^m: ``sympy.maximum`` of c_g² on [0, 1] is 1, the sum is
        separable, so max ‖c‖² = m; require ``norm_sq(m) ≥ m`` (and = m, the bound is tight).
    (b) ``s ≥ s_lower(c_min)``: with ``c_g = c_min + u_g``, ``u_g, lam_g ≥ 0`` and Σ lam = 1,
        ``s - s_lower(c_min)·Σ lam`` must be provably nonnegative by SymPy's assumptions.
    (c) ``‖c cᵀ‖_op = opnorm(c)``: the characteristic polynomial of ``c cᵀ`` (symbolic c,
        m ≤ 4) equals ``x^(m-1) (x - ‖c‖²)``, so (symmetric PSD) the op norm is ‖c‖².
    (d) chaining (triangle inequality over n transitions): ``bound(n, m, c_min) ≥
        n · m / c_min²`` for c_min = 1/(1+t), t ≥ 0, symbolic n, m > 0.
    Second route: random cases for (a)-(c) (numpy), searching for a violation.
    """
    v = Verdict()
    rng = np.random.default_rng(seed)
    x = sp.Symbol("x")  # no assumptions: Matrix.charpoly returns a plain symbol
    # (a)
    cg = sp.Symbol("c", real=True)
    per_coord = sp.maximum(cg**2, cg, sp.Interval(0, 1))
    for m in ms_norm:
        max_norm = m * per_coord  # separable: max of Σ c_g² over the box is Σ of the maxima
        cand = sp.sympify(norm_sq(m))
        v.require(sp.simplify(cand - max_norm).is_nonnegative is True,
                  f"m={m}: ‖c‖² reaches {max_norm} > candidate {cand}")
        v.require(_is_zero(cand - max_norm), f"m={m}: candidate {cand} is not the tight max {max_norm}")
        cs = rng.uniform(0, 1, size=(2000, m))
        cs[:10] = 1.0  # the corner, where the max is attained
        v.require(bool(np.all((cs**2).sum(-1) <= float(cand) + 1e-12)),
                  f"m={m}: a random c in [0,1]^m has ‖c‖² > {cand}")
    # (b)
    c_min = sp.Symbol("c_min", positive=True)
    for m in range(1, 6):
        u = sp.symbols(f"u1:{m + 1}", nonnegative=True)
        lam = sp.symbols(f"lambda1:{m + 1}", nonnegative=True)
        s = sum((c_min + ug) * lg for ug, lg in zip(u, lam))
        gap = sp.expand(s - s_lower(c_min) * sum(lam))  # Σ lam = 1 on the simplex
        v.require(gap.is_nonnegative is True, f"m={m}: s - candidate = {gap} not provably ≥ 0")
        # random search for a counterexample
        cmin_n = rng.uniform(0.01, 1.0, size=2000)
        C_n = cmin_n[:, None] + rng.uniform(0, 1, size=(2000, m)) * (1 - cmin_n[:, None])
        C_n[:10] = cmin_n[:10, None]  # the tight case c = c_min·1
        L_n = rng.dirichlet(np.ones(m), size=2000)
        lower = np.array([float(s_lower(cm)) for cm in cmin_n])
        v.require(bool(np.all((C_n * L_n).sum(-1) >= lower - 1e-12)),
                  f"m={m}: random case with s < candidate lower bound")
    # (c)
    for m in ms_charpoly:
        c = sp.symbols(f"c1:{m + 1}", real=True)
        M = sp.Matrix(m, 1, c) * sp.Matrix(1, m, c)
        cp = M.charpoly(x).as_expr()
        nsq = sum(ci**2 for ci in c)
        v.require(sp.expand(cp - x ** (m - 1) * (x - nsq)) == 0, f"m={m}: charpoly(c cᵀ) ≠ x^(m-1)(x - ‖c‖²)")
        # eigenvalues 0 (m-1 times) and ‖c‖² ≥ 0, and c cᵀ symmetric: op norm = ‖c‖²
        v.require(_is_zero(nsq - opnorm(list(c))), f"m={m}: candidate op norm {opnorm(list(c))} ≠ ‖c‖²")
        cs = rng.normal(size=(200, m))
        op = np.linalg.norm(np.einsum("bi,bj->bij", cs, cs), ord=2, axis=(1, 2))
        cand_n = np.array([float(opnorm(list(ci))) for ci in cs])
        v.require(bool(np.allclose(op, cand_n, rtol=1e-12, atol=0)), f"m={m}: numpy op norm ≠ candidate")
    # (d)
    n_s, m_s, t = sp.symbols("n m t", positive=True)
    cm = 1 / (1 + t)  # c_min ∈ (0, 1]
    chained = n_s * norm_sq(m_s) / s_lower(cm) ** 2
    slack = sp.factor(sp.sympify(bound(n_s, m_s, cm)) - chained)
    v.require(slack.is_nonnegative is True or slack == 0,
              f"stated bound {bound(n_s, m_s, c_min)} is below the chained bound n·m/c_min² (slack {slack})")
    v.note(f"(a) max ‖c‖² on [0,1]^m = m (m={min(ms_norm)}..{max(ms_norm)}); (b) s - c_min = Σ lam_g u_g ≥ 0; "
           f"(c) charpoly(ccᵀ) = x^(m-1)(x-‖c‖²) (m≤{max(ms_charpoly)}); (d) Σ_i ‖c_i c_iᵀ‖/s_i² ≤ n·m/c_min² "
           "= stated bound; random search found no violation")
    return v.result()


# ---------------------------------------------------------------------------------------------
# H.3  H2 at the uniform point
# ---------------------------------------------------------------------------------------------


def check_h2(upper: Callable = gram_upper, bound: Callable = h2_bound, ms: Sequence[int] = range(1, 9)) -> CheckResult:
    """H2 as symbolic facts, for m = 1..8:

    (a) ``upper(c) - ‖c‖²`` and ``S² - upper(c)`` expand to polynomials with only nonnegative
        coefficients (so ``‖c‖² ≤ upper(c) ≤ S²`` for c ≥ 0);
    (b) ``s(u) = S/m`` at ``u = 1/m`` (exact);
    (c) hence per transition ``‖ccᵀ‖/s(u)² ≤ m² upper(c)/S² ≤ m²``, and over n transitions the
        bound ``n m²``: require ``bound(n, m) ≥ n m²``;
    (d) tight: for n one-hot transitions, the Hessian of ``n·log(c·lam)`` (sympy.diff) at u has
        op norm (from its eigenvalues) exactly ``bound(n, m)``.
    """
    v = Verdict()
    n_s = sp.Symbol("n", positive=True)
    for m in ms:
        c = sp.symbols(f"c1:{m + 1}", nonnegative=True)
        S = sum(c)
        nsq = sum(ci**2 for ci in c)
        up = sp.sympify(upper(list(c)))
        for name, expr in (("upper - ‖c‖²", up - nsq), ("S² - upper", S**2 - up)):
            poly = sp.Poly(sp.expand(expr), *c)
            bad = [co for co in poly.coeffs() if co < 0]
            v.require(not bad, f"m={m}: {name} has negative coefficients {bad[:3]}")
        u = [sp.Rational(1, m)] * m
        s_u = sum(ci * ui for ci, ui in zip(c, u))
        v.require(_is_zero(s_u - S / m), f"m={m}: s(u) ≠ S/m")
        v.require(sp.simplify(sp.sympify(bound(n_s, m)) - n_s * m**2).is_nonnegative is True,
                  f"m={m}: stated bound {bound(n_s, m)} < n·m² (the chained bound)")
        # tight case: n identical one-hot transitions
        lam = sp.symbols(f"lambda1:{m + 1}", positive=True)
        onehot = [1] + [0] * (m - 1)
        f = n_s * sp.log(sum(ci * li for ci, li in zip(onehot, lam)))
        H = sp.Matrix(m, m, lambda i, j: sp.diff(f, lam[i], lam[j])).subs(dict(zip(lam, u)))
        op = max(abs(ev) for ev in H.eigenvals())
        v.require(_is_zero(op - bound(n_s, m)), f"m={m}: one-hot case has op norm {op}, bound {bound(n_s, m)} not tight")
    v.note(f"m={min(ms)}..{max(ms)}: S² - ‖c‖² = 2Σ_{{g<h}} c_g c_h (nonnegative coefficients), s(u) = S/m, "
           "so ‖∇²f(u)‖ ≤ n·m²; n identical one-hot rows give exactly n·m²")
    return v.result()


# ---------------------------------------------------------------------------------------------
# H.4  numerical cross-check through mtdmath.hessian
# ---------------------------------------------------------------------------------------------


def _default_hessian(lam: np.ndarray, C: np.ndarray) -> np.ndarray:
    import mtdmath

    return mtdmath.hessian(lam, C)


def check_numeric_bounds(hessian: Callable = _default_hessian, bound_h1: Callable = h1_bound,
                         bound_h2: Callable = h2_bound, n_cases: int = 10_000, seed: int = 24) -> CheckResult:
    """``‖hessian(lam, C)‖_op`` on random cases, half for H1 and half for H2.

    H1 cases: c_min log-uniform in [1e-3, 1], C ∈ [c_min, 1] (some rows pinned to c_min or 1),
    lam from Dirichlet(1) or near a vertex (Dirichlet(0.05)); the bound uses the case's actual
    min C. H2 cases: lam = u, C ≥ 0 with nonzero rows, sparse (zeros) and one-hot rows mixed
    in, including blocks of identical one-hot rows (the tight case). m = 1..6, n ∈ {1, 3, 10}.
    Requires: every ratio ‖H‖/bound ≤ 1 + 1e-12 (float rounding of the eigenvalue, ~1e-15
    relative); for every m the largest H2 ratio ≥ 1 - 1e-12 (the bound is attained, so a Hessian
    too small — e.g. a missing square — fails; per m because for m = 1 a missing square is
    invisible at u); max eigenvalue ≤ 1e-12·‖H‖ (negative semidefinite).
    """
    v = Verdict()
    rng = np.random.default_rng(seed)
    combos = [(m, n) for m in range(1, 7) for n in (1, 3, 10)]
    per = max(1, -(-n_cases // (2 * len(combos))))  # ceil: at least n_cases in all
    worst1 = worst2 = 0.0
    attained = {m: 0.0 for m in range(1, 7)}  # largest H2 ratio per m: the bound must be reached for every m
    nsd_viol = 0.0
    total = 0
    for m, n in combos:
        # --- H1 cases
        cmin = np.exp(rng.uniform(np.log(1e-3), 0.0, size=per))
        C = cmin[:, None, None] + rng.uniform(size=(per, n, m)) * (1 - cmin[:, None, None])
        pin = rng.uniform(size=(per, n, m))
        C = np.where(pin < 0.2, cmin[:, None, None], np.where(pin > 0.8, 1.0, C))
        lam = np.where(rng.uniform(size=(per, 1)) < 0.5, rng.dirichlet(np.ones(m), size=per),
                       rng.dirichlet(0.05 * np.ones(m), size=per))
        lam = np.maximum(lam, 1e-300)
        lam = lam / lam.sum(-1, keepdims=True)
        H = np.asarray(hessian(lam, C))
        ev = np.linalg.eigvalsh(H)
        op = np.max(np.abs(ev), axis=-1)
        nsd_viol = max(nsd_viol, float(np.max(ev[..., -1] / np.maximum(op, 1e-300))))
        actual_min = C.min(axis=(-1, -2))
        b1 = np.array([float(bound_h1(n, m, cm)) for cm in actual_min])
        worst1 = max(worst1, float(np.max(op / b1)))
        # --- H2 cases
        C2 = rng.uniform(size=(per, n, m)) * (rng.uniform(size=(per, n, m)) < 0.6)
        onehot = np.eye(m)[rng.integers(0, m, size=(per, n))]
        kind = rng.uniform(size=(per, n, 1))
        C2 = np.where(kind < 0.3, onehot, C2)
        tight = per // 10  # blocks of identical one-hot rows: the case that attains n·m²
        C2[:tight] = np.eye(m)[rng.integers(0, m, size=tight)][:, None, :] * np.ones((1, n, 1))
        empty = C2.sum(-1) == 0
        C2[empty] = onehot[empty]  # rows must be nonzero
        u = np.full((per, m), 1.0 / m)
        H2 = np.asarray(hessian(u, C2))
        ev2 = np.linalg.eigvalsh(H2)
        op2 = np.max(np.abs(ev2), axis=-1)
        nsd_viol = max(nsd_viol, float(np.max(ev2[..., -1] / np.maximum(op2, 1e-300))))
        ratio2 = float(np.max(op2 / float(bound_h2(n, m))))
        worst2 = max(worst2, ratio2)
        attained[m] = max(attained[m], ratio2)
        total += 2 * per
    v.require(worst1 <= 1 + 1e-12, f"H1 violated: max ‖H‖/(n m/c_min²) = {worst1:.6g}")
    v.require(worst2 <= 1 + 1e-12, f"H2 violated: max ‖H(u)‖/(n m²) = {worst2:.6g}")
    low = min(attained.values())
    v.require(low >= 1 - 1e-12, lambda: "H2 bound not attained for every m: max ratio per m "
              + str({m: round(r, 6) for m, r in attained.items()}) + " (Hessian too small?)")
    v.require(nsd_viol <= 1e-12, f"Hessian not negative semidefinite: max eigenvalue/‖H‖ = {nsd_viol:.3g}")
    v.data.update(cases=total, max_ratio_h1=worst1, max_ratio_h2=worst2, max_eig_over_norm=nsd_viol)
    v.note(f"{total} random cases (m=1..6, n∈{{1,3,10}}): max ‖H‖/H1-bound = {worst1:.12f}, "
           f"max ‖H(u)‖/H2-bound = {worst2:.12f} (attained by identical one-hot rows); max eigenvalue/‖H‖ = {nsd_viol:.1e}")
    return v.result()


# ---------------------------------------------------------------------------------------------

CLAIMS = [
    Claim("H.1", "sympy.diff of log(c·lam) = closed-form gradient c/s and Hessian -ccᵀ/s² (m=1..5)",
          "symbolic + numeric", check_derivatives),
    Claim("H.2", "H1: ‖c‖²≤m on [0,1]^m, s≥c_min, ‖ccᵀ‖_op=‖c‖² (charpoly, m≤4) ⇒ ‖∇²f‖≤n·m/c_min²",
          "symbolic + numeric", check_h1),
    Claim("H.3", "H2: S²-‖c‖² has nonnegative coefficients (m≤8), s(u)=S/m ⇒ ‖∇²f(u)‖≤n·m², attained "
                 "by identical one-hot rows", "symbolic", check_h2),
    Claim("H.4", "mtdmath.hessian on 10⁴ random cases: never exceeds H1 or H2, H2 attained, "
                 "negative semidefinite", "numeric", check_numeric_bounds),
]


def main(argv: Sequence[str] | None = None) -> int:
    return _main(CLAIMS, TITLE, argv, prog="python -m proofs_check.hessian")


if __name__ == "__main__":
    sys.exit(main())
