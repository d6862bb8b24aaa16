"""Files for other tools: Graphviz DOT of a plan (`plan_to_dot`), Chrome traces (`to_chrome`).

Neither needs matplotlib, nor Graphviz, nor a browser to make its text.

* **DOT is grouped by task**: graph inputs are ellipses, nodes are boxes inside one
  ``cluster`` per task (labelled with task name, level and cost), one edge per data or
  ordering dependency between live nodes; the plan's estimated critical path in red.
* **Chrome traces** use complete (``"X"``) events in microseconds relative to the run's
  start, one ``tid`` per lane named by ``thread_name`` metadata with the lane's name as the
  Gantt and the summary write it (`graphexec.units.lane_label`: ``caller thread``, ``pool
  thread 0``). Events are named by the task's one name (`Task.name`). ``otherData``
  carries the run's summary numbers.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from ..units import format_seconds, lane_label
from ._style import CRITICAL, EDGE, INPUT_FILL, TASK_FILL, TASK_LINE, make_parent

if TYPE_CHECKING:
    from ..plans import Plan, Task
    from ..profile import Timeline

__all__ = ["plan_to_dot", "to_chrome"]


# -- Graphviz ---------------------------------------------------------------------------------
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
        f'  node [shape=box, style="rounded,filled", fillcolor="{TASK_FILL}", '
        'fontname="Helvetica", fontsize=10];',
        f'  edge [color="{EDGE}"];',
    ]
    for name in plan.graph.inputs:
        lines.append(f'  {_q(name)} [shape=ellipse, fillcolor="{INPUT_FILL}"];')
    for i, (name, task) in enumerate(plan.tasks.items()):
        lines += _dot_cluster(plan, i, name, task, hot=name in critical)
    lines += _dot_edges(plan)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_cluster(plan: Plan, i: int, name: str, task: Task, hot: bool) -> list[str]:
    """``subgraph cluster_<i>``: the task's frame (red if ``hot``) around its nodes."""
    label = f"{name}\\nlevel {task.level}, {format_seconds(task.cost)}" + (
        ", inline" if task.inline else ""
    )
    lines = [
        f"  subgraph cluster_{i} {{",
        f"    label={_q(label)}; style={'dashed' if task.inline else 'rounded'}; "
        f'color="{CRITICAL if hot else TASK_LINE}"; penwidth={2 if hot else 1};',
    ]
    for node in task.nodes:
        cost = plan.node_costs.get(node, 0.0)
        node_label = _q(node + "\\n" + format_seconds(cost))
        lines.append(f"    {_q(node)} [label={node_label}];")
    lines.append("  }")
    return lines


def _dot_edges(plan: Plan) -> list[str]:
    """Graph edges between live nodes (and inputs), red where both ends are critical."""
    live = {n for t in plan.tasks.values() for n in t.nodes} | set(plan.graph.inputs)
    crit_nodes = {n for t in plan.critical_path for n in plan.tasks[t].nodes}
    lines = []
    for u, v in plan.graph.nx.edges:
        if u in live and v in live:
            hot = u in crit_nodes and v in crit_nodes
            style = f' [color="{CRITICAL}", penwidth=2]' if hot else ""
            lines.append(f"  {_q(u)} -> {_q(v)}{style};")
    return lines


def _q(text: str) -> str:
    r"""A DOT string: quotes and backslashes escaped, a literal ``\n`` kept as a line break.

    >>> print(_q('say "hi"\\nthere'))
    "say \"hi\"\nthere"
    """
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\\\\n", "\\n") + '"'


# -- Chrome Trace Event format ----------------------------------------------------------------
def to_chrome(trace: Timeline, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The trace as Chrome Trace Event JSON (Perfetto, chrome://tracing).

    Parameters
    ----------
    trace : Timeline
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
    doc = {
        "traceEvents": _chrome_events(trace),
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
        make_parent(path)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    return doc


def _chrome_events(trace: Timeline) -> list[dict[str, Any]]:
    """Metadata naming the process and each lane, then one complete event per task run."""
    _, path_tasks = trace.measured_span()
    on_path = set(path_tasks)
    tid = {lane: i + 1 for i, lane in enumerate(trace.lanes)}
    label = f"{trace.plan.graph.name} on {trace.executor} ({trace.schedule})"
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": label}}
    ]
    for lane, t in tid.items():
        events.append(
            {
                "name": "thread_name",
                "ph": "M",
                "pid": 1,
                "tid": t,
                "args": {"name": lane_label(lane)},
            }
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
    return events
