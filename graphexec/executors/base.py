"""What every executor shares: the run protocol, running one task, binding and collecting.

The call tree (override points marked ``*``)::

    Executor.run(plan, *args, profile=False)
      -> _run_split                  a plan that splits the batch (``plan.split``): the
                                     inputs cut (`shards.shard_inputs`), then
                                     *_run_shards(whole plan, shards, events): each shard by
                                     _shard -> _budgeted (what follows), merged
                                     (`shards.merge_outputs`)
      -> _budgeted -> BudgetLanes.call  with ``plan.thread_budget`` (local executors): the
                                     rest of the call runs at that many intra-op threads, on
                                     the calling thread (its own count put back after the
                                     call; `own_threads`) or, where that cannot be, on a pool
                                     thread of that budget (a lane: `lanes`)
      -> *_one_by_one(plan)          runs one task after another on this thread? then call
                                     the plan's straight-line program (`schedule.Schedule`,
                                     `graphexec.codegen`) or ``plan.as_is``, and return
      -> bind_inputs                 arity check, env = {input name: value} (`interpret`)
      -> *_execute(plan, env, rec)   the backend: fill env with every output value
           LocalExecutor._execute    the one loop of in-process backends (`local`)
             -> run_task             one task (its generated program), events recorded
      -> collect_outputs             env -> the graph's output structure

A backend that is not in-process (Dask) overrides ``_execute`` and reuses `run_task` on the
worker side. Grad mode, inference mode and autocast are thread-local in torch: `capture_modes`
reads them on the calling thread and `run_task` re-enters them on whichever thread runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import torch
import torch.utils._pytree as pytree

from ..errors import NodeError
from ..graph import Graph, Node, Ref, expect_graph
from ..interpret import bind_inputs, check_input, check_none, run_nodes
from ..planner import arrange
from ..plans import Plan, Task
from ..profile import TaskEvent, Timeline
from .lanes import enter_lane, lane_pool, process_default, started
from .own_threads import at_threads
from .schedule import Schedule
from .shards import merge_outputs, shard_inputs

__all__ = [
    "BudgetLanes",
    "Executor",
    "IdCache",
    "Modes",
    "bind_inputs",
    "capture_modes",
    "collect_outputs",
    "run_task",
    "SCHEDULES",
]
__all__ += ["enter_lane", "process_default", "started"]  # `lanes`' own, still importable here

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


# -- thread budgets ------------------------------------------------------------------------------
class BudgetLanes:
    """Run a call at a thread budget: on the calling thread, its own count set for the call
    and put back (`call`), or on pool threads of that budget, several at once (`submit`).

    ``torch.set_num_threads`` is per OS thread with torch's OpenMP backend, and setting only
    the calling thread's count costs about a microsecond (`graphexec.executors.own_threads`),
    while handing a call to a pool thread and back cost 100-150 µs here, and more with a core
    busy, when the woken thread waits for one. So `call` runs on the caller, and its count
    (``torch.get_num_threads()``) is put back on every path; torch's process default, which
    threads started meanwhile read, is never touched. Where the caller's count cannot be set
    alone (another parallel backend; MKL's count pinned by an earlier
    ``torch.set_num_threads`` on this thread), the call goes to a pool thread of that
    budget, one hand-off. A call made at the budget already (a plan run inside a node, or
    on a lane) runs where it is.

    `submit` runs calls at once on pool threads made on first use, cores // k of them
    (data-parallel shards). Grad mode, inference mode and autocast are thread-local: the
    caller's are re-entered on a lane.

    >>> lanes = BudgetLanes()
    >>> lanes.call(1, torch.get_num_threads), torch.get_num_threads() >= 1
    (1, True)
    >>> lanes.close()
    """

    def __init__(self) -> None:
        self._pools: dict[int, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def call(self, threads: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` at ``threads`` intra-op threads; its result or its error."""
        with at_threads(threads) as here:
            if here:
                return fn(*args)
        return self.submit(threads, fn, *args).result()

    def submit(self, threads: int, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)`` started on a lane of ``threads`` intra-op threads, under the caller's
        modes: its future (several run at once, up to cores // ``threads``)."""
        pool = self._pools.get(threads)
        if pool is None:
            with self._lock:  # several callers may share one executor
                pool = self._pools.get(threads)
                if pool is None:
                    workers = max(1, (os.cpu_count() or 1) // threads)
                    pool = lane_pool(workers, threads, f"graphexec-budget{threads}")
                    self._pools[threads] = pool
        modes = capture_modes()

        def on_lane() -> Any:
            with modes.enter():
                return fn(*args)

        return pool.submit(on_lane)

    def close(self) -> None:
        """Shut the lanes down and join their threads (idempotent)."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)

    def __getstate__(self) -> dict[str, Any]:  # a copy starts without threads
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()


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
    """Build the graph's output structure from the computed values.

    Raises
    ------
    NodeError
        Naming the node, if a graph output is None (a forgotten ``return``).
    """
    check_none(graph.nodes, None, env, graph.output_refs())
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
        self._budget = BudgetLanes()
        self._unsplit: IdCache[Plan, Plan] = IdCache(lambda p: dataclasses.replace(p, split=None))

    #: Whether `run` honours ``plan.thread_budget`` (in-process executors do; a remote
    #: executor's workers keep their own settings).
    honours_budget = False
    #: Whether outputs carry autograd history back to the caller's parameters (in-process
    #: executors: yes; Dask computes on workers and sends plain tensors back).
    keeps_autograd = True

    def run(self, plan: Plan | Graph, *args: Any, profile: bool = False, **kwargs: Any) -> Any:
        """Run ``plan`` on the given graph inputs.

        Parameters
        ----------
        plan : Plan or Graph
            A graph is planned once (estimated costs) and the plan cached.
        *args, **kwargs
            Graph inputs, by position (declaration order) or by name; for a traced graph,
            also as its module takes them (`Graph.graph_call`: the arguments the trace fixed
            given as they were, or left out).
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
        args, kwargs = p.graph.graph_call(args, kwargs)  # a traced module's own call, too
        if p.split is not None:  # data parallelism: shards, _run_shards, merge
            return self._run_split(p, args, kwargs, profile)
        return self._budgeted(p, args, kwargs, profile)

    def _run_split(self, p: Plan, args: tuple[Any, ...], kwargs: dict[str, Any], profile: bool
                   ) -> Any:  # fmt: skip
        """A split plan: the batch cut into shards, `_run_shards` on the plan without its
        split (made once per plan), the shards' outputs merged (`graphexec.executors.shards`).
        """
        assert p.split is not None
        shards = shard_inputs(p.graph, p.split, args, kwargs)
        whole = self._unsplit(p)
        events: list[TaskEvent] | None = [] if profile else None
        start = time.time()
        outputs = self._run_shards(whole, shards, events)
        end = time.time()
        out = merge_outputs(p.split, outputs)
        return (out, self._timeline(whole, events, start, end)) if profile else out

    def _budgeted(self, p: Plan, args: tuple[Any, ...], kwargs: dict[str, Any], profile: bool
                  ) -> Any:  # fmt: skip
        if p.thread_budget is not None and self.honours_budget:
            return self._budget.call(p.thread_budget, self._run, p, args, kwargs, profile)
        return self._run(p, args, kwargs, profile)

    def _run_shards(self, plan: Plan, shards: list[tuple[Any, ...]],
                    events: list[TaskEvent] | None) -> list[Any]:  # fmt: skip
        """Run ``plan`` (unsplit) on each shard's inputs; their outputs, in shard order
        (`graphexec.executors.shards`). Here: one after another, at the plan's thread budget,
        the reference the other backends are tested against."""
        return [self._shard(plan, s, events) for s in shards]

    def _shard(self, plan: Plan, inputs: tuple[Any, ...], events: list[TaskEvent] | None,
               ) -> Any:  # fmt: skip
        """One shard's outputs; its task events appended to ``events`` when profiling."""
        if events is None:
            return self._budgeted(plan, inputs, {}, False)
        out, trace = self._budgeted(plan, inputs, {}, True)
        events.extend(trace.events)
        return out

    def _run(self, p: Plan, args: tuple[Any, ...], kwargs: dict[str, Any], profile: bool) -> Any:
        if not profile and self._one_by_one(p):  # one generated function, one call per node
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
        return (out, self._timeline(p, events, start, end)) if profile else out

    def _timeline(self, plan: Plan, events: list[TaskEvent] | None, start: float, end: float
                  ) -> Timeline:  # fmt: skip
        """The record of a profiled call: its task events by start time."""
        ordered = tuple(sorted(events or (), key=lambda e: e.start))
        return Timeline(plan, self.name, self.schedule, ordered, start, end)

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

    def _one_by_one(self, plan: Plan) -> bool:
        """True when this executor would run ``plan`` one task after another on the calling
        thread: `run` then calls the plan's straight-line program instead of the task loop."""
        return False

    def _execute(self, plan: Plan, env: dict[str, Any], events: list[TaskEvent] | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what this executor created (idempotent)."""
        budget = getattr(self, "_budget", None)
        if budget is not None:
            budget.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schedule={self.schedule!r})"
