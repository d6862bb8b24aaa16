"""One name per thing, and text a newcomer reads right: task names, lane names, traced pieces,
``print(graph)``, ``print(plan)`` and ``trace.summary()``.

The graph used for task names (chains fuse into tasks named ``first..last``)::

    x -> stem.0 -> blk.a.0 -> blk.a.1 -> blk.a.2 -\\
              \\-> blk.down -----------------------> head (add)
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
import torch.nn as nn

import graphexec as gx
from graphexec.profile import TaskEvent, Timeline, median_run
from graphexec.units import fit_name, name_forms, speed_words
from tests.records import as_is, one_by_one


def blocks() -> gx.Graph:
    g = gx.Graph("blocks")
    x = g.input("x")
    h = s = g.node("stem.0", nn.Linear(256, 256), x)
    for i in range(3):
        h = g.node(f"blk.a.{i}", nn.Linear(256, 256), h)
    d = g.node("blk.down", nn.Linear(256, 256), s)
    g.output(g.node("head", gx.add(), h, d))
    return g


@pytest.fixture(scope="module")
def trace() -> Timeline:
    with torch.no_grad(), gx.ThreadExecutor(workers=2) as ex:
        return ex.run(gx.plan(blocks()), torch.randn(8, 256), profile=True)[1]


# -- names and their shorter forms ----------------------------------------------------------
def test_a_range_is_shortened_by_writing_its_module_path_once():
    forms = list(name_forms("layer2.conv1..layer2.bn2"))
    assert forms[:2] == ["layer2.conv1..layer2.bn2", "layer2.conv1..bn2"]
    assert all("…" in f for f in forms[2:]), "every further form is marked as cut"
    assert list(name_forms("stem.0+stem.1"))[1] == "stem.0+1"
    assert list(name_forms("img_stem..img_pool"))[1] == "img_stem…img_pool"


def test_no_pattern_that_matches_other_tasks():
    """``layer2.*`` would also name ``layer2.down``: no form is a wildcard."""
    for name in ["layer2.conv1..layer2.bn2", "blocks.0.b3.0.0..blocks.0.b3.1.1", "a+b"]:
        assert not any("*" in form for form in name_forms(name))


def test_short_names_fit_whole_or_not_at_all():
    """A label like ``s…0`` says less than no label (issue 14, item 13)."""
    assert list(name_forms("stem.0")) == ["stem.0"]
    assert fit_name("stem.0", lambda s: len(s) <= 5) is None
    assert fit_name("stem.0", lambda s: len(s) <= 6) == "stem.0"
    assert fit_name("blocks.0.b3.0.0..blocks.0.b3.1.1", lambda s: len(s) <= 6) is None
    cut = fit_name("encoder.layers.11.mlp", lambda s: len(s) <= 12)
    assert cut is not None and cut.startswith("enc") and cut.endswith("mlp")


def test_speed_words_say_which_way():
    assert speed_words(1.0, 2.0) == "2.00x faster"
    assert speed_words(1.48, 1.0) == "1.48x slower"
    assert "within 1%" in speed_words(1.0, 1.001)


# -- one name everywhere --------------------------------------------------------------------
def test_a_fused_task_has_the_same_name_in_text_files_and_traces(trace):
    plan = trace.plan
    fused = [t for t in plan.tasks.values() if len(t.nodes) > 2]
    assert fused and fused[0].name == "blk.a.0..blk.a.2"
    text = str(plan)
    summary = trace.summary(slowest=len(plan.tasks))
    chrome = {e["name"] for e in trace.to_chrome()["traceEvents"] if e["ph"] == "X"}
    dot = plan.to_dot()
    for name in plan.tasks:
        assert name in text and name in summary and name in chrome
        assert f'label="{name}\\n' in dot


def test_chrome_lanes_are_named_as_in_the_gantt_and_summary(trace):
    names = {
        e["args"]["name"] for e in trace.to_chrome()["traceEvents"] if e["name"] == "thread_name"
    }
    assert "MainThread" not in names and names <= {
        "caller thread",
        "pool thread 0",
        "pool thread 1",
    }
    assert all(f"lane {n}" in trace.summary() for n in names)


# -- traced graphs --------------------------------------------------------------------------
class Residual(nn.Module):
    """conv -> relu (in place) -> conv, plus a shortcut: conv2, the add and the last relu
    make one piece of the traced graph."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv2(self.relu(self.conv1(x)))
        return torch.relu(y + x)


def test_folded_pieces_are_named_after_what_they_compute():
    g = gx.trace(Residual())
    text = str(g)
    assert "Partition" not in text
    assert type(g.nodes["conv2"].fn).__name__ == "Conv2d+add+relu", text
    assert "conv2                    Conv2d+add+relu(relu, x)" in text


def test_print_graph_lists_after_only_for_what_a_node_does_not_read():
    g = gx.trace(Residual())
    for line in str(g).splitlines():
        m = re.match(
            r"\s+\S+\s+\S+\((?P<args>.*?)\)(?:  mutates \[.*?\])?  after (?P<after>\[.*\])", line
        )
        if m:
            read = {a.strip() for a in m["args"].split(",")}
            assert not read & set(eval(m["after"])), line  # noqa: S307 - our own list repr
    conv2 = g.nodes["conv2"]
    assert conv2.after, "the ordering edge is still there, only not printed twice"
    assert "after" not in next(line for line in str(g).splitlines() if "conv2" in line.split()[0])


# -- print(plan) and summaries ----------------------------------------------------------------
def test_an_inline_plan_says_so_instead_of_leading_with_a_bound():
    g = gx.Graph("chain")
    g.output(g.node("b", nn.Linear(64, 64), g.node("a", nn.Linear(64, 64), g.input("x"))))
    text = str(gx.plan(g))
    assert "1 task, 1 level" in text and "1 tasks" not in text
    totals = text.splitlines()[3]
    assert "runs one by one, one task after another" in totals and "amdahl" not in totals


def test_a_plan_that_chose_to_run_one_by_one_does_not_claim_why_in_its_totals(trace):
    """The reason may be 'overlap saved 4%, under the 5% asked': not 'measured faster'."""
    chose = one_by_one(trace.plan, "overlapping branches ran 0.96x")
    totals = chose.totals()
    assert "runs one by one, one task after another on the calling thread, as measurements " \
        "chose" in totals
    assert "faster" not in totals
    assert f"one by one: {chose.one_by_one_why}" in str(chose), "the reason follows in full"


def test_a_plan_that_runs_the_module_as_it_is_says_that_in_its_totals(trace):
    """Not 'runs one by one, one task after another': the plan's tasks do not run at all."""
    totals = as_is(trace.plan, lambda *xs: xs, "(measured)").totals()
    assert "runs the module it was traced from as it is" in totals
    assert "one task after another" not in totals


def test_summary_compares_with_eager_when_told(trace):
    assert "eager" not in trace.summary()
    faster = trace.summary(eager=trace.wall * 2)
    assert "vs eager        2.00x faster than eager PyTorch" in faster
    assert "slower than eager PyTorch" in trace.summary(eager=trace.wall / 1.5)


def test_one_lane_says_why(trace):
    with torch.no_grad():
        _, seq = gx.SequentialExecutor().run(trace.plan, torch.randn(8, 256), profile=True)
    text = seq.summary()
    assert "the sequential executor runs one task at a time" in text
    assert "no two tasks could run at once" not in text, "the plan has two branches"
    assert "amdahl" not in text
    assert "one lane: tasks ran one after another" in seq.gantt().axes[0].get_title(loc="left")


def test_median_run_is_a_real_run_of_median_wall(trace):
    def shifted(wall: float) -> Timeline:
        e = TaskEvent("stem.0", ("stem.0",), 0, 0.0, wall, "MainThread")
        return Timeline(trace.plan, "sequential", "levels", (e,), 0.0, wall)

    runs = [shifted(w) for w in (0.004, 0.001, 0.012, 0.002, 0.003)]
    assert median_run(runs) is runs[4]
    assert median_run(runs[:4]).wall == 0.002, "the lower median of an even count"
    with pytest.raises(ValueError):
        median_run([])


def test_dir_lists_the_public_names_and_no_imports():
    names = dir(gx)
    for name in ("DaskExecutor", "GraphModule", "plan", "trace", "sum", "tuple", "Trace"):
        assert name in names
    for name in ("Any", "annotations", "tune", "executors"):
        assert name not in names
    assert all(hasattr(gx, n) for n in names)


def test_help_of_graphmodule_init_is_its_own():
    doc = gx.GraphModule.__init__.__doc__ or ""
    assert doc != nn.Module.__init__.__doc__ and "GraphModule" in doc


def test_a_slow_reference_row_is_reported_without_a_cause():
    """The reference ran slower beside one candidate: the table says so and what it means for
    that row's ratio, but claims no cause it did not measure (issue 20, item 6)."""
    from graphexec.timing import Speedup, speedup_table

    text = speedup_table(
        [("threads", Speedup((1.0,) * 3, (1.0,) * 3)),
         ("sequential", Speedup((1.3,) * 3, (1.3,) * 3)),
         ("dask", Speedup((6.0,) * 3, (5.0,) * 3))],
        "eager",
    )  # fmt: skip
    note = text.splitlines()[-1]
    assert note.startswith("(eager ran 5.0x slower beside dask than beside the others")
    assert "slower reference" in note
    for cause in ("took the cores", "leaves running", "because"):
        assert cause not in note


def test_one_lane_reasons_keep_inline_for_cheap_tasks(trace):
    """ "inline" means a task too cheap to dispatch (drawn dashed); a plan run one task after
    another, or the module run as it is, is said in other words, and the why once."""
    chose = one_by_one(trace.plan, "overlap ran 1.2x slower")
    lane = trace.events[0].lane
    events = tuple(dataclasses.replace(e, lane=lane) for e in trace.events)
    one = dataclasses.replace(trace, plan=chose, events=events)
    assert one.one_lane_reason() == "the plan chose one after another (measured)"
    module = dataclasses.replace(
        one, plan=as_is(chose, print, "the best plan ran 1.07x slower than it")
    )
    assert module.one_lane_reason() == "the plan runs the traced module as it is"
    summary = module.summary()
    assert "inline" not in module.one_lane_reason()
    assert summary.count("runs the traced module as it is") == 1
    assert "(the best plan ran 1.07x slower than it)" in summary
