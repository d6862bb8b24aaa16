"""Run a plan on CUDA streams: concurrent tasks on a pool of streams, ordered by events.

What it decides
---------------
Everything the host does is decided ahead, as plain data: `stream_program` turns a `Plan` into
a frozen, printable `StreamProgram`; `run_program` only enqueues what it says. The program is
checked on the CPU (`StreamProgram.check` simulates stream order and events); the GPU tests run
the same program on a device.

* **Streams.** Stream 0 is the caller's current stream: inputs are ready there, outputs are
  used there, and the critical path runs there (so a chain, or the longest branch, runs exactly
  as eager PyTorch would). Other tasks are list-scheduled in order of their estimated ready
  time onto streams ``1..N-1``, each to the stream that is free first (estimated from task
  costs; ties go to a stream one of its inputs was made on, which saves an event, then to the
  lowest index). Inline (cheap) tasks follow the input that is estimated to finish last. With
  one stream, or a plan no two tasks of which share a level, everything runs on stream 0.
* **Host order.** One host thread enqueues every task, in the order the list schedule started
  them (a topological order); kernels launch asynchronously, so the caller's grad mode,
  inference mode and autocast apply as they are. There is no host synchronization in a run.
* **Events.** A task waits only for dependencies made on another stream, and only for those
  not already ordered before it through earlier waits (vector clocks; the latest task of each
  stream suffices, and a wait implied by another wait of the same task is dropped). An event
  is recorded after a task only when someone waits for it. Side streams first wait for a fork
  event recorded on stream 0 at the start of the run (inputs, and parameters an optimizer just
  stepped, are ready there). At the end, stream 0 waits for the last task of every side stream
  it is not already ordered after (the join), so the caller's later work, ``backward()``
  included, sees every result. ``schedule="levels"`` adds a barrier: every task of a level is
  ordered after every task of the level before, again as waits.
* **Memory.** A value made on one stream and read on another is marked with
  ``Tensor.record_stream(reader)`` once per (value, reader stream), before the reader's task
  is enqueued; graph outputs made on a side stream are marked for stream 0. The caching
  allocator then keeps the block out of reuse until those streams have passed that point, so
  values can be freed at their last use (the plan's ``last_use``) without host waits.
* **Capture.** ``capture=True`` records the whole multi-stream program into one
  ``torch.cuda.CUDAGraph`` per (plan, input shapes/dtypes, modes): warm-up runs on the capture
  stream first, side streams fork from and join into it through the same events, inputs are
  copied into static buffers and outputs cloned out after each replay. A new input signature
  captures again and warns (`CaptureWarning`). Calls with grad enabled run without the graph
  (a replayed graph records no autograd graph), and say so once.

The call tree::

    Executor.run -> CudaStreamExecutor._execute(plan, env, events)
      -> program(plan)              stream_program(plan, streams, schedule), cached per plan
      -> run_program(...)           enqueue: waits, record_stream, run_task, events; join
      or _replay(...)               capture once per input signature, copy inputs in, replay
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx
import torch
import torch.utils._pytree as pytree

from ..graph import Graph
from ..planner import Plan
from ..planner import plan as make_plan
from ..profile import TaskEvent
from .base import SCHEDULES, Executor, Modes, _RunState, capture_modes

__all__ = [
    "CudaStreamExecutor",
    "CudaUnavailableError",
    "CaptureWarning",
    "StreamOp",
    "StreamProgram",
    "stream_program",
    "run_program",
    "auto_choice",
    "capture_key",
    "INPUTS",
    "INLINE_BELOW",
]

#: Event name of the fork point: recorded on stream 0 before the first task.
INPUTS = "<inputs>"
#: Plans made for this executor inline only tasks estimated below this (merge ops): a stream
#: hand-off costs an event record and wait (a few µs of host time), not a thread hand-off.
INLINE_BELOW = 2e-6


class CudaUnavailableError(RuntimeError):
    """CUDA streams were asked for where torch sees no CUDA device."""


class CaptureWarning(UserWarning):
    """A CUDA graph was captured again (new input signature) or could not be used."""


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
        problems = _problems(self, plan)
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
    >>> from graphexec.executors.cuda import stream_program
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


def _problems(program: StreamProgram, plan: Plan) -> list[str]:
    """Everything `StreamProgram.check` finds wrong (an independent happens-before simulation)."""
    problems: list[str] = []
    index: dict[str, int] = {}
    for i, op in enumerate(program.ops):
        if op.task in index:
            problems.append(f"task {op.task!r} is enqueued twice")
        if not 0 <= op.stream < program.streams:
            problems.append(f"task {op.task!r} is on stream {op.stream} of {program.streams}")
        index[op.task] = i
    for t in sorted(set(plan.tasks) - set(index)):
        problems.append(f"task {t!r} is never enqueued")
    for t in sorted(set(index) - set(plan.tasks)):
        problems.append(f"task {t!r} is not in the plan")
    if problems:
        return problems
    start, end = ("<start>",), ("<end>",)
    hb = nx.DiGraph()  # happens-before: stream order plus event edges
    for s, lane in enumerate(program.lanes):
        nx.add_path(hb, [start, *lane, end] if s == 0 else lane)

    def event_edge(event: str, dst: Any, at: int, what: str) -> None:
        if event == INPUTS:
            if not program.fork:
                problems.append(f"{what} waits for the fork event, which is never recorded")
            hb.add_edge(start, dst)
        elif event not in index:
            problems.append(f"{what} waits for {event!r}, which is not a task")
        elif not program.ops[index[event]].record:
            problems.append(f"{what} waits for {event!r}'s event, which is never recorded")
        elif index[event] >= at:
            problems.append(f"{what} waits for {event!r}'s event before it is recorded")
        else:
            hb.add_edge(event, dst)

    for i, op in enumerate(program.ops):
        for w in op.waits:
            event_edge(w, op.task, i, f"task {op.task!r}")
    for w in program.join:
        event_edge(w, end, len(program.ops), "the join")
    if not nx.is_directed_acyclic_graph(hb):
        return [*problems, "the streams wait for each other in a cycle"]
    before = {t: nx.ancestors(hb, t) for t in index}
    joined = nx.ancestors(hb, end)
    s_of = {op.task: op.stream for op in program.ops}
    for t, task in plan.tasks.items():
        for d in task.deps:
            if index[d] > index[t]:
                problems.append(f"task {t!r} is enqueued before its dependency {d!r}")
            elif d not in before[t]:
                problems.append(
                    f"task {t!r} (stream {s_of[t]}) may start before its dependency {d!r} "
                    f"(stream {s_of[d]}) ends"
                )
        if s_of[t] and start not in before[t]:
            problems.append(f"task {t!r} (stream {s_of[t]}) may start before the fork")
        if t not in joined:
            problems.append(f"task {t!r} (stream {s_of[t]}) is not joined into stream 0")
    if program.schedule == "levels":
        for prev, level in itertools.pairwise(plan.levels):
            problems += [f"levels: task {t!r} may start before {p!r} of the level before ends"
                         for t in level for p in prev if p not in before[t]]  # fmt: skip
    problems += _unmarked(program, plan, index, s_of)
    return problems


def _unmarked(
    program: StreamProgram, plan: Plan, index: Mapping[str, int], s_of: Mapping[str, int]
) -> list[str]:
    """Values read on another stream than their own without ``record_stream`` there first."""
    made_on = {v: s_of[plan.task_of[v]] if v in plan.task_of else 0 for v in plan.consumers}
    first_mark: dict[tuple[str, int], int] = {}
    for i, op in enumerate(program.ops):
        for v in op.record_stream:
            first_mark.setdefault((v, op.stream), i)
    problems = []
    for t, task in plan.tasks.items():
        for v in task.inputs:
            s = s_of[t]
            if made_on[v] != s and first_mark.get((v, s), len(program.ops)) > index[t]:
                problems.append(
                    f"value {v!r} (made on stream {made_on[v]}) is read by {t!r} on stream {s} "
                    "without record_stream"
                )
    for r in plan.graph.output_refs():
        v = r.node
        if v in plan.task_of and s_of[plan.task_of[v]] and v not in program.to_caller:
            problems.append(f"output {v!r} is made on a side stream without record_stream(s0)")
    return problems


# -- enqueueing ---------------------------------------------------------------------------------
def run_program(
    plan: Plan,
    program: StreamProgram,
    env: dict[str, Any],
    streams: Sequence[Any],
    events: list[TaskEvent] | None = None,
    cuda: Any = torch.cuda,
) -> None:
    """Enqueue ``program`` from the calling thread; fill ``env`` with the plan's output values.

    Parameters
    ----------
    plan, program : Plan, StreamProgram
    env : dict
        Graph inputs by name; values are added as tasks run and dropped at their last use.
    streams : sequence of torch.cuda.Stream
        ``streams[0]`` is the caller's current stream, ``streams[i]`` stream ``i``.
    events : list, optional
        When given, one `TaskEvent` per task from CUDA timing events (lane ``"stream i"``);
        the caller's stream is synchronized once, at the end, to read them.
    cuda : module
        ``torch.cuda`` (its ``Event`` and ``stream``); a test stand-in on machines without one.

    Raises
    ------
    NodeError
        Naming the node. What was enqueued before still runs; stream 0 is made to wait for
        every side stream first, so the caller's later work cannot race it.
    """
    caller = streams[0]
    marks: dict[str, Any] = {}
    clock = _Clock(cuda, caller) if events is not None else None
    if program.fork:
        marks[INPUTS] = _record(cuda, caller)
    state = _RunState(plan, env, None, None)  # this thread runs every task: no mode re-entry
    try:
        for op in program.ops:
            stream = streams[op.stream]
            for w in op.waits:
                stream.wait_event(marks[w])
            for v in op.record_stream:  # made on another stream: keep its block from reuse
                _record_stream(env[v], stream)
            with cuda.stream(stream):
                begin = clock.mark(stream) if clock else None
                values = state.run(op.task)
                if clock:
                    clock.spans.append((op, begin, clock.mark(stream)))
            state.finish(op.task, values)  # frees values at their last use (record_stream'd)
            if op.record:
                marks[op.task] = _record(cuda, stream)
        for v in program.to_caller:
            _record_stream(env[v], caller)
        for w in program.join:
            caller.wait_event(marks[w])
    except BaseException:
        for stream in streams[1:]:
            caller.wait_stream(stream)
        raise
    if clock is not None and events is not None:
        events.extend(clock.events(plan))


def _record(cuda: Any, stream: Any, timing: bool = False) -> Any:
    event = cuda.Event(enable_timing=timing)
    event.record(stream)
    return event


def _record_stream(value: Any, stream: Any) -> None:
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor) and leaf.is_cuda:
            leaf.record_stream(stream)


class _Clock:
    """Per-task CUDA timing events, turned into wall-clock `TaskEvent` s after one sync."""

    def __init__(self, cuda: Any, caller: Any):
        self.cuda, self.caller = cuda, caller
        self.base = _record(cuda, caller, timing=True)
        self.wall = time.time()  # the base event's host time: GPU times are offsets from it
        self.spans: list[tuple[StreamOp, Any, Any]] = []

    def mark(self, stream: Any) -> Any:
        return _record(self.cuda, stream, timing=True)

    def events(self, plan: Plan) -> list[TaskEvent]:
        self.caller.synchronize()  # the join orders every task before this point
        out = []
        for op, begin, end in self.spans:
            task = plan.tasks[op.task]
            out.append(
                TaskEvent(
                    task.name,
                    task.nodes,
                    task.level,
                    self.wall + self.base.elapsed_time(begin) / 1e3,
                    self.wall + self.base.elapsed_time(end) / 1e3,
                    f"stream {op.stream}",
                )
            )
        return out


# -- choosing an executor -----------------------------------------------------------------------
def auto_choice(graph: Graph) -> tuple[str, dict[str, Any]]:
    """``("cuda", {"device": ...})`` when the graph's parameters are on a GPU, else threads.

    The device is that of the first parameter (or buffer) of the graph's module nodes, in node
    order.

    Examples
    --------
    >>> import torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("one")
    >>> g.output(g.node("a", nn.Linear(2, 2), g.input("x")))
    >>> auto_choice(g)
    ('threads', {})
    """
    for node in graph:
        if isinstance(node.fn, torch.nn.Module):
            first = next(itertools.chain(node.fn.parameters(), node.fn.buffers()), None)
            if first is not None:
                return ("cuda", {"device": str(first.device)}) if first.is_cuda else ("threads", {})
    return "threads", {}


def _cuda_device(device: str | int | torch.device) -> torch.device:
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise CudaUnavailableError(
            f"CudaStreamExecutor needs a CUDA device, but {why} (torch {torch.__version__}); "
            "use gx.ThreadExecutor() to run branches concurrently on the CPU"
        )
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"device must be a CUDA device such as 'cuda:0', got {device!r}")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.index >= torch.cuda.device_count():
        raise ValueError(f"no device {dev}: {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


# -- the executor -------------------------------------------------------------------------------
@dataclass
class _Captured:
    """One captured CUDA graph: its static input buffers and the static outputs it writes."""

    plan: Plan  # kept alive so that id(plan) in the cache key stays unique
    graph: Any  # torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, Any]
    done: Any  # torch.cuda.Event recorded after each replay


class CudaStreamExecutor(Executor):
    """Run concurrent tasks on CUDA streams, ordered by events, optionally as one CUDA graph.

    Parameters
    ----------
    device : str, int or torch.device
        The GPU (default ``"cuda:0"``). Parameters and inputs must already be there.
    streams : int
        Streams in all, the caller's current stream included (default 4; 1: one stream).
    schedule : {"dataflow", "levels"}
        ``"levels"`` adds a barrier between levels, as event waits.
    capture : bool
        Capture the whole program into a ``torch.cuda.CUDAGraph`` per input signature and
        replay it (inference: calls with grad enabled run without it).
    warmup : int
        Runs on the capture stream before each capture.

    Raises
    ------
    CudaUnavailableError
        If torch sees no CUDA device (use `graphexec.ThreadExecutor` there).
    """

    name = "cuda"
    #: Plans made for this executor (``run(graph)``, `GraphModule`) use these settings.
    plan_defaults: Mapping[str, Any] = MappingProxyType({"inline_below": INLINE_BELOW})

    def __init__(
        self,
        device: str | int | torch.device = "cuda:0",
        streams: int = 4,
        schedule: str = "dataflow",
        capture: bool = False,
        warmup: int = 2,
    ):
        super().__init__(schedule)
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.device = _cuda_device(device)
        self.streams, self.capture, self.warmup = streams, capture, warmup
        self._lock = threading.Lock()  # one host thread enqueues at a time: streams are shared
        self._side: list[Any] | None = None
        self._capture_stream: Any = None
        self._programs: dict[int, tuple[Plan, StreamProgram]] = {}
        self._graphs: dict[tuple, _Captured] = {}
        self._said_grad = False

    def program(self, plan: Plan) -> StreamProgram:
        """The stream program this executor runs for ``plan`` (made once per plan)."""
        cached = self._programs.get(id(plan))
        if cached is None or cached[0] is not plan:
            cached = (plan, stream_program(plan, self.streams, self.schedule))
            self._programs[id(plan)] = cached
        return cached[1]

    def _as_plan(self, plan: Plan | Graph) -> Plan:
        if isinstance(plan, Plan):
            return plan
        cached = self._plans.get(id(plan))
        if cached is None or cached[0] is not plan:
            cached = (plan, make_plan(plan, **self.plan_defaults))
            self._plans[id(plan)] = cached
        return cached[1]

    def _execute(self, plan: Plan, env: dict[str, Any], events: list[TaskEvent] | None) -> None:
        program = self.program(plan)
        with self._lock, torch.cuda.device(self.device):
            if self.capture and events is None and self._may_capture():
                self._replay(plan, program, env)
            else:
                run_program(plan, program, env, self._streams(), events)

    def _streams(self, first: Any = None) -> list[Any]:
        if self._side is None:
            self._side = [torch.cuda.Stream(self.device) for _ in range(self.streams - 1)]
        caller = torch.cuda.current_stream(self.device) if first is None else first
        return [caller, *self._side]

    def _may_capture(self) -> bool:
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return True
        if not self._said_grad:
            self._said_grad = True
            warnings.warn(
                "CudaStreamExecutor(capture=True) replays CUDA graphs for inference only: calls "
                "with grad enabled run on streams without a graph (use torch.no_grad() or "
                "torch.inference_mode() to replay)",
                CaptureWarning,
                stacklevel=4,
            )
        return False

    # -- capture and replay: mutates self._graphs; runs under self._lock --------------------------
    def _replay(self, plan: Plan, program: StreamProgram, env: dict[str, Any]) -> None:
        key = capture_key(plan, env, capture_modes())
        cap = self._graphs.get(key)
        if cap is None:
            if any(k[0] == key[0] for k in self._graphs):
                warnings.warn(
                    f"graph '{plan.graph.name}': new input signature {key[2]}; capturing "
                    f"another CUDA graph ({len(self._graphs) + 1} kept)",
                    CaptureWarning,
                    stacklevel=4,
                )
            cap = self._graphs[key] = self._capture(plan, program, env)
        caller = torch.cuda.current_stream(self.device)
        caller.wait_event(cap.done)  # a replay enqueued on another stream may still read them
        for name, buffer in cap.inputs.items():
            buffer.copy_(env[name])
        cap.graph.replay()
        for name, value in cap.outputs.items():  # the next replay overwrites the static ones
            env[name] = pytree.tree_map(
                lambda t: t.clone() if isinstance(t, torch.Tensor) else t, value
            )
        cap.done.record(caller)

    def _capture(self, plan: Plan, program: StreamProgram, env: dict[str, Any]) -> _Captured:
        _check_capturable(plan, env, self.device)
        static = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in env.items()}
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(self.device)
        stream = self._capture_stream
        streams = self._streams(stream)
        # Warm up on the streams the capture uses: lazy library handles, workspaces and
        # autotuning must happen outside the capture.
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                run_program(plan, program, dict(static), streams)
        graph = torch.cuda.CUDAGraph()
        run_env = dict(static)
        with torch.cuda.graph(graph, stream=stream):  # synchronizes the device first
            run_program(plan, program, run_env, streams)
        outputs = {v: run_env[v] for v in _output_values(plan) if v in plan.task_of}
        inputs = {k: v for k, v in static.items() if isinstance(v, torch.Tensor)}
        return _Captured(plan, graph, inputs, outputs, torch.cuda.Event())

    def close(self) -> None:
        """Drop the CUDA graphs, streams and cached programs (idempotent)."""
        with self._lock:
            if self._graphs and torch.cuda.is_available():
                torch.cuda.synchronize(self.device)  # no replay may still use a graph's pool
            self._graphs.clear()
            self._programs.clear()
            self._side = self._capture_stream = None

    def __reduce__(self) -> tuple:  # copy.deepcopy / pickle of a GraphModule: settings only
        return type(self), (self.device, self.streams, self.schedule, self.capture, self.warmup)

    def __repr__(self) -> str:
        return (
            f"CudaStreamExecutor(device='{self.device}', streams={self.streams}, "
            f"schedule={self.schedule!r}, capture={self.capture})"
        )


def _output_values(plan: Plan) -> list[str]:
    return list(dict.fromkeys(r.node for r in plan.graph.output_refs()))


def capture_key(plan: Plan, env: Mapping[str, Any], modes: Modes) -> tuple:
    """What a captured CUDA graph is specialised to: the plan, the modes, each input's
    shape, dtype and device (tensors) or value (anything else, which must be hashable).

    Raises
    ------
    TypeError
        If a graph input is neither a tensor nor hashable.

    Examples
    --------
    >>> import torch, graphexec as gx
    >>> g = gx.Graph("g")
    >>> g.output(g.node("neg", torch.neg, g.input("x")))
    >>> p, modes = gx.plan(g), capture_modes()
    >>> key = capture_key(p, {"x": torch.ones(2, 3)}, modes)
    >>> key[2]
    (('x', (2, 3), torch.float32, device(type='cpu')),)
    >>> key == capture_key(p, {"x": torch.zeros(2, 3)}, modes)
    True
    """
    sig = []
    for name in plan.graph.inputs:
        v = env[name]
        if isinstance(v, torch.Tensor):
            sig.append((name, tuple(v.shape), v.dtype, v.device))
            continue
        try:
            hash(v)
        except TypeError as exc:
            raise TypeError(
                f"capture=True: graph input '{name}' is a {type(v).__name__}; a CUDA graph bakes "
                "non-tensor inputs in, so they must be hashable (or use capture=False)"
            ) from exc
        sig.append((name, v))
    return (id(plan), modes, tuple(sig))


def _check_capturable(plan: Plan, env: Mapping[str, Any], device: torch.device) -> None:
    for name in plan.graph.inputs:
        v = env[name]
        if isinstance(v, torch.Tensor) and v.device != device:
            raise ValueError(
                f"capture=True: graph input '{name}' is on {v.device}, not {device}; a CUDA graph "
                "only replays GPU work (move the input, or use capture=False)"
            )
    inputs = set(plan.graph.inputs)
    for node in plan.graph:
        for i in node.mutates:
            root = _input_root(plan.graph, node.inputs[i].node, inputs)
            if root is not None:
                raise ValueError(
                    f"capture=True: node '{node.name}' writes graph input '{root}' in place; a "
                    "CUDA graph would write its static copy instead (use capture=False)"
                )


def _input_root(graph: Graph, name: str, inputs: set[str]) -> str | None:
    """The graph input a value is, or aliases through in-place results; None if none."""
    while name not in inputs:
        node = graph.nodes[name]
        if not node.mutates:
            return None
        name = node.inputs[node.mutates[0]].node
    return name
