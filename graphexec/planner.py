"""The planner: from a `Graph` and its node costs to a frozen, printable `Plan` by depth.

It is a pure pass: it runs no model and imports no executor, backend or picture code. What
is measured, and every decision that needs a trial on real inputs (horizontal fusion,
overlap, compiled tasks), is made one layer up, in `graphexec.tune` (``gx.plan``).

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
   except mutating nodes, which always run. So are inputs of a declared graph that no output
   depends on (a run takes them and ignores them); an imported graph's inputs are its module's
   arguments, which the module may well ignore, and are not reported.
3. **Chain fusion.** An edge ``u -> v`` where ``u`` has one consumer and ``v`` one producer
   joins them in one task: a straight chain inside a branch is one dispatch, not one barrier
   per layer. Fusion never removes parallelism: nothing else could run between them.
4. **Costs.** Each node gets a cost in seconds: given (measured by `graphexec.tune`) or
   estimated from its parameter count (`estimate`: merge ops and parameter-free callables
   count as cheap). Estimates rank; measurements decide.
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

import dataclasses
import operator
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType

import networkx as nx
import torch

from .dag import bottom_levels, generations, lexicographic_order, longest_path
from .errors import DeadNodeWarning
from .graph import Graph, Node, Ref
from .merge import is_cheap
from .plans import Plan, Task
from .policy import DEFAULT

__all__ = ["Plan", "Task", "arrange", "estimate", "recost"]

#: Assumed throughput of the cost estimate: 64 rows at 20 GFLOP/s, 2 FLOPs per parameter.
_EST_ROWS, _EST_FLOPS = 64, 20e9
_EST_CHEAP, _EST_FUNCTION = 1e-6, 10e-6
#: A convolution's work is its parameters times its output pixels: assume 14 x 14 of them.
_EST_PIXELS = 196


def arrange(
    graph: Graph,
    costs: Mapping[str, float] | None = None,
    *,
    inline_below: float = DEFAULT.inline_below,
    fuse_chains: bool = True,
    warn_dead: bool = True,
) -> Plan:
    """Arrange a graph into tasks and levels for the given node costs; run nothing.

    Parameters
    ----------
    graph : Graph
        A complete graph (outputs declared); validated here.
    costs : mapping of node name to seconds, optional
        Measured costs (`graphexec.tune` times them); without them, costs are estimated
        from parameter counts and the plan says so.
    inline_below : float
        Tasks cheaper than this many seconds are folded into their consumer or run inline.
    fuse_chains : bool
        Fuse straight chains into one task (default). Off: one task per node.
    warn_dead : bool
        Warn (`DeadNodeWarning`) about nodes no output depends on, and about inputs of a
        declared graph (not an imported one) that no output depends on.

    Examples
    --------
    >>> import torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("diamond")
    >>> x = g.input("x")
    >>> a, b = g.node("a", nn.Linear(8, 8), x), g.node("b", nn.Linear(8, 8), x)
    >>> g.output(g.node("sum", gx.add(), a, b))
    >>> arrange(g, {"a": 1e-3, "b": 2e-3, "sum": 1e-6}).critical_path
    ('b', 'sum')
    """
    graph.validate()
    order = graph.program_order()
    hazards = _hazard_edges(graph, order)
    pred: Mapping[str, Sequence[str]] = graph.deps()  # the DAG as flat lists: fast
    if hazards:
        pred = {n: list(ds) for n, ds in pred.items()}
        for a, b in hazards:
            pred[b].append(a)
    live, dead = _live_nodes(graph, pred)
    if dead and warn_dead:
        warnings.warn(
            f"graph '{graph.name}': no output depends on {', '.join(dead)}; they will not run",
            DeadNodeWarning,
            stacklevel=3,
        )
    unread = [n for n in graph.inputs if n not in live]
    if unread and warn_dead and graph.imported_by is None:
        them = "it" if len(unread) == 1 else "them"
        warnings.warn(
            f"graph '{graph.name}': no output depends on input{'s' * (len(unread) > 1)} "
            f"{', '.join(unread)}; a run takes {them} and ignores {them}",
            DeadNodeWarning,
            stacklevel=3,
        )
    inputs = set(graph.inputs)
    compute = [n for n in order if n in live and n not in inputs]
    dag = _Dag(compute, pred)
    measured = costs is not None
    if costs is None:
        costs = _estimates(graph, compute)
    position = {n: i for i, n in enumerate(order)}
    groups = _fuse_chains(dag) if fuse_chains else [[n] for n in compute]
    groups = _fold_cheap(dag, groups, costs, inline_below, position)
    groups = _isolate_mutations(graph, dag, groups, position)
    p = _assemble(graph, dag, groups, costs, position, inline_below, measured)
    return dataclasses.replace(p, hazard_edges=tuple(hazards), dead=dead)


# -- steps ------------------------------------------------------------------------------------
class _Dag:
    """The compute nodes' dependencies as flat lists (networkx is too slow for 100k nodes).

    ``nodes`` are in program order; ``pred``/``succ`` hold only edges between them.
    """

    def __init__(self, nodes: list[str], pred: Mapping[str, Sequence[str]]):
        self.nodes = nodes
        inside = set(nodes)
        self.pred: dict[str, Sequence[str]] = {}
        self.succ: dict[str, list[str]] = {n: [] for n in nodes}
        succ = self.succ
        for n in nodes:
            ps = pred[n]
            if not inside.issuperset(ps):  # a graph input, or a node no output needs
                ps = [p for p in ps if p in inside]
            self.pred[n] = ps
            for p in ps:
                succ[p].append(n)

    def edges(self) -> Iterator[tuple[str, str]]:
        return ((p, n) for n in self.nodes for p in self.pred[n])


def _alias_root(graph: Graph, ref: Ref) -> str:
    """The node whose tensor ``ref`` is: an in-place node's output aliases its mutated input."""
    node = graph.nodes[ref.node]
    while node.mutates and ref.index is None:
        ref = node.inputs[node.mutates[0]]
        node = graph.nodes[ref.node]
    return node.name


def _hazard_edges(graph: Graph, order: list[str]) -> list[tuple[str, str]]:
    nodes = graph.nodes
    mutators = [nodes[n] for n in order if nodes[n].mutates]
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
    pred, succ = dag.pred, dag.succ
    for n in dag.nodes:  # program order
        preds = pred[n]
        if len(preds) == 1 and len(succ[preds[0]]) == 1:
            h = head[n] = head[preds[0]]
            groups[h].append(n)
        else:
            head[n] = n
            groups[n] = [n]
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
    members = dict(enumerate(groups))  # lists replaced when they grow, never changed in place
    heads = [position[g[0]] for g in groups]
    if all(map(operator.lt, heads, heads[1:])):  # as chain fusion leaves them
        backwards: Iterable[int] = range(len(groups) - 1, -1, -1)
    else:
        backwards = sorted(range(len(groups)), key=lambda i: -heads[i])
    succ = dag.succ
    for i in backwards:
        g = members[i]
        if (costs[g[0]] if len(g) == 1 else sum(costs[n] for n in g)) >= inline_below:
            continue
        targets = {owner[s] for n in g for s in succ[n]}
        targets.discard(i)
        if len(targets) != 1:
            continue
        j = targets.pop()
        into = members[j]
        if position[g[-1]] < position[into[0]]:
            members[j] = g + into  # what sorting them would give, without the sort
        else:
            members[j] = sorted(into + g, key=position.__getitem__)
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
    declared = graph.nodes
    for n in dag.nodes:
        node = declared[n]
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
    inline_below: float,
    measured: bool,
) -> Plan:
    names = [_task_name(g) for g in groups]
    task_of = {n: name for name, g in zip(names, groups, strict=True) for n in g}
    tpred, readers, task_inputs = _task_edges(graph, dag, names, groups, task_of, position)
    first = {name: position[g[0]] for name, g in zip(names, groups, strict=True)}
    # Program order of tasks: topological, ties broken by where each task starts.
    order = lexicographic_order(names, tpred, first)
    by_first = first.__getitem__
    levels = tuple(
        tuple(sorted(gen, key=by_first) if len(gen) > 1 else gen)
        for gen in generations(order, tpred)
    )
    level_of = {t: i for i, lv in enumerate(levels) for t in lv}
    out_values = {r.node for r in graph.output_refs()}
    task_cost = {
        name: sum(costs[n] for n in g) if len(g) > 1 else costs[g[0]]
        for name, g in zip(names, groups, strict=True)
    }
    bottom = bottom_levels(order, tpred, task_cost)
    nodes = graph.nodes
    tasks: dict[str, Task] = {}
    for name, g in zip(names, groups, strict=True):
        cost = task_cost[name]
        if len(g) == 1:
            n = g[0]
            outputs = (n,) if n in out_values or n in readers else ()
            release = ((),) if outputs else ((n,),)  # nobody reads it: it dies here
        else:
            outputs = tuple(n for n in g if n in out_values or n in readers)
            release = _releases(nodes, g, outputs)
        tp = tpred[name]
        tasks[name] = Task(
            name=name,
            nodes=tuple(g),
            level=level_of[name],
            cost=cost,
            inline=cost < inline_below,
            deps=tuple(sorted(tp, key=by_first) if len(tp) > 1 else tp),
            inputs=tuple(task_inputs[name]),
            outputs=outputs,
            release=release,
            bottom=bottom[name],
        )
    tasks = {t: tasks[t] for t in order}
    seq_index = {t: i for i, t in enumerate(tasks)}.__getitem__
    consumers = {v: tuple(sorted(r, key=seq_index) if len(r) > 1 else r)
                 for v, r in readers.items()}  # fmt: skip
    last_use = {v: c[-1] for v, c in consumers.items() if v not in out_values}
    span, path = longest_path(tasks, tpred.__getitem__, task_cost.__getitem__)
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
        hazard_edges=(),
        dead=(),
        inline_below=inline_below,
        task_of=MappingProxyType(task_of),
    )


def recost(p: Plan, costs: Mapping[str, float]) -> Plan:
    """``p`` with the same tasks, levels and inline marks, costed by ``costs`` (node name ->
    seconds): each task's cost and bottom level, the work, the span and the critical path, as
    `arrange` computes them (a plan measured at one thread, say, shown at its own times)."""
    task_cost = {name: sum(costs[n] for n in t.nodes) for name, t in p.tasks.items()}
    pred = {name: t.deps for name, t in p.tasks.items()}
    order = list(p.tasks)  # program order: topological
    bottom = bottom_levels(order, pred, task_cost)
    span, path = longest_path(order, pred.__getitem__, task_cost.__getitem__)
    tasks = {name: dataclasses.replace(t, cost=task_cost[name], bottom=bottom[name])
             for name, t in p.tasks.items()}  # fmt: skip
    return dataclasses.replace(p, tasks=MappingProxyType(tasks), work=sum(task_cost.values()),
                               span=span, critical_path=path,
                               node_costs=MappingProxyType(dict(costs)))  # fmt: skip


def _task_edges(
    graph: Graph,
    dag: _Dag,
    names: list[str],
    groups: list[list[str]],
    task_of: Mapping[str, str],
    position: Mapping[str, int],
) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
    """In one pass over every edge: for each task the tasks it waits for, for each value the
    tasks that read it from outside, and each task's inputs in program order."""
    nodes, pred, owner = graph.nodes, dag.pred, task_of.get
    tpred: dict[str, list[str]] = {}
    readers: dict[str, list[str]] = {}
    task_inputs: dict[str, list[str]] = {}
    for name, g in zip(names, groups, strict=True):
        waits: list[str] = []
        ins: dict[str, None] = {}
        for n in g:
            for p in pred[n]:
                t = task_of[p]
                if t != name and t not in waits:
                    waits.append(t)
            for ref in nodes[n].inputs:
                v = ref.node
                if v not in ins and owner(v) != name:  # made elsewhere, or a graph input
                    ins[v] = None
                    if v in readers:
                        readers[v].append(name)
                    else:
                        readers[v] = [name]
        tpred[name] = waits
        task_inputs[name] = sorted(ins, key=position.__getitem__) if len(ins) > 1 else list(ins)
    return tpred, readers, task_inputs


def _releases(
    nodes: Mapping[str, Node], group: list[str], outputs: tuple[str, ...]
) -> tuple[tuple[str, ...], ...]:
    last = {n: i for i, n in enumerate(group)}  # a value nobody reads dies where it is made
    for i, n in enumerate(group):
        for ref in nodes[n].inputs:
            if ref.node in last:
                last[ref.node] = i
    drop: list[list[str]] = [[] for _ in group]
    for v, i in last.items():
        if v not in outputs:
            drop[i].append(v)
    return tuple(tuple(d) for d in drop)


def _task_name(group: list[str]) -> str:
    if len(group) <= 2:
        return "+".join(group)
    return f"{group[0]}..{group[-1]}"


# -- costs ------------------------------------------------------------------------------------
def _estimates(graph: Graph, names: list[str]) -> dict[str, float]:
    """`estimate` of each node, made once per callable: a module shared by many nodes (or one
    merge op) is not walked once per node. The graph holds the callables, so ids stay theirs."""
    nodes = graph.nodes
    by_fn: dict[int, float] = {}
    costs: dict[str, float] = {}
    for n in names:
        node = nodes[n]
        cost = by_fn.get(id(node.fn))
        if cost is None:
            cost = by_fn[id(node.fn)] = estimate(node)
        costs[n] = cost
    return costs


def estimate(node: Node) -> float:
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
