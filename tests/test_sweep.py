"""``sweep``: grid expansion, resumability by config hash, aggregation over seeds, and the backends.

The local backend (a process pool) and the Ray backend (a local Ray instance, 2 CPUs) must give
bit-identical job results for the same grid: each job is a deterministic function of its config.
The aggregate is checked against NumPy means and standard errors of the job files themselves.
The Ray test skips when ray is not installed (it is the optional extra ``mtdmath[ray]``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdmath.experiments.cli import main
from mtdmath.experiments.sweep import JobConfig, SweepConfig, run

torch.set_num_threads(1)

GRID = ["--seeds", "0", "1", "2", "--orders", "2", "--Ts", "9", "--models", "md", "--steps", "4",
        "--batch", "4", "--n-eval", "4", "--warmup", "1", "--no-progress"]


def _jobs(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "jobs").glob("*.json"))}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep_local")
    main(["sweep", *GRID, "--jobs", "2", "--out", str(out)])
    return out


def test_local_sweep_writes_one_json_per_job_and_aggregates(local_run):
    jobs = _jobs(local_run)
    assert len(jobs) == 3 and {j["job"]["seed"] for j in jobs.values()} == {0, 1, 2}
    for key, j in jobs.items():
        assert JobConfig(**j["job"]).key() == key  # the file name is the config hash
    s = json.loads((local_run / "sweep.json").read_text())
    assert s["n_jobs"] == 3 and s["n_run"] == 3
    (gid, g), = s["groups"].items()
    # independent route: mean and s.e. over seeds from the job files
    final = np.array([j["result"]["kl_final"]["trained"] for j in jobs.values()])
    np.testing.assert_allclose(g["kl_final"]["trained"], [final.mean(), final.std(ddof=1) / np.sqrt(3)], rtol=1e-12)
    curves = np.array([j["result"]["kl_mean"]["construction"] for j in jobs.values()])
    np.testing.assert_allclose(g["kl_over_seeds"]["construction"]["mean"], curves.mean(0), rtol=1e-12)
    assert "band_difference_max" in g and len(g["seeds"]) == 3
    assert (local_run / "sweep.png").stat().st_size > 1000
    assert "mean ± s.e. over seeds" in (local_run / "sweep.md").read_text()


def test_sweep_is_resumable(local_run):
    before = {p.name: p.stat().st_mtime_ns for p in (local_run / "jobs").glob("*.json")}
    res = main(["sweep", *GRID, "--jobs", "1", "--out", str(local_run)])
    assert res["n_run"] == 0 and res["n_skipped"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in (local_run / "jobs").glob("*.json")} == before
    # one more seed: only that job runs
    res = main(["sweep", *GRID[:4], "3", *GRID[4:], "--jobs", "1", "--out", str(local_run)])
    assert res["n_run"] == 1 and res["n_jobs"] == 4


def test_ray_backend_is_bit_identical_to_local(local_run, tmp_path):
    pytest.importorskip("ray")
    main(["sweep", *GRID, "--backend", "ray", "--jobs", "2", "--out", str(tmp_path)])
    a, b = _jobs(local_run), _jobs(tmp_path)
    a = {k: v for k, v in a.items() if v["job"]["seed"] < 3}  # the resumability test added seed 3
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["result"] == b[k]["result"], k  # exact equality of every float


def test_config_validation():
    for kw, name in ((dict(backend="slurm"), "backend"), (dict(address="auto"), "address"),
                     (dict(seeds=()), "seeds"), (dict(models=("md4",)), "model spec"), (dict(Ts=(3,)), "Ts"),
                     (dict(steps=(0,)), "steps")):
        with pytest.raises(ValueError, match=name):
            SweepConfig(**kw)


def test_changing_a_field_changes_the_hash():
    a = JobConfig(seed=0, m=2, T=9, model="md", steps=4)
    assert a.key() == JobConfig(seed=0, m=2, T=9, model="md", steps=4).key()
    assert a.key() != JobConfig(seed=0, m=2, T=9, model="md", steps=5).key()
    assert a.key() != JobConfig(seed=1, m=2, T=9, model="md", steps=4).key()


def test_run_in_process_matches_pool(local_run, tmp_path):
    # jobs=1 runs in this process: same results as the spawned pool workers
    cfg = SweepConfig.quick(seeds=(1,), Ts=(9,), steps=(4,), batch=4, n_eval=4, warmup=1, d_model=32)
    run(cfg, tmp_path, seed=0, device=torch.device("cpu"), progress=False)
    (k, v), = _jobs(tmp_path).items()
    assert _jobs(local_run)[k]["result"] == v["result"]
