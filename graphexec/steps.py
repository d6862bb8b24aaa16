"""The steps of a measured plan (``gx.plan`` with example inputs), each one decision.

Every step has one signature, ``step(plan, context) -> plan`` (`graphexec.tuning.Context`:
the graph, the example inputs, the options and their policy, the sample of one run), and
`STEPS` runs them in this order, as ``torch.fx``'s pass manager runs passes::

    fusion_step      horizontal fusion, fused against unfused (`graphexec.hfuse`)
    hopeless_step    an exported graph whose best estimate cannot beat its module: no trials
    budget_step      the thread budget and overlap, side by side (`graphexec.budget`)
    compile_step     compiled tasks against eager ones (``backend=``)
    module_step      the plan against the module it was traced from, as it is
    parallel_step    data parallelism, checked and tried (`graphexec.split`)

A step with nothing to decide returns the plan unchanged; one that decides records a
`graphexec.decisions.Decision` in the plan. Each keeps a change only when it wins by the
policy's ``gain``, side by side (`graphexec.trials`); `graphexec.tune` says why in order.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from . import split, trials
from .backends import compile_plan
from .budget import concurrency_pays, favoured, lanes, shape_step, shapes
from .decisions import COMPILED, FUSION, MODULE, Candidate, Decision, candidates
from .executors.sequential import SequentialExecutor
from .executors.threads import ThreadExecutor
from .graph import Graph, Ref
from .hfuse import describe_group, has_candidates, horizontal_fuse
from .hgroup import HorizontalGroup
from .interpret import program_values
from .planner import arrange
from .plans import Plan
from .policy import DEFAULT, Policy
from .trials import trial_twice
from .tuning import Context, node_costs
from .units import format_seconds, speed_words

__all__ = ["STEPS", "Step", "budget_step", "compile_step", "fuse_horizontally", "fusion_step",
           "hopeless_step", "module_step", "parallel_step"]  # fmt: skip

#: A step of a measured plan (module docstring).
Step = Callable[[Plan, Context], Plan]

_concurrency_pays = concurrency_pays  # looked up at each plan: tests make it say yes


def _one_by_one_run(p: Plan, example_inputs: Sequence[Any]) -> Callable[[], Any]:
    ex = SequentialExecutor()
    return lambda: ex.run(p, *example_inputs)


def fusion_step(p: Plan, ctx: Context) -> Plan:
    """Horizontal fusion (`graphexec.hfuse`), kept only when the fused plan runs faster than
    the plain one. Both run one by one in the trial, where costs do not matter: the fused graph's
    nodes are timed only once it is kept. Shapes and the groups' inputs come from the sample
    (one run of the example inputs); once decided, the sample's values are released."""
    if ctx.opts.hfuse is False or not has_candidates(p.graph):
        return p
    ctx.progress.step("horizontal fusion, fused against unfused")
    try:
        p, ctx.costs_1 = _fusion(p, ctx)
    finally:
        ctx.sample.values = {}  # the groups' inputs: held for the fused calls only
    return p


def _fusion(p: Plan, ctx: Context) -> tuple[Plan, dict[str, float]]:
    opts, costs_1, example_inputs = ctx.opts, ctx.costs_1, ctx.inputs
    notes: list[Decision] = []
    gain, below = opts.policy.gain, opts.policy.fuse_member_below
    shapes = ctx.sample.shapes if ctx.sample.taken else None
    # at the thread count the node times favour: under load the caller's threads collapse
    # (a run 50x slower), and members timed there would look too big to fuse
    rule_costs = favoured(p.node_costs, costs_1)
    fused_graph = fuse_horizontally(p.graph, example_inputs, rule_costs, notes, opts.policy,
                                     shapes)  # fmt: skip
    if fused_graph is p.graph:
        return dataclasses.replace(p, fusion=tuple(notes)), costs_1
    if opts.check and opts.hfuse is not True:
        values = ctx.sample.values if ctx.sample.taken else None
        calls = _fused_calls(p.graph, fused_graph, example_inputs, opts.policy.fused_call_rounds,
                             values)  # fmt: skip
        if calls and min(calls) >= gain:  # no group gains on its own: skip the trial
            line = Decision(
                FUSION, "unfused",
                f"dropped: the fused calls took {_span(calls)} of their members' time one "
                "by one (measured call by call; the plan was not tried); fusion must save "
                f"{1 - gain:.0%}", margin=gain, detail={"call_ratios": calls})  # fmt: skip
            return dataclasses.replace(p, fusion=(*_dropped(p.graph, notes, below), line)), costs_1
        # at that thread count too: collapsing threads would cost the trial more than the
        # whole rest of planning
        budget = 1 if rule_costs is costs_1 else None
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
    costs, fused_1 = node_costs(fused_graph, example_inputs, opts.repeats, opts.policy)
    fused = arrange(fused_graph, costs, warn_dead=False, **opts.arranging)
    return dataclasses.replace(fused, fusion=tuple(notes)), fused_1


def _dropped(graph: Graph, notes: Sequence[Decision], below: float) -> list[Decision]:
    """The groups' records once a trial dropped fusion: none of them is fused."""
    return [describe_group(graph, n.detail["members"], {c.name: c.seconds for c in n.candidates},
                           True, below, dropped=True) if n.choice == "fused" and n.measured
            else n for n in notes]  # fmt: skip


def _fused_calls(graph: Graph, fused: Graph, example_inputs: Sequence[Any], n_rounds: int,
                 values: Mapping[str, Any] | None = None) -> list[float]:  # fmt: skip
    """Each fused call's seconds over its members' one after another, on the values of one
    run (``values``: the sample's; else a run now), the median ratio of ``n_rounds``
    interleaved rounds (the policy's ``fused_call_rounds``): a few calls of the groups, not
    rounds of the whole model. A group gaining nothing here gains nothing in the plan."""
    if values is None:
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


def compile_step(p: Plan, ctx: Context) -> Plan:
    """Compiled tasks (``backend=``), kept only when they beat the plan as first arranged,
    run eagerly; last but the module's trial: its thread budget follows the overlap
    decision."""
    if ctx.opts.backend == "eager":
        return p
    ctx.progress.step(f"{ctx.opts.backend} tasks against eager ones")
    return _compile(p, ctx.arranged, ctx.opts.backend, ctx.inputs, ctx.opts.check, ctx.policy)


def _compile(
    p: Plan, eager: Plan, backend: str, example_inputs: Sequence[Any], check: bool,
    policy: Policy = DEFAULT,
) -> Plan:  # fmt: skip
    """Compiled tasks, kept only when they beat ``eager``, the plan with its tasks run eagerly
    one by one."""
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
        ratio, base = trial_twice({"eager": _one_by_one_run(eager, example_inputs),
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


def hopeless_step(p: Plan, ctx: Context) -> Plan:
    """For an exported graph: whether any way of running the plan is worth a trial against
    its module (`_cannot_beat`); the answer goes to ``ctx.hopeless``, the plan is unchanged."""
    g, opts = ctx.graph, ctx.opts
    if opts.check and g.source is not None and _exported(g) and opts.backend == "eager":
        ctx.progress.step("the exported graph's estimate against the module as it is")
        outputs = ctx.sample.outputs if ctx.sample.has_outputs else _RUN
        ctx.hopeless = _cannot_beat(p, g.source, ctx.inputs, ctx.costs_1, ctx.policy.hopeless,
                                    outputs)  # fmt: skip
    return p


def budget_step(p: Plan, ctx: Context) -> Plan:
    """The thread budget and overlap (`graphexec.budget.shape_step`), unless ``hopeless``."""
    if ctx.hopeless is not None:
        return p
    ctx.progress.step("the thread budget and overlap, side by side")
    policy = ctx.policy
    return shape_step(p, ctx.costs_1, ctx.inputs, ctx.opts.check,
                      lambda q, c: _concurrency_pays(q, c, policy) is None, policy)  # fmt: skip


def module_step(p: Plan, ctx: Context) -> Plan:
    """The plan against the module it was traced from (`_source_step`)."""
    g = ctx.graph
    if not ctx.opts.check or g.source is None:
        return p
    ctx.progress.step("the plan against the traced module as it is")
    outputs = ctx.sample.outputs if ctx.sample.has_outputs else _RUN
    return _source_step(p, g, g.source, ctx.inputs, ctx.opts.source_margin, ctx.try_one,
                        ctx.hopeless, ctx.policy, outputs)  # fmt: skip


def parallel_step(p: Plan, ctx: Context) -> Plan:
    """Data parallelism (`graphexec.split.split_step`), checked and tried last."""
    o = ctx.opts
    return split.split_step(p, ctx.inputs, o.data_parallel, o.batch_axis, o.check, ctx.policy)


#: The steps of a measured plan, in order (module docstring).
STEPS: tuple[Step, ...] = (fusion_step, hopeless_step, budget_step, compile_step, module_step,
                           parallel_step)  # fmt: skip

#: ``outputs`` of `_source_step` and `_cannot_beat` when no sample was taken: run the plan.
_RUN: Any = object()


def _source_step(
    p: Plan, graph: Graph, source: Callable[..., Any], example_inputs: Sequence[Any],
    margin: float, try_one: bool = False, hopeless: str | None = None,
    policy: Policy = DEFAULT, outputs: Any = _RUN,
) -> Plan:  # fmt: skip
    """The best plan against the module the graph was traced from, side by side.

    ``outputs``: the graph's outputs on the example inputs (the sample's), which the
    module's must equal (else the plan runs them now).

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
    with runner, SequentialExecutor() as one_by_one, torch.no_grad():
        ran = outputs is _RUN  # the plan ran just now, and warmed up: else only the module
        try:
            same = _same(source(*example_inputs),
                         runner.run(p, *example_inputs) if ran else outputs)  # fmt: skip
        except Exception:  # noqa: BLE001 - a source that cannot take the graph's inputs
            same = False
        if not same:
            return p
        untried = hopeless is not None or (not lever and not policy.try_unlevered)
        if untried and len(modules) == 1:
            return _unlevered(p, module, None, hopeless)
        gain = margin if margin < 1 else 1 / margin if lever and not untried else policy.gain
        runs = {"plan": lambda: runner.run(p, *example_inputs),
                **{k: functools.partial(one_by_one.run, m, *example_inputs)
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
            # the module (and the plan, if it ran) just ran on the caller to compare outputs
            warm=True if p.thread_budget is not None else set() if ran else {"plan"},
            mean=_AT_BUDGET in runs,  # thread counts: a collapse now and then is what calls pay
            policy=policy,
        )  # fmt: skip
    if "plan" not in runs:
        return _unlevered(p, modules[outcome.pick], outcome, hopeless, gain)
    return _source_written(p, modules, source, outcome, gain)


def _cannot_beat(
    p: Plan, source: Callable[..., Any], example_inputs: Sequence[Any],
    costs_1: Mapping[str, float], hopeless: float = DEFAULT.hopeless, outputs: Any = _RUN,
) -> str | None:  # fmt: skip
    """Why no way of running ``p`` (an exported graph) is worth a trial against its module,
    or None: its best estimate from the node times is ``hopeless`` (the policy's, 1.25) times
    the module's median seconds (3 runs after a warm-up, which also checks that both give the
    same outputs): it would have to run 1.25 / ``gain`` = 1.3x faster than the sum of its node
    times to be kept. Measured: exported aten plans of the zoo's transformers ran 1.26-3.3x
    of eager, and their shape trials were ~45% of a first call."""
    best = min(s.estimate for s in shapes(p, costs_1))
    with SequentialExecutor() as one_by_one, torch.no_grad():
        try:
            plan_out = one_by_one.run(p, *example_inputs) if outputs is _RUN else outputs
            if not _same(source(*example_inputs), plan_out):
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
    # the plan against the better measured way of running the module (a ratio against the
    # module at the caller's threads, when it ran faster at one, would overstate the gain)
    best = min((k for k in modules if k in outcome.ratios), key=outcome.ratios.__getitem__)
    ref = best if outcome.pick == "plan" else outcome.pick
    ratio = outcome.ratios["plan"] / outcome.ratios[ref]
    aside = outcome.aside.get("plan") or outcome.aside.get(ref)
    if outcome.pick == "plan":
        than = ("the traced module at 1 intra-op thread, its better way" if ref == _AT_BUDGET
                else "the traced module as it is")  # fmt: skip
        line = f"the plan ran {_ran(ratio, than)} (measured): kept"
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


def fuse_horizontally(
    graph: Graph,
    example_inputs: Sequence[Any] | None,
    costs: Mapping[str, float] | None,
    notes: list[Decision],
    policy: Policy = DEFAULT,
    shapes: Mapping[Ref, Any] | None = None,
) -> Graph:
    """The graph with small identical same-level modules fused (`graphexec.hfuse`)."""
    if not has_candidates(graph):  # the common case: nothing to rewrite
        return graph
    return horizontal_fuse(graph, example_inputs, costs=dict(costs) if costs else None,
                           notes=notes, member_below=policy.fuse_member_below,
                           shapes=shapes)  # fmt: skip


