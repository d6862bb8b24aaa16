"""Import an existing ``nn.Module`` as a `Graph`, through ``torch.fx``.

What it decides
---------------
* **Tracing.** ``torch.fx`` symbolic tracing with its default leaves (modules of ``torch.nn``)
  plus any modules named in ``leaves=`` (qualified names or types): naming a whole branch
  makes it one node (coarser granularity). An already-traced ``fx.GraphModule`` (HF
  transformers, timm and others trace with their own tracers; Dynamo hands its graphs to
  `graphexec.dynamo` as ones) is taken as it is, every placeholder a graph input. A
  ``torch.export.ExportedProgram`` is taken through its ``.module()``.
* **Defaults.** ``forward(x, scale=2.0)`` traces to a graph of ``x`` alone: arguments with a
  default are fixed to it (fx's ``concrete_args``, so ``if flag:`` on them traces too) and
  their placeholders and specialisation asserts are dropped. ``concrete_args={"scale": 3.0}``
  fixes another value; ``concrete_args={"scale": torch.fx.PH}`` keeps one as a (required)
  graph input. Data-dependent control flow raises `UntraceableError`, naming the submodule.
* **Export's bookkeeping.** Guards (``_guards_fn``) and assertion nodes (``_assert_scalar``,
  ``_assert_tensor_metadata``, ``sym_constrain_range*``) that read only graph inputs and
  shape arithmetic are taken out of the model's nodes and run together as one cheap first
  node, ``check_inputs``, which every partition without a producer waits for (``after=``):
  the checks run once per call, before any model code, as in the exported module.
  Assertions on intermediate values run inside the partition of the value they check (nobody
  reads them: a partition of their own would be dropped as dead).
* **Partitions.** Each leaf-module call starts a partition. In aten-level graphs (export,
  Dynamo) there are no ``call_module`` nodes: a node belongs to the call of the outermost
  leaf module in its ``nn_module_stack`` meta (a ``torch.nn`` module other than
  ``Sequential``, or one named in ``leaves=``), and a contiguous run of nodes of one call is
  one partition, named by the module's path (``a.0``). A function or method node joins the
  partition of its producer when all its inputs come from one partition (``relu`` after
  ``conv``, ``flatten`` after ``pool``); otherwise it joins the partition of its consumers when
  they all sit in one (``cat`` of inception branches runs inside the next conv's node); else
  it is a node of its own (cheap: the planner runs it inline). Each partition becomes one graph
  node whose callable is a small ``fx.GraphModule`` sharing the original module objects, so
  parameters are the model's own. Nodes that no output needs and that write nothing (the
  tracer makes ``getattr`` nodes for shapes no one reads) are dropped quietly first.
* **In-place hazards.** Alias roots are tracked through in-place ops (``add_``, ``relu_``,
  ``masked_fill_``, ``copy_``, ``x[i] = v``, modules and functions with ``inplace=True``, aten
  ops whose schema writes an argument) and views (``view``, ``transpose``, ``__getitem__``,
  aten ops whose schema returns an alias, ...). For every in-place node, each other
  reader of the same root is ordered before or after it as program order says; those
  orderings become ``after=`` edges between partitions, and mutating partitions are marked so
  they are never dropped. If folding would contradict an ordering (a cycle), function nodes
  get partitions of their own instead, which is always consistent.
* **Thread-local state.** A graph that switches grad mode or autocast between its nodes
  (Dynamo writes ``torch._C._set_grad_enabled`` for a ``with torch.no_grad():`` inside
  ``forward``) cannot be split across threads: `GraphError` naming the node.
* **Transform levels.** Dynamo and export write a ``torch.vmap`` inside ``forward`` (as
  transformers 4.5x builds GPT-2's attention mask) as calls that push and pop a functorch
  level (``_vmap_increment_nesting`` ... ``_vmap_decrement_nesting``, thread-local) around
  batched tensors that must not leave the level, with level numbers written in as constants.
  fx counts neither call as a side effect, and nobody reads their results: the span from the
  first push to its matching pop (and the ``lazy_load_decompositions`` before it) is kept
  whole and becomes one partition, run on one thread like any partition.
"""

from __future__ import annotations

import inspect
import operator
import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import GraphError
from .fx_partition import (
    Leaves,
    build_graph,
    hazard_pairs,
    leaf_calls,
    live_nodes,
    partition,
    partition_order,
    qualname,
)
from .graph import Graph

__all__ = ["UntraceableError", "trace"]


def _aten(*names: str) -> set[Any]:
    ops = (getattr(torch.ops.aten, n) for n in names if hasattr(torch.ops.aten, n))
    return {getattr(op, o) for op in ops for o in op.overloads()}


#: Export's checks on its inputs (with ``_guards_fn`` modules): run in ``check_inputs``.
_CHECKS = _aten("_assert_scalar", "_assert_tensor_metadata", "sym_constrain_range",
                "sym_constrain_range_for_size", "_assert_async")  # fmt: skip
#: What fx writes for a specialised argument (``concrete_args``): dropped with it.
_SPECIALISED = {operator.eq, torch._assert, fx._symbolic_trace._assert_is_none}
#: Calls that switch thread-local state between nodes: such a graph cannot be split up.
_THREAD_STATE = {
    torch._C._set_grad_enabled,
    torch.amp.autocast_mode._enter_autocast,
    torch.amp.autocast_mode._exit_autocast,
}


def _functorch(*names: str) -> set[Any]:
    from torch._functorch import predispatch

    return {getattr(predispatch, n) for n in names if hasattr(predispatch, n)} | {
        getattr(torch._C._functorch, n) for n in names if hasattr(torch._C._functorch, n)
    }


#: Calls that push and pop a functorch transform level (module docstring: transform levels).
_LEVEL_PUSH = _functorch("_vmap_increment_nesting", "_jvp_increment_nesting", "_enter_dual_level")
_LEVEL_POP = _functorch("_vmap_decrement_nesting", "_jvp_decrement_nesting", "_exit_dual_level")
_LEVEL_PREPARE = _functorch("lazy_load_decompositions")


class UntraceableError(GraphError, fx.proxy.TraceError):
    """``torch.fx`` could not trace the module (data-dependent control flow, say); ``node``
    names the submodule where it stopped, if any."""


def trace(
    module: nn.Module | Any,
    *,
    leaves: Iterable[str | type] = (),
    name: str | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> Graph:
    """Trace ``module`` with ``torch.fx`` into a `Graph` of module-sized nodes.

    Parameters
    ----------
    module : nn.Module, torch.fx.GraphModule or torch.export.ExportedProgram
        A module to trace, a GraphModule traced already (used as it is, not re-traced), or
        an exported program (its ``.module()``, with export's checks in ``check_inputs``).
    leaves : iterable of str or type
        Extra leaf modules, by qualified name (``"branch1"``) or type: each becomes one node.
    name : str, optional
        The graph's name (default: the module's class name).
    concrete_args : dict, optional
        Passed to ``torch.fx.Tracer.trace``; arguments with defaults are fixed to them
        unless given here (``torch.fx.PH`` keeps one a graph input).

    Returns
    -------
    Graph
        Inputs are the module's ``forward`` arguments without defaults (for a GraphModule or
        an exported program: its placeholders); outputs have the same structure as the
        module's (tensor, tuple or dict).

    Raises
    ------
    UntraceableError
        If ``torch.fx`` cannot trace ``module`` (data-dependent control flow), naming the
        submodule where tracing stopped.
    GraphError
        If the graph switches grad mode or autocast between nodes, naming that node.

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> class TwoTowers(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
    ...     def forward(self, x, scale=2.0):
    ...         return {"sum": torch.relu(self.a(x)) + scale * self.b(x)}
    >>> g = gx.trace(TwoTowers())
    >>> g.inputs, [n.name for n in g if not n.is_input]
    (('x',), ['a', 'b', 'add'])
    """
    leaf = Leaves(leaves)
    gm, source = _import(module, leaf, concrete_args)
    graph_name = name or _root_name(gm) or type(module).__name__
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in _THREAD_STATE:
            raise GraphError(
                f"node '{n.name}' ({_target_name(n)}) switches grad mode or autocast between "
                "nodes: graphexec runs nodes on several threads and cannot split this graph",
                n.name,
            )
    checks = _input_checks(gm)
    levels = _level_spans(gm)
    live = live_nodes(gm, skip=set(checks), keep=levels)
    nodes = [n for n in gm.graph.nodes
             if n.op not in ("placeholder", "output", "get_attr") and n in live]  # fmt: skip
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    hazards = hazard_pairs(gm, index)
    calls = leaf_calls(nodes, leaf)
    inner = [n for n in nodes if _is_check(n) and not n.users]  # checks on intermediates
    part = partition(nodes, calls, folded=True, together=levels, attached=inner)
    order = partition_order(nodes, part, hazards, index)
    if order is None:  # folding contradicted an in-place ordering: keep functions apart
        part = partition(nodes, calls, folded=False, together=levels, attached=inner)
        order = partition_order(nodes, part, hazards, index)
        assert order is not None, "one node per partition follows program order"
    g = build_graph(gm, graph_name, nodes, part, order, hazards, calls, checks)
    g.source = source  # what `graphexec.plan` measures its plans against
    return g


class _Tracer(fx.Tracer):
    def __init__(self, leaves: Leaves):
        super().__init__()
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (
            qualname in self._leaves.names
            or (bool(self._leaves.types) and isinstance(m, self._leaves.types))
            or super().is_leaf_module(m, qualname)
        )


def _import(module: Any, leaves: Leaves, concrete_args: Any) -> tuple[fx.GraphModule, Any]:
    """The fx graph to partition, and the callable it came from (`Graph.source`)."""
    exported = sys.modules.get("torch.export")
    if exported is not None and isinstance(module, exported.ExportedProgram):
        gm = module.module()
        return gm, gm
    if isinstance(module, fx.GraphModule):
        return module, module
    concrete = _defaults(module, concrete_args)
    tracer = _Tracer(leaves)
    try:
        graph = tracer.trace(module, concrete or None)
    except fx.proxy.TraceError as exc:
        where = _where(module, exc.__traceback__)
        raise UntraceableError(_untraceable(module, exc, where), where and where[0]) from exc
    gm = fx.GraphModule(tracer.root, graph, type(module).__name__)
    if not concrete:
        return gm, module
    _drop_specialised(gm, module, concrete)
    inputs = [n.target for n in gm.graph.nodes if n.op == "placeholder"]

    def source(*args: Any) -> Any:  # the module called as the graph is: the rest fixed
        return module(**dict(zip(inputs, args, strict=False)), **concrete)

    return gm, source


def _defaults(module: nn.Module, concrete_args: dict[str, Any] | None) -> dict[str, Any]:
    """``concrete_args`` with every plain default of ``forward`` it does not name."""
    given = dict(concrete_args or {})
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return given
    plain = (type(None), bool, int, float, str)  # tensors and containers: left as inputs
    fixed = {p.name: p.default for p in params
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and isinstance(p.default, plain) and p.default is not p.empty}  # fmt: skip
    return {k: v for k, v in {**fixed, **given}.items() if v is not fx.PH}


def _drop_specialised(gm: fx.GraphModule, module: nn.Module, concrete: dict[str, Any]) -> None:
    """Remove the placeholders of fixed arguments and the asserts fx wrote for them."""
    params = list(inspect.signature(module.forward).parameters)
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(params) != len(holders):  # *args or pytree concrete_args: leave them
        return
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    for param, holder in zip(params, holders, strict=True):
        below = _closure([holder], lambda n: n.users)
        if param in concrete and all(n.target in _SPECIALISED for n in below):
            for n in sorted(below, key=index.__getitem__, reverse=True):
                gm.graph.erase_node(n)
            gm.graph.erase_node(holder)
    gm.recompile()


def _where(module: nn.Module, tb: Any) -> tuple[str, str, int] | None:
    """The innermost submodule (qualified name, file, line) a traceback ran ``forward`` of."""
    names = {id(m): n for n, m in module.named_modules()}
    where = None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            where = (names[id(owner)], tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return where


def _untraceable(module: nn.Module, exc: Exception, where: tuple[str, str, int] | None) -> str:
    kind = type(module).__name__
    at = f" ({where[1]}:{where[2]})" if where else ""
    if where and where[0]:
        place = f"in submodule '{where[0]}'{at}"
        fix = f"name it in leaves=['{where[0]}'] to run it as one node"
    else:
        place = f"in {kind}.forward{at}"
        fix = "move the branch into a submodule and name it in leaves="
    return (
        f"gx.trace({kind}): torch.fx cannot trace {place}: {exc}. To import it, {fix}; or "
        'use torch.compile(model, backend="graphexec"), which splits the model at the branch; '
        "or gx.trace(torch.export.export(model, args)) with the branch written as torch.cond"
    )


def _closure(start: Iterable[fx.Node], step: Any) -> set[fx.Node]:
    """Every node reachable from ``start`` (not included) by ``step`` (users or inputs)."""
    seen: set[fx.Node] = set()
    todo = list(start)
    while todo:
        for m in step(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def _root_name(gm: fx.GraphModule) -> str | None:
    """The class name of the module an aten graph was exported from (its root stack entry)."""
    for n in gm.graph.nodes:
        for path, cls in (v[:2] for v in (n.meta.get("nn_module_stack") or {}).values()):
            if path == "":
                return (cls if isinstance(cls, str) else qualname(cls)).rsplit(".", 1)[-1]
    return None


def _target_name(n: fx.Node) -> str:
    return getattr(n.target, "__qualname__", None) or str(n.target)


def _level_spans(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """Node -> span number for the nodes from a functorch level's first push to its matching
    pop, in program order (with the ``lazy_load_decompositions`` calls before the push)."""
    spans: dict[fx.Node, int] = {}
    current: list[fx.Node] = []
    depth = 0
    for n in gm.graph.nodes:
        target = n.target if n.op == "call_function" else None
        depth += target in _LEVEL_PUSH
        if depth or target in _LEVEL_PREPARE:
            current.append(n)
        if target in _LEVEL_POP:
            depth -= 1
            if depth == 0:
                number = len(set(spans.values()))
                spans.update((m, number) for m in current if m.op != "placeholder")
                current = []
    return spans


# -- export's checks ----------------------------------------------------------------------------
def _is_check(n: fx.Node) -> bool:
    return (n.op == "call_module" and str(n.target).startswith("_guards_fn")) or (
        n.op == "call_function" and n.target in _CHECKS
    )


def _input_checks(gm: fx.GraphModule) -> list[fx.Node]:
    """Export's guard and assert nodes that read only graph inputs and shape arithmetic
    (nodes whose example value is no tensor), with that arithmetic, in program order."""
    taken: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if not _is_check(n):
            continue
        up = _closure([n], lambda m: m.all_input_nodes)
        if all(a.op in ("placeholder", "get_attr") or _is_check(a)
               or ("val" in a.meta and not isinstance(a.meta["val"], torch.Tensor))
               for a in up):  # fmt: skip
            taken |= up | {n}
    return [n for n in gm.graph.nodes if n in taken and n.op not in ("placeholder", "get_attr")]
