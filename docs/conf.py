"""Sphinx configuration of the mtdmath documentation.

Build (from the repository root, with the ``docs`` extra installed)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The API reference and the CLI reference are generated here, at configuration time, from
``mtdmath.__all__``, ``mtdmath.experiments.__all__`` and the argparse parser of
``python -m mtdmath.experiments``, into ``docs/reference/`` (not tracked), so they follow the
code as it changes: a new public name gets a page on the next build.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import mtdmath  # noqa: E402

project = "mtdmath"
author = "the mtdmath developers"
copyright = "2026, the mtdmath developers"
release = version = mtdmath.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "numpydoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "figures/*.json", "figures/*.md", "**/.ipynb_checkpoints", "figures/**"]

# Docstrings write absolute values and norms as |x| in plain text, which reStructuredText reads
# as a substitution reference; the ones in use are defined to print themselves. (Writing them as
# ``|x|`` in the docstrings makes these lines unnecessary.)
_ABS = ["k", "loglik"]
rst_epilog = "\n".join(f".. |{x}| replace:: \\|{x}\\|" for x in _ABS) + "\n"

# MyST: $...$ and $$...$$ maths (rendered by MathJax), (label)= targets, equation labels
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_dmath_double_inline = True
myst_heading_anchors = 4

# autodoc + numpydoc (NumPy-style docstrings)
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc "Parameters" sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"mtdmath {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
# MathJax is served from the site itself, never from a CDN, so the maths renders offline: the
# sphinx-mathjax-offline extension (the ``docs`` extra) ships MathJax 3 and copies it into
# ``_static/mathjax``; the path is set here too so that no extension order can put a CDN URL back.
mathjax_path = "mathjax/tex-chtml.js"
html_theme_options = {
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
# no left sidebar where there is no section to navigate
html_sidebars = {"index": [], "quickstart": [], "math": [], "reference/cli": []}
html_show_sourcelink = False


# --------------------------------------------------------------------------- links to the maths
_MATH_LABELS = set(re.findall(r"^\(([\w-]+)\)=\s*$", (HERE / "math.md").read_text(), flags=re.M))
_SECTION = re.compile(r"(?<![\w`])(?:docs/)?(?:MATH|math)\.md §(\d+(?:\.\d+)*)")


def _math_links(text: str) -> str:
    """ "MATH.md §N" / "docs/math.md §N" outside literals -> a link to that section of the maths."""

    def repl(m: re.Match) -> str:
        num = m.group(1).rstrip(".")
        label = "math-" + num.replace(".", "-")
        return f":ref:`docs/math.md §{num} <{label}>`" if label in _MATH_LABELS else m.group(0)

    parts = re.split(r"(``.*?``)", text)  # never rewrite inside a literal
    return "".join(p if k % 2 else _SECTION.sub(repl, p) for k, p in enumerate(parts))


# --------------------------------------------------------------------------- generated reference
REF = HERE / "reference"

# The API reference lists the names of ``mtdmath.__all__`` by the sections of the public-name table
# ``mtdmath._api.API`` (one row per name of ``mtdmath.__all__``: its section, argument domains and
# promises, which the contract test tests/test_contract.py checks), so a public name without a row
# stops the build; then the names of the namespaces mtdmath.fitting, mtdmath.nn, mtdmath.experiments.
from mtdmath import _api  # noqa: E402

_missing = [name for name in mtdmath.__all__ if name not in _api.API]
if _missing:
    raise RuntimeError(f"public names without a row in mtdmath._api.API: {_missing}")


def _kind(obj: object) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    line = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
    return _math_links(line)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:  # unchanged files keep Sphinx's cache valid
        path.write_text(text)


def _stub(qualname: str, obj: object) -> str:
    title = qualname
    kind = _kind(obj)
    head = f".. _api-{qualname}:\n\n{title}\n{'=' * len(title)}\n\n"
    if kind == "module":
        return head + f".. automodule:: {qualname}\n   :members:\n   :no-index:\n"
    if kind == "class":
        return head + f".. autoclass:: {qualname}\n   :members:\n"
    if kind == "function":
        return head + f".. autofunction:: {qualname}\n"
    return head + f".. autodata:: {qualname}\n"


def _table(rows: list[tuple[str, object]]) -> str:
    out = [".. list-table::", "   :header-rows: 0", "   :widths: 30 70", ""]
    for qual, obj in rows:
        out += [f"   * - :doc:`{qual} <{qual}>`", f"     - {_summary(obj) or ' '}"]
    return "\n".join(out) + "\n"


#: the namespaces of mtdmath, each a group of the API reference after the core's sections
_NAMESPACES = (("fitting", "Fitting MTD models (mtdmath.fitting)"), ("nn", "Transformers (mtdmath.nn)"),
               ("experiments", "Experiments (mtdmath.experiments)"))


def _generate_api() -> list[str]:
    """One page per public name of ``mtdmath.__all__`` and of the namespaces' ``__all__``."""
    written = []
    rows: dict[str, list[tuple[str, object]]] = {}
    for name in mtdmath.__all__:
        obj = getattr(mtdmath, name)
        if inspect.ismodule(obj):  # a namespace: its names get a group of their own below
            continue
        qual = f"mtdmath.{name}"
        rows.setdefault(_api.API[name].section, []).append((qual, obj))
        _write(REF / f"{qual}.rst", _stub(qual, obj))
        written.append(qual)
    groups = [(t, rows[t]) for t in _api.SECTIONS if t in rows]
    for namespace, title in _NAMESPACES:
        mod = importlib.import_module(f"mtdmath.{namespace}")
        grp = []
        for name in mod.__all__:
            obj = getattr(mod, name)
            if _kind(obj) == "data":  # constants (cache-name tables) carry no docstring of their own
                continue
            qual = f"mtdmath.{namespace}.{name}"
            grp.append((qual, obj))
            _write(REF / f"{qual}.rst", _stub(qual, obj))
            written.append(qual)
        groups.append((title, grp))

    lines = [
        ".. _api:", "", "API reference", "=============", "",
        "Generated from the docstrings of every public name in ``mtdmath.__all__`` (importable as",
        "``mtdmath.NAME``) and in the namespaces ``mtdmath.fitting``, ``mtdmath.nn`` and",
        "``mtdmath.experiments`` (``mtdmath.fitting.NAME`` ...), grouped by section and namespace.",
        "Formulas are cited as \"§N\" of :doc:`../math`. Every array function takes NumPy, torch (CPU or",
        "CUDA) or array-api-strict arrays and answers in the data's namespace, device and dtype: the",
        "contract is :ref:`math-8`, shown at work in :doc:`../guide/backends`.",
        "The command line is documented in :doc:`cli`.", "",
    ]
    for title, grp in groups:
        lines += [title, "-" * len(title), "", _table(grp)]
        # one hidden toctree per group: its caption heads the group in the sidebar
        lines += [".. toctree::", "   :hidden:", f"   :caption: {title}", ""] + [f"   {q}" for q, _ in grp] + [""]
    _write(REF / "index.rst", "\n".join(lines))
    # a name that left __all__ loses its page (an orphan page would be a build warning)
    for old in REF.glob("mtdmath.*.rst"):
        if old.stem not in written:
            old.unlink()
    return written


def _wrap(text: str, width: int = 78) -> list[str]:
    """Wrap the lines argparse leaves long (raw description and epilog), keeping two-column layouts."""
    import textwrap

    out, col = [], 0
    for ln in text.splitlines():
        m = re.match(r"^(\s*-\S.*?\s{2,})(\S.*)$", ln)  # "  --opt VALUE    help text"
        if m and len(m.group(1)) < width // 2:
            col = len(m.group(1))  # the help column of this option table
        if len(ln) <= width:
            out.append(ln)
            continue
        if ln.lstrip().startswith("-") and col and len(ln) > col and ln[col - 1] == " ":
            lead, body = ln[:col], ln[col:]  # an option whose name runs into the help column
        else:
            lead = re.match(r"^\s*", ln).group(0)
            body = ln[len(lead):]
        out += textwrap.wrap(body, width, initial_indent=lead, subsequent_indent=" " * len(lead))
    return out


def _generate_cli() -> None:
    """``--help`` of ``python -m mtdmath.experiments`` and of every subcommand, verbatim."""
    import argparse

    from mtdmath.experiments.cli import build_parser

    os.environ["COLUMNS"] = "78"  # argparse wraps at the terminal width: reproducible, and fits the page
    parser = build_parser()
    lines = [".. _cli:", "", "Command line", "============", "",
             "``python -m mtdmath.experiments SUBCOMMAND [options]``. This page is generated from the",
             "argument parser: every subcommand and option, with its default and its ``--quick`` value.",
             "See :doc:`../guide/paper` for what each subcommand produces.", "",
             ".. code-block:: text", ""]
    lines += ["   " + ln if ln else "" for ln in _wrap(parser.format_help())] + [""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        title = f"``{name}``"
        lines += [f".. _cli-{name}:", "", title, "-" * len(title), "", ".. code-block:: text", ""]
        lines += ["   " + ln if ln else "" for ln in _wrap(p.format_help())] + [""]
    _write(REF / "cli.rst", "\n".join(lines))


_generate_api()
_generate_cli()


def _link_math(app, what, name, obj, options, lines) -> None:
    """Turn "MATH.md §N" / "docs/math.md §N" in docstrings into links to that section."""
    for i, line in enumerate(lines):
        lines[i] = _math_links(line)


def setup(app):
    app.connect("autodoc-process-docstring", _link_math)
    return {"parallel_read_safe": True}
