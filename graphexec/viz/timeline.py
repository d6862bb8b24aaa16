"""Pictures of runs: `gantt` (one trace, lanes x time) and `compare` (several, one time axis).

* **Colours are levels**, so a glance shows whether a level's branches overlapped.
* **Idle time is visible**: each lane has a grey background, so idle time is the grey that
  shows between bars, and each lane's label says how busy it was.
* **Critical path in red**: the measured one (`Timeline.measured_span`, the costliest dependency
  chain through the measured task durations), as red outlines and arrows hop by hop.
* **Labels only where they fit**: a bar's label is cut to the characters its width holds
  at 7 pt, and left out under three.
* **compare shares one time axis**, so shorter is faster at a glance; a bar chart beside it
  gives wall times and speedups over a baseline. It takes a mapping label -> trace, or a
  sequence of traces labelled by their executor's name (``threads``, ``threads #2``, ...).

Call tree::

    gantt   -> _draw_lanes, _gantt_title, _draw_level_legend
    compare -> _labelled, _draw_runs (-> _draw_lanes per trace), _draw_speedups
    _draw_lanes -> _draw_bars, _draw_path_arrows, _label_lanes
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..units import format_seconds, lane_label
from ._style import _CRITICAL, _LEVEL_COLOURS, _compact, _matplotlib, _save, _task_title

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    from ..profile import TaskEvent, Timeline

__all__ = ["gantt", "compare"]

_IDLE = "#efefef"


# -- lanes ------------------------------------------------------------------------------------
def _draw_lanes(ax: Axes, trace: Timeline, label_chars: int, xlim_ms: float | None = None) -> None:
    """Bars of one trace on ``ax``: lanes top to bottom, ms from the run's start."""
    from matplotlib.patches import Rectangle

    row = {lane: i for i, lane in enumerate(trace.lanes)}
    _, path = trace.measured_span()
    wall_ms = max(trace.wall * 1e3, 1e-6)
    for i in range(len(row)):  # idle shows as the grey between bars
        ax.add_patch(Rectangle((0, i - 0.4), wall_ms, 0.8, fc=_IDLE, ec="none", zorder=0))
    xmax = wall_ms if xlim_ms is None else xlim_ms
    axis_in = ax.get_position().width * ax.get_figure().get_figwidth()
    ms_per_char = xmax / max(axis_in * 72 / 5.5, 1)  # ~5.5 pt per 7 pt character
    _draw_bars(ax, trace, row, set(path), label_chars, ms_per_char)
    _draw_path_arrows(ax, trace, row, path)
    _label_lanes(ax, trace)
    ax.set_xlim(0, (xlim_ms or wall_ms) * 1.01)
    ax.grid(axis="x", color="#dddddd", lw=0.5)
    ax.set_axisbelow(True)


def _draw_bars(
    ax: Axes,
    trace: Timeline,
    row: Mapping[str, int],
    on_path: set[str],
    label_chars: int,
    ms_per_char: float,
) -> None:
    """One bar per event, filled by level, outlined red on the path, labelled if it fits."""
    from matplotlib.patches import Rectangle

    for e in trace.events:
        x0, w = (e.start - trace.start) * 1e3, e.duration * 1e3
        hot = e.task in on_path
        bar = Rectangle(
            (x0, row[e.lane] - 0.35),
            w,
            0.7,
            fc=_LEVEL_COLOURS[e.level % len(_LEVEL_COLOURS)],
            ec=_CRITICAL if hot else "#333333",
            lw=2.0 if hot else 0.5,
            zorder=2 + hot,
        )
        ax.add_patch(bar)
        label = _bar_label(e, int(w / ms_per_char) - 1, label_chars)
        if label is not None:
            style = {"fontsize": 7, "zorder": 4, "clip_on": True}
            ax.text(x0 + w / 2, row[e.lane], label, ha="center", va="center", **style)


def _bar_label(event: TaskEvent, fits: int, label_chars: int) -> str | None:
    """The task's name cut to the ``fits`` characters its bar holds; None under three."""
    if fits < 3:
        return None
    text = _task_title(event.nodes, label_chars) if event.nodes else event.task
    return _compact(text, min(fits, label_chars))


def _draw_path_arrows(
    ax: Axes, trace: Timeline, row: Mapping[str, int], path: Sequence[str]
) -> None:
    """The measured critical path, hop by hop: from one task's end to the next one's start."""
    by_name = {e.task: e for e in trace.events}
    hops = [by_name[t] for t in path if t in by_name]
    for a, b in zip(hops, hops[1:], strict=False):
        ax.annotate(
            "",
            xy=((b.start - trace.start) * 1e3, row[b.lane]),
            xytext=((a.end - trace.start) * 1e3, row[a.lane]),
            arrowprops={"arrowstyle": "->", "color": _CRITICAL, "lw": 1.2},
            zorder=5,
        )


def _label_lanes(ax: Axes, trace: Timeline) -> None:
    """One tick per lane, top to bottom, with how busy it was."""
    lanes = trace.lanes
    busy = trace.lane_busy()
    ax.set_yticks(
        range(len(lanes)),
        [
            f"{lane_label(lane)}\n{busy[lane] / trace.wall:.0%} busy" if trace.wall else lane
            for lane in lanes
        ],
        fontsize=7,
    )
    ax.set_ylim(len(lanes) - 0.5, -0.5)


# -- gantt ------------------------------------------------------------------------------------
def gantt(
    trace: Timeline,
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
    trace : Timeline
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
    fig = new_figure(width, 1.6 + 0.55 * max(len(trace.lanes), 1))
    ax = fig.add_subplot()
    _draw_lanes(ax, trace, label_chars)
    ax.set_xlabel("ms since the run started")
    ax.set_title(title or _gantt_title(trace), fontsize=9, loc="left")
    _draw_level_legend(ax, trace)
    _save(fig, path, dpi)
    return fig


def _gantt_title(trace: Timeline) -> str:
    span, _ = trace.measured_span()
    bound = trace.busy / span if span > 0 else 1.0  # the measured Amdahl bound
    capacity = trace.wall * max(len(trace.lanes), 1)
    idle = 1 - trace.busy / capacity if capacity > 0 else 0.0  # share of lanes x wall
    return (
        f"{trace.plan.graph.name} on {trace.executor} ({trace.schedule}): "
        f"wall {format_seconds(trace.wall)}, {len(trace.events)} tasks\n"
        f"speedup {trace.speedup:.2f}x over the task sum (bound {bound:.2f}x), "
        f"idle {idle:.0%}"
    )


def _draw_level_legend(ax: Axes, trace: Timeline) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    levels = sorted({e.level for e in trace.events})
    handles: list[Any] = [
        Patch(fc=_LEVEL_COLOURS[lv % len(_LEVEL_COLOURS)], ec="#333333", label=f"level {lv}")
        for lv in levels[: len(_LEVEL_COLOURS)]
    ]
    handles.append(Line2D([], [], color=_CRITICAL, lw=2, label="critical path"))
    handles.append(Patch(fc=_IDLE, label="idle"))
    ax.legend(
        handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )


# -- compare ----------------------------------------------------------------------------------
def compare(
    traces: Mapping[str, Timeline] | Sequence[Timeline],
    path: str | os.PathLike[str] | None = None,
    *,
    baseline: str | None = None,
    width: float = 12.0,
    dpi: float = 100,
) -> Figure:
    """The same graph on several executors: one Gantt row each on one time axis, and speedups.

    Parameters
    ----------
    traces : mapping of label to Timeline, or sequence of Timeline
        In display order, e.g. ``{"sequential": t1, "threads": t2, "dask": t3}``; a sequence
        is labelled by executor name, repeats numbered (``threads``, ``threads #2``).
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

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("one")
    >>> g.output(g.node("a", nn.Linear(4, 4), g.input("x")))
    >>> _, t = gx.SequentialExecutor().run(gx.plan(g), torch.randn(2, 4), profile=True)
    >>> [ax.get_title(loc="left").split(":")[0] for ax in compare([t, t]).axes[:2]]
    ['sequential', 'sequential #2']
    """
    runs = _labelled(traces)
    if not runs:
        raise ValueError("compare() needs at least one trace")
    labels = list(runs)
    base = baseline or labels[0]
    if base not in runs:
        raise ValueError(f"baseline {base!r} is not one of {labels}")
    _, new_figure = _matplotlib()
    heights = [max(len(t.lanes), 1) + 0.9 for t in runs.values()]
    fig = new_figure(width, 1.0 + 0.5 * sum(heights))
    grid = fig.add_gridspec(
        len(labels), 2, width_ratios=(4, 1), height_ratios=heights, hspace=0.9, wspace=0.35
    )
    _draw_runs(fig, grid, runs, base)
    _draw_speedups(fig.add_subplot(grid[:, 1]), runs, base)
    fig.suptitle(
        f"{runs[labels[0]].plan.graph.name}: the same plan on {len(labels)} executors",
        fontsize=10,
        x=0.02,
        ha="left",
    )
    _save(fig, path, dpi)
    return fig


def _labelled(traces: Mapping[str, Timeline] | Sequence[Timeline]) -> dict[str, Timeline]:
    """Label -> trace in display order; unlabelled traces are named by executor, made unique."""
    if isinstance(traces, Mapping):
        return dict(traces)
    runs: dict[str, Timeline] = {}
    for trace in traces:
        label, k = trace.executor, 1
        while label in runs:
            k += 1
            label = f"{trace.executor} #{k}"
        runs[label] = trace
    return runs


def _speedup(base: Timeline, trace: Timeline) -> float:
    return base.wall / trace.wall if trace.wall else 0.0


def _draw_runs(fig: Figure, grid: GridSpec, runs: Mapping[str, Timeline], base: str) -> None:
    """The left column: each run's lanes, all on the time axis of the longest run."""
    longest = max(t.wall for t in runs.values()) * 1e3
    first = None
    for i, (label, trace) in enumerate(runs.items()):
        ax = fig.add_subplot(grid[i, 0], sharex=first)
        first = first or ax
        _draw_lanes(ax, trace, 18, longest)
        ratio = _speedup(runs[base], trace)
        ax.set_title(
            f"{label}: wall {format_seconds(trace.wall)}, {ratio:.2f}x vs {base}",
            fontsize=9,
            loc="left",
        )
    ax.set_xlabel("ms since the run started")


def _draw_speedups(bars: Axes, runs: Mapping[str, Timeline], base: str) -> None:
    """The right column: wall time per run (the baseline grey), speedups written beside."""
    labels = list(runs)
    walls = [runs[k].wall * 1e3 for k in labels]
    colours = ["#1f77b4" if k != base else "#7f7f7f" for k in labels]
    bars.barh(range(len(labels)), walls, color=colours)
    bars.set_yticks(range(len(labels)), labels, fontsize=8)
    bars.set_ylim(len(labels) - 0.5, -0.5)
    for i, k in enumerate(labels):
        bars.text(walls[i], i, f" {_speedup(runs[base], runs[k]):.2f}x", va="center", fontsize=8)
    bars.set_xlim(0, max(walls) * 1.35)
    bars.set_xlabel("wall ms (one run)")
    bars.set_title(f"speedup vs {base}", fontsize=9)
