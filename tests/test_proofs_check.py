"""Tests of proofs_check: every check passes on the docs/math.md formulas and FAILS on wrong ones.

The mutation tests feed each claim's check function a deliberately wrong candidate (wrong step
size, wrong covariance, Hessian with the wrong sign or without the square, …) and assert that
the claim is reported as FAIL — so no row of ``python -m proofs_check`` is a check that cannot
fail. Where the check has several sub-checks the test also asserts *which* one caught it.
Small parameter ranges (m = 2, 3; few cases) keep the suite fast; the full ranges run in the
subprocess test of ``python -m proofs_check``.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from proofs_check import _report as R
from proofs_check import first_order as F
from proofs_check import hessian as H

ROOT = Path(__file__).resolve().parents[1]


def _fails(res: R.CheckResult, *fragments: str) -> None:
    assert not res.passed, res.details
    for frag in fragments:
        assert frag in res.details, (frag, res.details)


# ------------------------------------------------------------------------------------------
# The whole program, as a reader runs it
# ------------------------------------------------------------------------------------------


def test_python_m_proofs_check_all_pass(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "proofs_check", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from proofs_check import adaptive, step_law, steps

    ids = ([c.key for c in F.CLAIMS] + [c.key for c in H.CLAIMS] + [c.key for c in steps.CLAIMS]
           + [c.key for c in adaptive.CLAIMS] + [c.key for c in step_law.CLAIMS])
    table = proc.stdout.split("Summary:")[0].splitlines()
    # table rows start at column 0 with the claim id (continuation and detail lines are indented)
    rows = {ln.split()[0]: ln for ln in table if ln[:1].strip() and ln.split()[0] in ids}
    assert sorted(rows) == sorted(ids)
    for key, line in rows.items():
        assert " PASS " in line and "FAIL" not in line, line
    assert "Summary: 13/13 claims PASS (ALL PASS)" in proc.stdout
    report = json.loads(out.read_text())
    assert [r["id"] for r in report["rows"]] == ids
    assert all(r["result"] == "PASS" for r in report["rows"])
    assert report["summary"] == {**report["summary"], "passed": 13, "total": 13, "all_pass": True}


# ------------------------------------------------------------------------------------------
# Report machinery: a failing or crashing claim is a FAIL row and a nonzero exit code
# ------------------------------------------------------------------------------------------


def test_report_exit_code_and_json(tmp_path, capsys):
    def boom() -> R.CheckResult:
        raise ZeroDivisionError("deliberate")

    claims = [R.Claim("A", "passes", "numeric", lambda: R.CheckResult(True, "ok")),
              R.Claim("B", "fails", "numeric", lambda: R.CheckResult(False, "no")),
              R.Claim("C", "crashes", "numeric", boom),
              R.Claim("D", "returns junk", "numeric", lambda: True)]
    path = tmp_path / "r.json"
    code = R.main(claims, "t", ["--json", str(path), "--quiet"])
    assert code == 1
    rep = json.loads(path.read_text())
    assert [r["result"] for r in rep["rows"]] == ["PASS", "FAIL", "FAIL", "FAIL"]
    assert "ZeroDivisionError" in rep["rows"][2]["details"]
    assert rep["summary"]["all_pass"] is False
    assert "Summary: 1/4 claims PASS (3 FAIL)" in capsys.readouterr().out
    assert R.main(claims[:1], "t", ["--quiet"]) == 0


@pytest.mark.parametrize("undecided", [None, sp.Symbol("x") >= 0, "yes", 1, np.float64(1.0)])
def test_verdict_counts_only_true_as_pass(undecided):
    v = R.Verdict()
    v.require(undecided, "not a bool")
    assert not v.result().passed
    v2 = R.Verdict()
    v2.require(np.bool_(True), "numpy bool")
    v2.require(True, "python bool")
    assert v2.result().passed


# ------------------------------------------------------------------------------------------
# The truncated power series used by T1.3/T1.4, against sympy.series (an independent route)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("K", [1, 2, 3])
def test_series_arithmetic_matches_sympy_series(seed, K):
    # rational coefficients keep sympy.series fast; the arithmetic is the same for any field
    rng = random.Random(seed)
    eps = sp.Symbol("epsilon")

    def rnd_poly():
        return [sp.Rational(rng.randint(5, 20), rng.randint(1, 4))] + [sp.Rational(rng.randint(-9, 9), rng.randint(1, 4))
                                                                      for _ in range(K)]

    p, q, r = rnd_poly(), rnd_poly(), rnd_poly()
    expr_of = lambda cs: sum(c * eps**k for k, c in enumerate(cs))  # noqa: E731
    P, Q, Rr = (F._Series(cs, K) for cs in (p, q, r))
    r0 = [0] + r[1:]
    cases = [
        (P * Q - Rr, expr_of(p) * expr_of(q) - expr_of(r)),
        (P / Q, expr_of(p) / expr_of(q)),
        (1 / P + Q / Rr, 1 / expr_of(p) + expr_of(q) / expr_of(r)),
        (P * F._Series(r0, K).exp_zero_const() / Q, expr_of(p) * sp.exp(expr_of(r0)) / expr_of(q)),
    ]
    for ser, expr in cases:
        ref = sp.series(expr, eps, 0, K + 1).removeO()
        for k in range(K + 1):
            assert ser.c[k] == ref.coeff(eps, k), (k, ser.c[k], ref.coeff(eps, k))


def test_series_exp_rejects_nonzero_constant():
    with pytest.raises(ValueError, match="zero constant"):
        F._Series([1, 2]).exp_zero_const()


# ------------------------------------------------------------------------------------------
# T1.1 reduction lemma
# ------------------------------------------------------------------------------------------


def test_t11_passes_small():
    assert F.check_reduction_lemma(ms=(2, 3)).passed


@pytest.mark.parametrize("wrong", [
    lambda lam, d: sum(d),                                   # unweighted sum of d
    lambda lam, d: 2 * sum(l * x for l, x in zip(lam, d)),  # factor 2
    lambda lam, d: sum(l * l * x for l, x in zip(lam, d)),  # lam² weights
])
def test_t11_fails_on_wrong_first_order_term(wrong):
    _fails(F.check_reduction_lemma(first_order=wrong, ms=(2, 3)), "ε¹ term", "numerical ε-slope")


# ------------------------------------------------------------------------------------------
# T1.2 Dirichlet moments
# ------------------------------------------------------------------------------------------


def test_t12_passes():
    assert F.check_dirichlet_moments().passed


def _cov_without_factor(alpha):
    a0 = sum(alpha)
    mu = [a / a0 for a in alpha]
    return [[(mu[g] if g == h else 0) - mu[g] * mu[h] for h in range(len(alpha))] for g in range(len(alpha))]


def test_t12_fails_on_covariance_without_1_over_1_plus_alpha0():
    _fails(F.check_dirichlet_moments(covariance=_cov_without_factor), "Cov[", "quadrature disagrees")


def test_t12_fails_on_second_moment_without_delta():
    wrong = lambda alpha, g, h: alpha[g] * alpha[h] / (sum(alpha) * (sum(alpha) + 1))  # noqa: E731
    _fails(F.check_dirichlet_moments(second_moment=wrong, ms=(2,)), "E[lam_1 lam_1]", "quadrature")


def test_t12_fails_on_wrong_mean():
    _fails(F.check_dirichlet_moments(mean=lambda alpha, g: alpha[g] / (sum(alpha) + 1), ms=(3,)), "E[lam_1]")


def test_t12_fails_on_powers_instead_of_rising_factorials():
    def wrong(alpha, k):
        num = 1
        for a, kg in zip(alpha, k):
            num = num * a**kg
        return num / sum(alpha) ** sum(k)

    _fails(F.check_dirichlet_moments(moment=wrong, ms=(2,)), "E[lam^")


# ------------------------------------------------------------------------------------------
# T1.3 first-order match, unique η
# ------------------------------------------------------------------------------------------


def test_t13_passes_small():
    res = F.check_first_order_match(ms=(2, 3))
    assert res.passed, res.details
    assert res.data["solutions"] == {2: ["1/(alpha1 + alpha2 + 1)"], 3: ["1/(alpha1 + alpha2 + alpha3 + 1)"]}


@pytest.mark.parametrize("wrong_eta", [lambda a0: 1 / a0, lambda a0: 2 / (1 + a0), lambda a0: 1 / (2 + a0)])
def test_t13_fails_on_wrong_eta(wrong_eta):
    _fails(F.check_first_order_match(eta=wrong_eta, ms=(2, 3)), "≠ candidate",
           "difference at the candidate η is not 0")


def test_t13_fails_on_covariance_without_factor():
    _fails(F.check_first_order_match(covariance=_cov_without_factor, ms=(2, 3)), "≠ covariance·D")


def test_t13_fails_on_wrong_second_moment():
    wrong = lambda alpha, g, h: alpha[g] * (alpha[h] + int(g == h)) / sum(alpha) ** 2  # noqa: E731
    _fails(F.check_first_order_match(second_moment=wrong, ms=(2,)), "≠ covariance·D")


# ------------------------------------------------------------------------------------------
# T1.4 exact small-n expansion
# ------------------------------------------------------------------------------------------

SMALL_CASES = ((2, 1), (2, 2), (3, 1))


def test_t14_passes_small():
    res = F.check_exact_small_n(cases=SMALL_CASES)
    assert res.passed, res.details
    # the printed (2,1) coefficient carries the factor α1 - α2 (docs/math.md's 1 - 2μ)
    assert "(alpha1 - alpha2)" in res.data["eps2_coefficient_lam1"]["(2,1)"]


def test_t14_fails_on_wrong_eta():
    _fails(F.check_exact_small_n(eta=lambda a0: 1 / a0, cases=SMALL_CASES, numeric_route=False),
           "orders ε⁰/ε¹")


@pytest.mark.parametrize("wrong", [
    # missing the factor 1 - 2μ
    lambda a1, a2, c: (a1 / (a1 + a2)) * (1 - a1 / (a1 + a2)) * (
        (sum(c) ** 2 - sum(x * x for x in c)) / ((1 + a1 + a2) * (2 + a1 + a2)) - sum(c) ** 2 / (2 * (1 + a1 + a2) ** 2)),
    # opposite sign (the gap taken as lam¹ - E[lam|y])
    lambda a1, a2, c: -F.eps2_coefficient_m2(a1, a2, c),
    # (1+α₀)² instead of (1+α₀)(2+α₀) in the first term
    lambda a1, a2, c: (lambda mu, a0: mu * (1 - mu) * (1 - 2 * mu) * (
        (sum(c) ** 2 - sum(x * x for x in c)) / (1 + a0) ** 2 - sum(c) ** 2 / (2 * (1 + a0) ** 2)))(a1 / (a1 + a2), a1 + a2),
])
def test_t14_fails_on_wrong_eps2_closed_form(wrong):
    # (2,2) is needed: for n = 1, c² - Σc_i² = 0 and the last mutation would go unseen
    _fails(F.check_exact_small_n(eps2_m2=wrong, cases=((2, 1), (2, 2)), numeric_route=False),
           "ε² coefficient ≠ docs/math.md closed form")


def test_t14_third_mutation_needs_n_at_least_2():
    """Documents why the case list has n ≥ 2: with n = 1 the (c² - Σc_i²) term is zero."""
    wrong = lambda a1, a2, c: (lambda mu, a0: mu * (1 - mu) * (1 - 2 * mu) * (  # noqa: E731
        (sum(c) ** 2 - sum(x * x for x in c)) / (1 + a0) ** 2 - sum(c) ** 2 / (2 * (1 + a0) ** 2)))(
        a1 / (a1 + a2), a1 + a2)
    assert F.check_exact_small_n(eps2_m2=wrong, cases=((2, 1),), numeric_route=False).passed


def test_t14_fails_on_wrong_moments():
    wrong = lambda alpha, k: F.dirichlet_moment(alpha, k) * (1 + sum(k) * alpha[0] / 100)  # noqa: E731
    _fails(F.check_exact_small_n(moment=wrong, cases=((2, 1),), numeric_route=False))


def test_t14_numeric_route_catches_a_wrong_symbolic_coefficient(monkeypatch):
    """The mpmath quadrature route is independent: corrupt the symbolic gap and it objects."""
    real = F._exact_gap_series

    def corrupted(m, n, eta, moment):
        gap, gens = real(m, n, eta, moment)
        gap[0].c[2] = gap[0].c[2] * 2
        return gap, gens

    monkeypatch.setattr(F, "_exact_gap_series", corrupted)
    _fails(F.check_exact_small_n(cases=((3, 1),)), "quadrature gap/ε²")


# ------------------------------------------------------------------------------------------
# T1.5 numerical slopes through mtdmath
# ------------------------------------------------------------------------------------------


def test_t15_fails_on_wrong_eta_bayes():
    import mtdmath

    wrong = lambda alpha: 1.0 / float(np.sum(alpha))  # noqa: E731
    assert abs(wrong(np.array([1.0, 2.0])) - mtdmath.eta_bayes(np.array([1.0, 2.0]))) > 0.05
    _fails(F.check_numeric_slopes(eta_bayes=wrong), "slope 2 at eta_bayes (m=3,4,5)")


def test_t15_fails_when_md_is_not_one_md_step():
    import mtdmath

    two_steps = lambda C, alpha, eta: mtdmath.k_step_md(C, alpha, 2, eta=eta)  # noqa: E731
    _fails(F.check_numeric_slopes(md_step=two_steps), "slope 2 at eta_bayes")


def test_gap_slope_reports_first_order_gap_for_prior_mean():
    # a "posterior" that ignores the data (the prior mean) differs from MD at first order
    prior = lambda C, alpha: np.broadcast_to(alpha / alpha.sum(), C.shape[:-2] + alpha.shape)  # noqa: E731
    slope, gaps = F.gap_slope(3, [1.0, 2.0, 3.0], 1.0, F.EPS_SLOPE_1_2, 0, posterior_mean=prior)
    assert abs(slope - 1) < 0.05 and np.all(gaps > 0)


# ------------------------------------------------------------------------------------------
# H.1 derivatives
# ------------------------------------------------------------------------------------------


def test_h1_derivatives_pass():
    assert H.check_derivatives().passed


@pytest.mark.parametrize("name, wrong", [
    ("sign", lambda c, lam: [[-x for x in row] for row in H.hessian_formula(c, lam)]),
    ("missing square", lambda c, lam: [[-cg * ch / sum(a * b for a, b in zip(c, lam)) for ch in c] for cg in c]),
    ("missing transpose factor", lambda c, lam: [[-cg * cg / sum(a * b for a, b in zip(c, lam)) ** 2 for ch in c]
                                                 for cg in c]),
])
def test_h1_fails_on_wrong_hessian(name, wrong):
    _fails(H.check_derivatives(hessian=wrong, ms=(2, 3)), "Hessian ≠ diff", "finite differences disagree")


def test_h1_fails_on_wrong_gradient():
    wrong = lambda c, lam: [cg / sum(a * b for a, b in zip(c, lam)) ** 2 for cg in c]  # noqa: E731
    _fails(H.check_derivatives(gradient=wrong, ms=(2, 3)), "gradient ≠ diff")


def test_h1_fails_on_sign_for_m1():
    # m = 1 too: the 1x1 Hessian is -c²/s² = -1/lam²
    wrong = lambda c, lam: [[-x for x in row] for row in H.hessian_formula(c, lam)]  # noqa: E731
    _fails(H.check_derivatives(hessian=wrong, ms=(1,)), "m=1: Hessian")


# ------------------------------------------------------------------------------------------
# H.2 H1
# ------------------------------------------------------------------------------------------


def test_h2_h1_passes():
    assert H.check_h1().passed


def test_h1_bound_fails_on_norm_bound_too_small():
    _fails(H.check_h1(norm_sq=lambda m: m - 1), "‖c‖² reaches", "random c in [0,1]^m")


def test_h1_bound_fails_on_norm_bound_not_tight():
    _fails(H.check_h1(norm_sq=lambda m: m + 1), "is not the tight max")


def test_h1_bound_fails_on_wrong_s_lower_bound():
    _fails(H.check_h1(s_lower=lambda c_min: 2 * c_min), "not provably ≥ 0", "s < candidate lower bound")


def test_h1_bound_fails_on_opnorm_without_square():
    _fails(H.check_h1(opnorm=lambda c: sum(c)), "candidate op norm", "numpy op norm")


def test_h1_bound_fails_on_bound_without_square():
    _fails(H.check_h1(bound=lambda n, m, c_min: n * m / c_min), "below the chained bound")


# ------------------------------------------------------------------------------------------
# H.3 H2
# ------------------------------------------------------------------------------------------


def test_h3_h2_passes():
    assert H.check_h2().passed


def test_h2_fails_on_upper_without_square():
    _fails(H.check_h2(upper=lambda c: sum(c), ms=(2, 3)), "upper - ‖c‖² has negative coefficients")


def test_h2_fails_on_bound_too_small():
    _fails(H.check_h2(bound=lambda n, m: n * m, ms=(2, 3)), "< n·m²", "not tight")


def test_h2_fails_on_bound_not_tight():
    _fails(H.check_h2(bound=lambda n, m: n * m**3, ms=(2, 3)), "not tight")


# ------------------------------------------------------------------------------------------
# H.4 numerical bounds through mtdmath.hessian
# ------------------------------------------------------------------------------------------


def test_h4_fails_on_hessian_with_wrong_sign():
    import mtdmath

    _fails(H.check_numeric_bounds(hessian=lambda lam, C: -mtdmath.hessian(lam, C), n_cases=2000),
           "not negative semidefinite")


def test_h4_fails_on_hessian_without_square():
    def no_square(lam, C):
        s = np.einsum("...ng,...g->...n", C, lam)
        Cs = C / np.sqrt(s)[..., None]
        return -np.einsum("...ng,...nh->...gh", Cs, Cs)

    _fails(H.check_numeric_bounds(hessian=no_square, n_cases=2000), "H2 bound not attained")


def test_h4_fails_on_h1_bound_without_square():
    _fails(H.check_numeric_bounds(bound_h1=lambda n, m, c_min: n * m / c_min, n_cases=2000), "H1 violated")


def test_h4_fails_on_h2_bound_without_square():
    _fails(H.check_numeric_bounds(bound_h2=lambda n, m: n * m, n_cases=2000), "H2 violated")


# ----------------------------------------------------------------------------- K.1, K.2 (steps)
SMALL_CASES = ((2, 1), (3, 1))


def test_k1_passes_and_fails_on_wrong_equivalent_steps():
    from proofs_check import steps

    assert steps.check_schedules(cases=SMALL_CASES).passed
    for wrong in (lambda e: e[0], lambda e: (e[0] + e[1]) / 2, lambda e: e[0] * e[1] + e[1]):
        res = steps.check_schedules(equivalent=wrong, cases=SMALL_CASES)
        assert not res.passed and "FAILED" in res.details


def test_k2_passes_and_fails_on_wrong_corrections():
    from proofs_check import steps

    assert steps.check_second_order_estimator(cases=SMALL_CASES).passed

    def no_correction(u, a0):
        return [0 * u[0][g] for g in range(len(u[0]))]

    def no_square_term(u, a0):  # drops -g̃²/(2(1+α₀)²)
        m = len(u[0])
        gt = [sum(row[g] for row in u) for g in range(m)]
        return [(gt[g] * gt[g] - sum(row[g] * row[g] for row in u)) / ((1 + a0) * (2 + a0)) for g in range(m)]

    def flipped(u, a0):
        return [-z for z in steps.zeta_k2(u, a0)]

    for wrong in (no_correction, no_square_term, flipped):
        res = steps.check_second_order_estimator(zeta=wrong, cases=SMALL_CASES)
        assert not res.passed and "FAILED" in res.details


# ------------------------------------------------------------------------------------------
# A.1: the context-adaptive step of the softmax-sink layer 2 (docs/math.md §5.6)
# ------------------------------------------------------------------------------------------


def test_a1_passes_on_the_docs_step():
    from proofs_check import adaptive as A

    res = A.check_adaptive_step(cases=((2, 1), (3, 1)))
    assert res.passed, res.details
    assert res.data["numeric_max_abs_diff"] <= 1e-12


@pytest.mark.parametrize("wrong, fragment", [
    (lambda n, m, c, a: c / (n + a), "c·(layer-2 weight) − candidate η(n)"),  # the step without the m
    (lambda n, m, c, a: c / (n + m + a + 1), "c·(layer-2 weight) − candidate η(n)"),  # off by one (t+2+a)
    (lambda n, m, c, a: c / (m + a), "c·(layer-2 weight) − candidate η(n)"),  # a constant step
])
def test_a1_fails_on_a_wrong_step(wrong, fragment):
    from proofs_check import adaptive as A

    res = A.check_adaptive_step(step=wrong, cases=((2, 1),))
    _fails(res, fragment, "layer-3 logits − MD logits", "numeric:")


# ------------------------------------------------------------------------------------------
# S.1: the predicted step law at n → 0 (docs/math.md, "The predicted step law")
# ------------------------------------------------------------------------------------------


def test_s1_passes_on_the_docs_intercept():
    from proofs_check import step_law as S

    res = S.check_step_law(cases=((2, 1),))
    assert res.passed, res.details
    assert res.data["numeric_eta0_abs_diff"] <= 1e-15


@pytest.mark.parametrize("wrong", [
    lambda a0, m: a0,  # the prior's total mass without the 1: η(0) = 1/α₀
    lambda a0, m: 1 + a0 + m,  # the sink's m counted twice
])
def test_s1_fails_on_a_wrong_intercept(wrong):
    from proofs_check import step_law as S

    res = S.check_step_law(intercept=wrong, cases=((2, 1),))
    _fails(res, "η(0) − η*", "first-order gap of MD at η(ν→0)", "numeric m=2: predicted_step A")
