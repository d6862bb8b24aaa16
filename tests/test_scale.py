"""Rules that keep building and planning big graphs linear (issue 31, item 5).

Each test counts work, never time: how often a node's signature is read, how often a
callable's cost is estimated. The timings are in ``benchmarks/bench_scale.py``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import pickle
import warnings

import pytest
import torch.nn as nn

import graphexec as gx
from benchmarks.bench_scale import scale_graph
from graphexec import planner
from graphexec.calls import check_arity
from graphexec.merge import MergeOp


def _double(t):
    return 2 * t


def _wide_graph(n: int = 1000) -> gx.Graph:
    """The benchmark's graph, small: ``n`` live nodes in layers of 10 over callables shared
    across nodes, as users declare them (`benchmarks.bench_scale.scale_graph`)::

        x -> [n0_0 .. n0_9] -> [n1_0 .. n1_9] -> ... -> outputs
              (node j reads node j of the layer before, and maybe one more)
    """
    return scale_graph(n, width=10)


#: Kinds of callable in it: nn.Linear (six of them), nn.ReLU, nn.GELU, nn.LayerNorm,
#: torch.tanh, gx.add, torch.add, torch.maximum.
KINDS = 8


def _counting(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[object]:
    calls: list[object] = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_signature_is_read_once_per_kind_of_callable(monkeypatch):
    """1000 nodes over 8 kinds of callable: 8 signature reads at most, not one per node."""
    calls = _counting(monkeypatch, inspect, "signature")
    g = _wide_graph(1000)
    assert len(g) == 1000
    assert 0 < len(calls) <= KINDS, f"{len(calls)} signature reads for {KINDS} kinds"


def test_lambdas_made_in_a_loop_share_one_reading(monkeypatch):
    calls = _counting(monkeypatch, inspect, "signature")
    g = gx.Graph("loop")
    r = g.input("x")
    for i in range(200):
        r = g.node(f"plus{i}", lambda t: t + 1, r)  # a new function each time, one code
    assert len(calls) == 1


def test_cost_is_estimated_once_per_callable(monkeypatch):
    g = _wide_graph(1000)
    calls = _counting(monkeypatch, planner, "estimate")
    p = gx.plan(g)
    distinct = {id(g.nodes[n].fn) for t in p.tasks.values() for n in t.nodes}
    assert len(calls) == len(distinct) == 13  # six nn.Linear, seven other callables


def test_arity_errors_still_name_the_node_after_a_thousand_good_ones():
    g = _wide_graph(1000)
    x = g["n0_0"]
    with pytest.raises(gx.ArityError) as caught:
        g.node("bad_linear", nn.Linear(4, 4), x, x)  # a class read 100 times already
    with pytest.raises(gx.ArityError) as direct:
        check_arity("bad_linear", nn.Linear(4, 4), 2, {})  # the check made on its own
    assert str(caught.value) == str(direct.value)
    assert caught.value.node == "bad_linear" and "with 2 inputs" in str(caught.value)
    with pytest.raises(gx.ArityError, match="node 'bad_lambda'.*2 inputs"):
        g.node("bad_lambda", lambda t: t + 1, x, x)
    with pytest.raises(gx.ArityError, match="node 'bad_merge'"):
        g.node("bad_merge", gx.mean(dim=0), x, x, y=1)  # a merge op given an unknown keyword
    assert "bad_linear" not in g and "bad_lambda" not in g


def test_callables_with_a_signature_of_their_own_are_not_judged_by_their_kind():
    """What a shared reading must not hide: an instance's own ``forward``, defaults, a
    ``__signature__`` or a partial make a callable of a known kind take other arguments."""
    g = gx.Graph("own")
    x, y = g.input("x"), g.input("y")
    g.node("lin", nn.Linear(4, 4), x)
    two = nn.Linear(4, 4)
    two.forward = lambda a, b: a + b  # this instance takes two
    g.node("two", two, x, y)
    with pytest.raises(gx.ArityError, match="node 'lin2'"):
        g.node("lin2", nn.Linear(4, 4), x, y)

    def make(default: bool):
        return (lambda a, b=0: a + b) if default else (lambda a, b: a + b)

    g.node("one_or_two", make(True), x)  # b has a default here ...
    with pytest.raises(gx.ArityError, match="node 'needs_two'"):
        g.node("needs_two", make(False), x)  # ... and none here

    def add(a, b):
        return a + b

    g.node("sum", add, x, y)
    wrapped = functools.wraps(_double)(lambda *a: add(*a))
    with pytest.raises(gx.ArityError, match="node 'wrapped'"):
        g.node("wrapped", wrapped, x, y)  # inspect follows __wrapped__ to _double(t)
    g.node("half", functools.partial(add, b=1), x)
    with pytest.raises(gx.ArityError, match="node 'full'"):
        g.node("full", functools.partial(add, 1, 2), x)

    class Merge(MergeOp):
        def __call__(self, a, b):
            return a + b

    g.node("m", Merge(), x, y)
    odd = Merge()
    odd.__signature__ = inspect.signature(_double)
    with pytest.raises(gx.ArityError, match="node 'odd'"):
        g.node("odd", odd, x, y)


def test_in_place_modules_still_warn():
    class Flagged(nn.Module):
        inplace = True  # on the class, not the instance

        def forward(self, t):
            return t

    g = gx.Graph("inplace")
    x = g.input("x")
    for name, fn in (("relu", nn.ReLU(inplace=True)), ("flagged", Flagged())):
        with pytest.warns(gx.InPlaceWarning, match=f"node '{name}'"):
            g.node(name, fn, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g.node("quiet", nn.ReLU(), x)
        g.node("lin", nn.Linear(4, 4), x)


def test_a_copied_graph_checks_its_new_nodes():
    g = gx.Graph("copied")
    x = g.input("x")
    g.node("a", nn.Linear(4, 4), x)
    g.node("b", gx.add(), x, g.node("c", _double, x))
    for twin in (copy.deepcopy(g), pickle.loads(pickle.dumps(g))):
        with pytest.raises(gx.ArityError, match="node 'late'"):
            twin.node("late", nn.Linear(4, 4), twin["a"], twin["b"])
        twin.node("fine", nn.Linear(4, 4), twin["a"])
        twin.node("fine_too", _double, twin["fine"])
