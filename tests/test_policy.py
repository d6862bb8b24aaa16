"""The tuning policy (graphexec.policy): one object holds every rule, reaches every decision,
and keys the decision cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec import policy as policy_module
from graphexec.decisions import CACHE
from tests.test_cache import counted


def test_every_rule_has_todays_value_and_bad_values_are_refused():
    p = gx.Policy()
    assert (p.gain, p.source_margin, p.inline_below, p.drift, p.window) == (0.95, 1.03, 50e-6,
                                                                            1.5, 8)  # fmt: skip
    assert p == policy_module.DEFAULT
    with pytest.raises(ValueError, match="drift=1.0"):
        gx.Policy(drift=1.0)
    with pytest.raises(ValueError, match="share=0"):
        gx.Policy(share=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.gain = 0.9  # type: ignore[misc]
    assert p.replace(gain=0.9).gain == 0.9 and p.gain == 0.95


def test_a_changed_rule_never_reuses_a_cached_decision():
    """The cache key holds the policy's digest: no manual format bump for a new rule."""
    g, a = counted()
    x = torch.randn(4, 8)
    gx.plan(g, example_inputs=(x,))
    calls = a.calls
    again = gx.plan(g, example_inputs=(x,))
    assert a.calls == calls and again.decisions[-1].step == CACHE
    other = gx.plan(g, example_inputs=(x,), policy=gx.Policy(budget_slack=1.2))
    assert a.calls > calls  # measured again
    assert not any(d.step == CACHE for d in other.decisions)


def test_the_inline_threshold_comes_from_the_policy_unless_given():
    g = gx.Graph("g")
    x = g.input("x")
    a, b = g.node("a", nn.Linear(8, 8), x), g.node("b", nn.Linear(8, 8), x)
    g.output(g.node("sum", gx.add(), a, b))
    assert gx.plan(g).inline_below == gx.Policy().inline_below
    everything = gx.Policy(inline_below=1.0)
    assert gx.plan(g, policy=everything).levels == (("a..sum",),)  # one cheap task, inline
    assert gx.plan(g, policy=everything, inline_below=0.0).inline_below == 0.0


def test_a_graph_module_plans_and_watches_by_its_policy():
    g, _ = counted()
    strict = gx.Policy(drift=3.0, window=4)
    with gx.GraphModule(g, policy=strict) as gm:
        gm(torch.randn(4, 8))
        watch = gm.tuner.watch
        assert watch.policy is strict and (watch.factor, watch.window) == (3.0, 4)
        assert gm.plan.measured and gm.policy is strict
    watch = gx.Watch(policy=strict, window=2)  # an argument overrides one rule
    assert (watch.factor, watch.window) == (3.0, 2)
