"""The fitting package's one data layer: every data layout becomes aggregated transition counts here.

Sequences (one 1-D array, rows of a 2-D array, a list of 1-D arrays, hmmlearn's concatenation with
``lengths``), labels (strings, pandas Categoricals, other sortable hashable symbols: :mod:`.symbols`),
per-sequence or per-token weights, and mtdlearn's design matrix ``(X (n, L), y (n,))`` are parsed by
:func:`parse` into :class:`Parsed` and counted by :func:`count` into :class:`TransitionCounts`: the distinct
(lag-context, next) tuples with their weighted counts (docs/math.md §7.1, §7.9). Estimators, laws and
selection read counts only. Counts of the same lags and states merge associatively (``a + b``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import _host_kind_check, check_alloc, check_int
from .symbols import check_classes_states, encode


def to_numpy(x: Any) -> Any:
    """Array inputs of any backend (torch CPU/CUDA, array-api-strict, ...) to NumPy, once, at the public entry
    points; fitting is NumPy inside. Lists and tuples stay lists, their array elements converted."""
    from .._xp import to_numpy as _convert

    if x is None or isinstance(x, (str, dict)) or np.isscalar(x):
        return x
    if isinstance(x, (list, tuple)):
        return [a if np.isscalar(a) else _convert(a) for a in x]
    return _convert(x)


def _why_not_tokens(a: np.ndarray) -> str:
    """What else is wrong with a non-integer array, in the words scikit-learn's checks look for."""
    if a.dtype.kind == "c":
        return "; Complex data not supported"
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        return "; it holds NaN or inf (to drop the transitions that touch a missing value pass missing=float('nan'))"
    return ""


def as_sequences(X: Any, name: str = "sequences") -> list[np.ndarray]:
    """One 1-D array, a 2-D array (rows are sequences) or a list of 1-D arrays -> list of int64 arrays.

    Errors name the argument as ``name``. Tokens are range-checked in their own dtype before the cast, so an
    unsigned token of 2**63 or more is reported, not wrapped.
    """
    if isinstance(X, (str, bytes)):
        raise ValueError(f"{name} is one string ({X[:20]!r}); to fit its characters as symbols pass list({name})")
    if isinstance(X, np.ndarray):
        arrs = [X] if X.ndim == 1 else list(X) if X.ndim == 2 else None
        if arrs is None:
            raise ValueError(f"{name} must be 1-D, 2-D or a list of 1-D arrays (got shape {X.shape})")
    elif isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError(f"{name} is empty: no data to fit")
        try:
            arrs = [np.asarray(X)] if all(np.ndim(s) == 0 for s in X) else [np.asarray(s) for s in X]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must hold integer tokens") from None
    else:
        raise ValueError(f"{name} must be an integer array or a list of integer arrays (got {type(X).__name__})")
    if len(arrs) == 0:
        raise ValueError(f"{name} is empty: no data to fit")
    out = []
    for i, a in enumerate(arrs):
        a = np.asarray(a)
        if a.ndim != 1:
            raise ValueError(f"{name}[{i}] must be 1-D (got shape {a.shape})")
        if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer tokens ({name}[{i}] has dtype {a.dtype}{_why_not_tokens(a)})")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} must hold non-negative tokens ({name}[{i}] has min {a.min()})")
        if a.size and a.max() > np.iinfo(np.int64).max // 2:
            raise ValueError(f"{name} holds a token too large for a state ({name}[{i}] has max {a.max()})")
        out.append(a.astype(np.int64, copy=False))
    if not any(a.size for a in out):
        raise ValueError(f"{name} is empty: no data to fit")
    return out


def check_lags(order: Any, lags: Any, longest: int | None = None) -> tuple[int, ...]:
    """Sorted tuple of distinct positive lags; ``order`` alone means lags 1..order.

    With ``longest`` (the longest sequence's length), a max lag that leaves no transition is refused before
    the lag tuple is built, so ``order=2**70`` is a ``ValueError`` naming ``order``, not a hang."""
    if lags is None:
        if order is None:
            raise ValueError("order must be given (or lags)")
        order = check_int(order, "order", minimum=1)
        if longest is not None and order >= longest:
            raise ValueError(f"order = {order} leaves no transition to fit: the longest sequence has {longest} "
                             "tokens (an order-m fit needs more than m)")
        return tuple(range(1, order + 1))
    if isinstance(lags, (str, bytes)):
        raise ValueError(f"lags must be a sequence of positive integers (got {lags!r})")
    try:
        arr = np.asarray(lags)
    except (TypeError, ValueError):
        raise ValueError(f"lags must be a sequence of positive integers (got {lags!r})") from None
    if arr.ndim > 1:
        raise ValueError(f"lags must be a 1-D sequence of positive integers (got shape {arr.shape})")
    raw = [lags] if arr.ndim == 0 else list(arr)
    if len(raw) == 0:
        raise ValueError("lags must hold at least one lag (got an empty sequence)")
    out = []
    for x in raw:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            raise ValueError(f"lags must be positive integers (got {lags!r})")
        if x < 1:
            raise ValueError(f"lags must be positive (got {lags!r})")
        out.append(int(x))
    if len(set(out)) != len(out):
        raise ValueError(f"lags must be distinct (got {lags!r})")
    out = tuple(sorted(out))
    if order is not None:
        order = check_int(order, "order", minimum=1)
        if order != out[-1]:
            raise ValueError(f"order must equal max(lags) = {out[-1]} when both are given (got order = {order})")
    if longest is not None and out[-1] >= longest:
        raise ValueError(f"lags: the max lag {out[-1]} leaves no transition to fit: the longest sequence has "
                         f"{longest} tokens")
    return out


def check_weights(weights: Any, seqs: list[np.ndarray], name: str = "sample_weight"
                  ) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Per-sequence and per-transition weights (docs/math.md §7.9) -> (sequence weights (B,), token weights).

    ``weights`` is either one weight per sequence, shape (B,), or one weight per token in the layout of the
    sequences (a 1-D array (T,) for one sequence, a 2-D array (B, T) for rows, a list of 1-D arrays): the
    weight at position t weighs the transition into y[t]; positions before the conditioning start weigh
    nothing (they must still be finite and non-negative). One sequence with one weight is a sequence weight.
    """
    n_seq = len(seqs)
    if weights is None:
        return np.ones(n_seq), None
    lens = [s.shape[0] for s in seqs]
    if isinstance(weights, (list, tuple)) and len(weights) == n_seq and any(np.ndim(x) > 0 for x in weights):
        per_token = list(weights)
    else:
        _host_kind_check(weights, name)  # no parsing of strings, no dropping of imaginary parts
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim == 0:
            w = w.reshape(1)
        if w.ndim == 1 and w.shape[0] == n_seq:
            if not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"{name} must be finite and non-negative (got {w[:6]})")
            if not np.any(w > 0):
                raise ValueError(f"{name} are all zero: no data to fit")
            return w, None
        if n_seq == 1 and w.ndim == 1 and w.shape[0] == lens[0]:
            per_token = [w]
        elif w.ndim == 2 and len(set(lens)) == 1 and w.shape == (n_seq, lens[0]):
            per_token = list(w)
        else:
            raise ValueError(f"{name} must have one entry per sequence ({n_seq}) or one per token in the layout "
                             f"of the sequences (lengths {lens[:6]}) (got shape {w.shape})")
    out = []
    for i, (x, T) in enumerate(zip(per_token, lens)):
        _host_kind_check(x, f"{name}[{i}]")
        a = np.asarray(x, dtype=np.float64)
        if a.shape != (T,):
            raise ValueError(f"{name}[{i}] must have one weight per token of sequence {i} (shape ({T},)) "
                             f"(got shape {a.shape})")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            bad = a[~(np.isfinite(a) & (a >= 0))][:4]
            raise ValueError(f"{name} must be finite and non-negative ({name}[{i}] has {bad})")
        out.append(a)
    return np.ones(n_seq), out


# ----------------------------------------------------------------------------------------------------------
# transition counts
# ----------------------------------------------------------------------------------------------------------
def _fits_int64(S: int, k: int) -> bool:
    """Whether a (k lags, next) tuple over S states is one int64 in base S."""
    return (k + 1) * math.log(max(S, 2)) < 62 * math.log(2)


def _unique_tuples(tuples: np.ndarray, w: np.ndarray, S: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``tuples`` (n, k + 1) and their summed weights; rows of total weight 0 dropped.

    Each row is read as one int64 in base S when that fits (1-D ``np.unique`` is much faster than
    ``unique(axis=0)``), most significant digit first, so the order is the lexicographic one either way."""
    k1 = tuples.shape[1]
    if _fits_int64(S, k1 - 1):
        code = np.zeros(tuples.shape[0], dtype=np.int64)
        for j in range(k1):
            code = code * S + tuples[:, j]
        uniq, inv = np.unique(code, return_inverse=True)
        digits = np.empty((uniq.shape[0], k1), dtype=np.int64)
        for j in range(k1 - 1, -1, -1):
            digits[:, j] = uniq % S
            uniq = uniq // S
    else:
        digits, inv = np.unique(tuples, axis=0, return_inverse=True)
    tot = np.bincount(inv.ravel(), weights=w, minlength=digits.shape[0])
    keep = tot > 0
    return digits[keep], tot[keep]


class TransitionCounts:
    """Aggregated weighted transitions: the sufficient statistics of every fit in :mod:`mtdmath.fitting`.

    Row ``u`` is one distinct tuple ``(y[t - lags[0]], ..., y[t - lags[-1]], y[t])`` with its summed weight.
    Counts of the same ``lags``, ``n_symbols`` and ``classes`` merge: ``a + b`` counts the transitions of both
    (associative and commutative up to the order of floating-point sums).

    Attributes
    ----------
    ctx : ndarray (U, k)
        Token at lag ``lags[j]`` of each distinct tuple.
    nxt : ndarray (U,)
        Next token.
    w : ndarray (U,)
        Weighted count (> 0).
    n_symbols : int
    lags : tuple of int
    classes : ndarray (n_symbols,) or None
        The labels of the states, None for integer codes.
    n_dropped : int
        Transitions dropped because their target or a token of their window was missing (the data layer's
        ``missing`` symbol, docs/math.md §7.1); merged counts add them.

    Examples
    --------
    >>> import numpy as np
    >>> from mtdmath.fitting import TransitionCounts
    >>> a = TransitionCounts.from_sequences([0, 1, 1, 0], lags=(1,))
    >>> b = TransitionCounts.from_sequences([1, 0, 1], lags=(1,), n_symbols=2)
    >>> (a + b).n_obs
    5.0
    """

    __slots__ = ("ctx", "nxt", "w", "n_symbols", "lags", "classes", "n_dropped")

    def __init__(self, ctx: Any, nxt: Any, w: Any, n_symbols: int, lags: tuple[int, ...], classes: Any = None,
                 n_dropped: int = 0):
        self.nxt = np.ascontiguousarray(nxt, dtype=np.int64)
        self.ctx = np.ascontiguousarray(ctx, dtype=np.int64).reshape(self.nxt.shape[0], len(lags))
        self.w = np.ascontiguousarray(w, dtype=np.float64)
        self.n_symbols = int(n_symbols)
        self.lags = tuple(int(l) for l in lags)
        self.classes = None if classes is None else np.asarray(classes, dtype=object)
        self.n_dropped = int(n_dropped)
        for a in (self.ctx, self.nxt, self.w):
            a.setflags(write=False)

    @classmethod
    def from_sequences(cls, X: Any, *, lags: Any, n_symbols: int | None = None, sample_weight: Any = None,
                       lengths: Any = None, missing: Any = None, pad: Any = None) -> "TransitionCounts":
        """Count the transitions of ``X`` (any layout of :meth:`MTD.fit`) for the lags ``lags``, each sequence
        conditioned on its first ``max(lags)`` tokens; ``missing`` and ``pad`` as for
        :class:`~mtdmath.fitting.MTD`."""
        p = parse(X, None, lengths, sample_weight, missing=missing, pad=pad)
        return count(p, check_lags(None, lags), n_symbols)

    @property
    def n_obs(self) -> float:
        """Total weight: the number of (weighted) transitions, the ``n`` of BIC."""
        return float(self.w.sum())

    def __len__(self) -> int:
        return int(self.w.shape[0])

    def __add__(self, other: Any) -> "TransitionCounts":
        if not isinstance(other, TransitionCounts):
            return NotImplemented
        if other.lags != self.lags or other.n_symbols != self.n_symbols:
            raise ValueError(f"counts merge only with equal lags and n_symbols (got lags {self.lags}, "
                             f"{other.lags}; n_symbols {self.n_symbols}, {other.n_symbols})")
        if (self.classes is None) != (other.classes is None) or (
                self.classes is not None and self.classes.tolist() != other.classes.tolist()):
            raise ValueError("counts merge only with the same state labels (classes)")
        tuples = np.concatenate([np.column_stack([self.ctx, self.nxt]), np.column_stack([other.ctx, other.nxt])])
        digits, w = _unique_tuples(tuples, np.concatenate([self.w, other.w]), self.n_symbols)
        k = len(self.lags)
        return TransitionCounts(digits[:, :k], digits[:, k], w, self.n_symbols, self.lags, self.classes,
                                self.n_dropped + other.n_dropped)

    def used_states(self) -> np.ndarray:
        """Sorted states that occur in a tuple (as a context token or as the next token)."""
        return np.unique(np.concatenate([self.ctx.ravel(), self.nxt]))

    def relabel(self, states: np.ndarray) -> "TransitionCounts":
        """The counts on the sub-state-space ``states`` (sorted, holding every used state): state
        ``states[i]`` becomes ``i``. Labels are dropped (the result is internal to a fit)."""
        code = np.full(self.n_symbols, -1, dtype=np.int64)
        code[states] = np.arange(states.shape[0])
        return TransitionCounts(code[self.ctx], code[self.nxt], self.w, states.shape[0], self.lags,
                                n_dropped=self.n_dropped)

    def __repr__(self) -> str:
        dropped = f", n_dropped={self.n_dropped}" if self.n_dropped else ""
        return (f"TransitionCounts({len(self)} distinct tuples, n_obs={self.n_obs:g}, n_symbols={self.n_symbols}, "
                f"lags={self.lags}{dropped})")


# ----------------------------------------------------------------------------------------------------------
# parsing: every layout -> sequences of codes with weights
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Parsed:
    """Data parsed into codes: ``seqs`` (the rows of a design matrix are length-(L + 1) sequences), their
    weights, whether they came as a design matrix (and its number ``L`` of lag columns), the labels."""

    seqs: list[np.ndarray]
    seq_w: np.ndarray
    tok_w: list[np.ndarray] | None
    design: bool
    n_lag_columns: int | None
    classes: np.ndarray | None
    name: str = "X"
    weight_name: str = "sample_weight"
    #: lengths of the sequences before the missing tokens cut them (None when nothing was missing), and the
    #: number of design-matrix rows dropped for a missing token
    full_lengths: list[int] | None = None
    dropped_rows: int = 0
    #: code of the null state that :func:`count` puts before every sequence (``pad``), or None
    pad_code: int | None = None

    @property
    def longest(self) -> int:
        return max(s.shape[0] for s in self.seqs)

    @property
    def top(self) -> int:
        top = max((int(s.max()) for s in self.seqs if s.size), default=-1)
        return top if self.pad_code is None else max(top, self.pad_code)

    def sequences_for(self, max_lag: int) -> list[np.ndarray]:
        """The sequences a fit of max lag ``max_lag`` reads: a design matrix keeps its last ``max_lag`` lag
        columns (lags max_lag..1) and y; sequences are returned as they are."""
        if not self.design:
            return self.seqs
        L = self.n_lag_columns
        if max_lag > L:
            raise ValueError(f"{self.name} has {L} lag columns, fewer than the max lag {max_lag}")
        return [s[L - max_lag :] for s in self.seqs]


def parse(X: Any, y: Any = None, lengths: Any = None, sample_weight: Any = None, *, classes: Any = None,
          fitted: bool = False, name: str = "X", weight_name: str = "sample_weight", missing: Any = None,
          pad: Any = None) -> Parsed:
    """Any accepted layout of ``X`` (and ``y``, ``lengths``, ``sample_weight``) -> :class:`Parsed`.

    - ``y`` given: mtdlearn's design matrix, ``X`` (n, L) with column ``c`` the token at lag ``L - c`` (oldest
      first) and ``y`` (n,) the next token: each row is the sequence ``[X[i], y[i]]`` conditioned on its first
      L tokens; ``sample_weight`` is then one weight per row, shape (n,).
    - ``lengths`` given: hmmlearn's concatenated sequences, ``X`` (N,) or (N, 1), split by ``lengths``;
      per-token weights (N,) are split alike.
    - otherwise: one 1-D sequence, a 2-D array whose rows are sequences, or a list of 1-D sequences.

    Labels become codes (``classes`` given: those of a fit, an unseen label raises; else the sorted labels or a
    Categorical's categories). ``fitted``: the data are scored by a fitted model (labels need ``classes``).

    ``missing``: the symbol of a missing token (``float('nan')`` also matches None). Every sequence is cut at
    its missing tokens into the runs between them, each conditioned on its own first tokens, so a transition
    whose target or window holds a missing token is dropped (march's convention); a design-matrix row holding
    one is dropped. :func:`count` reports how many transitions that dropped.

    ``pad``: a null symbol (mtdlearn's convention) that :func:`count` puts before every sequence as many times
    as the window is long, so that every token, from the first, is the target of a transition whose window
    holds the null symbol where the sequence has no past. It is a state of its own (labels: appended after
    the data's labels; codes: the given code, which the data must not use) and never a target.
    """
    if pad is not None and missing is not None:
        raise ValueError("pad and missing cannot be combined (a run after a missing token would be padded, not "
                         "dropped)")
    if isinstance(X, (str, bytes)):
        raise ValueError(f"{name} is one string ({X[:20]!r}); to fit its characters as symbols pass list({name})")
    if type(X).__module__.startswith("scipy.sparse"):
        raise ValueError(f"{name}: sparse input is not supported; pass integer token sequences (dense arrays)")
    if y is not None and lengths is not None:
        raise ValueError("give either y (design matrix) or lengths (concatenated sequences), not both")
    masks = y_mask = None
    if missing is not None:
        X, masks = fill_missing(X, missing, name)
        if y is not None:
            y, y_mask = fill_missing(y, missing, "y")
    if classes is not None or not fitted:
        if y is None:
            X, classes = encode(X, name, classes)
        else:
            (X, y), classes = encode([X, y], name, classes)
    X = to_numpy(X)
    design, L = y is not None, None
    w = to_numpy(sample_weight)
    if design:
        Xa, ya = np.asarray(X), np.asarray(to_numpy(y))
        if Xa.ndim != 2:
            raise ValueError(f"{name} must be a 2-D design matrix (n, L) when y is given (got shape {Xa.shape})")
        if ya.ndim != 1 or ya.shape[0] != Xa.shape[0]:
            raise ValueError(f"y must be 1-D with one entry per row of {name} ({Xa.shape[0]}) (got shape {ya.shape})")
        if Xa.dtype == bool or not np.issubdtype(Xa.dtype, np.integer):
            raise ValueError(f"{name} must hold integer tokens (got dtype {Xa.dtype}{_why_not_tokens(Xa)})")
        if ya.dtype == bool or not np.issubdtype(ya.dtype, np.integer):
            raise ValueError(f"y must hold integer tokens (got dtype {ya.dtype})")
        if w is not None:
            wa = np.asarray(w) if not isinstance(w, (list, tuple)) else np.asarray(w, dtype=object)
            if wa.shape != (Xa.shape[0],):
                raise ValueError(f"{weight_name} must have one weight per row of the design matrix {name}, shape "
                                 f"({Xa.shape[0]},) (got shape {wa.shape}): each row is one transition")
        L = Xa.shape[1]
        seqs = as_sequences(np.concatenate([Xa, ya[:, None]], axis=1), name)
    elif lengths is not None:
        Xa = np.asarray(X)
        if Xa.ndim == 2 and Xa.shape[1] == 1:
            Xa = Xa[:, 0]
        if Xa.ndim != 1:
            raise ValueError(f"{name} must have shape (N,) or (N, 1) when lengths is given (got shape {Xa.shape})")
        ln = np.asarray(to_numpy(lengths))
        if ln.ndim != 1 or ln.size == 0 or not np.issubdtype(ln.dtype, np.integer) or np.any(ln < 0):
            raise ValueError(f"lengths must be a 1-D array of non-negative integers (got {lengths!r})")
        if int(ln.sum()) != Xa.shape[0]:
            raise ValueError(f"lengths must sum to len({name}) = {Xa.shape[0]} (got sum {int(ln.sum())})")
        cut = np.cumsum(ln)[:-1]
        seqs = as_sequences(np.split(Xa, cut), name)
        if w is not None and not isinstance(w, (list, tuple)):
            wa = np.asarray(w)
            if wa.ndim == 1 and wa.shape[0] != len(seqs):
                if wa.shape[0] != Xa.shape[0]:
                    raise ValueError(f"{weight_name} must have one entry per sequence ({len(seqs)}) or one per "
                                     f"token ({Xa.shape[0]}) (got shape {wa.shape})")
                w = np.split(wa, cut)
    else:
        seqs = as_sequences(X, name)
    seq_w, tok_w = check_weights(w, seqs, weight_name)
    out = Parsed(seqs, seq_w, tok_w, design, L, classes, name, weight_name)
    if pad is not None:
        out.pad_code, out.classes = pad_state(out, pad)
    if masks is not None:
        if design:
            row_masks = list(np.concatenate([np.asarray(masks[0]).reshape(len(seqs), -1), np.asarray(y_mask[0])
                                             .reshape(-1, 1)], axis=1))
        elif lengths is not None:
            row_masks = np.split(np.concatenate(masks), np.cumsum(np.asarray(to_numpy(lengths)))[:-1])
        else:
            row_masks = masks
        out = cut_missing(out, row_masks)
    return out


def _is_missing(a: np.ndarray, missing: Any) -> np.ndarray:
    """Elementwise: does ``a`` hold the missing symbol (NaN also matches None, as pandas' ``isna``)."""
    if isinstance(missing, float) and math.isnan(missing):
        if a.dtype.kind == "f":
            return np.isnan(a)
        if a.dtype.kind == "O":
            return np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in a.ravel()],
                            dtype=bool).reshape(a.shape)
        return np.zeros(a.shape, dtype=bool)
    if a.dtype.kind in "USO" or isinstance(missing, str) or a.dtype.kind == np.asarray(missing).dtype.kind:
        return np.asarray(a == missing, dtype=bool).reshape(a.shape) if a.dtype.kind != "O" else \
            np.array([v == missing for v in a.ravel()], dtype=bool).reshape(a.shape)
    return np.asarray(a == missing, dtype=bool)


def fill_missing(X: Any, missing: Any, name: str) -> tuple[Any, list[np.ndarray]]:
    """``X`` with every missing token replaced by a token it holds (the runs between them are cut later), and
    the mask of the missing tokens of each leaf (one 1-D or 2-D array, or one per sequence of a list)."""
    if np.ndim(missing) != 0:
        raise ValueError(f"missing must be one symbol (got {missing!r})")
    single = not isinstance(X, (list, tuple)) or all(np.ndim(v) == 0 for v in X)  # one array or one sequence
    leaves = [X] if single else list(X)
    arrs = []
    for leaf in leaves:
        a = np.asarray(leaf) if not isinstance(leaf, (list, tuple)) else np.asarray(leaf, dtype=object)
        arrs.append(np.asarray(to_numpy(a)) if a.dtype.kind != "O" or not isinstance(leaf, (list, tuple))
                    else a)
    masks = [_is_missing(a, missing) for a in arrs]
    present = [a[~m] for a, m in zip(arrs, masks) if (~m).any()]
    if not present:
        raise ValueError(f"{name} holds only missing tokens ({missing!r}): no data to fit")
    filler = present[0].reshape(-1)[0]
    out = []
    for a, m in zip(arrs, masks):
        a = a.copy() if m.any() else a
        a[m] = filler
        # integer codes read as floats (or objects) because of NaN or None become integer codes again
        if a.dtype.kind == "f" and a.size and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        elif a.dtype.kind == "O" and a.size and all(isinstance(v, (int, np.integer, float, np.floating)) and
                                                     float(v) == int(v) for v in a.ravel()):
            a = a.astype(np.int64)
        out.append(a)
    return (out[0] if single else out), masks


def cut_missing(parsed: Parsed, masks: list[np.ndarray]) -> Parsed:
    """Cut every sequence of ``parsed`` at the tokens ``masks`` marks missing (the runs between them become
    sequences of the same weight); a design-matrix row with a missing token is dropped."""
    seqs, seq_w, tok_w = [], [], [] if parsed.tok_w is not None else None
    full, dropped_rows = [], 0
    for i, (y, m) in enumerate(zip(parsed.seqs, masks)):
        m = np.asarray(m, dtype=bool).reshape(-1)
        if parsed.design:
            if m.any():
                dropped_rows += 1
                continue
            seqs.append(y)
            seq_w.append(parsed.seq_w[i])
            continue
        full.append(y.shape[0])
        edges = np.flatnonzero(np.diff(np.concatenate([[1], m.astype(np.int8), [1]])))
        for a, b in zip(edges[::2], edges[1::2]):  # runs of present tokens [a, b)
            seqs.append(y[a:b])
            seq_w.append(parsed.seq_w[i])
            if tok_w is not None:
                tok_w.append(parsed.tok_w[i][a:b])
    if not seqs:
        raise ValueError(f"{parsed.name}: every row holds a missing token: no data to fit")
    return Parsed(seqs, np.asarray(seq_w, dtype=np.float64), tok_w, parsed.design, parsed.n_lag_columns,
                  parsed.classes, parsed.name, parsed.weight_name, None if parsed.design else full, dropped_rows)


def pad_state(parsed: Parsed, pad: Any) -> tuple[int, np.ndarray | None]:
    """(code of the null state ``pad``, the classes with it) for parsed data (``pad`` of :func:`parse`)."""
    if parsed.design:
        raise ValueError("pad does not apply to a design matrix (each row is one transition with its window)")
    if np.ndim(pad) != 0:
        raise ValueError(f"pad must be one symbol (got {pad!r})")
    classes = parsed.classes
    if classes is None:
        if isinstance(pad, (bool, np.bool_)) or not isinstance(pad, (int, np.integer)) or pad < 0:
            raise ValueError(f"pad must be a non-negative integer code for integer data (got {pad!r})")
        if any(np.any(y == pad) for y in parsed.seqs):
            raise ValueError(f"pad = {pad} is a token of {parsed.name}: the null state must be a code of its own")
        return int(pad), None
    hits = np.flatnonzero(np.asarray([c == pad for c in classes], dtype=bool))
    if hits.size:  # a fitted model's classes already hold the null state
        if any(np.any(y == hits[0]) for y in parsed.seqs):
            raise ValueError(f"pad = {pad!r} is a label of {parsed.name}: the null state must be a symbol of its own")
        return int(hits[0]), classes
    return len(classes), np.append(classes, np.asarray([pad], dtype=object))


def resolve_states(parsed: Parsed, n_symbols: Any) -> int:
    """S: the number of labels, else ``n_symbols`` (checked against the largest token), else largest token + 1."""
    n_symbols = check_classes_states(parsed.classes, n_symbols)
    top = parsed.top
    if n_symbols is None:
        return top + 1
    S = check_int(n_symbols, "n_symbols", minimum=1)
    if S <= top:
        raise ValueError(f"n_symbols must exceed the largest token {top} (got n_symbols = {S})")
    return S


def count(parsed: Parsed, lags: tuple[int, ...], n_symbols: Any = None, start: int | None = None) -> TransitionCounts:
    """Aggregate the transitions of ``parsed`` for ``lags``: every transition ``t = start..T-1`` of every
    sequence (``start`` defaults to and is at least ``max(lags)``) as one tuple, weighted by its sequence's
    weight times its token's weight. A design matrix keeps its last ``max(lags)`` lag columns (and ignores
    ``start``: each row is one transition). Python work is O(#sequences)."""
    name = parsed.name
    S = resolve_states(parsed, n_symbols)
    M = lags[-1] if lags else 0
    seqs, tok_w = parsed.sequences_for(M), parsed.tok_w
    if parsed.design:
        start = M
    else:
        start = M if start is None else max(int(start), M)
        for i, s in enumerate(seqs):
            if s.shape[0] < M and parsed.full_lengths is None and parsed.pad_code is None:  # (runs, padded)
                raise ValueError(f"{name}[{i}] has length {s.shape[0]}, shorter than its max lag {M}")
    # the parameters: up to one (S, S) matrix per lag, a few copies per restart and SQUAREM iterate
    why = f"the largest token {S - 1} makes S = {S} states" if n_symbols is None else f"S = {S} states"
    check_alloc(8 * max(len(lags), 1) * S * S, 8, name if n_symbols is None else "n_symbols",
                f"{why}: (S, S) transition matrices for {len(lags)} lags")
    if parsed.pad_code is not None:  # the null state fills every window before the sequence starts
        seqs = [np.concatenate([np.full(start, parsed.pad_code, dtype=np.int64), y]) for y in seqs]
        tok_w = None if tok_w is None else [np.concatenate([np.zeros(start), w]) for w in tok_w]
    lag_arr = np.asarray(lags, dtype=np.int64)
    tuples, wts = [], []
    same = len({y.shape[0] for y in seqs}) == 1 and seqs[0].shape[0] > start
    if len(seqs) > 1 and tok_w is None and same:
        # many sequences of one length (e.g. a design matrix, one row per transition): one vectorised pass
        keep = parsed.seq_w > 0
        Y = np.stack(seqs)[keep]
        t = np.arange(start, Y.shape[1])
        tuples.append(np.stack([Y[:, t - l] for l in lag_arr] + [Y[:, t]], axis=2).reshape(-1, len(lags) + 1))
        wts.append(np.repeat(parsed.seq_w[keep], t.shape[0]))
    else:
        for i, (y, wt) in enumerate(zip(seqs, parsed.seq_w)):
            T = y.shape[0]
            if T <= start or wt == 0:
                continue
            t = np.arange(start, T)
            tuples.append(np.stack([y[t - l] for l in lag_arr] + [y[t]], axis=1))
            wts.append(np.full(T - start, wt) if tok_w is None else wt * tok_w[i][start:])
    if not tuples or not sum(a.shape[0] for a in tuples):
        raise ValueError(f"{name} holds no transitions (every sequence has length <= max lag {M}, or zero weight)")
    digits, w = _unique_tuples(np.concatenate(tuples), np.concatenate(wts), S)
    if w.shape[0] == 0:
        raise ValueError(f"{parsed.weight_name} gives every transition weight 0: no data to fit")
    k = len(lags)
    dropped = parsed.dropped_rows
    if parsed.full_lengths is not None:  # transitions of the uncut sequences minus those of their runs
        dropped += sum(max(T - start, 0) for T in parsed.full_lengths) - sum(max(y.shape[0] - start, 0)
                                                                             for y in seqs)
    return TransitionCounts(digits[:, :k], digits[:, k], w, S, lags, parsed.classes, dropped)
