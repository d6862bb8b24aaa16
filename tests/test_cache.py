"""Measured decisions kept across processes (graphexec.cache): reused, never trusted blindly.

Forward passes are counted by a module that counts its calls::

    x -> a (counts) -+
    x -> b ----------+-> sum
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec.cache import FORMAT, CacheWarning
from graphexec.decisions import CACHE


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


def counted() -> tuple[gx.Graph, Counting]:
    g = gx.Graph("counted")
    x = g.input("x")
    a = Counting()
    g.output(g.node("sum", gx.add(), g.node("a", a, x), g.node("b", nn.Linear(8, 8), x)))
    return g, a


def _files(where: Path) -> list[Path]:
    return sorted(where.glob("plan-*.json"))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GRAPHEXEC_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_a_second_plan_reuses_the_measured_decisions(cache_dir):
    g, a = counted()
    x = torch.randn(4, 8)
    first = gx.plan(g, example_inputs=(x,))
    assert a.calls > 3
    [file] = _files(cache_dir)
    record = json.loads(file.read_text())  # plain JSON, nothing to unpickle
    assert record["graph"] == "counted"
    assert record["decisions"] == [d.to_json() for d in first.decisions]
    g2, a2 = counted()  # the same structure, new modules: another process would build this
    again = gx.plan(g2, example_inputs=(x,))
    assert a2.calls <= 3
    assert again.decisions[:-1] == first.decisions
    assert str(again.decisions[-1]).startswith("reused from the cache: measured ")
    assert (again.thread_budget, again.parallel, again.levels) == (
        first.thread_budget, first.parallel, first.levels)  # fmt: skip
    g3, a3 = counted()
    with gx.GraphModule(g3) as gm:  # grad enabled, as the plans above were made
        torch.testing.assert_close(gm(x), g3.nodes["a"].fn(x) + g3.nodes["b"].fn(x))
    assert a3.calls <= 3 + 1  # the plan from the cache, the call, the check above


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_call_without_grad_is_measured_apart_from_one_with_grad(cache_dir, mode):
    """A call with grad enabled records autograd history (slower): its decisions are not
    reused for no_grad or inference_mode calls, nor theirs for it."""
    x = torch.randn(4, 8)
    g, _ = counted()
    gx.plan(g, example_inputs=(x,))
    g2, a2 = counted()
    with mode():
        again = gx.plan(g2, example_inputs=(x,))
    assert a2.calls > 3 and not str(again.decisions[-1]).startswith("reused from the cache")
    assert len(_files(cache_dir)) == 2
    g3, a3 = counted()
    with mode():
        assert gx.plan(g3, example_inputs=(x,)).decisions[-1].step == CACHE
    assert a3.calls <= 3


def test_another_input_shape_is_measured_anew(cache_dir):
    g, _ = counted()
    gx.plan(g, example_inputs=(torch.randn(4, 8),))
    g2, a2 = counted()
    gx.plan(g2, example_inputs=(torch.randn(16, 8),))
    assert a2.calls > 3 and len(_files(cache_dir)) == 2


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "not readable as JSON"),
        ('{"format": 999}', "another format"),
        ('["a", "list"]', "another format"),
        (json.dumps({"format": FORMAT, "key": "someone else"}), "another graph or machine"),
    ],
    ids=["corrupt", "future", "not-a-record", "foreign"],
)
def test_a_bad_cache_file_is_ignored_with_a_warning(cache_dir, content, why):
    g, _ = counted()
    x = torch.randn(4, 8)
    first = gx.plan(g, example_inputs=(x,))
    [file] = _files(cache_dir)
    file.write_text(content)
    g2, a2 = counted()
    with pytest.warns(CacheWarning, match=why):
        again = gx.plan(g2, example_inputs=(x,))
    assert a2.calls > 3  # measured again
    assert not any(d.step == CACHE for d in again.decisions)
    rewritten = json.loads(file.read_text())["decisions"]
    assert rewritten == [d.to_json() for d in again.decisions]
    assert first.graph is g and again.graph is g2


def test_a_record_that_does_not_fit_the_graph_is_ignored(cache_dir):
    g, _ = counted()
    x = torch.randn(4, 8)
    gx.plan(g, example_inputs=(x,))
    [file] = _files(cache_dir)
    record = json.loads(file.read_text())
    record["costs"] = {"someone": 1.0}
    file.write_text(json.dumps(record))
    with pytest.warns(CacheWarning, match="do not fit"):
        gx.plan(counted()[0], example_inputs=(x,))


def test_graphexec_cache_0_turns_it_off(cache_dir, monkeypatch):
    monkeypatch.setenv("GRAPHEXEC_CACHE", "0")
    g, _ = counted()
    gx.plan(g, example_inputs=(torch.randn(4, 8),))
    g2, a2 = counted()
    gx.plan(g2, example_inputs=(torch.randn(4, 8),))
    assert a2.calls > 3 and _files(cache_dir) == []


SCRIPT = textwrap.dedent(
    """
    import torch, graphexec as gx
    from tests.test_cache import counted
    g, a = counted()
    with gx.GraphModule(g) as gm:
        gm(torch.randn(4, 8))
    said = gm.plan.decisions or (f"no decision at {torch.get_num_threads()} threads",)
    print(a.calls, said[-1])
    """
)


def test_a_second_process_reuses_the_first_ones_measurements(cache_dir):
    def first_call() -> tuple[int, str]:
        out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                             cwd=Path(__file__).parents[1])  # fmt: skip
        assert out.returncode == 0, out.stderr
        calls, decision = out.stdout.strip().splitlines()[-1].split(" ", 1)
        return int(calls), decision + "\n" + out.stderr

    calls, said = first_call()
    assert calls > 3, said
    calls, said = first_call()
    assert calls <= 3 and said.startswith("reused from the cache"), said


def test_a_cache_that_cannot_be_written_costs_a_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("GRAPHEXEC_CACHE_DIR", str(blocker))
    g, _ = counted()
    with pytest.warns(CacheWarning, match="could not write"):
        p = gx.plan(g, example_inputs=(torch.randn(4, 8),))
    assert p.measured and list(tmp_path.iterdir()) == [blocker]
