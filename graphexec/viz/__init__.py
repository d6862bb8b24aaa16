"""Pictures and files made from plans and traces: plan drawings, Gantt charts, Chrome traces.

What it decides, and why
------------------------
* **Data in, figure out.** Every function takes a frozen `Plan` or `Timeline` and returns a
  ``matplotlib.figure.Figure`` (or a dict, or text). Writing a file is the one explicit
  ``path=`` argument: PNG or SVG (any format matplotlib knows) chosen by the suffix.
* **Plain data only.** Nothing here imports the planner, the profiler or an executor at run
  time (only for type hints): a plan or trace is read through its fields and
  ``Timeline.measured_span()``, and numbers are written by `graphexec.units.format_seconds`.
* **matplotlib is optional** and loaded only when a picture is drawn; ``import
  graphexec.viz`` is cheap, and `plan_to_dot` / `to_chrome` never need it.
* **Critical path in red** in every picture: the plan's estimated one in `draw_plan` and
  `plan_to_dot`, the measured one (`Timeline.measured_span`) in `gantt` and `compare`.

One file per picture; each opens with the decisions behind its picture:

* ``_style.py``: lazy matplotlib, colours, writing files, label shortening (`short_label`).
* ``plan.py``: `draw_plan`.
* ``timeline.py``: `gantt` and `compare`.
* ``export.py``: `plan_to_dot` and `to_chrome`.

Call tree::

    Plan.draw       -> draw_plan   -> _measure, _draw_edges, _draw_task       (plan.py)
    Plan.to_dot     -> plan_to_dot -> _dot_cluster, _dot_edges                (export.py)
    Timeline.gantt     -> gantt       -> _draw_lanes                             (timeline.py)
    Timeline.to_chrome -> to_chrome   -> _chrome_events                          (export.py)
    compare(traces)                -> _draw_lanes per trace, _draw_speedups   (timeline.py)
"""

from __future__ import annotations

from ._style import short_label
from .export import plan_to_dot, to_chrome
from .plan import draw_plan
from .timeline import compare, gantt

__all__ = ["draw_plan", "plan_to_dot", "gantt", "to_chrome", "compare", "short_label"]
