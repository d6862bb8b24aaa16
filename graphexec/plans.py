r"""What the planner makes: a `Plan` of `Task`\ s, plain frozen data that prints as a table.

A plan holds names only (plus the graph it runs); executors look callables up in
``plan.graph``. `graphexec.planner.arrange` builds plans from a graph and its costs;
`graphexec.plan` (in `graphexec.tune`) also measures costs and records its measured decisions
here (``decisions`` and ``fusion``, records of `graphexec.decisions`; ``one_by_one``,
``thread_budget``, ``compiled``, ``as_is``, ``split``), so ``print(plan)`` says why.
Pictures of a plan are drawn by `graphexec.viz` (``plan.draw()`` is wired there).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .decisions import MODULE, OVERLAP, RECHECK, STEPS, Decision, last
from .graph import Graph
from .units import format_seconds

__all__ = ["Plan", "Split", "Task"]


@dataclass(frozen=True)
class Task:
    """One unit of dispatch: graph nodes run in order, in one call, on one lane.

    Attributes
    ----------
    name : str
        The task key (node names; what traces, pictures and Dask task keys show).
    nodes : tuple of str
        Node names, in the order they run.
    level : int
        Depth in the task DAG (0: depends on graph inputs only).
    cost : float
        Seconds, measured or estimated (see `Plan.measured`).
    inline : bool
        Too cheap to dispatch: run on the scheduling thread.
    deps : tuple of str
        Tasks that must finish first (data or ordering).
    inputs : tuple of str
        Values (node or graph-input names) read from outside the task.
    outputs : tuple of str
        Values produced here that other tasks or the graph outputs read.
    release : tuple of tuple of str
        For each node, the values made inside the task that nothing reads after it: the task
        drops them there, so a long fused chain holds one activation at a time, as eager does.
    """

    name: str
    nodes: tuple[str, ...]
    level: int
    cost: float
    inline: bool
    deps: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    release: tuple[tuple[str, ...], ...] = ()
    #: Cost of the longest path from this task's start to the plan's end: executors start
    #: ready tasks highest first (critical path first, then longest first).
    bottom: float = 0.0


@dataclass(frozen=True)
class Split:
    """Data parallelism: each call's batch split into shards, the plan run on each, merged.

    Plain data (`graphexec.split` decides it, `graphexec.executors.shards` runs it, the
    decision cache stores it as JSON).

    Attributes
    ----------
    shards : int
        Shards per call (``k``): batched inputs are cut with ``torch.tensor_split`` (uneven
        shards are fine); a batch smaller than ``k`` runs in as many shards as it has samples.
    inputs : tuple of (int or None)
        For each graph input, in declaration order, its batch axis; None: passed whole to
        every shard.
    outputs : tuple of (int or None)
        For each leaf of the graph's output structure (``torch.utils._pytree`` order), the
        axis its shards are concatenated along; None: a non-tensor leaf, the same in every
        shard, taken from the first.
    """

    shards: int
    inputs: tuple[int | None, ...]
    outputs: tuple[int | None, ...]

    def words(self, graph: Graph) -> str:
        """What is split and merged, in words (a row of ``print(plan)``)."""
        cut = [f"{n} (axis {a})" for n, a in zip(graph.inputs, self.inputs, strict=True)
               if a is not None]  # fmt: skip
        whole = [n for n, a in zip(graph.inputs, self.inputs, strict=True) if a is None]
        axes = sorted({a for a in self.outputs if a is not None})
        said = (f"each call's batch split into {self.shards} shards: {', '.join(cut)}; outputs "
                f"concatenated along axis {', '.join(map(str, axes))}")  # fmt: skip
        return said + (f"; passed whole to every shard: {', '.join(whole)}" if whole else "")


@dataclass(frozen=True)
class Plan:
    """A graph's schedule: tasks by level, costs, bounds and the freeing table.

    Build one with `graphexec.plan`; print it to read it; executors run it.
    """

    graph: Graph
    tasks: Mapping[str, Task]
    levels: tuple[tuple[str, ...], ...]
    node_costs: Mapping[str, float]
    measured: bool
    work: float
    span: float
    critical_path: tuple[str, ...]
    consumers: Mapping[str, tuple[str, ...]]
    last_use: Mapping[str, str]
    hazard_edges: tuple[tuple[str, str], ...]
    dead: tuple[str, ...]
    inline_below: float
    task_of: Mapping[str, str] = field(repr=False)
    #: Run the tasks one by one on the calling thread although levels have several (measured:
    #: overlap loses, or the module runs as it is); the decision that chose it says why.
    one_by_one: bool = False
    #: Task name -> compiled callable (``backend=`` of `plan`); None runs every task eagerly.
    compiled: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] | None = field(
        default=None, repr=False
    )
    #: Horizontal fusion: a record per group of identical modules found, fused or not and why,
    #: and one for the trial of the fused plan (`graphexec.decisions.Decision`).
    fusion: tuple[Decision, ...] = ()
    #: The measured end-to-end decisions (`graphexec.tune`), a record each: what was tried
    #: against what, the measured seconds, the margin, what was kept; each prints as a line.
    decisions: tuple[Decision, ...] = ()
    #: Set when no plan beat the module the graph was traced from (``graph.source``): local
    #: executors then call it, as it is, instead of running the tasks.
    as_is: Callable[..., Any] | None = field(default=None, repr=False)
    #: The measured thread budget: None runs the plan on the calling thread with the caller's
    #: intra-op threads; an int runs it (its straight-line program, ``as_is``, or the loop that
    #: dispatches its lanes) at that many intra-op threads, on the calling thread with its own
    #: count set for the call and put back, or where that cannot be done for one thread alone,
    #: on a graphexec pool thread at that count (`graphexec.executors.base.BudgetLanes`).
    thread_budget: int | None = None
    #: Seconds per call of this plan as its trial measured it on the example inputs (None when
    #: not measured): what `graphexec.drift` compares later calls with.
    call_seconds: float | None = None
    #: Data parallelism (``data_parallel=`` of `graphexec.plan`): None runs each call whole.
    split: Split | None = None

    @property
    def data_parallel(self) -> int | None:
        """Shards per call when the plan splits the batch (``split.shards``), else None."""
        return None if self.split is None else self.split.shards

    @property
    def amdahl(self) -> float:
        """work / span: the speedup bound of any schedule with unlimited lanes."""
        return self.work / self.span if self.span > 0 else 1.0

    @functools.cached_property  # read on every call (`parallel`); a plan is frozen
    def max_width(self) -> int:
        """The most tasks worth dispatching at one level."""
        return max((sum(not self.tasks[t].inline for t in lv) for lv in self.levels), default=0)

    @property
    def parallel(self) -> bool:
        """False when no two dispatchable tasks can ever run at once, or when measurements
        say overlapping them loses to running them one by one with every core."""
        return not self.one_by_one and self.max_width > 1

    @property
    def one_by_one_why(self) -> str | None:
        """Why the plan runs its tasks one by one although some could overlap: the words of
        the decision that chose it (running the module as it is, or overlap that lost)."""
        if not self.one_by_one:
            return None
        for d in reversed(self.decisions):
            if ((d.step == MODULE and self.as_is is not None) or d.step == OVERLAP
                    or (d.step == RECHECK and d.detail.get("overlap_lost"))):  # fmt: skip
                return str(d.detail.get("why", d.text))
        return None

    def decision(self, step: str) -> Decision | None:
        """The last decision of ``step`` (a name of `graphexec.decisions.STEPS`: ``"thread
        budget"``, ``"overlap"``, ``"module as it is"``, ``"data parallel"``, ...), or None
        when the plan made none; its fields say what was chosen and measured, ``str()`` the
        sentence ``print(plan)`` shows.

        Raises
        ------
        ValueError
            If ``step`` names no step.
        """
        if step not in STEPS:
            raise ValueError(f"Plan.decision: unknown step {step!r} (steps: {', '.join(STEPS)})")
        return last((*self.fusion, *self.decisions), step)

    @property
    def serial_reason(self) -> str | None:
        """`one_by_one_why` under its name before 0.2."""
        return self.one_by_one_why

    def __repr__(self) -> str:
        return (
            f"Plan({self.graph.name!r}: {sum(len(t.nodes) for t in self.tasks.values())} nodes "
            f"in {len(self.tasks)} tasks, {len(self.levels)} levels, amdahl {self.amdahl:.2f}x)"
        )

    def headline(self) -> str:
        """The first line of ``print(plan)`` (and of its picture's title): name and size."""
        how = "measured" if self.measured else "estimated from parameters"
        n_nodes = sum(len(t.nodes) for t in self.tasks.values())
        return (
            f"Plan '{self.graph.name}': {_count(n_nodes, 'node')} in "
            f"{_count(len(self.tasks), 'task')}, {_count(len(self.levels), 'level')} (costs {how})"
        )

    def totals(self) -> str:
        """Work and span, then what bounds a run: the Amdahl bound when tasks overlap, or
        that the plan runs one by one (one task after another) and why in a few words."""
        line = f"work {format_seconds(self.work)}, span {format_seconds(self.span)}"
        if self.parallel:
            return (
                f"{line}, amdahl bound {self.amdahl:.2f}x, widest level "
                f"{_count(self.max_width, 'dispatched task')}"
            )
        if self.as_is is not None:
            return (
                f"{line}; runs the module it was traced from as it is (the levels above are "
                "the best plan; the decision below says why)"
            )
        if self.one_by_one and self.max_width > 1:
            return (
                f"{line}; runs one by one, one task after another on the calling thread, as "
                f"measurements chose (amdahl bound {self.amdahl:.2f}x not used)"
            )
        return f"{line}; runs one by one, one task after another (no two tasks can overlap)"

    def __str__(self) -> str:
        rows = [
            self.headline(),
            f"{'level':>5}  {'work':>9}  tasks (cost; * critical path, ~ inline)",
        ]
        critical = set(self.critical_path)
        for i, level in enumerate(self.levels):
            cells = []
            for name in level:
                t = self.tasks[name]
                mark = ("*" if name in critical else "") + ("~" if t.inline else "")
                fused = f" [{len(t.nodes)} nodes]" if len(t.nodes) > 1 else ""
                cells.append(f"{mark}{name}{fused} ({format_seconds(t.cost)})")
            level_cost = sum(self.tasks[n].cost for n in level)
            rows.append(f"{i:>5}  {format_seconds(level_cost):>9}  " + ", ".join(cells))
        rows.append(self.totals())
        rows += self._decision_rows()
        rows.append("critical path: " + " -> ".join(self.critical_path))
        if self.hazard_edges:
            rows.append(
                "in-place ordering: " + ", ".join(f"{a} before {b}" for a, b in self.hazard_edges)
            )
        if self.dead:
            rows.append("not run (no output depends on them): " + ", ".join(self.dead))
        return "\n".join(rows)

    def _decision_rows(self) -> list[str]:
        """Chain fusion and inline tasks, then the measured decisions, one line each."""
        rows = [f"imported by {self.graph.imported_by}"] if self.graph.imported_by else []
        joined = sum(len(t.nodes) > 1 for t in self.tasks.values())
        inline = sum(t.inline for t in self.tasks.values())
        if joined:
            rows.append(
                f"chain fusion and folding: {_count(joined, 'task')} of several nodes (chains, "
                "and cheap nodes folded into their reader: no parallelism lost)"
            )
        if inline:
            rows.append(
                f"inline: {_count(inline, 'task')} under {format_seconds(self.inline_below)} "
                "(marked ~) run on the calling thread, never dispatched"
            )
        if self.thread_budget is not None:
            rows.append(
                f"thread budget: runs at {self.thread_budget} intra-op "
                f"thread{'s' * (self.thread_budget != 1)} on the calling thread, its own count "
                "set for the call and put back (torch's process default is not changed)"
            )
        if self.split is not None:
            rows.append(f"data parallel: {self.split.words(self.graph)}")
        rows.extend(f"horizontal fusion: {line}" for line in self.fusion)
        rows.extend(f"decision: {line}" for line in self.decisions)
        return rows


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"
