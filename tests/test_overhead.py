"""The overhead harness measures what it claims: no-op tasks really are inline or dispatched.

No timings are asserted here (those belong to ``python -m benchmarks.run``); these tests
check that the graphs the benchmark times have the shape it reports on, and that the
memory probe in a fresh subprocess works.
"""

from __future__ import annotations

import threading

import torch

import graphexec as gx
from benchmarks.suite import _noop, dispatch_overhead, memory_peak, random_dag


def _noops(n: int) -> gx.Graph:
    g = gx.Graph("noops")
    x = g.input("x")
    g.output(*[g.node(f"n{i}", _noop, x) for i in range(n)])
    return g


def test_inline_plan_runs_every_task_on_the_caller():
    g = _noops(20)
    p = gx.plan(g, inline_below=1.0)
    assert len(p.tasks) == 20 and all(t.inline for t in p.tasks.values())
    t = torch.zeros(1)
    with gx.ThreadExecutor() as ex:
        out, trace = ex.run(p, t, profile=True)
    assert all(o is t for o in out)
    assert {e.lane for e in trace.events} == {threading.current_thread().name}


def test_dispatched_plan_runs_tasks_on_pool_threads():
    g = _noops(20)
    p = gx.plan(g, inline_below=0.0)
    assert not any(t.inline for t in p.tasks.values()) and p.parallel
    with gx.ThreadExecutor() as ex:
        out, trace = ex.run(p, torch.zeros(1), profile=True)
    assert len(out) == 20
    assert all(e.lane.startswith("graphexec") for e in trace.events)


def test_dispatch_overhead_reports_every_case():
    got = dispatch_overhead(n=20, reps=2)
    assert set(got) == {"inline task", "thread task", "torch.jit.fork+wait",
                        "ThreadPoolExecutor submit+result"}  # fmt: skip
    assert all(v > 0 for v in got.values())


def test_random_dag_plans_and_runs_like_the_reference():
    g = random_dag(300, seed=3)
    p = gx.plan(g)
    assert sum(len(t.nodes) for t in p.tasks.values()) == 300
    x = torch.ones(2)
    with gx.ThreadExecutor() as ex:
        for got, want in zip(ex.run(p, x), gx.SequentialExecutor().run(p, x), strict=True):
            torch.testing.assert_close(got, want)


def test_memory_probe_in_a_subprocess():
    got = memory_peak("tiny", "eager")
    assert "error" not in got, got
    assert got["peak_mib"] >= 0
