"""The one way graphexec runs nodes in order: executors, measuring, shape inference, examples.

`run_nodes` is the loop every task runs through (`graphexec.executors.base.run_task`) and
the loop the tuner times nodes with; `program_values` runs a whole graph in program order
for the rewrites that need example values (horizontal fusion reads shapes, compiled backends
read each task's example inputs). One loop means one place that resolves references,
passes ``kwargs``, frees values at their last use and names the node that raised.

>>> import torch, graphexec as gx
>>> g = gx.Graph("g")
>>> g.output(g.node("double", lambda t: 2 * t, g.input("x")))
>>> program_values(g, (torch.ones(2),))["double"].tolist()
[2.0, 2.0]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .errors import ArityError, NodeError, none_error
from .graph import Graph, Node, Ref
from .policy import DEFAULT

__all__ = [
    "bind_inputs",
    "check_input",
    "check_none",
    "program_values",
    "run_nodes",
    "time_nodes",
    "time_nodes_beside",
]


def run_nodes(
    nodes: Mapping[str, Node],
    names: Sequence[str],
    values: dict[str, Any],
    release: Sequence[Sequence[str]] = (),
    task: str | None = None,
    samples: Mapping[str, list[float]] | None = None,
    protect: bool = False,
    strict: bool = False,
) -> dict[str, Any]:
    """Run ``names`` in order, reading and filling ``values``; return ``values``.

    Parameters
    ----------
    nodes : mapping of node name to Node
    names : sequence of str
        A topological order (a task's nodes, or a graph's program order).
    values : dict
        Holds every value the nodes read from outside ``names``; filled in place.
    release : sequence of sequences, optional
        For each node, the values to drop after it ran (their last use: as eager frees them).
    task : str, optional
        Named in the `NodeError` beside the node.
    samples : mapping of node name to list, optional
        When given, each node's seconds are appended to its list (measuring).
    protect : bool
        Clone the tensors a node writes in place first, so repeated timed runs leave the
        example inputs as they were.
    strict : bool
        Blame a ``None`` that a node reads on the node that returned it (a forgotten
        ``return``), not on the reader.

    Raises
    ------
    NodeError
        Naming the node that raised, with the original exception as ``__cause__``.
    """
    timed = samples is not None
    for i, name in enumerate(names):
        node = nodes[name]
        if strict:
            check_none(nodes, node, values)
        args = [values[r.node] if r.index is None else values[r.node][r.index]
                for r in node.inputs]  # fmt: skip
        if protect and node.mutates:
            args = [a.clone() if j in node.mutates and isinstance(a, torch.Tensor) else a
                    for j, a in enumerate(args)]  # fmt: skip
        t0 = time.perf_counter() if timed else 0.0
        try:
            values[name] = node.fn(*args, **node.kwargs) if node.kwargs else node.fn(*args)
        except Exception as exc:
            check_none(nodes, node, values)  # a None it read is the real fault
            raise NodeError(name, exc, task) from exc
        if timed:
            samples[name].append(time.perf_counter() - t0)
        del args
        if release:
            for v in release[i]:  # last use: free it now, as eager would
                del values[v]
    return values


def check_none(nodes: Mapping[str, Node], reader: Node | None, values: Mapping[str, Any],
                refs: Sequence[Ref] = ()) -> None:  # fmt: skip
    for r in reader.inputs if reader is not None else refs:
        if values[r.node] is None and not nodes[r.node].is_input:
            who = f"node '{reader.name}' reads" if reader is not None else "is a graph output"
            raise none_error(r.node, who)


def check_input(graph: Graph, name: str, value: Any) -> None:
    """Raise `TypeError` for run inputs that are surely wrong, naming the input."""
    if isinstance(value, Ref):
        raise TypeError(
            f"graph '{graph.name}': input '{name}' is a graph reference ({value!r}); "
            f"pass the value (a tensor) to run on"
        )
    if type(value).__name__ == "ndarray":
        raise TypeError(
            f"graph '{graph.name}': input '{name}' is a numpy array; pass a tensor "
            f"(torch.from_numpy(array))"
        )


def bind_inputs(graph: Graph, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Map positional and keyword arguments to graph inputs, or raise `ArityError`. The
    module's own call of a traced graph is taken too: arguments the trace fixed, given with
    their fixed values, are dropped (`Graph.graph_call`)."""
    args, kwargs = graph.graph_call(tuple(args), kwargs)
    names = graph.inputs
    if len(args) > len(names):
        raise ArityError(
            f"graph '{graph.name}' takes {len(names)} input{'s' * (len(names) != 1)} "
            f"({', '.join(names) or 'none'}), got {len(args)}"
        )
    env = dict(zip(names, args, strict=False))
    for k, v in kwargs.items():
        if k not in names:
            raise ArityError(
                f"graph '{graph.name}' has no input '{k}' (inputs: {', '.join(names)})", k
            )
        if k in env:
            raise ArityError(f"graph '{graph.name}': input '{k}' given twice", k)
        env[k] = v
    for k, v in env.items():
        check_input(graph, k, v)
    missing = [n for n in names if n not in env]
    if missing:
        packed = len(args) == 1 and isinstance(args[0], (list, tuple)) and not kwargs
        hint = (f"; got one {type(args[0]).__name__} of {len(args[0])}: pass the inputs as "
                "separate arguments, run(plan, *inputs)") if packed else ""  # fmt: skip
        raise ArityError(
            f"graph '{graph.name}' takes {len(names)} inputs ({', '.join(names)}); "
            f"missing {', '.join(missing)}{hint}",
            missing[0],
        )
    return env


def compute_order(graph: Graph) -> list[str]:
    """The graph's non-input nodes in program order."""
    return [n for n in graph.program_order() if not graph.nodes[n].is_input]


def program_values(
    graph: Graph, example_inputs: Sequence[Any], names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every value of one ``no_grad`` run in program order (graph inputs included).

    ``names``: the nodes to run, in a topological order (default: every node).
    """
    env = bind_inputs(graph, example_inputs, {})
    with torch.no_grad():
        return run_nodes(graph.nodes, compute_order(graph) if names is None else names, env,
                         protect=True)  # fmt: skip


def time_nodes(
    graph: Graph,
    names: Sequence[str],
    example_inputs: Sequence[Any],
    repeats: int,
    threads: int | None = None,
    keep: Callable[[Mapping[str, Any]], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each node over ``repeats`` sequential ``no_grad`` runs, after a warm-up run.

    With ``threads``, the calling thread runs with that many intra-op threads meanwhile.
    ``keep`` is called with every value of the warm-up run (`graphexec.tuning.Sample`).
    """
    before = torch.get_num_threads()
    samples: dict[str, list[float]] = {n: [] for n in names}
    discard: dict[str, list[float]] = {n: [] for n in names}
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for rep in range(repeats + 1):  # the first run warms caches and allocators
                env = bind_inputs(graph, example_inputs, {})
                run_nodes(graph.nodes, names, env, samples=samples if rep else discard,
                          protect=True, strict=not rep)  # fmt: skip
                if not rep:
                    check_none(graph.nodes, None, env, graph.output_refs())
                    if keep is not None:
                        keep(env)
    finally:
        torch.set_num_threads(before)
    return samples


def time_nodes_beside(
    graph: Graph,
    names: Sequence[str],
    example_inputs: Sequence[Any],
    repeats: int,
    elsewhere: Callable[[Callable[[], Any]], Any],
    drop: float = DEFAULT.drop,
    keep: Callable[[Mapping[str, Any]], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds of each node here and through ``elsewhere`` (which runs a function on another
    thread, e.g. a pool thread at 1 intra-op thread), interleaved run by run so both see the
    same moments of the machine's load; one warm-up run each first.

    When the runs here take over ``drop`` (the policy's) times those elsewhere twice in a row
    (torch's threads collapsing under load), they stop: the samples so far say enough.

    Returns ``(here, there)``: node name -> up to ``repeats`` samples each (one at least).
    ``keep`` is called with every value of the first run here (`graphexec.tuning.Sample`).
    """
    here: dict[str, list[float]] = {n: [] for n in names}
    there: dict[str, list[float]] = {n: [] for n in names}
    discard: dict[str, list[float]] = {n: [] for n in names}

    def one(samples: dict[str, list[float]], strict: bool, kept: Any = None) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            env = bind_inputs(graph, example_inputs, {})
            run_nodes(graph.nodes, names, env, samples=samples, protect=True, strict=strict)
            if strict:
                check_none(graph.nodes, None, env, graph.output_refs())
        took = time.perf_counter() - start
        if kept is not None:
            kept(env)
        return took

    slow = one(discard, True, keep) > drop * elsewhere(lambda: one(discard, strict=False))
    stop = False
    for _ in range(repeats):
        took = 0.0 if stop else one(here, strict=False)
        away = elsewhere(lambda: one(there, strict=False))
        if not stop:
            stop, slow = slow and took > drop * away, took > drop * away
    return here, there
