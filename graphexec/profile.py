"""What really ran where and when: per-task events of one run, and their summary.

A `Timeline` is plain frozen data (like Dask's profiler records): one `TaskEvent` per task with
wall-clock start and end (``time.time()`` seconds, so events from worker processes on one
machine line up) and the lane it ran on (a thread name, CUDA stream or Dask worker). Pictures
and files are made from it by `graphexec.viz`; nothing here draws.

Numbers in `Timeline.summary`:

* wall: first start to last end of the run.
* busy: the sum of task times (what one lane would need with no overhead).
* speedup: busy / wall, written as "faster" or "slower than running the tasks one after
  another" (a run whose lanes wait on each other longer than they overlap is slower).
* measured bound: busy / (the costliest dependency path through measured task times): what
  unlimited lanes could reach for these task times (Amdahl).
* lane efficiency: busy time of each lane / wall.
* vs eager (only when told eager's time, ``summary(eager=seconds)``): this run's wall against
  the model run in eager PyTorch, in words (``1.88x faster``). Timing eager is the caller's
  job (the CLI and demo time both, alternating); a Timeline only knows its own run.

A run on one lane gets no speedup, bound or idle share: they would compare tasks that could
never overlap. The summary says why they ran one after another instead (`one_lane_reason`).
`median_run` picks the typical run of several, for pictures and reports.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .dag import longest_path
from .timing import Speedup
from .units import format_seconds, lane_label, speed_words

if TYPE_CHECKING:
    from .plans import Plan

__all__ = ["TaskEvent", "Timeline", "median_run"]


@dataclass(frozen=True)
class TaskEvent:
    """One task's run: names, level, wall-clock start and end (seconds), lane."""

    task: str
    nodes: tuple[str, ...]
    level: int
    start: float
    end: float
    lane: str

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Timeline:
    """The events of one run of a plan on one executor."""

    plan: Plan
    executor: str
    schedule: str
    events: tuple[TaskEvent, ...]
    start: float
    end: float

    @property
    def wall(self) -> float:
        return self.end - self.start

    @property
    def busy(self) -> float:
        return sum(e.duration for e in self.events)

    @property
    def speedup(self) -> float:
        return self.busy / self.wall if self.wall > 0 else 1.0

    @property
    def lanes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.lane for e in self.events))

    def lane_busy(self) -> Mapping[str, float]:
        busy: dict[str, float] = {}
        for e in self.events:
            busy[e.lane] = busy.get(e.lane, 0.0) + e.duration
        return busy

    def measured_span(self) -> tuple[float, tuple[str, ...]]:
        """The costliest dependency path through the measured task durations."""
        dur = {e.task: e.duration for e in self.events}
        tasks = self.plan.tasks
        return longest_path(tasks, lambda t: tasks[t].deps, lambda t: dur.get(t, 0.0))

    def one_lane_reason(self) -> str | None:
        """Why the tasks ran one after another, in a few words; None if they ran on several
        lanes. (The plan's full reason, if it chose so, is ``plan.one_by_one_why``.)"""
        if len(self.lanes) > 1:
            return None
        if self.executor == "sequential":
            return "the sequential executor runs one task at a time"
        if self.plan.as_is is not None:  # "inline" is kept for tasks too cheap to dispatch
            return "the plan runs the traced module as it is"
        if self.plan.one_by_one_why:
            return "the plan chose one after another (measured)"
        if self.plan.max_width <= 1:
            return "no two tasks could run at once"
        return f"{self.executor} ran every task on one lane"

    def summary(self, slowest: int = 5, *, eager: float | Speedup | None = None) -> str:
        """A text report: wall, busy, speedup, bound, idle share, lanes, slowest tasks.

        Parameters
        ----------
        slowest : int
            How many of the slowest tasks to list.
        eager : float or graphexec.timing.Speedup, optional
            Seconds the same inputs took in eager PyTorch (the model called as it is),
            measured by the caller: adds a line saying how much faster or slower this run
            was. Given the paired rounds of this plan against eager instead (a ``Speedup``),
            the line gives their verdict, as the caller's table does: one verdict per
            measurement, not a second one from this single run.

        Returns
        -------
        str
            One line per number; a run on one lane says why instead of giving bounds.
        """
        rows = [
            f"{self.plan.graph.name} on {self.executor} ({self.schedule}): "
            f"{len(self.events)} tasks on {len(self.lanes)} lane{'s' * (len(self.lanes) != 1)}",
            f"  wall            {_ms(self.wall)}",
            f"  sum of tasks    {_ms(self.busy)}",
        ]
        if isinstance(eager, Speedup):
            low, high = eager.middle_half
            rows.append(
                f"  vs eager        {eager.median:.2f}x ({low:.2f}x-{high:.2f}x) "
                f"{eager.verdict}: the median of {len(eager.ratios)} paired rounds against "
                f"eager PyTorch ({format_seconds(statistics.median(eager.reference))}), not "
                "this one run"
            )
        elif eager is not None:
            rows.append(
                f"  vs eager        {speed_words(self.wall, eager, 'eager PyTorch')} "
                f"({format_seconds(eager)})"
            )
        rows += self._overlap_rows()
        rows += [
            f"  lane {lane_label(lane):<22} busy {_ms(b)} ({b / self.wall if self.wall else 0:.0%})"
            for lane, b in self.lane_busy().items()
        ]
        _, path = self.measured_span()
        rows.append("  critical path   " + " -> ".join(path))
        top = sorted(self.events, key=lambda e: -e.duration)[:slowest]
        rows.append("  slowest tasks   " + ", ".join(f"{e.task} {_ms(e.duration)}" for e in top))
        return "\n".join(rows)

    def _overlap_rows(self) -> list[str]:
        """Speedup, bound and idle share over several lanes; on one lane, why."""
        why = self.one_lane_reason()
        if why is not None:
            rows = [f"  one lane        tasks ran one after another: {why}"]
            if self.plan.one_by_one_why and self.executor != "sequential":
                rows.append(f"                  ({self.plan.one_by_one_why})")  # said once
            return rows
        span, _ = self.measured_span()
        bound = self.busy / span if span > 0 else 1.0
        capacity = self.wall * len(self.lanes)
        idle = 1 - self.busy / capacity if capacity > 0 else 0.0
        return [
            f"  vs back to back {speed_words(self.wall, self.busy, 'the tasks one after another')}",
            f"  amdahl bound    {bound:.2f}x for these task times (plan estimate "
            f"{self.plan.amdahl:.2f}x); speedup {self.speedup:.2f}x is "
            f"{self.speedup / bound if bound else 0:.0%} of it",
            f"  idle share      {idle:.0%} of {len(self.lanes)} lanes x wall",
        ]

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (
            f"Timeline({self.plan.graph.name!r} on {self.executor}: {len(self.events)} events, "
            f"wall {_ms(self.wall)}, speedup {self.speedup:.2f}x)"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f} ms"


def median_run(traces: Sequence[Timeline]) -> Timeline:
    """The run whose wall time is the median of ``traces`` (the lower one of an even count).

    One run on a busy machine can be far off (a thread descheduled for 10 ms draws an idle
    gap no other run has); the median run is a real run, as pictures need, and a typical one.

    Parameters
    ----------
    traces : sequence of Timeline
        Runs of the same plan on the same executor.

    Returns
    -------
    Timeline
        One of ``traces``, unchanged.

    Raises
    ------
    ValueError
        If ``traces`` is empty.

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("one")
    >>> g.output(g.node("a", nn.Linear(4, 4), g.input("x")))
    >>> ex, plan = gx.SequentialExecutor(), gx.plan(g)
    >>> runs = [ex.run(plan, torch.randn(2, 4), profile=True)[1] for _ in range(5)]
    >>> sorted(runs, key=lambda t: t.wall)[2] is median_run(runs)
    True
    """
    if not traces:
        raise ValueError("median_run() needs at least one trace")
    return sorted(traces, key=lambda t: t.wall)[(len(traces) - 1) // 2]
