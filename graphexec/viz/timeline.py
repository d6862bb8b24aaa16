"""Pictures of runs: `gantt` (one trace, lanes x time) and `compare` (several, one time axis).

* **Colours are levels**, so a glance shows whether a level's branches overlapped.
* **Idle time is visible**: each lane has a grey background, so idle time is the grey that
  shows between bars, and each lane's label says how busy it was.
* **Critical path in red**: the measured one (`Timeline.measured_span`, the costliest dependency
  chain through the measured task durations), as red outlines and arrows hop by hop. An arrow
  never crosses another task's bar: `graphexec.viz._routes` sends it along the gutters
  between lanes when the straight line would.
* **Labels are task names, measured**: a bar's label is its task's name (`Task.name`, as in
  ``print(plan)``), shortened by `graphexec.units.fit_name` only as far as the text's
  rendered width requires, and left out when even a cut form does not fit.
* **One lane gets no speedup**: its title says why the tasks ran one after another
  (`Timeline.one_lane_reason`) instead of a bound nothing could reach.
* **compare shares one time axis**, so shorter is faster at a glance; the bar chart beside it
  is what its title says, speedups over a baseline (longer is faster), each bar annotated with
  its wall time. It takes a mapping label -> trace, or a sequence of traces labelled by their
  executor's name (``threads``, ``threads #2``, ...).
* **Beside a table, the table's numbers.** Given the timed rounds of each row
  (``speedups=``, `graphexec.timing.Speedup`, as ``graphexec bench`` and the demo pass them),
  the bars are those rounds' median speedups over the same reference, with their middle half
  as a whisker and the same verdict (*within noise*) as the table, so picture and table cannot
  disagree; the Gantt rows are one profiled run each, and their titles say so.

Call tree::

    gantt   -> _draw_lanes, _gantt_title, _draw_level_legend
    compare -> _labelled, _draw_runs (-> _draw_lanes per trace), _draw_speedups
               (or _draw_rounds, given speedups=)
    _draw_lanes -> _label_lanes, _bars, _draw_bars (-> _bar_label),
                   _draw_path_arrows (-> _critical_routes -> _routes.route)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..units import fit_name, format_seconds, lane_label, speed_words
from ._routes import HALF, Bar, route
from ._style import CRITICAL, LEVEL_COLOURS, load_matplotlib, px_width, save, text_fits

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    from ..profile import TaskEvent, Timeline
    from ..timing import Speedup

__all__ = ["gantt", "compare"]

_IDLE = "#efefef"
_LABEL_PT = 7
_LABEL_PAD_PX = 3  # keeps a label off its bar's outline
_BOTTOM_GUTTER = 0.15  # room under the last lane for an arrow along it (`_routes`)


# -- lanes ------------------------------------------------------------------------------------
def _draw_lanes(
    ax: Axes, trace: Timeline, label_chars: int | None, xlim_ms: float | None = None
) -> None:
    """Bars of one trace on ``ax``: lanes top to bottom, ms from the run's start."""
    from matplotlib.patches import Rectangle

    row = {lane: i for i, lane in enumerate(trace.lanes)}
    _, path = trace.measured_span()
    wall_ms = max(trace.wall * 1e3, 1e-6)
    for i in range(len(row)):  # idle shows as the grey between bars
        ax.add_patch(Rectangle((0, i - 0.4), wall_ms, 0.8, fc=_IDLE, ec="none", zorder=0))
    xmax = (xlim_ms or wall_ms) * 1.01
    ax.set_xlim(0, xmax)  # before labels and arrows: they are measured in display pixels
    _label_lanes(ax, trace)
    bars = _bars(trace, row)
    _draw_bars(ax, bars, set(path), label_chars)
    _draw_path_arrows(ax, bars, path, inset=xmax / 150)
    ax.grid(axis="x", color="#dddddd", lw=0.5)
    ax.set_axisbelow(True)


def _bars(trace: Timeline, row: Mapping[str, int]) -> dict[TaskEvent, Bar]:
    """Each event's bar in data coordinates (ms since the run's start, lane row)."""
    return {
        e: Bar((e.start - trace.start) * 1e3, (e.end - trace.start) * 1e3, row[e.lane])
        for e in trace.events
    }


def _draw_bars(
    ax: Axes,
    bars: Mapping[TaskEvent, Bar],
    on_path: set[str],
    label_chars: int | None,
) -> None:
    """One bar per event, filled by level, outlined red on the path, labelled if it fits."""
    from matplotlib.patches import Rectangle

    for e, bar in bars.items():
        hot = e.task in on_path
        rect = Rectangle(
            (bar.x0, bar.row - HALF),
            bar.x1 - bar.x0,
            2 * HALF,
            fc=LEVEL_COLOURS[e.level % len(LEVEL_COLOURS)],
            ec=CRITICAL if hot else "#333333",
            lw=2.0 if hot else 0.5,
            zorder=2 + hot,
        )
        ax.add_patch(rect)
        room = px_width(ax, bar.x0, bar.x1) - _LABEL_PAD_PX
        label = _bar_label(e.task, text_fits(ax.figure, room, size=_LABEL_PT), label_chars)
        if label is not None:
            style = {"fontsize": _LABEL_PT, "zorder": 4, "clip_on": True}
            ax.text((bar.x0 + bar.x1) / 2, bar.row, label, ha="center", va="center", **style)


def _bar_label(name: str, fits: Callable[[str], bool], label_chars: int | None) -> str | None:
    """The task's name, shortened only as far as its bar requires (and to ``label_chars``
    characters if given); None when not even a cut form fits.

    >>> _bar_label("tower_a.0..tower_a.6", lambda s: len(s) <= 12, None)
    'tower_a.0..6'
    >>> _bar_label("stem.0", lambda s: True, 4) is None
    True
    """

    def allowed(text: str) -> bool:
        return (label_chars is None or len(text) <= label_chars) and fits(text)

    return fit_name(name, allowed)


def _draw_path_arrows(
    ax: Axes, bars: Mapping[TaskEvent, Bar], path: Sequence[str], inset: float
) -> None:
    """The measured critical path, hop by hop, as red arrows along `_critical_routes`."""
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path

    for points in _critical_routes(bars, path, inset):
        arrow = FancyArrowPatch(
            path=Path(points), arrowstyle="->", mutation_scale=8, color=CRITICAL, lw=1.2, zorder=5
        )
        ax.add_patch(arrow)


def _critical_routes(
    bars: Mapping[TaskEvent, Bar], path: Sequence[str], inset: float
) -> list[list[tuple[float, float]]]:
    """One polyline per hop of ``path``, from one task's end to the next one's start, routed
    around the bars of other tasks (`graphexec.viz._routes`)."""
    by_name = {e.task: bar for e, bar in bars.items()}
    hops = [by_name[t] for t in path if t in by_name]
    everything = list(bars.values())
    return [route(a, b, everything, inset) for a, b in zip(hops, hops[1:], strict=False)]


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
    ax.set_ylim(len(lanes) - 0.5 + _BOTTOM_GUTTER, -0.5)


# -- gantt ------------------------------------------------------------------------------------
def gantt(
    trace: Timeline,
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    label_chars: int | None = None,
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
        Defaults to graph, executor, schedule and wall, then speedup, bound and idle share
        (several lanes) or why the tasks ran one after another (one lane).
    label_chars : int, optional
        At most this many characters per bar label. Without it a label is the task's name,
        shortened only as far as its bar's measured width requires, or left out.
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
    _, new_figure = load_matplotlib()
    fig = new_figure(width, 1.6 + 0.55 * max(len(trace.lanes), 1))
    ax = fig.add_subplot()
    _draw_lanes(ax, trace, label_chars)
    ax.set_xlabel("ms since the run started")
    ax.set_title(title or _gantt_title(trace), fontsize=9, loc="left")
    _draw_level_legend(ax, trace)
    save(fig, path, dpi)
    return fig


def _gantt_title(trace: Timeline) -> str:
    head = (
        f"{trace.plan.graph.name} on {trace.executor} ({trace.schedule}): "
        f"wall {format_seconds(trace.wall)}, {len(trace.events)} tasks\n"
    )
    why = trace.one_lane_reason()
    if why is not None:  # no speedup or bound: nothing could overlap
        return head + f"one lane: tasks ran one after another ({why})"
    span, _ = trace.measured_span()
    bound = trace.busy / span if span > 0 else 1.0  # the measured Amdahl bound
    idle = 1 - trace.busy / (trace.wall * len(trace.lanes)) if trace.wall > 0 else 0.0
    return head + (
        f"{speed_words(trace.wall, trace.busy, 'the tasks back to back')} (speedup "
        f"{trace.speedup:.2f}x, bound {bound:.2f}x), idle {idle:.0%}"
    )


def _draw_level_legend(ax: Axes, trace: Timeline) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    levels = sorted({e.level for e in trace.events})
    handles: list[Any] = [
        Patch(fc=LEVEL_COLOURS[lv % len(LEVEL_COLOURS)], ec="#333333", label=f"level {lv}")
        for lv in levels[: len(LEVEL_COLOURS)]
    ]
    handles.append(Line2D([], [], color=CRITICAL, lw=2, label="critical path"))
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
    speedups: Mapping[str, Speedup] | None = None,
    reference: str = "eager PyTorch",
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
        The label speedups are relative to (default: the first), when ``speedups`` is not
        given: one run's wall time against another's.
    speedups : mapping of label to Speedup, optional
        Timed rounds of every label against ``reference`` (`graphexec.timing.paired`): the
        bars then show their median speedups, middle halves and verdicts, the numbers of
        `graphexec.timing.speedup_table` for the same rows.
    reference : str
        What ``speedups`` were timed against (default ``"eager PyTorch"``).
    width : float
        Figure width in inches.
    dpi : float

    Returns
    -------
    matplotlib.figure.Figure
        Left: the runs as Gantt charts sharing one time axis (so shorter is faster at a
        glance). Right: each run's speedup over ``baseline`` as a bar (longer is faster),
        annotated with the speedup and the wall time.

    Raises
    ------
    ValueError
        If ``traces`` is empty, ``baseline`` is not one of its labels, or ``speedups`` lacks
        one.
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
    if speedups is None and base not in runs:
        raise ValueError(f"baseline {base!r} is not one of {labels}")
    if speedups is not None and (missing := [k for k in labels if k not in speedups]):
        raise ValueError(f"speedups has no timed rounds for {missing}")
    _, new_figure = load_matplotlib()
    heights = [max(len(t.lanes), 1) + 0.9 for t in runs.values()]
    fig = new_figure(width, 1.0 + 0.5 * sum(heights))
    grid = fig.add_gridspec(
        len(labels), 2, width_ratios=(4, 1), height_ratios=heights, hspace=0.9, wspace=0.35
    )
    if speedups is None:
        _draw_runs(fig, grid, runs, lambda k: f"{_speedup(runs[base], runs[k]):.2f}x vs {base}")
        _draw_speedups(fig.add_subplot(grid[:, 1]), runs, base)
    else:
        _draw_runs(fig, grid, runs, lambda k: f"profiled run; timed: {_said(speedups[k])}")
        _draw_rounds(fig.add_subplot(grid[:, 1]), {k: speedups[k] for k in labels}, reference)
    fig.suptitle(
        f"{runs[labels[0]].plan.graph.name}: {len(labels)} runs on one time axis",
        fontsize=10,
        x=0.02,
        ha="left",
    )
    save(fig, path, dpi)
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


def _said(s: Speedup) -> str:
    """A row's rounds as the table says them: ``0.97x, within noise``."""
    return f"{s.median:.2f}x, {s.verdict}"


def _draw_runs(
    fig: Figure, grid: GridSpec, runs: Mapping[str, Timeline], speed: Callable[[str], str]
) -> None:
    """The left column: each run's lanes, all on the time axis of the longest run."""
    longest = max(t.wall for t in runs.values()) * 1e3
    first = None
    for i, (label, trace) in enumerate(runs.items()):
        ax = fig.add_subplot(grid[i, 0], sharex=first)
        first = first or ax
        _draw_lanes(ax, trace, None, longest)
        ax.set_title(
            f"{label}: wall {format_seconds(trace.wall)}, {speed(label)}",
            fontsize=9,
            loc="left",
        )
    ax.set_xlabel("ms since the run started")


def _draw_speedups(bars: Axes, runs: Mapping[str, Timeline], base: str) -> None:
    """The right column: speedup over ``base`` per run (its wall time / the run's), so the
    fastest run has the longest bar; the baseline is the grey bar at 1.00x."""
    labels = list(runs)
    speedups = [_speedup(runs[base], runs[k]) for k in labels]
    colours = ["#1f77b4" if k != base else "#7f7f7f" for k in labels]
    bars.barh(range(len(labels)), speedups, color=colours)
    bars.axvline(1.0, color="#555555", lw=0.8, ls="--")
    bars.set_yticks(range(len(labels)), labels, fontsize=8)
    bars.set_ylim(len(labels) - 0.5, -0.5)
    for i, k in enumerate(labels):
        text = f" {speedups[i]:.2f}x\n {format_seconds(runs[k].wall)}"
        bars.text(speedups[i], i, text, va="center", fontsize=8)
    bars.set_xlim(0, max(speedups) * 1.45)
    bars.set_xlabel(f"{base} wall / wall (longer is faster)", fontsize=8)
    bars.set_title(f"speedup vs {base}", fontsize=9)


def _draw_rounds(bars: Axes, speedups: Mapping[str, Speedup], reference: str) -> None:
    """The right column from timed rounds: each row's median speedup over ``reference``, its
    middle half as a whisker, its verdict; the dashed line at 1x is the reference."""
    labels = list(speedups)
    medians = [speedups[k].median for k in labels]
    low = [m - speedups[k].middle_half[0] for k, m in zip(labels, medians, strict=True)]
    high = [speedups[k].middle_half[1] - m for k, m in zip(labels, medians, strict=True)]
    colours = ["#1f77b4" if speedups[k].verdict != "within noise" else "#b0b0b0" for k in labels]
    bars.barh(range(len(labels)), medians, color=colours, xerr=[low, high], capsize=3,
              error_kw={"lw": 0.8})  # fmt: skip
    bars.axvline(1.0, color="#555555", lw=0.8, ls="--")
    bars.set_yticks(range(len(labels)), labels, fontsize=8)
    bars.set_ylim(len(labels) - 0.5, -0.5)
    for i, k in enumerate(labels):
        top = speedups[k].middle_half[1]
        bars.text(top, i, f" {medians[i]:.2f}x\n {speedups[k].verdict}", va="center", fontsize=8)
    rounds = max(len(s.ratios) for s in speedups.values())
    bars.set_xlim(0, max(max(s.middle_half[1] for s in speedups.values()), 1.0) * 1.6)
    bars.set_xlabel(f"median of {rounds} paired rounds (whisker: middle half; grey: within "
                    "noise)", fontsize=8)  # fmt: skip
    bars.set_title(f"speedup vs {reference}", fontsize=9)
