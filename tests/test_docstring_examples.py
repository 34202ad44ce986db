"""Every public function and class of mtdmath, mtdmath.fitting, mtdmath.nn and mtdmath.experiments
has a numpydoc Examples section, and its examples run and print what they show."""
from __future__ import annotations

import doctest
import importlib
import inspect
import re

import pytest

NAMESPACES = ("mtdmath", "mtdmath.fitting", "mtdmath.nn", "mtdmath.experiments")
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
_EXAMPLES = re.compile(r"^Examples\n-{8,}\n", re.M)


def _public():
    """(qualified name, object) of each function and class in the namespaces' ``__all__``, once each.

    Modules and data (dicts, tuples) have no docstring of their own to hold examples: their
    module's docstring documents them."""
    seen, out = set(), []
    for ns in NAMESPACES:
        try:
            mod = importlib.import_module(ns)
        except ImportError:  # an optional extra (torch, the experiments' tools) is not installed
            continue
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or inspect.isroutine(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            out.append((f"{ns}.{name}", obj))
    return out


PUBLIC = _public()


def test_there_are_public_names():
    assert len(PUBLIC) > 50


@pytest.mark.parametrize("qualname, obj", PUBLIC, ids=[q for q, _ in PUBLIC])
def test_examples_section_exists_and_runs(qualname, obj, tmp_path, monkeypatch):
    doc = inspect.getdoc(obj) or ""
    assert _EXAMPLES.search(doc), f"{qualname} has no numpydoc Examples section"
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    tests = doctest.DocTestFinder(recurse=False, exclude_empty=True).find(obj, qualname, globs={})
    examples = [ex for t in tests for ex in t.examples]
    assert examples, f"the Examples section of {qualname} holds no >>> example"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    for t in tests:
        runner.run(t, out=report.append)
    res = runner.summarize(verbose=False)
    assert res.failed == 0, "".join(report)


def test_a_wrong_example_fails():
    """The runner used above does fail on an example whose output is wrong."""
    def f():
        """Nothing.

        Examples
        --------
        >>> 1 + 1
        3
        """
    t = doctest.DocTestFinder(recurse=False).find(f, "f", globs={})[0]
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(t, out=lambda s: None)
    assert runner.summarize(verbose=False).failed == 1
