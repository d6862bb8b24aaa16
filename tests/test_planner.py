"""The planner: levels, chain fusion, cheap folding, bounds, measured costs, freeing."""

from __future__ import annotations

import copy
import gc
import weakref

import networkx as nx
import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec import interpret, trials
from tests.clocks import steady_clock, thread_clock
from tests.records import one_by_one


def two_towers(depth: int = 3, width: int = 256) -> gx.Graph:
    """x -> a0..a{depth-1} ; x -> b0..b{depth-1} ; add"""
    g = gx.Graph("towers")
    x = g.input("x")
    ends = []
    for t in "ab":
        h = x
        for i in range(depth):
            h = g.node(f"{t}{i}", nn.Linear(width, width), h)
        ends.append(h)
    g.output(g.node("join", gx.add(), *ends))
    return g


def test_levels_are_topological_generations_in_program_order():
    p = gx.plan(two_towers(), fuse_chains=False, inline_below=0)
    assert p.levels[0] == ("a0", "b0")
    assert p.levels[-1] == ("join",)
    for task in p.tasks.values():
        for dep in task.deps:
            assert p.tasks[dep].level < task.level


def test_chain_fusion_makes_one_task_per_branch():
    p = gx.plan(two_towers(depth=4))
    assert p.tasks["a0..a3"].nodes == ("a0", "a1", "a2", "a3")
    assert p.levels[0] == ("a0..a3", "b0..b3")
    assert p.tasks["join"].inline


def test_long_chain_is_one_task_and_not_parallel():
    g = gx.Graph("chain")
    h = g.input("x")
    for i in range(64):
        h = g.node(f"l{i}", nn.Linear(16, 16), h)
        h = g.node(f"r{i}", torch.relu, h)
    g.output(h)
    p = gx.plan(g)
    assert len(p.tasks) == 1 and not p.parallel
    assert "runs one by one" in str(p)


def test_cheap_nodes_fold_into_their_consumer():
    """256 tiny branches feeding one stack: one task, nothing dispatched."""
    g = gx.Graph("tiny")
    x = g.input("x")
    g.output(g.node("sum", gx.sum(), *(g.node(f"t{i}", nn.Linear(16, 16), x) for i in range(256))))
    p = gx.plan(g)
    assert len(p.tasks) == 1 and not p.parallel


def test_work_span_and_amdahl_bound():
    p = gx.plan(two_towers(depth=2), inline_below=0, fuse_chains=False)
    costs = p.node_costs
    assert p.work == pytest.approx(sum(costs.values()))
    assert p.span == pytest.approx(costs["a0"] + costs["a1"] + costs["join"])
    assert p.amdahl == pytest.approx(p.work / p.span)
    assert p.critical_path[0] == "a0" and p.critical_path[-1] == "join"


def test_measured_costs_rank_the_heavy_branch_first(monkeypatch):
    """Two nodes without parameters, the light one first (on estimates alone it would lead the
    critical path), timed on a clock of the test's own (tests.clocks): the heavy one takes 8x
    the light one's seconds at any thread count, on a quiet machine or a busy one."""
    costs = thread_clock(monkeypatch, trials, interpret)
    g = gx.Graph("uneven")
    x = g.input("x")
    light = g.node("light", costs(1e-3, 1e-3), x)
    heavy = g.node("heavy", costs(8e-3, 8e-3), x)
    g.output(g.node("join", gx.add(), heavy, light))
    assert gx.plan(g).critical_path[0].startswith("light")  # estimated: a tie, in order
    p = gx.plan(g, example_inputs=(torch.randn(64, 256),))
    assert p.measured and "measured" in str(p)
    assert p.node_costs["heavy"] == pytest.approx(8e-3)
    assert p.node_costs["light"] == pytest.approx(1e-3)
    assert p.critical_path[0] == "heavy"
    with pytest.raises(gx.ArityError):
        gx.plan(g, example_inputs=())


def test_plan_is_frozen_and_prints_one_row_per_level():
    p = gx.plan(two_towers())
    with pytest.raises(AttributeError):
        p.work = 0  # type: ignore[misc]
    rows = str(p).splitlines()
    assert rows[0].startswith("Plan 'towers'")
    level_rows = [r for r in rows if r.strip()[:1].isdigit()]
    assert len(level_rows) == len(p.levels)
    assert "amdahl bound" in str(p) and "critical path" in str(p)


def test_consumers_and_last_use():
    p = gx.plan(two_towers(depth=1), inline_below=0)
    assert set(p.consumers["x"]) == {"a0", "b0"}
    assert p.last_use["a0"] == "join" and "join" not in p.last_use  # outputs are never freed


def test_random_100_node_plan_matches_networkx():
    """Levels equal networkx's topological generations on a random DAG (no fusion)."""
    rng = torch.Generator().manual_seed(3)
    g = gx.Graph("rand")
    names = [g.input("x")]
    for i in range(100):
        k = int(torch.randint(1, 4, (1,), generator=rng))
        idx = torch.randint(0, len(names), (k,), generator=rng).tolist()
        names.append(g.node(f"n{i}", gx.add(), *(names[j] for j in idx)))
    consumed = {r.node for n in g for r in n.inputs}
    g.output(*[r for r in names[1:] if r.node not in consumed])
    p = gx.plan(g, fuse_chains=False, inline_below=0)
    gens = [
        sorted(lv)
        for lv in nx.topological_generations(g.nx.subgraph([n.name for n in g if not n.is_input]))
    ]
    assert [sorted(lv) for lv in p.levels] == gens


class _Track(nn.Module):
    """A linear layer that remembers weak references to its outputs."""

    def __init__(self, seen: dict, name: str):
        super().__init__()
        self.layer, self.seen, self.name = nn.Linear(64, 64), seen, name

    def forward(self, x):
        y = self.layer(x)
        self.seen[self.name] = weakref.ref(y)
        return y


class _Check(nn.Module):
    """Asserts that the listed values are already freed when it runs."""

    def __init__(self, seen: dict, dead: list[str], log: list):
        super().__init__()
        self.layer, self.seen, self.dead, self.log = nn.Linear(64, 64), seen, dead, log

    def forward(self, *xs):
        gc.collect()
        self.log.append({n: self.seen[n]() is None for n in self.dead})
        return self.layer(sum(xs))


def test_every_intermediate_is_released_at_last_use(local_executor):
    """
          x
          |
          a
        /   \\
      b1     b2        (b1 -> c1 and b2 -> c2 are fused chains)
      |      |
      c1     c2
        \\   /
        check          (runs after a, b1, b2 have no consumer left)
    """
    seen: dict = {}
    log: list = []
    g = gx.Graph("release")
    a = g.node("a", _Track(seen, "a"), g.input("x"))
    c = []
    for i in (1, 2):
        b = g.node(f"b{i}", _Track(seen, f"b{i}"), a)
        c.append(g.node(f"c{i}", _Track(seen, f"c{i}"), b))
    g.output(g.node("check", _Check(seen, ["a", "b1", "b2"], log), *c))
    p = gx.plan(g, inline_below=0)
    assert p.tasks["b1+c1"].nodes == ("b1", "c1")
    with torch.no_grad():
        local_executor.run(p, torch.randn(4, 64))
    assert log == [{"a": True, "b1": True, "b2": True}]


def tiny_branches(n: int = 16) -> gx.Graph:
    g = gx.Graph("tiny")
    x = g.input("x")
    g.output(g.node("sum", gx.sum(), *(g.node(f"t{i}", nn.Linear(16, 16), x) for i in range(n))))
    return g


def test_plan_with_horizontal_fusion_equals_unfused(local_executor):
    g = tiny_branches()
    x = torch.randn(4, 16)
    fused = gx.plan(g, hfuse=True)
    from graphexec.hfuse import HorizontalGroup

    batched = [n for n in fused.graph if isinstance(n.fn, HorizontalGroup)]
    assert len(batched) == 1  # one batched call replaced 16, and the sum reads it directly
    assert not any(f"t{i}" in fused.graph.nodes for i in range(16))
    assert fused.fusion and str(fused.fusion[0]).startswith("fused 16 x Linear")
    with torch.no_grad():
        torch.testing.assert_close(
            local_executor.run(fused, x), gx.SequentialExecutor().run(gx.plan(g), x)
        )


def test_default_measured_plan_fuses_small_branches_and_says_why(monkeypatch):
    """hfuse="auto": fused when measured members are small, never from estimates alone.

    ``check=False``: the rule on measured member times, not the side-by-side trial, which
    tests/test_tune.py covers both ways. The members are timed on a steady clock
    (tests.clocks): one tick, 15 µs, against the 200 µs bound, whatever the load (18 µs on
    the real clock of a quiet machine)."""
    steady_clock(monkeypatch, interpret)
    g = tiny_branches()
    x = torch.randn(4, 16)
    assert gx.plan(g).graph is g and gx.plan(g).fusion == ()  # estimated: nothing fused
    measured = gx.plan(g, example_inputs=(x,), check=False)
    assert measured.graph is not g and "horizontal fusion: fused 16 x Linear" in str(measured)
    assert gx.plan(g, example_inputs=(x,), hfuse=False).graph is g
    with torch.no_grad():
        torch.testing.assert_close(
            gx.SequentialExecutor().run(measured, x), gx.SequentialExecutor().run(gx.plan(g), x)
        )


@pytest.mark.parametrize("kind", ["sequential", "threads"])
def test_plan_with_onnxruntime_tasks_runs_on_plain_executors(kind):
    pytest.importorskip("onnxruntime")
    g = two_towers(depth=2, width=64)
    x = torch.randn(8, 64)
    p = gx.plan(g, example_inputs=(x,), backend="onnxruntime", inline_below=0, check=False)
    assert p.compiled is not None and len(p.compiled) > 0
    with torch.inference_mode(), gx.make_executor(kind) as ex:
        torch.testing.assert_close(
            ex.run(p, x), gx.SequentialExecutor().run(gx.plan(g), x), rtol=1e-4, atol=1e-5
        )
    with pytest.raises(ValueError, match="example_inputs"):
        gx.plan(g, backend="onnxruntime")


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs 2 intra-op threads")
def test_overlap_is_dropped_when_one_thread_lanes_would_lose():
    """Same plan, two machines: ops that scale across cores (a one-thread run takes twice
    as long) make overlap pointless; ops that don't scale make it pay."""
    from graphexec.budget import concurrency_pays as _concurrency_pays

    p = gx.plan(two_towers(depth=2), inline_below=0)
    t = torch.get_num_threads()
    scales = {n: c * t for n, c in p.node_costs.items()}
    flat = dict(p.node_costs)
    assert "one by one" in _concurrency_pays(p, scales)
    assert _concurrency_pays(p, flat) is None
    serial = one_by_one(p, _concurrency_pays(p, scales))
    assert not serial.parallel and "decision: one by one: overlapping branches" in str(serial)


def test_graph_module_measures_on_first_call_without_touching_batchnorm():
    g = gx.Graph("bn")
    x = g.input("x")
    bns = [nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32)) for _ in range(2)]
    g.output(g.node("sum", gx.add(), *(g.node(f"b{i}", m, x) for i, m in enumerate(bns))))
    twins = [copy.deepcopy(m) for m in bns]
    gm = gx.GraphModule(g)  # training mode, measure=True
    xs = torch.randn(16, 32)
    out = gm(xs)
    assert gm.plan.measured and gm.training and all(m.training for m in bns)
    expected = sum(m(xs) for m in twins)  # one training step of BatchNorm, like gm's call
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for m, twin in zip(bns, twins, strict=True):
        torch.testing.assert_close(m[1].running_mean, twin[1].running_mean)
        assert m[1].num_batches_tracked == twin[1].num_batches_tracked == 1
    gm.close()
    assert not gx.GraphModule(g, measure=False).plan.measured


def uneven() -> gx.Graph:
    """x -> short ; x -> long0..long3 ; join(short, long3)"""
    g = gx.Graph("uneven")
    x = g.input("x")
    short = g.node("short", nn.Linear(16, 16), x)
    h = x
    for i in range(4):
        h = g.node(f"long{i}", nn.Linear(16, 16), h)
    g.output(g.node("join", gx.add(), short, h))
    return g


def test_bottom_level_is_the_longest_path_to_the_end():
    p = gx.plan(uneven(), inline_below=0)
    long_task, join = p.task_of["long0"], p.task_of["join"]
    assert p.tasks[join].bottom == p.tasks[join].cost
    assert p.tasks[long_task].bottom == pytest.approx(p.tasks[long_task].cost + p.tasks[join].cost)
    assert p.tasks[long_task].bottom == pytest.approx(p.span)  # the critical path starts here


@pytest.mark.parametrize("schedule", ["levels", "dataflow"])
def test_executors_start_the_critical_path_first(schedule):
    """With one pool thread, tasks run in the order they are started: longest path first."""
    p = gx.plan(uneven(), inline_below=0)
    assert p.parallel and list(p.levels[0]) == ["short", "long0..long3"]  # program order
    with gx.ThreadExecutor(workers=1, schedule=schedule) as ex:
        _, trace = ex.run(p, torch.randn(2, 16), profile=True)
    assert [e.task for e in trace.events][:2] == ["long0..long3", "short"]


def test_overlap_is_checked_on_the_real_plan(monkeypatch):
    """Per-node times say 4 branches overlap on 2 lanes; running them shows they cannot.

    Each branch takes 2 ms on a clock of the test's own (tests.clocks), on any thread, and
    branches on several lanes add up there, as Python code that holds the GIL does: the node
    times promise half the time overlapped, the trial of the real plan measures the same."""
    costs = thread_clock(monkeypatch, trials, interpret)
    g = gx.Graph("gil")
    x = g.input("x")
    g.output(g.node("sum", gx.add(), *[g.node(f"b{i}", costs(2e-3, 2e-3), x) for i in range(4)]))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the overlap decision is only made with several intra-op threads
    try:
        p = gx.plan(g, example_inputs=(torch.zeros(3),))
    finally:
        torch.set_num_threads(before)
    assert p.max_width == 4 and not p.parallel
    assert "measured on the example inputs" in p.one_by_one_why
