"""The thread budget: a measured decision that never changes the caller's thread count.

The deterministic tests run a node whose cost depends on the intra-op threads of the thread
that runs it and on a simulated load, on a clock of their own (the trials', the node timer's
and the drift watch's), so they check the rules, not this machine's noise::

    x -> work (1 s at one thread; at the caller's threads: 0.6 s quiet, 5 s under load)
"""

from __future__ import annotations

import dataclasses
import threading
import types

import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec import budget, interpret, trials
from graphexec.budget import AT_ONE
from graphexec.decisions import BUDGET, CACHE, CHECK, RECHECK, last
from graphexec.drift import Watch
from tests.clocks import counted
from tests.records import one_by_one

needs_threads = pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs 2 intra-op threads")


class _Seen(nn.Module):
    """Records the intra-op thread count of the thread that runs it."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.seen: list[int] = []
        self.fail = fail

    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        if self.fail:
            raise ValueError("kaboom")
        return x + 1


def _pair(fail: bool = False) -> tuple[gx.Graph, _Seen]:
    g = gx.Graph("pair")
    x = g.input("x")
    seen = _Seen(fail)
    g.output(g.node("sum", gx.add(), g.node("a", nn.Linear(4, 4), x), g.node("b", seen, x)))
    return g, seen


def _new_thread_count() -> int:
    """The count a thread started now gets: torch's process default."""
    got = []
    t = threading.Thread(target=lambda: got.append(torch.get_num_threads()))
    t.start()
    t.join()
    return got[0]


@pytest.mark.parametrize("fail", [False, True], ids=["ok", "raises"])
@pytest.mark.parametrize("budget_", [None, 1], ids=["caller", "budget1"])
@pytest.mark.parametrize("parallel", [False, True], ids=["inline", "overlapped"])
def test_the_callers_thread_count_is_never_changed(local_executor, fail, budget_, parallel):
    g, seen = _pair(fail)
    p = gx.plan(g, inline_below=0)
    if not parallel:
        p = one_by_one(p, "one by one, for this test")
    p = dataclasses.replace(p, thread_budget=budget_)
    before, default = torch.get_num_threads(), _new_thread_count()
    x = torch.randn(2, 4)
    for _ in range(2):
        if fail:
            with pytest.raises(gx.NodeError, match="node 'b'"):
                local_executor.run(p, x)
        else:
            torch.testing.assert_close(local_executor.run(p, x), g.nodes["a"].fn(x) + x + 1)
        assert torch.get_num_threads() == before
        assert _new_thread_count() == default
    if budget_ == 1:
        assert set(seen.seen) == {1}  # on the budget's pool thread (or a one-thread lane)


@pytest.mark.parametrize("kind", ["sequential", "threads"])
def test_a_graph_module_restores_the_thread_count_when_its_first_call_raises(kind):
    g, _ = _pair(fail=True)
    before, default = torch.get_num_threads(), _new_thread_count()
    with gx.GraphModule(g, kind) as gm:
        for _ in range(2):
            with pytest.raises(gx.NodeError, match="node 'b'"):
                gm(torch.randn(2, 4))
            assert torch.get_num_threads() == before
            assert _new_thread_count() == default


class _Machine:
    """A clock and a load: work costs 1 s at one thread, 0.6 s at more (quiet) or 5 s (loaded,
    or with ``idle_costs`` right after 50 ms or more of idle time, as on a VM whose idle cores
    take milliseconds to wake)."""

    def __init__(self):
        self.now, self.loaded, self.idle_costs, self._end = 0.0, False, False, 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def work(self, x: torch.Tensor) -> torch.Tensor:
        woken = self.idle_costs and self.now - self._end >= 0.05
        if torch.get_num_threads() == 1:
            self.now += 1.0
        else:
            self.now += 5.0 if self.loaded or woken else 0.6
        self._end = self.now
        return x * 2

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = types.SimpleNamespace(perf_counter=self.clock, time=self.clock, sleep=self.sleep)
        monkeypatch.setattr(trials, "time", fake)
        monkeypatch.setattr(interpret, "time", fake)


def _work_graph(machine: _Machine) -> gx.Graph:
    g = gx.Graph("work")
    g.output(g.node("work", machine.work, g.input("x")))
    return g


@needs_threads
@pytest.mark.parametrize("loaded", [False, True], ids=["quiet", "loaded"])
def test_the_thread_budget_is_measured_and_said(monkeypatch, loaded):
    """Under load the caller's threads collapse: the plan runs at one thread; on a quiet
    machine it keeps the caller's threads. Either way print(plan) says
    what was measured, and the outputs equal eager."""
    machine = _Machine()
    machine.patch(monkeypatch)
    machine.loaded = loaded
    g = _work_graph(machine)
    x = torch.ones(3)
    p = gx.plan(g, example_inputs=(x,))
    line = str(last(p.decisions, BUDGET))
    if loaded:
        assert p.thread_budget == 1, p.decisions
        assert "5.00x faster" in line and "measured side by side" in line
        assert "thread budget: runs at 1 intra-op thread on the calling thread" in str(p)
    else:
        assert p.thread_budget is None
        assert "not tried" in line  # the node times at one thread ruled it out
    before = torch.get_num_threads()
    for kind in ("sequential", "threads"):
        with gx.make_executor(kind) as ex:
            torch.testing.assert_close(ex.run(p, x), x * 2)
    assert torch.get_num_threads() == before


@needs_threads
def test_threads_that_collapsed_while_timing_nodes_must_beat_one_thread(monkeypatch):
    """A collapse comes and goes: the caller's threads took 5x one thread while the nodes
    were timed, then ran a hair faster than one thread in a calm trial. One thread is then
    the way to beat, by the margin (before, the trial's calm moment kept the threads that
    collapse, and a busy-machine run paid 15x for them)."""
    machine = _Machine()
    machine.patch(monkeypatch)
    calls = {"caller": 0}

    def work(x):
        if torch.get_num_threads() == 1:
            machine.now += 1.0
        else:
            calls["caller"] += 1
            machine.now += 5.0 if calls["caller"] <= 4 else 0.98  # node timing: 1 + 3 runs
        return x * 2

    g = gx.Graph("collapsing")
    g.output(g.node("work", work, g.input("x")))
    p = gx.plan(g, example_inputs=(torch.ones(3),))
    line = str(last(p.decisions, BUDGET))
    assert p.thread_budget == 1, p.decisions
    assert "the caller's threads collapsed while the nodes were timed" in line


def test_an_implausible_trial_is_re_run_and_reported_as_measured(monkeypatch):
    """A candidate faster than its floor is run again (bounded), then set aside with the
    ratios it measured: nothing is replaced by a number that was not measured."""
    clock = {"now": 0.0, "calls": 0}

    def cost(seconds):
        def fn():
            clock["now"] += seconds
            clock["calls"] += 1

        return fn

    monkeypatch.setattr(trials, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    out = trials.decide({"ref": cost(1.0), "fast": cost(0.1)}, floors={"fast": ("ref", 0.45)},
                        words={"fast": "overlapped", "ref": "one by one"})  # fmt: skip
    assert out.trials == 1 + gx.Policy().reruns and out.pick == "ref"
    assert out.aside["fast"].startswith("overlapped measured 0.10x, 0.10x, 0.10x of one by one")
    assert "in 3 trials" in out.aside["fast"] and "disturbed" in out.aside["fast"]
    plausible = trials.decide({"ref": cost(1.0), "fast": cost(0.5)}, floors={"fast": ("ref", 0.45)})
    assert plausible.pick == "fast" and not plausible.aside and plausible.trials == 2  # confirmed


def test_a_difference_inside_the_noise_resolves_to_the_simpler_plan():
    order = ["one by one", "one by one at 1", "overlapped"]
    for noise in (0.96, 0.99, 1.0, 1.04):
        assert trials.choose({"one by one": 1.0, "one by one at 1": noise, "overlapped": noise},
                             order) == "one by one"  # fmt: skip
    assert trials.choose({"one by one": 1.0, "one by one at 1": 0.5, "overlapped": 0.49},
                         order) == "one by one at 1"  # fmt: skip


def test_node_costs_and_trials_that_disagree_are_flagged():
    g = gx.Graph("g")
    g.output(g.node("n", nn.Linear(4, 4), g.input("x")))
    p = gx.plan(g, example_inputs=(torch.ones(2, 4),))
    p = dataclasses.replace(p, work=0.080)
    measured = {"one by one": 1.0}
    far = budget._disagreement(p, trials.Outcome(measured, {"one by one": 0.0014}, "one by one"))
    said = str(far[0])
    assert far[0].step == CHECK and far[0].seconds("node costs") == pytest.approx(0.080)
    assert "80.00 ms" in said and "1.40 ms" in said and "57.1x apart" in said
    assert not budget._disagreement(p, trials.Outcome(measured, {"one by one": 0.07}, "x"))


@needs_threads
@pytest.mark.parametrize("kind", ["sequential", "threads"])
def test_drift_re_checks_the_budget_both_ways_and_says_when(monkeypatch, kind):
    """Quiet: the caller's threads. The load arrives: calls drift 8x, the module re-checks
    and switches to one thread. The load leaves: a periodic re-check (a one-thread lane does
    not get faster) switches back. Each switch is in plan.decisions."""
    machine = _Machine()
    machine.patch(monkeypatch)
    g = _work_graph(machine)
    x = torch.ones(3)
    watch = Watch(window=3, share=5.0, clock=machine.clock)
    with gx.GraphModule(g, kind, adapt=watch) as gm:
        gm(x)
        assert gm.plan.thread_budget is None and gm.plan.call_seconds == pytest.approx(0.6)
        machine.loaded = True
        for _ in range(20):
            torch.testing.assert_close(gm(x), x * 2)
        assert gm.plan.thread_budget == 1, gm.plan.decisions
        switch = str(gm.plan.decisions[-1])
        assert gm.plan.decisions[-1].step == RECHECK and gm.plan.decisions[-1].choice == AT_ONE
        assert switch.startswith("re-checked at call ") and "8.3x slower" in switch
        assert "switched from one by one on the calling thread" in switch
        machine.loaded = False
        for _ in range(40):
            gm(x)
        assert gm.plan.thread_budget is None, gm.plan.decisions
        assert "periodic re-check" in str(gm.plan.decisions[-1])


@needs_threads
@pytest.mark.parametrize("loaded", [True, False], ids=["busier", "as-measured"])
def test_a_plan_from_the_cache_is_re_checked_when_its_first_calls_differ(
    monkeypatch, tmp_path, loaded
):
    """Planned on a quiet machine (the caller's threads: 0.6 s a call) and stored; a second
    module reuses the decision with the machine loaded (5 s a call at two threads, 1 s at
    one). Its first window of calls is compared with what the cache measured and the plan is
    re-checked at once, switching to one thread: before, the re-check allowance (3% of the
    time watched) held it back for 48 calls. Calls that run as the cache measured are not
    re-checked."""
    monkeypatch.setenv("GRAPHEXEC_CACHE", str(tmp_path))
    machine = _Machine()
    machine.patch(monkeypatch)
    g = _work_graph(machine)
    x = torch.ones(3)
    with gx.GraphModule(g, "sequential") as gm:
        gm(x)
        assert gm.plan.thread_budget is None and gm.plan.call_seconds == pytest.approx(0.6)
    machine.loaded = loaded
    with gx.GraphModule(g, "sequential", adapt=Watch(window=3, clock=machine.clock)) as gm:
        for _ in range(5):
            torch.testing.assert_close(gm(x), x * 2)
        assert gm.plan.decision(CACHE) is not None, gm.plan.decisions
        if loaded:
            assert gm.plan.thread_budget == 1, gm.plan.decisions
            said = str(gm.plan.decisions[-1])
            assert gm.plan.decisions[-1].step == RECHECK, gm.plan.decisions
            assert ("reused from the cache, the first 3 calls took 5.00 s each, 8.33x slower "
                    "than the 600.00 ms the cache measured") in said, said
        else:
            assert gm.plan.thread_budget is None
            assert not any(d.step == RECHECK for d in gm.plan.decisions)


@needs_threads
@pytest.mark.parametrize("slow_share", [0.5, 0.0], ids=["slow-probe", "off"])
def test_threads_kept_in_a_calm_moment_are_re_checked_without_drift(monkeypatch, slow_share):
    """A plan that kept the caller's threads is re-tried now and then at a small share of
    the calls' time even when its calls stay inside the drift factor (a trial in a calm
    moment on a busy machine): here the load makes the threads 8x slower, the factor is set
    out of reach, and the slow probe alone finds one thread."""
    machine = _Machine()
    machine.patch(monkeypatch)
    g = _work_graph(machine)
    x = torch.ones(3)
    watch = Watch(window=3, share=5.0, slow_share=slow_share, factor=100.0, clock=machine.clock)
    with gx.GraphModule(g, "sequential", adapt=watch) as gm:
        gm(x)
        assert gm.plan.thread_budget is None
        machine.loaded = True
        for _ in range(20):
            torch.testing.assert_close(gm(x), x * 2)
        if slow_share:
            assert gm.plan.thread_budget == 1, gm.plan.decisions
            assert "periodic re-check of the caller's" in str(gm.plan.decisions[-1])
        else:
            assert gm.plan.thread_budget is None


@needs_threads
@pytest.mark.parametrize("gap_max", [0.1, 0.0], ids=["paused", "back-to-back"])
def test_a_re_check_pauses_as_long_as_the_calls_are_apart(monkeypatch, gap_max):
    """Calls 100 ms apart find torch's threads asleep (here: 5 s instead of 0.6 s at two
    threads, 1 s at one): a re-check that runs its trial back to back sees 0.6 s and keeps
    them; one that pauses as long as the calls are apart sees what the calls pay and
    switches to one thread, and says so."""
    machine = _Machine()
    machine.patch(monkeypatch)
    machine.idle_costs = True
    g = _work_graph(machine)
    x = torch.ones(3)
    watch = Watch(policy=gx.Policy(gap_max=gap_max), window=3, share=5.0, slow_share=0.0,
                  clock=machine.clock)  # fmt: skip
    with gx.GraphModule(g, "sequential", adapt=watch) as gm:
        gm(x)
        assert gm.plan.thread_budget is None
        for _ in range(20):
            machine.sleep(0.1)  # the caller's idle time between calls
            torch.testing.assert_close(gm(x), x * 2)
        if gap_max:
            assert gm.plan.thread_budget == 1, gm.plan.decisions
            said = str(gm.plan.decisions[-1])
            assert "each run after 100.00 ms idle, as between the calls" in said
        else:
            assert gm.plan.thread_budget is None, gm.plan.decisions


@needs_threads
def test_adapt_false_keeps_the_plan(monkeypatch):
    machine = _Machine()
    machine.patch(monkeypatch)
    g = _work_graph(machine)
    with gx.GraphModule(g, "sequential", adapt=False) as gm:
        gm(torch.ones(3))
        first = gm.plan
        machine.loaded = True
        for _ in range(30):
            gm(torch.ones(3))
        assert gm.plan is first and gm.plan.thread_budget is None


def test_a_candidate_that_clearly_lost_stops_running(monkeypatch):
    """Under load the caller's threads can be 10x slower: two runs of that (its warm-up and
    one round) say enough, and the trial does not pay for more."""
    calls, cost = counted(monkeypatch)
    ratios, base = trials.trial({"slow": cost("slow", 10.0), "fast": cost("fast", 1.0)})
    assert calls == {"slow": 2, "fast": 2}
    assert ratios == {"slow": 1.0, "fast": pytest.approx(0.1)} and base == 10.0


def test_a_challenger_that_lost_by_far_stops_running_but_the_reference_does_not(monkeypatch):
    """In a median trial a challenger 1.5x slower than the simplest candidate in two runs
    in a row stops (it could only keep the simpler plan); the simplest one stops only at
    the policy's ``drop``, so a burst of load on it cannot hand a challenger the win."""
    calls, cost = counted(monkeypatch)
    ratios, _ = trials.trial({"base": cost("base", 1.0), "slow": cost("slow", 1.5)})
    assert calls == {"base": 2, "slow": 2} and ratios["slow"] == pytest.approx(1.5)
    calls.update(base=0, slow=0)
    ratios, _ = trials.trial({"slow": cost("slow", 1.5), "base": cost("base", 1.0)})
    assert calls["slow"] > 2 and ratios["base"] == pytest.approx(1 / 1.5)  # the reference ran on


def test_after_a_re_check_the_baseline_is_the_calls_own():
    """A trial runs under no_grad; calls that train take longer for that alone, which is no
    drift: after a re-check the next window of calls is the baseline."""
    g = gx.Graph("g")
    g.output(g.node("n", nn.Linear(4, 4), g.input("x")))
    p = dataclasses.replace(gx.plan(g), call_seconds=0.001)
    w = Watch(window=2, share=1.0)
    w.start(p, from_calls=True)
    w.spent(0.0)
    assert [w.observe(0.003) for _ in range(10)] == [None] * 10  # 3x the trial: no drift
    w.start(p)  # a fresh plan: its measured seconds are the baseline
    w.spent(0.0)
    assert w.observe(0.003) is None and w.observe(0.003).startswith("the last 2 calls took")


def test_a_copied_executor_runs_budgets_on_lanes_of_its_own(local_executor):
    """A deep copy (of a GraphModule, say) copies its executor: the copy's budget lanes are
    new threads, made when first used."""
    import copy

    g, seen = _pair()
    p = dataclasses.replace(gx.plan(g), thread_budget=1)
    x = torch.randn(2, 4)
    expected = local_executor.run(p, x)
    twin = copy.deepcopy(local_executor)
    torch.testing.assert_close(twin.run(p, x), expected)
    twin.close()
    assert set(seen.seen) == {1}


def test_callers_on_many_threads_each_run_the_budget_on_their_own_thread(local_executor):
    """Callers on several threads run at once, each at the budget on its own thread (no
    hand-off), get their own results, and each gets its own count back."""
    from concurrent.futures import ThreadPoolExecutor

    g, seen = _pair()
    p = dataclasses.replace(gx.plan(g), thread_budget=1)
    xs = [torch.randn(2, 4) for _ in range(32)]
    default = _new_thread_count()

    def call(x):
        before = torch.get_num_threads()
        out = local_executor.run(p, x)
        return out, before, torch.get_num_threads()

    with ThreadPoolExecutor(8) as callers:
        runs = list(callers.map(call, xs))
    for x, (out, before, after) in zip(xs, runs, strict=True):
        torch.testing.assert_close(out, g.nodes["a"].fn(x) + x + 1)
        assert before == after == default
    assert set(seen.seen) == {1}
    assert not local_executor._budget._pools  # no lane was made: every call ran on its caller
    assert _new_thread_count() == default


@needs_threads
def test_a_thread_started_during_a_budgeted_call_starts_at_the_process_default():
    """The budget sets the caller's own count alone: torch's process default, which a thread
    started meanwhile reads (a server's new worker), stays as it was, MKL's count included."""
    from graphexec.executors.base import BudgetLanes
    from graphexec.executors.own_threads import at_threads

    default = _new_thread_count()
    lanes = BudgetLanes()
    inside = lanes.call(1, lambda: (torch.get_num_threads(), _new_thread_count()))
    assert inside == (1, default) and not lanes._pools
    big = torch.randn(256, 256)
    with at_threads(1) as here:  # a matrix product (MKL) gives the same result at either count
        assert here
        torch.testing.assert_close(big @ big, lanes.call(default, lambda: big @ big))
    assert torch.get_num_threads() == default


def test_where_the_count_cannot_be_set_alone_the_call_goes_to_a_lane(monkeypatch):
    """Without the per-thread setters (another parallel backend), a budgeted call is handed
    to a pool thread at the budget; the caller's count and the default do not move."""
    from graphexec.executors import own_threads
    from graphexec.executors.base import BudgetLanes

    monkeypatch.setattr(own_threads, "_setters", lambda: None)
    before, default = torch.get_num_threads(), _new_thread_count()
    lanes = BudgetLanes()
    try:
        on = lanes.call(1, lambda: (threading.current_thread().name, torch.get_num_threads()))
    finally:
        lanes.close()
    assert on[0].startswith("graphexec-budget1") and on[1] == 1
    assert torch.get_num_threads() == before and _new_thread_count() == default
