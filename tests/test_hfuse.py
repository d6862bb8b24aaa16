"""Horizontal fusion keeps outputs, gradients and training equal to the unfused graph.

The graphs::

    fan:    x -> b0..bK (identical Linear) -> sum          (shared input: broadcast)
    pairs:  x -> pK (Linear) -> qK (Linear) -> stack        (second level: different inputs,
                                                            same shape: stacked)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec.hfuse import HorizontalGroup, horizontal_fuse, module_signature, should_fuse


def _fan(k: int = 6, width: int = 8) -> gx.Graph:
    g = gx.Graph("fan")
    x = g.input("x")
    branches = [
        g.node(f"b{i}", nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, width)), x)
        for i in range(k)
    ]
    g.output(g.node("sum", gx.add(), *branches))
    return g


def _pairs(k: int = 4) -> gx.Graph:
    g = gx.Graph("pairs")
    x = g.input("x")
    qs = [g.node(f"q{i}", nn.Linear(5, 3), g.node(f"p{i}", nn.Linear(4, 5), x)) for i in range(k)]
    g.output(stack=g.node("stack", gx.stack(1), *qs), last=qs[-1])
    return g


def _run(graph: gx.Graph, *xs: torch.Tensor) -> object:
    return gx.SequentialExecutor().run(gx.plan(graph), *xs)


def _groups(graph: gx.Graph) -> list[HorizontalGroup]:
    return [n.fn for n in graph if isinstance(n.fn, HorizontalGroup)]


def test_fan_fuses_into_one_group_and_equals_unfused():
    g = _fan()
    f = horizontal_fuse(g)
    (grp,) = _groups(f)
    assert len(grp.members) == 6 and grp.shared == (True,)
    assert all(f.nodes[f"b{i}"].fn == gx.getitem(i) for i in range(6))
    x = torch.randn(3, 8)
    torch.testing.assert_close(_run(f, x), _run(g, x))


def test_second_level_fuses_only_with_example_inputs():
    """p0..p3 share x; q0..q3 read different tensors of one shape: fused once shapes are known."""
    g = _pairs()
    x = torch.randn(2, 4)
    assert len(_groups(horizontal_fuse(g))) == 1
    f = horizontal_fuse(g, example_inputs=(x,))
    groups = _groups(f)
    assert [grp.shared for grp in groups] == [(True,), (False,)]
    got, want = _run(f, x), _run(g, x)
    torch.testing.assert_close(got["stack"], want["stack"])
    torch.testing.assert_close(got["last"], want["last"])


@pytest.mark.parametrize("executor", ["sequential", "threads"])
def test_gradients_reach_each_original_parameter(executor):
    g = _fan()
    f = horizontal_fuse(g)
    x = torch.randn(3, 8)
    ex = gx.make_executor(executor)
    with ex:
        ex.run(gx.plan(f), x).pow(2).sum().backward()
        mods = {n.name: n.fn for n in g if isinstance(n.fn, nn.Module)}
        fused_grads = {k: [p.grad.clone() for p in m.parameters()] for k, m in mods.items()}
        for n in g:
            if isinstance(n.fn, nn.Module):
                n.fn.zero_grad(set_to_none=True)
        ex.run(gx.plan(g), x).pow(2).sum().backward()
    for name, grads in fused_grads.items():
        for got, p in zip(grads, g.nodes[name].fn.parameters(), strict=True):
            torch.testing.assert_close(got, p.grad)


def test_training_step_is_seen_by_the_fused_graph():
    """A stale stacked copy of the weights would diverge after one optimizer step."""
    g = _fan()
    f = horizontal_fuse(g)
    gm = gx.GraphModule(f, executor="sequential")
    opt = torch.optim.SGD(gm.parameters(), lr=0.5)
    x = torch.randn(3, 8)
    before = _run(g, x).detach()
    gm(x).pow(2).sum().backward()
    opt.step()
    after_unfused = _run(g, x)
    assert not torch.allclose(after_unfused, before)
    torch.testing.assert_close(gm(x), after_unfused)
    gm.close()


def test_tiny_workload_equals_eager_under_inference_mode():
    from benchmarks.workloads import build

    w = build("tiny")
    f = horizontal_fuse(w.graph, w.inputs)
    assert len(_groups(f)) == 1
    with torch.inference_mode():
        torch.testing.assert_close(_run(f, *w.inputs), w.eager(*w.inputs))
        with gx.ThreadExecutor() as ex:
            torch.testing.assert_close(ex.run(gx.plan(f), *w.inputs), w.eager(*w.inputs))


def test_what_is_not_fused():
    g = gx.Graph("mixed")
    x = g.input("x")
    outs = [
        g.node("a", nn.Linear(4, 4), x),
        g.node("b", nn.Linear(4, 4, bias=False), x),  # other parameters
        g.node("c", nn.BatchNorm1d(4), x),  # buffers
        g.node("d", nn.BatchNorm1d(4), x),
        g.node("e", nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)), x),  # randomness
        g.node("f", nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)), x),
    ]
    g.output(g.node("sum", gx.add(), *outs))
    assert _groups(horizontal_fuse(g)) == []
    assert module_signature(nn.Linear(4, 4)) != module_signature(nn.Linear(4, 4, bias=False))


def test_cost_rule_keeps_large_members_unfused():
    g = _fan()
    costs = {n: 1e-3 for n in g.nodes}
    assert _groups(horizontal_fuse(g, costs=costs)) == []
    costs = {n: 1e-6 for n in g.nodes}
    assert len(_groups(horizontal_fuse(g, costs=costs))) == 1
    assert should_fuse([1e-5, 2e-5]) and not should_fuse([])
