"""The one loop of in-process executors (sequential, threads; the CUDA streams' host side
reuses its `RunState`).

    LocalExecutor._execute(plan, env, events)
      *_concurrent(plan) False:  every task on the calling thread, in order: level by level
                                 (``schedule="levels"``) or in plan (program) order
      levels:   for each level: start its tasks, wait for all of them
      dataflow: start tasks as their deps finish (concurrent.futures.wait)
      (ready tasks start critical path first: highest ``Task.bottom``; a task that is the only
      one able to run, or an inline one, runs on the calling thread)
      -> *_start(fn)          how a task is started elsewhere (pool.submit)
      -> RunState.run         one task (its generated program) through `run_task`, events
      -> RunState.finish      store outputs, drop values whose last consumer is done

A backend says whether a plan's tasks overlap (`_concurrent`) and how a task is started
(`_start`); walking the plan, freeing values, wrapping errors and recording timings happen
here and in `run_task`, once. The loop runs on the calling thread and is the only code that
touches the run's value table and reference counts, so they need no lock; tasks get their
input values as a fresh dict.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from ..plans import Plan
from ..profile import TaskEvent
from .base import Executor, Modes, capture_modes, run_task
from .schedule import Schedule

__all__ = ["LocalExecutor", "RunState"]


class LocalExecutor(Executor):
    """The shared loop of in-process executors; a backend supplies ``_start`` and, where it
    differs, ``_concurrent``.

    ``_start(fn)`` returns a ``concurrent.futures.Future`` of ``fn()``. The loop runs on the
    calling thread and is the only code that touches ``env`` and the reference counts, so
    they need no lock; tasks get their input values as a fresh dict.
    """

    honours_budget = True

    def _concurrent(self, plan: Plan) -> bool:
        """Whether ``plan``'s tasks may run at once here (else: one after another, on the
        calling thread, in order). Default: when two dispatchable tasks share a level."""
        return plan.parallel

    def _start(self, fn: Callable[[], dict[str, Any]]) -> Future:
        raise NotImplementedError

    def _one_by_one(self, plan: Plan) -> bool:
        return not self._concurrent(plan) and plan.compiled is None

    def _execute(self, plan: Plan, env: dict[str, Any], events: list[TaskEvent] | None) -> None:
        concurrent = self._concurrent(plan)
        modes = capture_modes() if concurrent else None  # re-entered on the threads tasks run on
        state = RunState(self._schedules(plan), env, events, modes)
        if not concurrent:  # nothing to overlap: a hand-off could only cost time
            self._run_one_by_one(state)
        elif self.schedule == "levels":
            self._run_levels(state)
        else:
            self._run_dataflow(state)

    def _run_here(self, state: RunState, name: str) -> list[str]:
        """Run a task on the calling thread; the tasks it made ready."""
        return state.finish(name, state.run(name))

    def _submit(self, state: RunState, name: str) -> Future:
        inputs = state.inputs_of(name)
        return self._start(lambda: state.run(name, inputs, on_worker=True))

    def _run_one_by_one(self, state: RunState) -> None:
        """Both orders are topological orders of the task DAG, so both give the same result."""
        plan = state.plan
        levels = self.schedule == "levels"
        for name in [t for level in plan.levels for t in level] if levels else plan.tasks:
            self._run_here(state, name)

    def _run_levels(self, state: RunState) -> None:
        for level in state.plan.levels:
            here = [t for t in level if state.plan.tasks[t].inline]
            away = [t for t in level if not state.plan.tasks[t].inline]
            if len(away) == 1:  # a single-task level runs on the caller: no hand-off
                here, away = here + away, []
            away.sort(key=state.priority)  # critical path first, then longest first
            running = {self._submit(state, t): t for t in away}
            try:
                for t in here:
                    self._run_here(state, t)
            finally:
                done, _ = wait(running)
            for fut in running:  # deterministic: the first failing task in level order
                state.finish(running[fut], fut.result())

    def _run_dataflow(self, state: RunState) -> None:
        ready = deque(t for t in state.plan.tasks if state.waiting[t] == 0)
        running: dict[Future, str] = {}
        try:
            while ready or running:
                inline = [t for t in ready if state.plan.tasks[t].inline]
                if inline:
                    ready = deque(t for t in ready if not state.plan.tasks[t].inline)
                    for t in inline:
                        ready.extend(self._run_here(state, t))
                    continue
                if len(ready) == 1 and not running:  # a lone task runs on the caller
                    ready.extend(self._run_here(state, ready.popleft()))
                    continue
                for t in sorted(ready, key=state.priority):  # critical path first
                    running[self._submit(state, t)] = t
                ready.clear()
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: state.order[running[f]]):
                    ready.extend(state.finish(running.pop(fut), fut.result()))
        except BaseException:
            for fut in running:
                fut.cancel()
            wait(running)  # nothing of this call may still run when it raises
            raise


class RunState:
    """Per-call state of the local loop. Mutated only by the calling thread."""

    def __init__(
        self, schedule: Schedule, env: dict[str, Any], events: list[TaskEvent] | None,
        modes: Modes | None,
    ):  # fmt: skip
        self.schedule, self.plan, self.nodes = schedule, schedule.plan, schedule.nodes
        self.env, self.events, self.modes = env, events, modes
        self.waiting = schedule.waiting.copy()
        self.refs = schedule.refs.copy()
        self.order, self.bottom = schedule.order, schedule.bottom
        self.dependents = schedule.dependents

    def run(
        self, name: str, inputs: dict[str, Any] | None = None, on_worker: bool = False
    ) -> dict[str, Any]:
        """Run one task (on a worker thread: under the caller's modes)."""
        compiled = self.schedule.program(name)
        return run_task(
            self.plan.tasks[name],
            self.nodes,
            self.inputs_of(name) if inputs is None else inputs,
            self.modes if on_worker else None,
            self.events,
            compiled=compiled,
        )

    def priority(self, name: str) -> tuple[float, int]:
        """Sort key: the longest remaining path first, then program order."""
        return (-self.bottom[name], self.order[name])

    def inputs_of(self, name: str) -> dict[str, Any]:
        return {v: self.env[v] for v in self.plan.tasks[name].inputs}

    def finish(self, name: str, values: Mapping[str, Any]) -> list[str]:
        """Store a task's outputs, free what no one reads any more, return newly ready tasks."""
        self.env.update(values)
        for v in self.plan.tasks[name].inputs:
            self.refs[v] -= 1
            if self.refs[v] == 0 and v in self.plan.last_use:
                del self.env[v]
        ready = []
        for t in self.dependents[name]:
            self.waiting[t] -= 1
            if self.waiting[t] == 0:
                ready.append(t)
        return ready
