"""A wrong graph fails at build or plan time with an error naming the node."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphexec as gx


def test_duplicate_name():
    g = gx.Graph("g")
    x = g.input("x")
    g.node("enc", nn.Linear(2, 2), x)
    with pytest.raises(gx.DuplicateNameError, match="'enc'") as info:
        g.node("enc", nn.Linear(2, 2), x)
    assert info.value.node == "enc"
    with pytest.raises(gx.DuplicateNameError, match="input named 'x'"):
        g.node("x", nn.Linear(2, 2), x)


def test_input_from_another_graph():
    g, other = gx.Graph("g"), gx.Graph("other")
    foreign = other.node("f", torch.relu, other.input("y"))
    g.input("x")
    with pytest.raises(gx.UnknownNodeError, match="node 'use'.*another graph"):
        g.node("use", torch.relu, foreign)


def test_unknown_name_found_at_plan_time():
    g = gx.Graph("g")
    g.output(g.node("use", torch.relu, "missing"))
    with pytest.raises(gx.UnknownNodeError, match="node 'use': input 'missing'"):
        gx.plan(g)


def test_cycle_is_printed():
    """a -> b -> c -> a, declared with forward references by name."""
    g = gx.Graph("loop")
    g.input("x")
    g.node("a", gx.add(), "x", "c")
    g.node("b", torch.relu, "a")
    g.output(g.node("c", torch.relu, "b"))
    with pytest.raises(gx.CycleError) as info:
        gx.plan(g)
    msg = str(info.value)
    assert "cycle" in msg and all(n in msg for n in "abc")
    assert info.value.cycle[0] == info.value.cycle[-1]
    assert set(info.value.cycle) == {"a", "b", "c"}


def test_output_nothing_produces():
    g = gx.Graph("g")
    g.node("a", torch.relu, g.input("x"))
    with pytest.raises(gx.UnreachableOutputError, match="declares no output"):
        gx.plan(g)
    g.output("nowhere")
    with pytest.raises(gx.UnreachableOutputError, match="'nowhere'"):
        gx.plan(g)


def test_node_arity_checked_at_build_time():
    g = gx.Graph("g")
    x = g.input("x")
    with pytest.raises(gx.ArityError, match="node 'lin'.*2 inputs"):
        g.node("lin", nn.Linear(2, 2), x, x)
    with pytest.raises(gx.ArityError, match="node 'f'"):
        g.node("f", lambda a, b: a + b, x)


def test_run_with_wrong_number_of_inputs(local_executor):
    g = gx.Graph("g")
    g.output(g.node("a", torch.relu, g.input("x")))
    p = gx.plan(g)
    with pytest.raises(gx.ArityError, match="graph 'g' takes 1 input.*got 2"):
        local_executor.run(p, torch.ones(1), torch.ones(1))
    with pytest.raises(gx.ArityError, match="missing x"):
        local_executor.run(p)
    with pytest.raises(gx.ArityError, match="no input 'y'"):
        local_executor.run(p, y=torch.ones(1))


def test_dead_node_warns_and_is_not_run():
    g = gx.Graph("g")
    x = g.input("x")
    ran = []
    g.node("unused", lambda t: ran.append(t), x)
    g.output(g.node("a", torch.relu, x))
    with pytest.warns(gx.DeadNodeWarning, match="unused"):
        p = gx.plan(g)
    assert p.dead == ("unused",)
    gx.SequentialExecutor().run(p, torch.ones(1))
    assert ran == []


def test_an_input_no_output_depends_on_warns_at_plan_time():
    """x -> a -> out; y is read by nobody, z only by a dead node."""
    g = gx.Graph("g")
    x, _, z = g.input("x"), g.input("y"), g.input("z")
    g.node("unused", torch.relu, z)
    g.output(g.node("a", torch.relu, x))
    with pytest.warns(gx.DeadNodeWarning) as record:
        p = gx.plan(g)
    messages = [str(w.message) for w in record]
    assert "graph 'g': no output depends on inputs y, z; a run takes them and ignores them" in (
        messages) and any("no output depends on unused" in m for m in messages)  # fmt: skip
    out = gx.SequentialExecutor().run(p, torch.ones(1), torch.ones(1), torch.ones(1))
    assert out.tolist() == [1.0]


def test_an_imported_graph_keeps_its_modules_unread_arguments_quietly(recwarn):
    class Ignores(nn.Module):
        def forward(self, x, unused):
            return 2 * x

    g = gx.trace(Ignores())
    assert g.inputs == ("x", "unused")
    gx.plan(g)
    assert not [w for w in recwarn if issubclass(w.category, gx.DeadNodeWarning)]


def test_a_second_output_declaration_is_refused():
    g = gx.Graph("g")
    x = g.input("x")
    a, b = g.node("a", torch.relu, x), g.node("b", torch.neg, x)
    g.output(a)
    with pytest.raises(gx.GraphError, match=r"graph 'g': outputs were already set \(-> a\); "
                       r"declare every output in one g.output"):  # fmt: skip
        g.output(b)
    with pytest.raises(gx.GraphError, match="already set"):
        g.output(a=a, b=b)
    assert g.outputs == a  # the first declaration stands


def test_errors_are_graph_errors():
    for cls in (
        gx.DuplicateNameError,
        gx.UnknownNodeError,
        gx.CycleError,
        gx.UnreachableOutputError,
        gx.ArityError,
    ):
        assert issubclass(cls, gx.GraphError)


def test_bad_inputs_and_fn():
    g = gx.Graph("g")
    x = g.input("x")
    with pytest.raises(gx.GraphError, match="node 'c'.*refs or node names"):
        g.node("c", torch.add, x, 3)
    with pytest.raises(gx.GraphError, match="node 'n'.*callable"):
        g.node("n", 42, x)
    with pytest.raises(gx.GraphError, match="mutates"):
        g.node("m", torch.relu, x, mutates=[1])


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return 2 * t

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class _Scale:
    def __init__(self, k):
        self.k = k

    def __call__(self, t):
        return self.k * t


@pytest.mark.parametrize(
    ("cls", "way_out"),
    [
        (nn.ReLU, r"nn\.ReLU is a module class.*pass an instance, nn\.ReLU\(\)"),
        (nn.Sequential, r"nn\.Sequential\(\)"),
        (gx.mean, r"gx\.mean is a class.*gx\.mean\(\)"),
        (gx.tuple, r"gx\.tuple\(\)"),
        (_Scale, r"_Scale is a class.*_Scale\(\)"),
        (_Double, r"autograd Function class: pass _Double\.apply"),
    ],
)
@pytest.mark.parametrize("as_list", [False, True])
def test_a_class_where_an_instance_belongs_is_refused_naming_the_node(cls, way_out, as_list):
    """``g.node("a", nn.ReLU, x)`` ran nn.ReLU(x) on every call: the graph returned a module."""
    g = gx.Graph("g")
    x = g.input("x")
    with pytest.raises(gx.GraphError, match=f"node 'a': .*{way_out}") as info:
        g.node("a", cls, [x] if as_list else x)
    assert info.value.node == "a" and "a" not in g


def test_functions_and_conversion_classes_are_still_nodes():
    g = gx.Graph("g")
    x = g.input("x")
    a = g.node("relu", torch.relu, x)
    b = g.node("double", _Double.apply, a)
    g.output(g.node("pair", tuple, [a, b]), g.node("n", float, g.node("s", torch.sum, b)))
    (relu, double), total = gx.SequentialExecutor().run(gx.plan(g), torch.tensor([-1.0, 2.0]))
    assert relu.tolist() == [0.0, 2.0] and double.tolist() == [0.0, 4.0] and total == 4.0


def test_printing():
    g = gx.Graph("pr")
    x = g.input("x")
    s = g.node(
        "s", gx.stack(dim=1), g.node("a", nn.Linear(2, 2), x), g.node("b", nn.Linear(2, 2), x)
    )
    g.output(s)
    text = str(g)
    assert "stack(dim=1)(a, b)" in text and "Linear(x)" in text
    assert repr(g) == "Graph('pr': 1 input, 3 nodes, 1 output)"
