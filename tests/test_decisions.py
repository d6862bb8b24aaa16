"""Decision records (graphexec.decisions): what a step chose and measured, as data."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec import interpret, trials
from graphexec.decisions import BUDGET, OVERLAP, STEPS, Candidate, Decision
from tests.clocks import steady_clock


def _towers() -> gx.Graph:
    g = gx.Graph("towers")
    x = g.input("x")
    a, b = g.node("a", nn.Linear(64, 64), x), g.node("b", nn.Linear(64, 64), x)
    g.output(g.node("sum", gx.add(), a, b))
    return g


def test_a_measured_plan_records_each_way_it_weighed(monkeypatch):
    """On a steady clock every way runs alike, so the simplest is kept, and every shape is
    in the records: run ones with their trial's seconds, the rest with their estimates."""
    steady_clock(monkeypatch, trials, interpret)
    p = gx.plan(_towers(), example_inputs=(torch.randn(8, 64),), inline_below=0, hfuse=False)
    overlap = p.decision(OVERLAP)
    assert overlap is not None and overlap.choice == "one by one" and p.one_by_one
    assert str(overlap) == f"one by one: {p.one_by_one_why}" and str(overlap) in str(p)
    assert overlap.margin == gx.Policy().gain
    names = [c.name for c in overlap.candidates]
    assert names[0] == "one by one" and "overlapped" in names
    assert all(c.seconds is not None and c.seconds > 0 for c in overlap.candidates)
    if torch.get_num_threads() > 1:
        budget = p.decision(BUDGET)
        assert budget.choice == "caller's threads" and budget.candidates == overlap.candidates


def test_records_travel_as_json_and_refuse_unknown_steps():
    d = Decision(BUDGET, "1 thread", "thread budget: 1 intra-op thread: ...",
                 (Candidate("one by one", 0.004), Candidate("one by one at 1", 0.001, True)),
                 0.95, detail={"why": "..."})  # fmt: skip
    assert Decision.from_json(json.loads(json.dumps(d.to_json()))) == d
    assert d.seconds("one by one at 1") == 0.001 and d.seconds("overlapped") is None
    with pytest.raises(ValueError, match="unknown step 'budget'"):
        Decision("budget", None, "")
    with pytest.raises(ValueError, match="unknown step"):
        gx.plan(_towers()).decision("inline")
    assert gx.plan(_towers()).decision(STEPS[0]) is None  # estimated: nothing decided
