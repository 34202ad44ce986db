"""The documentation site: maths served from the site itself (no CDN), no placeholder text."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _conf_value(name: str):
    """A literal assignment of docs/conf.py, read without running it (running it writes the API pages)."""
    for node in ast.parse((DOCS / "conf.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def _mathjax_script(html: str) -> str:
    srcs = re.findall(r'<script[^>]*src="([^"]*(?:mathjax|MathJax|tex-[a-z-]*\.js)[^"]*)"', html)
    assert len(srcs) == 1, srcs
    return srcs[0]


def test_conf_serves_mathjax_from_the_site():
    assert "sphinx-mathjax-offline" in _conf_value("extensions")
    path = _conf_value("mathjax_path")
    assert not re.match(r"^(https?:)?//", path), path
    assert "MTDMATH_MATHJAX_DIR" not in (DOCS / "conf.py").read_text()


def test_built_page_loads_a_local_mathjax_and_no_cdn(tmp_path):
    """A one-page site built with the maths settings of docs/conf.py: the MathJax script it loads
    is a file shipped inside the site, and no page references a CDN."""
    sphinx_app = pytest.importorskip("sphinx.application")
    pytest.importorskip("myst_parser")
    try:
        __import__("importlib").import_module("sphinx-mathjax-offline")
    except ImportError:
        pytest.skip("the docs extra (sphinx-mathjax-offline) is not installed")
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        f"extensions = {[e for e in _conf_value('extensions') if e != 'numpydoc']!r}\n"
        f"mathjax_path = {_conf_value('mathjax_path')!r}\n"
        f"myst_enable_extensions = {_conf_value('myst_enable_extensions')!r}\n"
    )
    (src / "index.md").write_text("# Maths\n\nThe lag weights $\\lambda \\in \\Delta_m$.\n")
    out = tmp_path / "html"
    app = sphinx_app.Sphinx(str(src), str(src), str(out), str(tmp_path / "doctrees"), "html",
                            status=None, warningiserror=True, freshenv=True)
    app.build()
    html = (out / "index.html").read_text()
    script = _mathjax_script(html)
    assert not re.match(r"^(https?:)?//", script), script
    assert (out / script).is_file(), script  # the script is a file of the built site
    assert (out / script).stat().st_size > 10_000  # MathJax itself, not an empty stand-in
    assert not re.search(r"cdn\.jsdelivr|cdnjs|unpkg\.com|polyfill\.io", html)


PLACEHOLDERS = re.compile(r"will appear here|coming soon|\bTODO\b|\bTBD\b|\bFIXME\b|\bXXX\b", re.I)


def _doc_files():
    yield ROOT / "README.md"
    yield from sorted(DOCS.rglob("*.md"))


def test_no_placeholder_text_in_the_docs():
    hits = [f"{p.relative_to(ROOT)}:{i}: {ln.strip()}"
            for p in _doc_files() if "_build" not in p.parts
            for i, ln in enumerate(p.read_text().splitlines(), 1) if PLACEHOLDERS.search(ln)]
    assert not hits, "\n".join(hits)


def test_placeholder_pattern_catches_a_placeholder():
    assert PLACEHOLDERS.search("Results for march and hdMTD will appear here.")
    assert PLACEHOLDERS.search("TODO: write this")
    assert not PLACEHOLDERS.search("the results appear in the table below")
