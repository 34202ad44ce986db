"""Optional dependencies: a missing one is named together with the extra that installs it."""
from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise ``ModuleNotFoundError`` saying which extra of mtdmath installs it.

    ``feature`` names what needs it (e.g. ``"mtdmath.nn"``). torch is the one dependency a user
    should install before the extra (a plain torch requirement resolves to a CUDA build on Linux),
    so its message says how.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:  # not installed, or blocked (sys.modules[module] = None)
        hint = " (install torch first, as the README's set-up shows)" if module == "torch" else ""
        raise ModuleNotFoundError(
            f"{feature} needs {module}, which is not installed: pip install \"mtdmath[{extra}]\"{hint}",
            name=module) from err
