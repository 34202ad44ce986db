"""The command line's configuration layer: bad values, YAML configs, ``--print_config``, help text.

Every bad argument must end in exactly one ``error: …`` line on stderr and exit status 2, before
any work (no traceback, no run directory left half-written). The cases are the ones that used to
end in a traceback: non-finite or negative hyperparameters, heads that do not divide the width,
sizes that would allocate without bound, an output path that cannot be a directory, corrupted
checkpoints. The constraint lives in the config's field types; ``check_fields`` applies the same
types to configs built in Python, so both routes are tested.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtdmath.experiments import config as C
from mtdmath.experiments.cli import EXPERIMENTS, build_parser, main
from mtdmath.experiments.compare import CompareConfig
from mtdmath.experiments.stepsize import StepsizeConfig
from mtdmath.experiments.train import TrainConfig
from mtdmath.nn import ICLTask, MDTransformer, StandardTransformer, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]

BAD = [
    (["train", "--lr-md", "inf"], "lr_md must be a finite number > 0 (got inf)"),
    (["train", "--grad-clip", "inf"], "grad_clip must be a finite number > 0 (got inf)"),
    (["train", "--alpha", "inf"], "alpha must be a finite number > 0 (got inf)"),
    (["train", "--concentration", "inf"], "concentration must be a finite number > 0 (got inf)"),
    (["train", "--wd-md", "-1"], "wd_md must be a finite number >= 0 (got -1)"),
    (["train", "--wd-md", "nan"], "wd_md must be a finite number >= 0 (got nan)"),
    (["train", "--quick", "--models", "std:L=2", "--n-heads", "3"], "n_heads=3 does not divide d_model=16"),
    (["train", "--T", "1000000000"], "T must be an integer in 2 … 4096"),
    (["train", "--S", "1000000000"], "S must be an integer in 1 … 4096"),
    (["train", "--batch", "1000000000"], "batch must be an integer in 1 … 65536"),
    # within its own range, but the attention scores would not fit: refused before any allocation
    (["train", "--batch", "65536", "--T", "4096"], "attention scores exceeds"),
    (["stepsize", "--bayes-budget", "-1"], "bayes_budget must be a finite number > 0 (got -1)"),
    (["stepsize", "--bayes-budget", "nan"], "bayes_budget must be a finite number > 0 (got nan)"),
    (["estimators", "--em-steps", "-1"], "em_steps must be an integer in 0"),
    (["sweep", "--quick", "--axes", "{lr: [0.01, -1]}"], "lr must be a finite number > 0 (got -1)"),
    (["sweep", "--quick", "--axes", "{depth: [2]}"], "axes: 'depth' is not a job field"),
    (["sweep", "--quick", "--backend", "slurm"], "backend must be one of 'local', 'ray', 'submitit'"),
    (["train", "--device", "tpu"], "device must be one of 'cpu', 'cuda'"),
    (["train", "--no-such-option", "1"], "unrecognized arguments"),
]


def _one_error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("argv, words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_argument_is_one_line_exit_2(argv, words, capsys, tmp_path):
    out = tmp_path / "out"
    line = _one_error_line(capsys, [*argv, "--out", str(out), "--no-progress"])
    assert words in line, line
    assert not out.exists()  # refused before anything was written


def test_out_that_is_a_file_or_under_a_file(capsys, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    line = _one_error_line(capsys, ["train", "--quick", "--out", str(f), "--no-progress"])
    assert line == f"error: out: {f} is a regular file, not a directory"
    line = _one_error_line(capsys, ["train", "--quick", "--out", str(f / "sub"), "--no-progress"])
    assert line.startswith(f"error: out: cannot write to {f / 'sub'}")
    assert f.read_text() == "x"


def test_unwritable_out(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        probe = ro / "probe"
        try:  # root writes anywhere: then the case cannot be made with permissions
            probe.write_text("")
            probe.unlink()
            pytest.skip("running as a user who can write to a read-only directory")
        except PermissionError:
            pass
        line = _one_error_line(capsys, ["estimators", "--quick", "--out", str(ro / "x"), "--no-progress"])
        assert line.startswith(f"error: out: cannot write to {ro / 'x'}")
    finally:
        ro.chmod(0o700)


@pytest.fixture()
def checkpoint_dirs(tmp_path) -> dict[str, Path]:
    """Directories with one corrupt checkpoint each: random bytes, and a real one cut in half."""
    gen = torch.Generator().manual_seed(0)
    good = tmp_path / "good"
    pi = torch.full((4, 4), 0.25, dtype=torch.float64)
    task = ICLTask(pi, np.ones(2), T=16)
    md = save_checkpoint(good / "md.safetensors", MDTransformer(4, 2, generator=gen), task=task)
    # `.pt`: the name earlier runs gave the same safetensors files, still read
    std = save_checkpoint(good / "std2.pt", StandardTransformer(4, 2, n_layers=2, d_model=8, n_heads=2, max_len=16,
                                                                generator=gen), task=task)
    dirs = {}
    for kind in ("garbage", "truncated"):
        d = tmp_path / kind
        d.mkdir()
        for p in (md, std):
            data = p.read_bytes()
            (d / p.name).write_bytes(b"\x00not a checkpoint\xff" * 7 if kind == "garbage" else data[: len(data) // 2])
        dirs[kind] = d
    return dirs


@pytest.mark.parametrize("cmd", ["compare", "depth"])
@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupted_checkpoint_is_one_line_exit_2(cmd, kind, checkpoint_dirs, capsys, tmp_path):
    ck = checkpoint_dirs[kind]
    line = _one_error_line(capsys, [cmd, "--quick", "--checkpoints", str(ck), "--out", str(tmp_path / "o"),
                                    "--no-progress"])
    assert line.startswith(f"error: checkpoints: cannot load {ck}"), line


def test_checkpoint_directories_read_both_suffixes_and_refuse_a_name_twice(checkpoint_dirs, tmp_path):
    from mtdmath.experiments.common import ConfigError
    from mtdmath.experiments.compare import load_models

    good = checkpoint_dirs["garbage"].parent / "good"
    models, _, _, _ = load_models(good, torch.device("cpu"), required=("md", "std"))
    assert list(models) == ["md", "std2"]
    (good / "md.pt").write_bytes((good / "md.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="holds both md.safetensors and md.pt"):
        load_models(good, torch.device("cpu"))
    # md3: the disentangled model's earlier name, read as md
    (good / "md.pt").rename(good / "md3.pt")
    with pytest.raises(ConfigError, match=r"holds both md.safetensors and md3.pt \(md3 is md's earlier name\)"):
        load_models(good, torch.device("cpu"))
    (good / "md.safetensors").unlink()
    models, _, _, _ = load_models(good, torch.device("cpu"), required=("md", "std"))
    assert list(models) == ["md", "std2"] and isinstance(models["md"], MDTransformer)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_adaptive_refuses_a_corrupted_standard_checkpoint_before_training(kind, checkpoint_dirs, capsys, tmp_path,
                                                                          monkeypatch):
    import mtdmath.experiments.adaptive as A

    def no_training(*a, **k):
        raise AssertionError("adaptive trained before reading its checkpoints")

    monkeypatch.setattr(A, "_train_pair", no_training)
    monkeypatch.setattr(A, "stepsize_eta_opt", no_training)  # the first phase of the run
    bad = checkpoint_dirs[kind] / "std2.pt"
    out = tmp_path / "o"
    line = _one_error_line(capsys, ["adaptive", "--quick", "--std-checkpoints", str(bad), "--out", str(out),
                                    "--no-progress"])
    assert line.startswith(f"error: checkpoints: cannot load {bad}"), line
    assert not (out / "checkpoints").exists()


def test_errors_print_no_traceback_in_a_fresh_process():
    r = subprocess.run([sys.executable, "-m", "mtdmath.experiments", "train", "--lr-md", "inf"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: lr_md must be a finite number > 0 (got inf)"]


# --------------------------------------------------------------------------- configs from Python
@pytest.mark.parametrize("cls, kw, words", [
    (TrainConfig, dict(lr_md=float("inf")), "lr_md must be a finite number > 0"),
    (TrainConfig, dict(wd_std=-0.1), "wd_std must be a finite number >= 0"),
    (TrainConfig, dict(T=3), "T must be >= m + 2"),
    (TrainConfig, dict(models=("std:L=2",), d_model=30, n_heads=4), "n_heads=4 does not divide d_model=30"),
    (StepsizeConfig, dict(bayes_budget=float("nan")), "bayes_budget must be a finite number > 0"),
    (StepsizeConfig, dict(orders=(2, 0)), "orders must be an integer in 1 … 64 (got 0)"),
    (CompareConfig, dict(n_eval=1), "n_eval must be an integer in 2"),
    (TrainConfig, dict(reference=1), None),  # a bool field takes any truth value: no constraint to break
])
def test_python_configs_check_their_field_types(cls, kw, words):
    if words is None:
        cls(**kw)
        return
    with pytest.raises(ValueError, match=re.escape(words)):
        cls(**kw)


def test_every_bounded_type_rejects_nan_and_its_bounds():
    # the types themselves, against the descriptions printed in the errors
    for tp, text in C.DESCRIPTIONS.items():
        for bad in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ValueError):
                tp(bad)
        if "1 …" in text:
            with pytest.raises(ValueError):
                tp(0)
            tp(1)


# --------------------------------------------------------------------------- YAML and --print_config
def test_print_config_reruns_the_same_config(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", "--quick", "--models", "md", "--lr-md", "0.02", "--alpha", "0.5", "--print_config"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    cfg = yaml.safe_load(text)
    assert cfg["lr_md"] == 0.02 and cfg["alpha"] == 0.5 and cfg["models"] == ["md"] and cfg["T"] == 17
    path = tmp_path / "train.yaml"
    path.write_text(text)
    # the file alone gives the same parsed values as the command line
    parser = build_parser()
    a = parser.parse_args(["train", "--config", str(path)])["train"]
    b = build_parser(quick=True).parse_args(["train", "--quick", "--models", "md", "--lr-md", "0.02",
                                             "--alpha", "0.5"])["train"]
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert {k: a[k] for k in fields} == {k: b[k] for k in fields}
    # options after --config win
    c = parser.parse_args(["train", "--config", str(path), "--lr_md", "0.05"])["train"]
    assert c["lr_md"] == 0.05 and c["alpha"] == 0.5


def test_a_run_writes_its_config_and_reruns_from_it(tmp_path):
    out = tmp_path / "e"
    first = main(["estimators", "--quick", "--orders", "2", "--T", "8", "--concentration", "0.7", "--out", str(out),
                  "--no-progress"])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["concentration"] == 0.7 and saved["orders"] == [2] and saved["T"] == 8
    again = main(["estimators", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "e2")])
    assert again.config == first.config
    assert again.results["m=2"].kl_mean == first.results["m=2"].kl_mean  # the same numbers, bit for bit


def test_quick_in_a_yaml_file_means_quick(capsys, tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("quick: true\nmodels: [md]\nlr_md: 0.02\n")
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(path), "--print_config"])
    assert e.value.code == 0
    from_file = yaml.safe_load(capsys.readouterr().out)
    with pytest.raises(SystemExit):
        main(["train", "--quick", "--models", "md", "--lr-md", "0.02", "--print_config"])
    from_flag = yaml.safe_load(capsys.readouterr().out)
    assert from_file == from_flag
    # the quick defaults differ from the full ones, so the comparison can fail
    full = yaml.safe_load(path.read_text().replace("quick: true", "quick: false"))
    path.write_text(yaml.safe_dump(full))
    with pytest.raises(SystemExit):
        main(["train", "--config", str(path), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["T"] != from_flag["T"]


def test_a_bad_value_in_a_yaml_file_is_one_line(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr_md: .inf\nmodels: [md]\n")
    line = _one_error_line(capsys, ["train", "--config", str(path), "--out", str(tmp_path / "o")])
    assert "lr_md must be a finite number > 0" in line


# --------------------------------------------------------------------------- help text
def test_help_is_complete():
    parser = build_parser()
    top = parser.format_help()
    for name, (_, _, summary, _) in EXPERIMENTS.items():
        # every subcommand listed with its whole one-line summary (none cut at a semicolon)
        assert name in top and " ".join(summary.split()[:3]) in " ".join(top.split())
    assert "all" in top
    for name, (cfg_cls, _, _, desc) in EXPERIMENTS.items():
        text = " ".join(parser.subcommand_parsers[name].format_help().split())
        assert " ".join(desc.split()) in text, name  # the description in full
        for f in dataclasses.fields(cfg_cls):
            assert f"--{f.name}" in text and C.help_of(f), (name, f.name)
            if "_" in f.name:
                assert f"--{f.name.replace('_', '-')}" in text
        for opt in ("--config", "--print_config", "--seed", "--out", "--device", "--quick", "--threads"):
            assert opt in text, (name, opt)
