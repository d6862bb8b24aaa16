"""Import an existing ``nn.Module`` as a `Graph`: through ``torch.fx``, else ``torch.export``.

What it decides
---------------
* **What it takes.** An ``nn.Module`` instance, an ``fx.GraphModule``, an
  ``ExportedProgram``, or a plain Python function (``gx.trace(lambda t: t + 1)``: fx traces
  functions as it traces a ``forward``; torch.export takes modules only, so a function fx
  cannot trace is not exported). Anything else (a module's class, a builtin such as
  ``torch.relu``) raises a `TypeError` saying what to pass.
* **The route.** ``gx.trace(model)`` traces with ``torch.fx``. ``gx.trace(model,
  example_inputs=args)`` (``torch.export.export``'s ``args``, and ``example_kwargs`` its
  ``kwargs``) traces with fx where fx can, and otherwise exports the model with that call
  and imports the program (`graphexec.exported`); ``graph.imported_by`` says which route and
  why. Either way ``graph.source`` is the user's own module, called as the graph is: the
  module `graphexec.plan` times its plans against and runs as it is when none beats it.
* **Tracing.** ``torch.fx`` symbolic tracing with its default leaves (modules of ``torch.nn``)
  plus any modules named in ``leaves=`` (qualified names or types): naming a whole branch
  makes it one node (coarser granularity). An already-traced ``fx.GraphModule`` (HF
  transformers, timm and others trace with their own tracers; Dynamo hands its graphs to
  `graphexec.dynamo` as ones) is taken as it is, every placeholder a graph input. A
  ``torch.export.ExportedProgram`` is taken through its ``.module()``, one graph input per
  tensor leaf (a ``None`` argument is none: export fixed it).
* **Defaults.** ``forward(x, scale=2.0)`` traces to a graph of ``x`` alone: arguments with a
  default are fixed to it (fx's ``concrete_args``, so ``if flag:`` on them traces too) and
  their placeholders and specialisation asserts are dropped. With ``example_inputs`` only
  the arguments the call does not give are fixed (transformers' ``input_ids=None`` is given,
  not fixed), and given ``None`` s and numbers are fixed to their values, as export fixes
  them. ``concrete_args={"scale": 3.0}`` fixes another value; ``concrete_args={"scale":
  torch.fx.PH}`` keeps one as a (required) graph input. The source is the module itself
  when the graph's inputs are its leading arguments and the rest keep their defaults (one
  call less per run); otherwise a function calling it with the fixed values.
* **The module's own call.** A graph of ``(features, decoder_ids)`` traced from
  ``(features, None, decoder_ids)`` also takes ``(features, None, decoder_ids)``, and
  ``attention_mask=None`` by name: on both routes the fixed arguments with their values are
  given to the graph (`Graph.accept_call`), and a call that gives one as it was fixed drops it
  before the inputs are bound; another value raises `ArityError`, naming it.
* **Errors.** Anything raised while fx traces (data-dependent control flow, a library
  raising on a proxy: ``torch.finfo(x.dtype)``, ``ValueError: You have to specify either
  input_ids ...``) becomes `UntraceableError`, naming the submodule where it stopped, with the
  library's message and the ways out; with ``example_inputs`` it is raised only when export
  fails too, saying both. Where it stopped inside an ``fx.GraphModule`` 's generated code, fx
  prints its own traceback to stderr before re-raising; that print is kept out of stderr and
  its news (the line of generated code) goes into the error's message; anything else printed
  while tracing is passed on.
* **Symbolic sizes.** With dynamic shapes Dynamo's graphs take sizes as inputs, and hands a
  backend ``SymInt`` s for them beside real example tensors; aten ops called with a ``SymInt``
  outside tracing raise. A partition (and the graph as its source) reads such an input as
  the int it stands for in the example (`graphexec.fx_partition.concrete_size`); a real
  call's int passes as it is.
* **Export's bookkeeping.** Guards and assertion nodes that read only graph inputs run
  together as one cheap first node, ``check_inputs``, which every partition without a
  producer waits for (``after=``): once per call, before any model code, as in the exported
  module. Assertions on intermediate values run inside the partition of the value they check
  (nobody reads them: a partition of their own would be dropped as dead).
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
* **Thread-local state.** A graph that switches grad mode between its nodes (Dynamo writes
  ``torch._C._set_grad_enabled`` for a ``with torch.no_grad():`` inside ``forward``) cannot
  be split across threads: `GraphError` naming the node.
* **Regions of thread-local state.** Dynamo and export write a ``torch.vmap`` inside
  ``forward`` (as transformers 4.5x builds GPT-2's attention mask) as calls that push and pop
  a functorch level (``_vmap_increment_nesting`` ... ``_vmap_decrement_nesting``) around
  batched tensors that must not leave the level, with level numbers written in as constants;
  Dynamo writes a ``with torch.autocast(..., enabled=False):`` (the rotary embedding of
  Llama and Qwen2) as ``_enter_autocast`` ... ``_exit_autocast``. Both states are
  thread-local. fx counts none of these calls as a side effect, and nobody reads their
  results: the span from the first push to its matching pop (and the
  ``lazy_load_decompositions`` before a vmap) is kept whole and becomes one partition, run on
  one thread like any partition; the rest of the graph is planned as usual.

The import is three modules, each importing only those after it: this one (`trace`:
partitions, hazards, regions), `graphexec.fx_routes` (the route: fx and the arguments it
fixes, else torch.export) and `graphexec.fx_errors` (`UntraceableError` and its words);
`graphexec.fx_partition` and `graphexec.exported` do the work below them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import GraphError
from .exported import BATCH, constant_inputs, input_checks, is_check
from .fx_errors import UntraceableError, kind_of
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
from .fx_routes import PLAIN, defaults, example_call, forward_of, import_module, traced_here
from .graph import Graph

__all__ = ["UntraceableError", "trace"]


#: Calls that switch thread-local state between nodes: such a graph cannot be split up.
_THREAD_STATE = {torch._C._set_grad_enabled}


def _functorch(*names: str) -> set[Any]:
    from torch._functorch import predispatch

    return {getattr(predispatch, n) for n in names if hasattr(predispatch, n)} | {
        getattr(torch._C._functorch, n) for n in names if hasattr(torch._C._functorch, n)
    }


#: Calls that push and pop a functorch transform level or an autocast region (module
#: docstring: regions of thread-local state).
_LEVEL_PUSH = {
    *_functorch("_vmap_increment_nesting", "_jvp_increment_nesting", "_enter_dual_level"),
    torch.amp.autocast_mode._enter_autocast,
}


_LEVEL_POP = {
    *_functorch("_vmap_decrement_nesting", "_jvp_decrement_nesting", "_exit_dual_level"),
    torch.amp.autocast_mode._exit_autocast,
}


_LEVEL_PREPARE = _functorch("lazy_load_decompositions")


def trace(
    module: nn.Module | Any,
    example_inputs: Sequence[Any] | Any | None = None,
    example_kwargs: dict[str, Any] | None = None,
    *,
    leaves: Iterable[str | type] = (),
    name: str | None = None,
    concrete_args: dict[str, Any] | None = None,
    dynamic_shapes: Any = BATCH,
) -> Graph:
    """Import ``module`` into a `Graph` of module-sized nodes: through ``torch.fx``, or through
    ``torch.export`` where fx cannot trace it and ``example_inputs`` are given.

    Parameters
    ----------
    module : nn.Module, torch.fx.GraphModule, torch.export.ExportedProgram or function
        A module to trace, a GraphModule traced already (used as it is, not re-traced), an
        exported program (its ``.module()``, with export's checks in ``check_inputs``), or a
        Python function (traced with fx alone: torch.export takes modules only).
    example_inputs : tuple, optional
        Positional arguments of a call, as ``torch.export.export(module, args)`` takes them (a
        single tensor is one argument). Only the arguments not given are fixed to their
        defaults; given tensors are graph inputs, given ``None`` and plain numbers are fixed.
        Where fx cannot trace the module, it is exported with these inputs instead.
    example_kwargs : dict, optional
        Keyword arguments of that call (``torch.export.export``'s ``kwargs``).
    leaves : iterable of str or type
        Extra leaf modules, by qualified name (``"branch1"``) or type: each becomes one node.
    name : str, optional
        The graph's name (default: the module's class name).
    concrete_args : dict, optional
        Passed to ``torch.fx.Tracer.trace``; arguments with defaults (without
        ``example_inputs``: all of them; with: those not given) are fixed to them unless given
        here (``torch.fx.PH`` keeps one a graph input).
    dynamic_shapes : "batch", None or torch.export's spec
        Used where the module goes through ``torch.export``, which fixes every size it does
        not mark dynamic. ``"batch"`` (default) marks the first dimension of every tensor
        ``Dim.AUTO``, so the graph takes any batch size (give an example batch of 2 or more:
        export fixes a size of 1); if export fails so, every size is fixed and
        ``graph.imported_by`` says why. ``None`` fixes every size; anything else goes to
        ``torch.export.export(..., dynamic_shapes=)`` as it is (``Dim.AUTO`` for a sequence
        length too, say).

    Returns
    -------
    Graph
        Inputs are the module's ``forward`` arguments without defaults, or with
        ``example_inputs`` the tensors given (for a GraphModule or an exported program: its
        placeholders, one per tensor leaf); outputs have the same structure as the module's
        (tensor, tuple or dict). ``graph.source`` is the user's module, called as the graph is
        (what `graphexec.plan` times its plans against, and runs as it is when none beats it);
        ``graph.imported_by`` says which route imported it and why.

    Raises
    ------
    TypeError
        If ``module`` is none of the above: a module's class (pass an instance), a builtin or
        another callable object (wrap it in a function).
    UntraceableError
        If ``torch.fx`` cannot trace ``module`` (data-dependent control flow, a library
        raising on a proxy) and, with ``example_inputs``, ``torch.export`` cannot export it:
        naming the submodule where tracing stopped, with the library's message.
    GraphError
        If the graph switches grad mode between nodes (an autocast region is kept whole in
        one node instead), naming that node.

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
    >>> class Masked(nn.Module):  # fx cannot trace torch.finfo of a proxy's dtype
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a = nn.Linear(4, 4)
    ...     def forward(self, x, mask=None):
    ...         return self.a(x).masked_fill(mask, torch.finfo(x.dtype).min)
    >>> model, x = Masked(), torch.randn(2, 4)
    >>> g = gx.trace(model, example_inputs=(x, x > 0))
    >>> g.imported_by.split(" (")[0], g.inputs, g.source is model
    ('torch.export', ('x', 'mask'), True)
    """
    leaf = Leaves(leaves)
    example = example_call(example_inputs, example_kwargs)
    gm, source, how = import_module(module, leaf, concrete_args, example, dynamic_shapes)
    graph_name = name or _root_name(gm) or kind_of(module).strip("<>")
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in _THREAD_STATE:
            raise GraphError(
                f"node '{n.name}' ({_target_name(n)}) switches grad mode between nodes: "
                "graphexec runs nodes on several threads and cannot split this graph",
                n.name,
            )
    checks = input_checks(gm)
    levels = _level_spans(gm)
    live = live_nodes(gm, skip=set(checks), keep=levels)
    nodes = [n for n in gm.graph.nodes
             if n.op not in ("placeholder", "output", "get_attr") and n in live]  # fmt: skip
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    hazards = hazard_pairs(gm, index)
    calls = leaf_calls(nodes, leaf)
    inner = [n for n in nodes if is_check(n) and not n.users]  # checks on intermediates
    part = partition(nodes, calls, folded=True, together=levels, attached=inner)
    order = partition_order(nodes, part, hazards, index)
    if order is None:  # folding contradicted an in-place ordering: keep functions apart
        part = partition(nodes, calls, folded=False, together=levels, attached=inner)
        order = partition_order(nodes, part, hazards, index)
        assert order is not None, "one node per partition follows program order"
    g = build_graph(gm, graph_name, nodes, part, order, hazards, calls, checks,
                    constant_inputs(gm))  # fmt: skip
    g.source = source  # what `graphexec.plan` measures its plans against
    g.imported_by = how
    if not isinstance(module, fx.GraphModule) and traced_here(module):
        fx_route = how == "torch.fx"
        _accept_module_call(g, module, defaults(module, concrete_args if fx_route else None,
                                                 example))  # fmt: skip
    return g


def _accept_module_call(g: Graph, module: Any, fixed: dict[str, Any]) -> None:
    """Let ``g`` take the module's own call too, with the plain arguments the trace fixed
    (module docstring: the module's own call)."""
    fixed = {k: v for k, v in fixed.items() if isinstance(v, PLAIN) and k not in g.inputs}
    if not fixed:
        return
    try:
        params = inspect.signature(forward_of(module)).parameters.values()
    except (TypeError, ValueError):
        return
    positional = []
    for p in params:  # up to the first that is no graph input and was not fixed (``*args``)
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        if p.name not in fixed and p.name not in g.inputs:
            break
        positional.append(p.name)
    inputs = [p for p in positional if p not in fixed]
    if inputs != list(g.inputs[: len(inputs)]):  # the inputs are named otherwise (export)
        positional = []
    g.accept_call(positional, fixed)


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
