"""The model DAG a user declares: named nodes, each a callable over the outputs of others.

What it decides
---------------
* A node is ``(name, fn, inputs)``: ``fn`` is an ``nn.Module`` or any callable, ``inputs`` are
  references to graph inputs or other nodes' outputs, in call order. Names are unique in a
  graph and are what every plan, trace, task key and error message speaks of.
* A reference (`Ref`) points at a whole node output, or with ``ref[i]`` at one item of a
  tuple/list/dict output: a node may return several values and consumers pick theirs.
* Inputs may name a node that is declared later (``"tower_a"`` as a string), so a graph can be
  written in any order; unknown names and cycles are therefore found by `Graph.validate`,
  which `graphexec.plan` calls. Everything that can be checked when a node is added is checked
  there: duplicate names, references from another graph, the callable's arity.
* Insertion order is *program order*. It matters for nodes that mutate a tensor in place
  (``mutates=``): the planner orders every other reader of that tensor before or after the
  mutation as program order says, so concurrency never changes the result.
* ``after=`` adds ordering-only dependencies (no data flows); `graphexec.fx_import` uses it for
  the in-place hazards it finds in traced models.
* A graph traced from a module whose call had arguments the trace fixed (Whisper's
  ``attention_mask=None`` between two tensors) takes the module's own call too: a fixed
  argument given as it was fixed is dropped before the inputs are bound; given another
  value, `ArityError` says so (`Graph.accept_call`, `graphexec.module_call`).

The graph is backed by a ``networkx.DiGraph`` (``graph.nx``) whose nodes are the node and
input names, with an edge for every data or ordering dependency.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx
import torch
import torch.nn as nn
import torch.utils._pytree as pytree

from .calls import Arity, Packed, check_in_place, check_instance, fn_name
from .dag import lexicographic_order
from .errors import (
    CycleError,
    DuplicateNameError,
    GraphError,
    UnknownNodeError,
    UnreachableOutputError,
)
from .module_call import ModuleCall

__all__ = ["Graph", "ModuleCall", "Node", "Packed", "Ref", "expect_graph", "state_tensors"]

_graph_ids = itertools.count(1)


@dataclass(frozen=True)
class Ref:
    """A reference to a graph input or to a node's output (``index``: one item of it).

    Refs are plain, hashable and picklable; they travel to remote workers inside tasks.

    Examples
    --------
    >>> g = Graph("g")
    >>> x = g.input("x")
    >>> x
    Ref('x')
    >>> g.node("split", lambda t: (t, t), x)[1]
    Ref('split'[1])
    """

    node: str
    index: int | str | None = None
    graph_id: int = field(default=0, compare=False)

    def __getitem__(self, index: int | str) -> Ref:
        if self.index is not None:
            raise GraphError(
                f"'{self.node}'[{self.index!r}] is already one item; index the node once",
                self.node,
            )
        return Ref(self.node, index, self.graph_id)

    def __repr__(self) -> str:
        return (
            f"Ref({self.node!r})" if self.index is None else f"Ref({self.node!r}[{self.index!r}])"
        )

    def __str__(self) -> str:
        return self.node if self.index is None else f"{self.node}[{self.index!r}]"

    def resolve(self, value: Any) -> Any:
        """Pick this reference's item out of the producing node's whole output."""
        return value if self.index is None else value[self.index]


@dataclass(frozen=True, eq=False)
class Node:
    """One node: ``fn(*inputs, **kwargs)``; ``mutates`` lists input positions changed in place."""

    name: str
    fn: Callable[..., Any]
    inputs: tuple[Ref, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    mutates: tuple[int, ...] = ()
    after: tuple[str, ...] = ()
    order: int = 0

    @property
    def is_input(self) -> bool:
        return self.fn is _graph_input

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args, **self.kwargs)


def _waits_for(node: Node) -> tuple[str, ...]:
    """The nodes ``node`` waits for, each once: its inputs' nodes, then ``after=``."""
    if len(node.inputs) == 1 and not node.after:  # most nodes: not worth a dict
        return (node.inputs[0].node,)
    return tuple(dict.fromkeys([*(r.node for r in node.inputs), *node.after]))


def _graph_input() -> None:  # marker callable of graph-input nodes; never called
    raise AssertionError("graph inputs are bound, not called")


class Graph:
    """A DAG of named nodes.

    Parameters
    ----------
    name : str
        Shown in plans, traces and pictures.

    Examples
    --------
    >>> import torch, torch.nn as nn
    >>> import graphexec as gx
    >>> g = gx.Graph("two_towers")
    >>> x = g.input("x")
    >>> a = g.node("a", nn.Linear(4, 3), x)
    >>> b = g.node("b", nn.Linear(4, 3), x)
    >>> g.output(g.node("merge", gx.stack(dim=1), a, b))
    >>> g
    Graph('two_towers': 1 input, 3 nodes, 1 output)
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        self.id = next(_graph_ids)
        self._nodes: dict[str, Node] = {}
        self._inputs: list[str] = []
        self._outputs: Any = None
        self._has_outputs = False
        self._nx: nx.DiGraph | None = None  # built on first use of .nx
        self._order: list[str] | None = None  # program order, once computed
        self._deps: Mapping[str, tuple[str, ...]] | None = None
        self._arity = Arity()  # signatures read once per kind of callable, not per node
        #: The module this graph was traced from (`graphexec.trace`), called with the graph's
        #: inputs: `graphexec.plan` tries it as "the module as it is" against its plans.
        self.source: Callable[..., Any] | None = None
        #: How `graphexec.trace` imported the graph, and why that way (``"torch.fx"``,
        #: ``"torch.export: torch.fx could not trace ..."``); None for a declared graph.
        self.imported_by: str | None = None
        #: The module's own call, where the trace fixed some of its arguments (`accept_call`).
        self.call: ModuleCall | None = None

    # -- building ---------------------------------------------------------------------------
    def input(self, name: str) -> Ref:
        """Declare a graph input; runs bind positional arguments in declaration order."""
        self._add(Node(name, _graph_input, (), order=len(self._nodes)))
        self._inputs.append(name)
        return Ref(name, None, self.id)

    def node(
        self,
        name: str,
        fn: Callable[..., Any],
        *inputs: Ref | str | list[Ref | str] | tuple[Ref | str, ...],
        kwargs: Mapping[str, Any] | None = None,
        mutates: Iterable[int] = (),
        after: Iterable[Ref | str] = (),
        **fn_kwargs: Any,
    ) -> Ref:
        """Add a node computing ``fn(*inputs, **kwargs)`` and return a reference to its output.

        It reads as the torch call it makes: ``g.node("fuse", torch.cat, [a, b, c], dim=1)``
        is ``torch.cat([a, b, c], dim=1)``.

        Parameters
        ----------
        name : str
            Unique in the graph.
        fn : callable
            An ``nn.Module``, a merge op such as ``gx.stack(dim=1)``, or any callable.
        *inputs : Ref or str, or a list or tuple of them
            Other nodes' outputs (``ref`` or ``ref[i]``) or their names; a list (or tuple) of
            them is passed to ``fn`` as one list (tuple) argument, as ``torch.cat`` wants.
        kwargs : mapping, optional
            Constant keyword arguments passed on every call (``**fn_kwargs`` says the same).
        mutates : iterable of int, optional
            Positions of inputs that ``fn`` changes in place. The planner orders every other
            reader of those tensors by program order, and never drops this node.
        after : iterable of Ref or str, optional
            Nodes that must finish before this one starts, with no data passed.
        **fn_kwargs
            More constant keyword arguments of ``fn`` (``dim=1``).

        Raises
        ------
        DuplicateNameError
            If ``name`` is taken.
        UnknownNodeError
            If an input is a reference made by another graph.
        ArityError
            If ``fn``'s signature cannot take ``len(inputs)`` positional arguments.
        GraphError
            If ``fn`` is a class where an instance belongs (``nn.ReLU`` for ``nn.ReLU()``, a
            merge op's class, an ``autograd.Function`` without ``.apply``): naming the node.
        """
        if not callable(fn):
            raise GraphError(f"node '{name}': fn must be callable, got {type(fn).__name__}", name)
        check_instance(name, fn)
        if kwargs and fn_kwargs and (clash := fn_kwargs.keys() & kwargs.keys()):
            raise GraphError(f"node '{name}': {', '.join(sorted(clash))} given twice", name)
        kwargs = {**kwargs, **fn_kwargs} if kwargs else fn_kwargs  # **fn_kwargs is a new dict
        n_args = len(inputs)
        if any(isinstance(r, (list, tuple)) for r in inputs):  # faster than list | tuple
            if mutates:
                raise GraphError(f"node '{name}': mutates= with list inputs is not supported", name)
            fn, inputs = Packed.wrap(fn, inputs)
        refs = tuple(  # a Ref of this graph is taken as it is: the common case, kept fast
            r if type(r) is Ref and r.graph_id == self.id else self._as_ref(name, r) for r in inputs
        )
        mut = tuple(sorted(set(mutates))) if mutates else ()
        bad = [i for i in mut if not 0 <= i < len(refs)]
        if bad:
            raise GraphError(f"node '{name}': mutates={bad} but it has {len(refs)} inputs", name)
        order_deps = tuple(self._as_ref(name, r).node for r in after) if after else ()
        self._arity.check(name, fn.fn if isinstance(fn, Packed) else fn, n_args, kwargs)
        check_in_place(name, fn, mut)
        self._add(Node(name, fn, refs, kwargs, mut, order_deps, order=len(self._nodes)))
        return Ref(name, None, self.id)

    def output(self, *refs: Any, **named: Any) -> None:
        """Declare the graph's outputs.

        ``output(y)`` returns one value, ``output(y1, y2)`` a tuple, ``output(a=y1, b=y2)`` a
        dict; a single nested tuple/list/dict of refs (as a traced model returns) is kept as
        it is. Leaves that are not refs are returned as constants.

        Raises
        ------
        GraphError
            If the outputs were declared already: a second call would replace the first one's
            outputs silently, so all of them are declared in one call.
        """
        if self._has_outputs:
            raise GraphError(
                f"graph '{self.name}': outputs were already set "
                f"(-> {pytree.tree_map(str, self._outputs)}); declare every output in one "
                "g.output(...) call: g.output(a, b) returns both, g.output(a=a, b=b) a dict"
            )
        if refs and named:
            raise GraphError(f"graph '{self.name}': give outputs positionally or by name, not both")
        spec = named if named else (refs[0] if len(refs) == 1 else tuple(refs))
        self._outputs = pytree.tree_map(
            lambda r: self._as_ref("<output>", r) if isinstance(r, Ref | str) else r, spec
        )
        self._has_outputs = True

    def accept_call(self, parameters: Sequence[str], fixed: Mapping[str, Any]) -> None:
        """Also take the call of the module this graph was traced from, whose arguments
        include some the trace fixed (``attention_mask=None`` between two tensors: the graph
        has no input for it). `graphexec.trace` says so for the graphs it makes.

        Parameters
        ----------
        parameters : sequence of str
            The module's leading positional parameters, in order: graph inputs (the graph's
            first ones, in its order) and fixed arguments.
        fixed : mapping of str to value
            Every argument the trace fixed, and its value (``None``, a bool, number or
            string), positional or not.

        Raises
        ------
        GraphError
            If a fixed argument is a graph input, or the parameters' inputs are not the
            graph's leading inputs in order.

        Examples
        --------
        >>> import torch
        >>> g = Graph("whisper_like")
        >>> x, ids = g.input("features"), g.input("decoder_ids")
        >>> g.output(g.node("add", torch.add, x, ids))
        >>> g.accept_call(["features", "attention_mask", "decoder_ids"], {"attention_mask": None})
        >>> one = torch.ones(1)
        >>> g.graph_call((one, None, one), {}) == ((one, one), {})
        True
        >>> g.graph_call((one,), {"attention_mask": None, "decoder_ids": one})[1].keys()
        dict_keys(['decoder_ids'])
        """
        self.call = ModuleCall.of(self.name, self._inputs, parameters, fixed)

    def graph_call(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A call's arguments as the graph's inputs: the fixed arguments of the module's own
        call (`accept_call`), given as they were fixed, dropped; anything else as it is.

        Positional arguments are read as the module's parameters when there are more of them
        than graph inputs, or when a keyword names an input they would fill; otherwise they
        are the graph's own inputs, as before. Executors and `GraphModule` call this first.

        Raises
        ------
        ArityError
            If a fixed argument is given another value than the one it was fixed to.
        """
        if self.call is None:
            return args, dict(kwargs)
        return self.call.bind(self.name, self._inputs, args, kwargs)

    # -- reading ----------------------------------------------------------------------------
    @property
    def nodes(self) -> Mapping[str, Node]:
        """Every node, graph inputs included, in program (insertion) order."""
        return self._nodes

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> Any:
        """The output spec: a `Ref`, or a tuple/dict (possibly nested) of them."""
        return self._outputs

    def output_refs(self) -> list[Ref]:
        return [r for r in pytree.tree_leaves(self._outputs) if isinstance(r, Ref)]

    @property
    def nx(self) -> nx.DiGraph:
        """The dependency graph (data and ordering edges) as a ``networkx.DiGraph``.

        Built on first use and kept until a node is added; the planner does not need it.
        """
        if self._nx is None:
            dag = nx.DiGraph()
            dag.add_nodes_from(self._nodes)
            dag.add_edges_from((src, n) for n, deps in self.deps().items() for src in deps)
            self._nx = dag
        return self._nx

    def deps(self) -> Mapping[str, tuple[str, ...]]:
        """Node name -> the nodes it waits for (its inputs' nodes, then ``after=``), each once."""
        if self._deps is None:
            self._deps = MappingProxyType({n.name: _waits_for(n) for n in self._nodes.values()})
        return self._deps

    def program_order(self) -> list[str]:
        """Every node in the order eager code would run them: topological, ties broken by
        declaration order (so a graph declared inputs-first runs in declaration order).

        Raises
        ------
        UnknownNodeError, CycleError
            As `validate`.
        """
        if self._order is None:
            self._check_refs()
            self._order = self._topological_order()
        return list(self._order)

    def _topological_order(self) -> list[str]:
        ns = self._nodes
        order = lexicographic_order(list(ns), self.deps(), {n: v.order for n, v in ns.items()})
        if len(order) < len(ns):
            cycle = nx.find_cycle(self.nx)
            names = [u for u, _ in cycle] + [cycle[0][0]]
            raise CycleError(f"graph '{self.name}' has a cycle: {' -> '.join(names)}", names)
        return order

    def __getitem__(self, name: str) -> Ref:
        if name not in self._nodes:
            raise UnknownNodeError(f"graph '{self.name}' has no node '{name}'", name)
        return Ref(name, None, self.id)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes) - len(self._inputs)

    def __repr__(self) -> str:
        n_in, n_out = len(self._inputs), len(self.output_refs())
        return (
            f"Graph({self.name!r}: {n_in} input{'s' * (n_in != 1)}, {len(self)} nodes, "
            f"{n_out} output{'s' * (n_out != 1)})"
        )

    def __str__(self) -> str:
        rows = [repr(self)]
        if self.imported_by:
            rows.append(f"  imported by {self.imported_by}")
        if self.call is not None:
            fixed = ", ".join(f"{k}={v!r}" for k, v in self.call.fixed.items())
            rows.append(f"  fixed by the trace: {fixed} (a call gives them so, or leaves them out)")
        for node in self._nodes.values():
            if node.is_input:
                rows.append(f"  {node.name:<24} <input>")
                continue
            args = ", ".join(map(str, node.inputs))
            extra = f"  mutates {list(node.mutates)}" if node.mutates else ""
            read = {ref.node for ref in node.inputs}
            after = [a for a in node.after if a not in read]  # reading it already orders it
            extra += f"  after {after}" if after else ""
            rows.append(f"  {node.name:<24} {fn_name(node.fn)}({args}){extra}")
        rows.append(f"  -> {pytree.tree_map(str, self._outputs)}")
        return "\n".join(rows)

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Check what can only be checked once the graph is complete.

        Raises
        ------
        UnknownNodeError
            If an input or ``after=`` names no node of this graph.
        CycleError
            If the graph has a cycle; the message lists it (``a -> b -> a``).
        UnreachableOutputError
            If no outputs were declared, or an output names nothing the graph produces.
        """
        self.program_order()  # unknown references and cycles
        if not self._has_outputs:
            raise UnreachableOutputError(f"graph '{self.name}' declares no output (g.output(...))")
        for ref in self.output_refs():
            if ref.node not in self._nodes:
                raise UnreachableOutputError(
                    f"output '{ref}': no node or input '{ref.node}' in graph '{self.name}'",
                    ref.node,
                )

    # -- helpers ----------------------------------------------------------------------------
    def _check_refs(self) -> None:
        for name, srcs in self.deps().items():  # inputs, then after=, in order: the first missing
            for src in srcs:
                if src not in self._nodes:
                    raise UnknownNodeError(
                        f"node '{name}': input '{src}' is not a node of graph '{self.name}'", name
                    )

    def _add(self, node: Node) -> None:
        if node.name in self._nodes:
            kind = "an input" if self._nodes[node.name].is_input else "a node"
            raise DuplicateNameError(
                f"graph '{self.name}' already has {kind} named '{node.name}'", node.name
            )
        self._nodes[node.name] = node
        self._nx = self._order = self._deps = None

    def _as_ref(self, owner: str, ref: Ref | str) -> Ref:
        if isinstance(ref, str):
            return Ref(ref, None, self.id)
        if not isinstance(ref, Ref):
            raise GraphError(
                f"node '{owner}': inputs must be refs or node names, got {type(ref).__name__} "
                f"(pass constants with kwargs= or close over them)",
                owner,
            )
        if ref.graph_id != self.id:
            raise UnknownNodeError(
                f"node '{owner}': input '{ref}' belongs to another graph, not '{self.name}'", owner
            )
        return ref


def state_tensors(fn: Any) -> Iterator[torch.Tensor]:
    """The parameters, then the buffers, of a node's callable (nothing if it is no module)."""
    if isinstance(fn, nn.Module):
        yield from fn.parameters()
        yield from fn.buffers()


def expect_graph(obj: Any, where: str) -> None:
    """Raise a `TypeError` that says what to do when ``obj`` is not a `Graph`."""
    if isinstance(obj, Graph):
        return
    hint = ""
    if isinstance(obj, nn.Module):
        hint = f": it is an nn.Module; make a graph of it first: {where}(gx.trace(module))"
    raise TypeError(f"{where} expects a gx.Graph, got {type(obj).__name__}{hint}")
