"""``torch.compile``: the forward of each transformer compiles to a single graph with no break.

The token checks read values back to the host (a graph break) and are skipped while dynamo
traces; the compiled forward must then give the eager logits. A counting backend sees every
graph dynamo produces and ``fullgraph=True`` turns any break into an error; the wrong case
forces the eager checks into the trace and must break the graph.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import mtdmath
from mtdmath import _validate as validate
from mtdmath.nn import MDTransformer, StandardTransformer

torch.set_num_threads(1)

S, m, T, B = 5, 3, 13, 3


def _pi_with_zeros(seed=0):
    """A transition matrix with zeros (the masked path of layer 1 and the value logits)."""
    rng = np.random.default_rng(seed)
    pi = mtdmath.random_transition_matrix(S, concentration=0.7, rng=rng)
    pi[np.arange(S), (np.arange(S) + 1) % S] = 0.0
    return pi / pi.sum(axis=1, keepdims=True)


def _models():
    pi = _pi_with_zeros()
    alpha = np.array([0.5, 1.0, 2.0])
    y = torch.as_tensor(mtdmath.sample_icl(pi, alpha, T, B, rng=1)[0])
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    return y, {
        "md-construct": MDTransformer.construct(pi, alpha),
        "md-random": MDTransformer(S, m, dtype=torch.float64, generator=g()),
        "mdsink-construct": MDTransformer.construct(pi, alpha, aggregation="softmax_sink", c=2.0, a=3.0),
        "std": StandardTransformer(S, m, n_layers=2, d_model=12, n_heads=3, max_len=T, dtype=torch.float64,
                                   generator=g()),
    }


class _Counting:
    """A dynamo backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize("name", ["md-construct", "md-random", "mdsink-construct", "std"])
def test_forward_compiles_to_one_graph(name):
    y, models = _models()
    model = models[name]
    torch._dynamo.reset()
    backend = _Counting()
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # any graph break raises
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. dynamo tracing array-api-compat's lru_cache helpers
        out = compiled(y)
    assert backend.graphs == 1
    # the same operations as the eager call, run by the same kernels: bit for bit
    assert torch.equal(out, model(y))
    explained = torch._dynamo.explain(model)(y)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


@pytest.mark.filterwarnings("ignore::UserWarning")  # dynamo's warnings on the traced array-api helpers
def test_eager_checks_would_break_the_graph():
    """The wrong case: the host-side token checks of the eager forward, traced, split the graph."""
    y, models = _models()
    model = models["std"]

    def checked(tokens):
        return model(validate.check_tokens(tokens, S, m, "tokens"))

    torch._dynamo.reset()
    # fullgraph refuses the host read of the range check (as a graph break or a data-dependent guard)
    with pytest.raises(Exception, match="check_tokens"):
        torch.compile(checked, backend="eager", fullgraph=True)(y)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(checked)(y)
    assert explained.graph_break_count >= 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # dynamo falls back to eager around the raise
def test_compiled_forward_still_checks_dtype_and_length():
    _, models = _models()
    model = models["std"]
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    with pytest.raises(ValueError, match="tokens"):
        compiled(torch.zeros(2, m - 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="tokens"):
        compiled(torch.zeros(2, T, dtype=torch.float64))
