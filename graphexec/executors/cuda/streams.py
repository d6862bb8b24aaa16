"""The stream program: which CUDA stream runs each task, and which events order them.

What it decides
---------------
Everything the host does when `CudaStreamExecutor` runs a plan is decided here ahead, as plain
data, without a GPU: `stream_program` turns a `Plan` into a frozen, printable `StreamProgram`,
and the runner (`graphexec.executors.cuda.executor.run_program`) only enqueues what it says.
`StreamProgram.check` simulates stream order and events on the CPU, independently of how the
program was built; the GPU tests run the same program on a device.

* **Streams.** Stream 0 is the caller's current stream: inputs are ready there, outputs are
  used there, and the critical path runs there (so a chain, or the longest branch, runs exactly
  as eager PyTorch would). Other tasks are list-scheduled in order of their estimated ready
  time onto streams ``1..N-1``, each to the stream that is free first (estimated from task
  costs; ties go to a stream one of its inputs was made on, which saves an event, then to the
  lowest index). Inline (cheap) tasks follow the input that is estimated to finish last. With
  one stream, or a plan no two tasks of which share a level, everything runs on stream 0.
* **Host order.** The ops are in the order the list schedule started them (a topological
  order): one host thread enqueues them in that order.
* **Events.** A task waits only for dependencies made on another stream, and only for those
  not already ordered before it through earlier waits (vector clocks; the latest task of each
  stream suffices, and a wait implied by another wait of the same task is dropped). An event
  is recorded after a task only when someone waits for it. Side streams first wait for a fork
  event (`INPUTS`) recorded on stream 0 at the start of the run (inputs, and parameters an
  optimizer just stepped, are ready there). At the end, stream 0 waits for the last task of
  every side stream it is not already ordered after (the join), so the caller's later work,
  ``backward()`` included, sees every result. ``schedule="levels"`` adds a barrier: every task
  of a level is ordered after every task of the level before, again as waits.
* **Memory marks.** A value made on one stream and read on another is listed for
  ``record_stream(reader)`` once per (value, reader stream), at its first reader there; graph
  outputs made on a side stream are listed for stream 0 (`StreamProgram.to_caller`). Why that
  is enough to free values at their last use is the runner's business (see ``executor``).

The pieces::

    stream_program(plan, streams, schedule)
      -> _barriers     levels: each task also needs the whole level before
      -> _assign       list schedule on estimated costs: host order, stream of each task
      -> _wire         waits (vector clocks, via _waits), records, record_stream marks, join
    StreamProgram.check(plan)
      -> stream_check.find_problems   an independent happens-before simulation
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ...plans import Plan
from ..base import SCHEDULES
from .stream_check import find_problems

__all__ = ["StreamOp", "StreamProgram", "stream_program", "INPUTS"]

#: Event name of the fork point: recorded on stream 0 before the first task.
INPUTS = "<inputs>"


# -- the program: pure data ---------------------------------------------------------------------
@dataclass(frozen=True)
class StreamOp:
    """One task as the host enqueues it.

    Attributes
    ----------
    task : str
    stream : int
        0 is the caller's current stream; 1..N-1 the executor's side streams.
    waits : tuple of str
        Events this stream waits for first: task names (the event recorded after that task) or
        `INPUTS` (the fork event).
    record : bool
        Record this task's event after it (someone waits for it).
    record_stream : tuple of str
        Values read here that were made on another stream: ``record_stream(this stream)``.
    """

    task: str
    stream: int
    waits: tuple[str, ...] = ()
    record: bool = False
    record_stream: tuple[str, ...] = ()


@dataclass(frozen=True)
class StreamProgram:
    """What the host enqueues for one run of a plan: ops in order, the fork and the join.

    Build one with `stream_program`; check it against its plan with `check`.
    """

    streams: int
    schedule: str
    ops: tuple[StreamOp, ...]
    #: Record the `INPUTS` event on stream 0 first (some side stream waits for it).
    fork: bool
    #: Events stream 0 waits for after the last op.
    join: tuple[str, ...]
    #: Graph outputs made on a side stream: ``record_stream(stream 0)`` before returning them.
    to_caller: tuple[str, ...]
    stream_of: Mapping[str, int] = field(repr=False, compare=False)

    @property
    def lanes(self) -> tuple[tuple[str, ...], ...]:
        """The tasks of each stream, in stream order."""
        lanes: list[list[str]] = [[] for _ in range(self.streams)]
        for op in self.ops:
            lanes[op.stream].append(op.task)
        return tuple(tuple(lane) for lane in lanes)

    @property
    def n_waits(self) -> int:
        return sum(len(op.waits) for op in self.ops) + len(self.join)

    def __str__(self) -> str:
        used = sum(bool(lane) for lane in self.lanes)
        rows = [
            f"StreamProgram ({self.schedule}): {len(self.ops)} tasks on {used} of {self.streams} "
            f"streams, {self.n_waits} waits for {sum(op.record for op in self.ops) + self.fork} "
            "recorded events",
        ]
        if self.fork:
            rows.append("   -  s0  record <inputs>")
        for i, op in enumerate(self.ops):
            parts = [f"{i:>4}  s{op.stream}  {op.task}"]
            if op.waits:
                parts.append("wait " + ", ".join(op.waits))
            if op.record_stream:
                parts.append("record_stream " + ", ".join(op.record_stream))
            if op.record:
                parts.append("record")
            rows.append(" | ".join(parts))
        if self.join:
            rows.append("join: s0 waits for " + ", ".join(self.join))
        if self.to_caller:
            rows.append("record_stream(s0) for outputs " + ", ".join(self.to_caller))
        return "\n".join(rows)

    def check(self, plan: Plan) -> None:
        """Simulate stream order and events; raise unless the program runs ``plan`` safely.

        Checked, independently of how the program was built: every task runs once; the host
        enqueues each task after its dependencies and each event record before its waits;
        every dependency happens before its task (through stream order and event waits); side
        streams start after the fork; the join orders every task before stream 0's later work;
        with ``schedule="levels"`` every task of a level happens before every task of the next;
        every value read on another stream than its own is marked with ``record_stream`` at or
        before its first reader there, and side-stream outputs are marked for stream 0.

        Raises
        ------
        ValueError
            Listing what is wrong, naming the tasks.
        """
        problems = find_problems(self, plan, INPUTS)
        if problems:
            raise ValueError(
                f"stream program for '{plan.graph.name}' is unsafe:\n  " + "\n  ".join(problems)
            )


def stream_program(plan: Plan, streams: int = 4, schedule: str = "dataflow") -> StreamProgram:
    """Assign a plan's tasks to CUDA streams and wire them with events (no GPU needed).

    Parameters
    ----------
    plan : Plan
    streams : int
        Streams to use, the caller's current stream included (1: everything on it).
    schedule : {"dataflow", "levels"}
        ``"levels"`` adds a barrier between levels (as event waits).

    Returns
    -------
    StreamProgram

    Raises
    ------
    ValueError
        If ``streams < 1`` or ``schedule`` is unknown.

    Examples
    --------
    >>> import torch.nn as nn, graphexec as gx
    >>> from graphexec.executors.cuda.streams import stream_program
    >>> g = gx.Graph("diamond")
    >>> x = g.input("x")
    >>> a = g.node("a", nn.Linear(512, 512), x)
    >>> b = g.node("b", nn.Linear(256, 512), g.node("half", lambda t: t[:, :256], x))
    >>> g.output(g.node("sum", gx.add(), a, b))
    >>> p = stream_program(gx.plan(g), streams=2)
    >>> p.lanes  # the critical path keeps the caller's stream
    (('a', 'sum'), ('half+b',))
    >>> print(p)
    StreamProgram (dataflow): 3 tasks on 2 of 2 streams, 2 waits for 2 recorded events
       -  s0  record <inputs>
       0  s0  a
       1  s1  half+b | wait <inputs> | record_stream x | record
       2  s0  sum | wait half+b | record_stream b
    >>> p.check(gx.plan(g))
    """
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    barrier = _barriers(plan) if schedule == "levels" else {}
    order, stream_of = _assign(plan, streams, barrier)
    return _wire(plan, streams, schedule, order, stream_of, barrier)


def _barriers(plan: Plan) -> dict[str, tuple[str, ...]]:
    """``levels``: each task also depends on every task of the level before its own."""
    return {t: prev for prev, level in itertools.pairwise(plan.levels) for t in level}


def _assign(
    plan: Plan, streams: int, barrier: Mapping[str, tuple[str, ...]]
) -> tuple[list[str], dict[str, int]]:
    """List-schedule the tasks on estimated times: host order and a stream for each task."""
    tasks = plan.tasks
    index = {t: i for i, t in enumerate(tasks)}
    critical = set(plan.critical_path)
    spread = streams > 1 and plan.max_width > 1
    needs = {t: set(task.deps) | set(barrier.get(t, ())) for t, task in tasks.items()}
    dependents: dict[str, list[str]] = {t: [] for t in tasks}
    for t in tasks:
        for d in needs[t]:
            dependents[d].append(t)
    waiting = {t: len(needs[t]) for t in tasks}
    ready_at = dict.fromkeys(tasks, 0.0)
    heap = [(0.0, index[t], t) for t in tasks if not waiting[t]]
    free = [0.0] * streams
    finish: dict[str, float] = {}
    stream_of: dict[str, int] = {}
    order: list[str] = []
    while heap:  # earliest estimated ready time first; ties in program order
        ready, _, t = heapq.heappop(heap)
        task = tasks[t]
        if not spread or t in critical:
            s = 0
        elif task.inline:  # follow the input expected last: no wait for it
            s = stream_of[max(task.deps, key=finish.__getitem__)] if task.deps else 0
        else:
            near = {stream_of[d] for d in task.deps}
            s = min(range(1, streams), key=lambda s: (max(ready, free[s]), s not in near, s))
        finish[t] = max(ready, free[s]) + task.cost
        free[s] = finish[t]
        stream_of[t] = s
        order.append(t)
        for d in dependents[t]:
            ready_at[d] = max(ready_at[d], finish[t])
            waiting[d] -= 1
            if not waiting[d]:
                heapq.heappush(heap, (ready_at[d], index[d], d))
    return order, stream_of


def _wire(
    plan: Plan,
    streams: int,
    schedule: str,
    order: list[str],
    stream_of: dict[str, int],
    barrier: Mapping[str, tuple[str, ...]],
) -> StreamProgram:
    """Events for the cross-stream dependencies, dropping those already implied (vector clocks).

    ``clock[s][m]``: the position on stream ``m`` of the latest op that stream ``s`` has
    (so far) been ordered after; ``after[t]``: stream ``stream_of[t]``'s clock just after ``t``.
    Stream 0's position 0 is the fork point.
    """
    where = {**stream_of, INPUTS: 0}
    clock = [[-1] * streams for _ in range(streams)]
    clock[0][0] = 0
    length = [1] + [0] * (streams - 1)
    pos = {INPUTS: 0}
    after = {INPUTS: tuple(clock[0])}
    recorded: set[str] = set()
    marked: set[tuple[str, int]] = set()
    made_on = {v: stream_of[plan.task_of[v]] if v in plan.task_of else 0 for v in plan.consumers}
    rows = []
    for t in order:
        s, task = stream_of[t], plan.tasks[t]
        needs = [*task.deps, *barrier.get(t, ()), *((INPUTS,) if s else ())]
        waits = _waits(needs, s, clock[s], where, pos, after)
        for w in waits:
            clock[s] = [max(a, b) for a, b in zip(clock[s], after[w], strict=True)]
        recorded.update(waits)
        pos[t] = length[s]
        length[s] += 1
        clock[s][s] = pos[t]
        after[t] = tuple(clock[s])
        marks = [v for v in task.inputs if made_on[v] != s and (v, s) not in marked]
        marked.update((v, s) for v in marks)
        rows.append((t, s, waits, marks))
    last = {stream_of[t]: t for t in order}
    join = _waits([last[s] for s in range(1, streams) if s in last], 0, clock[0], where, pos, after)
    recorded.update(join)
    outputs = dict.fromkeys(r.node for r in plan.graph.output_refs())
    return StreamProgram(
        streams=streams,
        schedule=schedule,
        ops=tuple(StreamOp(t, s, tuple(w), t in recorded, tuple(m)) for t, s, w, m in rows),
        fork=INPUTS in recorded,
        join=tuple(join),
        to_caller=tuple(v for v in outputs if v in plan.task_of and where[plan.task_of[v]]),
        stream_of=MappingProxyType(dict(stream_of)),
    )


def _waits(
    needs: Sequence[str],
    s: int,
    known: Sequence[int],
    where: Mapping[str, int],
    pos: Mapping[str, int],
    after: Mapping[str, tuple[int, ...]],
) -> list[str]:
    """The events stream ``s`` must wait for so that every task in ``needs`` happens first."""
    latest: dict[int, str] = {}  # per stream, the latest needed task not yet ordered before s
    for d in needs:
        m = where[d]
        if m == s or known[m] >= pos[d]:
            continue
        if m not in latest or pos[d] > pos[latest[m]]:
            latest[m] = d
    found = list(latest.values())
    keep = [c for c in found if not any(after[o][where[c]] >= pos[c] for o in found if o != c)]
    return sorted(keep, key=lambda d: (where[d], pos[d]))
