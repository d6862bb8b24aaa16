"""The README's walk-through (``graphexec demo``): a multi-branch model planned, drawn, run.

What it shows
-------------
`DemoNet` is small enough to run anywhere and wide enough to have something to overlap: a
shared stem, three towers of different depth and width, a head. `run_demo` traces it, plans it
with costs measured on one batch, draws the plan, then runs it on every CPU executor (and an
embedded two-worker Dask cluster), checking each output against eager PyTorch and timing each
executor alternately with eager (`graphexec.targets.time_against`: timed in blocks, whatever
ran after eager paid for its still-spinning OpenMP workers). A failing executor is reported
and the other rows and pictures are still made.

The steps::

    run_demo(out)
      -> _plan_and_draw      plan (measured costs), plan.png, plan.dot
      -> _run_executors      per executor: check, time against eager, one profiled run
      -> _write_pictures     Gantt, Chrome trace and summary per executor, compare.png
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from .executors import make_executor
from .executors.base import Executor
from .fx_import import trace as fx_trace
from .graph import Graph
from .plans import Plan
from .profile import Timeline
from .targets import check_outputs, ratio_table, save_trace, time_against
from .tune import plan as make_plan

__all__ = ["DemoNet", "demo_graph", "run_demo"]


def _mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class DemoNet(nn.Module):
    """A multi-branch model: a shared stem, three towers of different depth, a head.

    ::

        x -> stem -> tower_a (deep)   -\
                  -> tower_b (wide)   --> cat -> head
                  -> tower_c (small)  -/
    """

    def __init__(self, width: int = 512):
        super().__init__()
        self.stem = _mlp(width, width)
        self.tower_a = _mlp(width, 1024, 1024, 1024, 256)
        self.tower_b = _mlp(width, 2048, 256)
        self.tower_c = _mlp(width, 512, 256)
        self.head = nn.Linear(3 * 256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.head(torch.cat([self.tower_a(h), self.tower_b(h), self.tower_c(h)], dim=1))


def demo_graph() -> Graph:
    """The demo's multi-branch model (`DemoNet`) traced into a graph.

    Examples
    --------
    >>> g = demo_graph()
    >>> g.inputs
    ('x',)
    """
    torch.manual_seed(0)
    return fx_trace(DemoNet().eval(), name="demo")


def run_demo(out: Path, repeat: int = 5, dask: bool = True, batch: int = 256) -> int:
    """The README's walk-through: plan, draw, run on threads and Dask, check, time, save.

    Parameters
    ----------
    out : Path
        Folder for the pictures, the Chrome traces and the summaries.
    repeat : int
        Timed runs per row of the table (median).
    dask : bool
        Also run on an embedded local Dask cluster (2 worker processes).
    batch : int
        Rows of the random input.

    Returns
    -------
    int
        0 when every run matched eager PyTorch.
    """
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = DemoNet().eval()
    graph = fx_trace(model, name="demo")
    x = torch.randn(batch, 512)
    print(f"1. the model: {graph!r}\n")
    with torch.no_grad():
        plan = _plan_and_draw(graph, x, out)
        print("3. running (each output checked against eager PyTorch):")
        rows, traces, failed = _run_executors(plan, model, x, _executors(dask), repeat)
    print(
        f"\n4. timings, median of {repeat} runs, each executor alternating with eager "
        f"(higher is faster):\n{ratio_table(rows, rows[0][0])}\n"
    )
    if "threads (dataflow)" in traces:
        print(f"5. what ran where (threads, dataflow):\n{traces['threads (dataflow)'].summary()}\n")
    files = _write_pictures(traces, out)
    print("6. pictures and traces (open trace_*.json in https://ui.perfetto.dev):")
    for f in files:
        print(f"   {f}")
    if failed:
        print(f"graphexec demo: error: {', '.join(failed)} failed (see above)", file=sys.stderr)
    return 1 if failed else 0


def _plan_and_draw(graph: Graph, x: torch.Tensor, out: Path) -> Plan:
    plan = make_plan(graph, (x,))  # costs measured on this batch
    print(f"2. the plan (costs measured on a batch of {len(x)}):\n{plan}\n")
    plan.draw(out / "plan.png")
    (out / "plan.dot").write_text(plan.to_dot(), encoding="utf-8")
    return plan


def _executors(dask: bool) -> list[tuple[str, Callable[[], Executor]]]:
    """Row label and a factory per executor: each is made, used and closed in its turn."""
    executors: list[tuple[str, Callable[[], Executor]]] = [
        ("sequential", lambda: make_executor("sequential")),
        ("threads (dataflow)", lambda: make_executor("threads")),
        ("threads (levels)", lambda: make_executor("threads", schedule="levels")),
    ]
    if dask:
        executors.append(
            ("dask (2 workers)", lambda: make_executor("dask", n_workers=2, dashboard_address=":0"))
        )
    return executors


def _run_executors(
    plan: Plan,
    model: nn.Module,
    x: torch.Tensor,
    executors: list[tuple[str, Callable[[], Executor]]],
    repeat: int,
) -> tuple[list[tuple[str, float]], dict[str, Timeline], list[str]]:
    """Check, time and profile each executor; return the timing rows (eager first), the
    traces and the labels of the executors that failed."""
    expected = model(x)
    eager_samples: list[float] = []
    rows: list[tuple[str, float]] = []
    traces: dict[str, Timeline] = {}
    failed: list[str] = []
    for label, factory in executors:
        t0 = time.perf_counter()
        try:
            with factory() as ex:
                got, _ = ex.run(plan, x, profile=True)
                print(f"   {label:<20} {check_outputs(got, expected)}")
                seconds = time_against(
                    lambda ex=ex: ex.run(plan, x), lambda: model(x), repeat, eager_samples
                )
                rows.append((label, seconds))
                traces[label] = ex.run(plan, x, profile=True)[1]
        except Exception as exc:  # report, keep the other rows and pictures
            failed.append(label)
            line = (str(exc).strip().splitlines() or [""])[0]
            print(f"   {label:<20} FAILED: {type(exc).__name__}: {line}")
            continue
        if label.startswith("dask"):
            print(f"   (cluster start, runs and shutdown took {time.perf_counter() - t0:.1f} s)")
    rows.insert(0, ("eager PyTorch", statistics.median(eager_samples or [float("nan")])))
    return rows, traces, failed


def _write_pictures(traces: dict[str, Timeline], out: Path) -> list[Path]:
    """Every executor's Gantt chart, Chrome trace and summary, and the comparison figure."""
    from .viz import compare

    files = [out / "plan.png", out / "plan.dot"]
    for label, trace in traces.items():
        tag = label.split()[0] + ("_levels" if "levels" in label else "")
        files += save_trace(trace, out, tag)
    compare(traces, out / "compare.png")
    files.append(out / "compare.png")
    return files
