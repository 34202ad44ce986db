"""The ``adaptive`` experiment: its vectorised objective against the core, its fits, and a smoke run.

Independent routes: the precomputed ``PrefixObjective`` against ``md_predictive_all_prefixes`` with a
per-prefix step and ``mtdmath.kl``; the fitted optima against the nested families they contain
(the Bayes-consistent one-parameter form, the constant step as the a → ∞ limit) and against
perturbations of the per-L steps.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

import mtdmath

torch = pytest.importorskip("torch")
from mtdmath.experiments import adaptive as A  # noqa: E402
from mtdmath.experiments import common as exp_common  # noqa: E402
from mtdmath.experiments.cli import main  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def objective():
    pi, alpha = exp_common.make_task(3, 2, 5, 0.5, 1.0)
    y, lam = mtdmath.sample_icl(pi, alpha, 40, 64, rng=0)
    return A.PrefixObjective(y, lam, pi, alpha), y, lam, pi, alpha


def test_prefix_objective_equals_the_core(objective):
    obj, y, lam, pi, alpha = objective
    eta = obj.adaptive_eta(3.0, 7.0)
    want = mtdmath.kl(exp_common.truth_all_prefixes(y, lam, pi), mtdmath.md_predictive_all_prefixes(y, pi, alpha, eta=eta[None]))
    # the same float64 softmax and contraction in another order; KLs are O(1e-2), rounding O(1e-16)
    np.testing.assert_allclose(obj.kl(eta), want, rtol=1e-9, atol=1e-13)
    assert obj.objective(eta) == pytest.approx(float(want.mean()), rel=1e-10)
    rows = np.array([3, 10])
    np.testing.assert_allclose(obj.kl(eta[rows], rows), want[:, rows], rtol=1e-9, atol=1e-13)


def test_fits_are_optima_of_their_families(objective):
    obj, *_, alpha = objective
    fits = A.fit_steps(obj, alpha, n_boot=2, rng=np.random.default_rng(0), start=(4.0, 8.0))
    d, cs, et = fits.direct, fits.consistent, fits.eta_train
    # the consistent form is a subset of (c, a): its optimum cannot be lower (1e-10: the optimisers' tolerance)
    assert d.objective <= cs.objective + 1e-10
    # the constant step is the a -> ∞ limit of c/(n+m+a); inside the bounds it is reached to ~n/a ~ 1e-3 relative
    assert d.objective <= et.objective * (1 + 1e-3)
    assert obj.objective(obj.adaptive_eta(d.c, d.a)) == pytest.approx(d.objective, rel=1e-12)
    # per-L steps: each minimises its own row; 5 % away the row's mean KL is higher
    eo = fits.eta_opt_L
    for j in (0, len(eo.n) // 2, len(eo.n) - 1):
        r = np.array([eo.n[j]])
        f = lambda e: float(obj.kl(np.array([e]), r).mean())  # noqa: E731
        assert f(eo.eta[j]) <= min(f(eo.eta[j] * 1.05), f(eo.eta[j] / 1.05))
    assert np.all(np.isfinite(eo.se)) and d.c_se >= 0


def test_config_validation():
    with pytest.raises(ValueError, match=r"\bm must be >= 2"):
        A.AdaptiveConfig(m=1)
    with pytest.raises(ValueError, match=r"\bseeds must be distinct"):
        A.AdaptiveConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match=r"\btable_L"):
        A.AdaptiveConfig(T=64)  # the default table has L = 128 > T
    with pytest.raises(ValueError, match=r"\bk_tuned"):
        A.AdaptiveConfig(k_tuned=(1,))


def test_adaptive_subcommand_quick(tmp_path, capsys):
    from mtdmath.nn import ICLTask, StandardTransformer, save_checkpoint

    pi, alpha = exp_common.make_task(0, 2, 4, 0.5, 1.0)
    std = StandardTransformer(4, 2, n_layers=1, d_model=8, n_heads=2, max_len=17,
                              generator=torch.Generator().manual_seed(0))
    ck = save_checkpoint(tmp_path / "std1.pt", std, task=ICLTask(pi, alpha, T=17))
    out = tmp_path / "run"
    t0 = time.perf_counter()
    res = main(["adaptive", "--quick", "--out", str(out), "--no-progress", "--std-checkpoints", str(ck),
                str(tmp_path / "missing.pt")])
    assert time.perf_counter() - t0 < 30
    for f in ("adaptive.json", "adaptive.png", "adaptive.md"):
        assert (out / f).is_file(), f
    data = A.AdaptiveResult.read(out / "adaptive.json")
    assert json.loads((out / "adaptive.json").read_text())["experiment"] == "adaptive"
    assert set(data.trained) == {"0", "1"} and data.trained["1"]["adaptive"].step.a_param > 0
    for key in ("md1", "md1_eta_train", "md1_eta_opt_L", "bayes", "md2_tuned", "adaptive_direct",
                "adaptive_consistent", "trained_fixed", "trained_adaptive"):
        assert key in data.kl_mean and len(data.kl_mean[key]) == len(data.L), key
    assert any(rec.skipped is None for rec in data.constructed.values())
    for key, rec in data.constructed.items():
        if rec.skipped is None:
            # the constructed transformer and the core's per-prefix step compute the same numbers in float64
            assert rec.max_abs_diff_vs_core < 1e-10, key
    assert set(data.paired_adaptive_minus_fixed_trained.pooled) == {"8", "16", "20"}
    assert data.standard["std1"].skipped is None and data.standard["std1"].eta_matched is not None
    assert data.standard["missing"].skipped == "checkpoint not found"
    # the verdict reads the paired difference it names: the same numbers, by type
    pd = data.paired_diff("adaptive_direct", "md1_eta_train")
    assert pd is not None and set(data.verdict.adaptive_construction_vs_constant_eta_train) == set(pd.per_L)
    assert (out / "checkpoints" / "seed1" / "mdsink.safetensors").is_file()
    md = (out / "adaptive.md").read_text()
    assert "KL(trained adaptive) − KL(trained fixed)" in md and "std1" in md
    assert res.fits.direct.c > 0


def test_cli_reports_a_bad_option_in_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["adaptive", "--quick", "--seeds", "1", "1", "--out", str(tmp_path / "never")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: seeds must be distinct") and err.count("\n") == 1
