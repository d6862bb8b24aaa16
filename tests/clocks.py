"""Fake clocks for the tests whose outcome a measurement would otherwise decide.

graphexec decides from what it measures: node times (`graphexec.interpret`), side-by-side
trials (`graphexec.trials`), fused calls and a module's own runs (`graphexec.tune`), paired
rounds (`graphexec.timing`). On this machine's real clock each of those depends on the load:
with one core busy, torch's intra-op threads collapse now and then and a trial goes either
way. A test that checks a rule therefore puts the measurements on a clock of its own, patched
in as the ``time`` of the modules that read it (the rest of `time` stays the real one), so its
outcome is the rule's, on a quiet machine or a busy one:

* `thread_clock`: nodes that advance the clock by their seconds at one intra-op thread or at
  the caller's threads; work on several lanes adds up, as under the GIL;
* `counted`: candidates that advance it by their seconds and count their runs;
* `steady_clock`: the clock moves one tick per read, so each timed run of real modules takes
  one tick: every node is tiny, no way of running a plan beats another, and every trial keeps
  its simplest candidate (for tests of something else than what is measured).
"""

from __future__ import annotations

import itertools
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pytest
import torch

from graphexec import trials

__all__ = ["counted", "steady_clock", "thread_clock"]


#: `steady_clock`'s tick: a power of two, so that every difference of two readings is exact,
#: and below the policy's ``inline_below`` (50 µs) and ``fuse_member_below`` (200 µs).
TICK = 2.0**-16  # 15.3 µs


class _Time:
    """A stand-in for the `time` module: its own ``perf_counter``, the module's everything else."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _Clock(_Time):
    """``perf_counter`` reads it, ``advance`` and ``sleep`` move it (from any thread: nodes on
    lanes move it at once)."""

    def __init__(self):
        self.now = 0.0
        self._lock = threading.Lock()

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    sleep = advance


class _Ticks(_Time):
    """``perf_counter`` moves one `TICK` per read (next() of a count is atomic: readers on
    several threads each get a tick of their own)."""

    def __init__(self):
        self._reads = itertools.count()

    def perf_counter(self) -> float:
        return next(self._reads) * TICK


def _patch(monkeypatch: pytest.MonkeyPatch, clock: object, modules: tuple[types.ModuleType, ...]
           ) -> None:  # fmt: skip
    for module in modules or (trials,):
        monkeypatch.setattr(module, "time", clock)


def thread_clock(monkeypatch: pytest.MonkeyPatch, *modules: types.ModuleType
                 ) -> Callable[[float, float], Callable[[Any], Any]]:  # fmt: skip
    """The clock of ``modules`` (default: the trials') made fake: ``costs(at_one, at_caller)``
    is a node (one argument, returned as it is) that advances it by ``at_one`` seconds at one
    intra-op thread and by ``at_caller`` at the caller's threads."""
    clock = _Clock()
    _patch(monkeypatch, clock, modules)

    def costs(at_one: float, at_caller: float) -> Callable[[Any], Any]:
        def fn(x):
            clock.advance(at_one if torch.get_num_threads() == 1 else at_caller)
            return x

        return fn

    return costs


def counted(monkeypatch: pytest.MonkeyPatch, *modules: types.ModuleType
            ) -> tuple[dict[str, int], Callable[[str, float], Callable[[], None]]]:  # fmt: skip
    """The clock of ``modules`` (default: the trials') made fake: ``cost(name, seconds)`` is a
    candidate (no arguments) that advances it by ``seconds`` and counts its runs in the
    returned ``calls``."""
    clock = _Clock()
    _patch(monkeypatch, clock, modules)
    calls: dict[str, int] = {}

    def cost(name: str, seconds: float) -> Callable[[], None]:
        calls[name] = 0

        def fn():
            clock.advance(seconds)
            calls[name] += 1

        return fn

    return calls, cost


def steady_clock(monkeypatch: pytest.MonkeyPatch, *modules: types.ModuleType) -> None:
    """The clock of ``modules`` (default: the trials') made to move one `TICK` per read: a run
    timed between two readings takes one tick, whatever it runs, at any thread count (a
    node, a plan at either budget, overlapped or not), on a quiet machine as on a busy one."""
    _patch(monkeypatch, _Ticks(), modules)
