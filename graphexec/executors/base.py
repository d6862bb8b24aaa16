"""What every executor shares: binding inputs, running one task, freeing values, the loops.

The call tree (override points marked ``*``)::

    Executor.run(plan, *args, profile=False)
      -> bind_inputs                 arity check, env = {input name: value} (`interpret`)
      -> *_execute(plan, env, rec)   the backend: fill env with every output value
           LocalExecutor._execute    the shared loop for in-process backends:
             levels:   for each level: start its tasks, wait for all of them
             dataflow: start tasks as their deps finish (concurrent.futures.wait)
             (ready tasks start critical path first: highest ``Task.bottom``)
             -> *_start(fn)          how a task is started (pool.submit, or run here)
             -> run_task             one task (`interpret.run_nodes`), events recorded
             -> release              drop values whose last consumer is done
      -> collect_outputs             env -> the graph's output structure

A backend that is not in-process (Dask) overrides ``_execute`` and reuses `run_task` on the
worker side. Grad mode, inference mode and autocast are thread-local in torch: `capture_modes`
reads them on the calling thread and `run_task` re-enters them on whichever thread runs it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import torch
import torch.utils._pytree as pytree

from ..codegen import Program, plan_program, task_program
from ..errors import NodeError
from ..graph import Graph, Node, Ref, expect_graph
from ..interpret import bind_inputs, check_input, run_nodes
from ..planner import arrange
from ..plans import Plan, Task
from ..profile import TaskEvent, Timeline

__all__ = [
    "Executor",
    "IdCache",
    "LocalExecutor",
    "Modes",
    "bind_inputs",
    "capture_modes",
    "collect_outputs",
    "run_task",
    "SCHEDULES",
]

SCHEDULES = ("levels", "dataflow")


# -- thread-local torch modes -----------------------------------------------------------------
@dataclass(frozen=True)
class Modes:
    """The caller's thread-local torch modes, to be re-entered on worker threads."""

    grad: bool
    inference: bool
    autocast: tuple[tuple[str, torch.dtype], ...]  # (device_type, dtype) where enabled

    def enter(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self.inference:
            stack.enter_context(torch.inference_mode())
        else:
            stack.enter_context(torch.set_grad_enabled(self.grad))
        for device, dtype in self.autocast:
            stack.enter_context(torch.autocast(device, dtype=dtype))
        return stack


_AUTOCAST_DEVICES = ("cpu", "cuda")


def capture_modes() -> Modes:
    """Read grad mode, inference mode and autocast of the calling thread."""
    autocast = tuple(
        (d, torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES if torch.is_autocast_enabled(d)
    )
    return Modes(torch.is_grad_enabled(), torch.is_inference_mode_enabled(), autocast)


# -- one task ---------------------------------------------------------------------------------
def run_task(
    task: Task,
    nodes: Mapping[str, Node],
    inputs: Mapping[str, Any],
    modes: Modes | None = None,
    events: list[TaskEvent] | None = None,
    lane: str | None = None,
    compiled: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run a task's nodes in order; return the values other tasks or outputs need.

    Parameters
    ----------
    task : Task
    nodes : mapping of node name to Node
        Must hold every node of the task (a remote worker may get just those).
    inputs : mapping
        The values named in ``task.inputs``.
    modes : Modes, optional
        Re-entered around the task when it runs on another thread than the caller's.
    events : list, optional
        When given, a `TaskEvent` is appended (``list.append`` is atomic: safe across threads).
    lane : str, optional
        Lane name for the event; defaults to the current thread's name.
    compiled : callable, optional
        Called with ``inputs`` instead of the node loop, returning the same output values:
        the task compiled by a backend (``plan.compiled``), or its straight-line
        `graphexec.codegen.task_program`.

    Raises
    ------
    NodeError
        Naming the node that raised, with the original exception as ``__cause__``.
    """
    start = time.time() if events is not None else 0.0
    with modes.enter() if modes is not None else contextlib.nullcontext():
        if compiled is not None:
            try:
                values = compiled(inputs)
            except NodeError:
                raise  # a generated task program names its node itself
            except Exception as exc:
                raise NodeError(task.nodes[0], exc, task.name) from exc
        else:
            values = run_nodes(nodes, task.nodes, dict(inputs), task.release, task.name)
    if events is not None:
        events.append(
            TaskEvent(
                task.name,
                task.nodes,
                task.level,
                start,
                time.time(),
                lane or threading.current_thread().name,
            )
        )
    return {k: values[k] for k in task.outputs}


# -- binding and collecting ---------------------------------------------------------------------
def collect_outputs(graph: Graph, env: Mapping[str, Any]) -> Any:
    """Build the graph's output structure from the computed values."""
    return pytree.tree_map(
        lambda r: r.resolve(env[r.node]) if isinstance(r, Ref) else r, graph.outputs
    )


# -- caches ---------------------------------------------------------------------------------------
K = TypeVar("K")
V = TypeVar("V")


class IdCache(Generic[K, V]):
    """What ``make`` derives from an object, made once per object (plans per graph, stream
    programs or Dask jobs per plan). Keyed by ``id``; the object is kept so the id stays its own.

    >>> calls = []
    >>> cache = IdCache(lambda key: calls.append(key) or len(calls))
    >>> obj = object()
    >>> cache(obj), cache(obj), calls == [obj]
    (1, 1, True)
    """

    def __init__(self, make: Callable[[K], V]):
        self._make = make
        self._items: dict[int, tuple[K, V]] = {}

    def __call__(self, key: K) -> V:
        hit = self._items.get(id(key))
        if hit is None or hit[0] is not key:
            hit = (key, self._make(key))
            self._items[id(key)] = hit
        return hit[1]

    def values(self) -> list[V]:
        return [v for _, v in self._items.values()]

    def __deepcopy__(self, memo: dict[int, Any]) -> IdCache[K, V]:
        return IdCache(self._make)  # a copy's keys are new objects: derive anew

    def __getstate__(self) -> dict[str, Any]:  # pickled empty, for the same reason
        return {"_make": self._make, "_items": {}}

    def clear(self) -> None:
        self._items.clear()


# -- the executor protocol ----------------------------------------------------------------------
class Executor:
    """Base of all executors: ``run`` a plan (or a graph) on some inputs.

    Subclasses implement ``_execute(plan, env, events)``. Executors are context managers;
    ``close()`` releases what the executor created and may be called more than once.
    """

    name = "executor"

    def __init__(self, schedule: str = "dataflow"):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.schedule = schedule
        self._plans = IdCache(lambda graph: arrange(graph, **self.plan_defaults))
        self._schedules: IdCache[Plan, Schedule] = IdCache(Schedule)

    def run(self, plan: Plan | Graph, *args: Any, profile: bool = False, **kwargs: Any) -> Any:
        """Run ``plan`` on the given graph inputs.

        Parameters
        ----------
        plan : Plan or Graph
            A graph is planned once (estimated costs) and the plan cached.
        *args, **kwargs
            Graph inputs, by position (declaration order) or by name.
        profile : bool
            Also return a `Timeline` of what ran where and when.

        Returns
        -------
        The graph's outputs (one value, tuple or dict as declared); with ``profile=True``,
        ``(outputs, trace)``.

        Raises
        ------
        ArityError
            If the inputs do not match the graph's.
        NodeError
            If a node raised; other in-flight tasks are cancelled or awaited first.
        """
        p = self._as_plan(plan)
        if not profile and self._inline(p):  # one generated function, one call per node
            program = p.as_is or self._schedules(p).straight
            if kwargs or len(args) != len(p.graph.inputs):
                env = bind_inputs(p.graph, args, kwargs)
                args = tuple(env[n] for n in p.graph.inputs)
            else:
                for name, value in zip(p.graph.inputs, args, strict=True):
                    check_input(p.graph, name, value)
            return program(*args)
        env = bind_inputs(p.graph, args, kwargs)
        events: list[TaskEvent] | None = [] if profile else None
        start = time.time()
        self._execute(p, env, events)
        end = time.time()
        out = collect_outputs(p.graph, env)
        if not profile:
            return out
        trace = Timeline(
            p, self.name, self.schedule, tuple(sorted(events, key=lambda e: e.start)), start, end
        )
        return out, trace

    def map(self, plan: Plan | Graph, inputs: Any, **kwargs: Any) -> Any:
        """Run over an iterable of inputs (each a tuple of graph inputs, or one value)."""
        p = self._as_plan(plan)
        for item in inputs:
            yield self.run(p, *(item if isinstance(item, tuple) else (item,)), **kwargs)

    #: Settings of the plans this executor makes itself (``run(graph)``, `GraphModule`).
    plan_defaults: Mapping[str, Any] = MappingProxyType({})

    def _as_plan(self, plan: Plan | Graph) -> Plan:
        if isinstance(plan, Plan):
            return plan
        expect_graph(plan, f"{type(self).__name__}.run")
        return self._plans(plan)

    def _inline(self, plan: Plan) -> bool:
        """True when this executor would run ``plan`` task after task on the calling thread:
        `run` then calls the plan's straight-line program instead of the task loop."""
        return False

    def _execute(self, plan: Plan, env: dict[str, Any], events: list[TaskEvent] | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what this executor created (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schedule={self.schedule!r})"


class LocalExecutor(Executor):
    """The shared loop of in-process executors; a backend supplies ``_start``.

    ``_start(fn)`` returns a ``concurrent.futures.Future`` of ``fn()``. The loop runs on the
    calling thread and is the only code that touches ``env`` and the reference counts, so
    they need no lock; tasks get their input values as a fresh dict.
    """

    def _start(self, fn: Callable[[], dict[str, Any]]) -> Future:
        raise NotImplementedError

    def _execute(self, plan: Plan, env: dict[str, Any], events: list[TaskEvent] | None) -> None:
        state = _RunState(self._schedules(plan), env, events, capture_modes())
        if self.schedule == "levels":
            self._run_levels(state)
        else:
            self._run_dataflow(state)

    def _run_here(self, state: _RunState, name: str) -> None:
        state.finish(name, state.run(name))

    def _submit(self, state: _RunState, name: str) -> Future:
        inputs = state.inputs_of(name)
        return self._start(lambda: state.run(name, inputs, on_worker=True))

    def _run_levels(self, state: _RunState) -> None:
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

    def _run_dataflow(self, state: _RunState) -> None:
        ready = deque(t for t in state.plan.tasks if state.waiting[t] == 0)
        running: dict[Future, str] = {}
        try:
            while ready or running:
                inline = [t for t in ready if state.plan.tasks[t].inline]
                if inline:
                    ready = deque(t for t in ready if not state.plan.tasks[t].inline)
                    for t in inline:
                        ready.extend(self._finish_here(state, t))
                    continue
                if len(ready) == 1 and not running:  # a lone task runs on the caller
                    ready.extend(self._finish_here(state, ready.popleft()))
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

    def _finish_here(self, state: _RunState, name: str) -> list[str]:
        return state.finish(name, state.run(name))


class Schedule:
    """What every run of one plan shares, made once per plan: the dependency counts, the
    critical-path priorities, the freeing counts and the generated programs (task by task,
    and `straight`: the whole plan as one function, for plans that run inline)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.nodes = plan.graph.nodes
        self.waiting = {t: len(task.deps) for t, task in plan.tasks.items()}
        self.order = {t: i for i, t in enumerate(plan.tasks)}
        self.bottom = {t: task.bottom for t, task in plan.tasks.items()}
        self.refs = {v: len(c) for v, c in plan.consumers.items()}
        self.dependents: dict[str, list[str]] = {t: [] for t in plan.tasks}
        for t, task in plan.tasks.items():
            for d in task.deps:
                self.dependents[d].append(t)
        self._programs: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {}
        self._straight: Program | None = None

    @property
    def straight(self) -> Program:
        if self._straight is None:
            order = [n for task in self.plan.tasks.values() for n in task.nodes]
            self._straight = plan_program(self.plan.graph, order)
        return self._straight

    def program(self, name: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
        """The task's compiled callable (``plan.compiled``), else its generated program."""
        fn = self._programs.get(name)
        if fn is None:
            compiled = self.plan.compiled.get(name) if self.plan.compiled else None
            t = self.plan.tasks[name]
            fn = compiled or task_program(self.nodes, t.nodes, t.inputs, t.outputs, t.release,
                                          t.name)  # fmt: skip
            self._programs[name] = fn
        return fn


class _RunState:
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
