"""Why `gx.trace` could not import a module, said with the ways out: `UntraceableError`.

`graphexec.fx_routes` raises what this module words. Where tracing stopped: the innermost
submodule whose ``forward`` was running (`stopped_at`), or the line of an ``fx.GraphModule``'s
generated code that fx printed (`fx_printed`, kept out of stderr). The library's own words
(`first_line`). And what to do, in order of how little it asks: name the submodule in
``leaves=``, give ``example_inputs=`` so torch.export is tried, write a branch with
``torch.cond``, or let ``torch.compile(model, backend="graphexec")`` split the model there.
When export fails too (`export_failed`), both reasons, and for an output object export does
not know, how to leave it out.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch.fx as fx
import torch.nn as nn

from .calls import spelled
from .errors import GraphError

__all__ = [
    "Example",
    "UntraceableError",
    "export_failed",
    "first_line",
    "fx_printed",
    "kind_of",
    "not_traceable",
    "stopped_at",
    "untraceable",
]

#: ``(args, kwargs)`` of the example call given to `gx.trace` (`fx_routes.example_call`).
Example = tuple[tuple[Any, ...], dict[str, Any]]


class UntraceableError(GraphError, fx.proxy.TraceError):
    """The module could not be imported: ``torch.fx`` stopped (data-dependent control flow, a
    library raising on a proxy) and, with ``example_inputs``, ``torch.export`` too. ``node``
    names the submodule where tracing stopped, if any; ``reason`` is the library's own
    message (``TypeError: ...``); the message also says the ways out."""

    def __init__(self, message: str, node: str | None = None, reason: str = ""):
        super().__init__(message, node)
        self.reason = reason


def kind_of(module: Any) -> str:
    """The class name of a module, or a function's name (``<lambda>``)."""
    return module.__name__ if inspect.isfunction(module) else type(module).__name__


def not_traceable(obj: Any) -> str:
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


#: What fx prints (`torch.fx.graph_module._WrappedCall`) when generated code raises.
_FX_PRINTED = re.compile(
    r"Call using an FX-traced Module, line (?P<line>\d+) of the traced Module's generated "
    r"forward function:\n(?:.*\n)*?(?P<code>.*\S.*)\n+~+ <--- HERE\n(?:.*\n\n?){0,2}\n?"
)


def fx_printed(text: str) -> tuple[str, tuple[int, str] | None]:
    """``text`` printed while tracing without fx's own traceback, and the line of generated
    code it pointed at (number, code), if fx printed one."""
    found = _FX_PRINTED.search(text)
    if found is None:
        return text, None
    start = text.rfind("Traceback (most recent call last):", 0, found.start())
    start = found.start() if start < 0 else start
    code = found["code"].split(";")[0].strip()  # fx's "x = None" frees, not the failing call
    return text[:start] + text[found.end():], (int(found["line"]), code)


def export_failed(
    module: nn.Module, exc: BaseException, example: Example, fx_error: UntraceableError
) -> UntraceableError:
    """The error for a module that fx could not trace (``fx_error``) and torch.export could
    not export with the example call (``exc``): both reasons, and the way out."""
    reason = first_line(exc)
    return UntraceableError(
        f"gx.trace({type(module).__name__}): torch.fx cannot trace it ({fx_error.reason}) and "
        f"torch.export cannot export it with the example inputs ({reason}). "
        f"{_unknown_output(module, exc, example)}{fx_error}",
        fx_error.node,
        reason,
    )


_UNKNOWN_OUTPUT = re.compile(r"Found <class '([^']+)'> in output")


def _unknown_output(module: nn.Module, exc: BaseException, example: Example) -> str:
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


def first_line(exc: BaseException, most: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text if len(text) <= most else text[: most - 3] + "..."


def stopped_at(module: nn.Module | Any, tb: Any) -> tuple[str, str, int] | None:
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


def untraceable(
    module: nn.Module | Any,
    exc: Exception,
    where: tuple[str, str, int] | None,
    concrete: dict[str, Any],
    example: Example | None,
    generated: tuple[int, str] | None = None,
) -> tuple[str, str]:
    """The error's message (where, the library's words, the ways out) and its reason;
    ``generated``: the line of an fx GraphModule's generated code where it stopped."""
    kind = kind_of(module)
    at = f" ({where[1]}:{where[2]})" if where else ""
    if generated is not None:  # ``where`` is torch's own file then
        at = f" (line {generated[0]} of its generated forward: {generated[1]})"
    function = not isinstance(module, nn.Module)
    branch = isinstance(exc, fx.proxy.TraceError)  # control flow on a proxy, not a library
    reason = str(exc) if branch else first_line(exc)
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
