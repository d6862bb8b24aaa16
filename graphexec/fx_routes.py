"""The route `gx.trace` takes: ``torch.fx`` where it traces, else ``torch.export``.

`import_module` returns the fx graph to partition, the callable it came from (`Graph.source`,
what `graphexec.plan` measures its plans against) and which route made it and why
(`Graph.imported_by`); the decisions are in `graphexec.fx_import`'s docstring (what it takes,
the route, defaults, the module's own call). Here:

* **fx first.** A module or a function is traced with ``torch.fx`` and its default leaves
  plus ``leaves=`` (`_Tracer`), every argument the call does not give fixed (`defaults`:
  fx's ``concrete_args``), the placeholders and asserts of fixed arguments dropped after.
  fx patches torch's globals while it traces and a process has one stderr: one trace at a
  time (`_TRACING`). What fx prints about generated code is kept out of stderr and goes into
  the error (`graphexec.fx_errors`).
* **Then export**, only with an example call and only for a module (torch.export takes no
  function): `graphexec.exported.export`, with the user's own module as the source.
* **The source** is the module itself when the graph's inputs are its leading arguments and
  the rest keep their defaults (`_called_plainly`: one call less per run); otherwise a
  function calling it with the fixed values. Graphs that take Dynamo's symbolic sizes get a
  source that reads them as their example ints (`_sized`).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import operator
import sys
import threading
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .exported import BATCH, as_called, export, own_guards
from .fx_errors import (
    Example,
    UntraceableError,
    export_failed,
    fx_printed,
    kind_of,
    not_traceable,
    stopped_at,
    untraceable,
)
from .fx_partition import Leaves, closure, concrete_size, symbolic_size

__all__ = ["PLAIN", "defaults", "example_call", "forward_of", "import_module", "traced_here"]


#: What fx writes for a specialised argument (``concrete_args``): dropped with it.
_SPECIALISED = {operator.eq, torch._assert, fx._symbolic_trace._assert_is_none}


def example_call(args: Any, kwargs: dict[str, Any] | None) -> Example | None:
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


def import_module(
    module: Any, leaves: Leaves, concrete_args: Any, example: Example | None,
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
    if not traced_here(module):
        raise TypeError(not_traceable(module))
    try:
        gm, source = _fx_trace(module, leaves, concrete_args, example)
    except UntraceableError as fx_error:
        if example is None or not isinstance(module, nn.Module):
            raise
        return _export_route(module, example, fx_error, dynamic_shapes)
    return gm, source, "torch.fx"


def traced_here(module: Any) -> bool:
    """A module instance or a plain Python function: what `trace` traces itself."""
    return isinstance(module, nn.Module) or inspect.isfunction(module)


def forward_of(module: Any) -> Any:
    """What a call runs: a module's ``forward``, or the function itself."""
    return module.forward if isinstance(module, nn.Module) else module


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
    module: nn.Module | Any, leaves: Leaves, concrete_args: Any, example: Example | None
) -> tuple[fx.GraphModule, Any]:
    """``torch.fx`` with every argument not given fixed (`defaults`); any exception raised
    while tracing becomes an `UntraceableError` naming where it stopped."""
    concrete = defaults(module, concrete_args, example)
    tracer = _Tracer(leaves)
    printed = io.StringIO()
    try:
        with _TRACING, contextlib.redirect_stderr(printed):
            graph = tracer.trace(module, concrete or None)
    except Exception as exc:  # noqa: BLE001 - a library raising on a proxy stops fx too
        rest, generated = fx_printed(printed.getvalue())
        sys.stderr.write(rest)
        where = stopped_at(module, exc.__traceback__)
        message, reason = untraceable(module, exc, where, concrete, example, generated)
        raise UntraceableError(message, (where and where[0]) or None, reason) from exc
    sys.stderr.write(printed.getvalue())  # fx caught what it printed about: pass it on
    gm = fx.GraphModule(tracer.root, graph, kind_of(module).strip("<>"))
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


def _export_route(
    module: nn.Module, example: Example, fx_error: UntraceableError, dynamic_shapes: Any
) -> tuple[fx.GraphModule, Any, str]:
    """``torch.export`` with the example call, where fx stopped; the user's module stays the
    one the graph is measured against (`graphexec.exported`)."""
    try:
        gm, shapes = export(module, *example, dynamic_shapes)
    except Exception as exc:  # noqa: BLE001 - whatever export raises, say both
        raise export_failed(module, exc, example, fx_error) from exc
    kind = type(module).__name__
    how = f"torch.export ({shapes}): torch.fx could not trace {kind} ({fx_error.reason})"
    return gm, as_called(gm, module), how


PLAIN = (type(None), bool, int, float, str)  # fixed; tensors and containers: left as inputs


def defaults(
    module: nn.Module, concrete_args: dict[str, Any] | None, example: Example | None = None
) -> dict[str, Any]:
    """``concrete_args`` with every plain default of ``forward`` it does not name; with an
    example call, only the defaults of arguments it does not give, and the plain values it
    gives (``None``, numbers: export fixes them too)."""
    given_args = dict(concrete_args or {})
    try:
        params = list(inspect.signature(forward_of(module)).parameters.values())
    except (TypeError, ValueError):
        return given_args
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    called: dict[str, Any] = {}
    if example is not None:
        positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
        called = {**dict(zip(positional, example[0], strict=False)), **example[1]}
    fixed = {p.name: p.default for p in named
             if p.name not in called and isinstance(p.default, PLAIN)
             and p.default is not p.empty}  # fmt: skip
    fixed.update((k, v) for k, v in called.items() if isinstance(v, PLAIN))
    return {k: v for k, v in {**fixed, **given_args}.items() if v is not fx.PH}


def _called_plainly(module: nn.Module, inputs: list[str], concrete: dict[str, Any]) -> bool:
    """True when ``module(*inputs)`` is the call the graph makes: the inputs are its leading
    positional arguments, and every fixed one is fixed to its own default (so the module
    itself is the graph's source, with nothing between a call and it)."""
    try:
        params = inspect.signature(forward_of(module)).parameters
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
    params = list(inspect.signature(forward_of(module)).parameters)
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
