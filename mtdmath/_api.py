"""The table of mtdmath's public names: where each is documented, and what each promises.

One row per name of ``mtdmath.__all__`` (the core maths and the ``fitting`` namespace), one per public
name of the namespaces ``mtdmath.fitting`` and ``mtdmath.nn`` that the contract covers (keys
``"fitting.NAME"``, ``"nn.NAME"``), plus the exact all-prefix posterior of ``mtdmath.experiments``,
which shares the core's contract. Two consumers read it:

- the documentation (``docs/conf.py``) generates the API reference from it, section by section, and
  refuses to build when a public name has no row;
- the contract test (``tests/test_contract.py``) draws valid inputs for every function from the
  domains of its arguments and checks the promises listed here; it fails when a public name has
  no row, so a new function cannot be left out of either.

The contract itself is written out in ``docs/guide/verification.md``. A name owned by another part
of the library (the fitting estimators, the torch transformers) carries ``covered_by``: the tests
that hold it to the same contract; its row then gives only its section.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

__all__ = ["DOMAINS", "PROMISES", "SECTIONS", "Entry", "API", "EXTRA", "entry"]

#: API reference sections, in order
SECTIONS = (
    "The MTD model",
    "Likelihood and derivatives",
    "Estimators of lam (pi known)",
    "Exact Bayes and Monte Carlo",
    "Fitting MTD models (pi unknown)",
    "Transformers",
)

#: the valid values of each kind of argument (what the contract test draws)
DOMAINS = {
    "S": "vocabulary size, S >= 1 (S = 1 and 2 included)",
    "m": "number of lags, m >= 1",
    "n": "number of transitions, n >= 0",
    "T": "sequence length, T >= m",
    "B": "number of sequences, >= 1",
    "concentration": "Dirichlet concentration of the rows of pi, > 0 (1e-3 ... 1e3)",
    "seed": "an int seed (the same seed gives the same bits)",
    "pi": "row-stochastic (S, S) matrix; exact zeros and entries down to 1e-300 (1e-30 in float32)",
    "alpha": "positive finite (m,) vector with a finite sum, 1e-300 ... 1e300",
    "lam": "points of the simplex, shape (..., m), exact zeros and tiny weights included",
    "lam_rows": "points of the simplex, shape (m,) or (B, m), as lam",
    "lam_pos": "points of the simplex that give every observed transition positive probability",
    "tokens": "int64 sequences (..., T) in [0, S), sampled from the model (every transition possible)",
    "C": "lag factors (..., n, m) in [0, 1] with no all-zero row; empty batches and n = 0 included",
    "C_exact": "lag factors as C, with binom(n+m-1, m-1) count states within the exact recursion's reach",
    "C_3d": "lag factors (B, n, m) as C_exact",
    "eta": "a step size >= 0 (0, tiny, η*, large) or a schedule of them",
    "steps": "a number of steps, 0 ... 3",
    "k": "a number of steps, 0 ... 3",
    "p": "probability vectors (..., S)",
    "q": "probability vectors (..., S) positive wherever p is",
    "L": "a context length, m <= L",
    "count": "a small number of sequences (optimal_step's n_train, n_test), >= 2",
    "n_boot": "bootstrap resamples, 0 or 2",
    "samples": "Monte Carlo draws, >= 1",
    "max_bytes": "a memory budget in bytes, > 0",
}

#: what a result may be required to be (checked by tests/test_contract.py)
PROMISES = {
    "simplex": "finite, >= 0 and summing to 1 over the last axis (within m·eps of the dtype)",
    "finite": "finite (no NaN, no ±inf)",
    "loglik": "finite where the data are possible under lam, exactly -inf where they are not; never NaN",
    "derivative": "never NaN; finite wherever the exact value (computed in log space) is below the dtype's max",
    "nonneg": ">= 0 (up to rounding)",
    "tokens": "int64 in [0, S), each transition possible under (pi, lam)",
    "exact": "equal to an independent brute-force evaluation",
    "seeded": "the same int seed gives the same bits",
    "refuses_impossible": "ValueError naming lam when lam gives an observed transition probability 0",
    "refuses_mu_underflow": "ValueError naming alpha when the prior mean alpha/α₀ underflows to 0 in float64 "
                            "(alpha entries more than ~1e308 apart): an estimator started from μ would divide by it",
    "refuses_range": "ValueError naming alpha when the exact recursion's weights fall below the float64 range "
                     "(the smallest alpha_g/α₀ below about 1e-300): the posterior's ratios are not representable",
    "refuses_mc": "ValueError naming alpha or C when importance sampling has no effective draw "
                  "(documented: use the exact posterior)",
}


@dataclass(frozen=True)
class Entry:
    """One public name.

    Attributes
    ----------
    section : str
        Its section of the API reference (one of :data:`SECTIONS`).
    args : dict
        Parameter name -> domain (a key of :data:`DOMAINS`) for the contract test's draws;
        parameters left out take their defaults.
    promises : tuple of str
        Keys of :data:`PROMISES` that the result keeps on every valid input.
    budget : callable, optional
        ``budget(sizes) -> bytes``: the most a call may allocate (NumPy, measured with
        tracemalloc), from the sizes of its arguments (a dict with B, n, m, S, T, steps).
    max_n : int
        The largest number of transitions drawn (the exact Bayes recursion grows like
        binom(n+m-1, m-1)).
    covered_by : str, optional
        For a name outside the core: the tests that hold it to the contract instead.
    """

    section: str
    args: dict = field(default_factory=dict)
    promises: tuple = ()
    budget: Callable[[dict], float] | None = None
    max_n: int = 100_000
    covered_by: str | None = None


def _linear(factor: int, extra: int = 0) -> Callable[[dict], float]:
    """A budget linear in the data: ``factor`` float64 copies of the (B, n, m) lag factors and of
    the (B, T, S) outputs, plus 1 MiB for fixed-size work (validation, small temporaries)."""
    def budget(z: dict) -> float:
        cells = z["B"] * max(z["n"], 1) * z["m"] + z["B"] * z["T"] * (z["S"] + z["m"]) + extra
        return 8 * factor * cells + 2**20
    return budget


def _exact_bayes(z: dict) -> float:
    from .bayes import levels_bytes

    return levels_bytes(max(z["B"], 1), z["n"], z["m"]) + 8 * z["B"] * (z["n"] + 1) * z["m"] * 2 + 2**20


def _all_prefix_md(z: dict) -> float:
    # O(B·T·m) for one step; a step k >= 2 works in chunks of at most _CHUNK_ELEMENTS (B, r, n, m)
    # elements, with about six such float64 arrays alive (the masked log-sum-exp and its inputs)
    from .estimators import _CHUNK_ELEMENTS

    chunks = 6 * 8 * min(_CHUNK_ELEMENTS, z["B"] * (z["n"] + 1) * max(z["n"], 1) * z["m"]) if z["steps"] >= 2 else 0
    return _linear(16)(z) + chunks


def _optimal_step(z: dict) -> float:
    return _linear(64)(z) + 8 * 2**20  # scipy's optimisers and the bootstrap's index arrays


def _predicted_step(z: dict) -> float:
    # n_samples = 16 draws of lam*, each with its (S^m, m, S) window array, the (S^m, S) transition
    # laws and the power iteration's two (S^m,) laws, a few float64 copies alive at once
    w = z["S"] ** z["m"]
    return 8 * 16 * 16 * w * (z["m"] + 1) * (z["S"] + 1) + 4 * 2**20


_MODEL, _LIK, _EST, _BAYES = SECTIONS[:4]
_FIT = "covered by tests/test_contract_layers.py (the fitting estimators' contract; details in tests/test_fit*.py)"
_NN = ("covered by tests/test_contract_layers.py (the torch layer's contract; details in tests/test_nn*.py and "
       "tests/test_transformer.py)")

API: dict[str, Entry] = {
    "random_transition_matrix": Entry(_MODEL, {"S": "S", "concentration": "concentration", "rng": "seed"},
                                      ("simplex", "seeded"), _linear(4)),
    "sample": Entry(_MODEL, {"pi": "pi", "lam": "lam_rows", "T": "T", "rng": "seed"}, ("tokens", "seeded"), _linear(8)),
    "sample_icl": Entry(_MODEL, {"pi": "pi", "alpha": "alpha", "T": "T", "batch": "B", "rng": "seed"},
                        ("tokens", "simplex", "seeded"), _linear(8)),
    "lag_factors": Entry(_MODEL, {"tokens": "tokens", "pi": "pi", "m": "m"}, ("finite", "exact"), _linear(6)),
    "predictive": Entry(_MODEL, {"lam": "lam", "tokens": "tokens", "pi": "pi"}, ("simplex", "exact"), _linear(6)),
    "log_likelihood": Entry(_LIK, {"lam": "lam", "C": "C"}, ("loglik",), _linear(8)),
    "gradient": Entry(_LIK, {"lam": "lam", "C": "C"}, ("derivative", "nonneg", "refuses_impossible"), _linear(8)),
    "hessian": Entry(_LIK, {"lam": "lam", "C": "C"}, ("derivative", "refuses_impossible"), _linear(8, 0), max_n=2000),
    "responsibilities": Entry(_LIK, {"lam": "lam", "C": "C"}, ("simplex", "refuses_impossible"), _linear(8)),
    "kl": Entry(_LIK, {"p": "p", "q": "q"}, ("finite", "nonneg"), _linear(8)),
    "mirror_descent": Entry(_EST, {"C": "C", "eta": "eta", "steps": "steps", "lam0": "lam_pos"}, ("simplex",),
                            _linear(12)),
    "em": Entry(_EST, {"C": "C", "steps": "steps", "lam0": "lam_pos"}, ("simplex",), _linear(12)),
    "mle": Entry(_EST, {"C": "C"}, ("simplex",), _linear(16)),
    "kkt_gap": Entry(_EST, {"lam": "lam", "C": "C"}, ("derivative", "refuses_impossible"), _linear(8)),
    "eta_bayes": Entry(_EST, {"alpha": "alpha"}, ("finite", "nonneg")),
    "one_step_md": Entry(_EST, {"C": "C", "alpha": "alpha", "eta": "eta"}, ("simplex",), _linear(12)),
    "corrected_one_step_md": Entry(_EST, {"C": "C", "alpha": "alpha"}, ("simplex", "refuses_mu_underflow"),
                                   _linear(12)),
    "optimal_step": Entry(_EST, {"pi": "pi", "alpha": "alpha", "L": "L", "n_train": "count", "n_test": "count",
                                 "n_boot": "n_boot", "rng": "seed"}, ("finite", "seeded"), _optimal_step, max_n=12),
    "predicted_step": Entry(_EST, {"pi": "pi", "alpha": "alpha", "n_samples": "samples", "rng": "seed"},
                            ("finite", "seeded", "refuses_mu_underflow"), _predicted_step),
    "k_step_md": Entry(_EST, {"C": "C", "alpha": "alpha", "k": "k", "eta": "eta"}, ("simplex",), _linear(12)),
    "posterior_mean": Entry(_BAYES, {"C": "C_exact", "alpha": "alpha", "max_bytes": "max_bytes"}, ("simplex", "refuses_range"),
                            _exact_bayes, max_n=40),
    "log_evidence": Entry(_BAYES, {"C": "C_exact", "alpha": "alpha", "max_bytes": "max_bytes"}, ("finite", "refuses_range"),
                          _exact_bayes, max_n=40),
    "posterior_mean_mc": Entry(_BAYES, {"C": "C", "alpha": "alpha", "samples": "samples", "rng": "seed"},
                               ("simplex", "seeded", "refuses_mc"), _linear(16, 2**16), max_n=2000),
    "md_predictive_all_prefixes": Entry(_EST, {"tokens": "tokens", "pi": "pi", "alpha": "alpha", "eta": "eta",
                                               "steps": "steps"}, ("simplex", "refuses_mu_underflow"),
                                        _all_prefix_md, max_n=200),
    "n_count_states": Entry(_BAYES, {"n": "n", "m": "m"}, ("exact",)),
    # the fitting namespace (mtdmath.fitting): each of its names has a row of its own below
    "fitting": Entry("Fitting MTD models (pi unknown)", covered_by="the rows fitting.NAME below"),
    # the torch layer (mtdmath.nn), loaded on first use
    **{f"nn.{name}": Entry("Transformers", covered_by=_NN) for name in (
        "MDTransformer", "StandardTransformer", "ICLTask", "train", "TrainHistory",
        "save_checkpoint", "load_checkpoint", "model_from_spec", "parse_model_spec", "effective_step", "step_by_n",
        "matched_step", "fit_adaptive_step", "adaptive_params")},
    # the fitting estimators (mtdmath.fitting)
    **{f"fitting.{name}": Entry("Fitting MTD models (pi unknown)", covered_by=_FIT) for name in (
        "fit", "select_order", "select_lags", "MTD", "MTDModel", "ConvergenceMonitor", "fit_icl",
        "ICLFit", "MarkovChain", "lr_test", "compare_models", "LRTest", "ModelComparison")},
}

#: public functions of subpackages held to the core's contract (not in ``mtdmath.__all__``)
EXTRA: dict[str, Entry] = {
    "experiments.posterior_mean_all_prefixes": Entry(
        _BAYES, {"C": "C_3d", "alpha": "alpha", "max_bytes": "max_bytes"}, ("simplex", "refuses_range"), _exact_bayes,
        max_n=40),
}


def entry(name: str) -> Entry:
    """The row of a public name; ``KeyError`` naming the table for a name without one."""
    try:
        return API[name] if name in API else EXTRA[name]
    except KeyError:
        raise KeyError(f"{name!r} has no row in mtdmath._api.API: add one (section, argument domains, "
                       "promises, budget) so that the docs list it and tests/test_contract.py checks it") from None
