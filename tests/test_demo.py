"""The demo (`graphexec.demo`): one verdict per run, the lever that won named, a model that
has one. Rules only: every speed here is a hand-written `Speedup` or decision record, so no
outcome depends on this machine's clock (the end-to-end run is tests/test_cli.py's)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec.decisions import BUDGET, FUSION, Decision
from graphexec.demo import (
    DEFAULT_ROW,
    DemoNet,
    _Case,
    _cases,
    _write_pictures,
    helped_line,
    run_summary,
    speed_words,
)
from graphexec.hfuse import has_candidates
from graphexec.timing import Speedup
from tests.records import as_is

FAST = Speedup((1.0, 1.0, 1.0, 1.0), (4.0, 4.2, 3.9, 4.1))
NOISE = Speedup((1.0, 1.0, 1.0, 1.0), (1.1, 0.9, 1.0, 1.05))
#: Rounds of ten seconds each: a profiled run of a tiny graph set against their eager median
#: would read thousands of times faster, where the rounds say within noise.
SLOW_NOISE = Speedup((10.0, 10.0, 10.0, 10.0), (11.0, 9.0, 10.0, 10.5))


def _chain() -> gx.Plan:
    """x -> a -> b: no two tasks can run at once."""
    g = gx.Graph("chain")
    g.output(g.node("b", nn.Linear(4, 4), g.node("a", nn.Linear(4, 4), g.input("x"))))
    return gx.plan(g)


def _fused(plan: gx.Plan, kept: bool = True) -> gx.Plan:
    """Two groups of 128 layers fused by the rule; the fused-vs-unfused trial kept or dropped
    them."""
    groups = tuple(
        Decision(FUSION, "fused", f"fused 128 x Linear (h{g}.0, ...)",
                 detail={"members": [f"h{g}.{i}" for i in range(128)], "rule": True})
        for g in range(2)
    )  # fmt: skip
    trial = (Decision(FUSION, "fused", "kept: the fused plan ran 1.65x faster than the unfused "
                      "one (measured)") if kept else
             Decision(FUSION, "unfused", "dropped: the fused plan ran 1.02x slower than the "
                      "unfused one (measured); fusion must save 5%"))  # fmt: skip
    return dataclasses.replace(plan, fusion=(*groups, trial))


def _one_thread(plan: gx.Plan) -> gx.Plan:
    record = Decision(BUDGET, "1 thread", "thread budget: 1 intra-op thread: one by one at 1 "
                      "intra-op thread ran 2.21x faster than one by one on the calling thread "
                      "(2 intra-op threads) (measured side by side)")  # fmt: skip
    return dataclasses.replace(plan, thread_budget=1, decisions=(*plan.decisions, record))


def test_the_closing_line_names_the_fusion_and_thread_budget_that_won():
    """A plan that runs its tasks one after another can still win by what it changed: the line
    says which kept decisions those were (read from the records), not "no two tasks can run at
    once"; when the rounds do not confirm them, it says so with the load."""
    plan = _one_thread(_fused(_chain()))
    line = helped_line("heads", plan, FAST)
    assert line.startswith("heads: 4.05x faster than eager (middle half")
    assert (
        "2 groups of 128 identical modules ran as one batched call each (horizontal fusion "
        "kept: the fused plan ran 1.65x faster than the unfused one (measured))"
    ) in line
    assert "it ran at 1 intra-op thread (its thread budget: 1 intra-op thread:" in line
    assert "no two tasks" not in line and "\n" not in line
    line = helped_line("heads", plan, NOISE, loads=(0.4, 2.7))
    assert "no faster than eager" in line
    assert line.endswith("its trials found that faster, but these rounds did not (load average "
                         "0.4 while planning, 2.7 while timing)")  # fmt: skip


def test_fusion_a_trial_dropped_is_not_claimed():
    line = helped_line("heads", _fused(_chain(), kept=False), FAST)
    assert "batched" not in line
    assert line.endswith("no two tasks can run at once, so the plan runs them one after another")


@pytest.mark.parametrize("speedup", [FAST, NOISE, Speedup((1.0,) * 3, (0.8, 0.9, 0.85))])
def test_every_place_says_the_one_verdict_of_the_rounds(tmp_path, speedup):
    """The table's row, the summary file and the closing line read the same rounds: the summary
    says their verdict, never this profiled run's wall against eager's median (a second
    measurement: the demo once printed "1.42x faster" there beside a table's "within noise")."""
    plan = _chain()
    rounds = dataclasses.replace(speedup, seconds=tuple(10 * s for s in speedup.seconds),
                                 reference=tuple(10 * s for s in speedup.reference))  # fmt: skip
    _, trace = gx.SequentialExecutor().run(plan, torch.randn(2, 4), profile=True)
    case = _Case("chain", "a chain", nn.Identity(), torch.randn(2, 4), plan=plan,
                 rows=[(DEFAULT_ROW, rounds)], traces={DEFAULT_ROW: trace})  # fmt: skip
    files = _write_pictures([case], tmp_path)
    summary = (tmp_path / "chain" / "summary_threads.txt").read_text(encoding="utf-8")
    assert tmp_path / "chain" / "summary_threads.txt" in files
    said = speed_words(rounds)
    assert f"  vs eager        {said}, from the timed rounds (not this profiled run)" in summary
    assert summary.count(" than eager") == 1  # no second verdict
    assert f"chain: {said}: " in helped_line("chain", plan, rounds)


def test_a_summary_of_the_module_as_it_is_says_what_the_timed_calls_ran():
    """Its timed calls run the module; a profiled call records the graph's tasks instead."""
    plan = as_is(_chain(), print, "the best plan ran 1.07x slower than it")
    _, trace = gx.SequentialExecutor().run(plan, torch.randn(2, 4), profile=True)
    text = run_summary(trace, SLOW_NOISE)
    assert "timed calls     ran the traced module as it is; this profiled run recorded" in text
    assert text.endswith(f"{speed_words(SLOW_NOISE)}, from the timed rounds (not this profiled "
                         "run)")  # fmt: skip
    assert "vs eager" not in run_summary(trace, None)  # an executor that failed: no verdict


def test_the_demo_holds_a_model_with_many_small_identical_branches():
    """The lever a small CPU rewards (running many small identical heads as one batched call)
    needs a model that has one: the demo's TaskHeads, traced as the demo traces it, holds a
    level of 128 fusable heads, and runs equal to eager."""
    case = next(c for c in _cases(batch=4) if c.name == "TaskHeads")
    graph = gx.trace(case.model, name=case.name, leaves=case.leaves)
    assert has_candidates(graph, min_group=128)
    assert not has_candidates(gx.trace(DemoNet(width=8)), min_group=2)  # the other two: none
    with torch.no_grad():
        got = gx.SequentialExecutor().run(gx.plan(graph), case.x)
        torch.testing.assert_close(got, case.model(case.x))
