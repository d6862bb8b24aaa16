"""Run a plan on a Dask cluster (the real ``dask.distributed``): weights once, activations P2P.

What it decides
---------------
* **Which cluster.** ``client=`` is used as given and never closed. Otherwise ``address=``, or
  Dask's own configuration (``scheduler-address`` / ``DASK_SCHEDULER_ADDRESS``), names a
  scheduler to join; failing to reach it within ``timeout`` raises `SchedulerUnreachableError`
  naming the address. With none of these, an embedded ``LocalCluster`` is started (worker
  processes, one per core, one thread each) and closed by `close`, by ``with``, and, should the
  executor be dropped or the interpreter exit first (an error, Ctrl-C), by a finalizer.
* **What a Dask task is.** One *job* per plan task. Inline tasks (too cheap to dispatch) are
  not jobs: each job re-runs the inline tasks it reads from before its own task (they are pure
  and cheap), so merge ops never become Dask tasks. An inline task is a job only when its
  value is a graph output or it mutates a tensor. Job keys are ``f"{task}-{call token}"``, so
  the dashboard's task stream and progress bars are named after the model's nodes.
* **What is sent when.** Each `Node` (its module and weights) is scattered once per executor
  with ``broadcast=True`` under the key ``weights-<node>-<token>`` and kept as a future; jobs
  name those futures, never the modules. A node is scattered again only when its fingerprint
  changes: the identity, ``_version`` counter, storage pointer and dtype of every parameter and
  buffer, and the ``training`` flags. ``load_state_dict``, an optimizer step, ``.to()`` and
  ``train()/eval()`` all change it; no tensor is hashed. Per call the client sends the job
  specs (a few hundred bytes each) and the graph inputs: embedded in the job that reads them,
  or scattered once when larger than `SCATTER_ABOVE` bytes. Intermediate values go from worker
  to worker as Dask dependencies; only graph outputs come back.
* **Schedules.** ``"dataflow"`` submits every job at once and lets the scheduler start each
  one when its dependencies are done; ``"levels"`` submits one depth level and waits for it
  before the next. `map` always pipelines (dataflow), with a window of inputs in flight.
* **Failures.** A node that raises becomes a `NodeError` naming the node, its message carrying
  the remote traceback and the worker, with the original exception as ``__cause__`` when it
  can be unpickled. The call's other futures are cancelled and released first. A worker lost
  mid-run is Dask's business: the scheduler re-runs its tasks elsewhere (up to
  ``distributed.scheduler.allowed-failures`` times); weights survive because every worker
  holds a replica. ``retries=`` is passed to ``Client.submit`` and so also re-runs a job whose
  node raised (Dask does not tell the two apart).
* **Modes.** Remote jobs run under the caller's inference mode and autocast, with grad off:
  autograd graphs do not cross processes, so the Dask executor is for inference.
* **Devices.** CUDA tensors (inputs, parameters) are rejected with a clear error.

The call tree::

    Executor.run -> DaskExecutor._execute(plan, env, events)
      -> _jobs(plan)            plan tasks -> jobs (cached per plan)
      -> _node_futures          scatter nodes whose fingerprint changed (once, broadcast)
      -> _submit_call           one client.submit per job: futures of deps, nodes, inputs
           worker: _run_job -> run_task for each task of the job
      -> _finish_call           wait (first exception), gather outputs, pop worker events

Trust: Dask moves functions and data with pickle. Connect only to clusters you trust and use
``security=`` (``distributed.Security``) for TLS between client, scheduler and workers.
"""

from __future__ import annotations

import itertools
import os
import pickle
import threading
import traceback
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

try:
    import dask
    import distributed
    from dask.sizeof import sizeof
    from dask.utils import parse_timedelta
except ImportError as exc:  # pragma: no cover - dask is a dependency, but say what to install
    raise ImportError(
        "graphexec's DaskExecutor needs dask.distributed: pip install 'dask[distributed]'"
    ) from exc

from ..errors import NodeError, _rebuild_node_error
from ..graph import Graph, Node
from ..planner import Plan, Task
from ..profile import TaskEvent
from .base import Executor, Modes, capture_modes, run_task

__all__ = ["DaskExecutor", "SchedulerUnreachableError", "SCATTER_ABOVE"]

#: Graph inputs larger than this many bytes are scattered instead of embedded in the job.
SCATTER_ABOVE = 8 << 20
#: Graph inputs up to this size are embedded in every job that reads them.
EMBED_BELOW = 16 << 10


class SchedulerUnreachableError(ConnectionError):
    """The Dask scheduler could not be reached within the timeout (the message names it)."""


# -- jobs: what one Dask task runs ---------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    """One Dask task: ``tasks`` run in order on one worker (inline producers, then the task)."""

    name: str
    tasks: tuple[Task, ...]
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]  # values read from graph inputs or other jobs
    outputs: tuple[str, ...]  # values other jobs or the graph outputs read
    after: tuple[str, ...]  # jobs that must finish first, with no data read from them
    level: int


def _make_jobs(plan: Plan) -> dict[str, _Job]:
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
    producer = {n: t for t, task in plan.tasks.items() for n in task.nodes}
    order = {t: i for i, t in enumerate(plan.tasks)}
    jobs: dict[str, _Job] = {}
    for name, task in plan.tasks.items():
        if name in absorbed:
            continue
        members, stack = {name}, [name]
        while stack:  # the inline tasks this one needs, transitively
            for d in plan.tasks[stack.pop()].deps:
                if d in absorbed and d not in members:
                    members.add(d)
                    stack.append(d)
        tasks = tuple(plan.tasks[t] for t in sorted(members, key=order.__getitem__))
        made = {n for t in tasks for n in t.nodes}
        inputs = tuple(dict.fromkeys(v for t in tasks for v in t.inputs if v not in made))
        data_jobs = {producer[v] for v in inputs if v in producer}
        after = tuple(
            dict.fromkeys(
                d for t in tasks for d in t.deps if d not in members and d not in data_jobs
            )
        )
        jobs[name] = _Job(
            name=name,
            tasks=tasks,
            nodes=tuple(n for t in tasks for n in t.nodes),
            inputs=inputs,
            outputs=task.outputs,
            after=after,
            level=task.level,
        )
    return jobs


def _whole_job(plan: Plan) -> dict[str, _Job]:
    """The whole plan as one job: for `DaskExecutor.map`, where inputs, not branches, overlap."""
    wanted = {r.node for r in plan.graph.output_refs()} - set(plan.graph.inputs)
    tasks = tuple(plan.tasks.values())
    inputs = tuple(dict.fromkeys(v for t in tasks for v in t.inputs if v in plan.graph.inputs))
    name = plan.graph.name
    nodes = tuple(n for t in tasks for n in t.nodes)
    return {name: _Job(name, tasks, nodes, inputs, tuple(sorted(wanted)), (), 0)}


# -- the worker side -------------------------------------------------------------------------------
_EVENTS: dict[str, list[TaskEvent]] = {}  # call token -> events, kept on each worker until popped
_EVENTS_LOCK = threading.Lock()  # a worker with several threads runs several jobs at once


class _RemoteNodeError(Exception):
    """A `NodeError` as it crosses back to the client: message, worker, traceback text, cause."""

    def __init__(self, node: str, task: str | None, message: str, where: str, tb: str, cause):
        super().__init__(message)
        self.node, self.task, self.message, self.where, self.tb, self.cause = (
            node,
            task,
            message,
            where,
            tb,
            cause,
        )

    def __reduce__(self):
        return (
            _RemoteNodeError,
            (self.node, self.task, self.message, self.where, self.tb, self.cause),
        )

    def to_node_error(self) -> NodeError:
        err = _rebuild_node_error(
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


def _run_job(
    tasks: tuple[Task, ...],
    nodes: list[Node],
    given: dict[str, Any],
    produced: dict[str, dict[str, Any]],
    modes: Modes,
    outputs: tuple[str, ...],
    token: str | None,
    *after: Any,
) -> dict[str, Any]:
    """Run one job on a worker: its tasks in order through `run_task`; return its outputs."""
    values = dict(given)
    values.update({v: result[v] for v, result in produced.items()})
    lookup = {n.name: n for n in nodes}
    events: list[TaskEvent] | None = [] if token is not None else None
    lane = _worker_address()
    try:
        for task in tasks:
            values.update(run_task(task, lookup, values, modes, events, lane))
    except NodeError as err:
        tb = "".join(traceback.format_exception(err.__cause__ or err))
        cause = err.__cause__
        try:  # the original exception travels too, when the client will be able to rebuild it
            pickle.loads(pickle.dumps(cause))
        except Exception:
            cause = None
        raise _RemoteNodeError(err.node, err.task, str(err), lane, tb, cause) from None
    if events:
        with _EVENTS_LOCK:
            _EVENTS.setdefault(token, []).extend(events)
    return {v: values[v] for v in outputs}


def _value(value: Any) -> Any:
    """A graph input as a Dask task of its own: sent once, read by several jobs."""
    return value


def _pop_events(token: str) -> list[TaskEvent]:
    with _EVENTS_LOCK:
        return _EVENTS.pop(token, [])


# -- fingerprints: when a node must be sent again ------------------------------------------------
def _fingerprint(fn: Any) -> tuple | None:
    """Cheap identity of a module's state: changes on load_state_dict, optimizer steps, .to()."""
    if not isinstance(fn, torch.nn.Module):
        return None
    tensors = itertools.chain(fn.parameters(), fn.buffers())
    return (
        tuple((id(t), t._version, t.data_ptr(), t.dtype) for t in tensors),
        tuple(m.training for m in fn.modules()),
    )


def _state_nbytes(fn: Any) -> int:
    if isinstance(fn, torch.nn.Module):
        return sum(t.nbytes for t in itertools.chain(fn.parameters(), fn.buffers()))
    return 0


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.nbytes
    return sum(
        leaf.nbytes if isinstance(leaf, torch.Tensor) else sizeof(leaf)
        for leaf in pytree.tree_leaves(value)
    )


def _reject_cuda(what: str, value: Any) -> None:
    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor) and leaf.device.type != "cpu":
            raise ValueError(
                f"DaskExecutor: {what} is a {leaf.device.type} tensor; the Dask executor moves "
                "CPU tensors only (move it with .cpu(), or use the threads executor on the GPU)"
            )


# -- one call in flight --------------------------------------------------------------------------
class _Call:
    """The futures of one call: jobs by name, and which of them the client waits on.

    Only output jobs and sinks are waited on: an error upstream propagates to them. Futures
    are dropped when the call ends, so Dask frees each intermediate at its last consumer.
    """

    def __init__(self, token: str, plan: Plan, jobs: Mapping[str, _Job]):
        self.token = token
        self.jobs = jobs
        self.futures: dict[str, distributed.Future] = {}
        self.inputs: list[distributed.Future] = []  # scattered graph inputs, held for the call
        self.wanted = {r.node for r in plan.graph.output_refs()} - set(plan.graph.inputs)
        self.out_jobs = [n for n, j in jobs.items() if self.wanted & set(j.outputs)]
        producer = {v: j.name for j in jobs.values() for v in j.outputs}
        read = {a for j in jobs.values() for a in j.after}
        read |= {producer[v] for j in jobs.values() for v in j.inputs if v in producer}
        self.waited = [n for n in jobs if n in self.out_jobs or n not in read]


class DaskExecutor(Executor):
    """Run plans on a Dask cluster: an embedded ``LocalCluster``, a scheduler address, or a Client.

    Parameters
    ----------
    address : str, optional
        Scheduler to join, e.g. ``"tcp://host:8786"``. Default: Dask's ``scheduler-address``
        configuration if set, else an embedded ``LocalCluster``.
    client : distributed.Client, optional
        Use this client; the executor never closes it.
    schedule : {"dataflow", "levels"}
        ``"dataflow"`` submits every job at once; ``"levels"`` waits for each depth level.
    n_workers : int, optional
        Embedded cluster only: worker processes (default: one per core).
    threads_per_worker : int
        Embedded cluster only (default 1; Dask's nanny sets each worker's OMP threads to 1).
    processes : bool
        Embedded cluster only: worker processes (default) or threads in this process.
    security : distributed.Security, optional
        TLS settings, passed to the client and the embedded cluster.
    timeout : str or float
        How long to try to reach the scheduler (``"10s"``, or seconds).
    retries : int
        Passed to ``Client.submit``: re-runs of a job that raised.
    dashboard_address : str, optional
        Embedded cluster only: where its dashboard listens (needs bokeh); None for none.

    Raises
    ------
    SchedulerUnreachableError
        If the scheduler cannot be reached within ``timeout`` (the message names the address).

    Examples
    --------
    >>> import torch, torch.nn as nn, graphexec as gx
    >>> g = gx.Graph("pair")
    >>> x = g.input("x")
    >>> a, b = g.node("a", nn.Linear(4, 4), x), g.node("b", nn.Linear(4, 4), x)
    >>> g.output(g.node("s", gx.add(), a, b))
    >>> with gx.DaskExecutor(n_workers=1, processes=False, dashboard_address=None) as ex:
    ...     ex.run(gx.plan(g), torch.randn(3, 4)).shape
    torch.Size([3, 4])
    """

    name = "dask"

    def __init__(
        self,
        address: str | None = None,
        *,
        client: distributed.Client | None = None,
        schedule: str = "dataflow",
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        processes: bool = True,
        security: Any = None,
        timeout: str | float = "10s",
        retries: int = 2,
        dashboard_address: str | None = ":8787",
    ):
        super().__init__(schedule)
        self.retries = retries
        self.timeout = parse_timedelta(timeout)
        self._cluster: distributed.LocalCluster | None = None
        self._owns_client = client is None
        self._weights: weakref.WeakKeyDictionary[Node, tuple[Any, distributed.Future]] = (
            weakref.WeakKeyDictionary()
        )
        self._jobs: dict[tuple[int, bool], tuple[Plan, dict[str, _Job]]] = {}
        self._lock = threading.Lock()
        self.scattered_nbytes = 0  # weight bytes scattered so far (each replica counted once)
        self.scatters = 0  # how many nodes were scattered so far
        if client is not None:
            self.client = client
            self.address = client.scheduler.address
        else:
            self.address = address or dask.config.get("scheduler-address", None)
            if self.address is None:
                self._cluster = distributed.LocalCluster(
                    n_workers=n_workers or len(os.sched_getaffinity(0)),
                    threads_per_worker=threads_per_worker,
                    processes=processes,
                    security=security,
                    dashboard_address=dashboard_address,
                )
                self.address = self._cluster.scheduler_address
            self.client = self._connect(self.address, security)
        self._finalizer = weakref.finalize(
            self, _close_owned, self.client if self._owns_client else None, self._cluster
        )

    def _connect(self, address: Any, security: Any) -> distributed.Client:
        target = self._cluster if self._cluster is not None else address
        try:
            return distributed.Client(
                target, timeout=self.timeout, security=security, set_as_default=False
            )
        except OSError as exc:
            if self._cluster is not None:
                self._cluster.close()
            raise SchedulerUnreachableError(
                f"DaskExecutor: cannot reach the Dask scheduler at {address} within "
                f"{self.timeout:g} s ({type(exc).__name__}: {exc})"
            ) from exc

    # -- properties -------------------------------------------------------------------------
    @property
    def dashboard_link(self) -> str | None:
        """The Dask dashboard's address (served only when bokeh is installed)."""
        return self.client.dashboard_link

    @property
    def sent_bytes(self) -> int:
        """Bytes this client has sent to the scheduler on its task stream (job specs, inputs).

        Weights travel by ``scatter``, counted in `scattered_nbytes`, not here.
        """
        comm = self.client.scheduler_comm
        return comm.byte_count if comm is not None else 0

    # -- running ----------------------------------------------------------------------------
    def _execute(self, plan: Plan, env: dict[str, Any], events: list[TaskEvent] | None) -> None:
        _reject_cuda("a graph input", env)
        self._run_call(plan, env, events, self.schedule)

    def _run_call(
        self,
        plan: Plan,
        env: dict[str, Any],
        events: list[TaskEvent] | None,
        schedule: str,
        whole: bool = False,
    ) -> None:
        """Submit and finish one call; once more if it failed because weights were lost."""
        try:
            self._finish_call(
                self._submit_call(plan, env, events is not None, schedule, whole), env, events
            )
        except CancelledError:
            if not self._forget_lost_weights():
                raise
            if events is not None:
                events.clear()
            self._finish_call(
                self._submit_call(plan, env, events is not None, schedule, whole), env, events
            )

    def _forget_lost_weights(self) -> bool:
        """Drop cached weights no worker holds any more (say which); they are sent again.

        Scattered data cannot be recomputed: when the last worker holding a copy dies (Dask's
        active memory manager keeps one replica of data no task is waiting for), the scheduler
        forgets it and cancels the jobs that read it.
        """
        with self._lock:
            lost = [node for node, (_, fut) in self._weights.items() if fut.status != "finished"]
            for node in lost:
                del self._weights[node]
        return bool(lost)

    def _plan_jobs(self, plan: Plan, whole: bool = False) -> dict[str, _Job]:
        cached = self._jobs.get((id(plan), whole))
        if cached is None or cached[0] is not plan:
            cached = (plan, _whole_job(plan) if whole else _make_jobs(plan))
            self._jobs[(id(plan), whole)] = cached
        return cached[1]

    def _node_futures(self, graph: Graph, names: Iterable[str]) -> dict[str, distributed.Future]:
        """Futures of the nodes' scattered copies; (re)scatter those new or changed."""
        with self._lock:  # two threads sharing the executor must not both scatter a node
            futures, missing = {}, {}
            for name in names:
                node = graph.nodes[name]
                fp = _fingerprint(node.fn)
                hit = self._weights.get(node)
                if hit is not None and hit[0] == fp:
                    futures[name] = hit[1]
                else:
                    _reject_cuda(f"a parameter of node '{name}'", list(_tensors(node.fn)))
                    missing[name] = (node, fp)
            if missing:
                token = uuid.uuid4().hex[:8]
                sent = self.client.scatter(
                    {f"weights-{n}-{token}": node for n, (node, _) in missing.items()},
                    broadcast=True,
                    hash=False,
                )
                for n, (node, fp) in missing.items():
                    fut = sent[f"weights-{n}-{token}"]
                    self._weights[node] = (fp, fut)
                    futures[n] = fut
                    self.scattered_nbytes += _state_nbytes(node.fn)
                    self.scatters += 1
            return futures

    def _send_inputs(
        self, call: _Call, env: Mapping[str, Any], graph_inputs: set[str]
    ) -> dict[str, distributed.Future]:
        """Graph inputs that are not embedded in their job: big ones, or ones read by several.

        Up to `SCATTER_ABOVE` bytes an input read by several jobs becomes a Dask task of its
        own (sent once, without blocking, so ``map`` keeps inputs in flight); above it, it is
        scattered (Dask warns about task graphs over 10 MB).
        """
        readers = Counter(v for j in call.jobs.values() for v in j.inputs if v in graph_inputs)
        scatter, sent = {}, {}
        for v, n in readers.items():
            size = _nbytes(env[v])
            key = f"{v}-{call.token}"
            if size > SCATTER_ABOVE:
                scatter[key] = v
            elif n > 1 and size > EMBED_BELOW:
                sent[v] = self.client.submit(_value, env[v], key=key, retries=self.retries)
        if scatter:
            futures = self.client.scatter({k: env[v] for k, v in scatter.items()}, hash=False)
            sent.update({v: futures[k] for k, v in scatter.items()})
        call.inputs = list(sent.values())
        return sent

    def _submit_call(
        self,
        plan: Plan,
        env: Mapping[str, Any],
        profile: bool,
        schedule: str | None = None,
        whole: bool = False,
    ) -> _Call:
        jobs = self._plan_jobs(plan, whole)
        nodes = self._node_futures(plan.graph, {n for j in jobs.values() for n in j.nodes})
        call = _Call(uuid.uuid4().hex[:12], plan, jobs)
        graph_inputs = set(plan.graph.inputs)
        sent = self._send_inputs(call, env, graph_inputs)
        producer = {n: j.name for j in jobs.values() for n in j.outputs}
        remote = capture_modes()
        modes = Modes(False, remote.inference, remote.autocast)
        schedule = schedule or self.schedule
        levels: dict[int, list[str]] = {}
        for name, job in jobs.items():
            levels.setdefault(job.level, []).append(name)
        try:
            for level in sorted(levels):
                for name in levels[level]:
                    job = jobs[name]
                    given = {v: sent.get(v, env[v]) for v in job.inputs if v in graph_inputs}
                    produced = {
                        v: call.futures[producer[v]] for v in job.inputs if v not in graph_inputs
                    }
                    call.futures[name] = self.client.submit(
                        _run_job,
                        job.tasks,
                        [nodes[n] for n in job.nodes],
                        given,
                        produced,
                        modes,
                        job.outputs,
                        call.token if profile else None,
                        *(call.futures[a] for a in job.after),
                        key=f"{name}-{call.token}",
                        retries=self.retries,
                    )
                if schedule == "levels":
                    self._wait(call, [call.futures[n] for n in levels[level]])
            # Hold only what the client waits on: Dask frees the rest at its last consumer.
            call.futures = {n: call.futures[n] for n in call.waited}
        except BaseException:
            self._cancel(call)
            raise
        return call

    def _wait(self, call: _Call, futures: list[distributed.Future]) -> None:
        """Wait for ``futures``; on the first error cancel the call and raise it, node named."""
        try:
            if not futures:
                return
            done = distributed.as_completed(futures, loop=self.client.loop)  # no polling
            for fut in done:
                if fut.status == "error":  # the first error; the rest are cancelled below
                    done.clear()
                    exc = fut.exception()
                    if isinstance(exc, _RemoteNodeError):
                        raise exc.to_node_error() from exc.cause
                    raise exc
                if fut.status == "cancelled":  # e.g. it read weights that were lost
                    done.clear()
                    fut.result()
        except BaseException:
            self._cancel(call)
            raise

    def _cancel(self, call: _Call) -> None:
        futures = list(call.futures.values()) + call.inputs
        if futures:
            self.client.cancel(futures)
        call.futures.clear()
        call.inputs.clear()

    def _finish_call(
        self, call: _Call, env: dict[str, Any], events: list[TaskEvent] | None
    ) -> None:
        self._wait(call, [call.futures[n] for n in call.waited])
        out_jobs = call.out_jobs
        try:
            results = self.client.gather([call.futures[n] for n in out_jobs])
        except _RemoteNodeError as exc:
            self._cancel(call)
            raise exc.to_node_error() from exc.cause
        for name, values in zip(out_jobs, results, strict=True):
            env.update({v: values[v] for v in call.jobs[name].outputs if v in call.wanted})
        if events is not None:
            for evs in self.client.run(_pop_events, call.token).values():
                events.extend(evs)
        call.futures.clear()
        call.inputs.clear()

    def map(
        self,
        plan: Plan | Graph,
        inputs: Iterable[Any],
        *,
        window: int | None = None,
        progress: bool = True,
        split: bool = False,
    ) -> Iterator[Any]:
        """Run over many inputs with several in flight; yield outputs in input order.

        Parameters
        ----------
        plan : Plan or Graph
        inputs : iterable
            Each item is a tuple of graph inputs, or the single input. May be endless.
        window : int, optional
            Inputs in flight at once (default: twice the cluster's worker threads, at least 2).
            Bounds memory on a long iterable.
        progress : bool
            Show a tqdm progress bar (when tqdm is installed).
        split : bool
            False (default): each input is one Dask task running the whole plan, so inputs
            overlap across workers with no activation crossing between them (what throughput
            wants). True: one Dask task per plan task, as `run` does (for branches too big
            for one worker's time or memory, or pinned apart).

        Yields
        ------
        Each input's outputs, as `run` returns them.

        Raises
        ------
        NodeError
            Naming the node, if one raised; every call still in flight is cancelled.
        """
        from .base import bind_inputs, collect_outputs

        p = self._as_plan(plan)
        whole = not split
        window = window or max(2, 2 * sum(self.client.nthreads().values()))
        bar = _progress(inputs, progress)
        flight: deque[tuple[_Call, dict[str, Any]]] = deque()
        try:
            for item in inputs:
                env = bind_inputs(p.graph, item if isinstance(item, tuple) else (item,), {})
                _reject_cuda("a graph input", env)
                flight.append((self._submit_call(p, env, False, "dataflow", whole), env))
                while len(flight) >= window:
                    yield self._yield_oldest(p, flight, bar, collect_outputs, whole)
            while flight:
                yield self._yield_oldest(p, flight, bar, collect_outputs, whole)
        finally:
            for call, _ in flight:
                self._cancel(call)
            if bar is not None:
                bar.close()

    def _yield_oldest(self, plan, flight, bar, collect_outputs, whole) -> Any:
        call, env = flight.popleft()
        try:
            self._finish_call(call, env, None)
        except CancelledError:
            if not self._forget_lost_weights():
                raise
            self._run_call(plan, env, None, "dataflow", whole)
        if bar is not None:
            bar.update(1)
        return collect_outputs(plan.graph, env)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release the weights; close the client and embedded cluster if this executor made them."""
        if not self._finalizer.alive:
            return
        self._weights.clear()
        self._jobs.clear()
        self._finalizer()

    def __repr__(self) -> str:
        where = "embedded LocalCluster" if self._cluster is not None else "joined"
        return f"DaskExecutor({self.address!r}, {where}, schedule={self.schedule!r})"


def _close_owned(client: distributed.Client | None, cluster: Any) -> None:
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


def _tensors(fn: Any) -> Iterator[torch.Tensor]:
    if isinstance(fn, torch.nn.Module):
        yield from itertools.chain(fn.parameters(), fn.buffers())


def _progress(inputs: Any, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    total = len(inputs) if hasattr(inputs, "__len__") else None
    return tqdm(total=total, desc="graphexec dask map", unit="input")
