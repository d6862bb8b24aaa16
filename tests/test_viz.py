"""Pictures and trace files: real PNG/SVG files opened with PIL, Chrome JSON checked.

The graph used throughout::

    x -> a (Linear) -\
    x -> b (Linear) --> sum -> c (Linear)
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn as nn
from PIL import Image, ImageStat

import graphexec as gx
from graphexec import viz
from graphexec.units import lane_label


def diamond() -> gx.Graph:
    g = gx.Graph("diamond")
    x = g.input("x")
    a = g.node("a", nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)), x)
    b = g.node("b", nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)), x)
    s = g.node("sum", gx.add(), a, b)
    g.output(g.node("c", nn.Linear(64, 8), s))
    return g


def cnn(blocks: int) -> nn.Module:
    sys.path.insert(0, "examples")
    try:
        from inception_cnn import InceptionNet
    finally:
        sys.path.remove("examples")
    return InceptionNet(blocks=blocks).eval()


def assert_picture(path, min_size=(300, 200)) -> Image.Image:
    """A real image, of a sensible size, with content (not one flat colour)."""
    img = Image.open(path)
    img.load()
    assert img.width >= min_size[0] and img.height >= min_size[1], img.size
    assert img.width <= 8000 and img.height <= 8000, img.size
    stddev = ImageStat.Stat(img.convert("L")).stddev[0]
    assert stddev > 10, f"{path} looks blank (pixel stddev {stddev:.1f})"
    return img


@pytest.fixture(scope="module")
def run_trace():
    """One profiled threaded run of the diamond."""
    plan = gx.plan(diamond())
    with torch.no_grad(), gx.ThreadExecutor(workers=2) as ex:
        _, trace = ex.run(plan, torch.randn(32, 64), profile=True)
    return trace


def test_plan_png_and_svg(tmp_path):
    plan = gx.plan(diamond())
    fig = plan.draw(tmp_path / "plan.png")
    assert fig.axes, "draw_plan returns the figure"
    assert_picture(tmp_path / "plan.png")
    plan.draw(tmp_path / "plan.svg")
    svg = (tmp_path / "plan.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "diamond" in svg  # the title is text in the SVG


def test_plan_picture_of_a_200_node_cnn_stays_readable(tmp_path):
    """A traced 12-block inception CNN (173 nodes) is drawn per task, not as a smear."""
    plan = gx.plan(gx.trace(cnn(12)))
    assert sum(len(t.nodes) for t in plan.tasks.values()) > 150
    plan.draw(tmp_path / "big.png")
    img = assert_picture(tmp_path / "big.png")
    # ~60 tasks, 4 wide: a tall narrow picture whose text is still ~7 pt at 100 dpi
    assert img.height > img.width
    assert img.height < 6000


def test_plan_draw_marks_critical_path(tmp_path):
    from matplotlib.patches import FancyBboxPatch

    plan = gx.plan(diamond())
    fig = viz.draw_plan(plan)
    crimson = (214 / 255, 39 / 255, 40 / 255)
    patches = fig.axes[0].patches
    red = [p for p in patches if isinstance(p, FancyBboxPatch) and p.get_edgecolor()[:3] == crimson]
    assert len(red) == len(plan.critical_path)


def test_plan_to_dot_names_every_node_and_cluster():
    plan = gx.plan(diamond())
    dot = plan.to_dot()
    assert dot.startswith('digraph "diamond" {') and dot.rstrip().endswith("}")
    for task in plan.tasks.values():
        for node in task.nodes:
            assert f'"{node}"' in dot
    assert dot.count("subgraph cluster_") == len(plan.tasks)
    assert '"x" -> "a"' in dot and '"x" -> "b"' in dot
    assert dot.count("{") == dot.count("}")


def test_gantt_png(tmp_path, run_trace):
    fig = run_trace.gantt(tmp_path / "gantt.png")
    assert_picture(tmp_path / "gantt.png")
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == len(run_trace.lanes)


def test_compare_png(tmp_path, run_trace):
    plan = run_trace.plan
    _, seq = gx.SequentialExecutor().run(plan, torch.randn(32, 64), profile=True)
    fig = viz.compare({"sequential": seq, "threads": run_trace}, tmp_path / "cmp.png")
    assert_picture(tmp_path / "cmp.png", min_size=(600, 250))
    assert len(fig.axes) == 3  # two Gantt rows and the speedup bars
    with pytest.raises(ValueError, match="baseline"):
        viz.compare({"threads": run_trace}, baseline="eager")
    with pytest.raises(ValueError):
        viz.compare({})


def test_compare_takes_a_list_of_traces(tmp_path, run_trace):
    """Unlabelled traces are labelled by executor name, repeats numbered, in the given order."""
    _, seq = gx.SequentialExecutor().run(run_trace.plan, torch.randn(32, 64), profile=True)
    fig = viz.compare([seq, run_trace, run_trace], tmp_path / "cmp.png", baseline="threads")
    assert_picture(tmp_path / "cmp.png", min_size=(600, 250))
    *rows, bars = fig.axes
    titles = [ax.get_title(loc="left").split(":")[0] for ax in rows]
    assert titles == ["sequential", "threads", "threads #2"]
    assert [t.get_text() for t in bars.get_yticklabels()] == titles
    assert bars.get_title() == "speedup vs threads"
    with pytest.raises(ValueError):
        viz.compare([])


def validate_chrome(doc: dict) -> list[dict]:
    """Checks of the Trace Event format; returns the complete events."""
    assert isinstance(doc["traceEvents"], list)
    json.dumps(doc)  # serialisable as is
    complete = []
    names = {}
    for e in doc["traceEvents"]:
        assert {"ph", "pid", "tid", "name"} <= e.keys(), e
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name") and "name" in e["args"]
            if e["name"] == "thread_name":
                names[e["tid"]] = e["args"]["name"]
            continue
        assert e["ph"] == "X", "only complete events and metadata"
        assert {"ts", "dur"} <= e.keys()
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0 and e["dur"] >= 0
        complete.append(e)
    assert {e["tid"] for e in complete} <= names.keys(), "every lane is named"
    return complete


def test_chrome_trace_is_valid_and_agrees_with_the_trace(tmp_path, run_trace):
    doc = run_trace.to_chrome(tmp_path / "trace.json")
    assert json.loads((tmp_path / "trace.json").read_text()) == doc
    complete = validate_chrome(doc)
    assert sorted(e["name"] for e in complete) == sorted(run_trace.plan.tasks)
    # microseconds: durations add up to the trace's busy time, ends fit in the wall time
    assert sum(e["dur"] for e in complete) == pytest.approx(run_trace.busy * 1e6, abs=1)
    assert max(e["ts"] + e["dur"] for e in complete) <= run_trace.wall * 1e6 + 1
    assert doc["otherData"]["wall_us"] == pytest.approx(run_trace.wall * 1e6, abs=1)
    lanes = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert lanes == {lane_label(lane) for lane in run_trace.lanes}, "named as in the Gantt"


def test_summary_numbers_agree_with_events(run_trace):
    events = run_trace.events
    busy = sum(e.end - e.start for e in events)
    assert run_trace.busy == pytest.approx(busy)
    assert run_trace.wall >= max(e.end for e in events) - min(e.start for e in events) - 1e-9
    assert run_trace.speedup == pytest.approx(busy / run_trace.wall)
    per_lane = run_trace.lane_busy()
    assert sum(per_lane.values()) == pytest.approx(busy)
    text = run_trace.summary()
    assert f"{run_trace.wall * 1e3:8.2f} ms" in text
    assert f"{run_trace.speedup:.2f}x" in text
    span, path = run_trace.measured_span()
    assert " -> ".join(path) in text
    assert span <= busy + 1e-9


def test_trace_events_respect_dependencies(executor):
    """For every executor and schedule: no task starts before each of its deps ended.

    A task may run more than once (Dask re-runs cheap inline tasks inside each job that reads
    them), so every run of a task needs a run of each dependency that ended before it started.
    """
    plan = gx.plan(gx.trace(cnn(2)), fuse_chains=False)
    with torch.no_grad():
        _, trace = executor.run(plan, torch.randn(2, 3, 16, 16), profile=True)
    ends: dict[str, list[float]] = {}
    for e in trace.events:
        ends.setdefault(e.task, []).append(e.end)
    assert ends.keys() == set(plan.tasks)
    for e in trace.events:
        for dep in plan.tasks[e.task].deps:
            assert min(ends[dep]) <= e.start, (dep, e.task)
    assert trace.start <= min(e.start for e in trace.events)
    assert max(e.end for e in trace.events) <= trace.end


def test_missing_matplotlib_says_what_to_install(monkeypatch, run_trace):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install graphexec\[viz\]"):
        run_trace.gantt()
    assert viz.to_chrome(run_trace)["traceEvents"], "JSON needs no matplotlib"


def test_short_labels():
    assert viz.short_label("abc", 5) == "abc"
    assert len(viz.short_label("a" * 50, 12)) == 12


def test_no_level_colour_reads_as_the_critical_path_red():
    """Red marks the critical path: no level's fill may be a saturated red of its own."""
    import colorsys

    from matplotlib.colors import to_rgb

    from graphexec.viz._style import CRITICAL, LEVEL_COLOURS

    red_hue = colorsys.rgb_to_hsv(*to_rgb(CRITICAL))[0]
    for colour in LEVEL_COLOURS:
        hue, saturation, _ = colorsys.rgb_to_hsv(*to_rgb(colour))
        distance = min(abs(hue - red_hue), 1 - abs(hue - red_hue)) * 360
        assert distance > 30 or saturation < 0.3, colour


def test_compare_given_timed_rounds_draws_the_tables_numbers(tmp_path, run_trace):
    """Beside a table (bench, the demo), the bars are the table's rounds against the table's
    reference, with its verdicts: not one profiled run's wall against another's."""
    from graphexec.timing import Speedup, speedup_table

    _, seq = gx.SequentialExecutor().run(run_trace.plan, torch.randn(32, 64), profile=True)
    rows = {"sequential": Speedup((1.0, 1.1, 0.9, 1.0), (1.0, 1.0, 1.0, 1.05)),
            "threads": Speedup((1.0, 1.0, 1.0, 1.0), (1.5, 1.4, 1.6, 1.5))}  # fmt: skip
    traces = {"sequential": seq, "threads": run_trace}
    fig = viz.compare(traces, tmp_path / "cmp.png", speedups=rows, reference="eager")
    assert_picture(tmp_path / "cmp.png", min_size=(600, 250))
    *gantts, bars = fig.axes
    widths = [p.get_width() for p in bars.patches]
    assert widths == pytest.approx([rows["sequential"].median, rows["threads"].median])
    assert bars.get_title() == "speedup vs eager"
    table = speedup_table(list(rows.items()), "eager")
    for ax, s in zip(gantts, rows.values(), strict=True):
        said = f"{s.median:.2f}x, {s.verdict}"
        assert said in ax.get_title(loc="left")
        assert f"{s.median:.2f}x" in table and s.verdict in table
    assert "within noise" in gantts[0].get_title(loc="left")
    with pytest.raises(ValueError, match="no timed rounds for \\['threads'\\]"):
        viz.compare(traces, speedups={"sequential": rows["sequential"]})


def test_inputs_dynamo_lifted_from_parameters_are_labelled_by_module_path():
    """Dynamo hands parameters over as graph inputs named ``L_self_modules_..._weight_``: too
    long for an oval, they were drawn blank (8 of 9 in docs/img/compiled_plan.png)."""
    g = gx.Graph("lifted")
    x = g.input("L_x_")
    w = g.input("L_self_modules_a_modules_0_parameters_weight_")
    b = g.input("L_self_modules_a_modules_0_parameters_bias_")
    g.output(g.node("linear", torch.nn.functional.linear, x, w, b))
    fig = gx.plan(g).draw()
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"x", "a.0.weight", "a.0.bias"} <= texts


def test_a_sequential_node_is_labelled_by_its_layers_in_order():
    """Sequential(Linear, ReLU, Linear) read "Linear+ReLU": a second Linear went missing."""
    g = gx.Graph("seq")
    x = g.input("x")
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    g.output(g.node("head", nn.Linear(4, 2), g.node("mlp", mlp, x)))
    fig = gx.plan(g, fuse_chains=True, inline_below=0.0).draw()
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "Linear+ReLU+Linear" in texts
