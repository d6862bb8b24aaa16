"""How `graphexec.trace` cuts a traced fx graph into graph nodes: in-place analysis and
partitions (see `graphexec.fx_import` for the decisions, which are documented there).

A partition that is not one module call is a small ``fx.GraphModule`` whose class is named
after what it computes (`_ops_name`: ``add+ReLU``), not a generic "Partition": the class
name is what ``print(graph)``, the plan picture and arity errors show for the node.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from .graph import Graph, Ref

__all__ = ["Leaves", "build_graph", "closure", "concrete_size", "hazard_pairs", "leaf_calls",
           "live_nodes", "partition", "partition_order", "qualname", "symbolic_size"]  # fmt: skip

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


class Leaves:
    """``leaves=``: qualified module names and module types."""

    def __init__(self, leaves: Iterable[str | type]):
        leaves = list(leaves)
        self.names = {x for x in leaves if isinstance(x, str)}
        self.types = tuple(x for x in leaves if isinstance(x, type))
        self.type_names = {qualname(t) for t in self.types}


def qualname(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


# -- in-place analysis ------------------------------------------------------------------------
def _mutated_arg(gm: fx.GraphModule, n: fx.Node) -> fx.Node | None:
    """The node whose tensor ``n`` changes in place, if any."""
    first = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
    if isinstance(n.target, torch._ops.OpOverload):
        return _schema_write(n)
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


def _schema_write(n: fx.Node) -> fx.Node | None:
    """The argument an aten op's schema says it writes (``Tensor(a!) self``), if any."""
    for i, a in enumerate(n.target._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            v = n.args[i] if i < len(n.args) else n.kwargs.get(a.name)
            return v if isinstance(v, fx.Node) else None
    return None


def live_nodes(
    gm: fx.GraphModule, skip: set[fx.Node], keep: Iterable[fx.Node] = ()
) -> set[fx.Node]:
    """The nodes the output needs, every node that writes in place or has another side
    effect (fx's ``is_impure``) and the nodes in ``keep``, with what they read, ``skip`` left
    out. The rest were made by the tracer for nothing (``getattr`` of a shape no one reads,
    say): dropped quietly, where a node a user declared and left unread would get a
    `DeadNodeWarning`."""
    kept = set(keep)
    keep = [n for n in gm.graph.nodes if n not in skip and (
            n in kept or n.op == "output" or _mutated_arg(gm, n) is not None
            or n.is_impure())]  # fmt: skip
    return set(keep) | closure(keep, lambda n: n.all_input_nodes)


def closure(start: Iterable[fx.Node], step: Any) -> set[fx.Node]:
    """Every node reachable from ``start`` (not included) by ``step`` (users or inputs)."""
    seen: set[fx.Node] = set()
    todo = list(start)
    while todo:
        for m in step(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _is_view(n: fx.Node) -> bool:
    if isinstance(n.target, torch._ops.OpOverload):
        schema = n.target._schema
        return not schema.is_mutable and any(r.alias_info is not None for r in schema.returns)
    return (n.op == "call_method" and n.target in _VIEW_METHODS) or (
        n.op == "call_function" and n.target in _VIEW_FUNCTIONS
    )


def hazard_pairs(gm: fx.GraphModule, index: dict[fx.Node, int]) -> list[tuple[fx.Node, fx.Node]]:
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
def leaf_calls(nodes: list[fx.Node], leaves: Leaves) -> dict[fx.Node, tuple[str, str]]:
    """Node -> (call key, module path) of the outermost leaf module whose call made it, by
    ``nn_module_stack`` (aten graphs, where leaf calls are inlined). An fx trace records no
    leaf there: it never traces into one."""
    calls = {}
    for n in nodes:
        if n.op not in ("call_function", "call_method"):
            continue
        for key, entry in (n.meta.get("nn_module_stack") or {}).items():
            path, cls = _module_path(entry[0]), entry[1]
            cls = cls if isinstance(cls, str) else qualname(cls)
            if path and (path in leaves.names or cls in leaves.type_names or _torch_leaf(cls)):
                calls[n] = (key, path)
                break
    return calls


def _module_path(path: str) -> str:
    """``L['self'].layers[0]._modules['fc']`` (Dynamo) -> ``layers.0.fc``; export's as is."""
    path = re.sub(r"^[LG]\['[^']*'\]", "", path)
    path = re.sub(r"(?:\._modules)?\[(?:'([^']*)'|(\d+))\]", lambda m: "." + (m[1] or m[2]), path)
    return path.lstrip(".")


def _torch_leaf(cls: str) -> bool:
    """fx's default leaves: modules of ``torch.nn`` but ``Sequential``."""
    return cls.startswith(("torch.nn.", "torch.ao.nn.")) and not cls.endswith(".Sequential")


def partition(
    nodes: list[fx.Node],
    calls: dict[fx.Node, tuple[str, str]],
    folded: bool,
    together: dict[fx.Node, int] | None = None,
    attached: Iterable[fx.Node] = (),
) -> dict[fx.Node, int]:
    """Node -> partition number. Nodes that ``together`` maps to one number share one
    partition whatever they read (a contiguous span of the program: see
    `graphexec.fx_import`'s transform levels). ``attached`` nodes, which nobody reads (export's
    checks on intermediate values), run in the partition of their input latest in the
    program, so that a partition someone reads runs them."""
    together = together or {}
    attached = set(attached)
    part: dict[fx.Node, int] = {}
    pending: list[fx.Node] = []
    spans: dict[int, int] = {}  # ``together`` number -> its partition
    # The leaf call the previous node belonged to: (key, partition, read only graph inputs so
    # far). Dynamo gives two calls of one module the same key: the next node continues the
    # call if it reads it, reads only graph inputs, or the call so far did (BatchNorm's
    # ``num_batches_tracked.add_(1)`` before its ``batch_norm(x, ...)``).
    run: tuple[str, int, bool] | None = None
    for n in nodes:
        call = calls.get(n)
        if n in attached:
            continue
        if n in together:
            span = together[n]
            part[n], run = spans.setdefault(span, len(part) + len(pending)), None
            continue
        if n.op == "call_module" or not folded:
            part[n], run = len(part) + len(pending), None
            continue
        if call is not None:  # a run of one call's nodes is one partition
            read = [part.get(a, -1) for a in n.all_input_nodes if a in part or a in pending]
            if run is not None and run[0] == call[0] and (not read or run[1] in read or run[2]):
                part[n], run = run[1], (run[0], run[1], run[2] and not read)
            else:
                new = len(part) + len(pending)
                part[n], run = new, (call[0], new, not read)
            continue
        run = None
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
    position = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        if n in attached:
            made = sorted((a for a in n.all_input_nodes if a in part), key=position.__getitem__)
            part[n] = part[made[-1]] if made else max(part.values(), default=-1) + 1
    return part


def partition_order(
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


def build_graph(
    gm: fx.GraphModule,
    graph_name: str,
    nodes: list[fx.Node],
    part: dict[fx.Node, int],
    order: list[int],
    hazards: list[tuple[fx.Node, fx.Node]],
    calls: dict[fx.Node, tuple[str, str]],
    checks: list[fx.Node],
    constants: dict[fx.Node, Any] | None = None,
) -> Graph:
    """The graph: one node per partition (in ``order``), ``check_inputs`` first when there are
    ``checks``. ``constants`` are placeholders whose value export fixed (``None``, numbers):
    no graph input, and partitions read the value in their place."""
    constants = constants or {}
    g = Graph(graph_name)
    value: dict[fx.Node, Ref] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder" and n not in constants:
            value[n] = g.input(n.target.lstrip("*"))
    first = []
    if checks:  # export's checks, once per call, before every partition (module docstring)
        read = list(dict.fromkeys(a for n in checks for a in n.all_input_nodes
                                  if a.op == "placeholder" and a not in constants))  # fmt: skip
        fn = _partition_module(gm, checks, read, [], constants, class_name="InputChecks")
        first = [g.node("check_inputs", fn, *(value[a] for a in read)).node]
    members: dict[int, list[fx.Node]] = {p: [] for p in order}
    for n in nodes:
        members[part[n]].append(n)
    names = _partition_names(members, calls)
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    for p in order:
        group = members[p]
        inside = set(group)
        inputs = list(
            dict.fromkeys(
                a
                for n in group
                for a in n.all_input_nodes
                if a not in inside and a.op != "get_attr" and a not in constants
            )
        )
        outputs = [n for n in group if any(u not in inside for u in n.users)]
        fn = _partition_module(gm, group, inputs, outputs, constants,
                               class_name=_ops_name(gm, group))  # fmt: skip
        after = {names[part[a]] for a, b in hazards if b in inside and a in part and part[a] != p}
        if not any(a in part for a in inputs):
            after.update(first)
        mut = _mutated_positions(gm, group, inputs)
        ref = g.node(names[p], fn, *(value[a] for a in inputs), mutates=mut, after=sorted(after))
        for i, o in enumerate(outputs):
            value[o] = ref if len(outputs) == 1 else ref[i]
    out = _map_output(output_node.args[0], value)
    info = getattr(gm.graph._codegen, "pytree_info", None)  # an exported module's output tree
    if info is not None and info.out_spec is not None:
        out = pytree.tree_unflatten(list(out), info.out_spec)
    g.output(out)
    return g


def _partition_names(
    members: dict[int, list[fx.Node]], calls: dict[fx.Node, tuple[str, str]]
) -> dict[int, str]:
    names: dict[int, str] = {}
    taken: set[str] = set()
    for p, group in members.items():
        module = next((n for n in group if n.op == "call_module" or n in calls), None)
        if module is None:
            base = group[0].name
            if hasattr(nn.ModuleDict, base):  # ``to``, ``float``: `graphexec.GraphModule`
                base += "_"  # registers node modules by name, beside these attributes
        else:
            base = str(module.target) if module.op == "call_module" else calls[module][1]
        name = base if base not in taken else f"{base}#{group[0].name}"
        taken.add(name)
        names[p] = name
    return names


def _ops_name(gm: fx.GraphModule, group: list[fx.Node], most: int = 3) -> str:
    """What a partition computes, as its class name: the module types and functions it calls,
    in order, each once (``add+ReLU``, ``cat+AdaptiveAvgPool2d``; ``+k more`` past ``most``).
    It is what ``print(graph)``, the plan picture and arity errors show for the node.
    """
    ops: list[str] = []
    for n in group:
        if n.op == "call_module":
            ops.append(type(gm.get_submodule(n.target)).__name__)
        elif n.op in ("call_function", "call_method"):
            ops.append(getattr(n.target, "__name__", str(n.target)))
    ops = list(dict.fromkeys(ops))
    more = f"+{len(ops) - most} more" if len(ops) > most else ""
    return "+".join(ops[:most]) + more or "Partition"


def _partition_module(
    gm: fx.GraphModule, group: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node],
    constants: dict[fx.Node, Any], class_name: str = "Partition",
) -> nn.Module:  # fmt: skip
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
        if symbolic_size(a):  # Dynamo's example inputs: a SymInt where a call gives an int
            env[a] = sub.call_function(concrete_size, (env[a],))

    def arg(a: fx.Node) -> Any:
        if a in constants:  # a value export fixed: written into the call
            return constants[a]
        if a not in env and a.op == "get_attr":  # parameters/buffers read by function nodes
            env[a] = sub.node_copy(a)
        return env[a]

    for n in group:
        env[n] = sub.node_copy(n, arg)
    sub.output(env[outputs[0]] if len(outputs) == 1 else tuple(env[o] for o in outputs))
    return _Partition(gm, sub, class_name=class_name)


def symbolic_size(n: fx.Node) -> bool:
    """A placeholder for a size Dynamo made symbolic (``dynamic=True``, or a recompile)."""
    value = n.meta.get("example_value", n.meta.get("val"))
    return n.op == "placeholder" and isinstance(value, torch.SymInt)


def concrete_size(v: Any) -> Any:
    """A symbolic size (``torch.SymInt``: Dynamo hands a backend of a graph with dynamic
    shapes symbolic sizes beside its real example tensors) as the ``int`` it stands for in
    that example; a real call's ``int`` as it is. Aten ops given a ``SymInt`` outside tracing
    raise ``SymIntArrayRef expected to contain only concrete integers``.

    >>> concrete_size(3)
    3
    """
    if not isinstance(v, torch.SymInt):
        return v
    hint = v.node.hint if v.node.has_hint() else None
    if hint is None:
        raise TypeError(
            f"a symbolic size ({v}) with no example value reached a graph input: run the "
            "graph on real sizes (graphexec's torch.compile backend plans on the first call)"
        )
    return int(hint)


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
