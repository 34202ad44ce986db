"""The product surface: a short top level, lazy namespaces, no shims, one meaning per name (docs/changelog.md)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import mtdmath

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter (a module imported here once stays imported) with warnings as errors."""
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_top_level_holds_at_most_30_names_and_each_is_there():
    assert len(mtdmath.__all__) <= 30, mtdmath.__all__
    assert len(set(mtdmath.__all__)) == len(mtdmath.__all__)
    for name in mtdmath.__all__:
        assert hasattr(mtdmath, name), name


def test_star_import_imports_no_torch_and_warns_nothing():
    # -W error turns any warning (a DeprecationWarning of a shim included) into a failure
    out = _run("from mtdmath import *\nimport sys\nprint(fitting.__name__, 'torch' in sys.modules)")
    assert out.split() == ["mtdmath.fitting", "False"]


def test_namespaces_load_on_first_use():
    out = _run("import sys, mtdmath\nprint('torch' in sys.modules, 'mtdmath.fitting' in sys.modules)\n"
               "print(mtdmath.fitting.fit.__module__, 'torch' in sys.modules)")
    assert out.split() == ["False", "False", "mtdmath.fitting.mtd", "False"]
    pytest.importorskip("torch")
    from mtdmath.nn import MDTransformer

    assert mtdmath.nn.MDTransformer is MDTransformer and "nn" in dir(mtdmath) and "experiments" in dir(mtdmath)


# the old names, spelled in pieces so that no rename script rewrites this file's checks
OLD = "n_" + "states"


@pytest.mark.parametrize("name", ["torch_core", "transformer", "fit"])
def test_no_shim_module_remains(name):
    assert not (ROOT / "mtdmath" / f"{name}.py").exists()
    with pytest.raises(ModuleNotFoundError):
        __import__(f"mtdmath.{name}")


@pytest.mark.parametrize("name", ["MDTransformer", "train", "fit", "MTD", "MTDModel", "select_lags", "torch_core",
                                  OLD, "transformer"])
def test_moved_and_removed_names_are_gone_from_the_top_level(name):
    assert name not in mtdmath.__all__
    with pytest.raises(AttributeError):
        getattr(mtdmath, name)


def _tracked(*patterns: str) -> list[Path]:
    files = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    return [ROOT / f for f in files if (ROOT / f).is_file()]


#: (regex, where, why): a double-meaning or one-letter name that must not come back
FORBIDDEN = [
    (r"\b" + OLD + r"\b", ("mtdmath", "tests", "bench", "docs/guide", "docs/math.md", "docs/index.md",
                           "docs/quickstart.md", "proofs_check"), "n_count_states or n_symbols"),
    (r"\blam0", ("mtdmath/fitting", "docs/guide/fitting.md"), "fitting's order-0 weight is lam_indep"),
    (r"import mtdmath as M\b|mtdmath as M\b", ("mtdmath", "tests", "bench", "docs", "proofs_check"), "import mtdmath"),
    (r"import _validate as V\b", ("mtdmath", "tests", "bench"), "as validate"),
    (r"import common as X\b", ("mtdmath", "tests", "bench"), "as exp_common"),
    (r"\bclass _Layout\b|\bdef _prepare\(", ("mtdmath",), "descriptive private names"),
    (r"\bfit=(r2|left)\b|\.fit\b(?= *[<>])", ("mtdmath/nn", "tests/test_nn_adaptive.py"), "StepByN.r2 / MatchedStep.kl_left"),
]


@pytest.mark.parametrize("pattern, where, instead", FORBIDDEN, ids=[w for _, _, w in FORBIDDEN])
def test_no_double_meaning_name_remains(pattern, where, instead):
    here = Path(__file__).resolve()
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
            for f in _tracked(*where) if f.suffix in (".py", ".md", ".rst") and f != here
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if re.search(pattern, line)]
    assert not hits, f"use {instead}:\n" + "\n".join(hits[:20])


def test_the_grep_can_fail(tmp_path):
    # the forbidden patterns match what they are meant to catch
    samples = ["fit(y, 2, " + OLD + "=3)", "law.lam0", "import mtdmath as M", "from . import _validate as V",
               "from . import common as X", "class _Layout:", "return StepByN(n=n, eta=eta, fit=r2)"]
    for (pattern, _, _), sample in zip(FORBIDDEN, samples):
        assert re.search(pattern, sample), (pattern, sample)


def test_the_changelog_lists_every_rename():
    text = (ROOT / "docs" / "changelog.md").read_text()
    for old, new in [(OLD, "n_count_states"), (OLD, "n_symbols"), ("lam0", "lam_indep"), ("StepByN.fit", "StepByN.r2"),
                     ("torch_core", "mtdmath.<function>"), ("mtdmath.fitting.estimator", "mtdmath.fitting.mtd"),
                     ("mtdmath.experiments.estimators", "mtdmath.experiments.kl_curves"), ("mtdmath.fit`", "mtdmath.fitting.fit"),
                     ("mtdmath.MDTransformer", "mtdmath.nn.MDTransformer"), ("MatchedStep", "kl_left")]:
        assert old in text and new in text, (old, new)
