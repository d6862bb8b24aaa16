"""Measured decisions (graphexec.tune) and the generated programs they run on.

Every decision that can lose is tried end to end; whichever way it goes, outputs equal eager.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings

import graphexec as gx
from graphexec import interpret, steps, trials
from graphexec.codegen import plan_program
from graphexec.decisions import BUDGET, CACHE, COMPILED
from graphexec.interpret import program_values
from tests.clocks import steady_clock, thread_clock
from tests.test_conformance import D, assert_same, build_random, random_dags


def _small_branches(n: int = 8) -> gx.Graph:
    g = gx.Graph("small")
    x = g.input("x")
    g.output(g.node("sum", gx.add(), *(g.node(f"t{i}", nn.Linear(16, 16), x) for i in range(n))))
    return g


@pytest.mark.parametrize("gain", [0.0, math.inf])  # every trial lost / every trial won
@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_every_decision_either_way_equals_eager(monkeypatch, gain, backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    policy = gx.Policy(gain=gain)
    # measured on a steady clock (tests.clocks): every member a tick, below the size rule's
    # bound, so the groups are fusion candidates on a busy machine too, and the margins decide
    steady_clock(monkeypatch, trials, interpret, steps)
    g = _small_branches()
    x = torch.randn(4, 16)
    with torch.no_grad():
        expected = gx.SequentialExecutor().run(gx.plan(g), x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gx.backends.CompileFallbackWarning)
            p = gx.plan(g, example_inputs=(x,), backend=backend, inline_below=0, policy=policy)
        kept = gain > 1
        assert (p.graph is not g) == kept, p.fusion  # fusion kept only when it won
        assert str(p.fusion[-1]).startswith("kept" if kept else "dropped")
        if backend != "eager":
            assert (p.compiled is not None) == kept, p.decisions
            assert any(d.step == COMPILED for d in p.decisions), p.decisions
        for ex in (gx.SequentialExecutor(), gx.ThreadExecutor()):
            with ex:
                assert_same(ex.run(p, x), expected)


_CLOCK = {"now": 0.0}  # module-level: a fused group calls a copy of its first member


class _Clocked(nn.Module):
    """A small module whose calls advance a fake clock: ``alone`` seconds called on its own,
    ``fused`` when called batched (under the vmap of a fused group)."""

    def __init__(self, alone, fused):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))
        self.alone, self.fused = alone, fused

    def forward(self, x):
        batched = torch._C._functorch.is_batchedtensor(self.w)  # its weight, stacked
        _CLOCK["now"] += self.fused if batched else self.alone
        return x * self.w


@pytest.mark.parametrize(("fused", "tried"), [(3.0, False), (0.5, True)])
def test_fusion_no_group_gains_from_is_dropped_without_a_plan_trial(monkeypatch, fused, tried):
    """Each fused call is first timed against its members one by one: when no group gains
    there, the whole-model trial (rounds of the model: most of a first call's cost on small
    models) is skipped, and the plan says it was measured call by call."""
    monkeypatch.setenv("GRAPHEXEC_CACHE", "0")
    steady_clock(monkeypatch, interpret)  # the node timer: members small enough to be fused
    monkeypatch.setattr(steps, "time", types.SimpleNamespace(perf_counter=lambda: _CLOCK["now"]))
    ran = []
    monkeypatch.setattr(steps, "trial_twice", lambda runs, c, **_: ran.append(c) or (1.0, 1.0))
    g = gx.Graph("clocked")
    x = g.input("x")
    g.output(g.node("sum", gx.add(), *(g.node(f"m{i}", _Clocked(1.0, fused), x)
                                       for i in range(2))))  # fmt: skip
    p = gx.plan(g, example_inputs=(torch.randn(3, 4),), hfuse="auto", check=True)
    assert bool(ran) == tried, p.fusion
    if not tried:
        assert str(p.fusion[-1]).startswith("dropped: the fused calls took 1.50x"), p.fusion
        assert "measured call by call" in str(p.fusion[-1]) and p.graph is g


def test_no_fusion_trial_when_the_rule_fuses_nothing(monkeypatch):
    """Groups found but none fused by the size rule (members above the policy's
    ``fuse_member_below``): the graph stays as it is and no fused-against-unfused trial runs
    (before, a rewritten copy with nothing fused was tried, and its 'dropped: the fused plan
    ran ...' line followed the one saying nothing was fused)."""
    monkeypatch.setenv("GRAPHEXEC_CACHE", "0")
    steady_clock(monkeypatch, trials, interpret, steps)  # every member one tick: 15 µs
    tried = []
    real = steps.trial_twice
    monkeypatch.setattr(steps, "trial_twice",
                        lambda runs, c, **kw: tried.append(c) or real(runs, c, **kw))  # fmt: skip
    p = gx.plan(_small_branches(), example_inputs=(torch.randn(4, 16),),
                policy=gx.Policy(fuse_member_below=1e-6))  # fmt: skip
    assert p.graph.nodes.keys() == _small_branches().nodes.keys()
    assert "fused" not in tried, p.fusion
    assert [r.choice for r in p.fusion] == ["not fused"], p.fusion
    assert "not overhead-bound" in str(p.fusion[0])


class _Threaded(nn.Module):
    """A module whose calls advance a `thread_clock` by its seconds at the thread count they
    run at (``at``: a node of `tests.clocks.thread_clock`)."""

    def __init__(self, at):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))
        self.at = at

    def forward(self, x):
        self.at(x)
        return x * self.w


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads")
def test_a_plan_at_one_thread_is_costed_at_one_thread(monkeypatch, tmp_path):
    """The caller's threads collapsed while the nodes were timed (50 ms a node there, 1 ms at
    one thread): the plan keeps one thread, and its costs, work and span are the one-thread
    times its calls run at, not the collapsed ones (before, print(plan) showed 50 ms nodes
    for a plan that runs them in 1 ms); reused from the cache, the same."""
    monkeypatch.setenv("GRAPHEXEC_CACHE", str(tmp_path))
    costs = thread_clock(monkeypatch, trials, interpret, steps)
    g = gx.Graph("collapsed")
    g.output(g.node("b", costs(1e-3, 50e-3), g.node("a", costs(1e-3, 50e-3), g.input("x"))))
    for _ in range(2):  # measured, then from the cache
        p = gx.plan(g, example_inputs=(torch.ones(2),))
        assert p.thread_budget == 1, p.decisions
        assert dict(p.node_costs) == pytest.approx({"a": 1e-3, "b": 1e-3})
        assert p.work == pytest.approx(2e-3) and p.span == pytest.approx(2e-3)
        assert "50.00 ms" not in str(p) and "2.00 ms" in str(p)
    assert any(d.step == CACHE for d in p.decisions), p.decisions


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads")
def test_fusions_size_rule_reads_the_node_times_at_the_favoured_thread_count(monkeypatch):
    """Members timed at 1 ms at the caller's collapsed threads and 10 µs at one: the size
    rule (fuse below 200 µs a member) reads the one-thread times, which the node times favour,
    and fuses; before, it read the collapsed ones and called the members too big."""
    monkeypatch.setenv("GRAPHEXEC_CACHE", "0")
    costs = thread_clock(monkeypatch, trials, interpret, steps)
    g = gx.Graph("fan")
    x = g.input("x")
    g.output(g.node("sum", gx.add(), *(g.node(f"m{i}", _Threaded(costs(1e-5, 1e-3)), x)
                                       for i in range(3))))  # fmt: skip
    p = gx.plan(g, example_inputs=(torch.ones(4),))
    group = p.fusion[0]
    assert group.detail["rule"] is True, p.fusion
    assert [c.seconds for c in group.candidates] == pytest.approx([1e-5] * 3)
    assert "10.0 µs per member < 200.0 µs" in str(group)


def test_the_plan_as_it_is_equals_eager_and_says_so(monkeypatch):
    """Measured on a steady clock (tests.clocks), every node is too cheap for a hand-off: on
    the real clock a busy machine could time one past the policy's ``inline_below``."""
    steady_clock(monkeypatch, trials, interpret)
    g = _small_branches(3)
    x = torch.randn(4, 16)
    p = gx.plan(g, example_inputs=(x,), hfuse=False)
    assert not p.parallel and "runs one by one" in str(p)
    with torch.no_grad():
        assert_same(gx.SequentialExecutor().run(p, x), gx.SequentialExecutor().run(gx.plan(g), x))


def test_one_outlier_round_cannot_decide_a_trial(monkeypatch):
    """A candidate equal to the baseline but for one very slow call is still judged equal.

    The clock is the candidates' own (each call advances it by its cost), so the test checks
    the rule, not this machine's noise: real timings of two equal 50 µs calls differ by more
    than the margin on a loaded 2-core machine."""
    clock = {"now": 0.0, "calls": 0}

    def cost(seconds):
        clock["now"] += seconds

    def hiccup():
        clock["calls"] += 1
        cost(200.0 if clock["calls"] == 3 else 1.0)  # an outlier: a page fault, a hiccup

    monkeypatch.setattr(trials, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    ratios, base = trials.trial({"base": lambda: cost(1.0), "same": hiccup})
    assert ratios["base"] == 1.0 and base == 1.0
    assert ratios["same"] == 1.0  # one 200x round out of >= 5 moves no median
    assert clock["calls"] >= 1 + gx.Policy().trial_rounds


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags())
def test_generated_programs_equal_the_node_loop(dag):
    """The straight-line program of a plan, its task programs and the node loop agree."""
    n_inputs, specs, seed = dag
    torch.manual_seed(seed)
    g, eager = build_random(n_inputs, specs)
    xs = tuple(torch.randn(3, D) for _ in range(n_inputs))
    p = gx.plan(g, inline_below=0)
    order = [n for t in p.tasks.values() for n in t.nodes]
    with torch.no_grad():
        expected = eager(*xs)
        assert_same(plan_program(g, order)(*xs), expected, exact=True)
        out, _ = gx.SequentialExecutor().run(p, *xs, profile=True)  # task programs
        assert_same(out, expected, exact=True)
        values = program_values(g, xs)
        refs = [r for r in torch.utils._pytree.tree_leaves(g.outputs) if isinstance(r, gx.Ref)]
        assert_same([r.resolve(values[r.node]) for r in refs], list(torch.utils._pytree
                    .tree_leaves(expected)), exact=True)  # fmt: skip


class _Boom(nn.Module):
    def forward(self, x):
        raise ValueError("kaboom")


@pytest.mark.parametrize("kind", ["sequential", "threads"])
def test_first_call_names_the_failing_node(kind):
    """The first call measures the plan; a node raising there is named like on later calls."""
    g = gx.Graph("boom")
    x = g.input("x")
    g.output(g.node("bad", _Boom(), g.node("lin", nn.Linear(4, 4), x)))
    with gx.GraphModule(g, kind) as gm:
        for _ in range(2):
            with pytest.raises(gx.NodeError, match="node 'bad'") as info:
                gm(torch.randn(2, 4))
            assert isinstance(info.value.__cause__, ValueError)


def test_straight_program_frees_values_at_their_last_use():
    g = gx.Graph("chain")
    h = g.input("x")
    for i in range(4):
        h = g.node(f"l{i}", nn.Linear(4, 4), h)
    g.output(h)
    p = gx.plan(g)
    program = plan_program(g, [n for t in p.tasks.values() for n in t.nodes])
    # the input and each activation are dropped right after the next layer read them
    assert program.source.count("del ") == 4
    assert program.source.index("del v1") < program.source.index("v3 = ")


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        rows = x.shape[0]  # fx makes a getattr node no output needs  # noqa: F841
        y = x.clone()
        y.add_(1)  # in place, result unused: its tensor is read below, so it must run
        return self.a(y) + self.b(x)


def test_trace_drops_tracer_dead_nodes_quietly_and_keeps_in_place_writes():
    m = _Model()
    g = gx.trace(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeadNodeWarning for nodes the tracer made
        p = gx.plan(g)
    assert not p.dead
    assert not any("getattr" in n.name or "size" in n.name for n in g)
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert_same(gx.SequentialExecutor().run(p, x), m(x))


@pytest.mark.parametrize("margin", [0.0, 100.0])  # the module always wins / never wins
def test_traced_module_as_it_is_is_tried_and_equals_eager(monkeypatch, margin):
    # a plan of the module's own ops, no lever of its own, is kept when it takes below the
    # gain's share of it, once it is tried at all (try_unlevered)
    policy = gx.Policy(source_margin=margin, gain=margin or gx.Policy().gain, try_unlevered=True)
    # on a steady clock (tests.clocks) the plan and the module run alike, so the margin
    # decides: on the real clock a burst of load could set the plan aside as disturbed
    steady_clock(monkeypatch, trials, interpret)
    m = _Model()
    g = gx.trace(m)
    assert g.source is m
    x = torch.randn(3, 4)
    p = gx.plan(g, example_inputs=(x,), policy=policy)
    assert (p.as_is is m) == (margin == 0.0)
    assert ("runs the traced module as it is" in str(p)) == (margin == 0.0)
    with torch.no_grad(), gx.ThreadExecutor() as threads:
        for ex in (gx.SequentialExecutor(), threads):
            assert_same(ex.run(p, x), m(x))
            assert_same(ex.run(p, x, profile=True)[0], m(x))  # profiled: the tasks run


def test_a_trial_stops_once_its_last_rounds_agree_with_the_medians(monkeypatch):
    """One outlier round early on costs one more round, not a trial run to its limits (the
    old rule wanted every round to agree: a first call paid for every hiccup)."""
    clock = {"now": 0.0, "calls": 0}

    def cost(seconds):
        clock["now"] += seconds

    def fast():
        clock["calls"] += 1
        cost(2.0 if clock["calls"] == 2 else 0.5)  # its first round: a hiccup

    policy = gx.Policy(trial_seconds=math.inf)  # rounds, not seconds, decide here
    monkeypatch.setattr(trials, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    ratios, _ = trials.trial({"base": lambda: cost(1.0), "fast": fast}, policy=policy)
    assert ratios["fast"] == 0.5
    assert clock["calls"] == 1 + policy.trial_rounds + 1  # warm-up, 3 rounds, one more


#: Rounds, not seconds, decide the trials of `_every_third`.
ROUNDS = gx.Policy(trial_seconds=math.inf)


def _every_third(monkeypatch, slow: float):
    """The trials' clock made fake, rounds (`ROUNDS`) not seconds deciding: ``cost(seconds)``
    advances it, and the second function costs 1 s, ``slow`` s on every third call."""
    clock = {"now": 0.0, "calls": 0}

    def cost(seconds):
        clock["now"] += seconds

    def periodic():
        clock["calls"] += 1
        cost(slow if clock["calls"] % 3 == 0 else 1.0)

    monkeypatch.setattr(trials, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    return cost, periodic


@pytest.mark.parametrize("mean", [True, False])
def test_thread_count_trials_count_what_collapsing_calls_cost(monkeypatch, mean):
    """On a busy machine the caller's threads collapse now and then (measured: 3.5 ms, then
    290-560 ms); a median of per-round ratios filters those calls out as noise and keeps
    the way that pays for them. Thread-count trials compare mean seconds."""
    cost, collapsing = _every_third(monkeypatch, 20.0)  # every third call 20x slower
    out = trials.decide({"caller's threads": collapsing, "one thread": lambda: cost(1.5)},
                        mean=mean, policy=ROUNDS)  # fmt: skip
    assert out.pick == ("one thread" if mean else "caller's threads"), out


def test_a_mean_trial_without_a_collapse_is_decided_on_medians(monkeypatch):
    """A slow run now and then of a few tens of percent (a page fault, a GC pause) is noise:
    on a quiet machine a mean of a few rounds let it hand a steady, slower way the win (a
    CLIP-like module kept at one thread, 1.15x slower there). Means decide only where a
    candidate collapsed (the policy's ``collapse``)."""
    cost, hiccups = _every_third(monkeypatch, 1.45)  # its mean is 1.15x its median
    out = trials.decide({"caller's threads": hiccups, "one thread": lambda: cost(1.03)},
                        mean=True, policy=ROUNDS)  # fmt: skip
    assert out.pick == "caller's threads", out


def test_a_win_must_hold_in_a_second_trial(monkeypatch):
    """A candidate that looks twice as fast for one trial (a burst of load on the other) and
    the same afterwards is not kept; one that wins both trials is, at its worse ratio."""
    clock = {"now": 0.0, "calls": 0}

    def cost(seconds):
        clock["now"] += seconds

    def lucky():  # fast for the first trial only (a warm-up and its >= 5 rounds)
        clock["calls"] += 1
        cost(0.5 if clock["calls"] <= 1 + gx.Policy().trial_rounds else 1.0)

    monkeypatch.setattr(trials, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    ratio, base = trials.trial_twice({"base": lambda: cost(1.0), "lucky": lucky}, "lucky")
    assert ratio == 1.0 and base == 1.0  # lost the second: no gain kept
    ratio, _ = trials.trial_twice({"base": lambda: cost(1.0), "fast": lambda: cost(0.6)}, "fast")
    assert ratio == pytest.approx(0.6)


@pytest.mark.parametrize(("plan_cost", "kept"), [(0.6, True), (0.2, False)])
def test_a_plan_must_beat_its_module_within_what_overlap_can_do(monkeypatch, plan_cost, kept):
    """With ``source_margin`` below 1 (the torch.compile backend's), a plan of the same ops
    that 'ran' below 1/lanes of its module was measured in a burst of load, not a win."""
    clock = {"now": 0.0}

    def costs(seconds):
        def fn(x):
            clock["now"] += seconds
            return x

        return fn

    monkeypatch.setattr(trials, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    monkeypatch.setattr(steps, "lanes", lambda: 2)
    g = gx.Graph("same_ops")
    g.output(g.node("n", costs(plan_cost), g.input("x")))
    x = torch.ones(2)
    # a thread budget is a lever: the plan is tried (one without runs the module untried)
    budgeted = dataclasses.replace(gx.plan(g), thread_budget=1)
    p = steps._source_step(budgeted, g, costs(1.0), (x,), margin=gx.Policy().gain)
    assert (p.as_is is None) == kept, p.decisions
    if not kept:
        assert "disturbed measurement" in str(p.decisions[-1])


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads")
def test_the_module_as_it_is_is_tried_at_the_callers_threads_too(monkeypatch):
    """A plan with a one-thread budget is compared with its module at that budget and at the
    caller's threads: a budget that won for the plan's ops need not win for the module's (the
    old step ran the module only at the plan's budget and kept a plan the module beat)."""
    costs = thread_clock(monkeypatch)
    g = gx.Graph("budgeted")
    g.output(g.node("n", costs(2.0, 2.0), g.input("x")))
    budgeted = dataclasses.replace(gx.plan(g), thread_budget=1)
    p = steps._source_step(budgeted, g, costs(3.0, 1.0), (torch.ones(2),),
                          gx.Policy().source_margin)  # fmt: skip
    assert p.as_is is not None and p.thread_budget is None, p.decisions
    assert "the module ran best at the caller's threads" in str(p.decisions[-1])


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads")
def test_a_kept_plan_is_compared_with_the_better_way_of_running_its_module(monkeypatch):
    """The plan's margin is said against the module's better measured way: here the module
    at one thread (1 s), not at the caller's threads, where it collapsed (5 s). Before, the
    line said '5.56x faster than the traced module as it is' for a plan 1.11x faster than the
    best the module did."""
    costs = thread_clock(monkeypatch)
    g = gx.Graph("budgeted")
    g.output(g.node("n", costs(0.9, 0.9), g.input("x")))
    budgeted = dataclasses.replace(gx.plan(g), thread_budget=1)
    p = steps._source_step(budgeted, g, costs(1.0, 5.0), (torch.ones(2),),
                          gx.Policy().source_margin)  # fmt: skip
    assert p.as_is is None, p.decisions
    line = str(p.decisions[-1])
    assert line.startswith("the plan ran 1.11x faster than the traced module at 1 intra-op "
                           "thread, its better way (measured): kept"), line  # fmt: skip
    assert "5.56x" not in line


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two intra-op threads")
@pytest.mark.parametrize("try_one", [True, False])
def test_an_exported_graphs_module_is_tried_at_one_thread_when_the_node_times_allow(
    monkeypatch, try_one
):
    """A plan of exported aten ops that kept the caller's threads still has its module tried
    at one thread when the node times allow it: on a busy machine the module's own threads
    collapse where the aten plan's did not (measured: exported BERT's module kept at 2
    threads ran 2.7x slower than eager at 1; the old step never tried it there)."""
    costs = thread_clock(monkeypatch)
    g = gx.Graph("exported")
    g.output(g.node("n", costs(2.0, 2.0), g.input("x")))
    g.imported_by = "torch.export: torch.fx could not trace it (a test)"
    p = steps._source_step(gx.plan(g), g, costs(1.0, 3.0), (torch.ones(2),),
                          gx.Policy().source_margin, try_one=try_one)  # fmt: skip
    assert p.as_is is not None, p.decisions
    assert (p.thread_budget == 1) == try_one, p.decisions
    if try_one:
        assert "at 1 intra-op thread ran 3.00x faster" in str(p.decisions[-1]), p.decisions
        assert str(p.decisions[-1]).endswith("(measured): kept there")
    else:
        assert "(not tried against it)" in str(p.decisions[-1])
    with torch.no_grad():
        before = torch.get_num_threads()
        gx.SequentialExecutor().run(p, torch.ones(2))
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("module_s", [1.0, 10.0], ids=["cannot-beat", "may-beat"])
def test_an_exported_graph_whose_estimate_cannot_beat_its_module_is_not_tried(
    monkeypatch, module_s
):
    """An exported graph (aten ops, not the module's) whose best way, estimated from its node
    times (4 s), is 1.25x its module's measured time or more, is not tried in any way: the
    module runs as it is, and the plan says what was estimated and measured. Where it may
    beat the module (10 s), its ways are tried."""
    costs = thread_clock(monkeypatch, trials, interpret, steps)  # trials, node timer, module runs
    g = gx.Graph("exported")
    g.output(g.node("b", costs(2.0, 2.0), g.node("a", costs(2.0, 2.0), g.input("x"))))
    g.imported_by = "torch.export: torch.fx could not trace it (a test)"
    g.source = costs(module_s, module_s)
    monkeypatch.setenv("GRAPHEXEC_CACHE", "0")
    p = gx.plan(g, example_inputs=(torch.ones(2),))
    if module_s == 1.0:
        assert p.as_is is g.source, p.decisions
        assert not any(d.step == BUDGET for d in p.decisions), p.decisions
        line = str(p.decisions[-1])
        assert "best way was estimated at 4.00 s from its node times, 4.00x the module's " in line
        assert "1.00 s (measured): no way of running the plan was tried" in line
    else:  # tried: the shape trial ran (the module then wins untried: the plan has no lever)
        assert any(d.step == BUDGET for d in p.decisions), p.decisions
        assert not any("no way of running the plan was tried" in str(d) for d in p.decisions)


def test_a_plan_with_no_lever_runs_its_module_untried(monkeypatch):
    """A plan of the module's own ops one after another, at the caller's threads, cannot win
    the margin: the module runs as it is without a trial (the plan would be 'faster' here),
    and the plan says it was not tried rather than quote a ratio nobody measured."""
    calls = {"plan": 0}

    def counted(x):
        calls["plan"] += 1
        return x + 1

    g = gx.Graph("unlevered")
    g.output(g.node("n", counted, g.input("x")))
    measured = dataclasses.replace(gx.plan(g), call_seconds=0.25)  # as the shape trial says
    p = steps._source_step(measured, g, lambda x: x + 1, (torch.ones(2),),
                           gx.Policy().source_margin)  # fmt: skip
    assert p.as_is is not None and p.thread_budget is None
    assert calls["plan"] == 1, "the plan ran once, to compare outputs, and was not timed"
    assert "not tried against it" in str(p.decisions[-1]) and "x " not in str(p.decisions[-1])
    assert p.call_seconds == 0.25  # the drift check's baseline: the same ops, as measured


def test_slow_planning_says_what_it_measures(monkeypatch, caplog):
    """Past the policy's ``slow_planning`` seconds each step names the graph and what it
    measures, on the ``graphexec`` logger (so it can be silenced)."""
    with caplog.at_level(logging.WARNING, logger="graphexec"):
        gx.plan(_small_branches(2), example_inputs=(torch.randn(4, 16),), hfuse=False,
                policy=gx.Policy(slow_planning=0.0))  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.name == "graphexec"]
    assert lines[0].startswith("graphexec: planning graph 'small'")
    assert "measuring each node at" in lines[0]
    assert any("thread budget and overlap" in line for line in lines)
