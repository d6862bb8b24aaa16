"""The plan picture: `draw_plan`, one row per level, one box per task.

* **Drawn by task, not by node.** One row per depth level, top to bottom (graph inputs above
  level 0). A task is a box with its (shortened) name and cost; the nodes of a fused task are
  small boxes inside it, at most ``max_node_lines`` of them and a "+k more" line. This is
  what keeps a 200-node traced CNN readable: it has some 60 tasks of at most a few lines each.
* **Barycentre order inside a row.** Tasks are ordered by the mean position of their
  dependencies (one sweep, top to bottom), then spread one unit apart around those centres.
  That keeps branches in columns and edges short; ties keep the plan's (sorted) level order,
  so the picture is reproducible.
* **Critical path in red**: the plan's estimated one, boxes and the edges between them.
  Dashed boxes are tasks run inline on the scheduling thread (too cheap to dispatch).

Call tree::

    draw_plan -> _measure (-> _plan_layout, _lines_of)
              -> _draw_row_labels, _draw_edges
              -> _draw_task (-> _draw_node_lines) or _draw_input per box
              -> _plan_title, _draw_legend
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..units import compact_name, fit_name, format_seconds, input_name
from ._style import (
    CRIT_FILL,
    CRITICAL,
    EDGE,
    INPUT_FILL,
    TASK_FILL,
    TASK_LINE,
    common_prefix,
    load_matplotlib,
    px_width,
    save,
    text_fits,
    text_width,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..plans import Plan, Task

__all__ = ["draw_plan"]

# Data units: one column per unit; a box is this wide, a text line this tall, rows this apart.
_BOX_W = 0.86
_LINE_H = 0.34
_ROW_GAP = 0.75
_PAD_PX = 12  # keeps text clear of its box's outline
_MAX_WIDEN = 1.8  # how much wider than ~1.9 inches a column may grow to show whole names


@dataclass(frozen=True)
class _Sheet:
    """Where everything of one plan picture goes, worked out before anything is drawn."""

    rows: list[list[str]]  # inputs (if any reach a task), then one row per level
    boxes: dict[str, tuple[float, float, float]]  # task or input -> (x centre, top, bottom)
    tops: list[float]  # y of each row's top
    has_inputs: bool
    xmin: float
    xmax: float
    height: float
    font: float
    max_node_lines: int
    label_chars: int | None

    @property
    def figsize(self) -> tuple[float, float]:
        """Inches: ~1.9 per column and ~0.6 per unit of height, within 40 x 80."""
        width = min(max(7.0, (self.xmax - self.xmin) * 1.9 + 1.6), 40.0)
        return width, min(max(3.0, self.height * 0.62 + 1.2), 80.0)


def _kind(fn: Any) -> str:
    """A few characters saying what a node computes: module type (a traced piece's class is
    named after the ops it holds, `graphexec.fx_partition`), merge op or function."""
    describe = getattr(fn, "describe", None)
    if callable(describe):  # a merge op: stack(dim=1)
        return str(describe())
    children = list(fn.children()) if hasattr(fn, "children") else []
    if type(fn).__name__ == "Sequential" and children:
        return _sequence_kind([type(c).__name__ for c in children])
    if hasattr(fn, "parameters") and hasattr(fn, "forward"):
        return type(fn).__name__
    return getattr(fn, "__name__", type(fn).__name__).strip("<>")


def _sequence_kind(names: list[str], most: int = 4) -> str:
    """A `Sequential`'s layers in order, each one written (``Linear+ReLU+Linear``), a run of
    one type counted (``Linear×2``), beyond ``most`` parts the count of the rest.

    >>> _sequence_kind(["Linear", "ReLU", "Linear"]), _sequence_kind(["Linear", "Linear"])
    ('Linear+ReLU+Linear', 'Linear×2')
    >>> _sequence_kind(["Conv2d", "ReLU"] * 4)
    'Conv2d+ReLU+Conv2d+5 more'
    """
    parts: list[list] = []
    for name in names:
        if parts and parts[-1][0] == name:
            parts[-1][1] += 1
        else:
            parts.append([name, 1])
    words = [name if n == 1 else f"{name}×{n}" for name, n in parts]
    if len(words) > most:
        words = [*words[: most - 1], f"{len(words) - most + 1} more"]
    return "+".join(words)


# -- layout -----------------------------------------------------------------------------------
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


def _lines_of(plan: Plan, name: str, max_node_lines: int) -> int:
    """Text lines in a box: 1 for an input; title, info and the node lines for a task."""
    if name not in plan.tasks:
        return 1
    n = len(plan.tasks[name].nodes)
    inner = 0 if n == 1 else min(n, max_node_lines) + (n > max_node_lines)
    return 2 + inner


def _measure(plan: Plan, max_node_lines: int, label_chars: int | None) -> _Sheet:
    """Lay the plan out: each row as tall as its tallest box, boxes hung from the row's top."""
    rows, xs = _plan_layout(plan)
    lines = {name: _lines_of(plan, name, max_node_lines) for row in rows for name in row}
    tops, y = [], 0.0
    for row in rows:
        tops.append(y)
        y -= max((lines[t] for t in row), default=1) * _LINE_H + 0.2 + _ROW_GAP
    boxes = {
        name: (xs[name], tops[r], tops[r] - lines[name] * _LINE_H)
        for r, row in enumerate(rows)
        for name in row
    }
    return _Sheet(
        rows=rows,
        boxes=boxes,
        tops=tops,
        has_inputs=bool(rows) and bool(rows[0]) and rows[0][0] not in plan.tasks,
        xmin=min(xs.values(), default=0.0) - 0.6,
        xmax=max(xs.values(), default=0.0) + 0.6,
        height=-y,
        font=8 if max((len(r) for r in rows), default=1) <= 6 else 7,
        max_node_lines=max_node_lines,
        label_chars=label_chars,
    )


# -- drawing ----------------------------------------------------------------------------------
def draw_plan(
    plan: Plan,
    path: str | os.PathLike[str] | None = None,
    *,
    max_node_lines: int = 3,
    label_chars: int | None = None,
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
    label_chars : int, optional
        At most this many characters per name. Without it a name is shortened only as far
        as its box's measured width requires (`graphexec.units.fit_name`).
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
    _, new_figure = load_matplotlib()
    sheet = _measure(plan, max_node_lines, label_chars)
    fig = new_figure(*sheet.figsize)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_xlim(sheet.xmin - 0.5, sheet.xmax + 0.1)
    ax.set_ylim(-sheet.height, 0.35)
    _widen_for_names(ax, plan, sheet)
    _draw_row_labels(ax, plan, sheet)
    _draw_edges(ax, plan, sheet)  # first, so the boxes cover their ends
    for name in sheet.boxes:
        if name in plan.tasks:
            _draw_task(ax, plan, name, sheet)
        else:
            _draw_input(ax, name, sheet)
    ax.set_title(title or _plan_title(plan), fontsize=10, loc="left")
    _draw_legend(ax)
    save(fig, path, dpi)
    return fig


def _widen_for_names(ax: Axes, plan: Plan, sheet: _Sheet) -> None:
    """Widen the figure so that every task's title (its name, a range's shared path written
    once) and node line fits its box, up to `_MAX_WIDEN` times and 40 inches: only names
    longer still are cut."""
    fig = ax.figure
    bold = text_width(fig, size=sheet.font, weight="bold")
    small = text_width(fig, size=sheet.font - 1.5)
    titles = [bold(compact_name(name)) for name in plan.tasks]
    lines = [small(_node_line(plan, task, node)[0] + _node_line(plan, task, node)[1])
             for task in plan.tasks.values() if len(task.nodes) > 1
             for node in task.nodes[: sheet.max_node_lines]]  # fmt: skip
    needed = max([*titles, *lines], default=0.0) + _PAD_PX
    have = px_width(ax, 0, _BOX_W - 0.12)
    if needed > have:
        width, height = fig.get_size_inches()
        grow = min((needed + 1) / have, _MAX_WIDEN)  # +1 px: rounding must not cut a name
        fig.set_size_inches(min(width * grow, 40.0), height)


def _plan_title(plan: Plan) -> str:
    """The first lines of ``print(plan)``: size, then work, span and what bounds the speedup."""
    return f"{plan.headline()}\n{plan.totals()}"


def _draw_legend(ax: Axes) -> None:
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(fc=CRIT_FILL, ec=CRITICAL, lw=2, label="critical path"),
            Patch(fc=TASK_FILL, ec=TASK_LINE, label="task (one dispatch)"),
            Patch(fc="white", ec=TASK_LINE, lw=0.6, label="node of a fused task"),
            Patch(fc="white", ec=EDGE, ls="--", label="inline (too cheap to dispatch)"),
        ],
        loc="upper center",
        fontsize=7,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
        ncol=4,
    )


def _draw_row_labels(ax: Axes, plan: Plan, sheet: _Sheet) -> None:
    """'inputs', or 'level k' and the level's work (summed task costs), left of each row."""
    for r, row in enumerate(sheet.rows):
        is_input_row = sheet.has_inputs and r == 0
        label = "inputs" if is_input_row else f"level {r - sheet.has_inputs}"
        if not is_input_row:  # a sum of task costs, not a duration: "work", as in print(plan)
            cost = sum(plan.tasks[t].cost for t in row)
            label += f"\nwork {format_seconds(cost)}"
        y = sheet.tops[r] - _LINE_H
        ax.text(sheet.xmin - 0.45, y, label, fontsize=sheet.font, color="#555555", va="top")


def _draw_edges(ax: Axes, plan: Plan, sheet: _Sheet) -> None:
    """One arrow per dependency or graph input read, from the bottom of one box to the top
    of the next; thick red along the critical path."""
    from matplotlib.patches import FancyArrowPatch

    crit_edges = set(zip(plan.critical_path, plan.critical_path[1:], strict=False))
    boxes = sheet.boxes
    for name, task in plan.tasks.items():
        read = [v for v in task.inputs if v in boxes and v not in plan.tasks]
        for src in [*task.deps, *read]:
            sx, _, sb = boxes[src]
            tx, tt, _ = boxes[name]
            hot = (src, name) in crit_edges
            arrow = FancyArrowPatch(
                (sx, sb),
                (tx, tt),
                arrowstyle="-|>",
                mutation_scale=9,
                color=CRITICAL if hot else EDGE,
                lw=2.0 if hot else 0.8,
                alpha=1.0 if hot else 0.6,
                shrinkA=1,
                shrinkB=1,
                zorder=1 + hot,
            )
            ax.add_patch(arrow)


def _add_box(
    ax: Axes, left: float, bottom: float, width: float, height: float, rounding: float, **style: Any
) -> None:
    from matplotlib.patches import FancyBboxPatch

    boxstyle = f"round,pad=0,rounding_size={rounding}"
    ax.add_patch(FancyBboxPatch((left, bottom), width, height, boxstyle=boxstyle, **style))


def _centred_text(ax: Axes, x: float, y: float, text: str, **style: Any) -> None:
    ax.text(x, y, text, ha="center", va="center", **style)


def _draw_input(ax: Axes, name: str, sheet: _Sheet) -> None:
    cx, top, bottom = sheet.boxes[name]
    left, height = cx - _BOX_W / 2, top - bottom
    _add_box(ax, left, bottom, _BOX_W, height, 0.15, fc=INPUT_FILL, ec="#555555", zorder=3)
    font = {"size": sheet.font, "style": "italic"}
    label = _fit(ax, input_name(name), _BOX_W, sheet, font) or ""
    _centred_text(ax, cx, (top + bottom) / 2, label, fontsize=sheet.font, style="italic", zorder=4)


def _draw_task(ax: Axes, plan: Plan, name: str, sheet: _Sheet) -> None:
    """A task's box (red on the critical path, dashed if inline), title and info line, and
    for a fused task the boxes of its nodes."""
    task = plan.tasks[name]
    cx, top, bottom = sheet.boxes[name]
    hot = name in plan.critical_path
    _add_box(
        ax,
        cx - _BOX_W / 2,
        bottom,
        _BOX_W,
        top - bottom,
        0.08,
        fc=CRIT_FILL if hot else ("white" if task.inline else TASK_FILL),
        ec=CRITICAL if hot else (EDGE if task.inline else TASK_LINE),
        lw=2.0 if hot else 0.9,
        ls="--" if task.inline else "-",
        zorder=3,
    )
    bold = {"size": sheet.font, "weight": "bold"}
    title = _fit(ax, name, _BOX_W, sheet, bold) or ""
    _centred_text(ax, cx, top - 0.5 * _LINE_H, title, fontsize=sheet.font, weight="bold", zorder=4)
    small = {"size": sheet.font - 1}
    info = _fit_before(ax, *_task_info(plan, task), _BOX_W, small)
    _centred_text(ax, cx, top - 1.5 * _LINE_H, info, fontsize=small["size"], color="#333333",
                  zorder=4)  # fmt: skip
    if len(task.nodes) > 1:
        _draw_node_lines(ax, plan, task, cx, top, sheet)


def _fit(ax: Axes, name: str, room: float, sheet: _Sheet, font: dict[str, Any]) -> str | None:
    """``name`` (or a shorter form of it) as it fits ``room`` data units, in ``font``."""
    fits = text_fits(ax.figure, px_width(ax, 0, room) - _PAD_PX, **font)
    cap = sheet.label_chars
    return fit_name(name, lambda text: (cap is None or len(text) <= cap) and fits(text))


def _fit_before(ax: Axes, text: str, tail: str, room: float, font: dict[str, Any]) -> str:
    """``text + tail`` in ``room`` data units: ``text`` is shortened, ``tail`` (a cost) kept."""
    fits = text_fits(ax.figure, px_width(ax, 0, room) - _PAD_PX, **font)
    head = fit_name(text, lambda form: fits(form + tail), min_chars=2)
    if head is not None:
        return head + tail
    return tail.lstrip(" ·") if fits(tail) else ""


def _task_info(plan: Plan, task: Task) -> tuple[str, str]:
    """The line under a task's title, as (what may be shortened, what may not): cost and
    node count, or a single node's kind and cost."""
    if len(task.nodes) > 1:
        return f"{len(task.nodes)} nodes", f" · {format_seconds(task.cost)}"
    return _kind(plan.graph.nodes[task.nodes[0]].fn), f" · {format_seconds(task.cost)}"


def _node_line(plan: Plan, task: Task, node: str) -> tuple[str, str]:
    """A node's line in its fused task's box, as (name past the common prefix and kind, which
    may be shortened; cost, which may not)."""
    prefix = common_prefix(task.nodes)
    name_part = "." + node[len(prefix) + 1 :] if prefix else node
    cost = format_seconds(plan.node_costs.get(node, 0.0))
    return f"{name_part} {_kind(plan.graph.nodes[node].fn)}", f"  {cost}"


def _draw_node_lines(
    ax: Axes, plan: Plan, task: Task, cx: float, top: float, sheet: _Sheet
) -> None:
    """Inside a fused task: one small box per node (name past the common prefix, kind, cost),
    at most ``max_node_lines`` of them, then "+k more nodes"."""
    shown = list(task.nodes[: sheet.max_node_lines])
    small = sheet.font - 1.5
    inner = _BOX_W - 0.12
    for k, node in enumerate(shown):
        y = top - (2 + k) * _LINE_H
        _add_box(
            ax,
            cx - inner / 2,
            y - _LINE_H + 0.04,
            inner,
            _LINE_H - 0.08,
            0.04,
            fc="white",
            ec=TASK_LINE,
            lw=0.5,
            zorder=4,
        )
        text, cost = _node_line(plan, task, node)
        line = _fit_before(ax, text, cost, inner, {"size": small})
        _centred_text(ax, cx, y - _LINE_H / 2, line, fontsize=small, zorder=5)
    if len(task.nodes) > sheet.max_node_lines:
        y = top - (2 + len(shown)) * _LINE_H
        more = f"+{len(task.nodes) - len(shown)} more nodes"
        _centred_text(ax, cx, y - _LINE_H / 2, more, fontsize=small, style="italic", zorder=5)
