"""Side-by-side trials: how `graphexec.tune` measures a decision, and how it picks a winner.

A trial runs every candidate once per round, in an order shuffled by a fixed seed (so no
candidate always follows another's spinning OpenMP workers), and compares runs made moments
apart: each candidate's ratio to the first (the reference) is the median over rounds of its
per-round ratio, so an outlier round (a scheduler hiccup, a page fault) cannot decide.

What a trial costs, and when it stops
-------------------------------------
At least ``trial_rounds`` rounds (every number here is a rule of the `graphexec.policy.Policy`
a trial is given). Then it stops as soon as its answer is clear (every round on its own picks
the same winner, by `choose`, or the last ``trial_rounds`` rounds each pick what the medians
of all rounds pick), and otherwise at ``trial_passes`` runs of the candidates,
``trial_seconds`` seconds or ``trial_max`` rounds, whichever comes first: on a real model a
trial costs a handful of forward passes, not half a second of them.

How a winner is picked
----------------------
Candidates are listed simplest first. `choose` walks them in that order and moves to a
candidate only when it takes below ``gain`` of the one chosen so far, so a difference inside
the noise always resolves to the simpler plan: planning the same model twice on a quiet
machine reaches the same decisions.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .policy import DEFAULT, Policy

__all__ = ["Outcome", "choose", "collapsed", "decide", "timed", "trial", "trial_twice"]


def choose(ratios: Mapping[str, float], order: Sequence[str], gain: float | None = None) -> str:
    """The simplest candidate no later one beats by ``gain`` (default: the default policy's).

    >>> choose({"plain": 1.0, "fused": 0.97, "overlap": 0.5}, ["plain", "fused", "overlap"])
    'overlap'
    >>> choose({"plain": 1.0, "fused": 0.97}, ["plain", "fused"])  # inside the noise
    'plain'
    """
    gain = DEFAULT.gain if gain is None else gain
    best = order[0]
    for name in order[1:]:
        if ratios[name] < gain * ratios[best]:
            best = name
    return best


def trial(
    runs: Mapping[str, Callable[[], Any]],
    decide: Callable[[Mapping[str, float]], str] | None = None,
    policy: Policy = DEFAULT,
) -> tuple[dict[str, float], float]:
    """Time candidates side by side: each one's median ratio to the first, and the first's
    median seconds (`timed` gives every candidate's median seconds).
    """
    ratios, seconds = timed(runs, decide, policy=policy)
    return ratios, seconds[next(iter(runs))]


def timed(
    runs: Mapping[str, Callable[[], Any]],
    decide: Callable[[Mapping[str, float]], str] | None = None,
    warm: bool | Collection[str] = True,
    mean: bool = False,
    pause: float = 0.0,
    policy: Policy = DEFAULT,
) -> tuple[dict[str, float], dict[str, float]]:
    """`trial`'s rounds: each candidate's median ratio to the first, and its median seconds.
    A warm-up run of each candidate comes first; ``warm=False`` skips it (candidates that
    have just run), a collection of names keeps it for those alone (the rest ran the same
    ops moments ago: only a new thread pool needs one). ``mean=True``: ratios of mean
    seconds and mean seconds instead (see `decide`). ``pause``: seconds of idle time before
    each run, as between the caller's calls (see `graphexec.drift.Watch.gap`).

    ``decide`` maps one round's seconds (of the candidates that ran in it) to a winner
    (default: `choose` in the order of ``runs``); the trial stops early once every round
    agrees on it. A challenger slower than ``policy.lost`` times the fastest in two runs in a
    row (its warm-up included) cannot win by the margin: it stops running, and its ratio is
    what its runs measured. The reference (the first candidate) stops only at ``drop``, and so
    does
    every candidate with ``mean=True``: there a steady candidate 1.5x slower than one that
    collapses every third call still wins on the mean, and two calm runs in a row must not
    drop it. Under load, the caller's collapsed threads are the slow candidate.
    """
    names = list(runs)
    decide = decide or (lambda r: choose(r, [n for n in runs if n in r], policy.gain))
    rng = random.Random(0)
    rounds: list[dict[str, float]] = []
    with torch.no_grad():
        first: dict[str, float] = {}
        warming = names if warm is True else [n for n in names if warm and n in warm]
        for n in warming:  # warm-up: pools, allocators, lazy inits
            fn = runs[n]
            _idle(pause)
            t0 = time.perf_counter()
            fn()
            first[n] = time.perf_counter() - t0
        start = time.perf_counter()
        live = list(names)
        while True:
            rng.shuffle(live)
            times = {}
            for n in live:
                _idle(pause)
                t0 = time.perf_counter()
                runs[n]()
                times[n] = time.perf_counter() - t0
            rounds.append(times)
            live = _survivors(live, first, rounds, mean, names[0], policy)
            elapsed = time.perf_counter() - start
            if len(live) == 1 or _done(rounds, decide, len(live), elapsed, mean, policy):
                break
    return _ratios(names, rounds, mean, policy)


def _idle(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def _survivors(live: list[str], warm: Mapping[str, float], rounds: list[dict[str, float]],
               mean: bool, reference: str, policy: Policy) -> list[str]:  # fmt: skip
    """The candidates still running: a challenger drops at ``policy.lost`` (median trials;
    1.3: to win it would have to turn 1.3 / ``gain`` = 1.37x faster relative to the others in
    the rounds left, which a quiet machine's noise does not do), which can only keep the
    simpler plan; the reference, and anything in a mean trial, at ``policy.drop`` (a burst of
    load on the reference for two runs must not hand a challenger the win)."""
    before = rounds[-2] if len(rounds) > 1 else warm
    now = rounds[-1]

    def lost(n: str) -> bool:
        bar = policy.drop if mean or n == reference else policy.lost
        return all(n in r and r[n] > bar * min(r[m] for m in live if m in r)
                   for r in (before, now))  # fmt: skip

    return [n for n in live if not lost(n)]


def _ratios(
    names: list[str], rounds: list[dict[str, float]], mean: bool = False,
    policy: Policy = DEFAULT,
) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """Median per-round ratios to the first candidate (``mean``: ratios of the summed seconds
    of the rounds both ran in, where some candidate collapsed: `collapsed`); through the
    fastest candidate still running at the end (the anchor) for rounds the first did not run
    in."""
    mean = mean and collapsed(rounds, policy.collapse)
    base = names[0]
    last = rounds[-1]
    anchor = base if base in last else min(last, key=last.__getitem__)

    def rel(a: str, b: str) -> float:
        both = [r for r in rounds if a in r and b in r]
        if mean:
            return sum(r[a] for r in both) / sum(r[b] for r in both)
        return statistics.median(r[a] / r[b] for r in both)

    center = statistics.mean if mean else statistics.median
    to_anchor = rel(anchor, base)
    ratios = {n: rel(n, anchor) * to_anchor for n in names}
    ratios[base] = 1.0
    return ratios, {n: center(r[n] for r in rounds if n in r) for n in names}


def collapsed(rounds: Sequence[Mapping[str, float]], collapse: float = DEFAULT.collapse
              ) -> bool:  # fmt: skip
    """Whether some candidate's runs collapsed now and then (its mean over ``collapse`` times
    its median: torch's threads collapsing now and then, 2-20x measured, is what calls pay;
    one slow run in a few tens of percent is noise, and on a quiet machine a mean of 3-4
    rounds let it decide: a CLIP-like module kept at one thread that ran 1.15x slower there).

    >>> collapsed([{"a": 1.0}, {"a": 1.0}, {"a": 20.0}]), collapsed([{"a": 1.0}, {"a": 1.4}])
    (True, False)
    """
    names = {n for r in rounds for n in r}
    for n in names:
        runs = [r[n] for r in rounds if n in r]
        if statistics.mean(runs) > collapse * statistics.median(runs):
            return True
    return False


def _done(
    rounds: list[dict[str, float]], decide: Callable[[Mapping[str, float]], str], width: int,
    elapsed: float, mean: bool, policy: Policy,
) -> bool:  # fmt: skip
    last = policy.trial_rounds
    if len(rounds) < last:
        return False
    if len({decide(r) for r in rounds}) == 1:  # clear: every round picks the same winner
        return True
    # clear too: the last rounds each pick what the medians so far pick (an outlier round
    # early on, a hiccup, costs one more round rather than a trial run to its limits)
    live = [n for n in rounds[0] if all(n in r for r in rounds[-last:])]
    if len(live) > 1:
        ratios, _ = _ratios(live, [{n: r[n] for n in live} for r in rounds if set(live) <= set(r)],
                            mean, policy)  # fmt: skip
        overall = decide(ratios)
        if all(decide({n: r[n] for n in live}) == overall for r in rounds[-last:]):
            return True
    return (len(rounds) >= policy.trial_max or elapsed >= policy.trial_seconds
            or len(rounds) * width >= policy.trial_passes)  # fmt: skip


def trial_twice(
    runs: Mapping[str, Callable[[], Any]], candidate: str, gain: float | None = None,
    policy: Policy = DEFAULT,
) -> tuple[float, float]:  # fmt: skip
    """`trial`, and a second one when ``candidate`` won the first (ran below ``gain`` of the
    first entry): its worse ratio of the two, and the first entry's median seconds.

    A decision kept on one trial can be fooled by a burst of load on a shared machine;
    winning two in a row by chance is much rarer, and the second costs time only where
    something is about to be kept.
    """
    gain = policy.gain if gain is None else gain
    first = next(iter(runs))

    def wins(r: Mapping[str, float]) -> str:
        return candidate if candidate in r and first in r and r[candidate] < gain * r[first] else ""

    ratios, base = trial(runs, wins, policy)
    if ratios[candidate] >= gain:
        return ratios[candidate], base
    again, _ = trial(runs, wins, policy)
    return max(ratios[candidate], again[candidate]), base


@dataclass
class Outcome:
    """What `decide` measured: ratios to the first candidate, each one's median seconds, the
    winner, the candidates set aside (name -> why, in measured words), how many trials ran."""

    ratios: dict[str, float]
    seconds: dict[str, float]
    pick: str
    aside: dict[str, str] = field(default_factory=dict)
    trials: int = 1

    def seconds_of(self, name: str) -> float:
        return self.seconds[name]


def decide(
    runs: Mapping[str, Callable[[], Any]],
    gain: float | None = None,
    floors: Mapping[str, tuple[str, float]] | None = None,
    words: Mapping[str, str] | None = None,
    warm: bool | Collection[str] = True,
    mean: bool = False,
    pause: float = 0.0,
    policy: Policy = DEFAULT,
) -> Outcome:
    """Try ``runs`` (simplest first) side by side and pick one by `choose`.

    ``mean=True`` compares mean seconds rather than the median of per-round ratios: for
    thread counts, where the runs at the caller's threads collapse now and then on a busy
    machine (measured: 3.5 ms in one run, 290-560 ms in the next three), and those calls are
    what a user pays for, not outliers to filter out. Only where a candidate did collapse
    (`collapsed`): otherwise medians, as for every other decision. ``pause``: idle seconds
    before each run (`timed`).

    ``floors`` maps a candidate to ``(reference, floor)``: it cannot take below ``floor`` of
    the reference's time (overlapping the same ops on ``L`` lanes: ``1/L``). A trial that says
    otherwise was disturbed: it is run again, at most ``policy.reruns`` times; a candidate
    still below
    its floor is set aside, and `Outcome.aside` says what it measured and why. A winner other
    than the simplest must win a second trial against the simplest too (its worse ratio of
    the two counts).
    """
    order, floors, words = list(runs), floors or {}, words or {}
    gain = policy.gain if gain is None else gain
    ratios, seconds = timed(runs, lambda r: choose(r, [n for n in order if n in r], gain), warm,
                            mean, pause, policy)  # fmt: skip
    seen = {n: [ratios[n] / ratios[ref]] for n, (ref, _) in floors.items() if n in runs}
    n_trials = 1
    while _below(ratios, floors, runs) and n_trials <= policy.reruns:
        ratios, seconds = timed(runs, lambda r: choose(r, [n for n in order if n in r], gain),
                                mean=mean, pause=pause, policy=policy)  # fmt: skip
        n_trials += 1
        for n in seen:
            seen[n].append(ratios[n] / ratios[floors[n][0]])
    aside = {}
    for n in _below(ratios, floors, runs):
        ref, floor = floors[n]
        measured = ", ".join(f"{r:.2f}x" for r in seen[n])
        aside[n] = (
            f"{words.get(n, n)} measured {measured} of {words.get(ref, ref)} in {n_trials} "
            f"trials, below the {floor:.2f}x the same work could take: a disturbed measurement, "
            "set aside"
        )
    if order[0] in aside:  # the reference itself is in doubt: keep it, try nothing else
        aside.update({n: aside[order[0]] for n in order[1:]})
    left = [n for n in order if n not in aside or n == order[0]]
    pick = choose(ratios, left, gain)
    if pick != left[0]:  # a change must hold in a second trial, against what it beat
        prev = choose(ratios, left[: left.index(pick)], gain)
        pair = [prev, pick]
        again, _ = timed({n: runs[n] for n in pair},
                         lambda r: choose(r, [n for n in pair if n in r], gain),
                         warm=False, mean=mean, pause=pause, policy=policy)  # fmt: skip
        n_trials += 1
        # the worse of the two trials, kept relative to what it beat: one trial's words
        ratios[pick] = ratios[prev] * max(ratios[pick] / ratios[prev], again[pick] / again[prev])
        for n in _below(ratios, floors, runs):
            ref, floor = floors[n]
            aside[n] = (f"{words.get(n, n)} measured {ratios[n] / ratios[ref]:.2f}x of "
                        f"{words.get(ref, ref)} in a second trial, below the {floor:.2f}x the "
                        "same work could take: a disturbed measurement, set aside")  # fmt: skip
        left = [n for n in left if n not in aside or n == order[0]]
        pick = choose(ratios, left, gain)
    return Outcome(ratios, seconds, pick, aside, n_trials)


def _below(
    ratios: Mapping[str, float], floors: Mapping[str, tuple[str, float]], runs: Mapping[str, Any]
) -> list[str]:
    return [n for n, (ref, floor) in floors.items()
            if n in runs and ref in runs and ratios[n] < floor * ratios[ref]]  # fmt: skip
