"""``sweep``: the grid over any job field, resumability by config hash, the tidy table, the backends.

The done-when test: one sweep from a YAML file (``docs/guide/sweep_lr_alpha.yaml``: learning
rate × alpha × seeds) runs on the local process pool, on a local Ray instance and on submitit's
local executor, and the three results tables (``load_sweep``) are equal, float for float: each
job is a deterministic function of its config. The tidy table and the summary are checked against
the job files themselves (an independent route: the JSON each job wrote, NumPy means and standard
errors). Ray and submitit are optional extras: their tests skip when the package is missing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtdmath.experiments.cli import main
from mtdmath.experiments.sweep import JobConfig, SweepConfig, load_result, load_sweep, run

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "docs" / "guide" / "sweep_lr_alpha.yaml"


def _sweep(out: Path, *extra: str):
    return main(["sweep", "--config", str(YAML), "--out", str(out), "--no-progress", *extra])


def _jobs(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "jobs").glob("*.json"))}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep_local")
    _sweep(out)
    return out


def test_the_yaml_grid_is_lr_by_alpha_by_seeds(local_run):
    df = load_sweep(local_run)
    jobs = df.drop_duplicates("job")
    assert len(jobs) == 8
    assert sorted(map(tuple, jobs[["lr", "alpha", "seed"]].to_numpy().tolist())) == [
        (lr, a, s) for lr in (0.01, 0.03) for a in (0.5, 1.0) for s in (0.0, 1.0)]
    assert {"kl_final_trained", "kl_final_construction", "kl_final_bayes", "band_difference_max",
            "gap_trained_minus_construction_final", "final_train_loss"} <= set(df["metric"])
    assert len(df) == 8 * df["metric"].nunique()  # one row per job and metric


def test_tidy_table_and_summary_match_the_job_files(local_run):
    df = load_sweep(local_run / "results.csv")
    files = _jobs(local_run)
    for key, j in files.items():
        assert JobConfig(**j["job"]).key() == key  # the file name is the config hash
        rows = df[df["job"] == key].set_index("metric")["value"]
        assert rows["kl_final_trained"] == j["kl_final"]["trained"]  # exact: written with repr
        assert rows["band_difference_max"] == j["band_difference_max"]
        assert rows["final_train_loss"] == j["loss"][-1]
    summary = pd.read_csv(local_run / "summary.csv")
    for (lr, alpha), grp in df[df["metric"] == "kl_final_trained"].groupby(["lr", "alpha"]):
        vals = np.array([files[k]["kl_final"]["trained"] for k in grp["job"]])
        row = summary[(summary["lr"] == lr) & (summary["alpha"] == alpha) & (summary["metric"] == "kl_final_trained")]
        np.testing.assert_allclose(row["mean"], vals.mean(), rtol=1e-12)
        np.testing.assert_allclose(row["se"], vals.std(ddof=1) / np.sqrt(vals.size), rtol=1e-12)
        assert int(row["n"].iloc[0]) == 2
    assert (local_run / "sweep.png").stat().st_size > 1000
    assert "mean ± s.e. over seeds" in (local_run / "sweep.md").read_text()


def _equal_tables(a: Path, b: Path) -> None:
    ta, tb = load_sweep(a), load_sweep(b)
    key = ["job", "metric"]
    pd.testing.assert_frame_equal(ta.sort_values(key).reset_index(drop=True),
                                  tb.sort_values(key).reset_index(drop=True), check_exact=True)
    ja, jb = _jobs(a), _jobs(b)
    assert ja.keys() == jb.keys()
    for k in ja:  # every curve too, float for float (the timings differ)
        for f in ("kl_mean", "kl_se", "loss"):
            assert ja[k][f] == jb[k][f], (k, f)


def test_ray_backend_gives_the_same_table(local_run, tmp_path):
    pytest.importorskip("ray")
    _sweep(tmp_path, "--backend", "ray")
    _equal_tables(local_run, tmp_path)


def test_submitit_local_executor_gives_the_same_table(local_run, tmp_path):
    pytest.importorskip("submitit")
    _sweep(tmp_path, "--backend", "submitit", "--submitit-cluster", "local", "--slurm-time-min", "10")
    _equal_tables(local_run, tmp_path)
    assert any((tmp_path / "submitit").iterdir())  # submitit's own logs and pickles


def test_sweep_is_resumable(local_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(local_run, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "jobs").glob("*.json")}
    res = _sweep(out, "--jobs", "1")
    assert res.n_run == 0 and res.n_skipped == 8
    assert {p.name: p.stat().st_mtime_ns for p in (out / "jobs").glob("*.json")} == before
    # one more seed: only its four jobs run (lr × alpha)
    res = _sweep(out, "--jobs", "1", "--seeds", "0", "1", "2")
    assert res.n_run == 4 and res.n_jobs == 12
    assert load_sweep(out).drop_duplicates("job").shape[0] == 12


def test_run_in_process_matches_pool(local_run, tmp_path):
    # jobs=1 runs in this process: same results as the spawned pool workers
    cfg = SweepConfig(seeds=(1,), orders=(2,), Ts=(9,), models=("md",), steps=(4,), batch=4, warmup=1, n_eval=4,
                      lr=0.03, alpha=0.5, jobs=1)
    run(cfg, tmp_path, seed=0, device=torch.device("cpu"), progress=False)
    (k, v), = _jobs(tmp_path).items()
    assert _jobs(local_run)[k]["kl_mean"] == v["kl_mean"]
    assert load_result(tmp_path / "jobs" / f"{k}.json").job == JobConfig(**v["job"])


def test_any_job_field_is_an_axis():
    cfg = SweepConfig(seeds=(0,), models=("std",), steps=(3,),
                      axes={"n_layers": [1, 2], "weight_decay": [0.0, 0.1], "concentration": [0.5, 2.0],
                            "S": [4, 8], "T": [9, 17]})
    grid = cfg.grid("cpu")
    assert len(grid) == 2 ** 5
    assert {(j.n_layers, j.weight_decay, j.concentration, j.S, j.T) for j in grid} == {
        (a, b, c, d, e) for a in (1, 2) for b in (0.0, 0.1) for c in (0.5, 2.0) for d in (4, 8) for e in (9, 17)}
    assert {j.name() for j in grid} == {"std1", "std2"}
    assert len({j.key() for j in grid}) == len(grid)


def test_config_validation():
    for kw, name in ((dict(backend="slurm"), "backend"), (dict(address="auto"), "address"),
                     (dict(seeds=()), "seeds"), (dict(models=("md4",)), "model spec"), (dict(Ts=(3,)), "T must be"),
                     (dict(steps=(0,)), "steps"), (dict(axes={"lr": []}), "axes: lr"),
                     (dict(axes={"device": ["cuda"]}), "not a job field"),
                     (dict(axes={"alpha": [1.0, float("inf")]}), "alpha must be a finite number > 0")):
        with pytest.raises(ValueError, match=name):
            SweepConfig(**kw)


def test_changing_a_field_changes_the_hash():
    a = JobConfig(seed=0, m=2, T=9, model="md", steps=4)
    assert a.key() == JobConfig(seed=0, m=2, T=9, model="md", steps=4).key()
    for kw in (dict(steps=5), dict(seed=1), dict(lr=0.01), dict(alpha=0.5), dict(weight_decay=0.0)):
        assert a.key() != JobConfig(**(dict(seed=0, m=2, T=9, model="md", steps=4) | kw)).key(), kw


def test_load_sweep_names_a_missing_table(tmp_path):
    with pytest.raises(ValueError, match="path: .* is not a sweep's results.csv"):
        load_sweep(tmp_path)


def test_a_ray_token_is_found_where_ray_looks_for_it(monkeypatch, tmp_path):
    from mtdmath.experiments.sweep import RAY_AUTH_HINT, _ray_token_available

    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not _ray_token_available()
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t")
    assert _ray_token_available()  # the default file
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    assert not _ray_token_available()  # a named file that is not there
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t")
    assert _ray_token_available()
    assert "RAY_AUTH_MODE=token" in RAY_AUTH_HINT
