"""Label-encoded symbols and per-transition weights for the fitting code (docs/math.md §7.9).

Real categorical data arrive as strings (DNA letters, words, weather states), as other hashable labels, or
as pandas Series / Categoricals. The fitting code works on integer codes ``0..S-1``; this module maps labels
to codes once, at the public entry points, and back at the outputs:

- the encoding is deterministic: the sorted distinct labels, or a Categorical's own category order (which
  may hold categories the data never use: they are states all the same);
- integer arrays pass through untouched (no copy, no mapping), so integer codes behave exactly as before;
- pandas is never imported here: a pandas object is recognised by its type's module name and read through
  its public attributes (``.cat.categories``, ``.cat.codes``, ``.to_numpy()``).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _is_pandas(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "pandas"


def _categorical_parts(x: Any):
    """(codes, categories) of a pandas Categorical or categorical Series, else None."""
    if not _is_pandas(x):
        return None
    cat = getattr(x, "cat", None) if type(x).__name__ == "Series" else None
    if cat is not None:
        try:
            return np.asarray(cat.codes), np.asarray(cat.categories, dtype=object)
        except AttributeError:  # a Series whose dtype is not categorical
            return None
    if type(x).__name__ == "Categorical":
        return np.asarray(x.codes), np.asarray(x.categories, dtype=object)
    return None


def _plain(x: Any) -> Any:
    """pandas containers (Series, Index, DataFrame) to NumPy; anything else unchanged."""
    if _is_pandas(x) and hasattr(x, "to_numpy"):
        return x.to_numpy()
    return x


def _python(v: Any) -> Any:
    """A NumPy scalar label (``np.str_('cloud')``) as the Python value it holds, so labels print as
    ``'cloud'``; NumPy scalars hash and compare equal to those values, so codes are unchanged."""
    return v.item() if isinstance(v, np.generic) else v


def _is_label_array(a: np.ndarray) -> bool:
    return a.dtype.kind in "USO"


def _leaves(data: Any) -> list:
    """The arrays of a data layout: one array, a 2-D array, a list/tuple of sequences, a flat list of symbols."""
    if isinstance(data, (list, tuple)):
        if len(data) and all(np.ndim(_plain(s)) == 0 and _categorical_parts(s) is None for s in data):
            return [data]  # a flat list of symbols is one sequence
        return list(data)
    return [data]


def has_labels(data: Any) -> bool:
    """Whether a data layout holds labels (strings, objects, a pandas Categorical) rather than integer codes."""
    if isinstance(data, np.ndarray):  # the common integer case: one dtype check, nothing else
        return _is_label_array(data)
    for leaf in _leaves(data):
        if _categorical_parts(leaf) is not None:
            return True
        leaf = _plain(leaf)
        if isinstance(leaf, np.ndarray):
            if _is_label_array(leaf):
                return True
            continue
        if isinstance(leaf, (list, tuple)):
            try:
                arr = np.asarray(leaf)
            except (TypeError, ValueError):
                arr = np.asarray(leaf, dtype=object) if all(np.ndim(s) == 0 for s in leaf) else None
            if arr is not None and _is_label_array(arr):
                return True
        elif isinstance(leaf, (str, bytes)):
            return True
    return False


def _object_leaf(leaf: Any, name: str, i: int) -> np.ndarray:
    arr = _plain(leaf)
    if isinstance(arr, (list, tuple)):
        arr = np.asarray(arr, dtype=object) if all(np.ndim(s) == 0 for s in arr) else None
        if arr is None:
            raise ValueError(f"{name}[{i}] must be a flat sequence of symbols")
    arr = np.asarray(arr)
    if arr.dtype.kind not in "USOiu":
        raise ValueError(f"{name} must hold integer codes or labels ({name}[{i}] has dtype {arr.dtype})")
    return arr


def _check_no_missing(values: np.ndarray, name: str) -> None:
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            raise ValueError(f"{name} holds a missing value ({v!r}); to drop the transitions that touch it "
                             "pass missing=float('nan') (or recode it)")


def encode(data: Any, name: str = "sequences", classes: np.ndarray | None = None) -> tuple[Any, np.ndarray | None]:
    """Replace labels by integer codes, keeping the data layout.

    Parameters
    ----------
    data : array (T,) or (B, T), list of 1-D arrays, flat list of symbols, pandas Series / Categorical, or a
        list of those
        Integer data are returned as they are (``classes`` None), unless ``classes`` is given.
    name : str
        Argument name used in error messages.
    classes : array (S,), optional
        A fixed label set (a fitted model's ``classes_``): every label must be in it, an unseen label raises
        ``ValueError`` naming it. Default: the sorted distinct labels, or a Categorical's categories.

    Returns
    -------
    codes : the same layout with int64 codes (a 1-D or 2-D array for array input, a list for a list)
    classes : ndarray (S,) of labels, or None for integer data without ``classes``
    """
    if classes is None and not has_labels(data):
        return data, None
    single = not isinstance(data, (list, tuple)) or (
        len(data) > 0 and all(np.ndim(_plain(s)) == 0 and _categorical_parts(s) is None for s in data))
    leaves = [data] if single else list(data)
    if not leaves:
        raise ValueError(f"{name} is empty: no data to fit")
    cats = [_categorical_parts(leaf) for leaf in leaves]
    given = [c[1] for c in cats if c is not None]
    if classes is None and given:
        if any(len(g) != len(given[0]) or not all(a == b for a, b in zip(g, given[0])) for g in given[1:]):
            raise ValueError(f"{name}: the Categoricals have different categories; give them one category list")
        classes = given[0]
    arrays = []
    for i, (leaf, cat) in enumerate(zip(leaves, cats)):
        if cat is not None:
            codes, cats_i = cat
            if np.any(codes < 0):
                raise ValueError(f"{name}[{i}] holds a missing value (a Categorical code -1); drop it first")
            arrays.append(np.asarray(cats_i, dtype=object)[codes])
        else:
            arrays.append(_object_leaf(leaf, name, i))
    if classes is None:
        flat = np.concatenate([a.ravel() for a in arrays]).astype(object)
        _check_no_missing(flat, name)
        kinds = {type(v) for v in flat.tolist()}
        if any(t.__lt__ is object.__lt__ for t in kinds):  # no order defined: sorting would be arbitrary
            raise ValueError(f"{name}: labels must be mutually sortable to give a deterministic code order "
                             f"(got types {sorted(t.__name__ for t in kinds)}, some without an order); "
                             "pass a pandas Categorical to fix the order")
        try:
            uniq = sorted({_python(v) for v in flat.tolist()})
        except TypeError:
            kinds = sorted({type(v).__name__ for v in flat.tolist()})
            raise ValueError(f"{name}: labels must be mutually sortable to give a deterministic code order "
                             f"(got types {kinds}); pass a pandas Categorical to fix the order") from None
        except Exception as exc:  # noqa: BLE001 - an unhashable or exotic label
            raise ValueError(f"{name}: labels must be hashable scalars ({exc})") from None
        classes = np.empty(len(uniq), dtype=object)
        classes[:] = uniq
    else:
        given_classes = list(np.asarray(classes, dtype=object).tolist())
        classes = np.empty(len(given_classes), dtype=object)
        classes[:] = [_python(c) for c in given_classes]
    lookup = {c: j for j, c in enumerate(classes.tolist())}
    out, unseen = [], []
    for a in arrays:
        vals = a.astype(object).ravel().tolist()
        try:
            codes = np.fromiter((lookup.get(v, -1) for v in vals), dtype=np.int64, count=len(vals))
        except TypeError:
            raise ValueError(f"{name}: labels must be hashable scalars") from None
        if np.any(codes < 0):
            unseen.extend(v for v, c in zip(vals, codes.tolist()) if c < 0)
        out.append(codes.reshape(a.shape))
    if unseen:
        shown = sorted({repr(_python(v)) for v in unseen})[:10]
        raise ValueError(f"{name} holds labels not seen in fit: {', '.join(shown)} "
                         f"(known labels: {', '.join(repr(c) for c in classes.tolist()[:20])})")
    return (out[0] if single else out), classes


def decode(codes: np.ndarray, classes: np.ndarray | None) -> np.ndarray:
    """Codes back to labels (``classes[codes]``); integer codes unchanged when ``classes`` is None."""
    if classes is None:
        return codes
    out = np.asarray(classes)[codes]
    # a label array of one Python type comes back with a plain dtype (e.g. '<U4' for strings)
    if out.size and all(type(v) is str for v in np.asarray(classes).tolist()):
        return out.astype(str)
    return out


def check_classes_states(classes: np.ndarray | None, n_symbols: Any) -> Any:
    """With labels, S is the number of labels: ``n_symbols`` must be None or equal to it."""
    if classes is None:
        return n_symbols
    if n_symbols is not None and n_symbols != len(classes):
        raise ValueError(f"n_symbols = {n_symbols!r} disagrees with the {len(classes)} labels of the data; with "
                         "labels leave n_symbols None (use a pandas Categorical to add unobserved labels)")
    return len(classes)
