"""The thread budget and overlap: the ways one plan can run on a CPU, tried side by side.

Torch spreads each op over every intra-op thread; overlapping branches gives each branch one
core instead; and on a busy machine torch's own threads can collapse (OpenMP's workers wait at
every parallel region for the one that lost its core: measured here, real models 2-23x slower
at 2 threads than at 1 with one core busy), while on a quiet one some models simply run
faster at one thread. So a plan can run in four shapes, simplest first:

======================  =================================================================
``one by one``          every task on the calling thread, at the caller's intra-op threads
``one by one at 1``     the same at 1 intra-op thread (``plan.thread_budget = 1``: the
                        calling thread's own count set for the call and put back)
``overlapped``          branches on one-thread lanes, lone tasks on the calling thread
``overlapped at 1``     the same, the loop (and its lone tasks) at 1 intra-op thread
======================  =================================================================

`shape_step` estimates each from the node times measured at the caller's threads and at one
thread, tries those the estimate does not rule out (`graphexec.trials.decide`: side by side,
a change must win by the margin twice, an overlap faster than its lanes could be is re-run
and then set aside), and writes what it measured into the plan. `recheck` tries them again
when the calls drift (`graphexec.drift`). A budget sets the calling thread's own count for
the call and puts it back; torch's process default is never changed
(`graphexec.executors.base.BudgetLanes`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from . import trials
from .decisions import BUDGET, CHECK, RECHECK, Candidate, Decision
from .decisions import OVERLAP as OVERLAP_STEP
from .executors.sequential import SequentialExecutor
from .executors.threads import ThreadExecutor
from .planner import recost
from .plans import Plan
from .policy import DEFAULT, Policy
from .units import format_seconds, speed_words

__all__ = ["Shape", "at_thread_budget", "concurrency_pays", "favoured",
           "one_thread_may_pay", "recheck", "shape_step", "shapes"]  # fmt: skip

ONE_BY_ONE, AT_ONE, OVERLAP, OVERLAP_AT_ONE = (
    "one by one", "one by one at 1", "overlapped", "overlapped at 1",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Shape:
    """One way to run a plan: its name, the words for it, the plan, and its estimate."""

    name: str
    words: str
    plan: Plan
    estimate: float | None = None

    @property
    def overlaps(self) -> bool:
        return self.name in (OVERLAP, OVERLAP_AT_ONE)


def lanes() -> int:
    """Branches that can run at once: the cores torch may use, 2 at least (as a
    `ThreadExecutor` sizes its pool)."""
    return max(2, torch.get_num_threads())


def threads_words(n: int | None = None) -> str:
    """An intra-op thread count in words (``1 intra-op thread``, ``2 intra-op threads``)."""
    n = torch.get_num_threads() if n is None else n
    return f"{n} intra-op thread{'s' * (n != 1)}"


def shapes(p: Plan, costs_1: Mapping[str, float] | None = None) -> list[Shape]:
    """The shapes ``p`` can run in, simplest first (estimated when ``costs_1`` is given)."""
    n = torch.get_num_threads()
    serial = dataclasses.replace(p, one_by_one=True, thread_budget=None)
    found = [Shape(ONE_BY_ONE, f"one by one on the calling thread ({threads_words(n)})", serial)]
    can_overlap = p.max_width > 1 and p.as_is is None and p.compiled is None
    overlap = dataclasses.replace(p, one_by_one=False, thread_budget=None)
    if n > 1:
        found.append(Shape(AT_ONE, "one by one at 1 intra-op thread",
                           dataclasses.replace(serial, thread_budget=1)))  # fmt: skip
    if can_overlap:
        found.append(Shape(OVERLAP, f"overlapped on {lanes()} one-thread lanes", overlap))
        if n > 1:
            found.append(Shape(OVERLAP_AT_ONE, f"overlapped on {lanes()} one-thread lanes, the "
                               "rest at 1 intra-op thread",
                               dataclasses.replace(overlap, thread_budget=1)))  # fmt: skip
    if costs_1 is None:
        return found
    return [dataclasses.replace(s, estimate=_estimate(p, s.name, costs_1)) for s in found]


def _estimate(p: Plan, name: str, costs_1: Mapping[str, float]) -> float:
    """Seconds per call of a shape, from the node times at the caller's threads and at 1."""
    at_one = name in (AT_ONE, OVERLAP_AT_ONE)
    if name in (ONE_BY_ONE, AT_ONE):
        return sum(_cost(p, t, costs_1, at_one) for t in p.tasks)
    return _overlap_estimate(p, costs_1, at_one)


def _cost(p: Plan, task: str, costs_1: Mapping[str, float], at_one: bool) -> float:
    return sum(costs_1[n] for n in p.tasks[task].nodes) if at_one else p.tasks[task].cost


def _overlap_estimate(p: Plan, costs_1: Mapping[str, float], at_one: bool) -> float:
    """Levels whose dispatched tasks are packed longest-first on one lane per core at one
    thread each; a lone task runs on the loop's thread (the caller's threads, or 1)."""
    total = 0.0
    for level in p.levels:
        here = [_cost(p, t, costs_1, at_one) for t in level if p.tasks[t].inline]
        away = [_cost(p, t, costs_1, True) for t in level if not p.tasks[t].inline]
        if len(away) <= 1:
            lone = [_cost(p, t, costs_1, at_one) for t in level if not p.tasks[t].inline]
            total += sum(here) + sum(lone)
            continue
        load = [0.0] * lanes()
        for c in sorted(away, reverse=True):  # longest processing time first
            load[load.index(min(load))] += c
        total += max(load) + sum(here)
    return total


def one_thread_may_pay(costs: Mapping[str, float], costs_1: Mapping[str, float],
                       policy: Policy = DEFAULT) -> bool:  # fmt: skip
    """Whether one intra-op thread is worth a trial: the caller has more than one and the
    node times at one thread add up to below ``policy.budget_slack`` times those at the
    caller's. Not ``gain``: node-by-node timing shows a collapse of torch's threads under load
    much less than a whole run does (measured: node costs 20 ms, the same plan run 225 ms),
    so the estimate only rules out what clearly scales."""
    slower = sum(costs_1.values()) >= policy.budget_slack * sum(costs.values())
    return torch.get_num_threads() > 1 and not slower


def concurrency_pays(p: Plan, costs_1: Mapping[str, float], policy: Policy = DEFAULT
                     ) -> str | None:  # fmt: skip
    """None if overlapping branches should beat running every task with all cores, else why
    (estimated from the measured node times)."""
    serial, overlap = p.work, _overlap_estimate(p, costs_1, at_one=False)
    if overlap < policy.gain * serial:
        return None
    return (
        f"overlapping branches on {lanes()} one-thread lanes would take "
        f"~{format_seconds(overlap)}, one by one with {threads_words()} ~{format_seconds(serial)} "
        "(estimated from the measured node times); "
        f"overlap must save {1 - policy.gain:.0%} to beat hand-off costs and noise"
    )


def _ran(ratio: float, than: str) -> str:
    return speed_words(ratio, 1.0, than)


def _runs(found: Sequence[Shape], inputs: Sequence[Any], one_by_one: SequentialExecutor,
          overlapped: ThreadExecutor) -> dict[str, Callable[[], Any]]:  # fmt: skip
    def run(s: Shape) -> Callable[[], Any]:
        ex = overlapped if s.overlaps else one_by_one
        return lambda: ex.run(s.plan, *inputs)

    return {s.name: run(s) for s in found}


def _floors(found: Sequence[Shape], policy: Policy) -> dict[str, tuple[str, float]]:
    """No shape can take below 1/cores of the same ops run one by one at one intra-op
    thread (``policy.floor`` of that, 0.9: hand-off noise). The reference is the one-thread
    run: the caller's threads can collapse under load (measured here: 80x slower), so a shape
    that beats them by more than the cores is no sign of a disturbed trial."""
    names = {s.name for s in found}
    ref = AT_ONE if AT_ONE in names else ONE_BY_ONE
    if torch.get_num_threads() > 1 and ref == ONE_BY_ONE:
        return {}  # no one-thread reference in this trial: nothing bounds the others
    return {s.name: (ref, policy.floor / lanes()) for s in found
            if s.name != ref and s.name != ONE_BY_ONE}  # fmt: skip


def _measure(found: Sequence[Shape], inputs: Sequence[Any], pause: float, policy: Policy
             ) -> trials.Outcome:  # fmt: skip
    with SequentialExecutor() as one_by_one, ThreadExecutor() as overlapped:
        # mean seconds: the caller's threads collapsing now and then under load is what the
        # calls would pay, not noise to filter out
        # warm-up for the overlapped shapes alone: their pool is new, while the one-by-one
        # shapes run the ops the node timing ran moments ago, at the same thread counts
        return trials.decide(_runs(found, inputs, one_by_one, overlapped),
                             floors=_floors(found, policy),
                             words={s.name: s.words for s in found}, mean=True,
                             warm={s.name for s in found if s.overlaps}, pause=pause,
                             policy=policy)  # fmt: skip


def favoured(costs: Mapping[str, float], costs_1: Mapping[str, float]) -> Mapping[str, float]:
    """Each node's seconds at the thread count the node times favour: one intra-op thread
    when they add up to less there (small ops, or the caller's threads collapsed while the
    nodes were timed), else the caller's. What rules read before the thread budget is tried
    (horizontal fusion's size rule and its trial)."""
    return costs_1 if sum(costs_1.values()) < sum(costs.values()) else costs


def at_thread_budget(p: Plan, costs_1: Mapping[str, float] | None) -> Plan:
    """A measured plan that runs at one intra-op thread, costed at one thread (``costs_1``,
    its graph's node times there): ``print(plan)``, its pictures and the order ready tasks
    start in then show what its calls run, not the caller's threads' times (which collapse
    under load: measured 2-23x slower)."""
    if p.thread_budget != 1 or not costs_1 or set(costs_1) != set(p.node_costs):
        return p
    return recost(p, costs_1)


def shape_step(
    p: Plan, costs_1: Mapping[str, float], inputs: Sequence[Any], check: bool,
    overlap_pays: Callable[[Plan, Mapping[str, float]], bool] | None = None,
    policy: Policy = DEFAULT,
) -> Plan:  # fmt: skip
    """Pick the thread budget and overlap for ``p``: tried where the estimates allow.

    A thread budget of 1 is tried when the node times at one thread add up to below
    ``policy.budget_slack`` times those at the caller's threads; overlap when ``overlap_pays``
    (default: the estimate of `concurrency_pays`) says so. With ``check=False`` the estimates
    decide, untried, by the margin.
    """
    found = shapes(p, costs_1)
    by_name = {s.name: s for s in found}
    ref = found[0]
    one = AT_ONE in by_name and by_name[AT_ONE].estimate < policy.budget_slack * ref.estimate
    pays = overlap_pays or (lambda q, c: concurrency_pays(q, c, policy) is None)
    overlap = OVERLAP in by_name and pays(p, costs_1)
    wanted = {ONE_BY_ONE, *([AT_ONE] if one else []), *([OVERLAP] if overlap else []),
              *([OVERLAP_AT_ONE, AT_ONE] if overlap and one else [])}  # fmt: skip
    tried = [s for s in found if s.name in wanted]
    if one and ref.estimate > policy.drop * by_name[AT_ONE].estimate:
        # the caller's threads collapsed while the nodes were timed: one thread is the way
        # to beat (a collapse comes and goes; a short trial in a calm moment must not decide)
        tried.sort(key=lambda s: s.name != AT_ONE)
    if len(tried) == 1 or not check:
        one = one and by_name[AT_ONE].estimate < policy.gain * ref.estimate
        pick = by_name[(OVERLAP if overlap else ONE_BY_ONE) if not one else
                       (OVERLAP_AT_ONE if overlap else AT_ONE)]  # fmt: skip
        return _written(p, found, pick, None, tried, policy.gain)
    outcome = _measure(tried, inputs, 0.0, policy)
    pick = by_name[outcome.pick]
    out = _written(p, found, pick, outcome, tried, policy.gain)
    return dataclasses.replace(out, decisions=(*out.decisions,
                                               *_disagreement(p, outcome, policy.disagree)))


def _written(p: Plan, found: Sequence[Shape], pick: Shape, outcome: trials.Outcome | None,
             tried: Sequence[Shape], gain: float) -> Plan:  # fmt: skip
    """The picked shape with its records: the thread budget, and overlap (kept, or one by
    one and why) where tasks could overlap."""
    weighed = _weighed(found, outcome)
    records = []
    if torch.get_num_threads() > 1:
        records.append(Decision(
            BUDGET, "1 thread" if pick.plan.thread_budget == 1 else "caller's threads",
            _budget_line(found, pick, outcome, tried, gain), weighed, gain, outcome is not None))
    if p.max_width > 1:
        words = _overlap_words(found, pick, outcome, tried, pick.overlaps, gain)
        records.append(Decision(
            OVERLAP_STEP, "overlapped" if pick.overlaps else "one by one",
            f"overlap kept: {words}" if pick.overlaps else f"one by one: {words}", weighed, gain,
            outcome is not None and any(s.overlaps for s in tried), {"why": words}))
    # the trial's seconds, else the node times measured one by one (the pick was not tried)
    seconds = outcome.seconds_of(pick.name) if outcome is not None else pick.estimate
    return dataclasses.replace(pick.plan, one_by_one=p.max_width > 1 and not pick.overlaps,
                               call_seconds=seconds, decisions=(*p.decisions, *records))


def _weighed(found: Sequence[Shape], outcome: trials.Outcome | None) -> tuple[Candidate, ...]:
    """Every shape: its seconds in the trial where it ran, else its estimate (so marked)."""
    ran = outcome.seconds if outcome is not None else {}
    return tuple(Candidate(s.name, ran[s.name]) if s.name in ran
                 else Candidate(s.name, s.estimate, estimated=True) for s in found)  # fmt: skip


def _budget_line(found: Sequence[Shape], pick: Shape, outcome: trials.Outcome | None,
                 tried: Sequence[Shape], gain: float) -> str:  # fmt: skip
    names = {s.name for s in tried}
    ones = [s for s in tried if s.plan.thread_budget == 1]
    if not ones:
        one = next(s for s in found if s.name == AT_ONE)
        return (
            f"thread budget: the caller's {threads_words()}: the nodes at 1 intra-op thread add "
            f"up to {format_seconds(one.estimate)}, at {threads_words()} to "
            f"{format_seconds(found[0].estimate)} (measured node by node): not tried"
        )
    if outcome is None:
        how = "estimated from the measured node times, not tried (check=False)"
        best = pick if pick.plan.thread_budget == 1 else min(ones, key=lambda s: s.estimate)
        ratio = best.estimate / found[0].estimate
    else:
        how = "measured side by side"
        best = pick if pick.plan.thread_budget == 1 else min(
            (s for s in ones if s.name not in outcome.aside), key=lambda s: outcome.ratios[s.name],
            default=ones[0])  # fmt: skip
        ratio = outcome.ratios[best.name] / outcome.ratios.get(ONE_BY_ONE, 1.0)
    ref = "one by one on the calling thread" if ONE_BY_ONE in names else found[0].words
    said = f"{best.words} ran {_ran(ratio, ref + f' ({threads_words()})')} ({how})"
    first = tried[0].name == AT_ONE  # the caller's threads collapsed in the node times
    if first:
        said += "; the caller's threads collapsed while the nodes were timed"
    if pick.plan.thread_budget == 1:
        return f"thread budget: 1 intra-op thread: {said}"
    must = "the caller's threads had to" if first else "a budget of its own must"
    return (
        f"thread budget: the caller's {threads_words()} kept: {said}; {must} save "
        f"{1 - gain:.0%}"
    )


def _overlap_words(found: Sequence[Shape], pick: Shape, outcome: trials.Outcome | None,
                   tried: Sequence[Shape], kept: bool, gain: float) -> str:  # fmt: skip
    overlaps = [s for s in tried if s.overlaps]
    if not overlaps:
        return _estimated_no(found, gain)
    if outcome is None:
        best = pick if kept else overlaps[0]
        return (f"{best.words} would take ~{format_seconds(best.estimate)}, one by one "
                f"~{format_seconds(found[0].estimate)} (estimated from the measured node "
                "times, not tried: check=False)")  # fmt: skip
    aside = [outcome.aside[s.name] for s in overlaps if s.name in outcome.aside]
    live = [s for s in overlaps if s.name not in outcome.aside]
    if kept:
        base = next(s for s in tried if s.name == (AT_ONE if pick.name == OVERLAP_AT_ONE
                                                   else ONE_BY_ONE))  # fmt: skip
        ratio = outcome.ratios[pick.name] / outcome.ratios[base.name]
        return (f"overlapping branches ran {_ran(ratio, base.words)} "
                f"({format_seconds(outcome.seconds_of(base.name))}; measured on the example "
                "inputs)")  # fmt: skip
    said = "; ".join(aside)
    if live:
        best = min(live, key=lambda s: outcome.ratios[s.name])
        ratio = outcome.ratios[best.name] / outcome.ratios[pick.name]
        said = (f"overlapping branches ran {_ran(ratio, pick.words)} "
                f"({format_seconds(outcome.seconds_of(pick.name))}; measured on the example "
                f"inputs); overlap must save {1 - gain:.0%} to be chosen"
                + (f"; {said}" if said else ""))  # fmt: skip
    return said


def _estimated_no(found: Sequence[Shape], gain: float) -> str:
    over = next((s for s in found if s.name == OVERLAP), None)
    if over is None:
        return "nothing overlaps"
    return (
        f"overlapping branches on {lanes()} one-thread lanes would take "
        f"~{format_seconds(over.estimate)}, one by one with {threads_words()} "
        f"~{format_seconds(found[0].estimate)} (estimated from the measured node times); "
        f"overlap must save {1 - gain:.0%} to beat hand-off costs and noise"
    )


def _disagreement(p: Plan, outcome: trials.Outcome, disagree: float = DEFAULT.disagree
                  ) -> list[Decision]:  # fmt: skip
    """Node costs and the trial's run of the same plan, measured moments apart, that
    disagree beyond ``disagree`` (the policy's): said, so nobody reads one as the other."""
    run, nodes = outcome.seconds_of(ONE_BY_ONE), p.work
    far = max(run, nodes) / max(min(run, nodes), 1e-9)
    if far < disagree or max(run, nodes) < 1e-3:
        return []
    return [Decision(
        CHECK, None,
        f"check: the node costs above add up to {format_seconds(nodes)}, one run of the plan "
        f"one by one took {format_seconds(run)} (both measured, moments apart, {far:.1f}x "
        "apart): the load changed while planning; the decisions rest on the side-by-side trials",
        (Candidate("node costs", nodes, estimated=True), Candidate(ONE_BY_ONE, run)),
    )]  # fmt: skip


def _paused(pause: float) -> str:
    return f", each run after {format_seconds(pause)} idle, as between the calls" if pause else ""


def current(p: Plan) -> str:
    """The shape ``p`` runs in."""
    if p.parallel:
        return OVERLAP_AT_ONE if p.thread_budget == 1 else OVERLAP
    return AT_ONE if p.thread_budget == 1 else ONE_BY_ONE


def recheck(p: Plan, inputs: Sequence[Any], why: str, calls: int, pause: float = 0.0,
            policy: Policy = DEFAULT) -> tuple[Plan, bool]:  # fmt: skip
    """Try ``p``'s shapes again side by side (the calls drifted: ``why``); the plan to run
    from now on and whether it switched. A switch is written into ``plan.decisions``.

    ``pause``: the idle seconds between the caller's calls (`graphexec.drift.Watch.gap`),
    kept before each run of the trial: after 50-100 ms of idle time torch's 2 intra-op threads
    ran a 1 ms BERT-like model in 12-13 ms and 1 thread in 2.3 ms (measured on this 2-core
    VM), which back-to-back runs never show."""
    found = shapes(p)
    now = current(p)
    if len(found) == 1:
        return p, False
    outcome = _measure(found, inputs, pause, policy)
    pick = next(s for s in found if s.name == outcome.pick)
    seconds = outcome.seconds_of(pick.name)
    if pick.name == now:
        return dataclasses.replace(p, call_seconds=seconds), False
    was = next(s for s in found if s.name == now)
    stamp = time.strftime("%H:%M:%S UTC", time.gmtime())
    line = (
        f"re-checked at call {calls} ({stamp}): {why}; switched from {was.words} to "
        f"{pick.words}: it ran {_ran(outcome.ratios[pick.name] / outcome.ratios[now], was.words)}"
        f" (measured side by side{_paused(pause)})"
    )
    record = Decision(RECHECK, pick.name, line, _weighed(found, outcome), policy.gain,
                      detail={"call": calls, "from": now,
                              "overlap_lost": was.overlaps and not pick.overlaps})  # fmt: skip
    return dataclasses.replace(
        pick.plan, one_by_one=p.max_width > 1 and not pick.overlaps, call_seconds=seconds,
        decisions=(*p.decisions, record),
    ), True  # fmt: skip
