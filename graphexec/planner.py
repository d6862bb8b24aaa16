"""The planner: from a `Graph` to a frozen, printable `Plan` of tasks grouped by depth.

What it decides, in order
-------------------------
1. **Program order and hazards.** A topological order that follows insertion order where it
   can is the graph's program order. For every node that mutates an input in place, every
   other reader of the same tensor (found through earlier in-place results, which alias their
   input) is ordered before or after it as program order says, by an extra edge. Outputs are
   collected after every task has finished, so they always see every write. After fusion
   (step 5), the tasks touching one written tensor are merged into one task that runs them in
   program order: without shared memory (Dask), a write could not reach another task's copy.
2. **Liveness.** Nodes that no output depends on are reported (`DeadNodeWarning`) and left out,
   except mutating nodes, which always run.
3. **Chain fusion.** An edge ``u -> v`` where ``u`` has one consumer and ``v`` one producer
   joins them in one task: a straight chain inside a branch is one dispatch, not one barrier
   per layer. Fusion never removes parallelism: nothing else could run between them.
4. **Costs.** Each node gets a cost in seconds: measured (``example_inputs=``: median of a few
   sequential timed runs, under ``no_grad``) or estimated from its parameter count (merge ops
   and parameter-free callables count as cheap). Estimates rank; measurements decide.
5. **Cheap tasks.** A task cheaper than ``inline_below`` is not worth a thread hand-off. If all
   its consumers are one task it is folded into that task (merge ops run inside the node that
   reads them); otherwise it is marked ``inline`` and runs on the scheduling thread.
6. **Levels and bounds.** Topological generations of the task DAG (ties broken by program order,
   so lanes and pictures are reproducible); work (sum of costs), span (the costliest path),
   the critical path, and the Amdahl bound work/span: the best speedup any executor can reach.
7. **Freeing.** For each value, the tasks that read it (``consumers``: executors free a value
   when the last of them is done) and, in sequential order, the task of its last use.

The plan holds names only (plus the graph); executors look callables up in ``plan.graph``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx
import torch

from .errors import ArityError, DeadNodeWarning
from .graph import Graph, Node, Ref, lexicographic_order
from .merge import is_cheap

__all__ = ["Plan", "Task", "plan"]

#: Below this many seconds a task is not worth a thread hand-off (measured here: 20-50 µs).
INLINE_BELOW = 50e-6
#: Assumed throughput of the cost estimate: 64 rows at 20 GFLOP/s, 2 FLOPs per parameter.
_EST_ROWS, _EST_FLOPS = 64, 20e9
_EST_CHEAP, _EST_FUNCTION = 1e-6, 10e-6
#: A convolution's work is its parameters times its output pixels: assume 14 x 14 of them.
_EST_PIXELS = 196


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
    #: Why the plan runs inline although levels have several tasks (measured: overlap loses).
    serial_reason: str | None = None
    #: Task name -> compiled callable (``backend=`` of `plan`); None runs every task eagerly.
    compiled: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] | None = field(
        default=None, repr=False
    )
    #: Horizontal fusion: one line per group of identical modules found, fused or not and why.
    fusion: tuple[str, ...] = ()

    @property
    def amdahl(self) -> float:
        """work / span: the speedup bound of any schedule with unlimited lanes."""
        return self.work / self.span if self.span > 0 else 1.0

    @property
    def max_width(self) -> int:
        """The most tasks worth dispatching at one level."""
        return max((sum(not self.tasks[t].inline for t in lv) for lv in self.levels), default=0)

    @property
    def parallel(self) -> bool:
        """False when no two dispatchable tasks can ever run at once, or when measurements
        say overlapping them loses to running them one by one with every core: run inline."""
        return self.max_width > 1 and self.serial_reason is None

    def __repr__(self) -> str:
        return (
            f"Plan({self.graph.name!r}: {sum(len(t.nodes) for t in self.tasks.values())} nodes "
            f"in {len(self.tasks)} tasks, {len(self.levels)} levels, amdahl {self.amdahl:.2f}x)"
        )

    def __str__(self) -> str:
        how = "measured" if self.measured else "estimated from parameters"
        n_nodes = sum(len(t.nodes) for t in self.tasks.values())
        rows = [
            f"Plan '{self.graph.name}': {n_nodes} nodes in {len(self.tasks)} tasks, "
            f"{len(self.levels)} levels (costs {how})",
            f"{'level':>5}  {'cost':>9}  tasks (cost; * critical path, ~ inline)",
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
        rows.append(
            f"work {format_seconds(self.work)}, span {format_seconds(self.span)}, "
            f"amdahl bound {self.amdahl:.2f}x, widest level {self.max_width} dispatched tasks"
            + (
                ""
                if self.parallel or self.serial_reason
                else " -> runs inline (nothing to overlap)"
            )
        )
        if self.serial_reason:
            rows.append(f"runs inline: {self.serial_reason}")
        rows.extend(f"horizontal fusion: {line}" for line in self.fusion)
        rows.append("critical path: " + " -> ".join(self.critical_path))
        if self.hazard_edges:
            rows.append(
                "in-place ordering: " + ", ".join(f"{a} before {b}" for a, b in self.hazard_edges)
            )
        if self.dead:
            rows.append("not run (no output depends on them): " + ", ".join(self.dead))
        return "\n".join(rows)

    def draw(self, path: str | None = None, **kwargs: Any) -> Any:
        """Draw the plan level by level (see `graphexec.viz.draw_plan`)."""
        from .viz import draw_plan

        return draw_plan(self, path, **kwargs)

    def to_dot(self) -> str:
        """Graphviz DOT text of the plan (see `graphexec.viz.plan_to_dot`)."""
        from .viz import plan_to_dot

        return plan_to_dot(self)


def plan(
    graph: Graph,
    example_inputs: Sequence[Any] | None = None,
    *,
    inline_below: float = INLINE_BELOW,
    fuse_chains: bool = True,
    repeats: int = 3,
    hfuse: bool | str = "auto",
    backend: str = "eager",
) -> Plan:
    """Plan a graph: validate it, order in-place hazards, fuse chains, cost and level the tasks.

    Parameters
    ----------
    graph : Graph
        A complete graph (outputs declared).
    example_inputs : sequence, optional
        Positional graph inputs. When given, each node is timed (median of ``repeats`` runs
        after one warm-up, under ``torch.no_grad``) and costs are seconds measured here;
        otherwise they are estimated from parameter counts.
    inline_below : float
        Tasks cheaper than this many seconds are folded into their consumer or run inline.
    fuse_chains : bool
        Fuse straight chains into one task (default). Off: one task per node.
    repeats : int
        Timed runs when measuring.
    hfuse : {"auto", True, False}
        Horizontal fusion (`graphexec.hfuse`): same-level nodes with identical module
        structure run as one batched call. ``"auto"`` (default): with ``example_inputs``, fuse
        the groups whose members measure below `graphexec.hfuse.FUSE_MEMBER_BELOW` (small
        members: overhead-bound); without them, fuse nothing. ``True``: fuse every group (by
        the same rule when measured). The plan then runs the fused graph (``plan.graph``),
        which shares the original modules and parameters; ``plan.fusion`` says what was
        fused and why.
    backend : {"eager", "inductor", "onnxruntime"}
        Compile each dispatched task (`graphexec.backends.compile_plan`; needs
        ``example_inputs``). ``"onnxruntime"`` is inference-only.

    Returns
    -------
    Plan

    Raises
    ------
    GraphError
        Any of its subclasses, naming the node, if the graph is wrong (see `Graph.validate`),
        or `ArityError` if ``example_inputs`` has the wrong length.

    Examples
    --------
    >>> import torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("diamond")
    >>> x = g.input("x")
    >>> a = g.node("a", nn.Linear(512, 512), x)
    >>> b = g.node("b", nn.Linear(512, 512), x)
    >>> g.output(g.node("sum", gx.add(), a, b))
    >>> p = gx.plan(g)
    >>> p.levels
    (('a', 'b'), ('sum',))
    >>> p.tasks["sum"].inline  # a merge op is not worth a thread hand-off
    True
    >>> gx.plan(g, inline_below=1.0).levels  # everything cheap: one task, run inline
    (('a..sum',),)
    """
    with _no_gc():
        return _plan(graph, example_inputs, inline_below, fuse_chains, repeats, hfuse, backend)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Planning allocates ~10 objects per node and frees nothing cyclic: the collector's full
    passes over the graph cost a third of a 100k-node plan. Restored on every path."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _plan(
    graph: Graph,
    example_inputs: Sequence[Any] | None,
    inline_below: float,
    fuse_chains: bool,
    repeats: int,
    hfuse: bool | str,
    backend: str,
) -> Plan:
    graph.validate()
    if hfuse not in (True, False, "auto"):
        raise ValueError(f"hfuse must be True, False or 'auto', got {hfuse!r}")
    fusion: list[str] = []
    if hfuse is True or (hfuse == "auto" and example_inputs is not None):
        graph = _fuse_horizontally(graph, example_inputs, fusion)
    if backend != "eager":
        if example_inputs is None:
            raise ValueError(f"backend={backend!r} compiles tasks for example_inputs: give them")
        from .backends import compile_plan

        eager_plan = plan(graph, example_inputs, inline_below=inline_below,
                          fuse_chains=fuse_chains, repeats=repeats, hfuse=False)  # fmt: skip
        eager_plan = dataclasses.replace(eager_plan, fusion=tuple(fusion))
        return dataclasses.replace(
            eager_plan, compiled=compile_plan(eager_plan, backend, example_inputs)
        )
    order = graph.program_order()
    hazards = _hazard_edges(graph, order)
    pred: Mapping[str, Sequence[str]] = graph.deps()  # the DAG as flat lists: fast
    if hazards:
        pred = {n: list(ds) for n, ds in pred.items()}
        for a, b in hazards:
            pred[b].append(a)
    live, dead = _live_nodes(graph, pred)
    if dead:
        warnings.warn(
            f"graph '{graph.name}': no output depends on {', '.join(dead)}; they will not run",
            DeadNodeWarning,
            stacklevel=3,
        )
    nodes = graph.nodes
    compute = [n for n in order if n in live and not nodes[n].is_input]
    dag = _Dag(compute, pred)
    costs_1: dict[str, float] | None = None
    if example_inputs is not None:
        costs = _measure(graph, compute, example_inputs, repeats)
        if torch.get_num_threads() > 1:  # what a pool thread (one intra-op thread) would take
            costs_1 = _measure(graph, compute, example_inputs, repeats, threads=1)
    else:
        costs = {n: _estimate(graph.nodes[n]) for n in compute}
    position = {n: i for i, n in enumerate(order)}
    groups = _fuse_chains(dag) if fuse_chains else [[n] for n in compute]
    groups = _fold_cheap(dag, groups, costs, inline_below, position)
    groups = _isolate_mutations(graph, dag, groups, position)
    p = _assemble(
        graph,
        dag,
        groups,
        costs,
        position,
        hazards,
        dead,
        inline_below,
        measured=example_inputs is not None,
    )
    if fusion:
        p = dataclasses.replace(p, fusion=tuple(fusion))
    if costs_1 is not None and p.max_width > 1:
        reason = _concurrency_pays(p, costs_1)
        if reason is None:  # the estimate says overlap pays: check it on the real thing
            reason = _overlap_trial(p, example_inputs, max(1, repeats))
        p = dataclasses.replace(p, serial_reason=reason)
    return p


# -- steps ------------------------------------------------------------------------------------
def _fuse_horizontally(
    graph: Graph, example_inputs: Sequence[Any] | None, notes: list[str]
) -> Graph:
    """The graph with small identical same-level modules fused (`graphexec.hfuse`)."""
    from .hfuse import has_candidates, horizontal_fuse

    if not has_candidates(graph):  # the common case: nothing to measure or rewrite
        return graph
    costs = None
    if example_inputs is not None:
        compute = [n for n in graph.program_order() if not graph.nodes[n].is_input]
        costs = _measure(graph, compute, example_inputs, repeats=1)
    return horizontal_fuse(graph, example_inputs, costs=costs, notes=notes)


class _Dag:
    """The compute nodes' dependencies as flat lists (networkx is too slow for 100k nodes).

    ``nodes`` are in program order; ``pred``/``succ`` hold only edges between them.
    """

    def __init__(self, nodes: list[str], pred: Mapping[str, Sequence[str]]):
        self.nodes = nodes
        inside = set(nodes)
        self.pred = {n: [p for p in pred[n] if p in inside] for n in nodes}
        self.succ: dict[str, list[str]] = {n: [] for n in nodes}
        for n in nodes:
            for p in self.pred[n]:
                self.succ[p].append(n)

    def edges(self) -> Iterator[tuple[str, str]]:
        return ((p, n) for n in self.nodes for p in self.pred[n])


def _generations(order: Sequence[str], pred: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Depth levels (``networkx.topological_generations``) of items in a topological order."""
    depth: dict[str, int] = {}
    levels: list[list[str]] = []
    for t in order:
        d = max((depth[p] + 1 for p in pred[t]), default=0)
        depth[t] = d
        if d == len(levels):
            levels.append([])
        levels[d].append(t)
    return levels


def _alias_root(graph: Graph, ref: Ref) -> str:
    """The node whose tensor ``ref`` is: an in-place node's output aliases its mutated input."""
    node = graph.nodes[ref.node]
    while node.mutates and ref.index is None:
        ref = node.inputs[node.mutates[0]]
        node = graph.nodes[ref.node]
    return node.name


def _hazard_edges(graph: Graph, order: list[str]) -> list[tuple[str, str]]:
    mutators = [graph.nodes[n] for n in order if graph.nodes[n].mutates]
    if not mutators:
        return []
    position = {n: i for i, n in enumerate(order)}
    deps = graph.deps()
    readers: dict[str, set[str]] = {}
    for name in order:
        for ref in graph.nodes[name].inputs:
            readers.setdefault(_alias_root(graph, ref), set()).add(name)
    edges: set[tuple[str, str]] = set()
    for m in mutators:
        for i in m.mutates:
            root = _alias_root(graph, m.inputs[i])
            for r in readers.get(root, ()):
                if r == m.name or r in deps[m.name] or m.name in deps[r]:
                    continue
                edges.add((r, m.name) if position[r] < position[m.name] else (m.name, r))
    return sorted(edges, key=lambda e: (position[e[0]], position[e[1]]))


def _live_nodes(graph: Graph, deps: Mapping[str, list[str]]) -> tuple[set[str], tuple[str, ...]]:
    keep = {r.node for r in graph.output_refs()} | {n.name for n in graph if n.mutates}
    live, stack = set(keep), list(keep)
    while stack:  # one reverse walk for all outputs, not one ancestors() per output
        for pred in deps[stack.pop()]:
            if pred not in live:
                live.add(pred)
                stack.append(pred)
    dead = tuple(n.name for n in graph if n.name not in live and not n.is_input)
    return live, dead


def _fuse_chains(dag: _Dag) -> list[list[str]]:
    head: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for n in dag.nodes:  # program order
        preds = dag.pred[n]
        h = head[preds[0]] if len(preds) == 1 and len(dag.succ[preds[0]]) == 1 else n
        head[n] = h
        groups.setdefault(h, []).append(n)
    return list(groups.values())


def _fold_cheap(
    dag: _Dag,
    groups: list[list[str]],
    costs: Mapping[str, float],
    inline_below: float,
    position: Mapping[str, int],
) -> list[list[str]]:
    """Fold each cheap group whose consumers all sit in one group into that group.

    Safe: if every edge out of T enters C, any path from T passes through C first, so
    merging T into C cannot close a cycle. Reverse topological order lets runs of cheap
    groups (merge -> reshape -> ...) cascade into the consumer.
    """
    owner = {n: i for i, g in enumerate(groups) for n in g}
    members = {i: list(g) for i, g in enumerate(groups)}
    for i in sorted(members, key=lambda i: -position[groups[i][0]]):
        g = members[i]
        if sum(costs[n] for n in g) >= inline_below:
            continue
        targets = {owner[s] for n in g for s in dag.succ[n]} - {i}
        if len(targets) != 1:
            continue
        (j,) = targets
        members[j] = sorted(members[j] + g, key=position.__getitem__)
        for n in g:
            owner[n] = j
        del members[i]
    return sorted(members.values(), key=lambda g: position[g[0]])


def _isolate_mutations(
    graph: Graph, dag: _Dag, groups: list[list[str]], position: Mapping[str, int]
) -> list[list[str]]:
    """Merge tasks so that every tensor written in place is made, read and written in one task.

    Ordering edges suffice where tasks share memory (threads), but a Dask worker gets its own
    copy of a task's inputs, so a write in one task would never reach a reader in another.
    For each written tensor, the tasks touching it and every task on a path between two of
    them (the convex hull, so contracting it cannot close a cycle) become one task, whose
    nodes run in program order: exactly what eager PyTorch does.
    """
    touched: dict[str, set[str]] = {}
    for n in dag.nodes:
        node = graph.nodes[n]
        for i in node.mutates:
            touched.setdefault(_alias_root(graph, node.inputs[i]), set())
    if not touched:
        return groups
    for n in dag.nodes:
        for ref in graph.nodes[n].inputs:
            root = _alias_root(graph, ref)
            if root in touched:
                touched[root].add(n)
    for root, nodes in touched.items():
        if root in dag.pred:
            nodes.add(root)
    owner = {n: i for i, g in enumerate(groups) for n in g}
    members = {i: list(g) for i, g in enumerate(groups)}
    changed = True
    while changed:
        changed = False
        tdag = nx.DiGraph()
        tdag.add_nodes_from(members)
        tdag.add_edges_from((owner[u], owner[v]) for u, v in dag.edges() if owner[u] != owner[v])
        for nodes in touched.values():
            spanned = {owner[n] for n in nodes}
            if len(spanned) < 2:
                continue
            below = set().union(*(nx.descendants(tdag, t) for t in spanned))
            above = set().union(*(nx.ancestors(tdag, t) for t in spanned))
            hull = spanned | (below & above)
            keep = min(hull, key=lambda i: position[members[i][0]])
            for i in hull - {keep}:
                members[keep] += members.pop(i)
            members[keep].sort(key=position.__getitem__)
            for n in members[keep]:
                owner[n] = keep
            changed = True
            break  # the task DAG changed: recompute it before the next tensor
    return sorted(members.values(), key=lambda g: position[g[0]])


def _assemble(
    graph: Graph,
    dag: _Dag,
    groups: list[list[str]],
    costs: Mapping[str, float],
    position: Mapping[str, int],
    hazards: list[tuple[str, str]],
    dead: tuple[str, ...],
    inline_below: float,
    measured: bool,
) -> Plan:
    names = [_task_name(g, costs) for g in groups]
    task_of = {n: name for name, g in zip(names, groups, strict=True) for n in g}
    nodes = graph.nodes
    tpred: dict[str, list[str]] = {}  # task -> the tasks it waits for
    readers: dict[str, list[str]] = {}  # value -> the other tasks that read it
    task_inputs: dict[str, list[str]] = {}
    for name, g in zip(names, groups, strict=True):  # one pass over every edge
        waits: list[str] = []
        for n in g:
            for p in dag.pred[n]:
                t = task_of[p]
                if t != name and t not in waits:
                    waits.append(t)
        tpred[name] = waits
        ins: dict[str, None] = {}
        for n in g:
            for ref in nodes[n].inputs:
                v = ref.node
                if v not in ins and task_of.get(v) != name:  # made elsewhere, or a graph input
                    ins[v] = None
                    readers.setdefault(v, []).append(name)
        task_inputs[name] = sorted(ins, key=position.__getitem__) if len(ins) > 1 else list(ins)
    first = {name: position[g[0]] for name, g in zip(names, groups, strict=True)}
    # Program order of tasks: topological, ties broken by where each task starts.
    order = lexicographic_order(names, tpred, first)
    levels = tuple(tuple(sorted(gen, key=first.__getitem__)) for gen in _generations(order, tpred))
    level_of = {t: i for i, lv in enumerate(levels) for t in lv}
    out_values = {r.node for r in graph.output_refs()}
    task_cost = {
        name: sum(costs[n] for n in g) if len(g) > 1 else costs[g[0]]
        for name, g in zip(names, groups, strict=True)
    }
    bottom = _bottom_levels(order, tpred, task_cost)
    tasks: dict[str, Task] = {}
    for name, g in zip(names, groups, strict=True):
        cost = task_cost[name]
        outputs = [n for n in g if n in out_values or n in readers]
        tp = tpred[name]
        tasks[name] = Task(
            name=name,
            nodes=tuple(g),
            level=level_of[name],
            cost=cost,
            inline=cost < inline_below,
            deps=tuple(sorted(tp, key=first.__getitem__) if len(tp) > 1 else tp),
            inputs=tuple(task_inputs[name]),
            outputs=tuple(outputs),
            release=_releases(graph, g, outputs),
            bottom=bottom[name],
        )
    # Program order of tasks: topological, ties broken by where each task starts.
    tasks = {t: tasks[t] for t in order}
    seq_index = {t: i for i, t in enumerate(tasks)}
    consumers = {v: tuple(sorted(r, key=seq_index.__getitem__)) for v, r in readers.items()}
    last_use = {v: c[-1] for v, c in consumers.items() if v not in out_values}
    span, path = _critical_path(tpred, tasks)
    return Plan(
        graph=graph,
        tasks=MappingProxyType(tasks),
        levels=levels,
        node_costs=MappingProxyType(dict(costs)),
        measured=measured,
        work=sum(t.cost for t in tasks.values()),
        span=span,
        critical_path=path,
        consumers=MappingProxyType(consumers),
        last_use=MappingProxyType(last_use),
        hazard_edges=tuple(hazards),
        dead=dead,
        inline_below=inline_below,
        task_of=MappingProxyType(task_of),
    )


def _releases(graph: Graph, group: list[str], outputs: list[str]) -> tuple[tuple[str, ...], ...]:
    if len(group) == 1:  # the common case, fast: the value dies at once unless someone reads it
        return ((),) if outputs else (tuple(group),)
    last = {n: i for i, n in enumerate(group)}  # a value nobody reads dies where it is made
    for i, n in enumerate(group):
        for ref in graph.nodes[n].inputs:
            if ref.node in last:
                last[ref.node] = i
    drop: list[list[str]] = [[] for _ in group]
    for v, i in last.items():
        if v not in outputs:
            drop[i].append(v)
    return tuple(tuple(d) for d in drop)


def _task_name(group: list[str], costs: Mapping[str, float]) -> str:
    if len(group) <= 2:
        return "+".join(group)
    return f"{group[0]}..{group[-1]}"


def _bottom_levels(
    order: list[str], tpred: Mapping[str, list[str]], cost: Mapping[str, float]
) -> dict[str, float]:
    """Each task's cost plus the costliest path after it (``order`` is topological)."""
    after: dict[str, float] = dict.fromkeys(order, 0.0)
    bottom: dict[str, float] = {}
    for t in reversed(order):
        bottom[t] = cost[t] + after[t]
        for p in tpred[t]:
            if bottom[t] > after[p]:
                after[p] = bottom[t]
    return bottom


def _critical_path(
    tpred: Mapping[str, list[str]], tasks: Mapping[str, Task]
) -> tuple[float, tuple[str, ...]]:
    finish: dict[str, float] = {}
    best_pred: dict[str, str | None] = {}
    for t in tasks:  # tasks are in a topological order
        pred = max(tpred[t], key=finish.__getitem__, default=None)
        finish[t] = tasks[t].cost + (finish[pred] if pred else 0.0)
        best_pred[t] = pred
    if not finish:
        return 0.0, ()
    end = max(finish, key=finish.__getitem__)
    path = [end]
    while best_pred[path[-1]] is not None:
        path.append(best_pred[path[-1]])
    return finish[end], tuple(reversed(path))


# -- costs ------------------------------------------------------------------------------------
def _estimate(node: Node) -> float:
    if is_cheap(node.fn):
        return _EST_CHEAP
    params = (
        sum(p.numel() for p in node.fn.parameters()) if isinstance(node.fn, torch.nn.Module) else 0
    )
    if params == 0:
        return _EST_FUNCTION
    rows = _EST_ROWS * (_EST_PIXELS if isinstance(node.fn, _CONV) or _has_conv(node.fn) else 1)
    return 2 * params * rows / _EST_FLOPS


_CONV = (torch.nn.modules.conv._ConvNd,)


def _has_conv(module: torch.nn.Module) -> bool:
    return any(isinstance(m, _CONV) for m in module.modules())


def _measure(
    graph: Graph,
    compute: list[str],
    example_inputs: Sequence[Any],
    repeats: int,
    threads: int | None = None,
) -> dict[str, float]:
    """Median seconds of each node over ``repeats`` sequential runs (after a warm-up run).

    With ``threads``, the calling thread runs with that many intra-op threads meanwhile.
    """
    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return _measure(graph, compute, example_inputs, repeats)
        finally:
            torch.set_num_threads(before)
    if len(example_inputs) != len(graph.inputs):
        raise ArityError(
            f"graph '{graph.name}' takes {len(graph.inputs)} inputs "
            f"({', '.join(graph.inputs)}), example_inputs has {len(example_inputs)}"
        )
    samples: dict[str, list[float]] = {n: [] for n in compute}
    with torch.no_grad():
        for rep in range(repeats + 1):
            env = dict(zip(graph.inputs, example_inputs, strict=True))
            for name in compute:
                node = graph.nodes[name]
                args = [r.resolve(env[r.node]) for r in node.inputs]
                if any(i in node.mutates for i in range(len(args))):
                    args = [
                        a.clone() if isinstance(a, torch.Tensor) and i in node.mutates else a
                        for i, a in enumerate(args)
                    ]
                t0 = time.perf_counter()
                env[name] = node(*args)
                if rep:  # the first run warms caches and allocators
                    samples[name].append(time.perf_counter() - t0)
    return {n: statistics.median(s) for n, s in samples.items()}


#: Overlap is chosen when its estimate is below this share of running tasks one by one.
OVERLAP_GAIN = 0.95


def _concurrency_pays(p: Plan, costs_1: Mapping[str, float]) -> str | None:
    """None if overlapping branches should beat running every task with all cores, else why.

    Torch already spreads one op over every core (intra-op threads). Branch concurrency gives
    each concurrent task one core instead, so it pays only where ops scale badly across
    cores (small ops) or the branches balance well. Estimate both schedules from the measured
    costs: one by one with all threads (the measured ``cost``), against levels whose tasks
    are packed longest-first on one lane per core at one thread each (a lone task keeps all
    threads, as the executors run it on the calling thread).
    """
    lanes = torch.get_num_threads()
    serial = overlap = 0.0
    for level in p.levels:
        here = [p.tasks[t].cost for t in level if p.tasks[t].inline]
        away = [sum(costs_1[n] for n in p.tasks[t].nodes) for t in level
                if not p.tasks[t].inline]  # fmt: skip
        serial += sum(p.tasks[t].cost for t in level)
        if len(away) <= 1:
            overlap += sum(here) + sum(p.tasks[t].cost for t in level if not p.tasks[t].inline)
            continue
        load = [0.0] * lanes
        for c in sorted(away, reverse=True):  # longest processing time first
            load[load.index(min(load))] += c
        overlap += max(load) + sum(here)
    if overlap < OVERLAP_GAIN * serial:
        return None
    return (
        f"overlapping branches on {lanes} one-thread lanes would take ~{format_seconds(overlap)}, "
        f"one by one with {lanes} intra-op threads ~{format_seconds(serial)} (measured); "
        f"overlap must save {1 - OVERLAP_GAIN:.0%} to beat hand-off costs and noise"
    )


def _overlap_trial(p: Plan, example_inputs: Sequence[Any], repeats: int) -> str | None:
    """Run the plan overlapped on threads and inline, interleaved; None if overlap wins.

    Per-node times cannot see what only shows when branches really run together: memory
    bandwidth, and OpenMP worker threads that spin for a while after each parallel region
    (libgomp's default), taking a core from the other lane. Measured here: 8 wide branches
    estimated 0.8x of inline ran 1.2x. So the decision is checked on the real plan.
    """
    from .executors import SequentialExecutor, ThreadExecutor

    samples: dict[str, list[float]] = {"overlap": [], "inline": []}
    with torch.no_grad(), ThreadExecutor() as threads:
        runners = {"overlap": threads, "inline": SequentialExecutor()}
        for rep in range(2 * repeats + 1):
            for name, ex in runners.items():
                t0 = time.perf_counter()
                ex.run(p, *example_inputs)
                if rep:  # the first round warms the pool and the allocator
                    samples[name].append(time.perf_counter() - t0)
    overlap = statistics.median(samples["overlap"])
    inline = statistics.median(samples["inline"])
    if overlap < OVERLAP_GAIN * inline:
        return None
    return (
        f"overlapping branches ran in {format_seconds(overlap)}, one by one with "
        f"{torch.get_num_threads()} intra-op threads in {format_seconds(inline)} (measured on "
        f"the example inputs); overlap must save {1 - OVERLAP_GAIN:.0%} to be chosen"
    )


def format_seconds(seconds: float) -> str:
    """Seconds as a short human string: ``2.00 s``, ``1.50 ms``, ``12.0 µs``."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"
