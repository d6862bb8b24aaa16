"""Import an existing ``nn.Module`` as a `Graph`, through ``torch.fx``.

What it decides
---------------
* **Tracing.** ``torch.fx`` symbolic tracing with its default leaves (modules of ``torch.nn``)
  plus any modules named in ``leaves=`` (qualified names or types): naming a whole branch
  makes it one node (coarser granularity). An already-traced ``fx.GraphModule`` (HF
  transformers, timm and others trace with their own tracers) is taken as it is.
* **Partitions.** Each leaf-module call starts a partition. A function or method node joins the
  partition of its producer when all its inputs come from one partition (``relu`` after
  ``conv``, ``flatten`` after ``pool``); otherwise it joins the partition of its consumers when
  they all sit in one (``cat`` of inception branches runs inside the next conv's node); else
  it is a node of its own (cheap: the planner runs it inline). Each partition becomes one graph
  node whose callable is a small ``fx.GraphModule`` sharing the original module objects, so
  parameters are the model's own. Nodes that no output needs and that write nothing (the
  tracer makes ``getattr`` nodes for shapes no one reads) are dropped quietly first.
* **In-place hazards.** Alias roots are tracked through in-place ops (``add_``, ``relu_``,
  ``masked_fill_``, ``copy_``, ``x[i] = v``, modules and functions with ``inplace=True``) and
  views (``view``, ``transpose``, ``__getitem__``, ...). For every in-place node, each other
  reader of the same root is ordered before or after it as program order says; those
  orderings become ``after=`` edges between partitions, and mutating partitions are marked so
  they are never dropped. If folding would contradict an ordering (a cycle), function nodes
  get partitions of their own instead, which is always consistent.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn

from .graph import Graph, Ref

__all__ = ["trace"]

_VIEW_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "transpose", "permute", "t", "flatten",
    "unflatten", "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "select", "chunk",
    "split", "unbind", "unfold", "detach", "as_strided", "contiguous", "__getitem__", "T", "mT",
    "diagonal", "movedim", "swapaxes", "real", "imag",
}  # fmt: skip
_VIEW_FUNCTIONS = {
    operator.getitem, torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.t,
    torch.squeeze, torch.unsqueeze, torch.narrow, torch.select, torch.chunk, torch.split,
    torch.unbind, torch.movedim, torch.swapaxes, torch.diagonal, torch.detach,
}  # fmt: skip
_INPLACE_FUNCTIONS = {
    operator.setitem,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
}


def trace(
    module: nn.Module,
    *,
    leaves: Iterable[str | type] = (),
    name: str | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> Graph:
    """Trace ``module`` with ``torch.fx`` into a `Graph` of module-sized nodes.

    Parameters
    ----------
    module : nn.Module or torch.fx.GraphModule
        A module to trace, or a GraphModule traced already (used as it is, not re-traced).
    leaves : iterable of str or type
        Extra leaf modules, by qualified name (``"branch1"``) or type: each becomes one node.
    name : str, optional
        The graph's name (default: the module's class name).
    concrete_args : dict, optional
        Passed to ``torch.fx.Tracer.trace``.

    Returns
    -------
    Graph
        Inputs are the module's ``forward`` arguments; outputs have the same structure as
        the module's (tensor, tuple or dict).

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> class TwoTowers(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         return {"sum": torch.relu(self.a(x)) + self.b(x)}
    >>> g = gx.trace(TwoTowers())
    >>> [n.name for n in g if not n.is_input]
    ['a', 'b', 'add']
    """
    gm = module if isinstance(module, fx.GraphModule) else _trace(module, leaves, concrete_args)
    graph_name = name or type(module).__name__
    live = _live(gm)
    nodes = [n for n in gm.graph.nodes
             if n.op not in ("placeholder", "output", "get_attr") and n in live]  # fmt: skip
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    hazards = _hazards(gm, index)
    part = _partition(nodes, folded=True)
    order = _partition_order(nodes, part, hazards, index)
    if order is None:  # folding contradicted an in-place ordering: keep functions apart
        part = _partition(nodes, folded=False)
        order = _partition_order(nodes, part, hazards, index)
        assert order is not None, "one node per partition follows program order"
    g = _build(gm, graph_name, nodes, part, order, hazards)
    g.source = module  # what `graphexec.plan` measures its plans against
    return g


class _Tracer(fx.Tracer):
    def __init__(self, leaves: Iterable[str | type]):
        super().__init__()
        leaves = list(leaves)
        self._names = {x for x in leaves if isinstance(x, str)}
        self._types = tuple(x for x in leaves if isinstance(x, type))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (
            qualname in self._names
            or (bool(self._types) and isinstance(m, self._types))
            or super().is_leaf_module(m, qualname)
        )


def _trace(module: nn.Module, leaves: Iterable[str | type], concrete_args: Any) -> fx.GraphModule:
    tracer = _Tracer(leaves)
    graph = tracer.trace(module, concrete_args)
    return fx.GraphModule(tracer.root, graph, type(module).__name__)


# -- in-place analysis ------------------------------------------------------------------------
def _mutated_arg(gm: fx.GraphModule, n: fx.Node) -> fx.Node | None:
    """The node whose tensor ``n`` changes in place, if any."""
    first = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
    if n.op == "call_method":
        inplace = n.target.endswith("_") and not n.target.endswith("__")
    elif n.op == "call_function":
        name = getattr(n.target, "__name__", "")
        inplace = (
            n.target in _INPLACE_FUNCTIONS
            or n.kwargs.get("inplace") is True
            or (name.endswith("_") and not name.endswith("__"))
        )
    elif n.op == "call_module":
        inplace = getattr(gm.get_submodule(n.target), "inplace", False) is True
    else:
        inplace = False
    return first if inplace else None


def _live(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes the output needs, and every node that writes in place or has another side
    effect (fx's ``is_impure``), with what they read. The rest were made by the tracer for
    nothing (``getattr`` of a shape no one reads, say): dropped quietly, where a node a user
    declared and left unread would get a `DeadNodeWarning`."""
    keep = [n for n in gm.graph.nodes
            if n.op == "output" or _mutated_arg(gm, n) is not None or n.is_impure()]  # fmt: skip
    live = set(keep)
    while keep:
        for a in keep.pop().all_input_nodes:
            if a not in live:
                live.add(a)
                keep.append(a)
    return live


def _is_view(n: fx.Node) -> bool:
    return (n.op == "call_method" and n.target in _VIEW_METHODS) or (
        n.op == "call_function" and n.target in _VIEW_FUNCTIONS
    )


def _hazards(gm: fx.GraphModule, index: dict[fx.Node, int]) -> list[tuple[fx.Node, fx.Node]]:
    root: dict[fx.Node, fx.Node] = {}
    mutations: list[tuple[fx.Node, fx.Node]] = []  # (mutating node, root it writes)
    for n in gm.graph.nodes:
        target = _mutated_arg(gm, n)
        if target is not None:
            root[n] = root[target]
            mutations.append((n, root[n]))
        elif _is_view(n) and n.args and isinstance(n.args[0], fx.Node):
            root[n] = root[n.args[0]]
        else:
            root[n] = n
    readers: dict[fx.Node, set[fx.Node]] = {}
    for n in gm.graph.nodes:
        for a in n.all_input_nodes:
            readers.setdefault(root[a], set()).add(n)
    edges = []
    for m, r in mutations:
        for reader in readers.get(r, ()):
            if reader is not m and reader.op != "output":
                edges.append((reader, m) if index[reader] < index[m] else (m, reader))
    return edges


# -- partitions -------------------------------------------------------------------------------
def _partition(nodes: list[fx.Node], folded: bool) -> dict[fx.Node, int]:
    part: dict[fx.Node, int] = {}
    pending = []
    for n in nodes:
        if n.op == "call_module" or not folded:
            part[n] = len(part) + len(pending)
            continue
        sources = {part[a] for a in n.all_input_nodes if a in part}
        waiting = any(a in pending for a in n.all_input_nodes)
        if len(sources) == 1 and not waiting:
            part[n] = sources.pop()
        else:
            pending.append(n)
    for n in reversed(pending):  # users first: a run of functions cascades into its consumer
        users = {part.get(u) for u in n.users if u.op != "output"}
        if len(users) == 1 and None not in users and not any(u.op == "output" for u in n.users):
            part[n] = users.pop()
        else:
            part[n] = max(part.values(), default=-1) + 1
    return part


def _partition_order(
    nodes: list[fx.Node],
    part: dict[fx.Node, int],
    hazards: list[tuple[fx.Node, fx.Node]],
    index: dict[fx.Node, int],
) -> list[int] | None:
    """Partitions in a topological order, or None if data and hazard edges form a cycle."""
    dag = nx.DiGraph()
    first: dict[int, int] = {}
    for n in nodes:
        first[part[n]] = min(first.get(part[n], index[n]), index[n])
        dag.add_node(part[n])
        dag.add_edges_from((part[a], part[n]) for a in n.all_input_nodes if a in part)
    dag.add_edges_from((part[a], part[b]) for a, b in hazards if a in part and b in part)
    dag.remove_edges_from(nx.selfloop_edges(dag))
    if not nx.is_directed_acyclic_graph(dag):
        return None
    return list(nx.lexicographical_topological_sort(dag, key=first.__getitem__))


def _build(
    gm: fx.GraphModule,
    graph_name: str,
    nodes: list[fx.Node],
    part: dict[fx.Node, int],
    order: list[int],
    hazards: list[tuple[fx.Node, fx.Node]],
) -> Graph:
    g = Graph(graph_name)
    value: dict[fx.Node, Ref] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            value[n] = g.input(n.target.lstrip("*"))
    members: dict[int, list[fx.Node]] = {p: [] for p in order}
    for n in nodes:
        members[part[n]].append(n)
    names = _partition_names(members, gm)
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    for p in order:
        group = members[p]
        inside = set(group)
        inputs = list(
            dict.fromkeys(
                a
                for n in group
                for a in n.all_input_nodes
                if a not in inside and a.op != "get_attr"
            )
        )
        outputs = [n for n in group if any(u not in inside for u in n.users)]
        fn = _partition_module(gm, group, inputs, outputs)
        after = {names[part[a]] for a, b in hazards if b in inside and a in part and part[a] != p}
        mut = _mutated_positions(gm, group, inputs)
        ref = g.node(names[p], fn, *(value[a] for a in inputs), mutates=mut, after=sorted(after))
        for i, o in enumerate(outputs):
            value[o] = ref if len(outputs) == 1 else ref[i]
    g.output(_map_output(output_node.args[0], value))
    return g


def _partition_names(members: dict[int, list[fx.Node]], gm: fx.GraphModule) -> dict[int, str]:
    names: dict[int, str] = {}
    taken: set[str] = set()
    for p, group in members.items():
        module = next((n for n in group if n.op == "call_module"), None)
        base = str(module.target) if module is not None else group[0].name
        name = base if base not in taken else f"{base}#{group[0].name}"
        taken.add(name)
        names[p] = name
    return names


def _partition_module(
    gm: fx.GraphModule, group: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node]
) -> nn.Module:
    only = group[0]
    if (
        len(group) == 1
        and only.op == "call_module"
        and not only.kwargs
        and list(only.args) == inputs
    ):
        return gm.get_submodule(only.target)  # the user's own module object, called as is
    sub = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for a in inputs:
        env[a] = sub.placeholder(a.name)

    def arg(a: fx.Node) -> fx.Node:
        if a not in env and a.op == "get_attr":  # parameters/buffers read by function nodes
            env[a] = sub.node_copy(a)
        return env[a]

    for n in group:
        env[n] = sub.node_copy(n, arg)
    sub.output(env[outputs[0]] if len(outputs) == 1 else tuple(env[o] for o in outputs))
    return _Partition(gm, sub, class_name="Partition")


class _Partition(fx.GraphModule):
    """A piece of the traced graph as one node. graphexec made it and hooks nothing on it,
    so generated programs call its ``forward`` directly (`graphexec.codegen.direct_call`)."""

    graphexec_direct = True


def _mutated_positions(
    gm: fx.GraphModule, group: list[fx.Node], inputs: list[fx.Node]
) -> list[int]:
    """Positions of inputs whose tensor (or a view of it) this partition changes in place."""
    written: set[fx.Node] = set()
    alias: dict[fx.Node, fx.Node] = {a: a for a in inputs}
    for n in group:
        target = _mutated_arg(gm, n)
        if target is not None and target in alias:
            written.add(alias[target])
            alias[n] = alias[target]
        elif _is_view(n) and n.args and n.args[0] in alias:
            alias[n] = alias[n.args[0]]
    return [i for i, a in enumerate(inputs) if a in written]


def _map_output(spec: Any, value: dict[fx.Node, Ref]) -> Any:
    if isinstance(spec, fx.Node):
        return value[spec]
    if isinstance(spec, dict):
        return {k: _map_output(v, value) for k, v in spec.items()}
    if isinstance(spec, list | tuple):
        items = [_map_output(v, value) for v in spec]
        return items if isinstance(spec, list) else tuple(items)
    return spec
