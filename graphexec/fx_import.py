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
"""

from __future__ import annotations

import contextlib
import inspect
import io
import operator
import re
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .calls import spelled
from .errors import GraphError
from .exported import (
    BATCH,
    as_called,
    constant_inputs,
    export,
    input_checks,
    is_check,
    own_guards,
)
from .fx_partition import (
    Leaves,
    build_graph,
    closure,
    concrete_size,
    hazard_pairs,
    leaf_calls,
    live_nodes,
    partition,
    partition_order,
    qualname,
    symbolic_size,
)
from .graph import Graph

__all__ = ["UntraceableError", "trace"]


#: What fx writes for a specialised argument (``concrete_args``): dropped with it.
_SPECIALISED = {operator.eq, torch._assert, fx._symbolic_trace._assert_is_none}
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


class UntraceableError(GraphError, fx.proxy.TraceError):
    """The module could not be imported: ``torch.fx`` stopped (data-dependent control flow, a
    library raising on a proxy) and, with ``example_inputs``, ``torch.export`` too. ``node``
    names the submodule where tracing stopped, if any; ``reason`` is the library's own
    message (``TypeError: ...``); the message also says the ways out."""

    def __init__(self, message: str, node: str | None = None, reason: str = ""):
        super().__init__(message, node)
        self.reason = reason


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
    example = _example(example_inputs, example_kwargs)
    gm, source, how = _import(module, leaf, concrete_args, example, dynamic_shapes)
    graph_name = name or _root_name(gm) or _kind(module).strip("<>")
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
    if not isinstance(module, fx.GraphModule) and _traced_here(module):
        fx_route = how == "torch.fx"
        _accept_module_call(g, module, _defaults(module, concrete_args if fx_route else None,
                                                 example))  # fmt: skip
    return g


def _accept_module_call(g: Graph, module: Any, fixed: dict[str, Any]) -> None:
    """Let ``g`` take the module's own call too, with the plain arguments the trace fixed
    (module docstring: the module's own call)."""
    fixed = {k: v for k, v in fixed.items() if isinstance(v, _PLAIN) and k not in g.inputs}
    if not fixed:
        return
    try:
        params = inspect.signature(_forward(module)).parameters.values()
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


_Example = tuple[tuple[Any, ...], dict[str, Any]]


def _example(args: Any, kwargs: dict[str, Any] | None) -> _Example | None:
    """``(args, kwargs)`` of the example call, or None without one."""
    if args is None and kwargs is None:
        return None
    if args is None:
        args = ()
    elif not isinstance(args, tuple | list):
        args = (args,)  # one tensor: one argument, as torch.export takes ``(x,)``
    return tuple(args), dict(kwargs or {})


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


_PROGRAM_NOTE = (
    "torch.export (an ExportedProgram): the module as it is is the program's module(); "
    "gx.trace(model, example_inputs=args) keeps your own model as it is"
)


def _import(
    module: Any, leaves: Leaves, concrete_args: Any, example: _Example | None,
    dynamic_shapes: Any = BATCH,
) -> tuple[fx.GraphModule, Any, str]:  # fmt: skip
    """The fx graph to partition, the callable it came from (`Graph.source`), and which
    route made it and why (`Graph.imported_by`)."""
    exported = sys.modules.get("torch.export")
    if exported is not None and isinstance(module, exported.ExportedProgram):
        gm = own_guards(module.module())
        return gm, as_called(gm, gm), _PROGRAM_NOTE
    if isinstance(module, fx.GraphModule):
        return module, _sized(module, as_called(module, module)), "an fx GraphModule, as it is"
    if not _traced_here(module):
        raise TypeError(_not_traceable(module))
    try:
        gm, source = _fx_trace(module, leaves, concrete_args, example)
    except UntraceableError as fx_error:
        if example is None or not isinstance(module, nn.Module):
            raise
        return _export_route(module, example, fx_error, dynamic_shapes)
    return gm, source, "torch.fx"


def _traced_here(module: Any) -> bool:
    """A module instance or a plain Python function: what `trace` traces itself."""
    return isinstance(module, nn.Module) or inspect.isfunction(module)


def _forward(module: Any) -> Any:
    """What a call runs: a module's ``forward``, or the function itself."""
    return module.forward if isinstance(module, nn.Module) else module


def _kind(module: Any) -> str:
    """The class name of a module, or a function's name (``<lambda>``)."""
    return module.__name__ if inspect.isfunction(module) else type(module).__name__


def _not_traceable(obj: Any) -> str:
    """Why ``gx.trace(obj)`` cannot take ``obj``, and what to pass instead."""
    takes = ("gx.trace takes an nn.Module instance, a torch.fx.GraphModule, a "
             "torch.export.ExportedProgram or a Python function")  # fmt: skip
    if isinstance(obj, type):
        name = spelled(obj)
        if issubclass(obj, nn.Module):
            return f"{takes}; got the class {name}: pass an instance, gx.trace({name}(...))"
        return f"{takes}; got the class {name}"
    if callable(obj):
        what = getattr(obj, "__name__", None) or type(obj).__name__
        return (f"{takes}; got {what} ({type(obj).__name__}), which fx cannot trace: call it "
                f"from a Python function and trace that (def f(x): return {what}(x))")  # fmt: skip
    return f"{takes}; got {type(obj).__name__}"


def _sized(gm: fx.GraphModule, source: Any) -> Any:
    """``source`` taking Dynamo's symbolic sizes as their example ints (`concrete_size`)."""
    sizes = [i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")
             if symbolic_size(n)]  # fmt: skip
    if not sizes:
        return source

    def call(*args: Any) -> Any:
        return source(*(concrete_size(a) if i in sizes else a for i, a in enumerate(args)))

    call.__wrapped__ = source  # type: ignore[attr-defined]
    return call


def _fx_trace(
    module: nn.Module | Any, leaves: Leaves, concrete_args: Any, example: _Example | None
) -> tuple[fx.GraphModule, Any]:
    """``torch.fx`` with every argument not given fixed (`_defaults`); any exception raised
    while tracing becomes an `UntraceableError` naming where it stopped."""
    concrete = _defaults(module, concrete_args, example)
    tracer = _Tracer(leaves)
    printed = io.StringIO()
    try:
        with _TRACING, contextlib.redirect_stderr(printed):
            graph = tracer.trace(module, concrete or None)
    except Exception as exc:  # noqa: BLE001 - a library raising on a proxy stops fx too
        rest, generated = _fx_printed(printed.getvalue())
        sys.stderr.write(rest)
        where = _where(module, exc.__traceback__)
        message, reason = _untraceable(module, exc, where, concrete, example, generated)
        raise UntraceableError(message, (where and where[0]) or None, reason) from exc
    sys.stderr.write(printed.getvalue())  # fx caught what it printed about: pass it on
    gm = fx.GraphModule(tracer.root, graph, _kind(module).strip("<>"))
    if not concrete:
        return gm, module
    _drop_specialised(gm, module, concrete)
    inputs = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    if _called_plainly(module, inputs, concrete):
        return gm, module

    def source(*args: Any) -> Any:  # the module called as the graph is: the rest fixed
        return module(**dict(zip(inputs, args, strict=False)), **concrete)

    source.__wrapped__ = module  # type: ignore[attr-defined]
    return gm, source


#: fx patches torch's globals while it traces, and a process has one stderr: one trace at a time.
_TRACING = threading.Lock()
#: What fx prints (`torch.fx.graph_module._WrappedCall`) when generated code raises.
_FX_PRINTED = re.compile(
    r"Call using an FX-traced Module, line (?P<line>\d+) of the traced Module's generated "
    r"forward function:\n(?:.*\n)*?(?P<code>.*\S.*)\n+~+ <--- HERE\n(?:.*\n\n?){0,2}\n?"
)


def _fx_printed(text: str) -> tuple[str, tuple[int, str] | None]:
    """``text`` printed while tracing without fx's own traceback, and the line of generated
    code it pointed at (number, code), if fx printed one."""
    found = _FX_PRINTED.search(text)
    if found is None:
        return text, None
    start = text.rfind("Traceback (most recent call last):", 0, found.start())
    start = found.start() if start < 0 else start
    code = found["code"].split(";")[0].strip()  # fx's "x = None" frees, not the failing call
    return text[:start] + text[found.end():], (int(found["line"]), code)


def _export_route(
    module: nn.Module, example: _Example, fx_error: UntraceableError, dynamic_shapes: Any
) -> tuple[fx.GraphModule, Any, str]:
    """``torch.export`` with the example call, where fx stopped; the user's module stays the
    one the graph is measured against (`graphexec.exported`)."""
    kind = type(module).__name__
    try:
        gm, shapes = export(module, *example, dynamic_shapes)
    except Exception as exc:  # noqa: BLE001 - whatever export raises, say both
        reason = _first_line(exc)
        raise UntraceableError(
            f"gx.trace({kind}): torch.fx cannot trace it ({fx_error.reason}) and "
            f"torch.export cannot export it with the example inputs ({reason}). "
            f"{_unknown_output(module, exc, example)}{fx_error}",
            fx_error.node,
            reason,
        ) from exc
    how = f"torch.export ({shapes}): torch.fx could not trace {kind} ({fx_error.reason})"
    return gm, as_called(gm, module), how


_UNKNOWN_OUTPUT = re.compile(r"Found <class '([^']+)'> in output")


def _unknown_output(module: nn.Module, exc: BaseException, example: _Example) -> str:
    """The way out when export stopped at an output object it does not know (a library's
    cache, say), or ""."""
    found = _UNKNOWN_OUTPUT.search(str(exc))
    if found is None:
        return ""
    what = f"The model's output holds a {found[1]}, which is no tensor and no type torch.export "
    what += "knows; "
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        params = {}
    off = [p for p in ("use_cache", "return_legacy_cache") if p in params
           and p not in example[1]]  # fmt: skip
    if off:
        return (f"{what}pass example_kwargs={{'{off[0]}': False}} to leave it out of the "
                "output, or register the type with torch.utils._pytree.register_pytree_node. ")
    return f"{what}register it with torch.utils._pytree.register_pytree_node. "


def _first_line(exc: BaseException, most: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text if len(text) <= most else text[: most - 3] + "..."


_PLAIN = (type(None), bool, int, float, str)  # fixed; tensors and containers: left as inputs


def _defaults(
    module: nn.Module, concrete_args: dict[str, Any] | None, example: _Example | None = None
) -> dict[str, Any]:
    """``concrete_args`` with every plain default of ``forward`` it does not name; with an
    example call, only the defaults of arguments it does not give, and the plain values it
    gives (``None``, numbers: export fixes them too)."""
    given_args = dict(concrete_args or {})
    try:
        params = list(inspect.signature(_forward(module)).parameters.values())
    except (TypeError, ValueError):
        return given_args
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    called: dict[str, Any] = {}
    if example is not None:
        positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
        called = {**dict(zip(positional, example[0], strict=False)), **example[1]}
    fixed = {p.name: p.default for p in named
             if p.name not in called and isinstance(p.default, _PLAIN)
             and p.default is not p.empty}  # fmt: skip
    fixed.update((k, v) for k, v in called.items() if isinstance(v, _PLAIN))
    return {k: v for k, v in {**fixed, **given_args}.items() if v is not fx.PH}


def _called_plainly(module: nn.Module, inputs: list[str], concrete: dict[str, Any]) -> bool:
    """True when ``module(*inputs)`` is the call the graph makes: the inputs are its leading
    positional arguments, and every fixed one is fixed to its own default (so the module
    itself is the graph's source, with nothing between a call and it)."""
    try:
        params = inspect.signature(_forward(module)).parameters
    except (TypeError, ValueError):
        return False
    positional = [p.name for p in params.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
    return inputs == positional[: len(inputs)] and all(
        k in params and type(v) is type(params[k].default) and v == params[k].default
        for k, v in concrete.items()
    )


def _drop_specialised(gm: fx.GraphModule, module: nn.Module, concrete: dict[str, Any]) -> None:
    """Remove the placeholders of fixed arguments and the asserts fx wrote for them."""
    params = list(inspect.signature(_forward(module)).parameters)
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(params) != len(holders):  # *args or pytree concrete_args: leave them
        return
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    for param, holder in zip(params, holders, strict=True):
        below = closure([holder], lambda n: n.users)
        if param in concrete and all(n.target in _SPECIALISED for n in below):
            for n in sorted(below, key=index.__getitem__, reverse=True):
                gm.graph.erase_node(n)
            gm.graph.erase_node(holder)
    gm.recompile()


def _where(module: nn.Module | Any, tb: Any) -> tuple[str, str, int] | None:
    """The innermost submodule (qualified name, file, line) a traceback ran ``forward`` of;
    for a function, ``""`` and the line of the function where it stopped."""
    names = ({id(m): n for n, m in module.named_modules()} if isinstance(module, nn.Module)
             else {})  # fmt: skip
    where = None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            where = (names[id(owner)], tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        elif tb.tb_frame.f_code is getattr(module, "__code__", None):
            where = ("", tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return where


def _untraceable(
    module: nn.Module | Any,
    exc: Exception,
    where: tuple[str, str, int] | None,
    concrete: dict[str, Any],
    example: _Example | None,
    generated: tuple[int, str] | None = None,
) -> tuple[str, str]:
    """The error's message (where, the library's words, the ways out) and its reason;
    ``generated``: the line of an fx GraphModule's generated code where it stopped."""
    kind = _kind(module)
    at = f" ({where[1]}:{where[2]})" if where else ""
    if generated is not None:  # ``where`` is torch's own file then
        at = f" (line {generated[0]} of its generated forward: {generated[1]})"
    function = not isinstance(module, nn.Module)
    branch = isinstance(exc, fx.proxy.TraceError)  # control flow on a proxy, not a library
    reason = str(exc) if branch else _first_line(exc)
    ways = []
    if where and where[0]:
        place = f"in submodule '{where[0]}'{at}"
        ways.append(f"name it in leaves=['{where[0]}'] to run it as one node")
    else:
        place = f"in {kind}{at}" if function else f"in {kind}.forward{at}"
        if branch and not function:
            ways.append("move the branch into a submodule and name it in leaves=")
    fixed = ", ".join(f"{k}={v!r}" for k, v in concrete.items())
    note = ""
    if function:  # torch.export takes modules only
        ways.append("make it the forward of an nn.Module and trace that with example_inputs=, "
                    "which imports it through torch.export where fx cannot")  # fmt: skip
    elif example is None:
        if fixed:
            note = (f" (gx.trace fixed every argument with a default to it: {fixed}; "
                    "example_inputs= says which ones a call gives)")  # fmt: skip
        ways.insert(0 if not branch else 1, "gx.trace(model, example_inputs=args), which "
                    "imports it through torch.export where fx cannot")  # fmt: skip
    elif branch:
        ways.append("write the branch with torch.cond (export takes it)")
    what, it = ("fn", "it") if function else ("model", "the model")
    ways.append(f'torch.compile({what}, backend="graphexec"), which splits {it} there')
    return (f"gx.trace({kind}): torch.fx cannot trace {place}: {reason}{note}. To import it, "
            + "; or ".join(ways), reason)  # fmt: skip


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
