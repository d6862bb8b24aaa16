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
from graphexec.hfuse import (
    HorizontalGroup,
    horizontal_fuse,
    member,
    module_signature,
    restack,
    should_fuse,
)


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
    assert f.nodes["sum"].fn == restack("sum")  # the merge of all members reads the group
    assert not any(f"b{i}" in f.nodes for i in range(6))  # no member is split out
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


def test_a_fused_call_reads_each_members_parameters_and_submodules_as_they_are_now():
    """The fused call walks to each member's parameters at every call (graphexec.hgroup): a
    reassigned parameter and a replaced submodule are seen, as the loop would see them."""
    from graphexec.hgroup import HorizontalGroup

    torch.manual_seed(0)
    heads = [nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)) for _ in range(5)]
    group, x = HorizontalGroup(heads, shared=[True]), torch.randn(2, 4)
    heads[1][0].weight = nn.Parameter(torch.ones(3, 4))
    heads[3][2] = nn.Linear(3, 1)
    with torch.no_grad():
        torch.testing.assert_close(group(x), torch.stack([h(x) for h in heads]))


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


def _linear_graph(bias: bool, k: int = 5) -> gx.Graph:
    """Level 0: k Linear on x (shared input); level 1: k Linear on those (stacked inputs);
    merged by stack(1) of all members, and one member also read alone."""
    g = gx.Graph("linears")
    x = g.input("x")
    ps = [g.node(f"p{i}", nn.Linear(6, 4, bias=bias), x) for i in range(k)]
    qs = [g.node(f"q{i}", nn.Linear(4, 3, bias=bias), p) for i, p in enumerate(ps)]
    g.output(stack=g.node("stack", gx.stack(-1), *qs), alone=g.node("relu", nn.ReLU(), qs[1]))
    return g


@pytest.mark.parametrize("bias", [True, False])
def test_linear_path_outputs_and_gradients_equal_unfused(bias):
    torch.manual_seed(int(bias))
    g = _linear_graph(bias)
    x = torch.randn(2, 3, 6)  # leading dims beyond the batch
    f = horizontal_fuse(g, example_inputs=(x,))
    groups = _groups(f)
    assert [(grp._direct is not None, grp.shared) for grp in groups] == [
        (True, (True,)),
        (True, (False,)),
    ]
    assert f.nodes["stack"].fn == restack("stack", -1)
    assert f.nodes["q1"].fn == member(1) and "q0" not in f.nodes  # only what is read alone
    mods = [n.fn for n in g if isinstance(n.fn, nn.Linear)]

    def grads(graph: gx.Graph) -> tuple[object, list[torch.Tensor]]:
        for m in mods:
            m.zero_grad(set_to_none=True)
        xg = x.clone().requires_grad_()
        out = _run(graph, xg)
        (out["stack"].sin().sum() + out["alone"].sum()).backward()
        return out, [xg.grad] + [p.grad for m in mods for p in m.parameters()]

    (got, got_grads), (want, want_grads) = grads(f), grads(g)
    torch.testing.assert_close(got, want)
    assert got["stack"].is_contiguous() and got["alone"].is_contiguous()
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_merge_rewrite_needs_every_member_in_order():
    g = gx.Graph("partial")
    x = g.input("x")
    bs = [g.node(f"b{i}", nn.Linear(4, 4), x) for i in range(3)]
    g.output(
        all_=g.node("all", gx.mean(), *reversed(bs)),  # mean: any order
        part=g.node("part", gx.stack(0), bs[0], bs[1]),  # not every member: unchanged
        swapped=g.node("swapped", gx.stack(0), bs[1], bs[0], bs[2]),  # stack: order matters
    )
    f = horizontal_fuse(g)
    assert f.nodes["all"].fn == restack("mean")
    assert f.nodes["part"].fn == gx.stack(0) and f.nodes["swapped"].fn == gx.stack(0)
    x0 = torch.randn(2, 4)
    torch.testing.assert_close(_run(f, x0), _run(g, x0))


def test_vmap_path_is_safe_from_many_threads():
    """torch.func.vmap asserts when called from several threads at once: the group locks it."""
    from concurrent.futures import ThreadPoolExecutor

    mods = [nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32)) for _ in range(4)]
    grp = HorizontalGroup(mods, shared=[True])
    assert grp._direct is None  # LayerNorm: not elementwise, so vmap

    def check(seed: int) -> None:
        x = torch.randn(8, 32, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            for _ in range(30):
                torch.testing.assert_close(grp(x), torch.stack([m(x) for m in mods]))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(check, range(8)))


def test_direct_path_equals_vmap_path():
    mods = [nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3), nn.Tanh()) for _ in range(3)]
    direct = HorizontalGroup(mods, shared=[False])
    via_vmap = HorizontalGroup(mods, shared=[False])
    via_vmap._direct = None
    xs = [torch.randn(4, 6) for _ in range(3)]
    torch.testing.assert_close(direct(*xs), via_vmap(*xs))
    torch.testing.assert_close(direct(*xs)[1], mods[1](xs[1]))
