"""Pictures and files made from plans and traces: plan drawings, Gantt charts, Chrome traces.

What it decides, and why
------------------------
* **Data in, figure out.** Every function takes a frozen `Plan` or `Trace` and returns a
  ``matplotlib.figure.Figure`` (or a dict, or text). Writing a file is the one explicit
  ``path=`` argument: PNG or SVG (any format matplotlib knows) chosen by the suffix.
* **No global backend state.** Figures are made with ``matplotlib.figure.Figure`` on an Agg
  canvas, never through ``pyplot``: nothing is shown, no backend is switched under a user's
  notebook, and nothing leaks between calls. matplotlib is imported inside the functions;
  without it they raise ``ImportError`` saying ``pip install graphexec[viz]``.
* **The plan picture is drawn by task, not by node.** One row per depth level, top to bottom
  (graph inputs above level 0). A task is a box with its (shortened) name and cost; the
  nodes of a fused task are small boxes inside it, at most ``max_node_lines`` of them and a
  "+k more" line. Inside a row, tasks are ordered by the mean position of their dependencies
  (one barycentre sweep), which keeps branches in columns and edges short. This is what keeps
  a 200-node traced CNN readable: it has some 60 tasks of at most a few lines each.
* **Critical path in red** in every picture: the plan's estimated one in `draw_plan` and
  `plan_to_dot`, the measured one (`Trace.measured_span`) in `gantt` and `compare`.
* **Gantt colours are levels**, so a glance shows whether a level's branches overlapped; each
  lane has a grey background, so idle time is the grey that shows between bars.
* **Chrome traces** use complete (``"X"``) events in microseconds relative to the run's
  start, one ``tid`` per lane named by ``thread_name`` metadata, so Perfetto and
  chrome://tracing show lanes with their real names.

Call tree::

    Plan.draw      -> draw_plan      -> _plan_layout, _draw_task
    Plan.to_dot    -> plan_to_dot
    Trace.gantt    -> gantt          -> _draw_lanes
    Trace.to_chrome-> to_chrome
    compare(traces)                  -> _draw_lanes per trace, a bar chart of wall times
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .planner import format_seconds

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .planner import Plan
    from .profile import Trace

__all__ = ["draw_plan", "plan_to_dot", "gantt", "to_chrome", "compare", "short_label"]

#: Pastel colours (ColorBrewer Set3) for levels: black text stays readable on all of them.
_LEVEL_COLOURS = (
    "#8dd3c7",
    "#ffffb3",
    "#bebada",
    "#fb8072",
    "#80b1d3",
    "#fdb462",
    "#b3de69",
    "#fccde5",
    "#d9d9d9",
    "#bc80bd",
    "#ccebc5",
    "#ffed6f",
)
_CRITICAL = "#d62728"
_EDGE = "#7f7f7f"
_TASK_FILL = "#e8f1fa"
_CRIT_FILL = "#fde3e1"


def _matplotlib() -> Any:
    """Import matplotlib (Agg, no pyplot) or say what to install."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - exercised with matplotlib hidden
        raise ImportError("graphexec pictures need matplotlib: pip install graphexec[viz]") from exc

    def new_figure(width: float, height: float, **kw: Any) -> Figure:
        fig = Figure(figsize=(width, height), **kw)
        FigureCanvasAgg(fig)
        return fig

    return matplotlib, new_figure


def _save(fig: Figure, path: str | os.PathLike[str] | None, dpi: float) -> None:
    if path is not None:
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")


# -- labels -----------------------------------------------------------------------------------
def short_label(text: str, width: int = 22) -> str:
    """Shorten ``text`` to at most ``width`` characters, keeping its start and end.

    Examples
    --------
    >>> short_label("blocks.11.b5.1.1", 22)
    'blocks.11.b5.1.1'
    >>> short_label("encoder.layers.11.self_attention.out_proj", 20)
    'encoder.la….out_proj'
    """
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]


def _common_prefix(names: Sequence[str]) -> str:
    """The longest common dotted prefix of ``names`` ('' when none)."""
    parts = [n.split(".") for n in names]
    prefix: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    if prefix and all(len(p) == len(prefix) for p in parts):
        prefix.pop()  # never swallow a whole name
    return ".".join(prefix)


def _task_title(nodes: Sequence[str], width: int) -> str:
    if len(nodes) == 1:
        return short_label(nodes[0], width)
    prefix = _common_prefix(nodes)
    if prefix:
        return short_label(prefix + ".*", width)
    return short_label(f"{nodes[0]}..{nodes[-1]}", width)


def _kind(fn: Any) -> str:
    """A few characters saying what a node computes: module type, merge op or function."""
    describe = getattr(fn, "describe", None)
    if callable(describe):  # a merge op: stack(dim=1)
        return str(describe())
    graph = getattr(fn, "graph", None)
    if graph is not None and hasattr(graph, "nodes") and hasattr(fn, "get_submodule"):
        ops = []  # a traced partition (torch.fx.GraphModule): name its calls
        for n in graph.nodes:
            if n.op == "call_module":
                ops.append(type(fn.get_submodule(n.target)).__name__)
            elif n.op in ("call_function", "call_method"):
                ops.append(getattr(n.target, "__name__", str(n.target)))
        return "+".join(dict.fromkeys(ops)) or "fx"
    children = list(fn.children()) if hasattr(fn, "children") else []
    if type(fn).__name__ == "Sequential" and children:
        return "+".join(dict.fromkeys(type(c).__name__ for c in children))
    if hasattr(fn, "parameters") and hasattr(fn, "forward"):
        return type(fn).__name__
    return getattr(fn, "__name__", type(fn).__name__).strip("<>")


def _compact(title: str, width: int) -> str:
    """Fit a dotted name in ``width`` characters, dropping leading components first."""
    parts = title.split(".")
    while len(".".join(parts)) > width and len(parts) > 2:
        parts.pop(0)
    return short_label(".".join(parts), width)


# -- the plan ---------------------------------------------------------------------------------
def _plan_layout(plan: Plan) -> tuple[list[list[str]], dict[str, float]]:
    """Rows (inputs, then levels) and an x position per task or input, barycentre-ordered."""
    inputs = [i for i in plan.graph.inputs if plan.consumers.get(i)]
    rows = [inputs, *[list(level) for level in plan.levels]] if inputs else []
    if not inputs:
        rows = [list(level) for level in plan.levels]
    x: dict[str, float] = {}
    for i, name in enumerate(rows[0] if rows else []):
        x[name] = i - (len(rows[0]) - 1) / 2
    for row in rows[1:]:
        order = {t: k for k, t in enumerate(row)}

        def centre(t: str, order: dict[str, int] = order) -> tuple[float, int]:
            task = plan.tasks[t]
            sources = [d for d in task.deps if d in x] + [v for v in task.inputs if v in x]
            mean = sum(x[s] for s in sources) / len(sources) if sources else 0.0
            return mean, order[t]

        row.sort(key=centre)
        wanted = [centre(t)[0] for t in row]
        # Spread around the wanted centres, one unit apart: keeps columns under their parents.
        shift = sum(wanted) / len(row) - (len(row) - 1) / 2 if row else 0.0
        for k, t in enumerate(row):
            x[t] = k + shift
    return rows, x


def draw_plan(
    plan: Plan,
    path: str | os.PathLike[str] | None = None,
    *,
    max_node_lines: int = 3,
    label_chars: int = 24,
    title: str | None = None,
    dpi: float = 100,
) -> Figure:
    """Draw a plan level by level: tasks boxed with their nodes, the critical path in red.

    Parameters
    ----------
    plan : Plan
    path : str or path-like, optional
        Also write the figure there; the suffix picks the format (``.png``, ``.svg``, ...).
    max_node_lines : int
        At most this many node boxes inside a fused task, then "+k more".
    label_chars : int
        Names longer than this are shortened in the middle.
    title : str, optional
        Defaults to the plan's name, size, work, span and Amdahl bound.
    dpi : float
        Resolution of raster files.

    Returns
    -------
    matplotlib.figure.Figure
        One row per level (graph inputs on top). Red: critical path. Dashed: tasks run
        inline on the scheduling thread (too cheap to dispatch).

    Raises
    ------
    ImportError
        If matplotlib is not installed.

    Examples
    --------
    >>> import torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("diamond")
    >>> x = g.input("x")
    >>> g.output(g.node("sum", gx.add(), g.node("a", nn.Linear(4, 4), x),
    ...                 g.node("b", nn.Linear(4, 4), x)))
    >>> fig = draw_plan(gx.plan(g))
    >>> fig.axes[0].get_title(loc="left")[:15]
    "Plan 'diamond':"
    """
    _, new_figure = _matplotlib()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    rows, xs = _plan_layout(plan)
    has_inputs = bool(rows) and bool(rows[0]) and rows[0][0] not in plan.tasks
    critical = set(plan.critical_path)
    crit_edges = set(zip(plan.critical_path, plan.critical_path[1:], strict=False))

    def lines_of(name: str) -> int:
        if name not in plan.tasks:
            return 1
        n = len(plan.tasks[name].nodes)
        inner = 0 if n == 1 else min(n, max_node_lines) + (n > max_node_lines)
        return 2 + inner

    line_h, gap = 0.34, 0.75
    heights = [max((lines_of(t) for t in row), default=1) * line_h + 0.2 for row in rows]
    tops, y = [], 0.0
    for h in heights:
        tops.append(y)
        y -= h + gap
    total_h = -y
    width = max((len(r) for r in rows), default=1)
    xmin = min(xs.values(), default=0.0) - 0.6
    xmax = max(xs.values(), default=0.0) + 0.6
    box_w = 0.86
    fig_w = min(max(7.0, (xmax - xmin) * 1.9 + 1.6), 40.0)
    fig_h = min(max(3.0, total_h * 0.62 + 1.2), 80.0)
    fig = new_figure(fig_w, fig_h)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_xlim(xmin - 0.5, xmax + 0.1)
    ax.set_ylim(-total_h, 0.35)
    font = 8 if width <= 6 else 7

    box: dict[str, tuple[float, float, float]] = {}  # name -> (x centre, top, bottom)
    for r, row in enumerate(rows):
        for name in row:
            h = lines_of(name) * line_h
            box[name] = (xs[name], tops[r], tops[r] - h)
    for r, row in enumerate(rows):
        is_input_row = has_inputs and r == 0
        label = "inputs" if is_input_row else f"level {r - has_inputs}"
        if not is_input_row:
            cost = sum(plan.tasks[t].cost for t in row)
            label += f"\n{format_seconds(cost)}"
        ax.text(xmin - 0.45, tops[r] - line_h, label, fontsize=font, color="#555555", va="top")

    for name, task in plan.tasks.items():  # edges first, under the boxes
        sources = list(task.deps) + [v for v in task.inputs if v in box and v not in plan.tasks]
        for src in sources:
            sx, _, sb = box[src]
            tx, tt, _ = box[name]
            hot = (src, name) in crit_edges
            ax.add_patch(
                FancyArrowPatch(
                    (sx, sb),
                    (tx, tt),
                    arrowstyle="-|>",
                    mutation_scale=9,
                    color=_CRITICAL if hot else _EDGE,
                    lw=2.0 if hot else 0.8,
                    alpha=1.0 if hot else 0.6,
                    shrinkA=1,
                    shrinkB=1,
                    zorder=1 + hot,
                )
            )
    for name, (cx, top, bottom) in box.items():
        if name in plan.tasks:
            _draw_task(
                ax,
                plan,
                name,
                cx,
                top,
                bottom,
                box_w,
                line_h,
                font,
                name in critical,
                max_node_lines,
                label_chars,
            )
        else:
            ax.add_patch(
                FancyBboxPatch(
                    (cx - box_w / 2, bottom),
                    box_w,
                    top - bottom,
                    boxstyle="round,pad=0,rounding_size=0.15",
                    fc="#eeeeee",
                    ec="#555555",
                    zorder=3,
                )
            )
            ax.text(
                cx,
                (top + bottom) / 2,
                short_label(name, label_chars),
                ha="center",
                va="center",
                fontsize=font,
                style="italic",
                zorder=4,
            )
    n_nodes = sum(len(t.nodes) for t in plan.tasks.values())
    how = "measured" if plan.measured else "estimated"
    ax.set_title(
        title
        or f"Plan '{plan.graph.name}': {n_nodes} nodes in {len(plan.tasks)} tasks, "
        f"{len(plan.levels)} levels\nwork {format_seconds(plan.work)}, "
        f"span {format_seconds(plan.span)}, "
        f"Amdahl bound {plan.amdahl:.2f}x (costs {how})",
        fontsize=10,
        loc="left",
    )
    ax.legend(
        handles=[
            Patch(fc=_CRIT_FILL, ec=_CRITICAL, lw=2, label="critical path"),
            Patch(fc=_TASK_FILL, ec="#1f4e79", label="task (one dispatch)"),
            Patch(fc="white", ec="#1f4e79", lw=0.6, label="node of a fused task"),
            Patch(fc="white", ec=_EDGE, ls="--", label="inline (too cheap to dispatch)"),
        ],
        loc="upper center",
        fontsize=7,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
        ncol=4,
    )
    _save(fig, path, dpi)
    return fig


def _draw_task(
    ax: Axes,
    plan: Plan,
    name: str,
    cx: float,
    top: float,
    bottom: float,
    box_w: float,
    line_h: float,
    font: float,
    hot: bool,
    max_node_lines: int,
    label_chars: int,
) -> None:
    from matplotlib.patches import FancyBboxPatch

    task = plan.tasks[name]
    ax.add_patch(
        FancyBboxPatch(
            (cx - box_w / 2, bottom),
            box_w,
            top - bottom,
            boxstyle="round,pad=0,rounding_size=0.08",
            fc=_CRIT_FILL if hot else ("white" if task.inline else _TASK_FILL),
            ec=_CRITICAL if hot else (_EDGE if task.inline else "#1f4e79"),
            lw=2.0 if hot else 0.9,
            ls="--" if task.inline else "-",
            zorder=3,
        )
    )
    ax.text(
        cx,
        top - 0.5 * line_h,
        _task_title(task.nodes, label_chars),
        ha="center",
        va="center",
        fontsize=font,
        weight="bold",
        zorder=4,
    )
    if len(task.nodes) > 1:
        info = f"{format_seconds(task.cost)} · {len(task.nodes)} nodes"
    else:
        kind = short_label(_kind(plan.graph.nodes[task.nodes[0]].fn), 14)
        info = f"{kind} · {format_seconds(task.cost)}"
    ax.text(
        cx,
        top - 1.5 * line_h,
        info,
        ha="center",
        va="center",
        fontsize=font - 1,
        color="#333333",
        zorder=4,
    )
    if len(task.nodes) == 1:
        return
    prefix = _common_prefix(task.nodes)
    shown = list(task.nodes[:max_node_lines])
    for k, node in enumerate(shown):
        y = top - (2 + k) * line_h
        ax.add_patch(
            FancyBboxPatch(
                (cx - box_w / 2 + 0.06, y - line_h + 0.04),
                box_w - 0.12,
                line_h - 0.08,
                boxstyle="round,pad=0,rounding_size=0.04",
                fc="white",
                ec="#1f4e79",
                lw=0.5,
                zorder=4,
            )
        )
        name_part = short_label("." + node[len(prefix) + 1 :] if prefix else node, 12)
        text = short_label(f"{name_part} {_kind(plan.graph.nodes[node].fn)}", 19)
        cost = plan.node_costs.get(node, 0.0)
        ax.text(
            cx,
            y - line_h / 2,
            f"{text}  {format_seconds(cost)}",
            ha="center",
            va="center",
            fontsize=font - 1.5,
            zorder=5,
        )
    if len(task.nodes) > max_node_lines:
        y = top - (2 + len(shown)) * line_h
        ax.text(
            cx,
            y - line_h / 2,
            f"+{len(task.nodes) - len(shown)} more nodes",
            ha="center",
            va="center",
            fontsize=font - 1.5,
            style="italic",
            zorder=5,
        )


def plan_to_dot(plan: Plan) -> str:
    """Graphviz DOT text of a plan: one cluster per task, the critical path in red.

    No Graphviz binary is needed to make the text; render it with ``dot -Tsvg`` or any
    online viewer.

    Parameters
    ----------
    plan : Plan

    Returns
    -------
    str
        A ``digraph`` with graph inputs as ellipses, nodes as boxes grouped in a
        ``cluster`` per task (labelled with task name, level and cost) and one edge per data
        or ordering dependency.

    Examples
    --------
    >>> import torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("chain")
    >>> x = g.input("x")
    >>> g.output(g.node("b", nn.ReLU(), g.node("a", nn.Linear(4, 4), x)))
    >>> dot = plan_to_dot(gx.plan(g))
    >>> dot.splitlines()[0]
    'digraph "chain" {'
    >>> '"x" -> "a"' in dot
    True
    """
    critical = set(plan.critical_path)
    lines = [
        f"digraph {_q(plan.graph.name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fillcolor="#e8f1fa", fontname="Helvetica",'
        " fontsize=10];",
        '  edge [color="#7f7f7f"];',
    ]
    for name in plan.graph.inputs:
        lines.append(f'  {_q(name)} [shape=ellipse, fillcolor="#eeeeee"];')
    for i, (name, task) in enumerate(plan.tasks.items()):
        hot = name in critical
        label = f"{name}\\nlevel {task.level}, {format_seconds(task.cost)}" + (
            ", inline" if task.inline else ""
        )
        lines.append(f"  subgraph cluster_{i} {{")
        lines.append(
            f"    label={_q(label)}; style={'dashed' if task.inline else 'rounded'}; "
            f'color="{_CRITICAL if hot else "#1f4e79"}"; penwidth={2 if hot else 1};'
        )
        for node in task.nodes:
            cost = plan.node_costs.get(node, 0.0)
            node_label = _q(node + "\\n" + format_seconds(cost))
            lines.append(f"    {_q(node)} [label={node_label}];")
        lines.append("  }")
    live = {n for t in plan.tasks.values() for n in t.nodes} | set(plan.graph.inputs)
    crit_nodes = {n for t in plan.critical_path for n in plan.tasks[t].nodes}
    for u, v in plan.graph.nx.edges:
        if u in live and v in live:
            hot = u in crit_nodes and v in crit_nodes
            style = f' [color="{_CRITICAL}", penwidth=2]' if hot else ""
            lines.append(f"  {_q(u)} -> {_q(v)}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\\\\n", "\\n") + '"'


# -- the run ----------------------------------------------------------------------------------
def _lane_label(lane: str) -> str:
    if lane == "MainThread":
        return "caller thread"
    if lane.startswith("graphexec_"):
        return "pool thread " + lane.removeprefix("graphexec_")
    return lane.removeprefix("tcp://")


def _draw_lanes(ax: Axes, trace: Trace, label_chars: int, xlim_ms: float | None = None) -> None:
    """Bars of one trace on ``ax``: lanes top to bottom, ms from the run's start."""
    from matplotlib.patches import Rectangle

    lanes = list(trace.lanes)
    row = {lane: i for i, lane in enumerate(lanes)}
    _, path = trace.measured_span()
    on_path = set(path)
    wall_ms = max(trace.wall * 1e3, 1e-6)
    for i in range(len(lanes)):  # idle shows as the grey between bars
        ax.add_patch(Rectangle((0, i - 0.4), wall_ms, 0.8, fc="#efefef", ec="none", zorder=0))
    xmax = wall_ms if xlim_ms is None else xlim_ms
    axis_in = ax.get_position().width * ax.get_figure().get_figwidth()
    ms_per_char = xmax / max(axis_in * 72 / 5.5, 1)  # ~5.5 pt per 7 pt character
    for e in trace.events:
        x0, w = (e.start - trace.start) * 1e3, e.duration * 1e3
        hot = e.task in on_path
        ax.add_patch(
            Rectangle(
                (x0, row[e.lane] - 0.35),
                w,
                0.7,
                fc=_LEVEL_COLOURS[e.level % len(_LEVEL_COLOURS)],
                ec=_CRITICAL if hot else "#333333",
                lw=2.0 if hot else 0.5,
                zorder=2 + hot,
            )
        )
        fits = int(w / ms_per_char) - 1
        if fits >= 3:
            text = _task_title(e.nodes, label_chars) if e.nodes else e.task
            ax.text(
                x0 + w / 2,
                row[e.lane],
                _compact(text, min(fits, label_chars)),
                ha="center",
                va="center",
                fontsize=7,
                zorder=4,
                clip_on=True,
            )
    by_name = {e.task: e for e in trace.events}
    hops = [by_name[t] for t in path if t in by_name]
    for a, b in zip(hops, hops[1:], strict=False):  # the measured critical path, hop by hop
        ax.annotate(
            "",
            xy=((b.start - trace.start) * 1e3, row[b.lane]),
            xytext=((a.end - trace.start) * 1e3, row[a.lane]),
            arrowprops={"arrowstyle": "->", "color": _CRITICAL, "lw": 1.2},
            zorder=5,
        )
    busy = trace.lane_busy()
    ax.set_yticks(
        range(len(lanes)),
        [
            f"{_lane_label(lane)}\n{busy[lane] / trace.wall:.0%} busy" if trace.wall else lane
            for lane in lanes
        ],
        fontsize=7,
    )
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlim(0, (xlim_ms or wall_ms) * 1.01)
    ax.grid(axis="x", color="#dddddd", lw=0.5)
    ax.set_axisbelow(True)


def _trace_numbers(trace: Trace) -> tuple[float, float]:
    """(measured Amdahl bound, idle share of lanes x wall)."""
    span, _ = trace.measured_span()
    bound = trace.busy / span if span > 0 else 1.0
    capacity = trace.wall * max(len(trace.lanes), 1)
    return bound, (1 - trace.busy / capacity if capacity > 0 else 0.0)


def gantt(
    trace: Trace,
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    label_chars: int = 22,
    width: float = 11.0,
    dpi: float = 100,
) -> Figure:
    """Draw a run as lanes x time: one bar per task, coloured by level, critical path in red.

    Parameters
    ----------
    trace : Trace
    path : str or path-like, optional
        Also write the figure there (format by suffix).
    title : str, optional
        Defaults to graph, executor, schedule, wall, speedup, bound and idle share.
    label_chars : int
        Longest bar label; labels are cut further to fit their bar or left out.
    width : float
        Figure width in inches (height grows with the number of lanes).
    dpi : float

    Returns
    -------
    matplotlib.figure.Figure
        Grey lane backgrounds show idle time; red outlines and arrows are the measured
        critical path (the costliest dependency chain through the measured task times).

    Raises
    ------
    ImportError
        If matplotlib is not installed.

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("pair")
    >>> x = g.input("x")
    >>> g.output(g.node("sum", gx.add(), g.node("a", nn.Linear(4, 4), x),
    ...                 g.node("b", nn.Linear(4, 4), x)))
    >>> _, trace = gx.ThreadExecutor().run(gx.plan(g), torch.randn(2, 4), profile=True)
    >>> len(gantt(trace).axes[0].patches) >= len(trace.events)
    True
    """
    _, new_figure = _matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = new_figure(width, 1.6 + 0.55 * max(len(trace.lanes), 1))
    ax = fig.add_subplot()
    _draw_lanes(ax, trace, label_chars)
    bound, idle = _trace_numbers(trace)
    ax.set_xlabel("ms since the run started")
    ax.set_title(
        title
        or f"{trace.plan.graph.name} on {trace.executor} ({trace.schedule}): "
        f"wall {format_seconds(trace.wall)}, {len(trace.events)} tasks\n"
        f"speedup {trace.speedup:.2f}x over the task sum (bound {bound:.2f}x), "
        f"idle {idle:.0%}",
        fontsize=9,
        loc="left",
    )
    levels = sorted({e.level for e in trace.events})
    handles: list[Any] = [
        Patch(fc=_LEVEL_COLOURS[lv % len(_LEVEL_COLOURS)], ec="#333333", label=f"level {lv}")
        for lv in levels[: len(_LEVEL_COLOURS)]
    ]
    handles.append(Line2D([], [], color=_CRITICAL, lw=2, label="critical path"))
    handles.append(Patch(fc="#efefef", label="idle"))
    ax.legend(
        handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
    _save(fig, path, dpi)
    return fig


def compare(
    traces: Mapping[str, Trace],
    path: str | os.PathLike[str] | None = None,
    *,
    baseline: str | None = None,
    width: float = 12.0,
    dpi: float = 100,
) -> Figure:
    """The same graph on several executors: one Gantt row each on one time axis, and speedups.

    Parameters
    ----------
    traces : mapping of label to Trace
        In display order, e.g. ``{"sequential": t1, "threads": t2, "dask": t3}``.
    path : str or path-like, optional
        Also write the figure there (format by suffix).
    baseline : str, optional
        The label speedups are relative to (default: the first).
    width : float
        Figure width in inches.
    dpi : float

    Returns
    -------
    matplotlib.figure.Figure
        Left: the runs as Gantt charts sharing one time axis (so shorter is faster at a
        glance). Right: wall time per run, annotated with the speedup over ``baseline``.

    Raises
    ------
    ValueError
        If ``traces`` is empty or ``baseline`` is not one of its labels.
    ImportError
        If matplotlib is not installed.
    """
    if not traces:
        raise ValueError("compare() needs at least one trace")
    labels = list(traces)
    base = baseline or labels[0]
    if base not in traces:
        raise ValueError(f"baseline {base!r} is not one of {labels}")
    _, new_figure = _matplotlib()
    heights = [max(len(t.lanes), 1) + 0.9 for t in traces.values()]
    fig = new_figure(width, 1.0 + 0.5 * sum(heights))
    grid = fig.add_gridspec(
        len(labels), 2, width_ratios=(4, 1), height_ratios=heights, hspace=0.9, wspace=0.35
    )
    longest = max(t.wall for t in traces.values()) * 1e3
    first = None
    for i, (label, trace) in enumerate(traces.items()):
        ax = fig.add_subplot(grid[i, 0], sharex=first)
        first = first or ax
        _draw_lanes(ax, trace, 18, longest)
        ratio = traces[base].wall / trace.wall if trace.wall else 0.0
        ax.set_title(
            f"{label}: wall {format_seconds(trace.wall)}, {ratio:.2f}x vs {base}",
            fontsize=9,
            loc="left",
        )
    ax.set_xlabel("ms since the run started")
    bars = fig.add_subplot(grid[:, 1])
    walls = [traces[k].wall * 1e3 for k in labels]
    colours = ["#1f77b4" if k != base else "#7f7f7f" for k in labels]
    bars.barh(range(len(labels)), walls, color=colours)
    bars.set_yticks(range(len(labels)), labels, fontsize=8)
    bars.set_ylim(len(labels) - 0.5, -0.5)
    for i, k in enumerate(labels):
        ratio = traces[base].wall / traces[k].wall if traces[k].wall else 0.0
        bars.text(walls[i], i, f" {ratio:.2f}x", va="center", fontsize=8)
    bars.set_xlim(0, max(walls) * 1.35)
    bars.set_xlabel("wall ms (one run)")
    bars.set_title(f"speedup vs {base}", fontsize=9)
    fig.suptitle(
        f"{traces[labels[0]].plan.graph.name}: the same plan on {len(labels)} executors",
        fontsize=10,
        x=0.02,
        ha="left",
    )
    _save(fig, path, dpi)
    return fig


def to_chrome(trace: Trace, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The trace as Chrome Trace Event JSON (Perfetto, chrome://tracing).

    Parameters
    ----------
    trace : Trace
    path : str or path-like, optional
        Also write the JSON there.

    Returns
    -------
    dict
        ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``: one complete
        (``"ph": "X"``) event per task with ``ts`` and ``dur`` in microseconds from the run's
        start, ``pid`` 1 and one ``tid`` per lane, named by ``thread_name`` metadata events.
        ``args`` hold the task's nodes, level and whether it is on the measured critical path.

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("one")
    >>> g.output(g.node("a", nn.Linear(4, 4), g.input("x")))
    >>> _, trace = gx.SequentialExecutor().run(gx.plan(g), torch.randn(2, 4), profile=True)
    >>> doc = to_chrome(trace)
    >>> [e["ph"] for e in doc["traceEvents"]]
    ['M', 'M', 'X']
    """
    _, path_tasks = trace.measured_span()
    on_path = set(path_tasks)
    tid = {lane: i + 1 for i, lane in enumerate(trace.lanes)}
    label = f"{trace.plan.graph.name} on {trace.executor} ({trace.schedule})"
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": label}}
    ]
    for lane, t in tid.items():
        events.append(
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": t, "args": {"name": lane}}
        )
    for e in trace.events:
        events.append(
            {
                "name": e.task,
                "cat": f"level {e.level}",
                "ph": "X",
                "ts": round((e.start - trace.start) * 1e6, 3),
                "dur": round(e.duration * 1e6, 3),
                "pid": 1,
                "tid": tid[e.lane],
                "args": {"nodes": list(e.nodes), "level": e.level, "critical": e.task in on_path},
            }
        )
    doc = {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "graph": trace.plan.graph.name,
            "executor": trace.executor,
            "schedule": trace.schedule,
            "wall_us": round(trace.wall * 1e6, 3),
            "busy_us": round(trace.busy * 1e6, 3),
            "speedup": round(trace.speedup, 4),
        },
    }
    if path is not None:
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    return doc
