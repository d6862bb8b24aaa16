"""Tuning: measured decisions, one layer above the planner and the executors (``gx.plan``).

The planner (`graphexec.planner.arrange`) is a pure pass from a graph and node costs to a
plan. Everything that needs the model run on real inputs happens here, in this order:

1. **Measure** each node (`graphexec.interpret.time_nodes`: the median of ``repeats`` timed
   sequential runs after a warm-up, under ``no_grad``).
2. **Arrange** (`graphexec.planner.arrange`) with the measured costs: chain fusion and
   inlining never lose (they remove hand-offs, never parallelism). This plan, run inline,
   is *the plan as it is*: the graph's nodes one after another on the calling thread, as
   one generated function (`graphexec.codegen`), like the ``torch.fx`` module it may come from.
3. **Horizontal fusion** (`graphexec.hfuse`): groups of small identical same-level modules
   become one batched call, by the rule in `graphexec.hfuse.should_fuse`; the fused plan is
   kept only if it beats the plain one side by side (`trial`). Measured on real models
   (GoogLeNet, CLIP), fusing two small convolutions or q/k/v projections made them slower.
4. **Overlap.** Torch already spreads one op over every core, and branch concurrency gives each
   concurrent task one core instead. `_concurrency_pays` estimates both schedules from the
   per-node times at one and at all intra-op threads; where the estimate says overlap pays,
   `_overlap_trial` runs the plan both ways and keeps overlap only if it wins. Per-node times
   cannot see memory bandwidth or OpenMP workers that spin after each parallel region
   (libgomp's default) and take a core from the other lane: measured here, 8 wide branches
   estimated at 0.8x of inline ran 1.2x.
5. **Compiled tasks** (``backend=``, `graphexec.backends.compile_plan`), kept only if they
   beat the plan as it is.

Every kept decision must make the plan faster than the one without it by `GAIN` (5%),
measured side by side on the example inputs (`trial`: shuffled rounds, the median of the
per-round ratios, so one outlier cannot decide), twice in a row (`trial_twice`: a burst of
load from another process can fool one half-second trial), so the plan is never slower than
running the graph as it is beyond noise. An overlap trial faster than the lanes could ever
be (below 1/lanes of one by one) is a disturbed measurement, not a win. Each decision is
written into the plan (``serial_reason``, ``fusion``, ``decisions``), so ``print(plan)`` says
what was measured and why it was kept or dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .backends import compile_plan
from .executors.sequential import SequentialExecutor
from .executors.threads import ThreadExecutor
from .graph import Graph, expect_graph
from .hfuse import has_candidates, horizontal_fuse
from .interpret import bind_inputs, compute_order, time_nodes
from .planner import INLINE_BELOW, arrange
from .plans import Plan
from .units import format_seconds, speed_words

__all__ = ["GAIN", "plan", "trial", "trial_twice"]

#: A measured decision is kept when the plan it makes takes below this share of the plan
#: without it (side by side, median of rounds): 5% beats hand-off costs and noise.
GAIN = 0.95
OVERLAP_GAIN = GAIN  # the name before every decision shared one margin


def plan(
    graph: Graph,
    example_inputs: Sequence[Any] | None = None,
    *,
    inline_below: float = INLINE_BELOW,
    fuse_chains: bool = True,
    repeats: int = 5,
    hfuse: bool | str = "auto",
    backend: str = "eager",
    check: bool = True,
    source_margin: float | None = None,
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
        ``example_inputs``). ``"onnxruntime"`` is inference-only. Kept only when the compiled
        plan beats the plan run eagerly (with ``check``); ``plan.decisions`` says which.
    check : bool
        With ``example_inputs``: keep horizontal fusion, overlap and compiled tasks only when
        they win a side-by-side trial against the plan without them (default). False: keep
        what the per-node measurements and rules say, untried (faster planning).
    source_margin : float, optional
        For a traced graph (``graph.source``, with ``example_inputs`` and ``check``): the best
        plan is kept when it takes at most this share of the module it was traced from, side
        by side; otherwise the plan runs that module as it is (``plan.as_is``). Default
        `SOURCE_MARGIN` (1.03: a plan within 3% of the module is kept). The ``torch.compile``
        backend passes `GAIN`: its plan must beat Dynamo's graph by 5%.

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
    expect_graph(graph, "gx.plan")
    if hfuse not in (True, False, "auto"):
        raise ValueError(f"hfuse must be True, False or 'auto', got {hfuse!r}")
    if backend != "eager" and example_inputs is None:
        raise ValueError(f"backend={backend!r} compiles tasks for example_inputs: give them")
    graph.validate()
    if example_inputs is not None:
        bind_inputs(graph, example_inputs, {})  # arity, before anything runs
    with _no_gc():
        margin = SOURCE_MARGIN if source_margin is None else source_margin
        return _tune(graph, example_inputs, inline_below, fuse_chains, repeats, hfuse, backend,
                     check, margin)  # fmt: skip


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
    check: bool,
    source_margin: float,
) -> Plan:
    arranging = {"inline_below": inline_below, "fuse_chains": fuse_chains}
    if example_inputs is None:
        fusion: list[str] = []
        if hfuse is True:
            graph = _fuse_horizontally(graph, None, None, fusion)
        return dataclasses.replace(arrange(graph, **arranging), fusion=tuple(fusion))
    costs = _median(time_nodes(graph, compute_order(graph), example_inputs, repeats))
    p = arrange(graph, costs, **arranging)
    as_is = p
    if hfuse is not False and has_candidates(graph):
        p = _fusion_step(p, example_inputs, repeats, arranging, forced=hfuse is True or not check)
    if p.max_width > 1:
        p = _overlap_step(p, example_inputs, repeats, check)
    if backend != "eager":  # compiled last: its thread budget follows the overlap decision
        p = _compile_step(p, as_is, backend, example_inputs, check)
    if check and graph.source is not None:
        p = _source_step(p, graph, graph.source, example_inputs, source_margin)
    return p


def _median(samples: Mapping[str, list[float]]) -> dict[str, float]:
    return {n: statistics.median(s) for n, s in samples.items()}


#: Trials run every candidate once per round, in a shuffled order, for at least
#: `TRIAL_ROUNDS` rounds and then while `TRIAL_BUDGET` seconds last (at most `TRIAL_MAX`).
TRIAL_ROUNDS, TRIAL_MAX, TRIAL_BUDGET = 5, 41, 0.5


def trial(runs: Mapping[str, Callable[[], Any]]) -> tuple[dict[str, float], float]:
    """Time candidates side by side: each one's median ratio to the first, and the first's
    median seconds.

    Every round runs each candidate once, in an order shuffled by a fixed seed (so no
    candidate always follows another's spinning OpenMP workers); a round's ratios compare
    runs made moments apart, and the median over rounds ignores outlier rounds (a scheduler
    hiccup, a page fault) where one slow sample would decide a mean or a single run.
    """
    names = list(runs)
    rng = random.Random(0)
    rounds: list[dict[str, float]] = []
    with torch.no_grad():
        for fn in runs.values():  # warm-up: pools, allocators, lazy inits
            fn()
        start = time.perf_counter()
        while len(rounds) < TRIAL_ROUNDS or (
            len(rounds) < TRIAL_MAX and time.perf_counter() - start < TRIAL_BUDGET
        ):
            rng.shuffle(names)
            times = {}
            for n in names:
                t0 = time.perf_counter()
                runs[n]()
                times[n] = time.perf_counter() - t0
            rounds.append(times)
    base = next(iter(runs))
    ratios = {n: statistics.median(r[n] / r[base] for r in rounds) for n in runs}
    return ratios, statistics.median(r[base] for r in rounds)


def trial_twice(
    runs: Mapping[str, Callable[[], Any]], candidate: str, gain: float = GAIN
) -> tuple[float, float]:
    """`trial`, and a second one when ``candidate`` won the first (ran below ``gain`` of the
    first entry): its worse ratio of the two, and the first entry's median seconds.

    A decision kept on one trial can be fooled by a burst of load on a shared machine (a
    trial is half a second); winning two in a row by chance is much rarer, and the second
    costs time only where something is about to be kept.
    """
    ratios, base = trial(runs)
    if ratios[candidate] >= gain:
        return ratios[candidate], base
    again, _ = trial(runs)
    return max(ratios[candidate], again[candidate]), base


def _lanes() -> int:
    """Branches that can run at once: the cores torch may use, 2 at least (as a
    `ThreadExecutor` sizes its pool)."""
    return max(2, torch.get_num_threads())


def _threads() -> str:
    """Torch's intra-op thread count in words (``1 intra-op thread``, ``2 intra-op threads``)."""
    n = torch.get_num_threads()
    return f"{n} intra-op thread{'s' * (n != 1)}"


def _disturbed(ratio: float, same_ops: bool) -> bool:
    """A plan that runs the same ops as its reference, only overlapped, cannot take less than
    1/lanes of its time: a trial that says so was disturbed (measured under a burst of load
    on 2 cores: a CLIP plan 'ran 0.26x' of its module in two trials, then 1.8x of it)."""
    return same_ops and ratio < 0.9 / _lanes()


def _inline_run(p: Plan, example_inputs: Sequence[Any]) -> Callable[[], Any]:
    ex = SequentialExecutor()
    return lambda: ex.run(p, *example_inputs)


def _fusion_step(
    p: Plan, example_inputs: Sequence[Any], repeats: int, arranging: Mapping[str, Any],
    forced: bool,
) -> Plan:  # fmt: skip
    """Horizontal fusion, kept only when the fused plan runs faster than the plain one."""
    notes: list[str] = []
    fused_graph = _fuse_horizontally(p.graph, example_inputs, p.node_costs, notes)
    if fused_graph is p.graph:
        return dataclasses.replace(p, fusion=tuple(notes))
    costs = _median(time_nodes(fused_graph, compute_order(fused_graph), example_inputs, repeats))
    fused = arrange(fused_graph, costs, warn_dead=False, **arranging)
    if forced:
        return dataclasses.replace(fused, fusion=tuple(notes))
    ratio, _ = trial_twice({"plain": _inline_run(p, example_inputs),
                            "fused": _inline_run(fused, example_inputs)}, "fused")  # fmt: skip
    if ratio < GAIN:
        line = f"kept: the fused plan ran {_ran(ratio, 'the unfused one')} (measured)"
        return dataclasses.replace(fused, fusion=(*notes, line))
    notes = [n.replace("fused ", "not fused ", 1) if n.startswith("fused ") else n for n in notes]
    line = (f"dropped: the fused plan ran {_ran(ratio, 'the unfused one')} (measured); "
            f"fusion must save {1 - GAIN:.0%}")  # fmt: skip
    return dataclasses.replace(p, fusion=(*notes, line))


def _overlap_step(p: Plan, example_inputs: Sequence[Any], repeats: int, check: bool) -> Plan:
    """Overlap branches on threads only where the estimate and then a trial say it pays."""
    costs_1 = p.node_costs  # what a pool thread (one intra-op thread) takes
    if torch.get_num_threads() > 1:
        compute = compute_order(p.graph)
        costs_1 = _median(time_nodes(p.graph, compute, example_inputs, repeats, threads=1))
    reason = _concurrency_pays(p, costs_1)
    if reason is not None or not check:
        return dataclasses.replace(p, serial_reason=reason)
    ratio, said = _overlap_trial(p, example_inputs)  # the estimate says it pays: try it
    if ratio >= GAIN:
        return dataclasses.replace(p, serial_reason=said)
    return dataclasses.replace(p, decisions=(*p.decisions, f"overlap kept: {said}"))


def _compile_step(
    p: Plan, as_is: Plan, backend: str, example_inputs: Sequence[Any], check: bool
) -> Plan:
    """Compiled tasks, kept only when they beat the plan as it is (run inline, eagerly)."""
    compiled = compile_plan(p, backend, example_inputs)
    said = f"{backend}: {len(compiled.tasks)} tasks compiled"
    if compiled.fallbacks:
        said += ", eager fallback for " + ", ".join(
            f"{t} ({why})" for t, why in compiled.fallbacks.items()
        )
    if not compiled.tasks:
        return dataclasses.replace(p, decisions=(*p.decisions, said + "; nothing to run compiled"))
    candidate = dataclasses.replace(p, compiled=compiled)
    if not check:
        return dataclasses.replace(candidate, decisions=(*p.decisions, said + "; not tried"))
    runner = ThreadExecutor() if candidate.parallel else SequentialExecutor()
    with runner:
        ratio, _ = trial_twice({"as is": _inline_run(as_is, example_inputs),
                                "compiled": lambda: runner.run(candidate, *example_inputs)},
                               "compiled")  # fmt: skip
    if ratio < GAIN:
        return dataclasses.replace(
            candidate,
            decisions=(*p.decisions, f"{said}; kept: ran {_ran(ratio, 'eager tasks')}"),
        )
    line = (f"{said}; dropped: ran {_ran(ratio, 'the plan run eagerly as it is')} "
            f"(measured), must save {1 - GAIN:.0%}")  # fmt: skip
    return dataclasses.replace(p, decisions=(*p.decisions, line))


#: The traced module is run as it is when the best plan takes longer than this share of it.
SOURCE_MARGIN = 1.03


def _source_step(
    p: Plan, graph: Graph, source: Callable[..., Any], example_inputs: Sequence[Any],
    margin: float,
) -> Plan:  # fmt: skip
    """The best plan against the module the graph was traced from, side by side: the module
    as it is wins unless the plan takes at most ``margin`` of its time. Where the plan must
    beat the module (``margin`` below 1, as the ``torch.compile`` backend asks), it must do so
    in two trials in a row, and by no more than overlap alone could."""
    runner = ThreadExecutor() if p.parallel or p.compiled else SequentialExecutor()
    with runner, torch.no_grad():
        try:
            same = _same(source(*example_inputs), runner.run(p, *example_inputs))
        except Exception:  # noqa: BLE001 - a source that cannot take the graph's inputs
            same = False
        if not same:
            return p
        runs = {"module": lambda: source(*example_inputs),
                "plan": lambda: runner.run(p, *example_inputs)}  # fmt: skip
        # a second trial only where the plan must win (a default kept needs no confirmation)
        ratio, module_s = trial_twice(runs, "plan", gain=margin if margin < 1 else 0.0)
    same_ops = p.compiled is None and p.graph is graph
    if ratio <= margin and not (margin < 1 and _disturbed(ratio, same_ops)):
        line = f"the plan ran {_ran(ratio, 'the traced module as it is')} (measured): kept"
        return dataclasses.replace(p, decisions=(*p.decisions, line))
    why = f"{_ran(ratio, 'it')} ({format_seconds(ratio * module_s)}; measured)"
    if ratio <= margin:
        why += (f", faster than overlapping the same ops on {_lanes()} lanes could be: a "
                "disturbed measurement, not a win")  # fmt: skip
    line = f"runs the traced module as it is: the best plan ran {why}"
    return dataclasses.replace(p, as_is=source, serial_reason=p.serial_reason or line,
                               compiled=None, decisions=(*p.decisions, line))  # fmt: skip


def _ran(ratio: float, than: str) -> str:
    """A trial's ratio (candidate time / reference time) in words: ``1.04x slower than X``."""
    return speed_words(ratio, 1.0, than)


def _same(a: Any, b: Any) -> bool:
    """Equal output structures of allclose tensors (the source and the plan must agree)."""
    la, ta = torch.utils._pytree.tree_flatten(a)
    lb, tb = torch.utils._pytree.tree_flatten(b)
    if len(la) != len(lb):
        return False
    return all(
        torch.allclose(x, y, rtol=1e-4, atol=1e-5) if isinstance(x, torch.Tensor) and
        isinstance(y, torch.Tensor) and x.shape == y.shape else type(x) is type(y)
        for x, y in zip(la, lb, strict=True)
    )  # fmt: skip


def _fuse_horizontally(
    graph: Graph,
    example_inputs: Sequence[Any] | None,
    costs: Mapping[str, float] | None,
    notes: list[str],
) -> Graph:
    """The graph with small identical same-level modules fused (`graphexec.hfuse`)."""
    if not has_candidates(graph):  # the common case: nothing to rewrite
        return graph
    return horizontal_fuse(graph, example_inputs, costs=dict(costs) if costs else None,
                           notes=notes)  # fmt: skip


def _concurrency_pays(p: Plan, costs_1: Mapping[str, float]) -> str | None:
    """None if overlapping branches should beat running every task with all cores, else why.

    Estimates both schedules from the measured costs: one by one with all threads (the
    measured ``cost``), against levels whose tasks are packed longest-first on one lane per
    core at one thread each (a lone task keeps all threads, as the executors run it on the
    calling thread).
    """
    lanes = _lanes()
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
    if overlap < GAIN * serial:
        return None
    return (
        f"overlapping branches on {lanes} one-thread lanes would take ~{format_seconds(overlap)}, "
        f"one by one with {_threads()} ~{format_seconds(serial)} "
        "(measured); "
        f"overlap must save {1 - GAIN:.0%} to beat hand-off costs and noise"
    )


def _overlap_trial(p: Plan, example_inputs: Sequence[Any]) -> tuple[float, str]:
    """Run the plan overlapped on threads and inline, side by side: the ratio of overlapped
    to inline time, and what it means in words."""
    with ThreadExecutor() as threads:
        ratio, inline = trial_twice({"inline": _inline_run(p, example_inputs),
                                     "overlap": lambda: threads.run(p, *example_inputs)},
                                    "overlap")  # fmt: skip
    if _disturbed(ratio, same_ops=True):
        ratio = 1.0  # not a win: keep the plan as it is
    said = (
        f"overlapping branches ran {_ran(ratio, 'one by one')} (one by one: "
        f"{_threads()}, {format_seconds(inline)}; measured on "
        f"the example inputs)"
    )
    if ratio >= GAIN:
        said += f"; overlap must save {1 - GAIN:.0%} to be chosen"
    return ratio, said
