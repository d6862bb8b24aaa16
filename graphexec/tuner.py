"""`Tuner`: the one owner of a plan's re-tuning, for `GraphModule` and the compile backend.

What it decides
---------------
* **When the plan is made.** From estimates (``measure=False``, or an executor whose tasks do
  not run on this process's threads: CUDA streams, Dask), from example inputs given up
  front, or measured on the first call's inputs (``gx.plan`` with them: `graphexec.tune`).
  Several threads making the first call at once measure once: the others wait for it.
* **When it is tried again.** A measured plan that runs on this process's threads is watched
  (`graphexec.drift.Watch`): each call is timed with one clock pair, and when the watch says
  the calls drifted (or a periodic probe is due), the decisions that can flip with the load
  (the thread budget, overlap) are tried again on that call's inputs
  (`graphexec.budget.recheck`); a switch is a record in ``plan.decisions``. A caller that
  finds a re-check under way does not wait for it.
* **One policy.** The plan, the watch and the re-checks follow the same
  `graphexec.policy.Policy`.

The owner supplies how to run a plan (``run``), the call's graph inputs when a measurement
needs them (``inputs``) and, optionally, a context to measure in (`GraphModule`: its modules
in ``eval()`` so that BatchNorm statistics do not move).

Thread-safety: ``_lock`` serialises making and replacing the plan; reading ``plan`` is a
plain attribute read (a plan is frozen), so calls never wait on a re-check.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .budget import recheck
from .drift import Watch
from .graph import Graph
from .plans import Plan
from .policy import DEFAULT, Policy
from .tune import plan as make_plan

__all__ = ["Tuner"]


class Tuner:
    """A graph's plan, made and kept tuned (see the module docstring).

    Parameters
    ----------
    graph : Graph
    policy : Policy, optional
        The rules of the plan, the watch and the re-checks (default: today's).
    measure : bool
        Measure the plan on the first call's inputs (default) or plan from estimates.
    local : bool
        The plan runs on this process's threads (the executor honours its thread budget):
        only then is it measured and watched.
    watch : bool or Watch
        Watch a measured plan and re-check it when its calls drift (default: a `Watch` with
        the policy's thresholds); False: keep the plan as measured.
    plan_kwargs : mapping, optional
        Passed to `graphexec.plan` (the executor's ``plan_defaults`` among them).
    measuring : callable, optional
        A context manager factory every measurement runs in.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        policy: Policy | None = None,
        measure: bool = True,
        local: bool = True,
        watch: bool | Watch = True,
        plan_kwargs: Mapping[str, Any] | None = None,
        measuring: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ):
        self.graph = graph
        self.policy = DEFAULT if policy is None else policy
        self.measure, self.local = measure, local
        self.watch: Watch | None = (Watch(policy=self.policy) if watch is True
                                    else watch or None)  # fmt: skip
        self.plan_kwargs: dict[str, Any] = {"policy": self.policy, **(plan_kwargs or {})}
        self._measuring = measuring or contextlib.nullcontext
        self._plan: Plan | None = None
        self._lock = threading.Lock()

    @property
    def plan(self) -> Plan:
        """The plan (from estimates when none was made yet)."""
        if self._plan is None:
            with self._lock:
                if self._plan is None:
                    self._plan = make_plan(self.graph, **self.plan_kwargs)
        return self._plan

    def replan(self, example_inputs: Sequence[Any] | None = None, **plan_kwargs: Any) -> Plan:
        """Plan again, measured on ``example_inputs`` when given; the watch starts over."""
        self.plan_kwargs.update(plan_kwargs)
        if example_inputs is not None:  # a traced module's own call, too
            example_inputs = self.graph.graph_call(tuple(example_inputs), {})[0]
        with self._measuring():
            new = make_plan(self.graph, example_inputs, **self.plan_kwargs)
        self._plan = new
        if self.watch is not None:
            self.watch.start(new)
        return new

    def reset(self, local: bool | None = None) -> None:
        """Forget the plan (the next call plans again); ``local``: where it now runs."""
        with self._lock:
            self._plan = None
            if local is not None:
                self.local = local

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy / pickle: locks do not copy
        return {**self.__dict__, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def call(self, run: Callable[[Plan], Any], inputs: Callable[[], Sequence[Any]]) -> Any:
        """``run(plan)``: the plan measured on ``inputs()`` first if it is the first call,
        timed and watched when it is a measured plan that runs here, re-checked when the
        watch says so."""
        if self._plan is None and self.measure and self.local:
            with self._lock:
                if self._plan is None:
                    self._first(inputs())
        p, watch = self.plan, self.watch
        if watch is None or not p.measured or not self.local:
            return run(p)
        start = watch.clock()
        out = run(p)
        why = watch.observe(watch.clock() - start, start)  # races between callers cost a sample
        if why is not None:
            self._recheck(inputs, why)
        return out

    def _first(self, example_inputs: Sequence[Any]) -> None:
        with self._measuring():
            self._plan = make_plan(self.graph, example_inputs, **self.plan_kwargs)
        if self.watch is not None:
            self.watch.start(self._plan)

    def _recheck(self, inputs: Callable[[], Sequence[Any]], why: str) -> None:
        """Try the load-dependent decisions again on this call's inputs; another caller
        already doing so is not waited for."""
        watch = self.watch
        if self._plan is None or watch is None or not self._lock.acquire(blocking=False):
            return
        try:
            start = watch.clock()
            with self._measuring():
                new, _ = recheck(self._plan, inputs(), why, watch.calls, watch.gap, self.policy)
            self._plan = new
            watch.start(new, from_calls=True)
            watch.spent(watch.clock() - start)
        finally:
            self._lock.release()
