"""The fits of ``stepsize`` (1/η_opt against n = L − m) against an independent route.

:func:`mtdmath.experiments.stepsize.fit_forms` solves each weighted least-squares problem with
``numpy.linalg.lstsq``; here the same fits are done by ``scipy.optimize.curve_fit`` (a
Levenberg–Marquardt fit of η itself transformed to y = 1/η, with ``sigma`` and
``absolute_sigma``), and χ² is recomputed by hand. The problems are linear in the parameters, so
both routes find the same minimum: 1e-6 relative is far above LM's default tolerances' effect
(~1e-8) and far below any difference between the forms. No runs of the experiment here (the
``--quick`` run is checked in test_experiments.py).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from mtdmath.experiments.stepsize import FORMS, StepsizeConfig, best_form, fit_forms


def _data(rng: np.random.Generator, truth: str, m: int = 3, alpha0: float = 4.5, rel_noise: float = 0.01):
    L = np.array([8, 16, 32, 64, 128, 256])
    n = L - m
    y_true = {"c/(alpha0+n)": (alpha0 + n) / 0.9, "c/L": L / 0.9, "A+B*n": 12.0 + 0.5 * n}[truth]
    eta_true = 1.0 / y_true
    eta_se = rel_noise * eta_true
    eta = eta_true + eta_se * rng.standard_normal(L.size)
    return n, L, eta, eta_se


@pytest.mark.parametrize("truth", FORMS)
def test_fit_forms_matches_curve_fit(truth):
    rng = np.random.default_rng(7)
    alpha0, m = 4.5, 3
    n, L, eta, eta_se = _data(rng, truth, m, alpha0)
    fit = fit_forms(n, L, eta, eta_se, alpha0)
    y, sy = 1.0 / eta, eta_se / eta ** 2
    models = {"c/L": (lambda x, c: x[1] / c, [1.0]), "c/(alpha0+n)": (lambda x, c: (alpha0 + x[0]) / c, [1.0]),
              "A+B*n": (lambda x, A, B: A + B * x[0], [1.0, 1.0])}
    for form, (f, p0) in models.items():
        popt, pcov = optimize.curve_fit(f, np.stack([n, L]).astype(float), y, p0=p0, sigma=sy, absolute_sigma=True)
        chi2 = float(np.sum(((y - f(np.stack([n, L]).astype(float), *popt)) / sy) ** 2))
        got = fit[form]
        want = {"c": popt[0]} if form != "A+B*n" else {"A": popt[0], "B": popt[1]}
        for k, v in want.items():
            assert got.params[k] == pytest.approx(v, rel=1e-6)
        # standard errors: curve_fit's covariance (absolute sigma) against the WLS one; c = 1/β by the delta
        # method, so its s.e. is LM's s.e. of c itself to first order (LM fits c directly: the same linearisation)
        want_se = {"c": np.sqrt(pcov[0, 0])} if form != "A+B*n" else {"A": np.sqrt(pcov[0, 0]), "B": np.sqrt(pcov[1, 1])}
        for k, v in want_se.items():
            assert got.params_se[k] == pytest.approx(v, rel=1e-5)
        assert got.chi2 == pytest.approx(chi2, rel=1e-6, abs=1e-9)
        assert got.dof == len(y) - len(p0)
        assert got.p_value == pytest.approx(stats.chi2.sf(chi2, len(y) - len(p0)), rel=1e-6, abs=1e-12)
    # the generating form fits (χ²/dof of order 1 with 1 % noise); it is the best or tied with a
    # form that contains it (A + B·n contains c/(α₀+n) and c/L)
    assert fit[truth].chi2_dof < 5.0
    assert best_form(fit) in (truth, "A+B*n")


def test_wrong_form_is_rejected():
    """Data exactly of the form c/(α₀+n) with α₀ = 4.5 ≠ m: η = c/L must fail the χ² test badly
    (the offset α₀ − m = 1.5 is ~16 % of 1/η at L = 8 against 1 % noise; the one-parameter fit spreads
    the misfit over all L, so χ²/dof is tens, not hundreds), the true form must pass."""
    rng = np.random.default_rng(11)
    n, L, eta, eta_se = _data(rng, "c/(alpha0+n)")
    fit = fit_forms(n, L, eta, eta_se, 4.5)
    assert fit["c/L"].chi2_dof > 10 and fit["c/L"].p_value < 1e-6
    assert fit["c/(alpha0+n)"].p_value > 1e-3


def test_uniform_alpha_makes_the_two_one_parameter_forms_identical():
    """With alpha = 1·1_m, α₀ + n = m + (L − m) = L: the two one-parameter forms coincide (why the
    experiment includes a non-uniform alpha)."""
    rng = np.random.default_rng(3)
    n, L, eta, eta_se = _data(rng, "c/L", m=2, alpha0=2.0)
    fit = fit_forms(n, L, eta, eta_se, 2.0)
    assert fit["c/L"].chi2 == pytest.approx(fit["c/(alpha0+n)"].chi2, rel=1e-12)


@pytest.mark.parametrize("kw, words", [
    (dict(orders=(1,)), "orders must be"), (dict(Ls=()), "Ls must be"), (dict(n_boot=1), "n_boot must be an integer in 2 "),
    (dict(nonuniform_alpha=(1.0, -1.0)), "nonuniform_alpha"), (dict(n_eval=1), "n_eval must be an integer in 2 "),
    (dict(bayes_budget=-1.0), "bayes_budget must be a finite number > 0")])
def test_config_errors(kw, words):
    with pytest.raises(ValueError, match=words):
        StepsizeConfig(**kw)
