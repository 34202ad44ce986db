"""The ``phase`` experiment: a ``--quick`` run through the CLI, its numbers against independent routes.

Independent routes: a cell's gap recomputed from its own streams with ``md_predictive_all_prefixes``
(the cumulative-sum kernel, not ``task_kl``'s per-L route) and ``mtdmath.kl``; the law's step from the
recorded (A, c∞); the pass flags and the failing list from the tolerance; a rerun that resumes from the
job files and gives the same JSON; a tolerance of 0 that fails the cells the default passes.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import mtdmath

torch = pytest.importorskip("torch")
from mtdmath.experiments import common as exp_common  # noqa: E402
from mtdmath.experiments import phase as P  # noqa: E402
from mtdmath.experiments.cli import main  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("phase")
    res = main(["phase", "--quick", "--out", str(out), "--seed", "3", "--no-progress"])
    return out, res


def test_quick_run_writes_its_files_and_verdicts(quick_run):
    out, res = quick_run
    for name in ("phase.json", "phase.png", "phase.md", "config.yaml"):
        assert (out / name).is_file()
    back = P.PhaseResult.read(out / "phase.json")
    cfg = P.PhaseConfig.quick()
    assert back.n_cells == len(cfg.orders) * len(cfg.alpha0s) * len(cfg.concentrations) * len(cfg.sizes)
    for c in back.cells:
        rows = {r.L: r for r in c.rows}
        assert sorted(rows) == [L for L in cfg.Ls if L >= c.m + 1]
        # the cell's gap is its largest over L, the verdicts follow from the tolerance
        assert c.gap == max((r.gap for r in c.rows), key=lambda g: g[0]) and c.gap_L in rows
        assert c.passed == (c.gap[0] <= cfg.tolerance)
        assert c.significantly_above == (c.gap[0] - 2 * c.gap[1] > cfg.tolerance)
        assert all(r.gap[1] > 0 and math.isfinite(r.gap[0]) for r in c.rows)
        # the law's step at n = L − m, from the recorded intercept and c∞ (one division each)
        for t, law in enumerate(c.laws):
            assert law.A == 1 + c.alpha0
            for r in c.rows:
                assert r.eta_law[t] == pytest.approx(1 / (law.A + r.n / law.c_inf), rel=1e-14)
    assert back.n_pass == sum(c.passed for c in back.cells) and len(back.failing) == back.n_cells - back.n_pass
    assert back.pass_rate == pytest.approx(back.n_pass / back.n_cells)
    # the trained models: every (T, seed, spec), and a row per T for the fixed model (the sink's needs 3 valid n)
    assert len(back.trained) == len(cfg.train_Ts) * cfg.train_seeds * 2
    assert {r.T for r in back.learned_vs_predicted if r.quantity == "eta (fixed)"} == set(cfg.train_Ts)
    for r in back.learned_vs_predicted:
        se = math.sqrt(r.learned.se ** 2 + r.predicted_se ** 2)
        assert r.z == pytest.approx((r.learned.mean - r.predicted) / se)
        assert r.within_2se == (abs(r.z) <= 2)
    assert "cells pass" in (out / "phase.md").read_text()


def test_a_cell_gap_against_the_all_prefix_kernel(quick_run):
    """Recompute one cell's per-task gap at its largest L from the job's own streams, through
    ``md_predictive_all_prefixes`` (a per-prefix step array) and ``mtdmath.kl`` at the last prefix."""
    out, res = quick_run
    cfg = P.PhaseConfig.quick()
    cell = res.cells[-1]
    job = next(j for j in P.grid_jobs(cfg, 3) if isinstance(j, P.CellJob) and j.m == cell.m)
    alpha = np.full(job.m, job.alpha0 / job.m)
    L = max(cfg.Ls)
    row = next(r for r in cell.rows if r.L == L)
    gaps, ses = [], []
    for t in range(job.tasks):
        pi = mtdmath.random_transition_matrix(job.S, concentration=job.concentration, rng=exp_common.rng_for(3, *job.keys(t)))
        y, lam = mtdmath.sample_icl(pi, alpha, L + 1, job.n_eval, rng=exp_common.rng_for(3, *job.keys(t, 3, L)))
        p_true = mtdmath.predictive(lam, y[:, :L], pi)
        kls = []
        for eta in (row.eta_law[t], row.eta_opt[t]):
            p = mtdmath.md_predictive_all_prefixes(y[:, :L], pi, alpha, eta=np.full((1, L - job.m + 1), eta))[:, -1]
            kls.append(mtdmath.kl(p_true, p))
        d = kls[0] - kls[1]
        gaps.append(d.mean())
        ses.append(d.std(ddof=1) / math.sqrt(d.size))
    # two float64 routes to the same KLs (differences of O(1e-3) nats): rounding far below 1e-10
    assert row.gap[0] == pytest.approx(np.mean(gaps), abs=1e-10)
    assert row.gap[1] == pytest.approx(math.sqrt(np.sum(np.square(ses))) / job.tasks, rel=1e-6)


def test_resume_skips_finished_jobs_and_a_zero_tolerance_fails(quick_run, tmp_path, capsys):
    out, res = quick_run
    again = main(["phase", "--quick", "--out", str(out), "--seed", "3", "--no-progress"])
    assert "0 jobs run" in capsys.readouterr().err
    assert [c.gap for c in again.cells] == [c.gap for c in res.cells]
    # the check can fail: a tolerance below every gap's magnitude fails every cell with a positive gap
    strict = main(["phase", "--quick", "--out", str(out), "--seed", "3", "--no-progress", "--tolerance", "1e-12"])
    assert [c.passed for c in strict.cells] == [c.gap[0] <= 1e-12 for c in res.cells]
    assert strict.n_pass <= res.n_pass
    data = json.loads((out / "phase.json").read_text())
    assert data["config"]["tolerance"] == 1e-12


@pytest.mark.parametrize("argv, msg", [
    (["--orders", "0"], "orders must be an integer in 1 … 64"),
    (["--sizes", "1"], "sizes must be >= 2"),
    (["--tolerance", "0"], "tolerance must be a finite number > 0"),
    (["--Ls", "3", "--orders", "5"], "Ls must hold an L >= m + 1"),
    (["--address", "auto"], "address is only used with --backend ray"),
])
def test_bad_configs_are_named(argv, msg, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["phase", "--quick", "--out", str(tmp_path / "o"), *argv])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_one_lag_is_refused_in_python():
    with pytest.raises(ValueError, match="orders must be >= 2"):
        P.PhaseConfig.quick(orders=(1, 2))
