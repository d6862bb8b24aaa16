"""What really ran where and when: per-task events of one run, and their summary.

A `Timeline` is plain frozen data (like Dask's profiler records): one `TaskEvent` per task with
wall-clock start and end (``time.time()`` seconds, so events from worker processes on one
machine line up) and the lane it ran on (a thread name, CUDA stream or Dask worker). Pictures
and files are made from it by `graphexec.viz`; nothing here draws.

Numbers in `Timeline.summary`:

* wall: first start to last end of the run.
* busy: the sum of task times (what one lane would need with no overhead).
* speedup: busy / wall.
* measured bound: busy / (the costliest dependency path through measured task times): what
  unlimited lanes could reach for these task times (Amdahl).
* lane efficiency: busy time of each lane / wall.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .dag import longest_path
from .units import lane_label

if TYPE_CHECKING:
    from .plans import Plan

__all__ = ["TaskEvent", "Timeline"]


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

    def summary(self, slowest: int = 5) -> str:
        """A text report: wall, busy, speedup, bound, idle share, lanes, slowest tasks."""
        span, path = self.measured_span()
        bound = self.busy / span if span > 0 else 1.0
        lanes = self.lane_busy()
        capacity = self.wall * max(len(lanes), 1)
        idle = 1 - self.busy / capacity if capacity > 0 else 0.0
        rows = [
            f"{self.plan.graph.name} on {self.executor} ({self.schedule}): "
            f"{len(self.events)} tasks on {len(lanes)} lane{'s' * (len(lanes) != 1)}",
            f"  wall            {_ms(self.wall)}",
            f"  sum of tasks    {_ms(self.busy)}",
        ]
        if len(lanes) > 1:
            rows += [
                f"  speedup         {self.speedup:.2f}x over running the tasks back to back",
                f"  amdahl bound    {bound:.2f}x for these task times "
                f"(plan estimate {self.plan.amdahl:.2f}x); achieved/bound "
                f"{self.speedup / bound if bound else 0:.0%}",
                f"  idle share      {idle:.0%} of {len(lanes)} lanes x wall",
            ]
        else:  # one lane: nothing overlapped, and the plan may have chosen so
            why = self.plan.serial_reason or "no two tasks could run at once"
            rows.append(f"  one lane        tasks ran one after another ({why})")
        for lane, b in lanes.items():
            rows.append(
                f"  lane {lane_label(lane):<22} busy {_ms(b)} "
                f"({b / self.wall if self.wall else 0:.0%})"
            )
        rows.append("  critical path   " + " -> ".join(path))
        top = sorted(self.events, key=lambda e: -e.duration)[:slowest]
        rows.append("  slowest tasks   " + ", ".join(f"{e.task} {_ms(e.duration)}" for e in top))
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (
            f"Timeline({self.plan.graph.name!r} on {self.executor}: {len(self.events)} events, "
            f"wall {_ms(self.wall)}, speedup {self.speedup:.2f}x)"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f} ms"
