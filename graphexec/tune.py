"""Tuning: measured decisions, one layer above the planner and the executors (``gx.plan``).

The planner (`graphexec.planner.arrange`) is a pure pass from a graph and node costs to a
plan. Everything that needs the model run on real inputs happens here, in this order:

1. **Measure** each node (`graphexec.interpret.time_nodes`: the median of ``repeats`` timed
   sequential runs after a warm-up, under ``no_grad``), with the caller's intra-op threads and
   with one (what a pool thread gets).
2. **Horizontal fusion** (`graphexec.hfuse`): groups of small identical same-level modules
   become one batched call, by the rule in `graphexec.hfuse.should_fuse`.
3. **Arrange** (`graphexec.planner.arrange`) with the measured costs.
4. **Overlap.** Torch already spreads one op over every core, and branch concurrency gives each
   concurrent task one core instead. `_concurrency_pays` estimates both schedules from the
   per-node times; where the estimate says overlap pays, `_overlap_trial` runs the plan both
   ways, interleaved, and keeps overlap only if it saves `OVERLAP_GAIN`. Per-node times
   cannot see memory bandwidth or OpenMP workers that spin after each parallel region
   (libgomp's default) and take a core from the other lane: measured here, 8 wide branches
   estimated at 0.8x of inline ran 1.2x.
5. **Compiled tasks** (``backend=``, `graphexec.backends.compile_plan`).

Each decision is written into the plan (``serial_reason``, ``fusion``, ``compiled``), so
``print(plan)`` says what was measured and why it was kept or dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from .backends import compile_plan
from .executors.sequential import SequentialExecutor
from .executors.threads import ThreadExecutor
from .graph import Graph
from .hfuse import has_candidates, horizontal_fuse
from .interpret import bind_inputs, compute_order, time_nodes
from .planner import INLINE_BELOW, arrange
from .plans import Plan
from .units import format_seconds

__all__ = ["OVERLAP_GAIN", "plan"]

#: Overlap is chosen when it takes below this share of running the tasks one by one.
OVERLAP_GAIN = 0.95


def plan(
    graph: Graph,
    example_inputs: Sequence[Any] | None = None,
    *,
    inline_below: float = INLINE_BELOW,
    fuse_chains: bool = True,
    repeats: int = 3,
    hfuse: bool | str = "auto",
    backend: str = "eager",
) -> Plan:
    """Plan a graph: measure its nodes (with ``example_inputs``), arrange it, try what can lose.

    Parameters
    ----------
    graph : Graph
        A complete graph (outputs declared).
    example_inputs : sequence, optional
        Positional graph inputs. When given, each node is timed (median of ``repeats`` runs
        after one warm-up, under ``torch.no_grad``) and costs are seconds measured here;
        otherwise they are estimated from parameter counts.
    inline_below : float
        Tasks cheaper than this many seconds are folded into their consumer or run inline.
    fuse_chains : bool
        Fuse straight chains into one task (default). Off: one task per node.
    repeats : int
        Timed runs when measuring.
    hfuse : {"auto", True, False}
        Horizontal fusion (`graphexec.hfuse`): same-level nodes with identical module
        structure run as one batched call. ``"auto"`` (default): with ``example_inputs``, fuse
        the groups whose members measure below `graphexec.hfuse.FUSE_MEMBER_BELOW` (small
        members: overhead-bound); without them, fuse nothing. ``True``: fuse every group (by
        the same rule when measured). The plan then runs the fused graph (``plan.graph``),
        which shares the original modules and parameters; ``plan.fusion`` says what was
        fused and why.
    backend : {"eager", "inductor", "onnxruntime"}
        Compile each dispatched task (`graphexec.backends.compile_plan`; needs
        ``example_inputs``). ``"onnxruntime"`` is inference-only.

    Returns
    -------
    Plan

    Raises
    ------
    GraphError
        Any of its subclasses, naming the node, if the graph is wrong (see `Graph.validate`),
        or `ArityError` if ``example_inputs`` has the wrong length.

    Examples
    --------
    >>> import torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("diamond")
    >>> x = g.input("x")
    >>> a = g.node("a", nn.Linear(512, 512), x)
    >>> b = g.node("b", nn.Linear(512, 512), x)
    >>> g.output(g.node("sum", gx.add(), a, b))
    >>> p = gx.plan(g)
    >>> p.levels
    (('a', 'b'), ('sum',))
    >>> p.tasks["sum"].inline  # a merge op is not worth a thread hand-off
    True
    >>> gx.plan(g, inline_below=1.0).levels  # everything cheap: one task, run inline
    (('a..sum',),)
    """
    if hfuse not in (True, False, "auto"):
        raise ValueError(f"hfuse must be True, False or 'auto', got {hfuse!r}")
    if backend != "eager" and example_inputs is None:
        raise ValueError(f"backend={backend!r} compiles tasks for example_inputs: give them")
    graph.validate()
    if example_inputs is not None:
        bind_inputs(graph, example_inputs, {})  # arity, before anything runs
    with _no_gc():
        return _tune(graph, example_inputs, inline_below, fuse_chains, repeats, hfuse, backend)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Planning allocates ~10 objects per node and frees nothing cyclic: the collector's full
    passes over the graph cost a third of a 100k-node plan. Restored on every path."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _tune(
    graph: Graph,
    example_inputs: Sequence[Any] | None,
    inline_below: float,
    fuse_chains: bool,
    repeats: int,
    hfuse: bool | str,
    backend: str,
) -> Plan:
    fusion: list[str] = []
    if hfuse is True or (hfuse == "auto" and example_inputs is not None):
        graph = _fuse_horizontally(graph, example_inputs, fusion)
    arranging = {"inline_below": inline_below, "fuse_chains": fuse_chains}
    if example_inputs is None:
        return dataclasses.replace(arrange(graph, **arranging), fusion=tuple(fusion))
    compute = compute_order(graph)
    costs = _median(time_nodes(graph, compute, example_inputs, repeats))
    p = dataclasses.replace(arrange(graph, costs, **arranging), fusion=tuple(fusion))
    if torch.get_num_threads() > 1 and p.max_width > 1:
        # what a pool thread (one intra-op thread) would take
        costs_1 = _median(time_nodes(graph, compute, example_inputs, repeats, threads=1))
        reason = _concurrency_pays(p, costs_1)
        if reason is None:  # the estimate says overlap pays: check it on the real thing
            reason = _overlap_trial(p, example_inputs, max(1, repeats))
        p = dataclasses.replace(p, serial_reason=reason)
    if backend != "eager":  # compiled last: its thread budget follows the overlap decision
        p = dataclasses.replace(p, compiled=compile_plan(p, backend, example_inputs))
    return p


def _median(samples: Mapping[str, list[float]]) -> dict[str, float]:
    return {n: statistics.median(s) for n, s in samples.items()}


def _fuse_horizontally(
    graph: Graph, example_inputs: Sequence[Any] | None, notes: list[str]
) -> Graph:
    """The graph with small identical same-level modules fused (`graphexec.hfuse`)."""
    if not has_candidates(graph):  # the common case: nothing to measure or rewrite
        return graph
    costs = None
    if example_inputs is not None:
        costs = _median(time_nodes(graph, compute_order(graph), example_inputs, repeats=1))
    return horizontal_fuse(graph, example_inputs, costs=costs, notes=notes)


def _concurrency_pays(p: Plan, costs_1: Mapping[str, float]) -> str | None:
    """None if overlapping branches should beat running every task with all cores, else why.

    Estimates both schedules from the measured costs: one by one with all threads (the
    measured ``cost``), against levels whose tasks are packed longest-first on one lane per
    core at one thread each (a lone task keeps all threads, as the executors run it on the
    calling thread).
    """
    lanes = torch.get_num_threads()
    serial = overlap = 0.0
    for level in p.levels:
        here = [p.tasks[t].cost for t in level if p.tasks[t].inline]
        away = [sum(costs_1[n] for n in p.tasks[t].nodes) for t in level
                if not p.tasks[t].inline]  # fmt: skip
        serial += sum(p.tasks[t].cost for t in level)
        if len(away) <= 1:
            overlap += sum(here) + sum(p.tasks[t].cost for t in level if not p.tasks[t].inline)
            continue
        load = [0.0] * lanes
        for c in sorted(away, reverse=True):  # longest processing time first
            load[load.index(min(load))] += c
        overlap += max(load) + sum(here)
    if overlap < OVERLAP_GAIN * serial:
        return None
    return (
        f"overlapping branches on {lanes} one-thread lanes would take ~{format_seconds(overlap)}, "
        f"one by one with {lanes} intra-op threads ~{format_seconds(serial)} (measured); "
        f"overlap must save {1 - OVERLAP_GAIN:.0%} to beat hand-off costs and noise"
    )


def _overlap_trial(p: Plan, example_inputs: Sequence[Any], repeats: int) -> str | None:
    """Run the plan overlapped on threads and inline, interleaved; None if overlap wins."""
    samples: dict[str, list[float]] = {"overlap": [], "inline": []}
    with torch.no_grad(), ThreadExecutor() as threads:
        runners = {"overlap": threads, "inline": SequentialExecutor()}
        for rep in range(2 * repeats + 1):
            for name, ex in runners.items():
                t0 = time.perf_counter()
                ex.run(p, *example_inputs)
                if rep:  # the first round warms the pool and the allocator
                    samples[name].append(time.perf_counter() - t0)
    overlap = statistics.median(samples["overlap"])
    inline = statistics.median(samples["inline"])
    if overlap < OVERLAP_GAIN * inline:
        return None
    return (
        f"overlapping branches ran in {format_seconds(overlap)}, one by one with "
        f"{torch.get_num_threads()} intra-op threads in {format_seconds(inline)} (measured on "
        f"the example inputs); overlap must save {1 - OVERLAP_GAIN:.0%} to be chosen"
    )
