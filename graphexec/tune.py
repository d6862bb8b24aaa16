"""Tuning: measured decisions, one layer above the planner and the executors (``gx.plan``).

The planner (`graphexec.planner.arrange`) is a pure pass from a graph and node costs to a
plan. Everything that needs the model run on real inputs happens here, in this order::

    plan(graph, example_inputs)
      -> _cached_or_measured      a plan rebuilt from the cache (`graphexec.cache`) when one fits
      -> _measured                otherwise, and stored for the next process:
           _node_costs            each node at the caller's threads and at 1 (interleaved)
           arrange                chain fusion and inlining: they never lose
           _fusion_step           horizontal fusion, fused against unfused
           shape_step             thread budget and overlap (`graphexec.budget`)
           _compile_step          compiled tasks against eager ones (``backend=``)
           _source_step           the plan against the traced module as it is
           split_step             data parallelism, checked and tried (`graphexec.split`)

1. **Measure** each node (`graphexec.interpret.time_nodes_beside`): the median of ``repeats``
   runs at the caller's intra-op threads and as many at one thread, interleaved run by run,
   after a warm-up, under ``no_grad``. The caller's thread count is put back after each.
2. **Arrange** with the measured costs. This plan, run inline, is *the plan as it is*: the
   graph's nodes one after another on the calling thread, as one generated function
   (`graphexec.codegen`), like the ``torch.fx`` module it may come from.
3. **Horizontal fusion** (`graphexec.hfuse`): groups of small identical same-level modules
   become one batched call, kept only if the fused plan beats the plain one side by side.
   Measured on real models (GoogLeNet, CLIP), fusing two small convolutions or q/k/v
   projections made them slower.
4. **Thread budget and overlap** (`graphexec.budget`): one by one or overlapped, at the
   caller's threads or at one; estimated from the node times, the ways the
   estimate does not rule out are tried side by side. Per-node times cannot see memory
   bandwidth, OpenMP workers that spin after each parallel region, or a load that makes the
   caller's threads collapse: the trial decides.
5. **Compiled tasks** (``backend=``, `graphexec.backends.compile_plan`), kept only if they
   beat the plan as it is.
6. **The traced module** (``graph.source``), at the plan's thread budget: kept as it is
   (``plan.as_is``) unless the plan is within ``source_margin`` of it.

Every rule and threshold below is one of the `graphexec.policy.Policy` given as ``policy=``
(the defaults: `graphexec.policy.DEFAULT`). Every kept decision must make the plan faster than
the one without it by ``gain`` (5%),
measured side by side (`graphexec.trials`: shuffled rounds, the median of the per-round
ratios, a change confirmed by a second trial, a difference inside the noise resolved to the
simpler plan). A trial faster than the cores could make the same work is re-run, then set
aside with what it measured. Each decision is written into the plan as a record
(`graphexec.decisions.Decision` in ``decisions`` and ``fusion``; ``one_by_one``,
``thread_budget``, ``as_is``), so ``print(plan)`` says what was measured and
why it was kept or dropped; ``call_seconds`` is what `graphexec.drift` later compares the
calls with. Planning that takes over ``slow_planning`` seconds says what it measures on the
``graphexec`` logger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from . import cache, split, trials
from .backends import compile_plan
from .budget import concurrency_pays, lanes, one_thread_may_pay, recheck, shape_step, shapes
from .decisions import CACHE, COMPILED, FUSION, MODULE, Candidate, Decision, candidates
from .executors.base import BudgetLanes
from .executors.sequential import SequentialExecutor
from .executors.threads import ThreadExecutor
from .gputime import time_nodes_cuda, uses_cuda
from .graph import Graph, expect_graph
from .hfuse import describe_group, has_candidates, horizontal_fuse
from .hgroup import HorizontalGroup
from .interpret import (
    bind_inputs,
    compute_order,
    program_values,
    time_nodes,
    time_nodes_beside,
)
from .planner import arrange
from .plans import Plan
from .policy import DEFAULT, Policy
from .trials import trial, trial_twice
from .units import format_seconds, speed_words

__all__ = ["plan", "recheck", "trial", "trial_twice"]

log = logging.getLogger("graphexec")
_concurrency_pays = concurrency_pays  # looked up at each plan: tests make it say yes


@dataclasses.dataclass(frozen=True)
class _Options:
    inline_below: float
    fuse_chains: bool
    repeats: int
    hfuse: bool | str
    backend: str
    check: bool
    source_margin: float
    data_parallel: bool | int | str = False
    batch_axis: int | Mapping[str, int | None] = 0
    policy: Policy = DEFAULT

    @property
    def arranging(self) -> dict[str, Any]:
        return {"inline_below": self.inline_below, "fuse_chains": self.fuse_chains}


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
    graph.validate()
    if example_inputs is not None:
        bind_inputs(graph, example_inputs, {})  # arity, before anything runs
    split.validate(data_parallel, batch_axis, graph, example_inputs)
    policy = DEFAULT if policy is None else policy
    margin = policy.source_margin if source_margin is None else source_margin
    below = policy.inline_below if inline_below is None else inline_below
    opts = _Options(below, fuse_chains, repeats, hfuse, backend, check, margin,
                    data_parallel, batch_axis, policy)  # fmt: skip
    with _no_gc():
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


def _estimated(graph: Graph, opts: _Options) -> Plan:
    """Without example inputs: costs from parameter counts, nothing tried."""
    fusion: list[Decision] = []
    if opts.hfuse is True:
        graph = _fuse_horizontally(graph, None, None, fusion, opts.policy)
    return dataclasses.replace(arrange(graph, **opts.arranging), fusion=tuple(fusion))


def _cached_or_measured(graph: Graph, inputs: tuple[Any, ...], opts: _Options) -> Plan:
    """The plan from the cache when one fits (`graphexec.cache`), else measured and stored."""
    digest = _cache_key(graph, inputs, opts)
    record = cache.load(digest) if digest else None
    if record is not None:
        restored = _restore(graph, inputs, opts, record)
        if restored is not None:
            return restored
        cache.ignored(digest, "its node names or decisions do not fit this graph")
    p, costs = _measured(graph, inputs, opts, _Progress(graph.name, opts.policy.slow_planning))
    if digest:
        cache.store(digest, _record(graph, p, costs))
    return p


def _cache_key(graph: Graph, inputs: tuple[Any, ...], opts: _Options) -> str | None:
    if opts.backend != "eager" or cache.directory() is None:
        return None  # compiled tasks are not plain data
    options = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    options["policy"] = opts.policy.digest()  # other rules: measured again, never reused
    return cache.key(graph, inputs, options)


class _Progress:
    """Says on the ``graphexec`` logger what planning measures once it has taken more than
    ``slow`` seconds (the policy's ``slow_planning``; silence it with
    ``logging.getLogger("graphexec")``)."""

    def __init__(self, name: str, slow: float):
        self.name, self.start, self.slow = name, time.perf_counter(), slow

    def step(self, what: str) -> None:
        spent = time.perf_counter() - self.start
        if spent > self.slow:
            log.warning("graphexec: planning graph '%s' (%.1f s so far): measuring %s; the "
                        "decisions are cached for the next process (GRAPHEXEC_CACHE_DIR)",
                        self.name, spent, what)  # fmt: skip


def _measured(
    graph: Graph, inputs: tuple[Any, ...], opts: _Options, progress: _Progress
) -> tuple[Plan, dict[str, float]]:
    """Measure, arrange, then try what can lose, in order; the plan and the node costs."""
    progress.step(f"each node at {torch.get_num_threads()} and at 1 intra-op thread")
    policy = opts.policy
    costs, costs_1 = _node_costs(graph, inputs, opts.repeats, policy)
    try_one = one_thread_may_pay(costs, costs_1, policy)
    p = arrange(graph, costs, **opts.arranging)
    as_is = p
    if opts.hfuse is not False and has_candidates(graph):
        progress.step("horizontal fusion, fused against unfused")
        p, costs_1 = _fusion_step(p, costs_1, inputs, opts)
    hopeless = None
    if opts.check and graph.source is not None and _exported(graph) and opts.backend == "eager":
        progress.step("the exported graph's estimate against the module as it is")
        hopeless = _cannot_beat(p, graph.source, inputs, costs_1, policy.hopeless)
    if hopeless is None:
        progress.step("the thread budget and overlap, side by side")
        p = shape_step(p, costs_1, inputs, opts.check,
                       lambda q, c: _concurrency_pays(q, c, policy) is None, policy)  # fmt: skip
    if opts.backend != "eager":  # compiled last: its thread budget follows the overlap decision
        progress.step(f"{opts.backend} tasks against eager ones")
        p = _compile_step(p, as_is, opts.backend, inputs, opts.check, policy)
    if opts.check and graph.source is not None:
        progress.step("the plan against the traced module as it is")
        p = _source_step(p, graph, graph.source, inputs, opts.source_margin, try_one=try_one,
                         hopeless=hopeless, policy=policy)  # fmt: skip
    p = split.split_step(p, inputs, opts.data_parallel, opts.batch_axis, opts.check, policy)
    return p, costs


def _median(samples: Mapping[str, list[float]]) -> dict[str, float]:
    return {n: statistics.median(s) for n, s in samples.items()}


def _node_costs(
    graph: Graph, inputs: Sequence[Any], repeats: int, policy: Policy = DEFAULT
) -> tuple[dict[str, float], dict[str, float]]:
    """Each node's median seconds at the caller's intra-op threads and at one thread (on a
    budget, interleaved run by run: the caller's count is put back after each)."""
    names = compute_order(graph)
    if uses_cuda(graph, inputs):  # kernel time from CUDA events: host clocks see launches
        costs = _median(time_nodes_cuda(graph, names, inputs, repeats, policy=policy))
        return costs, costs
    if torch.get_num_threads() == 1:
        costs = _median(time_nodes(graph, names, inputs, repeats))
        return costs, costs
    lane = BudgetLanes()
    try:
        here, there = time_nodes_beside(graph, names, inputs, repeats,
                                        lambda fn: lane.call(1, fn))  # fmt: skip
    finally:
        lane.close()
    return _median(here), _median(there)


def _inline_run(p: Plan, example_inputs: Sequence[Any]) -> Callable[[], Any]:
    ex = SequentialExecutor()
    return lambda: ex.run(p, *example_inputs)


def _fusion_step(
    p: Plan, costs_1: dict[str, float], example_inputs: Sequence[Any], opts: _Options
) -> tuple[Plan, dict[str, float]]:
    """Horizontal fusion, kept only when the fused plan runs faster than the plain one. Both
    run inline in the trial, where costs do not matter: the fused graph's nodes are timed only
    once it is kept."""
    notes: list[Decision] = []
    gain, below = opts.policy.gain, opts.policy.fuse_member_below
    fused_graph = _fuse_horizontally(p.graph, example_inputs, p.node_costs, notes, opts.policy)
    if fused_graph is p.graph:
        return dataclasses.replace(p, fusion=tuple(notes)), costs_1
    if opts.check and opts.hfuse is not True:
        calls = _fused_calls(p.graph, fused_graph, example_inputs, opts.policy.fused_call_rounds)
        if calls and min(calls) >= gain:  # no group gains on its own: skip the trial
            line = Decision(
                FUSION, "unfused",
                f"dropped: the fused calls took {_span(calls)} of their members' time one "
                "by one (measured call by call; the plan was not tried); fusion must save "
                f"{1 - gain:.0%}", margin=gain, detail={"call_ratios": calls})  # fmt: skip
            return dataclasses.replace(p, fusion=(*_dropped(p.graph, notes, below), line)), costs_1
        # at the thread count the node times favour: under load the caller's threads collapse
        # (a run 50x slower), which would cost the trial more than the whole rest of planning
        budget = 1 if sum(costs_1.values()) < sum(p.node_costs.values()) else None
        plain = dataclasses.replace(p, thread_budget=budget)
        raw = arrange(fused_graph, warn_dead=False, **opts.arranging)
        raw = dataclasses.replace(raw, thread_budget=budget)
        with SequentialExecutor() as ex:  # closed: its budget's pool thread ends here
            args = tuple(example_inputs)
            ratio, base = trial_twice({"plain": lambda: ex.run(plain, *args),
                                       "fused": lambda: ex.run(raw, *args)}, "fused",
                                      policy=opts.policy)  # fmt: skip
        weighed = (Candidate("unfused", base), Candidate("fused", base * ratio))
        if ratio >= gain:
            line = Decision(FUSION, "unfused",
                            f"dropped: the fused plan ran {_ran(ratio, 'the unfused one')} "
                            f"(measured); fusion must save {1 - gain:.0%}", weighed, gain)
            return dataclasses.replace(p, fusion=(*_dropped(p.graph, notes, below), line)), costs_1
        notes.append(Decision(FUSION, "fused", f"kept: the fused plan ran "
                              f"{_ran(ratio, 'the unfused one')} (measured)", weighed, gain))
    costs, fused_1 = _node_costs(fused_graph, example_inputs, opts.repeats, opts.policy)
    fused = arrange(fused_graph, costs, warn_dead=False, **opts.arranging)
    return dataclasses.replace(fused, fusion=tuple(notes)), fused_1


def _dropped(graph: Graph, notes: Sequence[Decision], below: float) -> list[Decision]:
    """The groups' records once a trial dropped fusion: none of them is fused."""
    return [describe_group(graph, n.detail["members"], {c.name: c.seconds for c in n.candidates},
                           True, below, dropped=True) if n.choice == "fused" and n.measured
            else n for n in notes]  # fmt: skip


def _fused_calls(graph: Graph, fused: Graph, example_inputs: Sequence[Any], n_rounds: int
                 ) -> list[float]:  # fmt: skip
    """Each fused call's seconds over its members' one after another, on the values of one
    run (median ratio of ``n_rounds`` interleaved rounds, the policy's ``fused_call_rounds``):
    a few calls of the groups,
    not rounds of the whole model. A group gaining nothing here gains nothing in the plan."""
    values = program_values(graph, example_inputs)
    ratios = []
    with torch.no_grad():
        for node in fused:
            if not isinstance(node.fn, HorizontalGroup):
                continue
            args = [values[r.node] if r.index is None else values[r.node][r.index]
                    for r in node.inputs]  # fmt: skip
            members = _member_calls(node.fn, args)
            rounds = []
            for _ in range(n_rounds + 1):  # the first warms up
                t0 = time.perf_counter()
                node.fn(*args)
                t1 = time.perf_counter()
                for call in members:
                    call()
                rounds.append((t1 - t0) / max(time.perf_counter() - t1, 1e-9))
            ratios.append(statistics.median(rounds[1:]))
    return ratios


def _member_calls(group: HorizontalGroup, args: Sequence[Any]) -> list[Callable[[], Any]]:
    """Each member's own call on its share of the fused call's arguments."""
    k = len(group.members)
    own: list[list[Any]] = [[] for _ in range(k)]
    pos = 0
    for shared in group.shared:
        for i in range(k):
            own[i].append(args[pos] if shared else args[pos + i])
        pos += 1 if shared else k
    return [functools.partial(m, *a) for m, a in zip(group.members, own, strict=True)]


def _span(ratios: Sequence[float]) -> str:
    lo, hi = min(ratios), max(ratios)
    return f"{lo:.2f}x" if hi - lo < 0.005 else f"{lo:.2f}-{hi:.2f}x"


def _compile_step(
    p: Plan, as_is: Plan, backend: str, example_inputs: Sequence[Any], check: bool,
    policy: Policy = DEFAULT,
) -> Plan:  # fmt: skip
    """Compiled tasks, kept only when they beat the plan as it is (run inline, eagerly)."""
    compiled = compile_plan(p, backend, example_inputs)
    said = f"{backend}: {len(compiled.tasks)} tasks compiled"
    if compiled.fallbacks:
        said += ", eager fallback for " + ", ".join(
            f"{t} ({why})" for t, why in compiled.fallbacks.items()
        )
    if not compiled.tasks:
        line = Decision(COMPILED, "eager", said + "; nothing to run compiled", measured=False)
        return dataclasses.replace(p, decisions=(*p.decisions, line))
    candidate = dataclasses.replace(p, compiled=compiled)
    if not check:
        line = Decision(COMPILED, "compiled", said + "; not tried", measured=False)
        return dataclasses.replace(candidate, decisions=(*p.decisions, line))
    runner = ThreadExecutor() if candidate.parallel else SequentialExecutor()
    with runner:
        ratio, base = trial_twice({"as is": _inline_run(as_is, example_inputs),
                                "compiled": lambda: runner.run(candidate, *example_inputs)},
                               "compiled", policy=policy)  # fmt: skip
    weighed = (Candidate("eager", base), Candidate("compiled", base * ratio))
    if ratio < policy.gain:
        line = Decision(COMPILED, "compiled", f"{said}; kept: ran {_ran(ratio, 'eager tasks')}",
                        weighed, policy.gain)  # fmt: skip
        return dataclasses.replace(candidate, decisions=(*p.decisions, line))
    line = Decision(COMPILED, "eager",
                    f"{said}; dropped: ran {_ran(ratio, 'the plan run eagerly as it is')} "
                    f"(measured), must save {1 - policy.gain:.0%}", weighed, policy.gain)
    return dataclasses.replace(p, decisions=(*p.decisions, line))


def _source_step(
    p: Plan, graph: Graph, source: Callable[..., Any], example_inputs: Sequence[Any],
    margin: float, try_one: bool = False, hopeless: str | None = None,
    policy: Policy = DEFAULT,
) -> Plan:  # fmt: skip
    """The best plan against the module the graph was traced from, side by side.

    ``hopeless`` (`_cannot_beat`): why the plan is not worth a trial; only the module's
    thread count is tried.

    The module runs at the caller's threads and, where the plan kept a thread budget or
    ``try_one`` (the node times do not rule one thread out), at one intra-op thread. The
    module as it is wins unless the plan takes at most ``margin`` of its time. A plan with
    no lever of its own (the graph's own ops one after another at the caller's threads)
    cannot beat the module's own ops by the ``gain`` every decision must win
    by: the module runs as it is, untried against it (the policy's ``try_unlevered``:
    measured, such plans came within 3% of the module and never beat it by ``gain``
    (GoogLeNet, Inception-v3, ResNet-18, exported BERT); kept on a near tie they ran
    1.03-1.09x of eager, and the trial cost 10-20 forward passes), and only its thread
    count is tried where its ops are not the plan's (imported through ``torch.export``).
    Where the plan must beat the module (``margin`` below 1, as the ``torch.compile`` backend
    asks), a win must hold in a second trial; a plan of the same ops faster than overlapping
    them could be is re-run, and then set aside.
    """
    runner = ThreadExecutor() if p.parallel or p.compiled else SequentialExecutor()
    # the module at the caller's threads, and at one thread where the plan kept that budget
    # or the node times allow it: a budget that won for the plan's ops need not win for the
    # module's (an exported Qwen2's aten plan kept one thread, and its module run at one
    # thread took 1.30x of eager), and the reverse (on a busy machine exported BERT's aten
    # plan kept the caller's threads, and its module ran there 2.7x slower than at one)
    module = dataclasses.replace(p, as_is=source, compiled=None, thread_budget=None,
                                 one_by_one=True)  # fmt: skip
    same_ops = p.compiled is None and p.graph is graph
    lever = p.parallel or p.thread_budget is not None or not same_ops
    modules = {"module": module}
    if p.thread_budget is not None or (try_one and torch.get_num_threads() > 1):
        modules[_AT_BUDGET] = dataclasses.replace(module, thread_budget=p.thread_budget or 1)
    if not lever and not policy.try_unlevered and not _exported(graph):
        modules = {"module": module}  # the plan's own thread trial holds for the same ops
    with runner, SequentialExecutor() as inline, torch.no_grad():
        try:
            same = _same(source(*example_inputs), runner.run(p, *example_inputs))
        except Exception:  # noqa: BLE001 - a source that cannot take the graph's inputs
            same = False
        if not same:
            return p
        untried = hopeless is not None or (not lever and not policy.try_unlevered)
        if untried and len(modules) == 1:
            return _unlevered(p, module, None, hopeless)
        gain = margin if margin < 1 else 1 / margin if lever and not untried else policy.gain
        runs = {"plan": lambda: runner.run(p, *example_inputs),
                **{k: functools.partial(inline.run, m, *example_inputs)
                   for k, m in modules.items()}}  # fmt: skip
        if untried:
            runs.pop("plan")
        elif margin < 1 or not lever:
            runs = {**{k: runs[k] for k in modules}, "plan": runs["plan"]}
        outcome = trials.decide(
            runs, gain=gain,
            # the same ops at the same thread count cannot run faster than overlap allows
            floors={"plan": ("module" if p.thread_budget is None else _AT_BUDGET,
                             policy.floor / lanes())} if same_ops and "plan" in runs else None,
            words={"plan": "the plan", "module": "the traced module as it is",
                   _AT_BUDGET: "the traced module at 1 intra-op thread"},
            warm=p.thread_budget is None,  # both just ran (on the caller) to compare outputs
            mean=_AT_BUDGET in runs,  # thread counts: a collapse now and then is what calls pay
            policy=policy,
        )  # fmt: skip
    if "plan" not in runs:
        return _unlevered(p, modules[outcome.pick], outcome, hopeless, gain)
    return _source_written(p, modules, source, outcome, gain)


def _cannot_beat(
    p: Plan, source: Callable[..., Any], example_inputs: Sequence[Any],
    costs_1: Mapping[str, float], hopeless: float = DEFAULT.hopeless,
) -> str | None:  # fmt: skip
    """Why no way of running ``p`` (an exported graph) is worth a trial against its module,
    or None: its best estimate from the node times is ``hopeless`` (the policy's, 1.25) times
    the module's median seconds (3 runs after a warm-up, which also checks that both give the
    same outputs): it would have to run 1.25 / ``gain`` = 1.3x faster than the sum of its node
    times to be kept. Measured: exported aten plans of the zoo's transformers ran 1.26-3.3x
    of eager, and their shape trials were ~45% of a first call."""
    best = min(s.estimate for s in shapes(p, costs_1))
    with SequentialExecutor() as inline, torch.no_grad():
        try:
            if not _same(source(*example_inputs), inline.run(p, *example_inputs)):
                return None
        except Exception:  # noqa: BLE001 - a source that cannot take the graph's inputs
            return None
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            source(*example_inputs)
            runs.append(time.perf_counter() - start)
    module = statistics.median(runs)
    if best < hopeless * module:
        return None
    return (
        f"the exported graph's best way was estimated at {format_seconds(best)} from its node "
        f"times, {best / module:.2f}x the module's {format_seconds(module)} (measured): no way "
        "of running the plan was tried"
    )


def _exported(graph: Graph) -> bool:
    """The graph's ops are ``torch.export``'s aten ops, not its module's own."""
    return (graph.imported_by or "").startswith("torch.export")


def _unlevered(p: Plan, chosen: Plan, outcome: trials.Outcome | None, why: str | None = None,
               gain: float | None = None) -> Plan:  # fmt: skip
    """The module as it is for a plan with no lever of its own (or ``why`` the plan was not
    tried); ``outcome`` is the trial of the module's thread count, where one ran."""
    why = why or ("the best plan runs the same ops one after another at the caller's threads, "
                  "with no lever of its own (not tried against it)")
    if outcome is not None:
        ran = _ran(outcome.ratios[_AT_BUDGET], "the module at the caller's threads")
        kept = "kept there" if outcome.pick == _AT_BUDGET else "not kept"
        why += f"; the module at 1 intra-op thread ran {ran} (measured): {kept}"
    line = f"runs the traced module as it is: {why}"
    # the drift check's baseline: the module's own trial, else the same ops one by one at the
    # same threads as the shape trial measured them (None: the first calls set it)
    seconds = outcome.seconds_of(outcome.pick) if outcome is not None else p.call_seconds
    record = Decision(MODULE, outcome.pick if outcome is not None else "module", line,
                      candidates(outcome.seconds) if outcome is not None else (), gain,
                      measured=outcome is not None, detail={"why": why})  # fmt: skip
    return dataclasses.replace(chosen, one_by_one=True, call_seconds=seconds,
                               decisions=(*p.decisions, record))  # fmt: skip


_AT_BUDGET = "module at 1 thread"


def _source_written(
    p: Plan, modules: Mapping[str, Plan], source: Callable[..., Any], outcome: trials.Outcome,
    gain: float,
) -> Plan:  # fmt: skip
    ref = "module" if outcome.pick == "plan" else outcome.pick
    ratio = outcome.ratios["plan"] / outcome.ratios[ref]
    aside = outcome.aside.get("plan") or outcome.aside.get(ref)
    if outcome.pick == "plan":
        line = f"the plan ran {_ran(ratio, 'the traced module as it is')} (measured): kept"
        if aside:
            line += f" ({aside})"
        record = Decision(MODULE, "plan", line, candidates(outcome.seconds), gain)
        return dataclasses.replace(p, call_seconds=outcome.seconds_of("plan"),
                                   decisions=(*p.decisions, record))  # fmt: skip
    why = f"{_ran(ratio, 'it')} ({format_seconds(outcome.seconds_of('plan'))}; measured)"
    if aside:
        why += f"; {aside}"
    chosen = modules[ref]
    if len(modules) > 1:  # say which of the two ways the module was kept
        where = ("at 1 intra-op thread" if chosen.thread_budget is not None
                 else "at the caller's threads")  # fmt: skip
        why += f"; the module ran best {where}"
    line = f"runs the traced module as it is: the best plan ran {why}"
    record = Decision(MODULE, ref, line, candidates(outcome.seconds), gain,
                      detail={"why": f"the best plan ran {why}"})  # fmt: skip
    return dataclasses.replace(chosen, one_by_one=True, call_seconds=outcome.seconds_of(ref),
                               decisions=(*p.decisions, record))  # fmt: skip


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
    notes: list[Decision],
    policy: Policy = DEFAULT,
) -> Graph:
    """The graph with small identical same-level modules fused (`graphexec.hfuse`)."""
    if not has_candidates(graph):  # the common case: nothing to rewrite
        return graph
    return horizontal_fuse(graph, example_inputs, costs=dict(costs) if costs else None,
                           notes=notes, member_below=policy.fuse_member_below)  # fmt: skip


# -- the cache: what a measured plan is, as plain data ------------------------------------------
def _record(graph: Graph, p: Plan, costs: Mapping[str, float]) -> dict[str, Any]:
    return {
        "graph": graph.name,
        "made": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "costs": dict(costs),
        "fused_costs": dict(p.node_costs) if p.graph is not graph else None,
        "fusion": [d.to_json() for d in p.fusion],
        "one_by_one": p.one_by_one,
        "decisions": [d.to_json() for d in p.decisions],
        "thread_budget": p.thread_budget,
        "as_is": p.as_is is not None,
        "call_seconds": p.call_seconds,
        "split": None if p.split is None else dataclasses.asdict(p.split),
    }


def _restore(
    graph: Graph, inputs: Sequence[Any], opts: _Options, record: Mapping[str, Any]
) -> Plan | None:
    """The plan a cache record describes, or None when it does not fit ``graph``."""
    try:
        costs = {str(k): float(v) for k, v in record["costs"].items()}
        if set(costs) != set(compute_order(graph)):
            return None
        p = arrange(graph, costs, **opts.arranging)
        if record["fused_costs"] is not None:
            fused_graph = _fuse_horizontally(graph, inputs, costs, [], opts.policy)
            fused = {str(k): float(v) for k, v in record["fused_costs"].items()}
            if fused_graph is graph or set(fused) != set(compute_order(fused_graph)):
                return None
            p = arrange(fused_graph, fused, warn_dead=False, **opts.arranging)
        budget, seconds = record["thread_budget"], record["call_seconds"]
        if record["as_is"] and graph.source is None:
            return None
        return dataclasses.replace(
            p, fusion=tuple(map(Decision.from_json, record["fusion"])),
            one_by_one=bool(record["one_by_one"]),
            decisions=(*map(Decision.from_json, record["decisions"]),
                       Decision(CACHE, "reused", f"reused from the cache: measured "
                                f"{record['made']} on this machine", measured=False)),
            thread_budget=None if budget is None else int(budget),
            as_is=graph.source if record["as_is"] else None,
            call_seconds=None if seconds is None else float(seconds),
            split=split.restored(record.get("split")),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
