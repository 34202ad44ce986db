"""The library's surface: a missing optional dependency names its extra, labels print as plain
strings, a string given where a sequence is expected is answered with a hint, and the transformers
take one sequence (T,) as the core functions do."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mtdmath
from mtdmath import fitting

ROOT = Path(__file__).resolve().parent.parent


def _run_without(module: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``import <module>`` fails, as with only the core installed."""
    prelude = f"import sys; sys.modules[{module!r}] = None\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize("code, extra", [
    ("import mtdmath.nn", "torch"),
    ("import mtdmath; mtdmath.nn.MDTransformer", "torch"),
    ("import runpy; sys.argv = ['mtdmath.experiments', '--help']\n"
     "runpy.run_module('mtdmath.experiments', run_name='__main__', alter_sys=True)", "experiments"),
])
def test_missing_torch_names_the_extra(code, extra):
    res = _run_without("torch", code)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError:"), res.stderr[-2000:]
    assert f'pip install "mtdmath[{extra}]"' in last and "needs torch" in last, last


def test_core_imports_without_torch():
    res = _run_without("torch", "import mtdmath, numpy as np\n"
                                "print(mtdmath.eta_bayes(np.array([1.0, 1.0])))")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == str(1 / 3)  # eta* = 1/(1 + alpha_0), docs/math.md §3


def test_missing_jsonargparse_names_the_experiments_extra():
    res = _run_without("jsonargparse", "import mtdmath.experiments")
    assert 'pip install "mtdmath[experiments]"' in res.stderr and "needs jsonargparse" in res.stderr


def _weather(n=240, seed=0):
    rng = np.random.default_rng(seed)
    return np.array(["cloud", "sun", "rain"])[rng.integers(0, 3, n)]


@pytest.mark.parametrize("make", [
    lambda s: list(s),                                  # a list of np.str_
    lambda s: np.array(s, dtype=object),                # an object array of np.str_
    lambda s: [np.array(s[:120], dtype=object), np.array(s[120:], dtype=object)],
], ids=["list", "object-array", "two-sequences"])
@pytest.mark.parametrize("estimator", [lambda: fitting.MTD(2), lambda: fitting.MarkovChain(1)], ids=["MTD", "chain"])
def test_numpy_string_labels_print_as_plain_strings(make, estimator):
    s = _weather()
    assert isinstance(list(s)[0], np.str_)  # the case: labels arrive as NumPy scalars
    est = estimator().fit(make(s))
    text = repr(est) + "\n" + est.summary()
    assert "np.str_" not in text and "numpy.str_" not in text
    assert "'cloud', 'rain', 'sun'" in text
    assert all(type(c) is str for c in est._labels.tolist())
    # the codes are those of the plain labels: scoring str labels agrees with scoring np.str_ labels
    assert est.score([str(c) for c in s[:60]]) == est.score(list(s[:60]))


STRING_CALLS = {
    "fitting.MTD.fit": lambda s: fitting.MTD(2).fit(s),
    "fitting.MarkovChain.fit": lambda s: fitting.MarkovChain(1).fit(s),
    "fitting.fit": lambda s: fitting.fit(s, 2),
    "fitting.select_order": lambda s: fitting.select_order(s, max_order=2),
    "mtdmath.lag_factors": lambda s: mtdmath.lag_factors(s, np.full((3, 3), 1 / 3), 2),
    "mtdmath.md_predictive_all_prefixes": lambda s: mtdmath.md_predictive_all_prefixes(
        s, np.full((3, 3), 1 / 3), np.ones(2)),
}


@pytest.mark.parametrize("name", sorted(STRING_CALLS))
def test_a_string_as_a_sequence_suggests_list(name):
    with pytest.raises(ValueError, match=r"one string \('abcabcab.*list\("):
        STRING_CALLS[name]("abcabcab" * 10)


def test_the_suggestion_works_for_fitting():
    s = "abcabcab" * 10
    est = fitting.MTD(2).fit(list(s))
    assert est._labels.tolist() == ["a", "b", "c"]


@pytest.mark.parametrize("kind", ["md", "std"])
def test_transformers_take_one_sequence_like_the_core(kind):
    torch = pytest.importorskip("torch")
    from mtdmath import nn

    rng = np.random.default_rng(0)
    pi = mtdmath.random_transition_matrix(4, concentration=1.0, rng=rng)
    alpha = np.array([1.0, 2.0])
    tokens, _ = mtdmath.sample_icl(pi, alpha, 12, 3, rng=rng)
    if kind == "md":
        model = nn.MDTransformer.construct(pi, alpha, dtype=torch.float64)
    else:
        model = nn.StandardTransformer(4, 2, n_layers=1, d_model=8, n_heads=1, max_len=16,
                                       generator=torch.Generator().manual_seed(0)).double().eval()
    batch = model(torch.as_tensor(tokens)).detach()
    for b in range(3):
        one = model(torch.as_tensor(tokens[b])).detach()
        assert one.shape == batch.shape[1:] == (12 - 2 + 1, 4)
        # the same computation on one row: equal to float64 rounding of the batched matmuls
        np.testing.assert_allclose(one.numpy(), batch[b].numpy(), rtol=1e-12, atol=1e-12)
        assert model.log_probs(tokens[b]).shape == one.shape
    if kind == "md":  # and the core agrees on the shapes: (T-m+1, S) for one sequence
        core = mtdmath.md_predictive_all_prefixes(tokens[0], pi, alpha)
        assert core.shape == tuple(batch.shape[1:])
        np.testing.assert_allclose(torch.softmax(model(tokens[0]), -1).detach().numpy(), core, atol=1e-10)
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T\) or \(T,\)"):
        model(torch.as_tensor(tokens[None]))
