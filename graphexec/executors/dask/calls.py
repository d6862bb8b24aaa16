"""One call of the `DaskExecutor` in flight: submit its jobs, wait for them, gather its outputs.

A call carries a chunk of inputs (one for `run`, several for `map`): each job is one Dask
task over the whole chunk, so Dask's fixed cost per task is paid once per chunk.

What it decides
---------------
* **Futures held.** Only output jobs and sinks are waited on (an error upstream reaches
  them); the others' futures are dropped once submitted, so Dask frees each intermediate at
  its last consumer. Scattered and shared graph inputs are held until the call ends.
* **Pinned jobs.** Every job runs on the worker `placement` chose (``workers=[w]``,
  strict) and reads the copies of its nodes there; ``retries=0``, so Dask re-runs a job only
  for a lost worker, never because a node raised (see `jobs`).
* **Graph inputs.** Views are compacted first (a view pickles its whole storage). Up to
  ``EMBED_BELOW`` bytes an input is embedded in each job that reads it; read by several jobs
  it becomes a task of its own (sent once, without blocking, so ``map`` keeps inputs in
  flight); above ``SCATTER_ABOVE`` it is scattered to the worker of its first reader (Dask
  warns about task graphs over 10 MB) and counted in ``sent_bytes``.
* **One gather.** The client waits on a call with a single ``gather`` of its waited jobs (it
  stops at the first error): no separate wait, so a call costs one round trip to collect.
* **Errors.** The first error releases the call's futures (`Call.cancel`), then is raised: a
  `NodeError` naming the node, with the remote traceback; a lost worker (a cancelled input or
  weight copy, a scatter to a worker just gone) is answered by `run_call`: settle the worker
  list, place again, re-run, up to the executor's ``retries`` (`faults`). `map` submits
  with `start_call` and finishes with `finish_started`, which re-run the same way.
* **Dask's bookkeeping stays (nearly) flat.** The scheduler keeps a task group per key
  prefix (a job's name) while any of its keys lives, and a *span* (a record of groups,
  metrics and metadata, kept for the scheduler's life: dask/distributed#7977) per batch of
  work. Jobs of every call used to make new groups and, each call, a new span: the process
  hosting the embedded scheduler grew ~4 KiB per call. Every call of an executor now runs in
  one span of its own (``Session.span``, unless the caller set a span) and the executor
  holds a *keeper* per job name, a ``None`` scattered under a key of the job's group, so the
  group lives on between calls: ~1.5 KiB per call remain, Dask's record of each submission
  in the span's metadata.
* **What a call needs of its executor** is a `Session`: the client, the scheduler's address,
  the settings, and the counters that outlive calls. This module never sees the executor.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import distributed
from distributed.scheduler import KilledWorker

from ...plans import Plan
from ...profile import TaskEvent
from ..base import Modes, capture_modes
from .faults import ClusterErrors, blame, gave_up, killed_error, lost_worker
from .jobs import (
    Job,
    JobEnv,
    RemoteNodeError,
    compact,
    input_task,
    nbytes,
    pop_events,
    run_job,
)
from .placement import Worker, check_input_fits
from .placer import Placer

__all__ = [
    "EMBED_BELOW",
    "SCATTER_ABOVE",
    "Call",
    "CallOptions",
    "Session",
    "call_modes",
    "finish_call",
    "finish_started",
    "job_envs",
    "on_the_loop",
    "run_call",
    "start_call",
    "submit_call",
]

#: Graph inputs larger than this many bytes are scattered instead of embedded in the job.
SCATTER_ABOVE = 8 << 20
#: Graph inputs up to this size are embedded in every job that reads them.
EMBED_BELOW = 16 << 10


@dataclass
class Session:
    """What calls need of their executor: client, placement state, settings, and the
    counters the calls update."""

    client: distributed.Client
    address: str
    placer: Placer
    torch_threads: int | None = None
    retries: int = 2
    input_bytes: int = 0  # graph-input bytes scattered (not on the task stream)
    lost: str | None = None  # why the cluster is gone, once it is
    span: dict = field(default_factory=lambda: {"name": ("graphexec",), "ids": (uuid.uuid4().hex,)})
    keepers: dict[str, distributed.Future] = field(default_factory=dict)  # job -> its keeper


class Call:
    """The futures of one call: jobs by name, and which of them the client waits on."""

    def __init__(self, client: distributed.Client, token: str, plan: Plan, jobs):
        self.client = client
        self.token = token
        self.jobs: Mapping[str, Job] = jobs
        self.futures: dict[str, distributed.Future] = {}
        self.inputs: list[distributed.Future] = []  # graph inputs sent apart, held for the call
        self.wanted = {r.node for r in plan.graph.output_refs()} - set(plan.graph.inputs)
        self.out_jobs = [n for n, j in jobs.items() if self.wanted & set(j.outputs)]
        producer = {v: j.name for j in jobs.values() for v in j.outputs}
        read = {a for j in jobs.values() for a in j.after}
        read |= {producer[v] for j in jobs.values() for v in j.inputs if v in producer}
        self.waited = [n for n in jobs if n in self.out_jobs or n not in read]

    def cancel(self) -> None:
        """Stop the call: its futures are released, so the scheduler forgets the jobs (only
        this call wants them: keys carry its token) and tells the workers to drop them.
        Not ``client.cancel``: cancelling jobs that form a diamond made Dask's scheduler fail
        an assertion (``assert ts.who_wants`` in ``stimulus_cancel``, distributed 2026.11)
        and log two tracebacks, on the first error of a transformers model's call."""
        futures = [*self.futures.values(), *self.inputs]
        for f in futures:
            f.release()
        self.release()
        if futures and self.client.status == "running":
            self.client.sync(on_the_loop)  # the releases, queued on the loop, have run

    def release(self) -> None:
        self.futures.clear()
        self.inputs.clear()


async def on_the_loop() -> None:
    """Nothing, on the client's event loop: what was queued there before it has run."""


@dataclass(frozen=True)
class CallOptions:
    """How a call runs: profiled or not, its schedule, whole-plan jobs (`map`), torch modes."""

    profile: bool
    schedule: str
    whole: bool
    modes: Modes


def call_modes() -> Modes:
    """The calling thread's inference mode and autocast, grad off: what jobs run under
    (autograd does not cross processes)."""
    modes = capture_modes()
    return Modes(False, modes.inference, modes.autocast)


def submit_call(
    s: Session, plan: Plan, envs: Sequence[Mapping[str, Any]], opts: CallOptions
) -> Call:
    """Place the call's jobs (`Placer.place`) and submit each on its worker, over ``envs``.

    See the module docstring.
    """
    jobs, where, nodes, workers = s.placer.place(plan, opts.whole)
    _keep_groups(s, jobs)
    profile, schedule, modes = opts.profile, opts.schedule, opts.modes
    call = Call(s.client, uuid.uuid4().hex[:12], plan, jobs)
    graph_inputs = set(plan.graph.inputs)
    try:
        given_all = [
            _send_inputs(s, call, env, graph_inputs, (where, workers), f"{call.token}-{i}")
            for i, env in enumerate(envs)
        ]
    except BaseException:
        call.cancel()
        raise
    producer = {n: j.name for j in jobs.values() for n in j.outputs}
    per_worker = job_envs(s, workers, call.token if profile else None, modes)
    levels: dict[int, list[str]] = {}
    for name, job in jobs.items():
        levels.setdefault(job.level, []).append(name)
    try:
        for level in sorted(levels):
            for name in levels[level]:
                job, w = jobs[name], where[name]
                produced = {v: call.futures[producer[v]] for v in job.inputs if v in producer}
                call.futures[name] = s.client.submit(
                    run_job,
                    job.tasks,
                    [nodes[(n, w)] for n in job.nodes],
                    [{v: g[v] for v in job.inputs if v in graph_inputs} for g in given_all],
                    produced,
                    per_worker[w],
                    job.outputs,
                    *(call.futures[a] for a in job.after),
                    key=f"{name}-{call.token}",
                    workers=[w],
                    allow_other_workers=False,
                    retries=0,
                    pure=False,
                )
            if schedule == "levels":
                _wait(call, [call.futures[n] for n in levels[level]])
        # Hold only what the client waits on: Dask frees the rest at its last consumer.
        call.futures = {n: call.futures[n] for n in call.waited}
    except BaseException:
        call.cancel()
        raise
    return call


def _in_span(s: Session) -> contextlib.AbstractContextManager:
    """The executor's one Dask span, unless the caller runs under a span of its own."""
    if "span" in dask.get_annotations():
        return contextlib.nullcontext()
    return dask.annotate(span=s.span)


def _keep_groups(s: Session, jobs: Mapping[str, Job]) -> None:
    """Hold a keeper (``None`` under a key in the job's task group) for each job, so the
    scheduler keeps the group, and its span, from call to call (see the module docstring)."""
    missing = [j for j in jobs if (f := s.keepers.get(j)) is None or f.status != "finished"]
    if missing:
        token = uuid.uuid4().hex[:12]
        sent = s.client.scatter({f"{j}-{token}": None for j in missing}, hash=False)
        s.keepers.update({j: sent[f"{j}-{token}"] for j in missing})


def job_envs(s: Session, workers: Mapping[str, Worker], token, modes) -> dict[str, JobEnv]:
    """Worker address -> how its jobs run: ``modes``, the profiling ``token`` (None: not
    profiled), the torch threads of the session, the task threads on the worker's host."""
    per_host = Counter()
    for w in workers.values():
        per_host[w.host] += w.nthreads
    pid = os.getpid()
    return {
        a: JobEnv(modes, token, s.torch_threads, per_host[w.host], pid) for a, w in workers.items()
    }


def _send_inputs(
    s: Session, call: Call, env: Mapping[str, Any], graph_inputs: set[str], placed, token
) -> dict[str, Any]:
    """Each graph input a job reads: the value itself, or the future of its copy sent apart.

    ``placed`` is (job -> worker address, address -> `Worker`).

    Raises
    ------
    PlacementError
        If an input is bigger than ``FIT`` x the ``memory_limit`` of a worker reading it.
    """
    where, workers = placed
    readers: dict[str, list[str]] = {}
    for j in call.jobs.values():
        for v in j.inputs:
            if v in graph_inputs:
                readers.setdefault(v, []).append(j.name)
    given: dict[str, Any] = {}
    scatter: dict[str, list] = {}  # first reader's worker -> [(name, value)]
    for v, names in readers.items():
        value = compact(env[v])
        size = nbytes(value)
        check_input_fits(v, size, [workers[where[n]] for n in names])
        if size > SCATTER_ABOVE:
            scatter.setdefault(where[names[0]], []).append((v, value, size))
        elif len(names) > 1 and size > EMBED_BELOW:
            key = f"{v}-{token}"
            given[v] = s.client.submit(input_task, value, key=key, retries=0, pure=False)
            call.inputs.append(given[v])
        else:
            given[v] = value
    for w, items in scatter.items():
        sent = s.client.scatter(
            {f"{v}-{token}": value for v, value, _ in items}, workers=[w], hash=False
        )
        for v, _, size in items:
            given[v] = sent[f"{v}-{token}"]
            call.inputs.append(given[v])
            s.input_bytes += size
    return given


def _wait(call: Call, futures: list[distributed.Future]) -> None:
    """Wait for ``futures``; on the first error cancel the call and raise it, node named."""
    try:
        if not futures:
            return
        done = distributed.as_completed(futures, loop=call.client.loop)  # no polling
        for fut in done:
            if fut.status == "error":  # the first error; the rest are cancelled below
                done.clear()
                exc = fut.exception()
                if isinstance(exc, RemoteNodeError):
                    raise exc.to_node_error() from exc.cause
                raise exc
            if fut.status == "cancelled":  # it read an input or weights that were lost
                done.clear()
                fut.result()
    except BaseException:
        call.cancel()
        raise


def finish_call(
    s: Session, call: Call, envs: Sequence[dict[str, Any]], events: list[TaskEvent] | None
) -> None:
    """Wait for a submitted call, put input *i*'s outputs into ``envs[i]``, events into ``events``.

    One ``gather`` of every waited job: it returns as soon as one of them fails (Dask stops
    waiting at the first error), so the first error cancels the rest of the call.
    """
    try:
        results = s.client.gather([call.futures[n] for n in call.waited])
    except RemoteNodeError as exc:
        call.cancel()
        raise exc.to_node_error() from exc.cause
    except BaseException:
        call.cancel()
        raise
    for name, rows in zip(call.waited, results, strict=True):
        outputs = [v for v in call.jobs[name].outputs if v in call.wanted]
        for env, values in zip(envs, rows, strict=True):
            env.update({v: values[v] for v in outputs})
    if events is not None:
        for evs in s.client.run(pop_events, call.token).values():
            events.extend(evs)
    call.release()


class _Attempts:
    """The re-runs of one call: how many, and which jobs dying workers were running."""

    def __init__(self, s: Session, plan: Plan):
        self.s, self.plan = s, plan
        self.runs = 0
        self.deaths: Counter = Counter()

    def again(self, exc: BaseException, call: Call | None) -> bool:
        """True to re-run after ``exc`` (workers settled); False to raise ``exc`` as it is.

        Raises `NodeError` for a job blamed for its workers' deaths, and `WorkerLostError`
        past ``retries``.
        """
        if isinstance(exc, KilledWorker):
            raise killed_error(exc, self.plan) from None
        if not isinstance(exc, Exception) or not lost_worker(exc):
            return False
        if call is not None:
            blamed = blame(self.s.client, call.token, call.jobs, self.deaths)
            if blamed is not None:
                raise blamed from None
        self.runs += 1
        with ClusterErrors(self.s):  # the scheduler may be what went away
            live = len(self.s.placer.settle())
        if self.runs > self.s.retries:
            raise gave_up(self.plan.graph.name, self.runs, exc, live) from exc
        return True


def start_call(s: Session, plan: Plan, envs, opts: CallOptions, tries: _Attempts | None = None):
    """`submit_call`, again on the settled workers while a worker lost stops it."""
    tries = tries or _Attempts(s, plan)
    while True:
        try:
            with ClusterErrors(s), _in_span(s):
                return submit_call(s, plan, envs, opts)
        except BaseException as exc:
            if not tries.again(exc, None):
                raise


def run_call(s: Session, plan: Plan, envs, events, opts: CallOptions, tries=None,
             started: Call | None = None) -> None:  # fmt: skip
    """Submit and finish one call (``started``: one `start_call` already submitted); place
    and run it again after a lost worker (see above)."""
    tries = tries or _Attempts(s, plan)
    call = started
    while True:
        if call is None:
            call = start_call(s, plan, envs, opts, tries)
        try:
            with ClusterErrors(s):
                finish_call(s, call, envs, events)
            return
        except BaseException as exc:
            if not tries.again(exc, call):
                raise
            if events is not None:
                events.clear()
            call = None


def finish_started(s: Session, plan: Plan, call: Call, envs, opts: CallOptions) -> None:
    """`finish_call` of a call `start_call` submitted; run it again if a worker was lost."""
    run_call(s, plan, envs, None, opts, started=call)
