"""Run a plan on CUDA streams: concurrent tasks on a pool of streams, ordered by events.

What it decides
---------------
Which stream runs each task, which events order them and which values are marked for which
stream is decided ahead, as data, by `graphexec.executors.cuda.streams` (`stream_program`,
checked on the CPU by `StreamProgram.check`). This module only enqueues what a program says,
and owns what needs a device: streams, events, the allocator, CUDA graphs.

* **Host order.** One host thread enqueues every task, in program order (a topological
  order); kernels launch asynchronously, so the caller's grad mode, inference mode and
  autocast apply as they are. There is no host synchronization in a run. The executor's lock
  makes concurrent calls take turns: they share the side streams. Each task runs its program
  generated once per plan (the executor's cached `Schedule`). A program that puts every task
  on the caller's stream (a chain), when not captured, runs as the plan's straight-line
  program instead: what eager runs, without the per-task loop.
* **Memory.** Before a task is enqueued, each value it reads that was made on another stream
  gets ``Tensor.record_stream(reader)`` (the program lists them once per value and reader
  stream); graph outputs made on a side stream get it for stream 0. The caching allocator then
  keeps the block out of reuse until those streams have passed that point, so values can be
  freed at their last use (the plan's ``last_use``) without host waits.
* **Errors.** A failing node raises `NodeError` after stream 0 is made to wait for every side
  stream: what was enqueued before still runs, but the caller's later work cannot race it.
* **Capture.** ``capture=True`` records the whole multi-stream program into one
  ``torch.cuda.CUDAGraph`` per input signature and replays it; how it is keyed, checked,
  warmed up and replayed is decided in `graphexec.executors.cuda.capture`.
* **Choice.** `auto_choice` picks this executor for a graph whose parameters are on a GPU.

The call tree::

    Executor.run -> CudaStreamExecutor._execute(plan, env, events)
      -> program(plan)              stream_program(plan, streams, schedule), cached per plan
      -> run_program(...)           enqueue: waits, record_stream, run_task, events; join
      or _replay(...)               capture.captured_for (capture once per input signature),
                                    then capture.replay (copy inputs in, replay, clone out)
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.utils._pytree as pytree

from ...graph import Graph, state_tensors
from ...plans import Plan
from ...policy import DEFAULT
from ...profile import TaskEvent
from ..base import Executor, IdCache
from ..local import RunState
from ..schedule import Schedule
from .capture import (
    Captured,
    CaptureWarning,
    capture,
    captured_for,
    replay,
)
from .streams import INPUTS, StreamOp, StreamProgram, stream_program

__all__ = ["CudaStreamExecutor", "CudaUnavailableError", "auto_choice", "run_program"]


class CudaUnavailableError(RuntimeError):
    """CUDA streams were asked for where torch sees no CUDA device."""


# -- enqueueing ---------------------------------------------------------------------------------
def run_program(
    plan: Plan,
    program: StreamProgram,
    env: dict[str, Any],
    streams: Sequence[Any],
    events: list[TaskEvent] | None = None,
    cuda: Any = torch.cuda,
    schedule: Schedule | None = None,
) -> None:
    """Enqueue ``program`` from the calling thread; fill ``env`` with the plan's output values.

    Parameters
    ----------
    plan, program : Plan, StreamProgram
    env : dict
        Graph inputs by name; values are added as tasks run and dropped at their last use.
    streams : sequence of torch.cuda.Stream
        ``streams[0]`` is the caller's current stream, ``streams[i]`` stream ``i``. Each task
        runs with its stream made current (``set_stream``); ``streams[0]`` is current again
        when this returns or raises.
    events : list, optional
        When given, one `TaskEvent` per task from CUDA timing events (lane ``"stream i"``);
        the caller's stream is synchronized once, at the end, to read them.
    cuda : module
        ``torch.cuda`` (its ``Event`` and ``set_stream``); a test stand-in on machines without
        one.
    schedule : Schedule, optional
        The plan's `Schedule` (its generated task programs), made once per plan by the
        executor; without it one is made for this call (generating every task's program
        again: on a GPU at batch 1 that cost more than the kernels, 0.26 ms per task).

    Raises
    ------
    NodeError
        Naming the node. What was enqueued before still runs; stream 0 is made to wait for
        every side stream first, so the caller's later work cannot race it.
    """
    caller = streams[0]
    marks: dict[str, Any] = {}
    clock = _Clock(cuda, caller) if events is not None else None
    if program.fork:
        marks[INPUTS] = _record(cuda, caller)
    state = RunState(schedule or Schedule(plan), env, None, None)  # one thread runs every task
    try:
        for op in program.ops:
            stream = streams[op.stream]
            for w in op.waits:
                stream.wait_event(marks[w])
            for v in op.record_stream:  # made on another stream: keep its block from reuse
                _record_stream(env[v], stream)
            cuda.set_stream(stream)  # one call, not a stream context: ~10 µs less per task
            begin = clock.mark(stream) if clock else None
            values = state.run(op.task)
            if clock:
                clock.spans.append((op, begin, clock.mark(stream)))
            state.finish(op.task, values)  # frees values at their last use (record_stream'd)
            if op.record:
                marks[op.task] = _record(cuda, stream)
    except BaseException:
        cuda.set_stream(caller)
        for stream in streams[1:]:
            caller.wait_stream(stream)
        raise
    cuda.set_stream(caller)
    for v in program.to_caller:
        _record_stream(env[v], caller)
    for w in program.join:
        caller.wait_event(marks[w])
    if clock is not None and events is not None:
        events.extend(clock.events(plan))


def _record(cuda: Any, stream: Any, timing: bool = False) -> Any:
    event = cuda.Event(enable_timing=timing)
    event.record(stream)
    return event


def _record_stream(value: Any, stream: Any) -> None:
    if isinstance(value, torch.Tensor):  # the common case, without a pytree walk
        if value.is_cuda:
            value.record_stream(stream)
        return
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor) and leaf.is_cuda:
            leaf.record_stream(stream)


class _Clock:
    """Per-task CUDA timing events, turned into wall-clock `TaskEvent` s after one sync."""

    def __init__(self, cuda: Any, caller: Any):
        self.cuda, self.caller = cuda, caller
        self.base = _record(cuda, caller, timing=True)
        self.wall = time.time()  # the base event's host time: GPU times are offsets from it
        self.spans: list[tuple[StreamOp, Any, Any]] = []

    def mark(self, stream: Any) -> Any:
        return _record(self.cuda, stream, timing=True)

    def events(self, plan: Plan) -> list[TaskEvent]:
        self.caller.synchronize()  # the join orders every task before this point
        out = []
        for op, begin, end in self.spans:
            task = plan.tasks[op.task]
            out.append(
                TaskEvent(
                    task.name,
                    task.nodes,
                    task.level,
                    self.wall + self.base.elapsed_time(begin) / 1e3,
                    self.wall + self.base.elapsed_time(end) / 1e3,
                    f"stream {op.stream}",
                )
            )
        return out


# -- choosing an executor -----------------------------------------------------------------------
def auto_choice(graph: Graph) -> tuple[str, dict[str, Any]]:
    """``("cuda", {"device": ...})`` when the graph's parameters are on a GPU, else threads.

    The device is that of the first parameter (or buffer) of the graph's module nodes, in node
    order.

    Examples
    --------
    >>> import torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("one")
    >>> g.output(g.node("a", nn.Linear(2, 2), g.input("x")))
    >>> auto_choice(g)
    ('threads', {})
    """
    for node in graph:
        first = next(state_tensors(node.fn), None)
        if first is not None:
            return ("cuda", {"device": str(first.device)}) if first.is_cuda else ("threads", {})
    return "threads", {}


def _cuda_device(device: str | int | torch.device) -> torch.device:
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise CudaUnavailableError(
            f"CudaStreamExecutor needs a CUDA device, but {why} (torch {torch.__version__}); "
            "use gx.ThreadExecutor() to run branches concurrently on the CPU"
        )
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"device must be a CUDA device such as 'cuda:0', got {device!r}")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.index >= torch.cuda.device_count():
        raise ValueError(f"no device {dev}: {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


# -- the executor -------------------------------------------------------------------------------
class CudaStreamExecutor(Executor):
    """Run concurrent tasks on CUDA streams, ordered by events, optionally as one CUDA graph.

    Parameters
    ----------
    device : str, int or torch.device
        The GPU (default ``"cuda:0"``). Parameters and inputs must already be there.
    streams : int
        Streams in all, the caller's current stream included (default 4; 1: one stream).
    schedule : {"dataflow", "levels"}
        ``"levels"`` adds a barrier between levels, as event waits.
    capture : bool
        Capture the whole program into a ``torch.cuda.CUDAGraph`` per input signature and
        replay it (inference: calls with grad enabled run without it).
    warmup : int
        Runs on the capture stream before each capture.

    Raises
    ------
    CudaUnavailableError
        If torch sees no CUDA device (use `graphexec.ThreadExecutor` there).
    """

    name = "cuda"
    #: Plans made for this executor (``run(graph)``, `GraphModule`) use these settings.
    #: Plans made for this executor inline only tasks estimated below the policy's
    #: ``gpu_inline_below`` (merge ops): a stream hand-off costs an event record and wait (a
    #: few µs of host time), not a thread hand-off.
    plan_defaults: Mapping[str, Any] = MappingProxyType({"inline_below": DEFAULT.gpu_inline_below})

    def __init__(
        self,
        device: str | int | torch.device = "cuda:0",
        streams: int = 4,
        schedule: str = "dataflow",
        capture: bool = False,
        warmup: int = 2,
    ):
        super().__init__(schedule)
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.device = _cuda_device(device)
        self.streams, self.capture, self.warmup = streams, capture, warmup
        self._lock = threading.Lock()  # one host thread enqueues at a time: streams are shared
        self._side: list[Any] | None = None
        self._shard_lanes: list[Any] = []  # data parallelism: one caller stream per shard
        self._capture_stream: Any = None
        self._programs = IdCache(lambda plan: stream_program(plan, self.streams, self.schedule))
        self._graphs: dict[tuple, Captured] = {}
        self._said_grad = False

    def program(self, plan: Plan) -> StreamProgram:
        """The stream program this executor runs for ``plan`` (made once per plan)."""
        return self._programs(plan)

    def _execute(self, plan: Plan, env: dict[str, Any], events: list[TaskEvent] | None) -> None:
        program = self.program(plan)
        with self._lock, torch.cuda.device(self.device):
            if self.capture and events is None and self._may_capture():
                self._replay(plan, program, env)
            else:
                run_program(plan, program, env, self._streams(), events,
                            schedule=self._schedules(plan))  # fmt: skip

    def _run_shards(self, plan: Plan, shards: list[tuple[Any, ...]],
                    events: list[TaskEvent] | None) -> list[Any]:  # fmt: skip
        """Data parallelism on one device: each shard's run enqueued with a shard stream of
        its own as its caller's stream (its side streams are shared, in host order), forked
        from and joined to the caller's stream, so shards' kernels overlap.

        Where state crosses streams: the shards' inputs are views made on the caller's
        stream, read on a shard stream after the fork (the caller waits for the shard before
        it can free them); each shard's outputs are read by the merge on the caller's stream
        after the join, so they are marked ``record_stream(caller)`` before their blocks can
        return to the shard stream's pool.
        """
        if len(shards) == 1:
            return super()._run_shards(plan, shards, events)
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            lanes = self._shard_streams(len(shards))
            outputs = []
            try:
                for inputs, lane in zip(shards, lanes, strict=False):
                    lane.wait_stream(caller)
                    with torch.cuda.stream(lane):
                        outputs.append(self._shard(plan, inputs, events))
            finally:
                for lane in lanes[: len(shards)]:
                    caller.wait_stream(lane)
            for out in outputs:
                _record_stream(out, caller)
        return outputs

    def _shard_streams(self, n: int) -> list[Any]:
        with self._lock:
            made = self._shard_lanes
            made.extend(torch.cuda.Stream(self.device) for _ in range(n - len(made)))
            return made[:n]

    def _one_by_one(self, plan: Plan) -> bool:
        """A program all on the caller's stream, not captured, runs as the plan's straight-line
        program (`Executor.run`): the same kernels in the same order, without the per-task
        loop (a chain costs what eager costs)."""
        return not self.capture and all(op.stream == 0 for op in self.program(plan).ops)

    def _streams(self, first: Any = None) -> list[Any]:
        if self._side is None:
            self._side = [torch.cuda.Stream(self.device) for _ in range(self.streams - 1)]
        caller = torch.cuda.current_stream(self.device) if first is None else first
        return [caller, *self._side]

    def _may_capture(self) -> bool:
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return True
        if not self._said_grad:
            self._said_grad = True
            warnings.warn(
                "CudaStreamExecutor(capture=True) replays CUDA graphs for inference only: calls "
                "with grad enabled run on streams without a graph (use torch.no_grad() or "
                "torch.inference_mode() to replay)",
                CaptureWarning,
                stacklevel=4,
            )
        return False

    # -- capture and replay (see .capture): mutates self._graphs; runs under self._lock -----------
    def _replay(self, plan: Plan, program: StreamProgram, env: dict[str, Any]) -> None:
        cap = captured_for(self._graphs, plan, env, lambda: self._capture(plan, program, env))
        replay(cap, env, self.device)

    def _capture(self, plan: Plan, program: StreamProgram, env: dict[str, Any]) -> Captured:
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(self.device)
        streams = self._streams(self._capture_stream)
        return capture(
            plan,
            env,
            self.device,
            self._capture_stream,
            self.warmup,
            lambda run_env: run_program(
                plan, program, run_env, streams, schedule=self._schedules(plan)
            ),
        )

    def close(self) -> None:
        """Drop the CUDA graphs, streams and cached programs (idempotent)."""
        with self._lock:
            if self._graphs and torch.cuda.is_available():
                torch.cuda.synchronize(self.device)  # no replay may still use a graph's pool
            self._graphs.clear()
            self._programs.clear()
            self._side = self._capture_stream = None
            self._shard_lanes = []

    def __reduce__(self) -> tuple:  # copy.deepcopy / pickle of a GraphModule: settings only
        return type(self), (self.device, self.streams, self.schedule, self.capture, self.warmup)

    def __repr__(self) -> str:
        return (
            f"CudaStreamExecutor(device='{self.device}', streams={self.streams}, "
            f"schedule={self.schedule!r}, capture={self.capture})"
        )
