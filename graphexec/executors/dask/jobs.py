"""What one Dask task of the `DaskExecutor` runs, and what travels with it.

What it decides
---------------
* **A job is one Dask task, over a chunk of inputs.** One job per plan task; `run` sends a
  chunk of one input, `map` several (`run_job` runs them one after another), so Dask's own
  cost per task (milliseconds of client, scheduler and worker CPU) is paid once per chunk.
  Inline tasks (too cheap to dispatch) are not jobs: each job re-runs the inline tasks it
  reads from before its own task (they are pure and cheap), so merge ops never become Dask
  tasks. An inline task is a job only when its value is a graph output or it mutates a
  tensor. `map` may run the whole plan as one job (`whole_job`), so inputs, not branches,
  fill the workers.
* **A node's exception is not a lost worker.** `run_job` raises `RemoteNodeError` (message,
  worker, traceback text, the original exception when it pickles). The executor submits jobs
  with ``retries=0``: Dask re-runs a job only when its worker died (the scheduler's
  ``allowed-failures``), never because a node raised, so a node's side effects happen once.
* **Torch threads on a worker.** Dask's nanny sets ``OMP_NUM_THREADS=1`` in its workers. A job
  sets torch's intra-op threads of the thread it runs on (OpenMP settings are per thread) to
  the `JobEnv`'s choice: a fixed number, or the host's cores divided by the task threads of
  all the workers on that host. Never inside the client's own process (``processes=False``).
* **Sizes count storage.** A tensor pickles its whole storage, so a small view of a big tensor
  is measured by its storage and copied out (`compact`) before it is embedded or scattered.

Worker-side state: `_EVENTS` (profile events per call token, popped by the client) is shared
by the worker's task threads, hence `_EVENTS_LOCK`.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import distributed
import torch
import torch.utils._pytree as pytree
from dask.sizeof import sizeof

from ...errors import NodeError
from ...graph import state_tensors
from ...plans import Plan, Task
from ...profile import TaskEvent
from ..base import Modes, run_task
from .wire import NodeCopy

__all__ = [
    "Job",
    "JobEnv",
    "RemoteNodeError",
    "compact",
    "fingerprint",
    "input_task",
    "make_jobs",
    "nbytes",
    "pop_events",
    "reject_cuda",
    "run_job",
    "state_nbytes",
    "whole_job",
]


@dataclass(frozen=True)
class Job:
    """One Dask task: ``tasks`` run in order on one worker (inline producers, then the task)."""

    name: str
    tasks: tuple[Task, ...]
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]  # values read from graph inputs or other jobs
    outputs: tuple[str, ...]  # values other jobs or the graph outputs read
    after: tuple[str, ...]  # jobs that must finish first, with no data read from them
    level: int
    cost: float = 0.0


def make_jobs(plan: Plan) -> dict[str, Job]:
    """Turn a plan's tasks into jobs; inline tasks are folded into every job that reads them."""
    graph = plan.graph
    out_values = {r.node for r in graph.output_refs()}
    absorbed = {
        t
        for t, task in plan.tasks.items()
        if task.inline
        and not set(task.outputs) & out_values
        and not any(graph.nodes[n].mutates for n in task.nodes)
    }
    order = {t: i for i, t in enumerate(plan.tasks)}
    return {
        name: _job_of(plan, name, _members(plan, name, absorbed), order)
        for name in plan.tasks
        if name not in absorbed
    }


def _members(plan: Plan, name: str, absorbed: set[str]) -> set[str]:
    """The task and the absorbed inline tasks it needs, transitively."""
    members, stack = {name}, [name]
    while stack:
        for d in plan.tasks[stack.pop()].deps:
            if d in absorbed and d not in members:
                members.add(d)
                stack.append(d)
    return members


def _job_of(plan: Plan, name: str, members: set[str], order: dict[str, int]) -> Job:
    producer = {n: t for t, task in plan.tasks.items() for n in task.nodes}
    tasks = tuple(plan.tasks[t] for t in sorted(members, key=order.__getitem__))
    made = {n for t in tasks for n in t.nodes}
    inputs = tuple(dict.fromkeys(v for t in tasks for v in t.inputs if v not in made))
    data_jobs = {producer[v] for v in inputs if v in producer}
    after = tuple(
        dict.fromkeys(d for t in tasks for d in t.deps if d not in members and d not in data_jobs)
    )
    task = plan.tasks[name]
    nodes = tuple(n for t in tasks for n in t.nodes)
    return Job(name, tasks, nodes, inputs, task.outputs, after, task.level, task.cost)


def whole_job(plan: Plan) -> dict[str, Job]:
    """The whole plan as one job: for `DaskExecutor.map`, where inputs, not branches, overlap."""
    wanted = {r.node for r in plan.graph.output_refs()} - set(plan.graph.inputs)
    tasks = tuple(plan.tasks.values())
    inputs = tuple(dict.fromkeys(v for t in tasks for v in t.inputs if v in plan.graph.inputs))
    name = plan.graph.name
    nodes = tuple(n for t in tasks for n in t.nodes)
    cost = sum(t.cost for t in tasks)
    return {name: Job(name, tasks, nodes, inputs, tuple(sorted(wanted)), (), 0, cost)}


# -- the worker side -------------------------------------------------------------------------------
_EVENTS: dict[str, list[TaskEvent]] = {}  # call token -> events, kept on each worker until popped
_EVENTS_LOCK = threading.Lock()  # a worker with several threads runs several jobs at once


@dataclass(frozen=True)
class JobEnv:
    """What every job of a call shares: modes, profiling token, torch threads."""

    modes: Modes
    token: str | None  # set when the call is profiled
    threads: int | None  # fixed intra-op threads, or None: cores // host_threads
    host_threads: int  # task threads of all workers on the job's host
    client_pid: int  # never change torch's threads in the client's own process


class RemoteNodeError(Exception):
    """A `NodeError` as it crosses back to the client: message, worker, traceback text, cause."""

    def __init__(self, node: str, task: str | None, message: str, where: str, tb: str, cause):
        super().__init__(message)
        self.node, self.task, self.message = node, task, message
        self.where, self.tb, self.cause = where, tb, cause

    def __reduce__(self):
        args = (self.node, self.task, self.message, self.where, self.tb, self.cause)
        return (RemoteNodeError, args)

    def to_node_error(self) -> NodeError:
        err = NodeError.from_message(
            self.node,
            self.task,
            f"{self.message}\n\nRemote traceback (worker {self.where}):\n{self.tb.rstrip()}",
        )
        err.__cause__ = self.cause
        return err


def _worker_address() -> str:
    try:
        return distributed.get_worker().address
    except ValueError:  # pragma: no cover - only when called outside a worker
        return threading.current_thread().name


def _use_threads(env: JobEnv) -> None:
    """Set torch's intra-op threads of this (task) thread; see the module docstring."""
    if os.getpid() == env.client_pid:
        return
    n = env.threads or max(1, len(os.sched_getaffinity(0)) // max(1, env.host_threads))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def run_job(
    tasks: tuple[Task, ...],
    nodes: list[NodeCopy],
    given: list[dict[str, Any]],
    produced: dict[str, list[dict[str, Any]]],
    env: JobEnv,
    outputs: tuple[str, ...],
    *after: Any,
) -> list[dict[str, Any]]:
    """Run one job on a worker over a chunk of inputs; return each input's outputs.

    ``given[i]`` holds input *i*'s graph inputs; ``produced[v][i]`` is the result of the job
    that made value ``v`` for input *i*. Inputs run one after another, their tasks in order
    through `run_task`; each input's values are dropped before the next starts.
    """
    _use_threads(env)
    _quiet_node_errors()
    lookup: dict[str, Any] = {v: _Elsewhere(True) for row in given[:1] for v in row}
    lookup.update({v: _Elsewhere(False) for v in produced})
    lookup.update({c.node.name: c.node for c in nodes})
    events: list[TaskEvent] | None = [] if env.token is not None else None
    lane = _worker_address()
    results = []
    try:
        for i, row in enumerate(given):
            values = dict(row)
            values.update({v: result[i][v] for v, result in produced.items()})
            for task in tasks:
                values.update(run_task(task, lookup, values, env.modes, events, lane))
            results.append({v: values[v] for v in outputs})
    except NodeError as err:
        remote = _remote_error(err, lane)
    else:
        remote = None
    if remote is not None:  # raised outside the handler: no chain to the unpicklable cause
        raise remote
    if events:
        with _EVENTS_LOCK:
            _EVENTS.setdefault(env.token, []).extend(events)
    return results


@dataclass(frozen=True)
class _Elsewhere:
    """A value a job reads from a graph input or from another job, in the job's node lookup:
    `run_task` asks of it only whether it is a graph input (to blame a ``None`` it reads on
    the node that returned it, as the local executors do)."""

    is_input: bool


def _remote_error(err: NodeError, lane: str) -> RemoteNodeError:
    """``err`` as it can cross to the client: Dask pickles an exception with its whole chain
    (``__cause__`` and ``__context__``, through tblib), and an exception that does not pickle
    reached the client as a bare ``Exception``. So the original travels only when it survives a
    round trip, and the error carries no chain."""
    cause = err.__cause__
    tb = "".join(traceback.format_exception(cause or err))
    try:
        pickle.loads(pickle.dumps(cause))
    except Exception:
        cause = None
    if cause is not None:
        cause.__context__ = cause.__cause__ = None  # pickled with it otherwise
        cause.__traceback__ = None
    return RemoteNodeError(err.node, err.task, str(err), lane, tb, cause)


_QUIET = threading.Lock()
_quieted = False


def _quiet_node_errors() -> None:
    """Keep the worker from logging Dask's ``Compute Failed`` block for a node's error: the
    client raises it as one `NodeError`, with the same traceback (once per process)."""
    global _quieted
    with _QUIET:
        if not _quieted:
            logging.getLogger("distributed.worker").addFilter(_not_a_node_error)
            _quieted = True


def _not_a_node_error(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    ours = len(args) > 3 and "RemoteNodeError(" in str(args[3])
    return not (ours and str(record.msg).startswith("Compute Failed"))


def input_task(value: Any) -> Any:
    """A graph input as a Dask task of its own: sent once, read by several jobs."""
    return value


def pop_events(token: str) -> list[TaskEvent]:
    with _EVENTS_LOCK:
        return _EVENTS.pop(token, [])


# -- fingerprints and sizes ------------------------------------------------------------------
def fingerprint(fn: Any) -> tuple | None:
    """Cheap identity of a module's state: changes on load_state_dict, optimizer steps, .to()."""
    if not isinstance(fn, torch.nn.Module):
        return None
    return (
        tuple((id(t), t._version, t.data_ptr(), t.dtype) for t in state_tensors(fn)),
        tuple(m.training for m in fn.modules()),
    )


def state_nbytes(fn: Any) -> int:
    """Bytes of a node's parameters and buffers (0 for a plain function)."""
    return sum(t.nbytes for t in state_tensors(fn))


def _tensor_bytes(t: torch.Tensor) -> int:
    """What pickling ``t`` sends: its whole storage, not just the elements it views."""
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):  # no storage (e.g. sparse, nested)
        return t.nbytes


def nbytes(value: Any) -> int:
    """Bytes a graph input costs to send (tensors by storage)."""
    return sum(
        _tensor_bytes(leaf) if isinstance(leaf, torch.Tensor) else sizeof(leaf)
        for leaf in pytree.tree_leaves(value)
    )


def compact(value: Any) -> Any:
    """``value`` with every tensor that views a larger storage replaced by a copy of its view."""

    def one(leaf: Any) -> Any:
        strided = isinstance(leaf, torch.Tensor) and leaf.layout == torch.strided
        if strided and _tensor_bytes(leaf) > leaf.nbytes:
            return leaf.clone(memory_format=torch.contiguous_format)
        return leaf

    return pytree.tree_map(one, value)


def reject_cuda(what: str, value: Any) -> None:
    """Raise ValueError if ``value`` holds a tensor that is not on the CPU."""
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor) and leaf.device.type != "cpu":
            raise ValueError(
                f"DaskExecutor: {what} is a {leaf.device.type} tensor; the Dask executor moves "
                "CPU tensors only (move it with .cpu(), or use the threads executor on the GPU)"
            )
