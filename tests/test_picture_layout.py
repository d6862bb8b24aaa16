"""Where things go in pictures, checked as data: arrows that avoid bars, labels that use the
room they have (and no more), compare bars that show what their title says, plan box text
inside its box, and docs pictures that one command remakes.

Timelines here are written by hand (no timing), so layouts are exact. The graph::

    x -> stem.0 -> tower_a.0..tower_a.6 -\\
              |-> tower_b.0..tower_b.2 --> head
              \\-> tower_c.0..tower_c.2 -/
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from PIL import Image, ImageStat

import graphexec as gx
from graphexec import viz
from graphexec.profile import TaskEvent, Timeline
from graphexec.viz._routes import HALF, Bar, crosses, route
from graphexec.viz.timeline import _bars, _critical_routes

ROOT = Path(__file__).resolve().parents[1]


def towers() -> gx.Plan:
    g = gx.Graph("towers")
    h = s = g.node("stem.0", nn.Linear(1024, 1024), g.input("x"))
    outs = []
    for tower, depth in (("tower_a", 7), ("tower_b", 3), ("tower_c", 3)):
        h = s
        for i in range(depth):
            h = g.node(f"{tower}.{i}", nn.Linear(1024, 1024), h)
        outs.append(h)
    g.output(g.node("head", nn.Linear(1024, 8), g.node("sum", gx.add(), *outs)))
    return gx.plan(g)


PLAN = towers()
STEM, A, B, C, HEAD = PLAN.tasks  # in level order


def timeline(executor: str, rows: list[tuple[str, str, float, float]]) -> Timeline:
    events = tuple(
        TaskEvent(name, PLAN.tasks[name].nodes, PLAN.tasks[name].level, t0 / 1e3, t1 / 1e3, lane)
        for name, lane, t0, t1 in rows
    )
    return Timeline(PLAN, executor, "dataflow", events, 0.0, max(e.end for e in events))


#: The issue's picture: one lane, the critical path jumps over tower_b and tower_c.
SEQUENTIAL = timeline("sequential", [(STEM, "MainThread", 0, 30), (A, "MainThread", 30, 150),
                                     (B, "MainThread", 150, 210), (C, "MainThread", 210, 250),
                                     (HEAD, "MainThread", 250, 280)])  # fmt: skip
THREADS = timeline("threads", [(STEM, "MainThread", 0, 15), (A, "graphexec_1", 16, 75),
                               (B, "graphexec_0", 20, 55), (C, "graphexec_0", 56, 80),
                               (HEAD, "MainThread", 81, 100)])  # fmt: skip


# -- arrows -----------------------------------------------------------------------------------
def test_critical_path_arrows_cross_no_bar():
    for trace in (SEQUENTIAL, THREADS):
        row = {lane: i for i, lane in enumerate(trace.lanes)}
        bars = _bars(trace, row)
        routes = _critical_routes(bars, trace.measured_span()[1], inset=1.0)
        assert len(routes) == len(trace.measured_span()[1]) - 1
        for points in routes:
            assert not crosses(points, list(bars.values())), (trace.executor, points)
        ax = viz.gantt(trace).axes[0]
        assert sum(isinstance(p, FancyArrowPatch) for p in ax.patches) == len(routes)


def test_an_arrow_over_bars_on_its_lane_goes_along_the_gutter():
    a, b, c, d = Bar(30, 150, 0), Bar(150, 210, 0), Bar(210, 250, 0), Bar(250, 280, 0)
    points = route(a, d, [a, b, c, d], inset=2)
    assert crosses([(a.x1, 0), (d.x0, 0)], [b, c]), "the straight line would cross"
    assert not crosses(points, [a, b, c, d])
    assert points[0] == (148, HALF) and points[-1] == (252, HALF), "leaves a, enters d"
    assert {y for _, y in points[1:-1]} == {0.5}, "between the two, only the gutter"


def test_an_arrow_steps_across_lanes_where_they_are_free():
    """a on lane 0, b on lane 2, lane 1 busy except between 40 and 60."""
    a, b = Bar(0, 20, 0), Bar(80, 100, 2)
    busy = [Bar(10, 40, 1), Bar(60, 95, 1)]
    points = route(a, b, [a, b, *busy], inset=1)
    assert not crosses(points, [a, b, *busy])
    steps = [
        x for (x, y), (x2, y2) in zip(points, points[1:], strict=False) if x == x2 and y < 1 < y2
    ]
    assert steps and all(40 <= x <= 60 for x in steps)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 100), st.floats(0.5, 30), st.integers(0, 1)), max_size=8),
    st.integers(0, 1),
    st.floats(0, 20),
)
def test_hops_to_the_same_or_next_lane_never_cross_a_bar(others, b_row, gap):
    """a then b (b starts after a ends), any other bars that do not overlap a or b on their
    lanes: the gutter between neighbouring lanes always has room, so no route crosses."""
    a = Bar(10, 40, 0)
    b = Bar(40 + gap, 60 + gap, b_row)
    bars = [a, b]
    for x0, width, row in others:
        bar = Bar(x0, x0 + width, row)
        if all(o.row != bar.row or bar.x1 <= o.x0 or bar.x0 >= o.x1 for o in bars):
            bars.append(bar)
    assert not crosses(route(a, b, bars, inset=1.0), bars)


# -- labels -----------------------------------------------------------------------------------
def bar_labels(fig) -> dict[str, object]:
    ax = fig.axes[0]
    return {t.get_text(): t for t in ax.texts}


def test_labels_use_the_room_their_bar_has():
    """A 30 ms bar of 280 ms on an 11-inch figure holds "stem.0" whole (it was "s…0")."""
    fig = viz.gantt(SEQUENTIAL)
    labels = bar_labels(fig)
    assert {STEM, A, B, C, HEAD} <= labels.keys(), labels.keys()


def test_labels_stay_inside_their_bars_and_shorten_only_when_needed():
    fig = viz.gantt(THREADS, width=6)
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    bars = {(round(r.get_x(), 6), round(r.get_y() + HALF)): r for r in ax.patches
            if isinstance(r, Rectangle) and r.get_height() == pytest.approx(2 * HALF)}  # fmt: skip
    names = {e.task for e in THREADS.events}
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        holder = min(
            bars.values(),
            key=lambda r: (
                abs(r.get_x() + r.get_width() / 2 - text.get_position()[0])
                + abs(r.get_y() + HALF - text.get_position()[1])
            ),
        )
        room = holder.get_window_extent(renderer)
        assert room.x0 <= box.x0 and box.x1 <= room.x1, text.get_text()
    shown = [t.get_text() for t in ax.texts]
    assert all(s in names or "…" in s or ".." in s for s in shown)
    assert not any("*" in s for s in shown), "a label never stands for other tasks"


def long_names() -> gx.Graph:
    g = gx.Graph("long_names")
    h = g.input("an_input_with_a_rather_long_name")
    for i in range(3):
        h = g.node(f"encoder.layers.{i}.self_attention.out_projection", nn.Linear(512, 512), h)
    head = nn.Sequential(nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(4, 8))
    g.output(g.node("head", head, h))
    return g


def inception() -> gx.Graph:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from inception_cnn import InceptionNet
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return gx.trace(InceptionNet(blocks=3).eval())


@pytest.mark.parametrize("graph", [long_names, inception])
def test_plan_box_text_stays_inside_its_box(graph):
    """Long module paths and kinds (the head's ``.0 cat+AdaptiveAvgPool2d  10.0 µs`` ran
    over its box) are shortened to what the box holds, measured."""
    fig = gx.plan(graph()).draw()
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    boxes = [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, FancyBboxPatch)]
    inside = 0
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
        holders = [b for b in boxes if b.x0 <= cx <= b.x1 and b.y0 <= cy <= b.y1]
        if holders:  # row labels in the margin have none
            inside += 1
            tightest = min(holders, key=lambda b: b.width)
            assert tightest.x0 <= box.x0 and box.x1 <= tightest.x1, text.get_text()
    assert inside >= 6


def test_plan_boxes_widen_so_names_and_node_lines_show_whole():
    """Whole names where widening the figure (up to 1.8x) makes room, to the pixel."""
    g = gx.Graph("two_towers")
    x = g.input("x")
    towers = [g.node(f"tower_{k}", nn.Linear(512, 512), x) for k in "ab"]
    s = g.node("merge", gx.stack(dim=1), *towers)
    g.output(g.node("head", nn.Linear(512, 10), g.node("pool", gx.mean(dim=1), s)))
    plan = gx.plan(g)
    for cost in (1e-6, 99.2e-6, 12.34e-3):
        costs = {**plan.node_costs, "merge": cost}
        fig = dataclasses.replace(plan, node_costs=costs).draw()
        shown = [t.get_text() for t in fig.axes[0].texts]
        assert "merge..head" in shown
        assert any(t.startswith("merge stack(dim=1)  ") for t in shown), shown


# -- compare --------------------------------------------------------------------------------
def test_compare_bars_are_speedups_so_the_fastest_is_longest():
    fig = viz.compare({"sequential": SEQUENTIAL, "threads": THREADS})
    bars = fig.axes[-1]
    assert bars.get_title() == "speedup vs sequential"
    widths = [p.get_width() for p in bars.patches if isinstance(p, Rectangle)][:2]
    assert widths == pytest.approx([1.0, SEQUENTIAL.wall / THREADS.wall])
    assert widths[1] > widths[0], "the faster run has the longer bar"
    for ax in fig.axes[:-1]:  # the "s…0": a label keeps five characters or is left out
        for text in ax.texts:
            assert text.get_text() in PLAN.tasks or len(text.get_text().replace("…", "")) >= 5


# -- docs pictures ------------------------------------------------------------------------------
def test_every_docs_picture_is_made_by_make_pictures_and_captioned_from_it():
    script = (ROOT / "docs" / "make_pictures.py").read_text()
    page = (ROOT / "docs" / "pictures.md").read_text()
    for png in sorted((ROOT / "docs" / "img").glob("*.png")):
        assert f'"{png.name}"' in script, f"{png.name} is not made by docs/make_pictures.py"
        img = Image.open(png)
        assert img.width >= 300 and ImageStat.Stat(img.convert("L")).stddev[0] > 10
    for name in re.findall(r"\(img/(\w+)\.png\)", page):
        assert f"<!-- pictures:{name} -->" in page, f"{name} has no caption written from it"
    assert "pictures:" in (ROOT / "Makefile").read_text()


def test_rewrite_replaces_only_between_markers(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_pictures", ROOT / "docs" / "make_pictures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    page = tmp_path / "p.md"
    page.write_text("keep\n<!-- pictures:k -->\nold\n<!-- /pictures:k -->\nkeep too\n")
    other = tmp_path / "README.md"  # a key may sit on several pages (README and docs)
    other.write_text(page.read_text())
    mod.rewrite([page, other], {"k": "new *1.5 ms*"})
    for p in (page, other):
        assert (
            p.read_text()
            == "keep\n<!-- pictures:k -->\nnew *1.5 ms*\n<!-- /pictures:k -->\nkeep too\n"
        )
    with pytest.raises(SystemExit, match="missing"):
        mod.rewrite([page], {"missing": "x"})
