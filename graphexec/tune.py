"""Tuning: measured decisions, one layer above the planner and the executors (``gx.plan``).

The planner (`graphexec.planner.arrange`) is a pure pass from a graph and node costs to a
plan. Everything that needs the model run on real inputs happens here, in this order::

    plan(graph, example_inputs)
      -> _cached_or_measured      a plan rebuilt from the cache (`graphexec.cache`) when one fits
      -> _measured                otherwise, and stored for the next process:
           node_costs             each node at the caller's threads and at 1 (interleaved); the
                                  first run's values fill the sample (`graphexec.tuning`)
           arrange                chain fusion and inlining: they never lose
           STEPS                  each decision that can lose, in order (`graphexec.steps`):
                                  horizontal fusion, the exported graph's estimate, the thread
                                  budget and overlap, compiled tasks, the module as it is,
                                  data parallelism

1. **Measure** each node (`graphexec.interpret.time_nodes_beside`): the median of ``repeats``
   runs at the caller's intra-op threads and as many at one thread, interleaved run by run,
   after a warm-up, under ``no_grad``. The caller's thread count is put back after each. The
   warm-up run is also the one run of the example inputs the steps read shapes, outputs and
   the fusion candidates' inputs from (`graphexec.tuning.Sample`): nothing runs the whole
   graph again to learn them.
2. **Arrange** with the measured costs. This plan, run one by one, is *the plan as it is*:
   the graph's nodes one after another on the calling thread, as one generated function
   (`graphexec.codegen`), like the ``torch.fx`` module it may come from.
3. **The steps** (`graphexec.steps`), one signature each, ``step(plan, context) -> plan``:
   horizontal fusion (kept only if the fused plan beats the plain one side by side: fusing
   two small convolutions or q/k/v projections made GoogLeNet and CLIP slower), the thread
   budget and overlap (`graphexec.budget`: estimated from the node times, and the ways the
   estimate does not rule out tried side by side, since per-node times cannot see memory
   bandwidth, spinning OpenMP workers or a load that collapses the caller's threads),
   compiled tasks (``backend=``), the traced module as it is (``graph.source``: kept unless
   the plan is within ``source_margin`` of it), data parallelism (`graphexec.split`).

Every rule and threshold is one of the `graphexec.policy.Policy` given as ``policy=`` (the
defaults: `graphexec.policy.DEFAULT`). Every kept decision must make the plan faster than the
one without it by ``gain`` (5%), measured side by side (`graphexec.trials`: shuffled rounds,
the median of the per-round ratios, a change confirmed by a second trial, a difference
inside the noise resolved to the simpler plan). A trial faster than the cores could make the
same work is re-run, then set aside with what it measured. Each decision is written into the
plan as a record (`graphexec.decisions.Decision` in ``decisions`` and ``fusion``;
``one_by_one``, ``thread_budget``, ``as_is``), so ``print(plan)`` says what was measured and
why it was kept or dropped; ``call_seconds`` is what `graphexec.drift` later compares the
calls with. Planning that takes over ``slow_planning`` seconds says what it measures on the
``graphexec`` logger. What happens after planning (the drift watch and its re-checks) is
`graphexec.tuner.Tuner`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from . import cache, split
from .budget import at_thread_budget, favoured, one_thread_may_pay, recheck
from .decisions import CACHE, Decision
from .graph import Graph, expect_graph
from .hfuse import candidate_reads
from .interpret import bind_inputs, compute_order
from .planner import arrange
from .plans import Plan
from .policy import DEFAULT, Policy
from .steps import STEPS, fuse_horizontally
from .trials import trial, trial_twice
from .tuning import Context, Options, Progress, Sample, node_costs

__all__ = ["plan", "recheck", "trial", "trial_twice"]


def plan(
    graph: Graph,
    example_inputs: Sequence[Any] | None = None,
    *,
    inline_below: float | None = None,
    fuse_chains: bool = True,
    repeats: int = 3,
    hfuse: bool | str = "auto",
    backend: str = "eager",
    check: bool = True,
    source_margin: float | None = None,
    data_parallel: bool | int | str = False,
    batch_axis: int | Mapping[str, int | None] = 0,
    policy: Policy | None = None,
) -> Plan:
    """Plan a graph: measure its nodes (with ``example_inputs``), arrange it, try what can lose.

    Parameters
    ----------
    graph : Graph
        A complete graph (outputs declared).
    example_inputs : sequence, optional
        Positional graph inputs. When given, each node is timed (median of ``repeats`` runs
        after one warm-up, under ``torch.no_grad``) and costs are seconds measured here, and
        the decisions that can lose are tried on them (the thread budget among them); the
        measured decisions are kept in the cache (`graphexec.cache`) for the next process.
        Without them, costs are estimated from parameter counts.
    inline_below : float, optional
        Tasks cheaper than this many seconds are folded into their consumer or run inline
        (default: the policy's ``inline_below``, 50 µs).
    fuse_chains : bool
        Fuse straight chains into one task (default). Off: one task per node.
    repeats : int
        Timed runs of each node when measuring, at the caller's intra-op threads and as many
        at one thread (after one warm-up).
    hfuse : {"auto", True, False}
        Horizontal fusion (`graphexec.hfuse`): same-level nodes with identical module
        structure run as one batched call. ``"auto"`` (default): with ``example_inputs``, fuse
        the groups whose members measure below the policy's ``fuse_member_below`` (small
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
        by side; otherwise the plan runs that module as it is (``plan.as_is``). Default: the
        policy's ``source_margin`` (1.03: a plan within 3% of the module is kept). The
        ``torch.compile`` backend passes its ``gain``: its plan must beat Dynamo's graph by 5%.
    data_parallel : {False, "auto"} or int
        Split each call's batch into shards, run the plan on each at once (threads: on
        one-thread lanes; Dask: on different workers; CUDA: on streams) and concatenate the
        outputs (`graphexec.split`; needs ``example_inputs``). An int ``k``: always, in ``k``
        shards. ``"auto"``: only where the split wins a side-by-side trial by ``gain``. Either
        way the graph is first run whole and in shards on the example inputs, and a graph
        whose result depends on the whole batch is refused (``k``: `SplitError` naming the
        node; ``"auto"``: not split, ``plan.decisions`` says why). ``plan.split`` holds it.
    batch_axis : int or mapping of input name to int or None
        The axis batched inputs are split along (default 0; tensors without it are passed
        whole), or per input (None: passed whole to every shard).
    policy : Policy, optional
        The rules every decision is made by (`graphexec.policy.Policy`; default: today's).
        Measured plans are cached under them: other rules measure again.

    Returns
    -------
    Plan

    Raises
    ------
    GraphError
        Any of its subclasses, naming the node, if the graph is wrong (see `Graph.validate`),
        or `ArityError` if ``example_inputs`` has the wrong length.
    SplitError
        With ``data_parallel=k``, naming the node or output whose result depends on the whole
        batch.
    ValueError
        For a ``data_parallel`` below 1, without ``example_inputs``, or a batch smaller than
        ``k``; for batched example inputs that disagree on the batch size.

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
    policy = DEFAULT if policy is None else policy
    margin = policy.source_margin if source_margin is None else source_margin
    below = policy.inline_below if inline_below is None else inline_below
    opts = Options(below, fuse_chains, repeats, hfuse, backend, check, margin,
                    data_parallel, batch_axis, policy)  # fmt: skip
    with _no_gc():  # the graph's checks walk every node too
        graph.validate()
        if example_inputs is not None:
            bind_inputs(graph, example_inputs, {})  # arity, before anything runs
        split.validate(data_parallel, batch_axis, graph, example_inputs)
        if example_inputs is None:
            return _estimated(graph, opts)
        return _cached_or_measured(graph, tuple(example_inputs), opts)


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


def _estimated(graph: Graph, opts: Options) -> Plan:
    """Without example inputs: costs from parameter counts, nothing tried."""
    fusion: list[Decision] = []
    if opts.hfuse is True:
        graph = fuse_horizontally(graph, None, None, fusion, opts.policy)
    return dataclasses.replace(arrange(graph, **opts.arranging), fusion=tuple(fusion))


def _cached_or_measured(graph: Graph, inputs: tuple[Any, ...], opts: Options) -> Plan:
    """The plan from the cache when one fits (`graphexec.cache`), else measured and stored."""
    digest = _cache_key(graph, inputs, opts)
    record = cache.load(digest) if digest else None
    if record is not None:
        restored = _restore(graph, inputs, opts, record)
        if restored is not None:
            return restored
        cache.ignored(digest, "its node names or decisions do not fit this graph")
    p, costs, costs_1, final_1 = _measured(graph, inputs, opts,
                                           Progress(graph.name, opts.policy.slow_planning))
    if digest:
        cache.store(digest, _record(graph, p, costs, costs_1, final_1))
    return at_thread_budget(p, final_1)


def _cache_key(graph: Graph, inputs: tuple[Any, ...], opts: Options) -> str | None:
    if opts.backend != "eager" or cache.directory() is None:
        return None  # compiled tasks are not plain data
    options = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    options["policy"] = opts.policy.digest()  # other rules: measured again, never reused
    return cache.key(graph, inputs, options)


def _measured(
    graph: Graph, inputs: tuple[Any, ...], opts: Options, progress: Progress
) -> tuple[Plan, dict[str, float], dict[str, float], dict[str, float]]:
    """Measure (one run's sample kept on the way), arrange, then run the steps in order; the
    plan (arranged by the node times at the caller's threads), those times, the times at one
    thread, and those of the plan's graph (fused, or the same) at one thread."""
    progress.step(f"each node at {torch.get_num_threads()} and at 1 intra-op thread")
    sample = Sample()
    wanted = candidate_reads(graph) if opts.hfuse is not False else set()
    costs, costs_1 = node_costs(graph, inputs, opts.repeats, opts.policy,
                                sample.keeper(graph, wanted))  # fmt: skip
    p = arrange(graph, costs, **opts.arranging)
    ctx = Context(graph, inputs, opts, progress, sample, costs_1, p,
                  one_thread_may_pay(costs, costs_1, opts.policy))  # fmt: skip
    for step in STEPS:
        p = step(p, ctx)
    return p, costs, costs_1, ctx.costs_1


# -- the cache: what a measured plan is, as plain data ------------------------------------------
def _record(graph: Graph, p: Plan, costs: Mapping[str, float], costs_1: Mapping[str, float],
            final_1: Mapping[str, float]) -> dict[str, Any]:  # fmt: skip
    fused = p.graph is not graph
    return {
        "graph": graph.name,
        "made": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "costs": dict(costs),
        "costs_1": dict(costs_1),
        "fused_costs": dict(p.node_costs) if fused else None,
        "fused_costs_1": dict(final_1) if fused else None,
        "fusion": [d.to_json() for d in p.fusion],
        "one_by_one": p.one_by_one,
        "decisions": [d.to_json() for d in p.decisions],
        "thread_budget": p.thread_budget,
        "as_is": p.as_is is not None,
        "call_seconds": p.call_seconds,
        "split": None if p.split is None else dataclasses.asdict(p.split),
    }


def _restore(
    graph: Graph, inputs: Sequence[Any], opts: Options, record: Mapping[str, Any]
) -> Plan | None:
    """The plan a cache record describes, or None when it does not fit ``graph``."""
    try:
        costs, costs_1 = _seconds(record["costs"]), _seconds(record["costs_1"])
        if not set(costs) == set(costs_1) == set(compute_order(graph)):
            return None
        p, final_1 = arrange(graph, costs, **opts.arranging), costs_1
        if record["fused_costs"] is not None:
            fused_graph = fuse_horizontally(graph, inputs, favoured(costs, costs_1), [],
                                            opts.policy)  # fmt: skip
            fused, final_1 = _seconds(record["fused_costs"]), _seconds(record["fused_costs_1"])
            if fused_graph is graph or not set(fused) == set(final_1) == set(
                    compute_order(fused_graph)):  # fmt: skip
                return None
            p = arrange(fused_graph, fused, warn_dead=False, **opts.arranging)
        budget, seconds = record["thread_budget"], record["call_seconds"]
        if record["as_is"] and graph.source is None:
            return None
        return at_thread_budget(dataclasses.replace(
            p, fusion=tuple(map(Decision.from_json, record["fusion"])),
            one_by_one=bool(record["one_by_one"]),
            decisions=(*map(Decision.from_json, record["decisions"]),
                       Decision(CACHE, "reused", f"reused from the cache: measured "
                                f"{record['made']} on this machine", measured=False)),
            thread_budget=None if budget is None else int(budget),
            as_is=graph.source if record["as_is"] else None,
            call_seconds=None if seconds is None else float(seconds),
            split=split.restored(record.get("split")),
        ), final_1)  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _seconds(stored: Mapping[Any, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in stored.items()}
