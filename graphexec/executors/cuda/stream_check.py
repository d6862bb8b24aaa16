"""The checker of stream programs: an independent happens-before simulation on the CPU.

`StreamProgram.check` calls `find_problems`, which rebuilds what the GPU would guarantee from
the program alone, without trusting how it was built: the host's enqueue order, stream order
and event waits as a happens-before graph (networkx), then every dependency, the fork from
the caller's stream, the join back into it, level barriers and ``record_stream`` marks are
checked against it.

    find_problems(program, plan, inputs)
      -> _enqueue_problems   every task once, records before their waits
      -> _happens_before     stream order plus events, as a graph
      -> _unmarked           values read on a foreign stream without record_stream
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import networkx as nx

if TYPE_CHECKING:
    from ...plans import Plan

__all__ = ["find_problems"]


class _Op(Protocol):
    task: str
    stream: int
    waits: tuple[str, ...]
    record: bool
    record_stream: tuple[str, ...]


class _Program(Protocol):
    """What the checker reads of a `graphexec.executors.cuda.streams.StreamProgram`.

    Spelled out here so that the checker needs nothing of the module it checks: streams.py
    imports this one, never the other way round (not even for type hints).
    """

    streams: int
    schedule: str
    ops: Sequence[_Op]
    fork: bool
    join: Sequence[str]
    to_caller: Sequence[str]

    @property
    def lanes(self) -> tuple[tuple[str, ...], ...]: ...


_START, _END = ("<start>",), ("<end>",)


def find_problems(program: _Program, plan: Plan, inputs: str) -> list[str]:
    """Everything `StreamProgram.check` finds wrong (an independent happens-before simulation)."""
    problems, index = _enqueue_problems(program, plan)
    if problems:
        return problems
    hb = _happens_before(program, index, problems, inputs)
    if not nx.is_directed_acyclic_graph(hb):
        return [*problems, "the streams wait for each other in a cycle"]
    before = {t: nx.ancestors(hb, t) for t in index}
    joined = nx.ancestors(hb, _END)
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
        if s_of[t] and _START not in before[t]:
            problems.append(f"task {t!r} (stream {s_of[t]}) may start before the fork")
        if t not in joined:
            problems.append(f"task {t!r} (stream {s_of[t]}) is not joined into stream 0")
    if program.schedule == "levels":
        for prev, level in itertools.pairwise(plan.levels):
            problems += [f"levels: task {t!r} may start before {p!r} of the level before ends"
                         for t in level for p in prev if p not in before[t]]  # fmt: skip
    problems += _unmarked(program, plan, index, s_of)
    return problems


def _enqueue_problems(program: _Program, plan: Plan) -> tuple[list[str], dict[str, int]]:
    """Each plan task enqueued once, on a stream that exists; and each op's position."""
    problems: list[str] = []
    index: dict[str, int] = {}
    for i, op in enumerate(program.ops):
        if op.task in index:
            problems.append(f"task {op.task!r} is enqueued twice")
        if not 0 <= op.stream < program.streams:
            problems.append(f"task {op.task!r} is on stream {op.stream} of {program.streams}")
        index[op.task] = i
    problems += [f"task {t!r} is never enqueued" for t in sorted(set(plan.tasks) - set(index))]
    problems += [f"task {t!r} is not in the plan" for t in sorted(set(index) - set(plan.tasks))]
    return problems, index


def _happens_before(
    program: _Program, index: Mapping[str, int], problems: list[str], inputs: str
) -> nx.DiGraph:
    """Stream order plus an edge per event wait that is sound; appends the waits that are not."""
    hb = nx.DiGraph()
    for s, lane in enumerate(program.lanes):
        nx.add_path(hb, [_START, *lane, _END] if s == 0 else lane)

    def event_edge(event: str, dst: Any, at: int, what: str) -> None:
        if event == inputs:  # the fork event
            if not program.fork:
                problems.append(f"{what} waits for the fork event, which is never recorded")
            hb.add_edge(_START, dst)
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
        event_edge(w, _END, len(program.ops), "the join")
    return hb


def _unmarked(
    program: _Program, plan: Plan, index: Mapping[str, int], s_of: Mapping[str, int]
) -> list[str]:
    """Values read on another stream than their own without ``record_stream`` there first."""
    made_on = {v: s_of[plan.task_of[v]] if v in plan.task_of else 0 for v in plan.consumers}
    first_mark: dict[tuple[str, int], int] = {}
    for i, op in enumerate(program.ops):
        for v in op.record_stream:
            first_mark.setdefault((v, op.stream), i)
    problems = []
    for t, task in plan.tasks.items():
        s = s_of[t]
        for v in task.inputs:
            if made_on[v] != s and first_mark.get((v, s), len(program.ops)) > index[t]:
                problems.append(
                    f"value {v!r} (made on stream {made_on[v]}) is read by {t!r} on stream {s} "
                    "without record_stream"
                )
    for v in dict.fromkeys(r.node for r in plan.graph.output_refs()):
        if v in plan.task_of and s_of[plan.task_of[v]] and v not in program.to_caller:
            problems.append(f"output {v!r} is made on a side stream without record_stream(s0)")
    return problems
