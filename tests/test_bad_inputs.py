"""The bad-input matrix: every public function × argument × class of bad value raises a ValueError
whose message names the argument, before any work.

Data-driven: ``TABLE`` gives, per public name, a valid call (keyword arguments) and the kind of each
argument; ``BAD`` gives, per kind, the classes of bad value (NaN, inf, negative, wrong shape, wrong
ndim, empty, complex, string, object, bool, out of range, too large to allocate, ...). A public name
of ``mtdmath.__all__`` (or of the namespaces' rows in ``mtdmath._api.API``) without a row fails ``test_every_public_name_is_in_the_table``, so a new
function cannot skip validation unnoticed.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import mtdmath

torch = pytest.importorskip("torch")

PI = np.array([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4]])
Y = np.array([[0, 1, 2, 1, 0, 2, 2, 1], [1, 1, 0, 2, 1, 0, 1, 2]])
LAM = np.array([0.3, 0.7])
ALPHA = np.array([1.0, 2.0])
C = mtdmath.lag_factors(Y, PI, 2)

# ----------------------------------------------------------------------------- bad values per kind
BIG = 10**12  # an integer size whose allocation is refused by the budget


def _bad(kind: str) -> dict[str, object]:
    common = {"string": "abc", "object": object(), "complex": 1 + 2j, "none": None}
    if kind == "pi":
        return {"nan": np.where(PI == PI.max(), np.nan, PI), "inf": np.where(PI == PI.max(), np.inf, PI),
                "negative": PI - 0.25, "shape": np.full((3, 2), 0.5), "ndim": PI[0], "empty": np.zeros((0, 0)),
                "complex": PI + 0j, "string": PI.astype(str), "object": PI.astype(object).tolist() + [[object()] * 3],
                "sums": PI * 1.1, "ragged": [[0.5, 0.5], [1.0]], "bool": np.eye(3, dtype=bool)}
    if kind == "simplex":
        return {"nan": np.array([np.nan, 0.5]), "inf": np.array([np.inf, 0.0]), "negative": np.array([-0.2, 1.2]),
                "shape": np.array([0.2, 0.3, 0.5]), "empty": np.zeros(0), "complex": LAM + 0j,
                "string": ["0.3", "0.7"], "object": [object(), object()], "sums": np.array([0.5, 0.6]),
                "ragged": [[0.5, 0.5], [1.0]]}
    if kind == "alpha":
        return {"nan": np.array([np.nan, 1.0]), "inf": np.array([np.inf, 1.0]), "zero": np.array([0.0, 1.0]),
                "negative": np.array([-1.0, 1.0]), "ndim": ALPHA[None], "shape": np.array([1.0, 1.0, 1.0]),
                "empty": np.zeros(0), "complex": ALPHA + 0j, "string": ["1", "2"], "object": [object(), 1.0],
                "overflow": np.array([1e308, 1e308])}
    if kind == "C":
        return {"nan": np.where(C == C.max(), np.nan, C), "inf": np.where(C == C.max(), np.inf, C),
                "negative": C - 1.0, "ndim": C[0, 0], "complex": C + 0j, "string": C.astype(str),
                "object": [[object(), object()]], "impossible": np.concatenate([C, np.zeros((2, 1, 2))], axis=1),
                "shape": C[..., :1] * np.ones((1, 1, 3))}
    if kind == "tokens":
        return {"float": Y.astype(float), "bool": Y.astype(bool), "negative": Y - 1, "range": Y + 3,
                "ndim": np.int64(1), "short": Y[:, :1], "string": Y.astype(str), "object": Y.astype(object).tolist() + [[object()] * 8],
                "ragged": [[0, 1, 2], [1, 2]], "complex": Y + 0j, "uint_wrap": np.array([[0, 1, 2**63]], dtype=np.uint64)}
    if kind in ("int", "int_pos", "size"):
        out = {"float": 2.0, "string": "2", "bool": True, "negative": -1, "array": np.array([2, 3]), **common}
        if kind == "size":
            out["too_large"] = BIG
        return out
    if kind in ("float", "float_pos"):
        out = {"nan": np.nan, "inf": np.inf, "negative": -1.0, "string": "0.5", "bool": True, "complex": 0.5 + 1j,
               "array": np.array([[0.1, 0.2]]), "object": object()}
        if kind == "float_pos":
            out["zero"] = 0.0
        return out
    if kind == "bool":  # a flag: only True/False; "no" is truthy and 1 is not a flag
        return {"string": "no", "int": 1, "float": 0.0, "none": None, "array": np.array([True, False]),
                "object": object()}
    if kind == "rng":
        return {"string": "seed", "float": 1.5, "negative": -3, "object": object()}
    if kind == "dtype":
        return {"int": torch.int64, "string": "float32x", "complex": torch.complex64, "object": object(), "bool": torch.bool}
    if kind == "device":
        return {"string": "nodevice", "int_neg": -1, "object": object()}
    if kind == "spec":
        return {"unknown": "rnn:L=2", "bad_key": "std:Q=3", "bad_value": "std:L=zero", "empty": "", "int": 3,
                "negative": "std:L=-1"}
    if kind == "model":
        return {"object": object(), "string": "md", "none": None}
    if kind == "task":
        return {"object": object(), "none": None}
    if kind == "sequences":
        return {"float": SEQ.astype(float), "bool": SEQ.astype(bool), "negative": SEQ - 1, "ndim": np.int64(3),
                "string": SEQ.astype(str), "object": [object()] * 10, "complex": SEQ + 0j, "empty": np.zeros(0, int),
                "uint_wrap": np.array([0, 1, 2**63, 1], dtype=np.uint64)}
    if kind == "weights":  # sample_weight / weights: one per sequence or one per token of SEQ
        w = np.ones(SEQ.shape[0])
        return {"nan": np.where(np.arange(w.size) == 3, np.nan, w), "inf": np.where(np.arange(w.size) == 3, np.inf, w),
                "negative": -w, "shape": w[:-1], "ndim": w[None, :2], "zero": 0 * w, "complex": w + 1j,
                "string": w.astype(str), "object": [object()] * w.size, "bool": w.astype(bool)}
    if kind == "lags":
        return {"ndim": np.array([[1, 2]]), "zero": (0, 1), "negative": (-1, 2), "float": (1.5, 2), "string": "12",
                "duplicate": (1, 1), "empty": ()}
    if kind == "choice":
        return {"unknown": "nonsense", "int": 3, "none": None}
    if kind == "path":
        return {"missing": "/nonexistent/dir/x.pt", "int": 3, "none": None}
    raise KeyError(kind)


# ----------------------------------------------------------------------------- the table
# name -> (callable, valid kwargs, {argument: kind}); "skip" lists bad classes that are valid there
TABLE = {
    "random_transition_matrix": (mtdmath.random_transition_matrix, dict(S=3, concentration=1.0, rng=0),
                                 {"S": "size", "concentration": "float_pos", "rng": "rng"}),
    "sample": (mtdmath.sample, dict(pi=PI, lam=LAM, T=10, rng=0), {"pi": "pi", "lam": "simplex", "T": "size", "rng": "rng"}),
    "sample_icl": (mtdmath.sample_icl, dict(pi=PI, alpha=ALPHA, T=10, batch=2, rng=0),
                   {"pi": "pi", "alpha": "alpha", "T": "size", "batch": "size", "rng": "rng"}),
    "lag_factors": (mtdmath.lag_factors, dict(tokens=Y, pi=PI, m=2), {"tokens": "tokens", "pi": "pi", "m": "int_pos"}),
    "predictive": (mtdmath.predictive, dict(lam=LAM, tokens=Y, pi=PI), {"lam": "simplex", "tokens": "tokens", "pi": "pi"}),
    "log_likelihood": (mtdmath.log_likelihood, dict(lam=LAM, C=C), {"lam": "simplex", "C": "C"}),
    "gradient": (mtdmath.gradient, dict(lam=LAM, C=C), {"lam": "simplex", "C": "C"}),
    "hessian": (mtdmath.hessian, dict(lam=LAM, C=C), {"lam": "simplex", "C": "C"}),
    "responsibilities": (mtdmath.responsibilities, dict(lam=LAM, C=C), {"lam": "simplex", "C": "C"}),
    "kl": (mtdmath.kl, dict(p=LAM, q=LAM[::-1]), {"p": "simplex", "q": "simplex"}),
    "mirror_descent": (mtdmath.mirror_descent, dict(C=C, eta=0.1, steps=2, lam0=LAM),
                       {"C": "C", "eta": "float", "steps": "int", "lam0": "simplex"}),
    "em": (mtdmath.em, dict(C=C, steps=2, lam0=LAM), {"C": "C", "steps": "int", "lam0": "simplex"}),
    "mle": (mtdmath.mle, dict(C=C, tol=1e-10, max_steps=50), {"C": "C", "tol": "float_pos", "max_steps": "int_pos"}),
    "kkt_gap": (mtdmath.kkt_gap, dict(lam=LAM, C=C), {"lam": "simplex", "C": "C"}),
    "eta_bayes": (mtdmath.eta_bayes, dict(alpha=ALPHA), {"alpha": "alpha"}),
    "one_step_md": (mtdmath.one_step_md, dict(C=C, alpha=ALPHA, eta=0.2), {"C": "C", "alpha": "alpha", "eta": "float"}),
    "corrected_one_step_md": (mtdmath.corrected_one_step_md, dict(C=C, alpha=ALPHA), {"C": "C", "alpha": "alpha"}),
    "k_step_md": (mtdmath.k_step_md, dict(C=C, alpha=ALPHA, k=2, eta=0.1),
                  {"C": "C", "alpha": "alpha", "k": "int", "eta": "float"}),
    "posterior_mean": (mtdmath.posterior_mean, dict(C=C, alpha=ALPHA, max_bytes=2**30),
                       {"C": "C", "alpha": "alpha", "max_bytes": "float_pos"}),
    "log_evidence": (mtdmath.log_evidence, dict(C=C, alpha=ALPHA, max_bytes=2**30),
                     {"C": "C", "alpha": "alpha", "max_bytes": "float_pos"}),
    "posterior_mean_mc": (mtdmath.posterior_mean_mc, dict(C=C, alpha=ALPHA, samples=64, rng=0, chunk=16, max_bytes=2**30),
                          {"C": "C", "alpha": "alpha", "samples": "int_pos", "rng": "rng", "chunk": "int_pos",
                           "max_bytes": "float_pos"}),
    "md_predictive_all_prefixes": (mtdmath.md_predictive_all_prefixes, dict(tokens=Y, pi=PI, alpha=ALPHA, eta=0.2, steps=1),
                                   {"tokens": "tokens", "pi": "pi", "alpha": "alpha", "eta": "float", "steps": "int"}),
    "n_count_states": (mtdmath.n_count_states, dict(n=5, m=3), {"n": "int", "m": "int_pos"}),
    "optimal_step": (mtdmath.optimal_step, dict(pi=PI, alpha=ALPHA, L=6, n_train=8, n_test=8, n_boot=0, rng=0,
                                          schedule=False),
                     {"pi": "pi", "alpha": "alpha", "L": "int_pos", "n_train": "size", "n_test": "size",
                      "n_boot": "int", "rng": "rng", "schedule": "bool"}),
    "predicted_step": (mtdmath.predicted_step, dict(pi=PI, alpha=ALPHA, n_samples=8, rng=0),
                       {"pi": "pi", "alpha": "alpha", "n_samples": "int_pos", "rng": "rng"}),
}

SEQ = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 1, 2, 0, 0, 1] * 5)


def _fitting_rows():
    from mtdmath.fitting import (MTD, ChainModel, ConvergenceMonitor, ICLFit, MarkovChain, MTDModel, compare_models,
                                 lr_test)

    model = MTDModel(PI, LAM)
    chain1, chain2 = MarkovChain(1).fit(SEQ), MarkovChain(2).fit(SEQ)
    fitkw = dict(restarts=1, max_iter=50)
    fitted = MTD(2, n_symbols=3, **fitkw).fit(SEQ)
    icl = ICLFit(pi=PI, alpha=ALPHA, objective=0.0, history=np.zeros(0), n_iter=0, converged=True,
                 se_pi=np.zeros((3, 3)), se_alpha=np.zeros(2), n_sequences=0)
    return {
        "fit": (mtdmath.fitting.fit, dict(sequences=SEQ, order=2, **fitkw),
                {"sequences": "sequences", "order": "int_pos", "lags": "lags", "n_symbols": "int_pos",
                 "variant": "choice", "restarts": "int_pos", "tol": "float_pos", "max_iter": "int_pos", "rng": "rng",
                 "weights": "weights"}),
        "select_order": (mtdmath.fitting.select_order, dict(sequences=SEQ, max_order=2, restarts=1),
                         {"sequences": "sequences", "max_order": "int_pos", "criterion": "choice", "variant": "choice",
                          "weights": "weights"}),
        "select_lags": (mtdmath.fitting.select_lags, dict(sequences=SEQ, max_lag=3, restarts=1),
                        {"sequences": "sequences", "max_lag": "int_pos", "method": "choice", "criterion": "choice",
                         "screen": "int_pos", "tol": "float_pos", "rng": "rng"}),
        "MTD.fit": (lambda X, order=2, restarts=1, sample_weight=None:
                    MTD(order=order, restarts=restarts).fit(X, sample_weight=sample_weight), dict(X=SEQ),
                    {"X": "sequences", "order": "int_pos", "restarts": "int_pos", "sample_weight": "weights"}),
        "MarkovChain.fit": (lambda X, order=1, smoothing=0.0, n_symbols=None, burn_in=None, sample_weight=None:
                            MarkovChain(order, smoothing=smoothing, n_symbols=n_symbols, burn_in=burn_in).fit(
                                X, sample_weight=sample_weight), dict(X=SEQ),
                            {"X": "sequences", "order": "int", "smoothing": "float", "n_symbols": "int_pos",
                             "burn_in": "int", "sample_weight": "weights"}),
        "MarkovChain.sample": (chain1.sample, dict(n=20, random_state=0), {"n": "size", "random_state": "rng"}),
        "MarkovChain.predict_proba": (chain2.predict_proba, dict(X=Y[:, :2]), {"X": "tokens"}),
        "lr_test": (lr_test, dict(smaller=MarkovChain(0), larger=MarkovChain(1), X=SEQ),
                    {"smaller": "model", "larger": "model", "X": "sequences", "df": "int_pos"}),
        "compare_models": (compare_models, dict(models=[MarkovChain(0), MarkovChain(1)], X=SEQ),
                           {"models": "model", "X": "sequences"}),
        "MTDModel": (MTDModel, dict(pi=PI, lam=LAM), {"pi": "pi", "lam": "simplex", "lags": "lags"}),
        "MTDModel.predict_proba": (model.predict_proba, dict(contexts=Y[:, :2]), {"contexts": "tokens"}),
        "MTDModel.sample": (model.sample, dict(T=20, rng=0), {"T": "size", "rng": "rng"}),
        "MTDModel.perfect_sample": (model.perfect_sample, dict(n=20, rng=0),
                                    {"n": "size", "rng": "rng", "length": "int_pos", "max_steps": "int_pos"}),
        "MTD.transition_intervals": (MTD(2, restarts=1, max_iter=50).fit(SEQ).transition_intervals, dict(),
                                     {"level": "float_pos", "method": "choice", "family": "choice"}),
        "ChainModel": (ChainModel, dict(transition=PI, order=1), {"transition": "pi", "order": "int"}),
        "fit_icl": (mtdmath.fitting.fit_icl, dict(sequences=Y, m=2, max_iter=3), {"sequences": "sequences", "m": "int_pos",
                                                                   "alpha": "alpha", "tol": "float_pos"}),
        "ConvergenceMonitor": (ConvergenceMonitor, dict(tol=1e-6, max_iter=10), {"tol": "float_pos", "max_iter": "int_pos"}),
        "MTD.partial_fit": (lambda X, warm_start=False: MTD(2, **fitkw).partial_fit(SEQ).partial_fit(
                                X, warm_start=warm_start), dict(X=SEQ), {"X": "sequences", "warm_start": "bool"}),
        "MTD.per_sequence_lam": (fitted.per_sequence_lam, dict(X=Y, method="md", prior=ALPHA, eta=0.3),
                                 {"X": "sequences", "method": "choice", "prior": "alpha", "eta": "float",
                                  "max_bytes": "float_pos", "samples": "int_pos", "rng": "rng"}),
        "ICLFit.posterior_lam": (icl.posterior_lam, dict(sequences=Y, level=0.9, rng=0),
                                 {"sequences": "sequences", "level": "float_pos", "max_bytes": "float_pos",
                                  "samples": "int_pos", "rng": "rng"}),
    }


TABLE.update(_fitting_rows())
FITTING_NAMES_ALL = {"fit", "select_order", "select_lags", "MTD", "MTDModel", "ConvergenceMonitor",
                     "fit_icl", "ICLFit", "MarkovChain", "lr_test", "compare_models", "LRTest", "ModelComparison"}


def _nn_rows():
    from mtdmath import nn

    md = nn.MDTransformer.construct(PI, ALPHA)
    task = nn.ICLTask(PI, ALPHA, T=9)
    return {
        "MDTransformer": (nn.MDTransformer, dict(S=3, m=2, dtype=torch.float64),
                          {"S": "size", "m": "int_pos", "dtype": "dtype", "aggregation": "choice"}),
        "MDTransformer.construct_sink": (nn.MDTransformer.construct,
                                         dict(pi=PI, alpha=ALPHA, aggregation="softmax_sink", c=2.0, a=1.0,
                                              dtype=torch.float64),
                                         {"pi": "pi", "alpha": "alpha", "aggregation": "choice", "c": "float_pos",
                                          "a": "float", "dtype": "dtype", "device": "device"}),
        "adaptive_params": (nn.adaptive_params, dict(alpha=ALPHA, c=2.0, a=1.0),
                            {"alpha": "alpha", "c": "float_pos", "a": "float"}),
        "step_by_n": (nn.step_by_n, dict(model=md, tokens=Y, pi=PI, alpha=ALPHA),
                      {"model": "model", "tokens": "tokens", "pi": "pi", "alpha": "alpha"}),
        "matched_step": (nn.matched_step, dict(probs=torch.softmax(md(Y), -1).detach().numpy(), tokens=Y, pi=PI, alpha=ALPHA),
                         {"tokens": "tokens", "pi": "pi", "alpha": "alpha"}),
        "fit_adaptive_step": (nn.fit_adaptive_step, dict(n=[1, 2, 3], eta=[0.3, 0.2, 0.1], m=2), {"m": "int_pos"}),
        "MDTransformer.construct": (nn.MDTransformer.construct, dict(pi=PI, alpha=ALPHA, eta=0.2, dtype=torch.float64),
                                    {"pi": "pi", "alpha": "alpha", "eta": "float", "dtype": "dtype", "device": "device"}),
        "MDTransformer.forward": (md, dict(tokens=Y), {"tokens": "tokens"}),
        "StandardTransformer": (nn.StandardTransformer, dict(S=3, m=2, n_layers=1, d_model=8, n_heads=2, max_len=16),
                                {"S": "size", "m": "int_pos", "n_layers": "int_pos", "d_model": "size",
                                 "n_heads": "int_pos", "max_len": "size", "dropout": "float", "dtype": "dtype"}),
        "ICLTask": (nn.ICLTask, dict(pi=PI, alpha=ALPHA, T=9), {"pi": "pi", "alpha": "alpha", "T": "size", "device": "device"}),
        "ICLTask.sample": (task.sample, dict(batch=2), {"batch": "size"}),
        "train": (nn.train, dict(model=nn.MDTransformer(3, 2), task=task, steps=1, batch_size=2, progress=False),
                  {"model": "model", "task": "task", "steps": "int_pos", "batch_size": "int_pos", "lr": "float_pos",
                   "weight_decay": "float", "seed": "rng", "log_every": "int_pos"}),
        "model_from_spec": (nn.model_from_spec, dict(spec="std:L=1,d=8,h=2", S=3, m=2, max_len=16),
                            {"spec": "spec", "S": "size", "m": "int_pos", "max_len": "size"}),
        "parse_model_spec": (nn.parse_model_spec, dict(spec="std:L=2"), {"spec": "spec"}),
        "effective_step": (nn.effective_step, dict(model=md, tokens=Y, pi=PI, alpha=ALPHA),
                           {"model": "model", "tokens": "tokens", "pi": "pi", "alpha": "alpha"}),
        "load_checkpoint": (nn.load_checkpoint, dict(path="/nonexistent.pt"), {"path": "path"}),
        "head_ablation_hook": (nn.head_ablation_hook, dict(head=1), {"head": "int"}),
        "add_sink_hook": (nn.add_sink_hook, dict(weight=4.0, heads=[0]), {"weight": "float"}),
    }


TABLE.update(_nn_rows())

#: bad classes that are legitimately valid for an argument (documented reasons)
VALID = {
    ("*", "int", "none"): "an optional integer may be None where the signature says so",
    ("mirror_descent", "eta", "array"): "a 1-D eta is a step schedule (a 2-D one is still refused)",
    ("mirror_descent", "steps", "none"): "steps=None takes the schedule's length",
    ("one_step_md", "eta", "none"): "eta=None is η*",
    ("k_step_md", "eta", "none"): "eta=None is η*",
    ("md_predictive_all_prefixes", "eta", "none"): "eta=None is η*",
    ("random_transition_matrix", "rng", "none"): "rng=None is fresh entropy",
    ("sample", "rng", "none"): "rng=None is fresh entropy",
    ("sample_icl", "rng", "none"): "rng=None is fresh entropy",
    ("posterior_mean_mc", "rng", "none"): "rng=None is fresh entropy",
    ("optimal_step", "rng", "none"): "rng=None is fresh entropy",
    ("predicted_step", "rng", "none"): "rng=None is fresh entropy",
    ("optimal_step", "L", "none"): "L=None selects the training objective (then T must be given: tested apart)",
    ("sample", "lam", "shape"): "any length m of lam is an order (m = 3 <= T here)",
    ("predictive", "lam", "shape"): "any length m of lam is an order (m = 3 <= T here)",
    ("sample_icl", "alpha", "shape"): "any length of alpha is an order m",
    ("eta_bayes", "alpha", "shape"): "any length of alpha is an order m",
    ("md_predictive_all_prefixes", "alpha", "shape"): "any length of alpha is an order m (T = 8 >= 3)",
    ("optimal_step", "alpha", "shape"): "any length of alpha is an order m",
    ("predicted_step", "alpha", "shape"): "any length of alpha is an order m",
    ("mle", "C", "shape"): "any number of columns is an order m",
    ("log_likelihood", "C", "impossible"): "impossible data have log-likelihood -inf (documented)",
    ("log_evidence", "C", "impossible"): "impossible data have log evidence -inf (documented)",
    ("MDTransformer.construct", "alpha", "shape"): "any length of alpha is an order m",
    ("ICLTask", "alpha", "shape"): "any length of alpha is an order m (T = 9 > 3)",
    ("ICLTask", "T", "too_large"): "a task allocates nothing; ICLTask.sample checks batch x T",
    ("fit", "lags", "none"): "lags=None means 1..order",
    ("fit", "n_symbols", "none"): "n_symbols=None is inferred from the data",
    ("fit", "rng", "none"): "rng=None is fresh entropy",
    ("select_lags", "rng", "none"): "rng=None is fresh entropy",
    ("fit", "order", "none"): "order may be None when lags are given (tested apart)",
    ("MTDModel", "lags", "none"): "lags=None means 1..m",
    ("MTDModel.sample", "rng", "none"): "rng=None is fresh entropy",
    ("MTDModel.perfect_sample", "rng", "none"): "rng=None is fresh entropy",
    ("MTDModel.perfect_sample", "length", "none"): "length=None is the max lag",
    ("fit_icl", "alpha", "none"): "alpha=None estimates alpha",
    ("MTDModel", "lam", "shape"): "any length of lam is an order (lags 1..3)",
    ("MDTransformer.construct_sink", "alpha", "shape"): "any length of alpha is an order m",
    ("adaptive_params", "alpha", "shape"): "any length of alpha is an order m",
    ("fit", "sequences", "string"): "strings are labels (docs/math.md §7.9)",
    ("select_order", "sequences", "string"): "strings are labels (docs/math.md §7.9)",
    ("select_lags", "sequences", "string"): "strings are labels (docs/math.md §7.9)",
    ("MTD.fit", "X", "string"): "strings are labels (docs/math.md §7.9)",
    ("MarkovChain.fit", "X", "string"): "strings are labels (docs/math.md §7.9)",
    ("lr_test", "X", "string"): "strings are labels (docs/math.md §7.9)",
    ("compare_models", "X", "string"): "strings are labels (docs/math.md §7.9)",
    ("MarkovChain.fit", "n_symbols", "none"): "n_symbols=None is inferred from the data",
    ("MarkovChain.fit", "burn_in", "none"): "burn_in=None means the order",
    ("lr_test", "df", "none"): "df=None takes the difference of the identifiable parameter counts",
    ("MTD.per_sequence_lam", "max_bytes", "inf"): "max_bytes=inf means no memory budget",
    ("ICLFit.posterior_lam", "max_bytes", "inf"): "max_bytes=inf means no memory budget",
}

#: public names that are modules or result classes (no arguments to validate); save_checkpoint writes
#: what it is given (its path argument is covered by load_checkpoint's row and the nn tests)
NOT_FUNCTIONS = {"fitting", "TrainHistory", "save_checkpoint", "ICLFit", "LRTest", "ModelComparison"}


def _cases():
    for fname, (fn, kwargs, kinds) in TABLE.items():
        for arg, kind in kinds.items():
            for cls, value in _bad(kind).items():
                if (fname, arg, cls) in VALID or (cls == "none" and kind.startswith("int") and False):
                    continue
                if kind == "simplex" and arg in ("p", "q") and cls == "shape":
                    continue  # p and q broadcast against each other: a length mismatch is tested below
                yield pytest.param(fname, arg, cls, value, id=f"{fname}-{arg}-{cls}")


@pytest.mark.parametrize("fname, arg, cls, value", list(_cases()))
def test_bad_value_raises_value_error_naming_the_argument(fname, arg, cls, value):
    fn, kwargs, _ = TABLE[fname]
    bad = dict(kwargs, **{arg: value})
    with pytest.raises(ValueError) as err:
        fn(**bad)
    assert re.search(rf"\b{re.escape(arg)}\b", str(err.value)), (arg, str(err.value))


@pytest.mark.parametrize("fname", [f for f in TABLE if f != "load_checkpoint"])
def test_the_valid_call_of_each_row_works(fname):
    fn, kwargs, _ = TABLE[fname]
    fn(**kwargs)  # the matrix perturbs one argument of a call that is itself valid


def test_every_public_name_is_in_the_table():
    """The names of ``mtdmath.__all__`` and those of ``mtdmath.fitting`` / ``mtdmath.nn`` with a row in the
    public-name table (``fitting.NAME``, ``nn.NAME``) each have a row here (rows are named without the namespace)."""
    from mtdmath import _api

    covered = set(TABLE) | {name.split(".")[0] for name in TABLE} | NOT_FUNCTIONS
    public = list(mtdmath.__all__) + [name.partition(".")[2] for name in _api.API if "." in name]
    missing = [name for name in public if name not in covered]
    assert not missing, f"public names without a row in the bad-input matrix: {missing}"


def test_kl_length_mismatch_names_p_and_q():
    with pytest.raises(ValueError, match=r"\bp\b.*\bq\b"):
        mtdmath.kl([0.5, 0.5], [0.2, 0.3, 0.5])



def test_messages_blame_the_right_argument():
    y = np.array([0, 1, 2, 1, 0, 2, 1, 0, 1, 2])
    f = mtdmath.fitting.fit(y, 1, restarts=1)
    with pytest.raises(ValueError, match=r"sequences hold the token 5, outside this law's states 0\.\.2"):
        f.model_.log_likelihood(np.array([0, 1, 5]))  # not "n_symbols", which the caller never passed
    with pytest.raises(ValueError, match=r"X holds the token 5, outside this model's states 0\.\.2"):
        f.score(np.array([0, 1, 5]))
    with pytest.raises(ValueError, match=r"max_order = 5 leaves no transition"):
        mtdmath.fitting.select_order(y[:3], 5)
    with pytest.raises(ValueError, match="alpha: the sum"):  # not "lam0" nor "impossible data"
        mtdmath.one_step_md(C, [1e308, 1e308])


@pytest.mark.parametrize("call, name", [
    (lambda: mtdmath.fitting.fit(np.array([0, 10**6, 1] * 10), 1, restarts=1), "sequences"),
    (lambda: mtdmath.fitting.fit(np.array([0, 1, 2] * 10), 1, n_symbols=50_000, restarts=1), "n_symbols"),
    (lambda: mtdmath.nn.StandardTransformer(3, 2, max_len=10**9), "max_len"),
    (lambda: mtdmath.nn.StandardTransformer(3, 2, d_model=2**16, n_heads=1), "d_model"),
    (lambda: mtdmath.nn.MDTransformer.construct(PI, ALPHA)(np.zeros((1, 20_000), dtype=np.int64)), "tokens"),
])
def test_oversized_models_and_fits_are_refused_before_allocating(call, name):
    with pytest.raises(ValueError, match=rf"^{name}: .* GiB, above the budget"):
        call()
