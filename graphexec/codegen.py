"""Straight-line Python for a run of nodes, as ``torch.fx.GraphModule`` generates for a model.

A loop over nodes pays, per node, for looking its inputs up in a value table, building an
argument list and checking ``kwargs``; a model traced to 60 partitions paid 20-30 µs per task
that way, more than the fx module it came from. A `Program` is the same run written out as
one Python function, one line per node, locals for values and ``del`` at each value's last
use (so memory follows eager's)::

    def _run(v0):
        v1 = f1(v0)          # node 'conv1'
        v2 = f2(v1, v0[1])   # node 'block', reading item 1 of input 'x'
        del v1
        return v2

What it decides
---------------
* **Which call.** A node's callable is called as it is, hooks and all, except modules that
  graphexec itself made to wrap a piece of an fx graph (`direct_call` says which): those have
  no hooks, so their ``forward`` is called directly, sparing one ``nn.Module.__call__``.
* **Errors name the node.** The generated code has no ``try`` per node (zero cost in
  CPython 3.11): when the call raises, the line of the generated frame in the traceback
  says which node it was, and a `NodeError` names it, as the node loop does.
* **Two shapes.** ``task`` programs take and return value tables (what executors pass
  between tasks); ``plan`` programs take the graph inputs by position and build the graph's
  output structure directly, so a plan that runs one by one costs one Python call per node.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from types import CodeType, TracebackType
from typing import Any

import torch.nn as nn
import torch.utils._pytree as pytree

from .errors import NodeError, none_error
from .graph import Graph, Node, Ref

__all__ = ["Program", "direct_call", "plan_program", "task_program"]

_ids = itertools.count()


def direct_call(fn: Any) -> Callable[..., Any]:
    """What the generated line calls: ``fn.forward`` for graphexec's own hook-free wrapper
    modules (classes with ``graphexec_direct = True``, such as traced partitions), else
    ``fn``."""
    if (
        isinstance(fn, nn.Module)
        and getattr(type(fn), "graphexec_direct", False)
        and not (fn._forward_hooks or fn._forward_pre_hooks)
    ):
        return fn.forward
    return fn


class Program:
    """A compiled straight-line run of nodes; call it like the function it was written as.

    Build one with `task_program` or `plan_program`; ``source`` holds the generated text.
    """

    def __init__(
        self,
        source: str,
        scope: dict[str, Any],
        lines: dict[int, str],
        task: str | None,
        reads: Mapping[int, Sequence[tuple[str, str]]] | None = None,
    ):
        reads = reads or {}
        self.source, self.task, self._lines, self._reads = source, task, lines, reads
        filename = f"<graphexec program {next(_ids)}>"
        code = compile(source, filename, "exec")
        exec(code, scope)  # noqa: S102 - our own generated source, built from node names
        self._fn = scope["_run"]
        self._code: CodeType = self._fn.__code__

    def __call__(self, *args: Any) -> Any:
        try:
            return self._fn(*args)
        except NodeError:
            raise
        except Exception as exc:
            tb = self._frame_of(exc.__traceback__)
            node = self._lines.get(tb.tb_lineno) if tb is not None else None
            if node is None:
                raise
            for producer, var in self._reads.get(tb.tb_lineno, ()):
                if tb.tb_frame.f_locals.get(var, ...) is None:  # blame who returned it
                    raise none_error(producer, f"node '{node}' reads") from exc
            raise NodeError(node, exc, self.task) from exc

    def _frame_of(self, tb: TracebackType | None) -> TracebackType | None:
        """The traceback entry of the generated function: its line says which node."""
        while tb is not None:
            if tb.tb_frame.f_code is self._code:
                return tb
            tb = tb.tb_next
        return None


class _Writer:
    """Lines, names and the scope of one generated function."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.scope: dict[str, Any] = {}
        self.var: dict[str, str] = {}
        self.node_of_line: dict[int, str] = {}
        self.reads: dict[int, list[tuple[str, str]]] = {}  # line -> (producer, its local)
        self.sources: set[str] = set()  # values from outside (inputs): never blamed for None

    def constant(self, value: Any) -> str:
        name = f"c{len(self.scope)}"
        self.scope[name] = value
        return name

    def ref(self, r: Ref) -> str:
        v = self.var[r.node]
        return v if r.index is None else f"{v}[{self.constant(r.index)}]"

    def call(self, node: Node) -> None:
        args = [self.ref(r) for r in node.inputs]
        if node.kwargs:
            args.append("**" + self.constant(dict(node.kwargs)))
        fn = self.constant(direct_call(node.fn))
        var = self.var[node.name] = f"v{len(self.var)}"
        self.lines.append(f"    {var} = {fn}({', '.join(args)})")
        line = len(self.lines) + 1  # +1: the ``def`` line
        self.node_of_line[line] = node.name
        self.reads[line] = [(r.node, self.var[r.node]) for r in node.inputs
                            if r.index is None and r.node not in self.sources]  # fmt: skip

    def check_none(self, names: Sequence[str]) -> None:
        """One line per value of ``names`` (graph outputs) that raises, naming its node, when
        it is None: a forgotten ``return`` must not come back silently."""
        raise_ = self.constant(none_error)
        for n in dict.fromkeys(names):
            if n not in self.sources:
                culprit = self.constant(n)
                self.lines.append(f"    if {self.var[n]} is None: "
                                  f"raise {raise_}({culprit}, 'is a graph output')")  # fmt: skip

    def drop(self, names: Sequence[str]) -> None:
        if names:
            self.lines.append("    del " + ", ".join(self.var[n] for n in names))

    def finish(self, params: str, returns: str, task: str | None) -> Program:
        source = "\n".join([f"def _run({params}):", *self.lines, f"    return {returns}", ""])
        return Program(source, self.scope, self.node_of_line, task, self.reads)


def task_program(
    nodes: Mapping[str, Node],
    names: Sequence[str],
    inputs: Sequence[str],
    outputs: Sequence[str],
    release: Sequence[Sequence[str]],
    task: str | None = None,
) -> Program:
    """``program(values) -> {output: value}``: ``names`` run in order on ``values[inputs]``,
    dropping ``release[i]`` after node ``i`` (a `graphexec.plans.Task`'s fields)."""
    w = _Writer()
    for v in inputs:
        w.var[v] = f"v{len(w.var)}"
        w.lines.append(f"    {w.var[v]} = _values[{w.constant(v)}]")
        if nodes[v].is_input:
            w.sources.add(v)
    for i, name in enumerate(names):
        w.call(nodes[name])
        w.drop([v for v in (release[i] if release else ()) if v in w.var])
    returns = "{" + ", ".join(f"{w.constant(o)}: {w.var[o]}" for o in outputs) + "}"
    return w.finish("_values", returns, task)


def plan_program(graph: Graph, names: Sequence[str]) -> Program:
    """``program(*graph_inputs) -> outputs``: every node of ``names`` (a topological order of
    all the nodes to run) in order, each value dropped after its last reader."""
    w = _Writer()
    for v in graph.inputs:
        w.var[v] = f"v{len(w.var)}"
        w.sources.add(v)
    params = ", ".join(w.var[v] for v in graph.inputs)
    kept = {r.node for r in graph.output_refs()}
    last: dict[str, int] = {}
    for i, name in enumerate(names):
        last[name] = i  # a value nobody reads dies where it is made
        for r in graph.nodes[name].inputs:
            last[r.node] = i
    dies: dict[int, list[str]] = {}
    for v, i in last.items():
        if v not in kept:
            dies.setdefault(i, []).append(v)
    for i, name in enumerate(names):
        w.call(graph.nodes[name])
        w.drop(dies.get(i, ()))
    w.check_none([r.node for r in graph.output_refs() if r.index is None])
    return w.finish(params, _structure(w, graph.outputs), None)


def _structure(w: _Writer, spec: Any) -> str:
    """Python text building the output structure from locals."""
    if isinstance(spec, Ref):
        return w.ref(spec)
    if type(spec) is tuple:
        return "(" + "".join(_structure(w, s) + ", " for s in spec) + ")"
    if type(spec) is list:
        return "[" + ", ".join(_structure(w, s) for s in spec) + "]"
    if type(spec) is dict:
        items = (f"{w.constant(k)}: {_structure(w, v)}" for k, v in spec.items())
        return "{" + ", ".join(items) + "}"
    if pytree.tree_leaves(spec, is_leaf=lambda x: isinstance(x, Ref)) == [spec]:
        return w.constant(spec)  # a constant leaf
    leaves, tree = pytree.tree_flatten(spec, is_leaf=lambda x: isinstance(x, Ref))
    parts = ", ".join(_structure(w, leaf) for leaf in leaves)  # another container type
    return f"{w.constant(pytree.tree_unflatten)}([{parts}], {w.constant(tree)})"
